//! The audit pages: the auditor's view of the whole trail (filters, paging, each event's detail,
//! CSV download) and the patient's "Who accessed my data". Both read the same table as the
//! AuditEvent API, through the same query code, and viewing them is itself audited.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::audit::event::{columns, Kind};
use crate::audit::trail::{run_query, to_csv, Query as AuditQuery};
use crate::audit::{Action, Event};
use crate::auth::limit::ClientAddr;
use crate::auth::users::{self, User};
use crate::state::AppState;
use crate::ui::{current_user, esc, failure_page, page, table_page};

/// Events per page.
const PAGE: i64 = 25;

/// Who is looking, or the page that refuses them.
async fn viewer(state: &AppState, headers: &HeaderMap, auditor: bool) -> Result<User, Response> {
    let Some(user) = current_user(state, headers).await else {
        return Err(page(
            StatusCode::UNAUTHORIZED,
            "Sign in",
            "<h1>Please sign in</h1><p><a href=\"/auth/login\">Sign in</a> first, then come back to this page.</p>",
            &[],
        ));
    };
    if auditor {
        match users::is_auditor(state, &user).await {
            Ok(true) => {}
            Ok(false) => return Err(page(
                StatusCode::FORBIDDEN,
                "Not an auditor",
                "<h1>Not an auditor</h1><p>This page is for accounts with the auditor role.</p>",
                &[],
            )),
            Err(e) => {
                tracing::error!(error = %e, "auditor check failed");
                return Err(failure_page());
            }
        }
    }
    Ok(user)
}

/// Records that `user` looked at audit events; `false` when that could not be stored.
async fn record_view(
    state: &AppState,
    addr: &ClientAddr,
    headers: &HeaderMap,
    user: &User,
    query: String,
) -> bool {
    if !state.auditor.audits_reads() {
        return true;
    }
    let ctx = crate::audit::api::auth_context(
        addr.0,
        headers,
        None,
        Some(format!("Patient/{}", user.patient_id)),
    );
    let mut event = Event::new(Kind::Rest("search-type"), Action::Read);
    event.query = Some(query);
    match state.auditor.record(&event, Some(&ctx)).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "audit page view could not be audited");
            false
        }
    }
}

/// The auditor's filters as AuditEvent search parameters.
fn filter_pairs(f: &HashMap<String, String>) -> Vec<(String, String)> {
    let get = |k: &str| f.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let mut pairs = Vec::new();
    if let Some(p) = get("patient") {
        let p = p.strip_prefix("Patient/").unwrap_or(p);
        pairs.push(("patient".into(), format!("Patient/{p}")));
    }
    if let Some(o) = get("partner") {
        let o = o.strip_prefix("Organization/").unwrap_or(o);
        pairs.push(("agent".into(), format!("Organization/{o}")));
    }
    if let Some(d) = get("from") {
        pairs.push(("date".into(), format!("ge{d}")));
    }
    if let Some(d) = get("to") {
        pairs.push(("date".into(), format!("le{d}")));
    }
    if let Some(o) = get("outcome").filter(|o| ["0", "4", "8"].contains(o)) {
        pairs.push(("outcome".into(), o.to_owned()));
    }
    pairs
}

fn link_query(f: &HashMap<String, String>, extra: Option<(&str, String)>) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for k in ["patient", "partner", "from", "to", "outcome"] {
        if let Some(v) = f.get(k).filter(|v| !v.trim().is_empty()) {
            s.append_pair(k, v.trim());
        }
    }
    if let Some((k, v)) = extra {
        s.append_pair(k, &v);
    }
    s.finish()
}

fn outcome_text(code: &str) -> &'static str {
    match code {
        "0" => "allowed",
        "4" => "refused",
        _ => "failed",
    }
}

/// An event's columns, what it did (subtype and entities) and its outcome code, for a table row.
fn summary(e: &Value) -> (Option<crate::audit::event::Columns>, String, &str) {
    let c = columns(e);
    let what = format!(
        "{} {}",
        e["subtype"][0]["code"].as_str().unwrap_or(""),
        c.as_ref().map(|c| c.entities.join(" ")).unwrap_or_default()
    );
    (c, what, e["outcome"].as_str().unwrap_or(""))
}

/// The agents of an event, for a table cell.
fn who(e: &Value) -> String {
    e["agent"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| {
                    x["who"]["reference"]
                        .as_str()
                        .map(str::to_owned)
                        .or_else(|| {
                            x["who"]["identifier"]["value"]
                                .as_str()
                                .map(|c| format!("app {c}"))
                        })
                        .or_else(|| x["who"]["display"].as_str().map(str::to_owned))
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// Runs the filters; the rows of one page and the cursor of the next.
async fn page_of(
    state: &AppState,
    mut pairs: Vec<(String, String)>,
    after: Option<&String>,
    patient: Option<&String>,
) -> crate::error::Result<(Vec<(i64, String)>, Option<i64>)> {
    pairs.push(("_count".into(), PAGE.to_string()));
    if let Some(a) = after {
        pairs.push(("_cursor".into(), a.clone()));
    }
    let q = AuditQuery::parse(&pairs, true, &state.fhir_base)?;
    state
        .auditor
        .flush()
        .await
        .map_err(crate::error::FhirError::Unavailable)?;
    let mut rows = run_query(state, &q, patient, Some(PAGE + 1)).await?;
    let next = (rows.len() as i64 > PAGE).then(|| rows[PAGE as usize - 1].0);
    rows.truncate(PAGE as usize);
    Ok((rows, next))
}

/// `GET /audit`: the whole trail, newest first, for auditors.
pub async fn auditor_page(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Query(f): Query<HashMap<String, String>>,
) -> Response {
    let user = match viewer(&state, &headers, true).await {
        Ok(u) => u,
        Err(resp) => return resp,
    };
    let pairs = filter_pairs(&f);
    let (rows, next) = match page_of(&state, pairs.clone(), f.get("after"), None).await {
        Ok(r) => r,
        Err(e) => {
            let (status, issues) = e.client_response();
            let msg = issues
                .first()
                .map(|i| i.message.clone())
                .unwrap_or_default();
            let body = format!(
                "{}<p class=\"error\" id=\"error\">{}</p>",
                filters(&f),
                esc(&msg)
            );
            return page(status, "Audit trail", &body, &[]);
        }
    };
    let query = format!(
        "AuditEvent?{}",
        crate::audit::api::redacted_query(&link_query(&f, None))
    );
    if !record_view(&state, &addr, &headers, &user, query).await {
        return failure_page();
    }
    let mut body = filters(&f);
    body.push_str(&format!(
        "<p><a id=\"csv\" href=\"/audit/export.csv?{}\">Download CSV</a></p>",
        esc(&link_query(&f, None))
    ));
    body.push_str("<table id=\"events\"><thead><tr><th>When</th><th>What</th><th>Who</th><th>Patient</th><th>Outcome</th></tr></thead><tbody>");
    for (seq, text) in &rows {
        let Ok(e) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        let (c, what, outcome) = summary(&e);
        body.push_str(&format!(
            "<tr class=\"outcome-{o}\"><td><a href=\"/audit/events/{seq}\">{when}</a></td><td>{what}</td><td>{who}</td><td>{pat}</td><td>{ot}</td></tr>",
            o = esc(outcome),
            when = esc(e["recorded"].as_str().unwrap_or("")),
            what = esc(&what),
            who = esc(&who(&e)),
            pat = esc(&c.map(|c| c.patients.join(" ")).unwrap_or_default()),
            ot = outcome_text(outcome),
        ));
    }
    body.push_str("</tbody></table>");
    if rows.is_empty() {
        body.push_str("<p id=\"empty\">No events match.</p>");
    }
    if let Some(n) = next {
        body.push_str(&format!(
            "<p><a id=\"next\" href=\"/audit?{}\">Older events</a></p>",
            esc(&link_query(&f, Some(("after", n.to_string()))))
        ));
    }
    table_page(StatusCode::OK, "Audit trail", &body)
}

fn filters(f: &HashMap<String, String>) -> String {
    let v = |k: &str| esc(f.get(k).map(String::as_str).unwrap_or(""));
    let sel = |o: &str| {
        if f.get("outcome").map(String::as_str) == Some(o) {
            " selected"
        } else {
            ""
        }
    };
    format!(
        "<h1>Audit trail</h1><form id=\"filters\" method=\"get\" action=\"/audit\">\
<label for=\"patient\">Patient</label><input type=\"text\" id=\"patient\" name=\"patient\" value=\"{}\" placeholder=\"Patient id\">\
<label for=\"partner\">Partner</label><input type=\"text\" id=\"partner\" name=\"partner\" value=\"{}\" placeholder=\"Organization id\">\
<label for=\"from\">From</label><input type=\"date\" id=\"from\" name=\"from\" value=\"{}\">\
<label for=\"to\">To</label><input type=\"date\" id=\"to\" name=\"to\" value=\"{}\">\
<label for=\"outcome\">Outcome</label><select id=\"outcome\" name=\"outcome\"><option value=\"\">any</option>\
<option value=\"0\"{}>allowed</option><option value=\"4\"{}>refused</option><option value=\"8\"{}>failed</option></select>\
<button type=\"submit\" id=\"apply\">Filter</button></form>",
        v("patient"),
        v("partner"),
        v("from"),
        v("to"),
        sel("0"),
        sel("4"),
        sel("8"),
    )
}

/// `GET /audit/events/{seq}`: one event in full.
pub async fn event_page(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Path(seq): Path<String>,
) -> Response {
    let user = match viewer(&state, &headers, true).await {
        Ok(u) => u,
        Err(resp) => return resp,
    };
    let Ok(seq) = seq.parse::<i64>() else {
        return page(
            StatusCode::NOT_FOUND,
            "Not found",
            "<h1>No such event</h1>",
            &[],
        );
    };
    let text = match crate::audit::trail::event_by_id(&state, seq).await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(error = %e, "audit event lookup failed");
            return failure_page();
        }
    };
    let Some(text) = text else {
        return page(
            StatusCode::NOT_FOUND,
            "Not found",
            "<h1>No such event</h1>",
            &[],
        );
    };
    if !record_view(&state, &addr, &headers, &user, format!("AuditEvent/{seq}")).await {
        return failure_page();
    }
    let pretty = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or(text);
    let body = format!(
        "<h1>Audit event {seq}</h1><p><a href=\"/audit\">Back to the trail</a></p><pre id=\"event\">{}</pre>",
        esc(&pretty)
    );
    table_page(StatusCode::OK, "Audit event", &body)
}

/// `GET /audit/export.csv?…`: the filtered trail as CSV, oldest first.
pub async fn export_csv(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Query(f): Query<HashMap<String, String>>,
) -> Response {
    let user = match viewer(&state, &headers, true).await {
        Ok(u) => u,
        Err(resp) => return resp,
    };
    let mut pairs = filter_pairs(&f);
    pairs.push(("_sort".into(), "date".into()));
    let rows = async {
        let q = AuditQuery::parse(&pairs, true, &state.fhir_base)?;
        state
            .auditor
            .flush()
            .await
            .map_err(crate::error::FhirError::Unavailable)?;
        let rows = run_query(&state, &q, None, None).await?;
        to_csv(&rows)
    }
    .await;
    let csv = match rows {
        Ok(csv) => csv,
        Err(e) => return e.into_response(),
    };
    let query = format!(
        "AuditEvent/$export?{}",
        crate::audit::api::redacted_query(&link_query(&f, None))
    );
    if !record_view(&state, &addr, &headers, &user, query).await {
        return failure_page();
    }
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"audit.csv\"",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        csv,
    )
        .into_response()
}

/// `GET /account/access`: "Who accessed my data", for the signed-in patient.
pub async fn my_access_page(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Query(f): Query<HashMap<String, String>>,
) -> Response {
    let user = match viewer(&state, &headers, false).await {
        Ok(u) => u,
        Err(resp) => return resp,
    };
    let me = format!("Patient/{}", user.patient_id);
    let (rows, next) = match page_of(&state, Vec::new(), f.get("after"), Some(&me)).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if !record_view(
        &state,
        &addr,
        &headers,
        &user,
        format!("AuditEvent?patient={me}"),
    )
    .await
    {
        return failure_page();
    }
    let mut body = String::from(
        "<h1>Who accessed my data</h1><p class=\"muted\">Every access to your records, newest first: who asked, for what, when, and whether it was allowed.</p>\
<table id=\"access\"><thead><tr><th>When</th><th>Who</th><th>What</th><th>Allowed</th></tr></thead><tbody>",
    );
    for (_, text) in &rows {
        let Ok(e) = serde_json::from_str::<Value>(text) else {
            continue;
        };
        let (c, what, outcome) = summary(&e);
        let partner = c.as_ref().and_then(|c| {
            c.agents
                .iter()
                .find(|a| a.starts_with("Organization/"))
                .cloned()
        });
        let who = match partner {
            Some(org) => format!("partner {org}"),
            None if c.as_ref().is_some_and(|c| c.agents.contains(&me)) => "you".to_owned(),
            None => who(&e),
        };
        body.push_str(&format!(
            "<tr class=\"outcome-{o}\"><td>{when}</td><td>{who}</td><td>{what}</td><td>{allowed}</td></tr>",
            o = esc(outcome),
            when = esc(e["recorded"].as_str().unwrap_or("")),
            who = esc(&who),
            what = esc(&what),
            allowed = if outcome == "0" { "yes" } else { "no" },
        ));
    }
    body.push_str("</tbody></table>");
    if let Some(n) = next {
        body.push_str(&format!(
            "<p><a id=\"next\" href=\"/account/access?after={n}\">Older</a></p>"
        ));
    }
    table_page(StatusCode::OK, "Who accessed my data", &body)
}
