//! batch and transaction Bundles (<https://hl7.org/fhir/R4/http.html#transaction>).
//!
//! A transaction is all-or-nothing in one database transaction. Its entries are processed in the
//! order the specification gives (DELETE, POST, PUT, GET); `urn:uuid:` fullUrls and conditional
//! references (`Practitioner?identifier=system|value`) are resolved before validation; `ifNoneExist`
//! and `ifMatch` are honoured. A batch runs each entry on its own and answers each separately.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Value};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::access::{Interaction, InteractionKind, Policy};
use crate::auth::scopes::Permission;
use crate::error::{outcome, FhirError, Result};
use crate::fhir::body::FhirBody;
use crate::fhir::format::{self, negotiate, query_pairs};
use crate::fhir::idempotency::Idempotent;
use crate::fhir::respond::{prefer_return, Return};
use crate::fhir::write::{self, check_resource, instant, parse_etag, WriteKind, WriteOp};
use crate::fhir::{logical_id, resource_type};
use crate::state::AppState;
use crate::storage::{self, conditional};

/// Largest number of entries in one Bundle (security-test-plan B13).
pub const MAX_ENTRIES: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    Delete,
    Post,
    Put,
    Get,
}

#[derive(Debug, Clone)]
struct Entry {
    index: usize,
    method: Method,
    /// How the route table classified the entry's request.
    interaction: Interaction,
    resource_type: String,
    /// `Some` for `Type/id` URLs.
    id: Option<String>,
    /// `Some` for `Type?criteria` URLs of PUT and DELETE.
    criteria: Option<String>,
    /// `Some` (the query, perhaps empty) for a search: `GET Type?…`.
    search: Option<String>,
    full_url: Option<String>,
    resource: Option<Value>,
    if_none_exist: Option<String>,
    if_match: Option<i32>,
}

/// What one entry produced.
#[derive(Debug, Clone)]
struct EntryResult {
    status: StatusCode,
    resource_type: String,
    id: String,
    version_id: i32,
    last_modified: Option<chrono::DateTime<chrono::Utc>>,
    body: Option<Vec<u8>>,
    /// A GET: the answer carries the resource (or the searchset) in `entry.resource`.
    read: bool,
}

/// `POST [base]` with a Bundle of type `batch` or `transaction`.
pub async fn batch_or_transaction(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    FhirBody(mut bundle): FhirBody,
) -> Result<Response> {
    let fmt = negotiate(&headers, &query_pairs(q.as_deref()))?;
    let ret = prefer_return(&headers);
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(FhirError::bad_request(
            "resourceType",
            "POST to the base URL takes a Bundle of type batch or transaction",
        ));
    }
    let kind = bundle
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let once = Idempotent::of(&headers, &policy, "POST", &bundle)?;
    if let Some(once) = &once {
        if let Some(replayed) = once.replay(&state).await? {
            return Ok(replayed);
        }
    }
    // Entries are moved out of the Bundle, never copied: an ingest Bundle holds thousands.
    let raw_entries = match bundle.get_mut("entry").map(Value::take) {
        None => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => {
            return Err(FhirError::bad_request(
                "Bundle.entry",
                "Bundle.entry must be an array",
            ))
        }
    };
    if raw_entries.len() > MAX_ENTRIES {
        return Err(FhirError::TooManyEntries(MAX_ENTRIES));
    }
    // Patients that conditional references resolved to: the Bundle's event names them.
    let mut named: Vec<String> = Vec::new();
    let results: Vec<std::result::Result<EntryResult, FhirError>> = match kind.as_str() {
        "transaction" => {
            let entries = raw_entries
                .into_iter()
                .enumerate()
                .map(|(i, e)| parse_entry(&state, i, e, true))
                .collect::<Result<Vec<_>>>()?;
            check_distinct_targets(&entries)?;
            let mut tx = state.db.begin().await?;
            let done = process(&state, &policy, &mut tx, entries, true, &mut named).await?;
            if let Some(once) = &once {
                once.claim(&mut tx).await?;
            }
            tx.commit().await?;
            done.into_iter().map(Ok).collect()
        }
        "batch" => {
            if let Some(once) = &once {
                // Each entry commits on its own: the key is claimed before the first.
                let mut tx = state.db.begin().await?;
                once.claim(&mut tx).await?;
                tx.commit().await?;
            }
            let mut out = Vec::with_capacity(raw_entries.len());
            for (i, raw) in raw_entries.into_iter().enumerate() {
                let request = |k: &str| raw["request"][k].as_str().unwrap_or("").to_owned();
                let classified = axum::http::Method::from_bytes(request("method").as_bytes())
                    .ok()
                    .and_then(|m| {
                        let url = request("url");
                        let base = format!("{}/", state.fhir_base);
                        Interaction::of_entry(&m, url.strip_prefix(&base).unwrap_or(&url)).ok()
                    });
                let mut result = batch_entry(&state, &policy, i, raw, &mut named).await;
                if let Err(e) = &result {
                    // Each refused entry is an event of its own; no audit, no answer.
                    if let Err(a) =
                        crate::audit::api::record_entry_failure(&state, classified.as_ref(), e)
                            .await
                    {
                        result = Err(FhirError::Unavailable(a));
                    }
                }
                out.push(result);
            }
            out
        }
        _ => {
            return Err(FhirError::bad_request(
                "Bundle.type",
                "Bundle.type must be batch or transaction",
            ))
        }
    };
    let base = &state.fhir_base;
    let mut response_entries = Vec::with_capacity(results.len());
    for r in results {
        response_entries.push(match r {
            Ok(r) => {
                let mut resp = json!({"status": status_line(r.status)});
                if r.version_id > 0 {
                    resp["etag"] = json!(format!("W/\"{}\"", r.version_id));
                }
                if r.status != StatusCode::NO_CONTENT && r.version_id > 0 {
                    resp["location"] = json!(format!("{}/{}/_history/{}", r.resource_type, r.id, r.version_id));
                }
                if let Some(t) = &r.last_modified {
                    resp["lastModified"] = json!(instant(t));
                }
                let mut e = json!({"response": resp});
                if r.version_id > 0 && r.status != StatusCode::NO_CONTENT {
                    e["fullUrl"] = json!(format!("{base}/{}/{}", r.resource_type, r.id));
                }
                // A GET's answer is its resource; written resources go back only when asked
                // for (ingest Bundles are large).
                let asked = ret == Return::Representation && headers.contains_key("prefer");
                if let (true, Some(b)) = (r.read || asked, &r.body) {
                    e["resource"] = fhirgate_codec::parse_json(b)?;
                }
                e
            }
            Err(err) => {
                let (status, issues) = err.client_response();
                json!({"response": {"status": status_line(status), "outcome": outcome(&issues, "error")}})
            }
        });
    }
    let mut out = json!({
        "resourceType": "Bundle",
        "id": Uuid::new_v4().to_string(),
        "type": format!("{kind}-response"),
    });
    if !response_entries.is_empty() {
        out["entry"] = Value::Array(response_entries);
    }
    let mut resp = format::resource_value(StatusCode::OK, fmt, &out)?;
    crate::audit::api::AuditInfo {
        subtype: Some(if kind == "batch" {
            "batch"
        } else {
            "transaction"
        }),
        patients: named,
        ..Default::default()
    }
    .attach(&mut resp);
    Ok(match &once {
        Some(once) => once.record(&state, resp).await,
        None => resp,
    })
}

async fn batch_entry(
    state: &AppState,
    policy: &Policy,
    i: usize,
    raw: Value,
    named: &mut Vec<String>,
) -> Result<EntryResult> {
    let entry = parse_entry(state, i, raw, false)?;
    if let Some(query) = &entry.search {
        return batch_search(state, policy, &entry, query).await;
    }
    let mut tx = state.db.begin().await?;
    let mut done = process(state, policy, &mut tx, vec![entry], false, named).await?;
    tx.commit().await?;
    done.pop()
        .ok_or_else(|| FhirError::Internal(anyhow::anyhow!("batch entry produced no result")))
}

fn status_line(s: StatusCode) -> String {
    format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or(""))
}

/// Prefixes an error with the entry it came from, keeping its status.
fn in_entry(i: usize, e: FhirError) -> FhirError {
    let prefix = |m: &str| format!("Bundle.entry[{i}]: {m}");
    match e {
        FhirError::BadRequest(mut issue) => {
            issue.message = prefix(&issue.message);
            FhirError::BadRequest(issue)
        }
        FhirError::InvalidResource { status, mut issues } => {
            for issue in &mut issues {
                issue.message = prefix(&issue.message);
            }
            FhirError::InvalidResource { status, issues }
        }
        FhirError::PreconditionFailed(m) => FhirError::PreconditionFailed(prefix(&m)),
        FhirError::NotFound(m) => FhirError::NotFound(prefix(&m)),
        FhirError::Conflict(m) => FhirError::Conflict(prefix(&m)),
        FhirError::Forbidden(m) => FhirError::Forbidden(prefix(&m)),
        other => other,
    }
}

fn parse_entry(state: &AppState, i: usize, mut raw: Value, transaction: bool) -> Result<Entry> {
    let at = |what: &str| format!("Bundle.entry[{i}].{what}");
    let resource = raw.get_mut("resource").map(Value::take);
    let request = raw
        .get("request")
        .ok_or_else(|| FhirError::bad_request(&at("request"), "every entry needs a request"))?;
    let method = match request.get("method").and_then(Value::as_str) {
        Some("GET") => Method::Get,
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        Some("DELETE") => Method::Delete,
        Some(m) => {
            return Err(FhirError::bad_request(
                &at("request.method"),
                format!("method {m} is not supported in bundles"),
            ))
        }
        None => {
            return Err(FhirError::bad_request(
                &at("request.method"),
                "request.method is missing",
            ))
        }
    };
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| FhirError::bad_request(&at("request.url"), "request.url is missing"))?;
    let url = url
        .strip_prefix(&format!("{}/", state.fhir_base))
        .unwrap_or(url)
        .trim_start_matches('/');
    let query = url.split_once('?').map(|(_, q)| q.to_owned());
    let http_method = match method {
        Method::Get => axum::http::Method::GET,
        Method::Post => axum::http::Method::POST,
        Method::Put => axum::http::Method::PUT,
        Method::Delete => axum::http::Method::DELETE,
    };
    // The same route table as HTTP requests; a Bundle carries reads and writes only.
    let interaction = Interaction::of_entry(&http_method, url).map_err(|_| {
        FhirError::bad_request(
            &at("request.url"),
            "only Type, Type/id and Type?criteria URLs are supported in bundles",
        )
    })?;
    let rt = resource_type(interaction.resource_type.as_deref().unwrap_or_default())
        .map_err(|e| in_entry(i, e))?
        .to_owned();
    let id = match interaction.id.as_deref() {
        Some(id) => Some(logical_id(id).map_err(|e| in_entry(i, e))?.to_owned()),
        None => None,
    };
    match interaction.kind {
        InteractionKind::Read
        | InteractionKind::Create
        | InteractionKind::Update
        | InteractionKind::ConditionalUpdate
        | InteractionKind::ConditionalDelete
        | InteractionKind::Delete => {}
        InteractionKind::SearchType if transaction => {
            // Searches run on the committed store: inside a transaction they could not see the
            // transaction's own writes, so they are asked in a batch.
            return Err(FhirError::NotSupported(format!(
                "a search inside a transaction (Bundle.entry[{i}]); send searches in a batch Bundle"
            )));
        }
        InteractionKind::SearchType => {}
        _ => {
            return Err(FhirError::bad_request(
                &at("request.url"),
                "only Type, Type/id and Type?criteria URLs are supported in bundles",
            ))
        }
    }
    if matches!(method, Method::Post | Method::Put) && resource.is_none() {
        return Err(FhirError::bad_request(
            &at("resource"),
            "POST and PUT entries need a resource",
        ));
    }
    if interaction.kind == InteractionKind::ConditionalUpdate && query.is_none() {
        return Err(FhirError::bad_request(
            &at("request.url"),
            "PUT and DELETE need Type/id or Type?criteria",
        ));
    }
    let if_match = match request.get("ifMatch").and_then(Value::as_str) {
        Some(v) => Some(parse_etag(v).ok_or_else(|| {
            FhirError::bad_request(&at("request.ifMatch"), "ifMatch must be a version ETag")
        })?),
        None => None,
    };
    let search = (interaction.kind == InteractionKind::SearchType)
        .then(|| query.clone().unwrap_or_default());
    Ok(Entry {
        index: i,
        method,
        search,
        interaction,
        resource_type: rt,
        id,
        criteria: if matches!(method, Method::Put | Method::Delete) {
            query
        } else {
            None
        },
        full_url: raw
            .get("fullUrl")
            .and_then(Value::as_str)
            .map(str::to_owned),
        resource,
        if_none_exist: request
            .get("ifNoneExist")
            .and_then(Value::as_str)
            .map(|s| s.trim_start_matches('?').to_owned()),
        if_match,
    })
}

/// Two entries may not write the same resource (B13).
fn check_distinct_targets(entries: &[Entry]) -> Result<()> {
    let mut seen = HashSet::new();
    for e in entries {
        if let (Some(id), Method::Put | Method::Delete) = (&e.id, e.method) {
            if !seen.insert((e.resource_type.clone(), id.clone())) {
                return Err(FhirError::bad_request(
                    &format!("Bundle.entry[{}].request.url", e.index),
                    format!(
                        "{}/{id} is the target of more than one entry",
                        e.resource_type
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Resolves, validates and writes `entries` in `tx`; results in entry order.
async fn process(
    state: &AppState,
    policy: &Policy,
    tx: &mut Transaction<'static, Postgres>,
    mut entries: Vec<Entry>,
    transaction: bool,
    named: &mut Vec<String>,
) -> Result<Vec<EntryResult>> {
    // 0. Every entry must be allowed by the token's scopes; one refusal fails a transaction.
    for e in &entries {
        if let Some((rt, p)) = e.interaction.permission() {
            policy.require(rt, p).map_err(|x| in_entry(e.index, x))?;
        }
    }
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut existing: HashMap<usize, String> = HashMap::new();
    // Conditional deletes whose criteria match nothing: nothing to write.
    let mut no_match: HashSet<usize> = HashSet::new();
    // 1. Assign ids and run the conditions of POST, conditional PUT and conditional DELETE.
    for pos in 0..entries.len() {
        // `ifNoneExist` also matches what earlier entries of this transaction create.
        let earlier: Vec<String> = match &entries[pos].if_none_exist {
            Some(text) if transaction && entries[pos].method == Method::Post => {
                let criteria = conditional::Criteria::parse(text)
                    .map_err(|x| in_entry(entries[pos].index, x))?;
                in_bundle(&entries[..pos], &entries[pos].resource_type, &criteria)
            }
            _ => Vec::new(),
        };
        let e = &mut entries[pos];
        let i = e.index;
        match e.method {
            Method::Post => {
                let new_id = write::new_id();
                let mut target = new_id.clone();
                if let Some(text) = &e.if_none_exist {
                    let criteria =
                        conditional::Criteria::parse(text).map_err(|x| in_entry(i, x))?;
                    let mut found = criteria
                        .matches(tx, &state.keys, &e.resource_type, policy)
                        .await?;
                    found.extend(earlier);
                    found.sort();
                    found.dedup();
                    match found.as_slice() {
                        [] => {
                            if let conditional::Claim::Existing(other) = conditional::claim_create(
                                tx,
                                &state.keys,
                                &e.resource_type,
                                &criteria,
                                &new_id,
                                policy,
                            )
                            .await?
                            {
                                target = other;
                            }
                        }
                        [one] => target = one.clone(),
                        _ => {
                            return Err(in_entry(
                                i,
                                FhirError::PreconditionFailed(
                                    "ifNoneExist matches more than one resource".into(),
                                ),
                            ))
                        }
                    }
                    if target != new_id {
                        existing.insert(i, target.clone());
                    }
                }
                e.id = Some(target);
            }
            Method::Put if e.id.is_none() => {
                let text = e.criteria.clone().unwrap_or_default();
                let criteria = conditional::Criteria::parse(&text).map_err(|x| in_entry(i, x))?;
                let body_id = e
                    .resource
                    .as_ref()
                    .and_then(|r| r.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let target = match criteria
                    .matches(tx, &state.keys, &e.resource_type, policy)
                    .await?
                    .as_slice()
                {
                    // As for a single conditional update: a restricted caller cannot pick the
                    // id of a new resource.
                    [] if body_id.is_some() && !policy.sees_everything() => {
                        return Err(in_entry(
                            i,
                            FhirError::bad_request(
                                &format!("{}.id", e.resource_type),
                                "the criteria match nothing; to create, leave out the id",
                            ),
                        ));
                    }
                    [] => body_id.unwrap_or_else(write::new_id),
                    [one] => one.clone(),
                    _ => {
                        return Err(in_entry(
                            i,
                            FhirError::PreconditionFailed(
                                "the conditional update matches more than one resource".into(),
                            ),
                        ))
                    }
                };
                e.id = Some(target);
            }
            Method::Delete if e.id.is_none() => {
                let text = e.criteria.clone().unwrap_or_default();
                let criteria = conditional::Criteria::parse(&text).map_err(|x| in_entry(i, x))?;
                match criteria
                    .matches(tx, &state.keys, &e.resource_type, policy)
                    .await?
                    .as_slice()
                {
                    [] => {
                        no_match.insert(i);
                    }
                    [one] => e.id = Some(one.clone()),
                    _ => {
                        return Err(in_entry(
                            i,
                            FhirError::PreconditionFailed(
                                "the conditional delete matches more than one resource; in a Bundle it deletes one".into(),
                            ),
                        ))
                    }
                }
            }
            Method::Put if policy.patient().is_some() => {
                // A patient token updates only what exists (see `crud::update`).
                let id = e.id.clone().unwrap_or_default();
                if storage::read_current_with(state, &mut **tx, &e.resource_type, &id)
                    .await?
                    .is_none()
                {
                    return Err(in_entry(i, FhirError::not_found(&e.resource_type, &id)));
                }
            }
            _ => {}
        }
        if let (Some(full), Some(id)) = (&e.full_url, &e.id) {
            ids.insert(full.clone(), format!("{}/{id}", e.resource_type));
        }
    }
    // 2. Rewrite references, then validate. Conditional references also find what this
    // transaction creates (its entries' identifiers, taken before any rewriting).
    let made: Vec<(String, String, Value)> = if transaction {
        entries
            .iter()
            .filter(|e| {
                matches!(e.method, Method::Post | Method::Put) && !existing.contains_key(&e.index)
            })
            .filter_map(|e| {
                let r = e.resource.as_ref()?;
                Some((
                    e.resource_type.clone(),
                    e.id.clone()?,
                    json!({"identifier": r.get("identifier").cloned().unwrap_or(Value::Null)}),
                ))
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut resolved: HashMap<String, String> = HashMap::new();
    for e in &mut entries {
        let i = e.index;
        let Some(resource) = e.resource.as_mut() else {
            continue;
        };
        let mut conditional_refs = Vec::new();
        rewrite_references(resource, &ids, &mut conditional_refs);
        for reference in conditional_refs {
            if !resolved.contains_key(&reference) {
                let target = resolve_conditional_reference(state, tx, &reference, policy, &made)
                    .await
                    .map_err(|x| in_entry(i, x))?;
                if let Some((rt, id)) = target.split_once('/') {
                    if let Some(v) = storage::read_current_with(state, &mut **tx, rt, id).await? {
                        if let Some(p) = v.compartment {
                            if !named.contains(&p) {
                                named.push(p);
                            }
                        }
                    }
                }
                resolved.insert(reference.clone(), target);
            }
        }
        if !resolved.is_empty() {
            let mut none = Vec::new();
            rewrite_references(resource, &resolved, &mut none);
        }
        if e.method == Method::Put {
            if let Some(id) = &e.id {
                resource["id"] = Value::String(id.clone());
            }
        }
        if matches!(e.method, Method::Post | Method::Put) {
            let url_id = if e.method == Method::Put {
                e.id.as_deref()
            } else {
                None
            };
            *resource = check_resource(resource.take(), &e.resource_type, url_id)
                .map_err(|x| in_entry(i, x))?;
            let p = if e.method == Method::Put {
                Permission::Update
            } else {
                Permission::Create
            };
            if !policy.scopes_allow(&e.resource_type, p, resource) {
                let msg = format!("the token's scopes do not cover this {}", e.resource_type);
                return Err(in_entry(i, FhirError::Forbidden(msg)));
            }
        }
    }
    // 3. Write in the order the specification gives; GETs read afterwards.
    let mut order: Vec<usize> = (0..entries.len()).collect();
    if transaction {
        order.sort_by_key(|&k| (entries[k].method, k));
    }
    let mut ops = Vec::new();
    let mut op_entry = Vec::new();
    let mut results_early: Vec<usize> = Vec::new();
    for &k in &order {
        let e = &mut entries[k];
        if existing.contains_key(&e.index) {
            continue;
        }
        if no_match.contains(&e.index) {
            results_early.push(k);
            continue;
        }
        let kind = match e.method {
            Method::Post => WriteKind::Create,
            Method::Put => WriteKind::Update,
            Method::Delete => WriteKind::Delete,
            Method::Get => continue,
        };
        let id = e.id.clone().unwrap_or_default();
        ops.push(WriteOp {
            kind,
            resource_type: e.resource_type.clone(),
            id,
            resource: e.resource.take(),
            if_match: e.if_match,
        });
        op_entry.push(k);
    }
    let written =
        write::apply(state, tx, ops, policy)
            .await
            .map_err(|x| match op_entry.first() {
                Some(&k) if op_entry.len() == 1 => in_entry(entries[k].index, x),
                _ => x,
            })?;
    let mut results: Vec<Option<EntryResult>> = vec![None; entries.len()];
    for k in results_early {
        // A conditional delete of nothing: an ordinary delete of nothing.
        results[k] = Some(EntryResult {
            status: StatusCode::NO_CONTENT,
            resource_type: entries[k].resource_type.clone(),
            id: String::new(),
            version_id: 0,
            last_modified: None,
            body: None,
            read: false,
        });
    }
    for (w, k) in written.into_iter().zip(op_entry) {
        results[k] = Some(EntryResult {
            status: write::status(w.written),
            resource_type: w.resource_type,
            id: w.id,
            version_id: w.version_id,
            last_modified: Some(w.last_updated),
            body: w.body,
            read: false,
        });
    }
    let mut reads = Vec::new();
    for (k, e) in entries.iter().enumerate() {
        if results[k].is_some() {
            continue;
        }
        let id = existing
            .get(&e.index)
            .cloned()
            .or_else(|| e.id.clone())
            .unwrap_or_default();
        let v = storage::read_current_with(state, &mut **tx, &e.resource_type, &id).await?;
        let read = v.as_ref().filter(|_| e.method == Method::Get).map(|v| {
            let reference = format!("{}/{id}/_history/{}", e.resource_type, v.version_id);
            (reference, v.compartment.clone())
        });
        let hidden = match &v {
            Some(v) => match &v.body {
                Some(b) => {
                    !policy
                        .sees(
                            state,
                            &e.resource_type,
                            v.compartment.as_deref(),
                            b,
                            Permission::Read,
                        )
                        .await?
                }
                None => !policy.reaches(&e.resource_type, v.compartment.as_deref()),
            },
            None => false,
        };
        results[k] = Some(match (e.method, v) {
            (_, Some(_)) if hidden => {
                return Err(in_entry(
                    e.index,
                    FhirError::not_found(&e.resource_type, &id),
                ))
            }
            (Method::Get, Some(v)) if v.body.is_none() => {
                return Err(in_entry(
                    e.index,
                    FhirError::Gone {
                        resource_type: e.resource_type.clone(),
                        id,
                        version: v.version_id,
                    },
                ))
            }
            (_, Some(v)) => EntryResult {
                status: StatusCode::OK,
                resource_type: e.resource_type.clone(),
                id,
                version_id: v.version_id,
                last_modified: Some(v.last_updated),
                body: v.body,
                read: e.method == Method::Get,
            },
            (_, None) => {
                return Err(in_entry(
                    e.index,
                    FhirError::not_found(&e.resource_type, &id),
                ))
            }
        });
        if let Some((reference, compartment)) = read {
            reads.push(crate::audit::event::read_event(
                crate::audit::current().as_deref(),
                reference,
                compartment.as_deref(),
            ));
        }
    }
    // The reads of a Bundle are audited with its transaction, one event per entry.
    crate::audit::chain::enqueue(tx, &reads).await?;
    state.auditor.note_inbox();
    Ok(results.into_iter().flatten().collect())
}

/// Ids that earlier entries of a transaction give to resources of `rt` matching `criteria`.
fn in_bundle(earlier: &[Entry], rt: &str, criteria: &conditional::Criteria) -> Vec<String> {
    earlier
        .iter()
        .filter(|e| matches!(e.method, Method::Post | Method::Put) && e.resource_type == rt)
        .filter_map(|e| {
            let id = e.id.as_deref()?;
            let r = e.resource.as_ref()?;
            criteria.matches_resource(id, r).then(|| id.to_owned())
        })
        .collect()
}

/// A search entry of a batch: the searchset goes in `entry.resource`, and the search is audited
/// as the same search over HTTP would be.
async fn batch_search(
    state: &AppState,
    policy: &Policy,
    entry: &Entry,
    query: &str,
) -> Result<EntryResult> {
    if let Some((rt, p)) = entry.interaction.permission() {
        policy
            .require(rt, p)
            .map_err(|x| in_entry(entry.index, x))?;
    }
    let resp = crate::fhir::search::search_in_bundle(state, policy, &entry.resource_type, query)
        .await
        .map_err(|x| in_entry(entry.index, x))?;
    let path = format!("/fhir/{}", entry.resource_type);
    let resp = crate::audit::api::record_entry_response(
        state,
        &entry.interaction,
        resp,
        Some(query),
        &path,
    )
    .await
    .map_err(FhirError::Unavailable)?;
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .map_err(|e| FhirError::Internal(e.into()))?;
    Ok(EntryResult {
        status: StatusCode::OK,
        resource_type: entry.resource_type.clone(),
        id: String::new(),
        version_id: 0,
        last_modified: None,
        body: Some(body.to_vec()),
        read: true,
    })
}

/// Replaces mapped references (`urn:uuid:…` → `Type/id`) in place and collects conditional ones.
fn rewrite_references(
    v: &mut Value,
    map: &HashMap<String, String>,
    conditional_refs: &mut Vec<String>,
) {
    match v {
        Value::Object(o) => {
            if let Some(Value::String(r)) = o.get_mut("reference") {
                if let Some(target) = map.get(r.as_str()) {
                    *r = target.clone();
                } else if r.contains('?')
                    && !fhirgate_codec::is_absolute_reference(r)
                    && !r.starts_with("urn:")
                {
                    conditional_refs.push(r.clone());
                }
            }
            for (_, child) in o.iter_mut() {
                rewrite_references(child, map, conditional_refs);
            }
        }
        Value::Array(a) => {
            for child in a {
                rewrite_references(child, map, conditional_refs);
            }
        }
        _ => {}
    }
}

/// `Type?criteria` → `Type/id` when exactly one resource matches; otherwise 412 (http.html#trules).
async fn resolve_conditional_reference(
    state: &AppState,
    tx: &mut Transaction<'static, Postgres>,
    reference: &str,
    policy: &Policy,
    made: &[(String, String, Value)],
) -> Result<String> {
    let (rt, query) = reference.split_once('?').unwrap_or((reference, ""));
    let rt = resource_type(rt)?;
    let criteria = conditional::Criteria::parse(query)?;
    let mut found = criteria.matches(tx, &state.keys, rt, policy).await?;
    found.extend(
        made.iter()
            .filter(|(t, id, r)| t == rt && criteria.matches_resource(id, r))
            .map(|(_, id, _)| id.clone()),
    );
    found.sort();
    found.dedup();
    match found.as_slice() {
        [one] => Ok(format!("{rt}/{one}")),
        [] => Err(FhirError::PreconditionFailed(format!(
            "the conditional reference to {rt} matches no resource"
        ))),
        _ => Err(FhirError::PreconditionFailed(format!(
            "the conditional reference to {rt} matches more than one resource"
        ))),
    }
}
