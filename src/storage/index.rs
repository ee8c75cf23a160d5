//! Writes the search index rows of a batch of versions, and keeps `consent_grant` in step with
//! the Consents among them. Rows describe current versions: a resource's old rows go when a new
//! version of it is written, in the same transaction.

use std::collections::{BTreeSet, HashMap};

use sqlx::{Postgres, Transaction};

use super::NewVersion;
use crate::error::Result;
use crate::search::index::Row;
use crate::state::AppState;

const TABLES: [&str; 8] = [
    "obs_code_date",
    "idx_token",
    "idx_string",
    "idx_date",
    "idx_number",
    "idx_reference",
    "idx_composite",
    "idx_blind",
];

/// The columns every index table starts with.
#[derive(Default)]
struct Head<'a> {
    rid: Vec<i64>,
    pid: Vec<i32>,
    comp: Vec<Option<&'a str>>,
}

impl<'a> Head<'a> {
    fn push(&mut self, rid: i64, pid: i32, comp: Option<&'a str>) {
        self.rid.push(rid);
        self.pid.push(pid);
        self.comp.push(comp);
    }
}

#[derive(Default)]
struct TokenCols<'a> {
    head: Head<'a>,
    system: Vec<Option<&'a str>>,
    code: Vec<Option<&'a str>>,
}

#[derive(Default)]
struct StringCols<'a> {
    head: Head<'a>,
    norm: Vec<&'a str>,
    exact: Vec<&'a str>,
}

#[derive(Default)]
struct DateCols<'a> {
    head: Head<'a>,
    low: Vec<i64>,
    high: Vec<i64>,
}

#[derive(Default)]
struct NumberCols<'a> {
    head: Head<'a>,
    low: Vec<Option<f64>>,
    high: Vec<Option<f64>>,
    system: Vec<Option<&'a str>>,
    code: Vec<Option<&'a str>>,
    unit: Vec<Option<&'a str>>,
}

#[derive(Default)]
struct ReferenceCols<'a> {
    head: Head<'a>,
    target: Vec<&'a str>,
}

#[derive(Default)]
struct CompositeCols<'a> {
    head: Head<'a>,
    system1: Vec<Option<&'a str>>,
    code1: Vec<Option<&'a str>>,
    system2: Vec<Option<&'a str>>,
    code2: Vec<Option<&'a str>>,
    num: Vec<Option<f64>>,
    low: Vec<Option<i64>>,
    high: Vec<Option<i64>>,
}

#[derive(Default)]
struct BlindCols<'a> {
    head: Head<'a>,
    hash: Vec<&'a [u8]>,
}

#[derive(Default)]
struct CodeDateCols<'a> {
    rid: Vec<i64>,
    comp: Vec<&'a str>,
    system: Vec<Option<&'a str>>,
    code: Vec<Option<&'a str>>,
    /// Date range (none for an Observation without a date).
    low: Vec<Option<i64>>,
    high: Vec<Option<i64>>,
    /// Data classes, newline-joined (arrays of arrays do not bind).
    classes: Vec<String>,
}

/// Column arrays of every index table for one batch.
#[derive(Default)]
struct Batch<'a> {
    code_date: CodeDateCols<'a>,
    token: TokenCols<'a>,
    string: StringCols<'a>,
    date: DateCols<'a>,
    number: NumberCols<'a>,
    reference: ReferenceCols<'a>,
    composite: CompositeCols<'a>,
    blind: BlindCols<'a>,
}

impl<'a> Batch<'a> {
    fn push(&mut self, rid: i64, comp: Option<&'a str>, row: &'a Row) {
        match row {
            Row::Token(p, s, c) => {
                let t = &mut self.token;
                t.head.push(rid, *p, comp);
                t.system.push(s.as_deref());
                t.code.push(c.as_deref());
            }
            Row::String(p, n, e) => {
                let t = &mut self.string;
                t.head.push(rid, *p, comp);
                t.norm.push(n);
                t.exact.push(e);
            }
            Row::Date(p, lo, hi) => {
                let t = &mut self.date;
                t.head.push(rid, *p, comp);
                t.low.push(*lo);
                t.high.push(*hi);
            }
            Row::Number(p, lo, hi, s, c, u) => {
                let t = &mut self.number;
                t.head.push(rid, *p, comp);
                t.low.push(*lo);
                t.high.push(*hi);
                t.system.push(s.as_deref());
                t.code.push(c.as_deref());
                t.unit.push(u.as_deref());
            }
            Row::Reference(p, target) => {
                let t = &mut self.reference;
                t.head.push(rid, *p, comp);
                t.target.push(target);
            }
            Row::Composite(p, c) => {
                let t = &mut self.composite;
                t.head.push(rid, *p, comp);
                t.system1.push(c.system1.as_deref());
                t.code1.push(c.code1.as_deref());
                t.system2.push(c.system2.as_deref());
                t.code2.push(c.code2.as_deref());
                t.num.push(c.num);
                t.low.push(c.low);
                t.high.push(c.high);
            }
            Row::CodeDate(s, c, lo, hi, classes) => {
                let Some(comp) = comp else { return };
                let t = &mut self.code_date;
                t.rid.push(rid);
                t.comp.push(comp);
                t.system.push(s.as_deref());
                t.code.push(c.as_deref());
                t.low.push(*lo);
                t.high.push(*hi);
                t.classes.push(classes.join("\n"));
            }
            Row::Blind(p, h) => {
                let t = &mut self.blind;
                t.head.push(rid, *p, comp);
                t.hash.push(h);
            }
        }
    }
}

/// Replaces the index rows of the resources in `versions` with those of their newest version.
pub(super) async fn write(
    tx: &mut Transaction<'static, Postgres>,
    versions: &[NewVersion],
    rids: &HashMap<(String, String), i64>,
) -> Result<()> {
    // The newest version of each resource in the batch, and whether any existed before it.
    let mut newest: HashMap<(&str, &str), (&NewVersion, bool)> = HashMap::new();
    for v in versions {
        let key = (v.resource_type.as_str(), v.id.as_str());
        let existed = v.version_id > 1;
        newest
            .entry(key)
            .and_modify(|(cur, e)| {
                *e &= existed;
                if v.version_id > cur.version_id {
                    *cur = v;
                }
            })
            .or_insert((v, existed));
    }
    let mut stale: Vec<i64> = Vec::new();
    let mut items: Vec<(i64, Option<&str>, &[Row])> = Vec::with_capacity(newest.len());
    for ((rt, id), (v, existed)) in &newest {
        let Some(&rid) = rids.get(&((*rt).to_owned(), (*id).to_owned())) else {
            continue;
        };
        if *existed {
            stale.push(rid);
        }
        items.push((rid, v.compartment.as_deref(), &v.index));
    }
    replace(tx, &stale, &items).await
}

/// Deletes the index rows of `stale` and inserts `items` (rid, compartment, rows).
pub(crate) async fn replace(
    tx: &mut Transaction<'static, Postgres>,
    stale: &[i64],
    items: &[(i64, Option<&str>, &[Row])],
) -> Result<()> {
    let mut batch = Batch::default();
    for (rid, comp, rows) in items {
        for row in *rows {
            batch.push(*rid, *comp, row);
        }
    }
    if !stale.is_empty() {
        for table in TABLES {
            // The table name is one of the constants above, never input.
            sqlx::query(&format!("delete from {table} where rid = any($1)"))
                .bind(stale)
                .execute(&mut **tx)
                .await?;
        }
    }
    let b = batch;
    if !b.token.head.rid.is_empty() {
        // language=PostgreSQL
        sqlx::query(
            "insert into idx_token (rid, pid, compartment, system, code) select * from unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::text[])",
        )
        .bind(&b.token.head.rid).bind(&b.token.head.pid).bind(&b.token.head.comp).bind(&b.token.system).bind(&b.token.code)
        .execute(&mut **tx)
        .await?;
    }
    if !b.string.head.rid.is_empty() {
        // language=PostgreSQL
        sqlx::query(
            "insert into idx_string (rid, pid, compartment, norm, exact) select * from unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::text[])",
        )
        .bind(&b.string.head.rid).bind(&b.string.head.pid).bind(&b.string.head.comp).bind(&b.string.norm).bind(&b.string.exact)
        .execute(&mut **tx)
        .await?;
    }
    if !b.date.head.rid.is_empty() {
        // language=PostgreSQL
        sqlx::query(
            r#"insert into idx_date (rid, pid, compartment, low, high)
               select r, p, c, (timestamptz 'epoch' + lo * interval '1 microsecond'), (timestamptz 'epoch' + hi * interval '1 microsecond')
               from unnest($1::bigint[], $2::int[], $3::text[], $4::bigint[], $5::bigint[]) as t(r, p, c, lo, hi)"#,
        )
        .bind(&b.date.head.rid).bind(&b.date.head.pid).bind(&b.date.head.comp).bind(&b.date.low).bind(&b.date.high)
        .execute(&mut **tx)
        .await?;
    }
    if !b.number.head.rid.is_empty() {
        let n = &b.number;
        // language=PostgreSQL
        sqlx::query(
            "insert into idx_number (rid, pid, compartment, low, high, system, code, unit) select * from unnest($1::bigint[], $2::int[], $3::text[], $4::float8[], $5::float8[], $6::text[], $7::text[], $8::text[])",
        )
        .bind(&n.head.rid).bind(&n.head.pid).bind(&n.head.comp).bind(&n.low).bind(&n.high).bind(&n.system).bind(&n.code).bind(&n.unit)
        .execute(&mut **tx)
        .await?;
    }
    if !b.reference.head.rid.is_empty() {
        // language=PostgreSQL
        sqlx::query(
            "insert into idx_reference (rid, pid, compartment, target) select * from unnest($1::bigint[], $2::int[], $3::text[], $4::text[])",
        )
        .bind(&b.reference.head.rid).bind(&b.reference.head.pid).bind(&b.reference.head.comp).bind(&b.reference.target)
        .execute(&mut **tx)
        .await?;
    }
    if !b.composite.head.rid.is_empty() {
        let c = &b.composite;
        // language=PostgreSQL
        sqlx::query(
            r#"insert into idx_composite (rid, pid, compartment, system1, code1, system2, code2, num, low, high)
               select r, p, c, s1, c1, s2, c2, n, (timestamptz 'epoch' + lo * interval '1 microsecond'), (timestamptz 'epoch' + hi * interval '1 microsecond')
               from unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::float8[], $9::bigint[], $10::bigint[])
                    as t(r, p, c, s1, c1, s2, c2, n, lo, hi)"#,
        )
        .bind(&c.head.rid).bind(&c.head.pid).bind(&c.head.comp).bind(&c.system1).bind(&c.code1).bind(&c.system2).bind(&c.code2).bind(&c.num).bind(&c.low).bind(&c.high)
        .execute(&mut **tx)
        .await?;
    }
    if !b.code_date.rid.is_empty() {
        let c = &b.code_date;
        // language=PostgreSQL
        sqlx::query(
            r#"insert into obs_code_date (rid, compartment, system, code, low, high, classes)
               select r, c, s, k, (timestamptz 'epoch' + lo * interval '1 microsecond'), (timestamptz 'epoch' + hi * interval '1 microsecond'),
                      string_to_array(nullif(cl, ''), E'\n')
               from unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::bigint[], $7::text[]) as t(r, c, s, k, lo, hi, cl)"#,
        )
        .bind(&c.rid)
        .bind(&c.comp)
        .bind(&c.system)
        .bind(&c.code)
        .bind(&c.low)
        .bind(&c.high)
        .bind(&c.classes)
        .execute(&mut **tx)
        .await?;
    }
    if !b.blind.head.rid.is_empty() {
        // language=PostgreSQL
        sqlx::query(
            "insert into idx_blind (rid, pid, compartment, hash) select * from unnest($1::bigint[], $2::int[], $3::text[], $4::bytea[])",
        )
        .bind(&b.blind.head.rid).bind(&b.blind.head.pid).bind(&b.blind.head.comp).bind(&b.blind.hash)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Recomputes `consent_grant` for every patient a Consent in `versions` belongs to (before or
/// after the change), from that patient's Consents as this transaction sees them.
pub(super) async fn refresh_grants(
    state: &AppState,
    tx: &mut Transaction<'static, Postgres>,
    versions: &[NewVersion],
) -> Result<()> {
    let patients: BTreeSet<&str> = versions
        .iter()
        .filter(|v| v.resource_type == "Consent")
        .filter_map(|v| v.compartment.as_deref())
        .collect();
    grants_of(state, tx, patients.into_iter()).await
}

/// Rebuilds `consent_grant` for `patients` from their Consents as `tx` sees them.
pub(crate) async fn grants_of(
    state: &AppState,
    tx: &mut Transaction<'static, Postgres>,
    patients: impl Iterator<Item = &str>,
) -> Result<()> {
    for patient in patients {
        // language=PostgreSQL
        let ids: Vec<String> = sqlx::query_scalar(
            "select id from resource where resource_type = 'Consent' and compartment = $1 and not deleted",
        )
        .bind(patient)
        .fetch_all(&mut **tx)
        .await?;
        let mut consents = Vec::with_capacity(ids.len());
        for id in &ids {
            if let Some(body) = super::read_current_with(state, &mut **tx, "Consent", id)
                .await?
                .and_then(|v| v.body)
            {
                consents.push(fhirgate_codec::parse_json(&body)?);
            }
        }
        let (grants, code_rules) = fhirgate_consent::grants(&consents);
        // language=PostgreSQL
        sqlx::query("delete from consent_grant where patient = $1")
            .bind(patient)
            .execute(&mut **tx)
            .await?;
        if grants.is_empty() {
            continue;
        }
        let orgs: Vec<&str> = grants.iter().map(|g| g.organization.as_str()).collect();
        let purposes: Vec<&str> = grants.iter().map(|g| g.purpose.as_str()).collect();
        let classes: Vec<&str> = grants.iter().map(|g| g.class.as_str()).collect();
        let from: Vec<Option<chrono::DateTime<chrono::Utc>>> =
            grants.iter().map(|g| g.from).collect();
        let to: Vec<Option<chrono::DateTime<chrono::Utc>>> = grants.iter().map(|g| g.to).collect();
        // language=PostgreSQL
        sqlx::query(
            r#"insert into consent_grant (patient, organization, purpose, class, valid_from, valid_to, code_rules)
               select $1, o, p, c, coalesce(f, '-infinity'), coalesce(t, 'infinity'), $7
               from unnest($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::timestamptz[]) as u(o, p, c, f, t)"#,
        )
        .bind(patient)
        .bind(&orgs)
        .bind(&purposes)
        .bind(&classes)
        .bind(&from)
        .bind(&to)
        .bind(code_rules)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
