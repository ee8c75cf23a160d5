//! Storage of resource versions: reads, history and batched writes, all in SQL over the tables of
//! `migrations/`. Bodies are encrypted here and nowhere else; callers see plaintext JSON bytes.
//!
//! Writes are batched: a transaction Bundle of a thousand entries costs a handful of statements
//! (`unnest` arrays), not a thousand round trips.

pub mod conditional;
pub(crate) mod index;
pub mod write;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Postgres, Transaction};

use crate::crypto::resource_aad;
use crate::error::{FhirError, Result};
use crate::state::AppState;

/// One stored version as read back (decrypted).
#[derive(Debug, Clone)]
pub struct StoredVersion {
    /// Resource type.
    pub resource_type: String,
    /// Logical id.
    pub id: String,
    /// Version number (1, 2, …).
    pub version_id: i32,
    /// Whether this version is a delete tombstone.
    pub deleted: bool,
    /// When this version was written.
    pub last_updated: DateTime<Utc>,
    /// The patient this version belongs to, if any.
    pub compartment: Option<String>,
    /// The canonical JSON of the resource (`None` for a tombstone).
    pub body: Option<Vec<u8>>,
}

type VersionRow = (
    String,
    String,
    i32,
    bool,
    DateTime<Utc>,
    Option<String>,
    Option<i64>,
    Option<Vec<u8>>,
);

async fn decrypt_rows(state: &AppState, rows: Vec<VersionRow>) -> Result<Vec<StoredVersion>> {
    let mut out = Vec::with_capacity(rows.len());
    for (resource_type, id, version_id, deleted, last_updated, compartment, key_id, body) in rows {
        let body = match (key_id, body) {
            (Some(k), Some(sealed)) => {
                let key = state.keys.by_id(k).await.map_err(FhirError::Unavailable)?;
                Some(key.decrypt(&sealed, &resource_aad(&resource_type, &id, version_id))?)
            }
            _ => None,
        };
        out.push(StoredVersion {
            resource_type,
            id,
            version_id,
            deleted,
            last_updated,
            compartment,
            body,
        });
    }
    Ok(out)
}

/// The current version of `rt/id`, if the resource was ever written.
pub async fn read_current(state: &AppState, rt: &str, id: &str) -> Result<Option<StoredVersion>> {
    read_current_with(state, &state.db, rt, id).await
}

/// [`read_current`] on a given connection or transaction (a transaction sees its own writes).
#[tracing::instrument(level = "debug", skip_all, err(level = "warn"), fields(fhir.type = %rt, fhir.id = %id))]
pub async fn read_current_with<'e>(
    state: &AppState,
    exec: impl sqlx::PgExecutor<'e>,
    rt: &str,
    id: &str,
) -> Result<Option<StoredVersion>> {
    // language=PostgreSQL
    let rows: Vec<VersionRow> = sqlx::query_as(
        r#"select v.resource_type, v.id, v.version_id, v.deleted, v.last_updated, v.compartment, v.key_id, v.body
           from resource r
           join resource_version v on v.resource_type = r.resource_type and v.id = r.id and v.version_id = r.version_id
           where r.resource_type = $1 and r.id = $2"#,
    )
    .bind(rt)
    .bind(id)
    .fetch_all(exec)
    .await?;
    Ok(decrypt_rows(state, rows).await?.pop())
}

/// [`read_current`] with one more boolean, computed by the SQL `extra` pushes over the row `r`
/// (`resource`): a read and its access decision in one statement.
pub async fn read_current_and(
    state: &AppState,
    rt: &str,
    id: &str,
    extra: impl FnOnce(&mut sqlx::QueryBuilder<'static, sqlx::Postgres>),
) -> Result<Option<(StoredVersion, bool)>> {
    let mut qb = sqlx::QueryBuilder::new(format!("select {RID_VERSION_COLUMNS}, ("));
    extra(&mut qb);
    qb.push(
        ") from resource r join resource_version v on v.resource_type = r.resource_type and v.id = r.id and v.version_id = r.version_id where r.resource_type = ",
    );
    qb.push_bind(rt.to_owned());
    qb.push(" and r.id = ");
    qb.push_bind(id.to_owned());
    type Row = (
        String,
        String,
        i32,
        bool,
        DateTime<Utc>,
        Option<String>,
        Option<i64>,
        Option<Vec<u8>>,
        bool,
    );
    let rows: Vec<Row> = qb.build_query_as().fetch_all(&state.db).await?;
    let Some((a, b, c, d, e, f, g, h, extra)) = rows.into_iter().next() else {
        return Ok(None);
    };
    let v = decrypt_rows(state, vec![(a, b, c, d, e, f, g, h)])
        .await?
        .pop();
    Ok(v.map(|v| (v, extra)))
}

/// The current, non-deleted versions of several resources of one type, in the order of `ids`.
pub async fn read_many(state: &AppState, rt: &str, ids: &[String]) -> Result<Vec<StoredVersion>> {
    // language=PostgreSQL
    let rows: Vec<VersionRow> = sqlx::query_as(
        r#"select v.resource_type, v.id, v.version_id, v.deleted, v.last_updated, v.compartment, v.key_id, v.body
           from resource r
           join resource_version v on v.resource_type = r.resource_type and v.id = r.id and v.version_id = r.version_id
           where r.resource_type = $1 and r.id = any($2) and not r.deleted"#,
    )
    .bind(rt)
    .bind(ids)
    .fetch_all(&state.db)
    .await?;
    let mut found: HashMap<String, StoredVersion> = decrypt_rows(state, rows)
        .await?
        .into_iter()
        .map(|v| (v.id.clone(), v))
        .collect();
    Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
}

/// The columns a query selects for [`versions_by_rid`], after the surrogate key, from
/// `resource_version` aliased `v`.
pub const RID_VERSION_COLUMNS: &str =
    "v.resource_type, v.id, v.version_id, v.deleted, v.last_updated, v.compartment, v.key_id, v.body";

/// The current, non-deleted versions of resources by surrogate key, in the order of `rids`.
pub async fn read_rids(state: &AppState, rids: &[i64]) -> Result<Vec<(i64, StoredVersion)>> {
    if rids.is_empty() {
        return Ok(Vec::new());
    }
    // language=PostgreSQL
    let rows: Vec<sqlx::postgres::PgRow> = sqlx::query(&format!(
        r#"select r.rid, {RID_VERSION_COLUMNS}
           from resource r
           join resource_version v on v.resource_type = r.resource_type and v.id = r.id and v.version_id = r.version_id
           where r.rid = any($1) and not r.deleted"#
    ))
    .bind(rids)
    .fetch_all(&state.db)
    .await?;
    let mut found: HashMap<i64, StoredVersion> =
        versions_by_rid(state, &rows).await?.into_iter().collect();
    Ok(rids
        .iter()
        .filter_map(|r| found.remove(r).map(|v| (*r, v)))
        .collect())
}

/// Decrypts rows whose first nine columns are the surrogate key and [`RID_VERSION_COLUMNS`]
/// (a search query may fetch the bodies of its page itself), in row order.
pub async fn versions_by_rid(
    state: &AppState,
    rows: &[sqlx::postgres::PgRow],
) -> Result<Vec<(i64, StoredVersion)>> {
    use sqlx::Row;
    let mut keys = Vec::with_capacity(rows.len());
    let mut versions: Vec<VersionRow> = Vec::with_capacity(rows.len());
    for row in rows {
        keys.push(row.try_get::<i64, _>(0)?);
        versions.push((
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
            row.try_get(4)?,
            row.try_get(5)?,
            row.try_get(6)?,
            row.try_get(7)?,
            row.try_get(8)?,
        ));
    }
    Ok(keys
        .into_iter()
        .zip(decrypt_rows(state, versions).await?)
        .collect())
}

/// Version `vid` of `rt/id`.
#[tracing::instrument(level = "debug", skip_all, err(level = "warn"), fields(fhir.type = %rt, fhir.id = %id))]
pub async fn read_version(
    state: &AppState,
    rt: &str,
    id: &str,
    vid: i32,
) -> Result<Option<StoredVersion>> {
    // language=PostgreSQL
    let rows: Vec<VersionRow> = sqlx::query_as(
        r#"select resource_type, id, version_id, deleted, last_updated, compartment, key_id, body
           from resource_version where resource_type = $1 and id = $2 and version_id = $3"#,
    )
    .bind(rt)
    .bind(id)
    .bind(vid)
    .fetch_all(&state.db)
    .await?;
    Ok(decrypt_rows(state, rows).await?.pop())
}

/// Which history to list, newest first.
#[derive(Debug, Default, Clone)]
pub struct HistoryQuery {
    /// Restrict to one type.
    pub resource_type: Option<String>,
    /// Restrict to one resource (needs `resource_type`).
    pub id: Option<String>,
    /// Only versions written at or after this instant (`_since`).
    pub since: Option<DateTime<Utc>>,
    /// Only versions written at or before this instant (`_at` upper bound is not supported).
    pub cursor: Option<HistoryCursor>,
    /// Page size.
    pub count: i64,
}

/// Keyset position: the last entry of the previous page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryCursor {
    /// Its `last_updated`.
    pub last_updated: DateTime<Utc>,
    /// Its type.
    pub resource_type: String,
    /// Its id.
    pub id: String,
    /// Its version.
    pub version_id: i32,
}

/// One page of history, newest first; fetches `count + 1` rows to know whether there is more.
#[tracing::instrument(level = "debug", skip_all, err(level = "warn"))]
pub async fn history(state: &AppState, q: &HistoryQuery) -> Result<(Vec<StoredVersion>, bool)> {
    let (c_ts, c_rt, c_id, c_v) = match &q.cursor {
        Some(c) => (
            Some(c.last_updated),
            Some(c.resource_type.clone()),
            Some(c.id.clone()),
            Some(c.version_id),
        ),
        None => (None, None, None, None),
    };
    // language=PostgreSQL
    let rows: Vec<VersionRow> = sqlx::query_as(
        r#"select resource_type, id, version_id, deleted, last_updated, compartment, key_id, body
           from resource_version
           where ($1::text is null or resource_type = $1)
             and ($2::text is null or id = $2)
             and ($3::timestamptz is null or last_updated >= $3)
             and ($4::timestamptz is null
                  or (last_updated, resource_type, id, version_id) < ($4, $5::text, $6::text, $7::int))
           order by last_updated desc, resource_type desc, id desc, version_id desc
           limit $8"#,
    )
    .bind(&q.resource_type)
    .bind(&q.id)
    .bind(q.since)
    .bind(c_ts)
    .bind(c_rt)
    .bind(c_id)
    .bind(c_v)
    .bind(q.count + 1)
    .fetch_all(&state.db)
    .await?;
    let more = rows.len() as i64 > q.count;
    let mut versions = decrypt_rows(state, rows).await?;
    versions.truncate(q.count as usize);
    Ok((versions, more))
}

/// The current state of a resource, locked for the rest of the transaction.
#[derive(Debug, Clone)]
pub struct Current {
    /// Current version number.
    pub version_id: i32,
    /// Whether the current version is a tombstone.
    pub deleted: bool,
    /// The patient the current version belongs to, if any.
    pub compartment: Option<String>,
}

/// Locks the current rows of `targets` (`(type, id)` pairs) with `for update`, in a fixed order so
/// that two transactions touching the same resources cannot deadlock.
pub async fn lock_current(
    conn: &mut PgConnection,
    targets: &[(String, String)],
) -> Result<HashMap<(String, String), Current>> {
    if targets.is_empty() {
        return Ok(HashMap::new());
    }
    let (types, ids): (Vec<&str>, Vec<&str>) = targets
        .iter()
        .map(|(t, i)| (t.as_str(), i.as_str()))
        .unzip();
    // language=PostgreSQL
    let rows: Vec<(String, String, i32, bool, Option<String>)> = sqlx::query_as(
        r#"select r.resource_type, r.id, r.version_id, r.deleted, r.compartment
           from resource r join unnest($1::text[], $2::text[]) as t(rt, id) on r.resource_type = t.rt and r.id = t.id
           order by r.resource_type, r.id
           for update of r"#,
    )
    .bind(&types)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(t, i, v, d, c)| {
            (
                (t, i),
                Current {
                    version_id: v,
                    deleted: d,
                    compartment: c,
                },
            )
        })
        .collect())
}

/// A version ready to be stored: plaintext body (None for a tombstone) and its index values.
#[derive(Debug)]
pub struct NewVersion {
    /// Resource type.
    pub resource_type: String,
    /// Logical id.
    pub id: String,
    /// Version number to write.
    pub version_id: i32,
    /// Patient compartment (`None` outside any patient).
    pub compartment: Option<String>,
    /// Time stamp of the version.
    pub last_updated: DateTime<Utc>,
    /// Canonical JSON, `None` for a delete.
    pub body: Option<Vec<u8>>,
    /// Blind `(value, system)` hashes of each `Resource.identifier` (empty for a delete).
    pub identifier_hashes: Vec<(Vec<u8>, Vec<u8>)>,
    /// Data classes of the resource (consent filters on them).
    pub classes: Vec<String>,
    /// For a Consent: the organisations it names.
    pub consent_parties: Option<Vec<String>>,
    /// Search index rows of this version (empty for a delete).
    pub index: Vec<crate::search::index::Row>,
}

/// Encrypts and writes versions, moves the current pointers and replaces the identifier index, in
/// four statements whatever the number of versions.
#[tracing::instrument(level = "debug", skip_all, err(level = "warn"), fields(versions = versions.len()))]
pub async fn write_versions(
    state: &AppState,
    tx: &mut Transaction<'static, Postgres>,
    versions: &[NewVersion],
) -> Result<()> {
    if versions.is_empty() {
        return Ok(());
    }
    if versions.iter().any(|v| v.resource_type == "AuditEvent") {
        return Err(FhirError::MethodNotAllowed(
            "AuditEvents are written only by the server; they cannot be created, changed or deleted through the API".into(),
        ));
    }
    let n = versions.len();
    let mut types = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut vids = Vec::with_capacity(n);
    let mut comps: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut deleted = Vec::with_capacity(n);
    let mut stamps = Vec::with_capacity(n);
    let mut key_ids: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut bodies: Vec<Option<Vec<u8>>> = Vec::with_capacity(n);
    for v in versions {
        types.push(v.resource_type.as_str());
        ids.push(v.id.as_str());
        vids.push(v.version_id);
        comps.push(v.compartment.as_deref());
        deleted.push(v.body.is_none());
        stamps.push(v.last_updated);
        match &v.body {
            Some(plain) => {
                let key = state
                    .keys
                    .for_compartment(v.compartment.as_deref().unwrap_or(""))
                    .await
                    .map_err(FhirError::Unavailable)?;
                key_ids.push(Some(key.key_id));
                bodies.push(Some(key.encrypt(
                    plain,
                    &resource_aad(&v.resource_type, &v.id, v.version_id),
                )?));
            }
            None => {
                key_ids.push(None);
                bodies.push(None);
            }
        }
    }
    // language=PostgreSQL
    sqlx::query(
        r#"insert into resource_version (resource_type, id, version_id, compartment, deleted, last_updated, key_id, body)
           select * from unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::bool[], $6::timestamptz[], $7::bigint[], $8::bytea[])"#,
    )
    .bind(&types)
    .bind(&ids)
    .bind(&vids)
    .bind(&comps)
    .bind(&deleted)
    .bind(&stamps)
    .bind(&key_ids)
    .bind(&bodies)
    .execute(&mut **tx)
    .await
    .map_err(conflict_on_duplicate)?;
    // Version 1 means no current row exists yet (a deleted resource keeps its row): a plain insert.
    // Later versions move a row this transaction has locked (`lock_current`): a plain update.
    let (new_rows, moved): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| vids[i] == 1);
    let mut rids: HashMap<(String, String), i64> = HashMap::with_capacity(n);
    for (rows, statement) in [
        // language=PostgreSQL
        (
            new_rows,
            r#"insert into resource (resource_type, id, version_id, compartment, deleted, last_updated, classes)
               select rt, id, v, c, d, lu, string_to_array(nullif(cl, ''), E'\n')
               from unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::bool[], $6::timestamptz[], $7::text[])
                    as t(rt, id, v, c, d, lu, cl)
               returning resource_type, id, rid"#,
        ),
        // language=PostgreSQL
        (
            moved,
            r#"update resource r
               set version_id = t.v, compartment = t.c, deleted = t.d, last_updated = t.lu,
                   classes = string_to_array(nullif(t.cl, ''), E'\n')
               from unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::bool[], $6::timestamptz[], $7::text[])
                    as t(rt, id, v, c, d, lu, cl)
               where r.resource_type = t.rt and r.id = t.id
               returning r.resource_type, r.id, r.rid"#,
        ),
    ] {
        if rows.is_empty() {
            continue;
        }
        let returned: Vec<(String, String, i64)> = sqlx::query_as(statement)
            .bind(rows.iter().map(|&i| types[i]).collect::<Vec<_>>())
            .bind(rows.iter().map(|&i| ids[i]).collect::<Vec<_>>())
            .bind(rows.iter().map(|&i| vids[i]).collect::<Vec<_>>())
            .bind(rows.iter().map(|&i| comps[i]).collect::<Vec<_>>())
            .bind(rows.iter().map(|&i| deleted[i]).collect::<Vec<_>>())
            .bind(rows.iter().map(|&i| stamps[i]).collect::<Vec<_>>())
            .bind(
                rows.iter()
                    .map(|&i| versions[i].classes.join("\n"))
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut **tx)
            .await
            .map_err(conflict_on_duplicate)?;
        rids.extend(returned.into_iter().map(|(t, i, r)| ((t, i), r)));
    }
    index::write(tx, versions, &rids).await?;
    index::refresh_grants(state, tx, versions).await?;
    // Identifier index rows belong to their version; searches join the current one.
    let mut it = Vec::new();
    let mut ii = Vec::new();
    let mut iv = Vec::new();
    let mut ivh = Vec::new();
    let mut ish = Vec::new();
    for v in versions {
        for (value_hash, system_hash) in &v.identifier_hashes {
            it.push(v.resource_type.as_str());
            ii.push(v.id.as_str());
            iv.push(v.version_id);
            ivh.push(value_hash.as_slice());
            ish.push(system_hash.as_slice());
        }
    }
    write_consent_parties(tx, versions).await?;
    // No audit, no change: the events of these versions commit or roll back with them.
    let ctx = crate::audit::current();
    let events = crate::audit::event::write_events(ctx.as_deref(), versions);
    crate::audit::chain::enqueue(tx, &events).await?;
    state.auditor.note_inbox();
    if let Some(c) = ctx {
        c.mark_written();
    }
    if !it.is_empty() {
        // language=PostgreSQL
        sqlx::query(
            r#"insert into resource_identifier (resource_type, id, version_id, value_hash, system_hash)
               select * from unnest($1::text[], $2::text[], $3::int[], $4::bytea[], $5::bytea[])"#,
        )
        .bind(&it)
        .bind(&ii)
        .bind(&iv)
        .bind(&ivh)
        .bind(&ish)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Keeps `consent_party` in step with the Consents among `versions`.
async fn write_consent_parties(
    tx: &mut Transaction<'static, Postgres>,
    versions: &[NewVersion],
) -> Result<()> {
    let consents: Vec<&NewVersion> = versions
        .iter()
        .filter(|v| v.resource_type == "Consent")
        .collect();
    if consents.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = consents.iter().map(|v| v.id.as_str()).collect();
    // language=PostgreSQL
    sqlx::query("delete from consent_party where consent_id = any($1)")
        .bind(&ids)
        .execute(&mut **tx)
        .await?;
    for v in consents {
        let (Some(parties), Some(patient), Some(_)) = (&v.consent_parties, &v.compartment, &v.body)
        else {
            continue;
        };
        // language=PostgreSQL
        sqlx::query(
            "insert into consent_party (consent_id, patient, organizations) values ($1, $2, $3)",
        )
        .bind(&v.id)
        .bind(patient)
        .bind(parties)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Two writers creating the same `type/id` at once: the primary key picks one, the other gets 409.
fn conflict_on_duplicate(e: sqlx::Error) -> FhirError {
    if e.as_database_error()
        .is_some_and(|d| d.code().as_deref() == Some("23505"))
    {
        FhirError::Conflict("the resource was changed by a concurrent request; retry".into())
    } else {
        FhirError::Database(e)
    }
}

/// The active and inactive Consents of a patient, as stored now.
pub async fn consents_of(state: &AppState, patient: &str) -> Result<Vec<serde_json::Value>> {
    // language=PostgreSQL
    let ids: Vec<String> = sqlx::query_scalar(
        "select id from resource where resource_type = 'Consent' and compartment = $1 and not deleted",
    )
    .bind(patient)
    .fetch_all(&state.db)
    .await?;
    let mut out = Vec::with_capacity(ids.len());
    for v in read_many(state, "Consent", &ids).await? {
        if let Some(body) = v.body {
            out.push(fhirgate_codec::parse_json(&body)?);
        }
    }
    Ok(out)
}
