//! Runs a parsed search: the SQL over `resource` and the index tables, with the caller's access
//! (patient compartment, partner consent grants) as part of the query, keyset paging in both
//! directions, `_sort`, totals, and `_include`/`_revinclude` under the same access rules.
//!
//! Search statements are not kept prepared (`persistent(false)`): each is planned with its actual
//! values, because a generic plan cannot tell one patient's 10,000 rows from the whole table. The
//! two per-patient index paths (the code/date page and `$lastn`) are the exception: their plan is
//! an index order whatever the values, and planning them took as long as running them.

use fhirgate_fhirpath::ParamType;
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder, Row};

use crate::access::{Decided, Policy};
use crate::auth::scopes::Permission;
use crate::error::{FhirError, Result};
use crate::search::query::{push_clause, Clause, Ctx};
use crate::search::Pid;
use crate::state::AppState;

/// Which rows a query's filters select.
#[derive(Debug, Clone, Copy)]
enum Rows<'a> {
    /// What the caller sees, with a partner's code-rule decisions for this query.
    Visible(Option<&'a Decided>),
    /// A partner's candidates of these patients (whose Consents name codes), by class grants.
    Candidates(&'a [String]),
}

/// One `_sort` key.
#[derive(Debug, Clone)]
pub struct SortKey {
    /// `_id`, `_lastUpdated` or a parameter.
    pub code: String,
    /// The parameter's id and table, when it is one.
    pub param: Option<(Pid, ParamType)>,
    /// Descending.
    pub desc: bool,
}

/// `_include` / `_revinclude`.
#[derive(Debug, Clone)]
pub struct Include {
    /// The type holding the reference.
    pub source: String,
    /// Its reference parameter.
    pub pid: Pid,
    /// Restrict targets to this type.
    pub target: Option<String>,
    /// `:iterate`.
    pub iterate: bool,
}

/// Where a page starts: after (`next`) or before (`prev`) a row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cursor {
    /// `n` or `p`.
    pub d: String,
    /// Sort key values of the row, as text.
    pub k: Vec<String>,
    /// Its rid.
    pub r: i64,
}

impl Cursor {
    /// Sealed text for a link, bound to `binding` (the caller and the query): see
    /// [`crate::crypto::Keyring::seal_cursor`].
    pub fn seal(&self, keys: &crate::crypto::Keyring, binding: &[u8]) -> String {
        keys.seal_cursor(&serde_json::to_vec(self).unwrap_or_default(), binding)
    }

    /// Opens [`Cursor::seal`]'s text; 400 when it was not sealed by this server for this caller
    /// and query.
    pub fn open(keys: &crate::crypto::Keyring, text: &str, binding: &[u8]) -> Result<Cursor> {
        keys.open_cursor(text, binding)
            .and_then(|b| serde_json::from_slice::<Cursor>(&b).ok())
            .filter(|c| c.d == "n" || c.d == "p")
            .ok_or_else(|| {
                FhirError::bad_request(
                    "_cursor",
                    "the paging cursor is not valid; follow the Bundle's links",
                )
            })
    }
}

/// A search to run.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Resource types (empty = any).
    pub types: Vec<String>,
    /// AND of clauses.
    pub clauses: Vec<Clause>,
    /// Only resources of this patient compartment.
    pub compartment: Option<String>,
    /// Only versions written at or after this instant (`$everything?_since`).
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    /// Sort keys (then rid).
    pub sort: Vec<SortKey>,
    /// Page size.
    pub count: i64,
    /// Page start.
    pub cursor: Option<Cursor>,
}

/// One row found.
#[derive(Debug, Clone)]
pub struct Found {
    /// Surrogate key.
    pub rid: i64,
    /// Type.
    pub resource_type: String,
    /// Id.
    pub id: String,
    /// Sort key values.
    pub keys: Vec<String>,
}

/// A page of results.
#[derive(Debug, Default)]
pub struct Page {
    /// Rows in order.
    pub rows: Vec<Found>,
    /// Whether rows exist after the last one.
    pub has_next: bool,
    /// Whether rows exist before the first one.
    pub has_prev: bool,
    /// Versions of page rows that the page query fetched along (decrypted), by rid.
    pub fetched: Vec<(i64, crate::storage::StoredVersion)>,
    /// A partner's first try left out patients whose Consents name single codes, and some of
    /// them are in reach: the page must be decided again with the consent engine.
    code_rules: bool,
}

fn sort_expr(k: &SortKey, r: &str) -> (String, &'static str) {
    let Some((pid, t)) = k.param else {
        return match k.code.as_str() {
            "_id" => (format!("{r}.id::text"), "text"),
            _ => (format!("{r}.last_updated"), "timestamptz"),
        };
    };
    let agg = if k.desc { "max" } else { "min" };
    let (table, col, sentinel_asc, sentinel_desc, ty) = match t {
        ParamType::Date => (
            "idx_date",
            if k.desc { "high" } else { "low" },
            "'infinity'::timestamptz",
            "'-infinity'::timestamptz",
            "timestamptz",
        ),
        ParamType::Number | ParamType::Quantity => (
            "idx_number",
            if k.desc { "high" } else { "low" },
            "'Infinity'::float8",
            "'-Infinity'::float8",
            "float8",
        ),
        ParamType::String => ("idx_string", "norm", "chr(1114111)", "''", "text"),
        ParamType::Reference => ("idx_reference", "target", "chr(1114111)", "''", "text"),
        _ => ("idx_token", "code", "chr(1114111)", "''", "text"),
    };
    let sentinel = if k.desc { sentinel_desc } else { sentinel_asc };
    (
        format!("coalesce((select {agg}({col}) from {table} s where s.rid = {r}.rid and s.pid = {pid}), {sentinel})"),
        ty,
    )
}

/// The `where` part shared by a page query and its count: type, compartment, clauses, and the
/// caller's policy.
fn push_filters(
    qb: &mut QueryBuilder<'static, Postgres>,
    plan: &Plan,
    policy: &Policy,
    rows: Rows<'_>,
) {
    qb.push(" from resource r where not r.deleted");
    if !plan.types.is_empty() {
        qb.push(" and r.resource_type = any(");
        qb.push_bind(plan.types.clone());
        qb.push(")");
    }
    let (hint, redundant) = confinement(plan);
    if let Some(c) = &hint {
        qb.push(" and r.compartment = ");
        qb.push_bind(c.clone());
    }
    if let Some(since) = plan.since {
        qb.push(" and r.last_updated >= ");
        qb.push_bind(since);
    }
    let mut clauses: Vec<&Clause> = plan
        .clauses
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != redundant)
        .map(|(_, c)| c)
        .collect();
    if let (Some(patient), true) = (&hint, plan.types == ["Observation"]) {
        push_code_date(qb, patient, &mut clauses);
    }
    for c in clauses {
        qb.push(" and ");
        push_clause(qb, c, "r", hint.as_deref(), 0, Some(policy));
    }
    match rows {
        Rows::Visible(decided) => {
            policy.restrict(qb, "r", Permission::Search, hint.as_deref(), decided);
        }
        Rows::Candidates(patients) => {
            policy.restrict_classes(qb, "r", Permission::Search, hint.as_deref());
            qb.push(" and r.compartment = any(");
            qb.push_bind(patients.to_vec());
            qb.push(")");
        }
    }
}

/// For a partner: the decisions of the consent engine on the rows of `plan` that belong to
/// patients whose Consents name single codes (class grants alone cannot say), so that every
/// query of the plan (page, count, statistics) sees exactly the permitted rows. `None` for
/// other callers.
async fn decide(state: &AppState, plan: &Plan, policy: &Policy) -> Result<Option<Decided>> {
    let Some(organization) = policy.partner() else {
        return Ok(None);
    };
    let (hint, _) = confinement(plan);
    // language=PostgreSQL
    let patients: Vec<String> = sqlx::query_scalar(
        "select distinct patient from consent_grant where organization = $1 and code_rules and ($2::text is null or patient = $2)",
    )
    .bind(organization)
    .bind(&hint)
    .fetch_all(&state.db)
    .await?;
    if patients.is_empty() {
        return Ok(Some(Decided::default()));
    }
    let mut qb: QueryBuilder<'static, Postgres> = QueryBuilder::new("select r.rid");
    push_filters(&mut qb, plan, policy, Rows::Candidates(&patients));
    let rids: Vec<i64> = qb
        .build_query_scalar()
        .persistent(false)
        .fetch_all(&state.db)
        .await?;
    let mut consents: std::collections::HashMap<String, Vec<serde_json::Value>> =
        std::collections::HashMap::new();
    let mut allowed = Vec::new();
    for chunk in rids.chunks(500) {
        for (rid, v) in crate::storage::read_rids(state, chunk).await? {
            let (Some(body), Some(patient)) = (&v.body, &v.compartment) else {
                continue;
            };
            if !consents.contains_key(patient) {
                let c = crate::storage::consents_of(state, patient).await?;
                consents.insert(patient.clone(), c);
            }
            let resource = fhirgate_codec::parse_json(body)?;
            if policy.consents_permit(&consents[patient], &v.resource_type, &resource) {
                allowed.push(rid);
            }
        }
    }
    Ok(Some(Decided { patients, allowed }))
}

/// One patient's Observations by `code` (and `date`): answered by one range scan of
/// `obs_code_date`, whose rows pair each coding with the Observation's date. Takes the `code`
/// clause and every `date` clause out of `clauses`.
fn push_code_date(
    qb: &mut QueryBuilder<'static, Postgres>,
    patient: &str,
    clauses: &mut Vec<&Clause>,
) {
    let is = |c: &Clause, table: &str, name: &str| matches!(c, Clause::Index { table: t, code, negate: false, also: None, .. } if *t == table && code == name);
    let Some(at) = clauses.iter().position(|c| is(c, "idx_token", "code")) else {
        return;
    };
    let code = clauses.remove(at);
    let dates: Vec<&Clause> = clauses
        .iter()
        .copied()
        .filter(|c| is(c, "idx_date", "date"))
        .collect();
    clauses.retain(|c| !is(c, "idx_date", "date"));
    qb.push(" and r.rid in (select rid from obs_code_date where compartment = ");
    qb.push_bind(patient.to_owned());
    for c in std::iter::once(code).chain(dates) {
        let Clause::Index { alts, .. } = c else {
            continue;
        };
        qb.push(" and (");
        crate::search::query::push_alts(qb, alts);
        qb.push(")");
    }
    qb.push(")");
}

/// Types whose patient compartment is the patient their `subject`/`patient` reference names,
/// so `patient=X` also means `compartment = X` (which the per-patient indexes serve).
const SUBJECT_COMPARTMENT_TYPES: [&str; 8] = [
    "Observation",
    "Condition",
    "Procedure",
    "Encounter",
    "DiagnosticReport",
    "MedicationRequest",
    "Immunization",
    "AllergyIntolerance",
];

/// The patient a plan is confined to by a `patient`/`subject` clause naming exactly one
/// `Patient/X` (on types whose compartment is that patient), and that clause's position: the
/// clause then says no more than `compartment = X`.
fn compartment_hint(plan: &Plan) -> Option<(String, usize)> {
    let [rt] = plan.types.as_slice() else {
        return None;
    };
    if !SUBJECT_COMPARTMENT_TYPES.contains(&rt.as_str()) {
        return None;
    }
    plan.clauses.iter().enumerate().find_map(|(i, c)| match c {
        Clause::Index {
            table: "idx_reference",
            negate: false,
            also: None,
            alts,
            code,
            ..
        } if code == "patient" || code == "subject" => {
            let [crate::search::query::Alt::Sql(_, binds)] = alts.as_slice() else {
                return None;
            };
            let [crate::search::query::Bind::Texts(targets)] = binds.as_slice() else {
                return None;
            };
            match targets.as_slice() {
                [one] => one.strip_prefix("Patient/").map(|p| (p.to_owned(), i)),
                _ => None,
            }
        }
        _ => None,
    })
}

/// The patient a plan is confined to (`Patient/X/…`, `$everything`, or a hint), and the clause
/// that the confinement makes redundant.
fn confinement(plan: &Plan) -> (Option<String>, Option<usize>) {
    match (&plan.compartment, compartment_hint(plan)) {
        (Some(c), _) => (Some(c.clone()), None),
        (None, Some((p, i))) => (Some(p), Some(i)),
        (None, None) => (None, None),
    }
}

/// Most chains name few targets (`subject:Patient.identifier=…` is one patient): each top-level
/// chain is looked up first and becomes a plain reference test on the targets found, which the
/// planner (and the per-patient paths) then serve directly. Chains matching more than
/// [`CHAIN_LOOKUP_LIMIT`] targets stay nested.
async fn resolve_chains(state: &AppState, plan: &Plan, policy: &Policy) -> Result<Plan> {
    let mut out = plan.clone();
    for clause in out.clauses.iter_mut() {
        let Clause::Chain { pid, code, targets } = clause else {
            continue;
        };
        let mut qb: QueryBuilder<'static, Postgres> = QueryBuilder::new(
            "select c0.resource_type || '/' || c0.id from resource c0 where not c0.deleted and (",
        );
        for (i, (t, inner)) in targets.iter().enumerate() {
            if i > 0 {
                qb.push(" or ");
            }
            qb.push("(c0.resource_type = ");
            qb.push_bind(t.clone());
            qb.push(" and ");
            push_clause(&mut qb, inner, "c0", None, 1, Some(policy));
            qb.push(")");
        }
        // Targets the caller may not see match nothing: a chain is no window onto them.
        qb.push(")");
        policy.restrict(&mut qb, "c0", Permission::Search, None, None);
        qb.push(" limit ");
        qb.push_bind(CHAIN_LOOKUP_LIMIT + 1);
        let found: Vec<String> = qb
            .build_query_scalar()
            .persistent(false)
            .fetch_all(&state.db)
            .await?;
        if found.len() as i64 > CHAIN_LOOKUP_LIMIT {
            continue;
        }
        *clause = Clause::Index {
            table: "idx_reference",
            pid: *pid,
            also: None,
            code: code.clone(),
            negate: false,
            alts: vec![crate::search::query::Alt::Sql(
                "target = any(?)".to_owned(),
                vec![crate::search::query::Bind::Texts(found)],
            )],
        };
    }
    Ok(out)
}

/// Above this many targets a chain is searched nested rather than looked up first.
const CHAIN_LOOKUP_LIMIT: i64 = 1000;

/// One page of `plan` for `access`.
pub async fn page(state: &AppState, plan: &Plan, policy: &Policy) -> Result<Page> {
    let resolved = resolve_chains(state, plan, policy).await?;
    let plan = &resolved;
    if let Some(organization) = policy.partner() {
        // First without the patients whose Consents name single codes (most have none), asking
        // in the same statement whether any such patient is in reach; only then does the
        // consent engine decide their rows, and the page is read again.
        let first = page_as(state, plan, policy, None, Some(organization)).await?;
        if !first.code_rules && !first.rows.is_empty() {
            return Ok(first);
        }
    }
    let decided = decide(state, plan, policy).await?;
    page_as(state, plan, policy, decided.as_ref(), None).await
}

/// The code-rule flag of a partner's first try (see [`page`]): whether a patient in reach of
/// `plan` has Consents naming single codes, as one uncorrelated sub-select.
fn push_code_rules_flag(qb: &mut QueryBuilder<'static, Postgres>, plan: &Plan, organization: &str) {
    let (hint, _) = confinement(plan);
    qb.push(", exists (select 1 from consent_grant cf where cf.organization = ");
    qb.push_bind(organization.to_owned());
    qb.push(" and cf.code_rules");
    if let Some(patient) = hint {
        qb.push(" and cf.patient = ");
        qb.push_bind(patient);
    }
    qb.push(") as code_rules");
}

/// The flag [`push_code_rules_flag`] added to a first try's rows (`false` for other pages, and
/// for an empty one, which the caller decides again anyway).
fn code_rules_flag(rows: &[sqlx::postgres::PgRow], first_try: Option<&str>) -> Result<bool> {
    Ok(first_try.is_some()
        && rows
            .first()
            .map(|row| row.try_get::<bool, _>("code_rules"))
            .transpose()?
            .unwrap_or(false))
}

/// One page of `plan`, with a partner's code-rule decisions (`decided`), or as a partner's first
/// try without the patients that have code rules (`first_try`: the organisation).
async fn page_as(
    state: &AppState,
    plan: &Plan,
    policy: &Policy,
    decided: Option<&Decided>,
    first_try: Option<&str>,
) -> Result<Page> {
    if let Some(page) = code_date_page(state, plan, policy, decided, first_try).await? {
        return Ok(page);
    }
    let backwards = plan.cursor.as_ref().is_some_and(|c| c.d == "p");
    let exprs: Vec<(String, &'static str, bool)> = plan
        .sort
        .iter()
        .map(|k| {
            let (e, t) = sort_expr(k, "r");
            (e, t, k.desc != backwards)
        })
        .collect();
    let mut qb: QueryBuilder<'static, Postgres> =
        QueryBuilder::new("select * from (select r.rid, r.resource_type, r.id");
    for (i, (e, _, _)) in exprs.iter().enumerate() {
        qb.push(format!(", {e} as k{i}"));
    }
    if let Some(organization) = first_try {
        push_code_rules_flag(&mut qb, plan, organization);
    }
    push_filters(&mut qb, plan, policy, Rows::Visible(decided));
    qb.push(") s where true");
    if let Some(c) = &plan.cursor {
        if c.k.len() != exprs.len() {
            return Err(FhirError::bad_request(
                "_cursor",
                "the paging cursor does not match the sort; follow the Bundle's links",
            ));
        }
        // (k0 op c0) or (k0 = c0 and k1 op c1) or … or (all equal and rid op r)
        qb.push(" and (");
        for i in 0..=exprs.len() {
            if i > 0 {
                qb.push(" or ");
            }
            qb.push("(true");
            for (j, (_, ty, _)) in exprs.iter().enumerate().take(i) {
                qb.push(format!(" and k{j} = "));
                qb.push_bind(c.k[j].clone());
                qb.push(format!("::{ty}"));
            }
            match exprs.get(i) {
                Some((_, ty, desc)) => {
                    qb.push(format!(" and k{i} {} ", if *desc { "<" } else { ">" }));
                    qb.push_bind(c.k[i].clone());
                    qb.push(format!("::{ty}"));
                }
                None => {
                    qb.push(format!(" and rid {} ", if backwards { "<" } else { ">" }));
                    qb.push_bind(c.r);
                }
            }
            qb.push(")");
        }
        qb.push(")");
    }
    qb.push(" order by ");
    for (i, (_, _, desc)) in exprs.iter().enumerate() {
        qb.push(format!("k{i} {}, ", if *desc { "desc" } else { "asc" }));
    }
    qb.push(format!(
        "rid {} limit ",
        if backwards { "desc" } else { "asc" }
    ));
    qb.push_bind(plan.count + 1);
    let rows = qb.build().persistent(false).fetch_all(&state.db).await?;
    let code_rules = code_rules_flag(&rows, first_try)?;
    let mut found: Vec<Found> = Vec::with_capacity(rows.len());
    for row in rows {
        let mut keys = Vec::with_capacity(exprs.len());
        for (i, (_, ty, _)) in exprs.iter().enumerate() {
            let text: String = match *ty {
                "timestamptz" => row
                    .try_get::<chrono::DateTime<chrono::Utc>, _>(3 + i)
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_else(|_| {
                        // ±infinity do not decode as chrono times.
                        if exprs[i].2 {
                            "-infinity".into()
                        } else {
                            "infinity".into()
                        }
                    }),
                "float8" => row.try_get::<f64, _>(3 + i).map(|f| {
                    if f.is_infinite() {
                        if f > 0.0 {
                            "Infinity".into()
                        } else {
                            "-Infinity".into()
                        }
                    } else {
                        format!("{f:?}")
                    }
                })?,
                _ => row.try_get::<String, _>(3 + i)?,
            };
            keys.push(text);
        }
        found.push(found_row(&row, keys)?);
    }
    let mut page = into_page(found, plan, backwards);
    page.code_rules = code_rules;
    Ok(page)
}

/// `(rid, resource_type, id)` of a row, with its sort keys.
fn found_row(row: &sqlx::postgres::PgRow, keys: Vec<String>) -> Result<Found> {
    Ok(Found {
        rid: row.try_get(0)?,
        resource_type: row.try_get(1)?,
        id: row.try_get(2)?,
        keys,
    })
}

/// A page from the `count + 1` rows fetched in the paging direction.
fn into_page(mut found: Vec<Found>, plan: &Plan, backwards: bool) -> Page {
    let more = found.len() as i64 > plan.count;
    found.truncate(plan.count as usize);
    if backwards {
        found.reverse();
        Page {
            rows: found,
            has_next: true,
            has_prev: more,
            ..Page::default()
        }
    } else {
        Page {
            rows: found,
            has_next: more,
            has_prev: plan.cursor.is_some(),
            ..Page::default()
        }
    }
}

/// The hot wearable search, one patient's Observations by code (and date) without `_sort`, newest
/// first: a page of `obs_code_date` rows (they exist only for current Observations, with the data
/// classes consent needs), limited before anything else is read, with the page's versions in the
/// same statement. `None` when the plan is anything else.
async fn code_date_page(
    state: &AppState,
    plan: &Plan,
    policy: &Policy,
    decided: Option<&Decided>,
    first_try: Option<&str>,
) -> Result<Option<Page>> {
    let (Some(patient), redundant) = confinement(plan) else {
        return Ok(None);
    };
    if plan.types != ["Observation"] || !plan.sort.is_empty() || plan.since.is_some() {
        return Ok(None);
    }
    let rest: Vec<&Clause> = plan
        .clauses
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != redundant)
        .map(|(_, c)| c)
        .collect();
    let is = |c: &Clause, table: &str, name: &str| matches!(c, Clause::Index { table: t, code, negate: false, also: None, .. } if *t == table && code == name);
    let codes = rest.iter().filter(|c| is(c, "idx_token", "code")).count();
    let dates = rest.iter().filter(|c| is(c, "idx_date", "date")).count();
    // Granular scope filters need the resource row: the general path applies them.
    if codes != 1 || codes + dates != rest.len() || policy.filters_rows("Observation") {
        return Ok(None);
    }
    if policy.patient().is_some_and(|me| me != patient) {
        return Ok(Some(Page::default()));
    }
    let backwards = plan.cursor.as_ref().is_some_and(|c| c.d == "p");
    // The page's versions come along in the same statement (one round trip for the hot query),
    // and for a partner whether the patient's Consents name single codes.
    let mut qb: QueryBuilder<'static, Postgres> = QueryBuilder::new(format!(
        "select o.rid, {}, o.high::text",
        crate::storage::RID_VERSION_COLUMNS
    ));
    if let Some(organization) = first_try {
        push_code_rules_flag(&mut qb, plan, organization);
    }
    qb.push(" from (select rid, high from obs_code_date where compartment = ");
    qb.push_bind(patient.clone());
    for c in &rest {
        let Clause::Index { alts, .. } = c else {
            continue;
        };
        qb.push(" and (");
        crate::search::query::push_alts(&mut qb, alts);
        qb.push(")");
    }
    policy.push_classes_granted(&mut qb, "classes", &patient);
    if let Some(organization) = first_try {
        qb.push(" and not exists (select 1 from consent_grant cx where cx.organization = ");
        qb.push_bind(organization.to_owned());
        qb.push(" and cx.patient = ");
        qb.push_bind(patient.clone());
        qb.push(" and cx.code_rules)");
    }
    if let Some(d) = decided.filter(|d| d.patients.contains(&patient)) {
        qb.push(" and rid = any(");
        qb.push_bind(d.allowed.clone());
        qb.push(")");
    }
    // Newest first, in the order of the (compartment, code, high desc nulls last) index, so a
    // page costs about its own rows however many the patient has. Rows without a date come last.
    if let Some(c) = &plan.cursor {
        let [high] = c.k.as_slice() else {
            return Err(FhirError::bad_request(
                "_cursor",
                "the paging cursor does not match the sort; follow the Bundle's links",
            ));
        };
        // The SQL around the row's (date, rid), in the page's direction; a row without a date
        // binds only its rid.
        let (head, tail) = match (high.as_str(), backwards) {
            ("null", false) => (" and high is null and rid < ", ""),
            ("null", true) => (" and (high is not null or rid > ", ")"),
            (_, false) => (" and (high is null or (high, rid) < (", "))"),
            (_, true) => (" and (high, rid) > (", ")"),
        };
        qb.push(head);
        if high != "null" {
            qb.push_bind(high.clone());
            qb.push("::timestamptz, ");
        }
        qb.push_bind(c.r);
        qb.push(tail);
    }
    let (dir, nulls) = if backwards {
        ("asc", "first")
    } else {
        ("desc", "last")
    };
    qb.push(format!(
        " group by high, rid order by high {dir} nulls {nulls}, rid {dir} limit "
    ));
    qb.push_bind(plan.count + 1);
    qb.push(format!(
        ") o join resource r on r.rid = o.rid join resource_version v on v.resource_type = r.resource_type and v.id = r.id and v.version_id = r.version_id order by o.high {dir} nulls {nulls}, o.rid {dir}"
    ));
    // Unlike other searches this statement is kept prepared, with a generic plan: its plan is
    // the index order whatever the values, and planning it anew cost as much as running it.
    let rows = qb.build().fetch_all(&state.db_generic).await?;
    let code_rules = code_rules_flag(&rows, first_try)?;
    let highs: Vec<String> = rows
        .iter()
        .map(|row| {
            row.try_get::<Option<String>, _>(9)
                .map(|h| h.unwrap_or_else(|| "null".into()))
        })
        .collect::<std::result::Result<_, _>>()?;
    let fetched = crate::storage::versions_by_rid(state, &rows).await?;
    let found: Vec<Found> = fetched
        .iter()
        .zip(highs)
        .map(|((rid, v), high)| Found {
            rid: *rid,
            resource_type: v.resource_type.clone(),
            id: v.id.clone(),
            keys: vec![high],
        })
        .collect();
    let mut page = into_page(found, plan, backwards);
    page.fetched = fetched;
    page.code_rules = code_rules;
    Ok(Some(page))
}

/// How many resources `plan` matches that the caller sees (ignoring paging).
pub async fn count(state: &AppState, plan: &Plan, policy: &Policy) -> Result<i64> {
    let resolved = resolve_chains(state, plan, policy).await?;
    let plan = &resolved;
    let decided = decide(state, plan, policy).await?;
    // One value test over every resource of a type: index rows exist only for current versions,
    // so the index table alone answers (an index-only scan rather than a join per row).
    if let (
        true,
        [rt],
        [Clause::Index {
            table,
            pid,
            also: None,
            negate: false,
            alts,
            code,
        }],
        None,
        None,
    ) = (
        policy.sees_everything(),
        plan.types.as_slice(),
        plan.clauses.as_slice(),
        &plan.compartment,
        plan.since,
    ) {
        if state
            .search_params
            .is_type_specific(rt, state.search_params.storage_code(rt, code))
        {
            // A token with system and code matches at most one row per resource.
            let exact = *table == "idx_token"
                && matches!(alts.as_slice(), [crate::search::query::Alt::Sql(sql, _)] if sql == "(code = ? and system = ?)");
            let mut qb: QueryBuilder<'static, Postgres> = QueryBuilder::new(if exact {
                "select count(*)"
            } else {
                "select count(distinct rid)"
            });
            qb.push(format!(" from {table} where pid = "));
            qb.push_bind(*pid);
            qb.push(" and (");
            crate::search::query::push_alts(&mut qb, alts);
            qb.push(")");
            return Ok(qb
                .build_query_scalar::<i64>()
                .persistent(false)
                .fetch_one(&state.db)
                .await?);
        }
    }
    let mut qb: QueryBuilder<'static, Postgres> = QueryBuilder::new("select count(*)");
    push_filters(&mut qb, plan, policy, Rows::Visible(decided.as_ref()));
    Ok(qb
        .build_query_scalar::<i64>()
        .persistent(false)
        .fetch_one(&state.db)
        .await?)
}

/// Resources that `rows` refer to through `inc` (or, for `rev`, that refer to `rows`), that the
/// caller sees. For a partner, resources of patients whose Consents name single codes are not
/// included (only their searches' matches are decided one by one).
/// The resources of `types` that `rows` refer to through any indexed reference, as the caller
/// may see them (`$everything`'s resources outside the compartment).
pub async fn referenced(
    state: &AppState,
    rows: &[Found],
    types: &[&str],
    policy: &Policy,
) -> Result<Vec<Found>> {
    let rids: Vec<i64> = rows.iter().map(|f| f.rid).collect();
    let types: Vec<String> = types.iter().map(|t| (*t).to_owned()).collect();
    let mut qb: QueryBuilder<'static, Postgres> = QueryBuilder::new(
        "select r.rid, r.resource_type, r.id from resource r join (select distinct split_part(target, '/', 1) as t, split_part(target, '/', 2) as i from idx_reference where rid = any(",
    );
    qb.push_bind(rids);
    qb.push(") and split_part(target, '/', 1) = any(");
    qb.push_bind(types);
    qb.push(") and target not like '%:%' and target not like '#%') u on r.resource_type = u.t and r.id = u.i where not r.deleted");
    policy.restrict(&mut qb, "r", Permission::Search, None, None);
    qb.push(" order by r.rid limit 1000");
    let rows = qb.build().persistent(false).fetch_all(&state.db).await?;
    rows.iter().map(|row| found_row(row, Vec::new())).collect()
}

pub async fn include(
    state: &AppState,
    rows: &[Found],
    inc: &Include,
    rev: bool,
    policy: &Policy,
) -> Result<Vec<Found>> {
    let mut qb: QueryBuilder<'static, Postgres> = QueryBuilder::new("");
    if rev {
        let targets: Vec<String> = rows
            .iter()
            .map(|f| format!("{}/{}", f.resource_type, f.id))
            .collect();
        qb.push("select r.rid, r.resource_type, r.id from idx_reference x join resource r on r.rid = x.rid where not r.deleted and x.pid = ");
        qb.push_bind(inc.pid);
        qb.push(" and x.target = any(");
        qb.push_bind(targets);
        qb.push(") and r.resource_type = ");
        qb.push_bind(inc.source.clone());
    } else {
        let rids: Vec<i64> = rows
            .iter()
            .filter(|f| f.resource_type == inc.source)
            .map(|f| f.rid)
            .collect();
        qb.push("select r.rid, r.resource_type, r.id from resource r join (select distinct split_part(target, '/', 1) as t, split_part(target, '/', 2) as i from idx_reference where rid = any(");
        qb.push_bind(rids);
        qb.push(") and pid = ");
        qb.push_bind(inc.pid);
        qb.push(" and target not like '%:%' and target not like '#%') u on r.resource_type = u.t and r.id = u.i where not r.deleted");
        if let Some(t) = &inc.target {
            qb.push(" and r.resource_type = ");
            qb.push_bind(t.clone());
        }
    }
    policy.restrict(&mut qb, "r", Permission::Search, None, None);
    qb.push(" order by r.rid limit 1000");
    let rows = qb.build().persistent(false).fetch_all(&state.db).await?;
    rows.iter().map(|row| found_row(row, Vec::new())).collect()
}

/// The parsing context of `state`.
pub fn ctx(state: &AppState) -> Ctx<'_> {
    Ctx {
        keys: &state.keys,
        ids: &state.search_params,
        base: &state.fhir_base,
    }
}

/// `$lastn`: the rids of the `max` most recent Observations per code (by `date`) among those
/// `plan` matches, newest first within each code.
pub async fn lastn(state: &AppState, plan: &Plan, policy: &Policy, max: i64) -> Result<Vec<i64>> {
    let resolved = resolve_chains(state, plan, policy).await?;
    let plan = &resolved;
    let decided = decide(state, plan, policy).await?;
    let rows = Rows::Visible(decided.as_ref());
    if let (Some(patient), _) = confinement(plan) {
        return lastn_of_patient(state, plan, policy, rows, max, &patient).await;
    }
    let (code, date) = observation_pids(state)?;
    let mut qb: QueryBuilder<'static, Postgres> = QueryBuilder::new(
        "select rid from (select x.rid, t.system, t.code, d.high, row_number() over (partition by t.system, t.code order by d.high desc, x.rid desc) as n from (select r.rid",
    );
    push_filters(&mut qb, plan, policy, rows);
    qb.push(") x join idx_token t on t.rid = x.rid and t.pid = ");
    qb.push_bind(code);
    qb.push(" join lateral (select max(high) as high from idx_date where rid = x.rid and pid = ");
    qb.push_bind(date);
    qb.push(") d on true) y where n <= ");
    qb.push_bind(max);
    qb.push(" order by system, code, high desc nulls last, rid desc");
    distinct_rids(state, qb, false).await
}

/// `$lastn` for one patient: per code of the patient's Observations, an index scan of
/// `obs_code_date` from the newest down that stops after `max` rows passing the filters.
async fn lastn_of_patient(
    state: &AppState,
    plan: &Plan,
    policy: &Policy,
    rows: Rows<'_>,
    max: i64,
    patient: &str,
) -> Result<Vec<i64>> {
    // The patient's codes, by skipping through the index from one code to the next (a handful
    // of probes, where `distinct` would read every one of the patient's rows), then per code an
    // index scan from the newest down that stops after `max` rows passing the filters.
    let mut qb: QueryBuilder<'static, Postgres> = QueryBuilder::new(
        "with recursive c(code) as ((select code from obs_code_date where compartment = ",
    );
    qb.push_bind(patient.to_owned());
    qb.push(" and code is not null order by code limit 1) union all select (select n.code from obs_code_date n where n.compartment = ");
    qb.push_bind(patient.to_owned());
    qb.push(" and n.code > c.code order by n.code limit 1) from c where c.code is not null) select o.rid from c cross join lateral (select rid, high from obs_code_date o where o.compartment = ");
    qb.push_bind(patient.to_owned());
    qb.push(" and o.code = c.code and exists (select 1");
    push_filters(&mut qb, plan, policy, rows);
    qb.push(" and r.rid = o.rid) order by o.high desc nulls last, o.rid desc limit ");
    qb.push_bind(max);
    qb.push(") o order by c.code, o.high desc nulls last, o.rid desc");
    // Kept prepared with a generic plan, as the hot search: index probes whatever the values.
    distinct_rids(state, qb, true).await
}

/// The rids a query returns, each once, in order.
async fn distinct_rids(
    state: &AppState,
    mut qb: QueryBuilder<'static, Postgres>,
    prepared: bool,
) -> Result<Vec<i64>> {
    let pool = if prepared {
        &state.db_generic
    } else {
        &state.db
    };
    let rids: Vec<i64> = qb
        .build_query_scalar()
        .persistent(prepared)
        .fetch_all(pool)
        .await?;
    let mut seen = std::collections::HashSet::new();
    Ok(rids.into_iter().filter(|r| seen.insert(*r)).collect())
}

/// Statistics of one code.
#[derive(Debug)]
pub struct CodeStats {
    /// Code system.
    pub system: Option<String>,
    /// Code.
    pub code: String,
    /// Unit (UCUM code) when all values share one.
    pub unit: Option<String>,
    /// How many values.
    pub count: i64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub avg: f64,
}

/// `$stats`: count, minimum, maximum and average of `value-quantity` per code over `plan`.
pub async fn stats(state: &AppState, plan: &Plan, policy: &Policy) -> Result<Vec<CodeStats>> {
    let resolved = resolve_chains(state, plan, policy).await?;
    let plan = &resolved;
    let decided = decide(state, plan, policy).await?;
    let (code, _) = observation_pids(state)?;
    let value = state
        .search_params
        .get("Observation", "value-quantity")
        .ok_or_else(|| FhirError::Internal(anyhow::anyhow!("value-quantity is not registered")))?;
    let mut qb: QueryBuilder<'static, Postgres> = QueryBuilder::new(
        "select t.system, t.code, case when count(distinct v.code) = 1 then min(v.code) end, count(*), min(v.low), max(v.high), avg(v.low) from (select r.rid",
    );
    push_filters(&mut qb, plan, policy, Rows::Visible(decided.as_ref()));
    qb.push(") x join idx_token t on t.rid = x.rid and t.pid = ");
    qb.push_bind(code);
    qb.push(" join idx_number v on v.rid = x.rid and v.pid = ");
    qb.push_bind(value);
    qb.push(" where t.code is not null group by t.system, t.code order by t.system, t.code");
    let rows = qb.build().persistent(false).fetch_all(&state.db).await?;
    rows.into_iter()
        .map(|r| {
            Ok(CodeStats {
                system: r.try_get(0)?,
                code: r.try_get(1)?,
                unit: r.try_get(2)?,
                count: r.try_get(3)?,
                min: r.try_get::<Option<f64>, _>(4)?.unwrap_or_default(),
                max: r.try_get::<Option<f64>, _>(5)?.unwrap_or_default(),
                avg: r.try_get::<Option<f64>, _>(6)?.unwrap_or_default(),
            })
        })
        .collect()
}

fn observation_pids(state: &AppState) -> Result<(Pid, Pid)> {
    let get = |c: &str| {
        state.search_params.get("Observation", c).ok_or_else(|| {
            FhirError::Internal(anyhow::anyhow!("Observation {c} is not registered"))
        })
    };
    Ok((get("code")?, get("date")?))
}
