//! Response headers shared by the interactions: `ETag`, `Last-Modified`, `Location` and `Prefer`.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde_json::json;

use crate::error::{outcome, IssueType, OutcomeIssue, Result};
use crate::fhir::format::{self, Format};

/// `Prefer: return=…` (<https://hl7.org/fhir/R4/http.html#ops>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    /// No body.
    Minimal,
    /// The resource (the default).
    Representation,
    /// An OperationOutcome about the interaction.
    OperationOutcome,
}

/// Reads `Prefer: return=` (default representation).
pub fn prefer_return(headers: &HeaderMap) -> Return {
    prefer_values(headers)
        .into_iter()
        .find_map(|(k, v)| {
            (k == "return").then_some(match v.as_str() {
                "minimal" => Return::Minimal,
                "OperationOutcome" => Return::OperationOutcome,
                _ => Return::Representation,
            })
        })
        .unwrap_or(Return::Representation)
}

/// Whether `Prefer: handling=strict` was sent.
pub fn prefer_strict(headers: &HeaderMap) -> bool {
    prefer_values(headers)
        .into_iter()
        .any(|(k, v)| k == "handling" && v == "strict")
}

fn prefer_values(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect()
}

/// RFC 7231 HTTP date.
pub fn http_date(t: &DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// Adds `ETag: W/"v"` and `Last-Modified`.
pub fn version_headers(h: &mut HeaderMap, version: i32, at: &DateTime<Utc>) {
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
        h.insert(header::ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&http_date(at)) {
        h.insert(header::LAST_MODIFIED, v);
    }
}

/// The answer to a create or update: status, `Location`, `ETag`, `Last-Modified`, and a body as
/// `Prefer` asks.
#[allow(clippy::too_many_arguments)]
pub fn written(
    status: StatusCode,
    format: Format,
    ret: Return,
    base: &str,
    rt: &str,
    id: &str,
    version: i32,
    at: &DateTime<Utc>,
    body: Option<Vec<u8>>,
) -> Result<Response> {
    let mut resp = match (ret, body) {
        (Return::Representation, Some(b)) => format::resource_bytes(status, format, b)?,
        (Return::OperationOutcome, _) => {
            let what = if status == StatusCode::CREATED {
                "created"
            } else {
                "updated"
            };
            let oo = outcome(
                &[OutcomeIssue::new(
                    IssueType::Informational,
                    format!("{rt}/{id} {what}; version {version}"),
                )],
                "information",
            );
            format::resource_value(status, format, &oo)?
        }
        _ => status.into_response(),
    };
    let h = resp.headers_mut();
    version_headers(h, version, at);
    if let Ok(v) = HeaderValue::from_str(&format!("{base}/{rt}/{id}/_history/{version}")) {
        h.insert(header::LOCATION, v.clone());
        h.insert(header::CONTENT_LOCATION, v);
    }
    Ok(resp)
}

/// A Bundle of `kind` (history, searchset) with its links and entries. An empty page has no
/// `entry` element at all: FHIR JSON forbids empty arrays.
pub fn bundle(
    kind: &str,
    links: Vec<serde_json::Value>,
    entries: Vec<serde_json::Value>,
) -> serde_json::Value {
    let mut b = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": crate::fhir::write::instant(&crate::fhir::write::now())},
        "type": kind,
        "link": links,
    });
    if !entries.is_empty() {
        b["entry"] = serde_json::Value::Array(entries);
    }
    b
}
