//! History (<https://hl7.org/fhir/R4/http.html#history>) for an instance, a type and the whole
//! system: newest first, `_count` and `_since`, keyset paging with a `next` link that stays
//! correct while new versions are written.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use std::sync::Arc;

use crate::access::Policy;
use crate::auth::scopes::Permission;
use crate::error::{FhirError, Result};
use crate::fhir::format::{self, negotiate, query_pairs};
use crate::fhir::write::instant;
use crate::fhir::{logical_id, resource_type};
use crate::state::AppState;
use crate::storage::{self, HistoryCursor, HistoryQuery, StoredVersion};

/// Default and largest page sizes.
pub const DEFAULT_COUNT: i64 = 50;
/// Largest `_count` accepted.
pub const MAX_COUNT: i64 = 1000;

/// `GET [base]/_history`.
pub async fn history_system(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    run(
        &state,
        &policy,
        None,
        None,
        q.as_deref(),
        &headers,
        "_history",
    )
    .await
}

/// `GET [base]/{type}/_history`.
pub async fn history_type(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    Path(rt): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let rt = resource_type(&rt)?;
    run(
        &state,
        &policy,
        Some(rt),
        None,
        q.as_deref(),
        &headers,
        &format!("{rt}/_history"),
    )
    .await
}

/// `GET [base]/{type}/{id}/_history`: 404 when the resource never existed.
pub async fn history_instance(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    Path((rt, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let rt = resource_type(&rt)?;
    let id = logical_id(&id)?;
    // A resource the caller may not see has no history it can read: 404, as for none at all.
    let visible = match storage::read_current(&state, rt, id).await? {
        None => false,
        Some(v) => visible(&state, &policy, &v).await?,
    };
    if !visible {
        return Err(FhirError::not_found(rt, id));
    }
    run(
        &state,
        &policy,
        Some(rt),
        Some(id),
        q.as_deref(),
        &headers,
        &format!("{rt}/{id}/_history"),
    )
    .await
}

/// Parses `_count`: a positive integer, capped at [`MAX_COUNT`].
pub fn parse_count(v: &str) -> Result<i64> {
    match v.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n.min(MAX_COUNT)),
        _ => Err(FhirError::bad_request(
            "_count",
            "_count must be a non-negative integer",
        )),
    }
}

/// Parses an instant or dateTime search value into a point in time (`_since`).
pub fn parse_instant(name: &str, v: &str) -> Result<DateTime<Utc>> {
    let bad = || {
        FhirError::bad_request(
            name,
            format!("{name} must be an instant such as 2024-01-02T10:00:00Z"),
        )
    };
    if !fhirgate_codec::is_valid_date_time(v) {
        return Err(bad());
    }
    let full = match v.len() {
        4 => format!("{v}-01-01T00:00:00Z"),
        7 => format!("{v}-01T00:00:00Z"),
        10 => format!("{v}T00:00:00Z"),
        _ => v.to_owned(),
    };
    DateTime::parse_from_rfc3339(&full)
        .map(|d| d.with_timezone(&Utc))
        .map_err(|_| bad())
}

fn encode_cursor(keys: &crate::crypto::Keyring, v: &StoredVersion, binding: &[u8]) -> String {
    let raw = format!(
        "{}|{}|{}|{}",
        v.last_updated.timestamp_micros(),
        v.resource_type,
        v.id,
        v.version_id
    );
    keys.seal_cursor(raw.as_bytes(), binding)
}

fn decode_cursor(keys: &crate::crypto::Keyring, s: &str, binding: &[u8]) -> Result<HistoryCursor> {
    let bad = || FhirError::bad_request("_cursor", "_cursor is not a cursor this server issued");
    let raw = keys.open_cursor(s, binding).ok_or_else(bad)?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let parts: Vec<&str> = text.split('|').collect();
    let [ts, rt, id, v] = parts.as_slice() else {
        return Err(bad());
    };
    Ok(HistoryCursor {
        last_updated: DateTime::from_timestamp_micros(ts.parse().map_err(|_| bad())?)
            .ok_or_else(bad)?,
        resource_type: (*rt).to_owned(),
        id: (*id).to_owned(),
        version_id: v.parse().map_err(|_| bad())?,
    })
}

/// Whether the caller's policy lets it see a version: a body by every rule, a tombstone when the
/// caller reaches its compartment and no granular filter needs content to decide.
async fn visible(state: &AppState, policy: &Policy, v: &StoredVersion) -> Result<bool> {
    match &v.body {
        Some(b) => {
            policy
                .sees(
                    state,
                    &v.resource_type,
                    v.compartment.as_deref(),
                    b,
                    Permission::Read,
                )
                .await
        }
        None => Ok(policy.reaches(&v.resource_type, v.compartment.as_deref())
            && policy.partner().is_none()
            && !policy.filters_content(&v.resource_type, Permission::Read)),
    }
}

/// Versions read per round while a page of visible ones fills.
const SCAN_BATCH: i64 = 200;

async fn run(
    state: &AppState,
    policy: &Policy,
    rt: Option<&str>,
    id: Option<&str>,
    raw: Option<&str>,
    headers: &HeaderMap,
    path: &str,
) -> Result<Response> {
    let pairs = query_pairs(raw);
    let fmt = negotiate(headers, &pairs)?;
    let keep: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "_cursor")
        .cloned()
        .collect();
    let mut binding = format!("{}\u{1f}{path}", policy.caller_key());
    for (k, v) in &keep {
        binding.push_str(&format!("\u{1f}{k}={v}"));
    }
    let binding = binding.into_bytes();
    let mut count = DEFAULT_COUNT;
    let mut q = HistoryQuery {
        resource_type: rt.map(str::to_owned),
        id: id.map(str::to_owned),
        ..Default::default()
    };
    for (k, v) in &pairs {
        match k.as_str() {
            "_count" => count = parse_count(v)?,
            "_since" => q.since = Some(parse_instant("_since", v)?),
            "_cursor" => q.cursor = Some(decode_cursor(&state.keys, v, &binding)?),
            "_at" | "_list" | "_sort" => {
                return Err(FhirError::bad_request(
                    k,
                    format!("{k} is not supported on history"),
                ))
            }
            _ => {}
        }
    }
    // Versions the caller may not see are skipped, and reading goes on until the page is full
    // (and one more visible version says whether there is a next page), so neither the entries
    // nor the links depend on what it may not see.
    let mut shown: Vec<StoredVersion> = Vec::new();
    let mut more = false;
    q.count = if policy.sees_everything() {
        count
    } else {
        SCAN_BATCH.max(count)
    };
    loop {
        let (batch, rest) = storage::history(state, &q).await?;
        let last = batch.last().map(|v| HistoryCursor {
            last_updated: v.last_updated,
            resource_type: v.resource_type.clone(),
            id: v.id.clone(),
            version_id: v.version_id,
        });
        for v in batch {
            if shown.len() as i64 == count {
                if visible(state, policy, &v).await? {
                    more = true;
                    break;
                }
                continue;
            }
            if visible(state, policy, &v).await? {
                shown.push(v);
            }
        }
        if more || !rest {
            break;
        }
        if shown.len() as i64 == count && policy.sees_everything() {
            // Everything is visible: the next stored version is the next page.
            more = true;
            break;
        }
        match last {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
    }
    let base = &state.fhir_base;
    let self_url = link(base, path, &pairs);
    let mut links = vec![json!({"relation": "self", "url": self_url})];
    if more {
        if let Some(last) = shown.last() {
            let mut next = keep.clone();
            next.push(("_cursor".into(), encode_cursor(&state.keys, last, &binding)));
            links.push(json!({"relation": "next", "url": link(base, path, &next)}));
        }
    }
    let mut entries = Vec::with_capacity(shown.len());
    for v in &shown {
        entries.push(history_entry(base, v)?);
    }
    let bundle = crate::fhir::respond::bundle("history", links, entries);
    format::resource_value(StatusCode::OK, fmt, &bundle)
}

/// `base/path?query` with the pairs re-encoded.
pub fn link(base: &str, path: &str, pairs: &[(String, String)]) -> String {
    if pairs.is_empty() {
        format!("{base}/{path}")
    } else {
        let q = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish();
        format!("{base}/{path}?{q}")
    }
}

fn history_entry(base: &str, v: &StoredVersion) -> Result<Value> {
    let (method, url, status) = if v.deleted {
        (
            "DELETE",
            format!("{}/{}", v.resource_type, v.id),
            "204 No Content",
        )
    } else if v.version_id == 1 {
        ("POST", v.resource_type.clone(), "201 Created")
    } else {
        ("PUT", format!("{}/{}", v.resource_type, v.id), "200 OK")
    };
    let mut e = json!({
        "fullUrl": format!("{base}/{}/{}", v.resource_type, v.id),
        "request": {"method": method, "url": url},
        "response": {"status": status, "etag": format!("W/\"{}\"", v.version_id), "lastModified": instant(&v.last_updated)},
    });
    if let Some(b) = &v.body {
        e["resource"] = fhirgate_codec::parse_json(b)?;
    }
    Ok(e)
}
