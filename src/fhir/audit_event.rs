//! The FHIR face of the audit trail.
//!
//! - `GET /fhir/AuditEvent?…` and `GET /fhir/AuditEvent/{id}` for auditors (`system/AuditEvent.rs`)
//!   and, restricted to their own events, for patients (`patient/AuditEvent.rs`). Partners never
//!   see the trail. Parameters: `date` (with prefixes), `agent`, `entity`, `patient`, `type`,
//!   `subtype`, `outcome`, `action`, `_sort=-date|date`, `_count`, `_total`.
//! - `GET /fhir/AuditEvent/$export?date=…&_outputFormat=ndjson|csv` for a period.
//! - Nobody creates, updates or deletes AuditEvents through the API: 405.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde_json::{json, Value};

use crate::access::Policy;
use crate::audit::api::AuditInfo;
use crate::audit::event::columns;
use crate::audit::trail::{event_by_id, run_query, shown_to, to_csv, Query};
use crate::auth::scopes::Permission;
use crate::error::{FhirError, Result};
use crate::fhir::format::{self, negotiate, query_pairs};
use crate::fhir::history::link;
use crate::fhir::respond::prefer_strict;
use crate::state::AppState;

/// Who may read the trail: auditors (system scope) see everything; a patient sees the events
/// about their own data; partners see nothing.
fn reader_scope(policy: &Policy) -> Result<Option<String>> {
    // Partners were refused by the policy before the handler ran (`Interaction::open_to_partners`).
    policy.require("AuditEvent", Permission::Read)?;
    Ok(policy.patient().map(|o| format!("Patient/{o}")))
}

/// `GET /fhir/AuditEvent?…` (also `POST /fhir/AuditEvent/_search`).
pub async fn search(
    state: &AppState,
    policy: &Policy,
    pairs: Vec<(String, String)>,
    headers: &HeaderMap,
) -> Result<Response> {
    let patient = reader_scope(policy)?;
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

/// `GET /fhir/AuditEvent/{id}`.
pub async fn read(state: &AppState, policy: &Policy, id: &str) -> Result<Response> {
    let patient = reader_scope(policy)?;
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
    Extension(policy): Extension<Arc<Policy>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let patient = reader_scope(&policy)?;
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

/// `GET /fhir/AuditEvent?…`, the route.
pub async fn search_route(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let pairs = query_pairs(q.as_deref());
    search(&state, &policy, pairs, &headers).await
}

/// `GET /fhir/AuditEvent/{id}`, the route.
pub async fn read_route(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    Path(id): Path<String>,
) -> Result<Response> {
    read(&state, &policy, &id).await
}

/// Creating, changing or deleting an AuditEvent through the API: always 405.
pub async fn refuse_write() -> FhirError {
    FhirError::MethodNotAllowed("AuditEvents are written only by the server; they cannot be created, changed or deleted through the API".into())
}
