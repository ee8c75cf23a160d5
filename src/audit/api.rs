//! The FHIR face of the audit trail, and the auditing of each FHIR request.
//!
//! - `GET /fhir/AuditEvent?…` and `GET /fhir/AuditEvent/{id}` for auditors (`system/AuditEvent.rs`)
//!   and, restricted to their own events, for patients (`patient/AuditEvent.rs`). Partners never
//!   see the trail. Parameters: `date` (with prefixes), `agent`, `entity`, `patient`, `type`,
//!   `subtype`, `outcome`, `action`, `_sort=-date|date`, `_count`, `_total`.
//! - `GET /fhir/AuditEvent/$export?date=…&_outputFormat=ndjson|csv` for a period.
//! - Nobody creates, updates or deletes AuditEvents through the API: 405.

use std::sync::Arc;

use axum::extract::{RawQuery, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::{json, Value};

use super::event::{columns, Action, Columns, Event, Kind, Outcome};
use super::RequestContext;
use crate::auth::guard::Principal;
use crate::auth::scopes::Permission;
use crate::error::{FhirError, Result};
use crate::fhir::format::{self, negotiate, query_pairs};
use crate::fhir::history::{link, parse_count, DEFAULT_COUNT};
use crate::fhir::respond::prefer_strict;
use crate::state::AppState;

/// What a handler tells the audit middleware about its answer (a response extension).
#[derive(Debug, Clone, Default)]
pub struct AuditInfo {
    /// Ids of the patients whose data is in the answer.
    pub patients: Vec<String>,
    /// References of the resources in the answer.
    pub entities: Vec<String>,
    /// The interaction, when the URL alone does not tell it (`batch` or `transaction`).
    pub subtype: Option<&'static str>,
    /// The search parameters, when they came in the body (`POST _search`) and not the URL.
    pub query: Option<String>,
}

impl AuditInfo {
    /// Attaches the info to `resp`.
    pub fn attach(self, resp: &mut Response) {
        resp.extensions_mut().insert(self);
    }

    /// Adds a patient once.
    pub fn patient(&mut self, id: Option<&str>) {
        if let Some(id) = id {
            if !self.patients.iter().any(|p| p == id) {
                self.patients.push(id.to_owned());
            }
        }
    }
}

/// The caller of a request, from its token and headers.
pub fn context(principal: Option<&Principal>, req: &Request) -> RequestContext {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let address = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .or_else(|| header("x-forwarded-for"));
    let purpose = header("x-purpose-of-use").filter(|p| {
        !p.is_empty() && p.len() <= 32 && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    RequestContext {
        request_id: header("x-request-id"),
        client_id: principal.map(|p| p.claims.client_id.clone()),
        user: principal.and_then(|p| p.owner().map(|o| format!("Patient/{o}"))),
        organization: principal.and_then(crate::fhir::consent::partner),
        purpose,
        address,
        user_agent: header("user-agent"),
        ..RequestContext::default()
    }
}

/// The caller of a sign-in or OAuth request, which has no access token yet.
pub fn auth_context(
    address: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    client_id: Option<&str>,
    user: Option<String>,
) -> RequestContext {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    RequestContext {
        request_id: header("x-request-id"),
        // An unauthenticated claim of identity: kept short, it is only what the caller said.
        client_id: client_id.map(|c| c.chars().take(128).collect()),
        user,
        address: address.map(|a| a.to_string()),
        user_agent: header("user-agent"),
        ..RequestContext::default()
    }
}

/// Stores a sign-in or token event; `false` when it could not be stored (the caller then refuses
/// what it was about to grant).
pub async fn record_auth(
    state: &AppState,
    kind: Kind,
    outcome: Outcome,
    ctx: &RequestContext,
) -> bool {
    let event = Event::new(kind, Action::Execute).outcome(outcome);
    match state.auditor.record(&event, Some(ctx)).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "an authentication event could not be audited");
            false
        }
    }
}

/// The interaction a FHIR request is, for its event.
pub fn classify(method: &Method, path: &str) -> (Kind, Action) {
    if let Some(admin) = path.strip_prefix("/admin/") {
        let segs: Vec<&str> = admin.split('/').filter(|s| !s.is_empty()).collect();
        return match (method.clone(), segs.as_slice()) {
            (Method::POST, _) => (Kind::Admin("client-add"), Action::Create),
            (Method::DELETE, _) => (Kind::Admin("client-remove"), Action::Delete),
            (_, [_, _]) => (Kind::Admin("client-read"), Action::Read),
            _ => (Kind::Admin("client-list"), Action::Read),
        };
    }
    let rest = path.strip_prefix("/fhir").unwrap_or(path);
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if rest.starts_with("/ingest/") {
        return match segs.as_slice() {
            ["ingest", "jobs", ..] => (Kind::Operation("ingest-status"), Action::Read),
            _ => (Kind::Ingest, Action::Create),
        };
    }
    if let Some(op) = segs.iter().find(|s| s.starts_with('$')) {
        return (Kind::Operation(operation_name(op)), Action::Execute);
    }
    match (method.clone(), segs.as_slice()) {
        (Method::POST, []) => (Kind::Rest("transaction"), Action::Execute),
        (Method::GET | Method::HEAD, ["_history"]) => (Kind::Rest("history-system"), Action::Read),
        (Method::GET | Method::HEAD, [_]) => (Kind::Rest("search-type"), Action::Read),
        (Method::GET | Method::HEAD, [_, "_history"]) => (Kind::Rest("history-type"), Action::Read),
        (Method::GET | Method::HEAD, [_, _]) => (Kind::Rest("read"), Action::Read),
        (Method::GET | Method::HEAD, [_, _, "_history"]) => {
            (Kind::Rest("history-instance"), Action::Read)
        }
        (Method::GET | Method::HEAD, [_, _, "_history", _]) => (Kind::Rest("vread"), Action::Read),
        (Method::GET | Method::HEAD, [_, _, _]) => (Kind::Rest("search-type"), Action::Read),
        (Method::POST, [_, "_search"]) => (Kind::Rest("search-type"), Action::Read),
        (Method::POST, [_]) => (Kind::Rest("create"), Action::Create),
        (Method::PUT, _) => (Kind::Rest("update"), Action::Update),
        (Method::DELETE, _) => (Kind::Rest("delete"), Action::Delete),
        _ => (Kind::Rest("operation"), Action::Execute),
    }
}

fn operation_name(op: &str) -> &'static str {
    match op {
        "$everything" => "everything",
        "$lastn" => "lastn",
        "$stats" => "stats",
        "$export" => "export",
        _ => "operation",
    }
}

/// Runs `work` (the rest of a FHIR or ingest request) with its caller in scope, then audits it.
/// Single writes were audited by storage in their own transaction; everything else is stored here
/// before the response leaves (group commit). When that fails, the answer is a 503 instead: no
/// audit, no access.
pub async fn audited(
    state: &AppState,
    ctx: RequestContext,
    method: &Method,
    uri: &axum::http::Uri,
    work: impl std::future::Future<Output = Response>,
) -> Response {
    let ctx = Arc::new(ctx);
    let resp = super::REQUEST.scope(ctx.clone(), work).await;
    let (path, query) = (uri.path(), uri.query());
    if ctx.wrote() {
        // The write has committed by now; its inbox events can be linked.
        state.auditor.note_inbox();
    }
    let (kind, action) = classify(method, path);
    // A single write and an upload were audited by storage, in their own transactions; a Bundle
    // gets an event of its own besides those of its entries.
    let audited_by_storage = matches!(action, Action::Create | Action::Update | Action::Delete)
        && !matches!(kind, Kind::Admin(_));
    if ctx.wrote() && audited_by_storage && resp.status().is_success() {
        return resp;
    }
    if action == Action::Read && resp.status().is_success() && !state.auditor.audits_reads() {
        return resp;
    }
    let mut event = outcome_event(kind, action, &resp, &ctx, query, path);
    if !resp.status().is_success() || action == Action::Delete {
        // A refused (or not-found, or no-op) attempt on a resource is about its patient, who
        // sees it on their page, besides the requester.
        if let Some(p) = target_compartment(state, &event).await {
            if !event.patients.contains(&p) {
                event = event.patient(&p);
            }
        }
    }
    match state.auditor.record(&event, Some(&ctx)).await {
        Ok(()) => resp,
        Err(e) => {
            tracing::error!(error = %e, "request refused: its audit event could not be stored");
            FhirError::Unavailable(anyhow::anyhow!("the audit trail is unavailable"))
                .into_response()
        }
    }
}

/// The patient of the resource a refused instance interaction aimed at, if it exists.
async fn target_compartment(state: &AppState, event: &Event) -> Option<String> {
    let (rt, id) = event.entities.first()?.split_once('/')?;
    // language=PostgreSQL
    let found: Option<Option<String>> =
        sqlx::query_scalar("select compartment from resource where resource_type = $1 and id = $2")
            .bind(rt)
            .bind(id)
            .fetch_optional(&state.db)
            .await
            .ok()?;
    found.flatten()
}

/// Search parameters whose values are kept in an audited query; the values of every other
/// parameter (names, identifiers, addresses, …) are replaced by `*` so that no PHI reaches the
/// trail.
const PLAIN_PARAMS: &[&str] = &[
    "_id",
    "_count",
    "_cursor",
    "_sort",
    "_total",
    "_summary",
    "_elements",
    "_format",
    "_type",
    "_since",
    "_include",
    "_revinclude",
    "_lastUpdated",
    "_tag",
    "_profile",
    "_security",
    "_outputFormat",
    "patient",
    "subject",
    "code",
    "category",
    "date",
    "status",
    "max",
    "period",
    "agent",
    "entity",
    "type",
    "subtype",
    "outcome",
    "action",
];

/// The query of a request with the values of identifying parameters masked.
pub fn redacted_query(query: &str) -> String {
    let pairs: Vec<(String, String)> = query_pairs(Some(query))
        .into_iter()
        .map(|(k, v)| {
            // The value belongs to the last link of a chain (`subject:Patient.identifier`) or
            // of a reverse chain (`_has:Observation:patient:code`).
            let last = k.rsplit('.').next().unwrap_or(&k);
            let name = match last.strip_prefix("_has:") {
                Some(rest) => rest.rsplit(':').next().unwrap_or(rest),
                None => last.split(':').next().unwrap_or(last),
            };
            if PLAIN_PARAMS.contains(&name) {
                (k, v)
            } else {
                (k, "*".to_owned())
            }
        })
        .collect();
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&pairs)
        .finish()
}

fn outcome_event(
    kind: Kind,
    action: Action,
    resp: &Response,
    ctx: &RequestContext,
    query: Option<&str>,
    path: &str,
) -> Event {
    let status = resp.status().as_u16();
    let description = resp
        .extensions()
        .get::<crate::error::Diagnostics>()
        .map(|d| d.0.clone())
        .unwrap_or_else(|| format!("HTTP {status}"));
    let kind = match resp.extensions().get::<AuditInfo>().and_then(|i| i.subtype) {
        Some(sub) => Kind::Rest(sub),
        None => kind,
    };
    let mut e = Event::new(kind, action).outcome(Outcome::from_status(status, description));
    if let Some(info) = resp.extensions().get::<AuditInfo>() {
        for p in &info.patients {
            e = e.patient(p);
        }
        e.entities.extend(info.entities.iter().cloned());
    }
    if resp.extensions().get::<AuditInfo>().is_none()
        && matches!(
            kind,
            Kind::Rest("read" | "vread" | "update" | "delete" | "history-instance")
        )
    {
        // A refused or failed instance interaction still names what it was aimed at.
        let rest = path.strip_prefix("/fhir/").unwrap_or(path);
        let target: Vec<&str> = rest.split('/').take(2).collect();
        if target.len() == 2 {
            e = e.entity(target.join("/"));
        }
    }
    if let Some(me) = ctx.user.as_deref().and_then(|u| u.strip_prefix("Patient/")) {
        if e.patients.is_empty() {
            e = e.patient(me);
        }
    }
    if let Kind::Admin(_) = kind {
        // The client touched: in the path, or (for a registration) told by the handler.
        let named = resp
            .extensions()
            .get::<AuditInfo>()
            .and_then(|i| i.query.clone());
        let named = named.unwrap_or_else(|| path.trim_start_matches('/').to_owned());
        e.client = named
            .strip_prefix("admin/clients/")
            .filter(|id| !id.is_empty())
            .map(str::to_owned);
        e.query = Some(named);
        return e;
    }
    if matches!(
        kind,
        Kind::Rest("search-type" | "history-type" | "history-system")
    ) || matches!(kind, Kind::Operation(_))
    {
        let rest = path.strip_prefix("/fhir/").unwrap_or(path);
        let body_query = resp
            .extensions()
            .get::<AuditInfo>()
            .and_then(|i| i.query.as_deref());
        let query = match (query, body_query) {
            (Some(q), Some(b)) => Some(format!("{q}&{b}")),
            (q, b) => q.or(b).map(str::to_owned),
        };
        let query = query.as_deref();
        e.query = Some(match query {
            Some(q) => format!("{rest}?{}", redacted_query(q)),
            None => rest.to_owned(),
        });
    }
    e
}

/// Events of a write, one per stored version (or one for a whole ingest batch), for the inbox.
pub fn write_events(
    ctx: Option<&RequestContext>,
    versions: &[crate::storage::NewVersion],
) -> Vec<super::chain::Prepared> {
    let event = |v: &crate::storage::NewVersion| {
        let (sub, action) = match (&v.body, v.version_id) {
            (None, _) => ("delete", Action::Delete),
            (Some(_), 1) => ("create", Action::Create),
            _ => ("update", Action::Update),
        };
        let mut e = Event::new(Kind::Rest(sub), action).entity(format!(
            "{}/{}/_history/{}",
            v.resource_type, v.id, v.version_id
        ));
        if let Some(p) = &v.compartment {
            e = e.patient(p);
        }
        e
    };
    if ctx.is_some_and(|c| c.batched) {
        let mut e = Event::new(Kind::Ingest, Action::Create);
        for v in versions {
            if let Some(p) = &v.compartment {
                e = e.patient(p);
            }
            if v.resource_type == "Provenance" {
                e = e.entity(format!("Provenance/{}", v.id));
            }
        }
        return vec![super::chain::Prepared::new(&e, ctx)];
    }
    versions
        .iter()
        .map(|v| super::chain::Prepared::new(&event(v), ctx))
        .collect()
}

/// The event of a read inside a Bundle (`GET` entry), stored with the Bundle's transaction.
pub fn read_event(
    ctx: Option<&RequestContext>,
    reference: String,
    compartment: Option<&str>,
) -> super::chain::Prepared {
    let mut e = Event::new(Kind::Rest("read"), Action::Read).entity(reference);
    if let Some(p) = compartment {
        e = e.patient(p);
    }
    super::chain::Prepared::new(&e, ctx)
}

/// Records the failure of one entry of a batch (`method` and `url` as the entry gave them);
/// successful entries were audited by storage with their own transactions.
pub async fn record_entry_failure(
    state: &AppState,
    method: &str,
    url: &str,
    error: &FhirError,
) -> anyhow::Result<()> {
    let method = Method::from_bytes(method.as_bytes()).unwrap_or(Method::POST);
    let path = format!("/fhir/{}", url.split('?').next().unwrap_or(url));
    let (kind, action) = classify(&method, &path);
    let (status, issues) = error.client_response();
    let description = crate::error::Diagnostics::of(error, &issues).0;
    let mut event =
        Event::new(kind, action).outcome(Outcome::from_status(status.as_u16(), description));
    let target: Vec<&str> = path["/fhir/".len()..].split('/').take(2).collect();
    if target.len() == 2 && !matches!(kind, Kind::Rest("create")) {
        event = event.entity(target.join("/"));
    }
    let ctx = super::current();
    state.auditor.record(&event, ctx.as_deref()).await
}

/// Who may read the trail: auditors (system scope) see everything; a patient sees the events
/// about their own data; partners see nothing.
fn reader_scope(principal: &Principal) -> Result<Option<String>> {
    if principal.claims.organization.is_some() {
        return Err(FhirError::Forbidden(
            "partner organisations cannot read the audit trail".into(),
        ));
    }
    principal.require("AuditEvent", Permission::Read)?;
    Ok(principal.owner().map(|o| format!("Patient/{o}")))
}

/// One search of the trail, parsed.
#[derive(Debug, Default)]
pub(crate) struct Query {
    /// `(sql, binds)` fragments joined with `and`.
    clauses: Vec<Clause>,
    ascending: bool,
    pub(crate) count: i64,
    after: Option<i64>,
    total: bool,
    used: Vec<(String, String)>,
    ignored: Vec<String>,
}

#[derive(Debug)]
enum Clause {
    /// `recorded <op> $`.
    Recorded(&'static str, DateTime<Utc>),
    /// `not (recorded >= $ and recorded < $)`.
    RecordedNot(DateTime<Utc>, DateTime<Utc>),
    /// `terms && $`: any of these search terms.
    Terms(Vec<String>),
}

/// The range `[start, end)` a FHIR date of any precision covers.
fn date_range(name: &str, v: &str) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let bad = || {
        FhirError::bad_request(
            name,
            format!("'{v}' is not a FHIR date or dateTime (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss+zz:zz)"),
        )
    };
    if v.contains('T') {
        let t = DateTime::parse_from_rfc3339(v).map_err(|_| bad())?;
        let t = t.with_timezone(&Utc);
        let step = if v.contains('.') {
            Duration::milliseconds(1)
        } else {
            Duration::seconds(1)
        };
        return Ok((t, t + step));
    }
    let parts: Vec<&str> = v.split('-').collect();
    let num = |s: &str, len: usize| -> Result<u32> {
        if s.len() == len && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (start, end) = match parts.as_slice() {
        [y] => {
            let y = num(y, 4)? as i32;
            (
                NaiveDate::from_ymd_opt(y, 1, 1),
                NaiveDate::from_ymd_opt(y + 1, 1, 1),
            )
        }
        [y, m] => {
            let (y, m) = (num(y, 4)? as i32, num(m, 2)?);
            let next = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (
                NaiveDate::from_ymd_opt(y, m, 1),
                NaiveDate::from_ymd_opt(next.0, next.1, 1),
            )
        }
        [y, m, d] => {
            let day = NaiveDate::from_ymd_opt(num(y, 4)? as i32, num(m, 2)?, num(d, 2)?);
            (day, day.and_then(|d| d.succ_opt()))
        }
        _ => return Err(bad()),
    };
    let midnight = |d: Option<NaiveDate>| -> Result<DateTime<Utc>> {
        Ok(d.ok_or_else(bad)?
            .and_hms_opt(0, 0, 0)
            .ok_or_else(bad)?
            .and_utc())
    };
    Ok((midnight(start)?, midnight(end)?))
}

fn terms(prefix: &str, references: Vec<String>) -> Vec<String> {
    references
        .into_iter()
        .map(|r| format!("{prefix}{r}"))
        .collect()
}

fn tokens(v: &str) -> Vec<String> {
    v.split(',')
        .map(|t| t.rsplit('|').next().unwrap_or(t).to_owned())
        .collect()
}

fn references(v: &str, rt: Option<&str>, base: &str) -> Vec<String> {
    let mut out = Vec::new();
    for r in v.split(',') {
        let r = r
            .strip_prefix(base)
            .map(|r| r.trim_start_matches('/'))
            .unwrap_or(r);
        match (r.contains('/') || r.starts_with("client:"), rt) {
            (true, _) => out.push(r.to_owned()),
            (false, Some(rt)) => out.push(format!("{rt}/{r}")),
            (false, None) => out.push(format!("client:{r}")),
        }
    }
    out
}

impl Query {
    pub(crate) fn parse(pairs: &[(String, String)], strict: bool, base: &str) -> Result<Self> {
        let mut q = Query {
            count: DEFAULT_COUNT,
            ..Query::default()
        };
        for (k, v) in pairs {
            let (name, modifier) = k.split_once(':').unwrap_or((k.as_str(), ""));
            if !modifier.is_empty() && name != "_sort" {
                return Err(FhirError::bad_request(
                    k,
                    format!("modifier ':{modifier}' is not supported on AuditEvent.{name}"),
                ));
            }
            match name {
                "_count" => q.count = parse_count(v)?,
                "_cursor" => {
                    q.after = Some(v.parse().map_err(|_| {
                        FhirError::bad_request("_cursor", "the paging cursor is not valid")
                    })?);
                    continue;
                }
                "_format" => {}
                "_total" => match v.as_str() {
                    "accurate" => q.total = true,
                    "none" | "estimate" => {}
                    _ => {
                        return Err(FhirError::bad_request(
                            "_total",
                            "_total must be none, estimate or accurate",
                        ))
                    }
                },
                "_sort" => match v.as_str() {
                    "-date" => q.ascending = false,
                    "date" => q.ascending = true,
                    _ => {
                        return Err(FhirError::bad_request(
                            "_sort",
                            "AuditEvent sorts by date or -date",
                        ))
                    }
                },
                "date" => {
                    let (prefix, value) = match v.get(..2) {
                        Some(p) if p.bytes().all(|b| b.is_ascii_lowercase()) => (p, &v[2..]),
                        _ => ("eq", v.as_str()),
                    };
                    let (lo, hi) = date_range("date", value)?;
                    match prefix {
                        "eq" => {
                            q.clauses.push(Clause::Recorded(">=", lo));
                            q.clauses.push(Clause::Recorded("<", hi));
                        }
                        "ne" => q.clauses.push(Clause::RecordedNot(lo, hi)),
                        "ge" => q.clauses.push(Clause::Recorded(">=", lo)),
                        "gt" | "sa" => q.clauses.push(Clause::Recorded(">=", hi)),
                        "le" => q.clauses.push(Clause::Recorded("<", hi)),
                        "lt" | "eb" => q.clauses.push(Clause::Recorded("<", lo)),
                        other => {
                            return Err(FhirError::bad_request(
                                "date",
                                format!(
                                "unknown date prefix '{other}' (eq, ne, gt, lt, ge, le, sa, eb)"
                            ),
                            ))
                        }
                    }
                }
                "agent" => q
                    .clauses
                    .push(Clause::Terms(terms("a|", references(v, None, base)))),
                "entity" => q
                    .clauses
                    .push(Clause::Terms(terms("e|", references(v, None, base)))),
                "patient" => q.clauses.push(Clause::Terms(terms(
                    "p|",
                    references(v, Some("Patient"), base),
                ))),
                "type" => q.clauses.push(Clause::Terms(terms("t|", tokens(v)))),
                "subtype" => q.clauses.push(Clause::Terms(terms("s|", tokens(v)))),
                "outcome" => q.clauses.push(Clause::Terms(terms("o|", tokens(v)))),
                "action" => q.clauses.push(Clause::Terms(terms("x|", tokens(v)))),
                _ if strict => {
                    return Err(FhirError::bad_request(
                        k,
                        format!("search parameter '{k}' is not supported for AuditEvent"),
                    ))
                }
                _ => {
                    q.ignored.push(k.clone());
                    continue;
                }
            }
            q.used.push((k.clone(), v.clone()));
        }
        Ok(q)
    }

    /// `where …` over the rows of `audit_log` that may hold matching events (restricted to
    /// `patient` when given), with the binds in order; `after` is the paging cursor (an event id).
    fn push_where<'a>(
        &'a self,
        b: &mut sqlx::QueryBuilder<'a, sqlx::Postgres>,
        patient: Option<&'a String>,
        after: Option<i64>,
    ) {
        b.push(" where true");
        if let Some(p) = patient {
            b.push(" and terms @> array['p|' || ")
                .push_bind(p)
                .push("]::text[]");
        }
        for c in &self.clauses {
            match c {
                Clause::Recorded(">=", t) => {
                    b.push(" and recorded_max >= ").push_bind(*t);
                }
                Clause::Recorded(_, t) => {
                    b.push(" and recorded_min < ").push_bind(*t);
                }
                // A row can hold events on both sides of the excluded range.
                Clause::RecordedNot(..) => {}
                Clause::Terms(values) => {
                    b.push(" and terms && ").push_bind(values).push("::text[]");
                }
            }
        }
        if let Some(after) = after {
            if self.ascending {
                b.push(" and first_id + count > ").push_bind(after + 1);
            } else {
                b.push(" and first_id < ").push_bind(after);
            }
        }
    }

    /// Whether one event (its columns) matches every criterion.
    fn matches(&self, c: &Columns, patient: Option<&String>) -> bool {
        let terms = c.terms();
        if let Some(p) = patient {
            if !terms.contains(&format!("p|{p}")) {
                return false;
            }
        }
        self.clauses.iter().all(|clause| match clause {
            Clause::Recorded(">=", t) => c.recorded >= *t,
            Clause::Recorded(_, t) => c.recorded < *t,
            Clause::RecordedNot(lo, hi) => !(c.recorded >= *lo && c.recorded < *hi),
            Clause::Terms(values) => values.iter().any(|v| terms.contains(v)),
        })
    }
}

/// Rows fetched per round of a search.
const ROWS_PER_ROUND: i64 = 64;

/// The matching events as `(id, text)`, in the query's order, after its cursor when `paged`, at
/// most `limit` of them.
pub(crate) async fn run_query(
    state: &AppState,
    q: &Query,
    patient: Option<&String>,
    limit: Option<i64>,
) -> Result<Vec<(i64, String)>> {
    let paged = limit.is_some();
    let limit = limit.map_or(usize::MAX, |l| l.max(0) as usize);
    let mut out = Vec::new();
    let mut cursor = if paged { q.after } else { None };
    while out.len() < limit {
        let mut b = sqlx::QueryBuilder::new("select first_id, events from audit_log");
        q.push_where(&mut b, patient, cursor);
        b.push(if q.ascending {
            " order by seq limit "
        } else {
            " order by seq desc limit "
        });
        b.push_bind(ROWS_PER_ROUND);
        let rows: Vec<(i64, String)> = b.build_query_as().fetch_all(&state.db).await?;
        let last_round = (rows.len() as i64) < ROWS_PER_ROUND;
        for (first_id, events) in &rows {
            let mut found: Vec<(i64, &str)> = events
                .split('\n')
                .enumerate()
                .map(|(i, line)| (first_id + i as i64, line))
                .filter(|(id, _)| match cursor {
                    Some(c) if q.ascending => *id > c,
                    Some(c) => *id < c,
                    None => true,
                })
                .collect();
            if !q.ascending {
                found.reverse();
            }
            for (id, line) in found {
                let Some(shown) = shown_to(line, patient) else {
                    continue;
                };
                let matched = serde_json::from_str::<Value>(&shown)
                    .ok()
                    .and_then(|v| columns(&v))
                    .is_some_and(|c| q.matches(&c, patient));
                if matched {
                    out.push((id, shown));
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        if last_round {
            break;
        }
        // The next round starts after the last row read.
        cursor = rows.last().map(|(first_id, events)| {
            if q.ascending {
                first_id + events.split('\n').count() as i64 - 1
            } else {
                *first_id
            }
        });
    }
    Ok(out)
}

/// An event as `reader` (a patient's `Patient/{id}`, or `None` for an auditor) may see it. A
/// patient sees the other patients an event names only as far as they are themselves named: an
/// attempt of theirs on a resource they may not see names its patient for that patient and the
/// auditors, and must read exactly like an attempt on a missing id to the requester.
fn shown_to(line: &str, reader: Option<&String>) -> Option<String> {
    let Some(reader) = reader else {
        return Some(line.to_owned());
    };
    let mut event: Value = serde_json::from_str(line).ok()?;
    let other_patient = |e: &Value| {
        e["type"]["code"] == "1"
            && e["what"]["reference"]
                .as_str()
                .is_some_and(|r| r.starts_with("Patient/") && r != reader)
    };
    if let Some(entities) = event.get_mut("entity").and_then(Value::as_array_mut) {
        if !entities.iter().any(other_patient) {
            return Some(line.to_owned());
        }
        entities.retain(|e| !other_patient(e));
    }
    Some(event.to_string())
}

/// `GET /fhir/AuditEvent?…` (also `POST /fhir/AuditEvent/_search`).
pub async fn search(
    state: &AppState,
    principal: &Principal,
    pairs: Vec<(String, String)>,
    headers: &HeaderMap,
) -> Result<Response> {
    let patient = reader_scope(principal)?;
    let fmt = negotiate(headers, &pairs)?;
    let base = state.fhir_base.clone();
    let q = Query::parse(&pairs, prefer_strict(headers), &base)?;
    state
        .auditor
        .flush()
        .await
        .map_err(FhirError::Unavailable)?;
    let mut rows = run_query(state, &q, patient.as_ref(), Some(q.count + 1)).await?;
    let more = rows.len() as i64 > q.count;
    rows.truncate(q.count as usize);
    let mut links = vec![json!({"relation": "self", "url": link(&base, "AuditEvent", &q.used)})];
    if let (true, Some((last, _))) = (more, rows.last()) {
        let mut next = q.used.clone();
        next.push(("_cursor".into(), last.to_string()));
        links.push(json!({"relation": "next", "url": link(&base, "AuditEvent", &next)}));
    }
    let mut entries = Vec::with_capacity(rows.len() + 1);
    for (seq, text) in &rows {
        let resource: Value = serde_json::from_str(text).map_err(anyhow::Error::from)?;
        entries.push(json!({"fullUrl": format!("{base}/AuditEvent/{seq}"), "resource": resource, "search": {"mode": "match"}}));
    }
    if !q.ignored.is_empty() {
        let oo = json!({"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "not-supported",
            "diagnostics": format!("ignored unknown search parameters: {}", q.ignored.join(", ")), "expression": q.ignored}]});
        entries.push(json!({"resource": oo, "search": {"mode": "outcome"}}));
    }
    let mut bundle = crate::fhir::respond::bundle("searchset", links, entries);
    if q.total {
        let n = run_query(state, &q, patient.as_ref(), None).await?.len();
        bundle["total"] = json!(n);
    }
    format::resource_value(StatusCode::OK, fmt, &bundle)
}

/// The text of event `id`, if it exists.
pub(crate) async fn event_by_id(state: &AppState, id: i64) -> Result<Option<String>> {
    // language=PostgreSQL
    let row: Option<(i64, String)> = sqlx::query_as(
        "select first_id, events from audit_log where first_id <= $1 order by first_id desc limit 1",
    )
    .bind(id)
    .fetch_optional(&state.db)
    .await?;
    Ok(row.and_then(|(first_id, events)| {
        let line = events
            .split('\n')
            .nth(usize::try_from(id - first_id).ok()?)?;
        Some(line.to_owned())
    }))
}

/// `GET /fhir/AuditEvent/{id}`.
pub async fn read(state: &AppState, principal: &Principal, id: &str) -> Result<Response> {
    let patient = reader_scope(principal)?;
    let missing = || FhirError::not_found("AuditEvent", id);
    let seq: i64 = id.parse().map_err(|_| missing())?;
    state
        .auditor
        .flush()
        .await
        .map_err(FhirError::Unavailable)?;
    let text = event_by_id(state, seq)
        .await?
        .and_then(|line| shown_to(&line, patient.as_ref()))
        .filter(|shown| {
            patient.as_ref().is_none_or(|p| {
                serde_json::from_str::<Value>(shown)
                    .ok()
                    .and_then(|v| columns(&v))
                    .is_some_and(|c| c.patients.contains(p))
            })
        });
    let text = text.ok_or_else(missing)?;
    let mut resp = (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/fhir+json; charset=utf-8")],
        text,
    )
        .into_response();
    AuditInfo::default().attach(&mut resp);
    Ok(resp)
}

/// `GET /fhir/AuditEvent/$export?date=ge…&date=lt…&_outputFormat=ndjson|csv`: every event of the
/// period (and the other search parameters), oldest first.
pub async fn export(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let patient = reader_scope(&principal)?;
    let mut pairs = query_pairs(raw.as_deref());
    let csv = match pairs.iter().find(|(k, _)| k == "_outputFormat") {
        None => false,
        Some((_, f)) => match f.as_str() {
            "ndjson" | "application/fhir+ndjson" | "application/ndjson" => false,
            "csv" | "text/csv" => true,
            _ => {
                return Err(FhirError::bad_request(
                    "_outputFormat",
                    "_outputFormat must be ndjson or csv",
                ))
            }
        },
    };
    pairs.retain(|(k, _)| k != "_outputFormat" && k != "_sort");
    pairs.push(("_sort".into(), "date".into()));
    let q = Query::parse(&pairs, prefer_strict(&headers), &state.fhir_base)?;
    state
        .auditor
        .flush()
        .await
        .map_err(FhirError::Unavailable)?;
    let rows = run_query(&state, &q, patient.as_ref(), None).await?;
    let (body, content_type) = if csv {
        (to_csv(&rows)?, "text/csv; charset=utf-8")
    } else {
        let mut out = String::new();
        for (_, text) in &rows {
            out.push_str(text);
            out.push('\n');
        }
        (out, "application/fhir+ndjson")
    };
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response())
}

/// One CSV line per event: the columns an auditor filters on.
pub fn to_csv(rows: &[(i64, String)]) -> Result<String> {
    let mut out = String::from("id,recorded,type,subtype,action,outcome,outcome_description,agents,patients,entities,purpose\n");
    for (seq, text) in rows {
        let e: Value = serde_json::from_str(text).map_err(anyhow::Error::from)?;
        let c = super::event::columns(&e).unwrap_or_else(|| super::event::Columns {
            recorded: DateTime::<Utc>::MIN_UTC,
            type_code: String::new(),
            subtype: None,
            action: String::new(),
            outcome: String::new(),
            agents: vec![],
            patients: vec![],
            entities: vec![],
        });
        let fields = [
            seq.to_string(),
            e["recorded"].as_str().unwrap_or("").to_owned(),
            c.type_code,
            c.subtype.unwrap_or_default(),
            c.action,
            c.outcome,
            e["outcomeDesc"].as_str().unwrap_or("").to_owned(),
            c.agents.join(" "),
            c.patients.join(" "),
            c.entities.join(" "),
            e["purposeOfEvent"][0]["coding"][0]["code"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// RFC 4180 quoting; a leading `=`, `+`, `-` or `@` is prefixed with `'` so that a spreadsheet
/// does not run it as a formula.
fn csv_field(f: &str) -> String {
    let f = if f.starts_with(['=', '+', '-', '@']) {
        format!("'{f}")
    } else {
        f.to_owned()
    };
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f
    }
}

/// Creating, changing or deleting an AuditEvent through the API: always 405.
pub async fn refuse_write() -> FhirError {
    FhirError::MethodNotAllowed("AuditEvents are written only by the server; they cannot be created, changed or deleted through the API".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifying_search_values_are_masked_even_at_the_end_of_a_chain() {
        assert_eq!(
            redacted_query("subject:Patient.identifier=urn:mrn|42&code=8867-4&family:exact=Doe"),
            "subject%3APatient.identifier=*&code=8867-4&family%3Aexact=*"
        );
        assert_eq!(
            redacted_query("patient.name=ann&_has:Observation:patient:code=1234&_has:Observation:subject:value-string=dizzy"),
            "patient.name=*&_has%3AObservation%3Apatient%3Acode=1234&_has%3AObservation%3Asubject%3Avalue-string=*"
        );
    }

    #[test]
    fn dates_of_every_precision_are_ranges() {
        let (lo, hi) = date_range("date", "2026-02").unwrap();
        assert_eq!(lo.to_rfc3339(), "2026-02-01T00:00:00+00:00");
        assert_eq!(hi.to_rfc3339(), "2026-03-01T00:00:00+00:00");
        let (lo, hi) = date_range("date", "2026-12-31").unwrap();
        assert_eq!((hi - lo).num_hours(), 24);
        assert!(date_range("date", "2026-13").is_err());
        assert!(date_range("date", "26-01-01").is_err());
        let (lo, hi) = date_range("date", "2026-01-01T10:00:00+02:00").unwrap();
        assert_eq!(lo.to_rfc3339(), "2026-01-01T08:00:00+00:00");
        assert_eq!((hi - lo).num_seconds(), 1);
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("=1+1"), "'=1+1");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn requests_are_classified_as_balp_interactions() {
        let c = |m: Method, p: &str| classify(&m, p).0;
        assert_eq!(c(Method::GET, "/fhir/Observation/1"), Kind::Rest("read"));
        assert_eq!(
            c(Method::GET, "/fhir/Observation"),
            Kind::Rest("search-type")
        );
        assert_eq!(
            c(Method::GET, "/fhir/Observation/1/_history/2"),
            Kind::Rest("vread")
        );
        assert_eq!(c(Method::POST, "/fhir"), Kind::Rest("transaction"));
        assert_eq!(
            c(Method::DELETE, "/fhir/Observation/1"),
            Kind::Rest("delete")
        );
        assert_eq!(
            c(Method::GET, "/fhir/Patient/1/$everything"),
            Kind::Operation("everything")
        );
    }
}
