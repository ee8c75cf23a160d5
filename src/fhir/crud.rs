//! The instance interactions read, vread, create, update and delete
//! (<https://hl7.org/fhir/R4/http.html#read> … `#delete`), with conditional create
//! (`If-None-Exist`), conditional update (`PUT [type]?criteria`) and `If-Match`.

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use std::sync::Arc;

use crate::access::Policy;
use crate::auth::scopes::Permission;
use crate::error::{FhirError, Result};
use crate::fhir::body::FhirBody;
use crate::fhir::format::{self, negotiate, query_pairs};
use crate::fhir::idempotency::Idempotent;
use crate::fhir::respond::{self, prefer_return, version_headers, Return};
use crate::fhir::write::{self, check_resource, parse_etag, WriteKind, WriteOp};
use crate::fhir::{logical_id, resource_type};
use crate::state::AppState;
use crate::storage::{self, conditional};

/// `GET [base]/{type}/{id}`: 200 with the current version, 404 unknown, 410 deleted,
/// 304 when `If-None-Match` names the current version, or without it when `If-Modified-Since`
/// is not before the last change.
#[tracing::instrument(level = "debug", skip_all, fields(fhir.type = %rt, fhir.id = %id))]
pub async fn read(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    Path((rt, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let rt = resource_type(&rt)?;
    if id.starts_with('$') {
        return crate::fhir::search::type_operation(
            &state,
            &policy,
            rt,
            &id,
            q.as_deref(),
            &headers,
        )
        .await;
    }
    let id = logical_id(&id)?;
    let fmt = negotiate(&headers, &query_pairs(q.as_deref()))?;
    // A partner's read of a patient's resource is decided in the same statement when the
    // patient's grants cover it (Consents, which name their parties, take the general path).
    let (mut v, granted) = if policy.partner().is_some() && rt != "Consent" {
        storage::read_current_and(&state, rt, id, |qb| {
            policy.push_plain_grant(qb, "r");
        })
        .await?
    } else {
        storage::read_current(&state, rt, id)
            .await?
            .map(|v| (v, false))
    }
    .ok_or_else(|| FhirError::not_found(rt, id))?;
    let body = match v.body.take() {
        Some(body) if granted && !policy.filters_content(rt, Permission::Read) => body,
        body => {
            v.body = body;
            readable_body(&state, &policy, rt, id, &mut v).await?
        }
    };
    let mut resp = if not_modified(&headers, v.version_id, &v.last_updated) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        format::resource_bytes(StatusCode::OK, fmt, body)?
    };
    version_headers(resp.headers_mut(), v.version_id, &v.last_updated);
    audit_read(&mut resp, rt, id, &v);
    Ok(resp)
}

/// Whether a conditional read (RFC 9110 §13.1.2 and §13.1.3) may answer 304: `If-None-Match`
/// decides when present, else `If-Modified-Since` (HTTP dates have whole seconds).
fn not_modified(
    headers: &HeaderMap,
    version: i32,
    last_updated: &chrono::DateTime<chrono::Utc>,
) -> bool {
    if let Some(h) = headers.get(header::IF_NONE_MATCH) {
        return h
            .to_str()
            .ok()
            .and_then(parse_etag)
            .is_some_and(|e| e == version);
    }
    headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|h| h.to_str().ok())
        .and_then(|t| chrono::DateTime::parse_from_rfc2822(t).ok())
        .is_some_and(|since| last_updated.timestamp() <= since.timestamp())
}

/// `GET [base]/{type}/{id}/_history/{vid}`: that version; 410 for a tombstone, 404 otherwise.
#[tracing::instrument(level = "debug", skip_all, fields(fhir.type = %rt, fhir.id = %id))]
pub async fn vread(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    Path((rt, id, vid)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let rt = resource_type(&rt)?;
    let id = logical_id(&id)?;
    let fmt = negotiate(&headers, &query_pairs(q.as_deref()))?;
    let missing = || FhirError::NotFound(format!("{rt}/{id} has no version {vid}"));
    let n: i32 = vid.parse().map_err(|_| missing())?;
    let mut v = storage::read_version(&state, rt, id, n)
        .await?
        .ok_or_else(missing)?;
    // Hidden reads exactly as missing.
    let body = readable_body(&state, &policy, rt, id, &mut v)
        .await
        .map_err(|e| match e {
            FhirError::NotFound(_) => missing(),
            e => e,
        })?;
    let mut resp = format::resource_bytes(StatusCode::OK, fmt, body)?;
    version_headers(resp.headers_mut(), v.version_id, &v.last_updated);
    audit_read(&mut resp, rt, id, &v);
    Ok(resp)
}

/// Tells the audit middleware which version of whose data a read returned.
fn audit_read(resp: &mut Response, rt: &str, id: &str, v: &storage::StoredVersion) {
    let mut info = crate::audit::api::AuditInfo::default();
    info.patient(v.compartment.as_deref());
    info.entities
        .push(format!("{rt}/{id}/_history/{}", v.version_id));
    info.attach(resp);
}

/// `POST [base]/{type}`: 201 with a server-assigned id (a body `id` is ignored, as the spec says).
/// With `If-None-Exist`, 200 and the existing resource when exactly one matches, 412 when several do.
#[tracing::instrument(level = "debug", skip_all, fields(fhir.type = %rt))]
pub async fn create(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    Path(rt): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    FhirBody(resource): FhirBody,
) -> Result<Response> {
    let rt = resource_type(&rt)?;
    let fmt = negotiate(&headers, &query_pairs(q.as_deref()))?;
    let ret = prefer_return(&headers);
    let once = Idempotent::of(&headers, &policy, &format!("POST {rt}"), &resource)?;
    if let Some(once) = &once {
        if let Some(replayed) = once.replay(&state).await? {
            return Ok(replayed);
        }
    }
    let resource = check_resource(resource, rt, None)?;
    check_write_scope(&policy, rt, Permission::Create, &resource)?;
    let id = write::new_id();
    let mut tx = state.db.begin().await?;
    if let Some(criteria) = headers.get("if-none-exist") {
        let criteria = criteria
            .to_str()
            .map_err(|_| FhirError::bad_request("If-None-Exist", "If-None-Exist is not ASCII"))?;
        let criteria = conditional::Criteria::parse(criteria.trim_start_matches('?'))?;
        let existing = match criteria
            .matches(&mut tx, &state.keys, rt, &policy)
            .await?
            .as_slice()
        {
            [] => {
                match conditional::claim_create(&mut tx, &state.keys, rt, &criteria, &id, &policy)
                    .await?
                {
                    conditional::Claim::Create => None,
                    conditional::Claim::Existing(other) => Some(other),
                }
            }
            [one] => Some(one.clone()),
            _ => {
                return Err(FhirError::PreconditionFailed(
                    "If-None-Exist matches more than one resource".into(),
                ))
            }
        };
        if let Some(existing) = existing {
            tx.rollback().await?;
            return existing_response(&state, rt, &existing, fmt, ret).await;
        }
    }
    let op = WriteOp {
        kind: WriteKind::Create,
        resource_type: rt.to_owned(),
        id,
        resource: Some(resource),
        if_match: None,
    };
    match &once {
        Some(once) => {
            once.claim(&mut tx).await?;
            let resp = write_one(&state, tx, op, fmt, ret, &policy).await?;
            Ok(once.record(&state, resp).await)
        }
        None => write_one(&state, tx, op, fmt, ret, &policy).await,
    }
}

/// The 200 answer of a conditional create that found its resource (one the caller sees: matching
/// saw nothing else).
async fn existing_response(
    state: &AppState,
    rt: &str,
    id: &str,
    fmt: format::Format,
    ret: Return,
) -> Result<Response> {
    let v = storage::read_current(state, rt, id)
        .await?
        .ok_or_else(|| FhirError::not_found(rt, id))?;
    respond::written(
        StatusCode::OK,
        fmt,
        ret,
        &state.fhir_base,
        rt,
        id,
        v.version_id,
        &v.last_updated,
        v.body,
    )
}

fn if_match(headers: &HeaderMap) -> Result<Option<i32>> {
    match headers.get(header::IF_MATCH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(parse_etag)
            .map(Some)
            .ok_or_else(|| {
                FhirError::bad_request(
                    "If-Match",
                    "If-Match must be a version ETag such as W/\"3\"",
                )
            }),
    }
}

/// `PUT [base]/{type}/{id}`: 200 updated, 201 created (update-as-create), 412 on an `If-Match`
/// mismatch, 400 when the body's type or id differs from the URL.
#[tracing::instrument(level = "debug", skip_all, fields(fhir.type = %rt, fhir.id = %id))]
pub async fn update(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    Path((rt, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    FhirBody(resource): FhirBody,
) -> Result<Response> {
    let rt = resource_type(&rt)?;
    let id = logical_id(&id)?;
    let fmt = negotiate(&headers, &query_pairs(q.as_deref()))?;
    let resource = check_resource(resource, rt, Some(id))?;
    check_write_scope(&policy, rt, Permission::Update, &resource)?;
    // A patient token updates only what exists in its compartment: creating at an id of its
    // choosing would tell an id held by another patient (404) from a free one (201).
    if policy.patient().is_some() && storage::read_current(&state, rt, id).await?.is_none() {
        return Err(FhirError::not_found(rt, id));
    }
    let op = update_op(rt, id.to_owned(), resource, if_match(&headers)?);
    let tx = state.db.begin().await?;
    write_one(&state, tx, op, fmt, prefer_return(&headers), &policy).await
}

/// The write of an update (PUT) of `rt/id`.
fn update_op(rt: &str, id: String, resource: serde_json::Value, if_match: Option<i32>) -> WriteOp {
    WriteOp {
        kind: WriteKind::Update,
        resource_type: rt.to_owned(),
        id,
        resource: Some(resource),
        if_match,
    }
}

/// Applies one write in `tx`, commits, and answers with the headers and body `Prefer` asks for.
async fn write_one(
    state: &AppState,
    mut tx: sqlx::Transaction<'static, sqlx::Postgres>,
    op: WriteOp,
    fmt: format::Format,
    ret: Return,
    policy: &Policy,
) -> Result<Response> {
    let r = write::apply(state, &mut tx, vec![op], policy)
        .await?
        .remove(0);
    tx.commit().await?;
    respond::written(
        write::status(r.written),
        fmt,
        ret,
        &state.fhir_base,
        &r.resource_type,
        &r.id,
        r.version_id,
        &r.last_updated,
        r.body,
    )
}

/// `PUT [base]/{type}?criteria`: no match creates (with the body id if it has one), one match
/// updates it, several give 412.
#[tracing::instrument(level = "debug", skip_all, fields(fhir.type = %rt))]
pub async fn conditional_update(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    Path(rt): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    FhirBody(resource): FhirBody,
) -> Result<Response> {
    let rt = resource_type(&rt)?;
    let pairs = query_pairs(q.as_deref());
    let fmt = negotiate(&headers, &pairs)?;
    let criteria_text: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().filter(|(k, _)| k != "_format"))
        .finish();
    let criteria = conditional::Criteria::parse(&criteria_text)?;
    let body_id = resource
        .get("id")
        .and_then(|v| v.as_str())
        .map(str::to_owned);
    let mut conn = state.db.acquire().await?;
    let matches = criteria
        .matches(&mut conn, &state.keys, rt, &policy)
        .await?;
    drop(conn);
    let id = match matches.as_slice() {
        // A caller who does not see everything cannot pick the id of a new resource: the answer
        // would tell an id held by a resource it may not see from a free one.
        [] if body_id.is_some() && !policy.sees_everything() => {
            return Err(FhirError::bad_request(
                &format!("{rt}.id"),
                "the criteria match nothing; to create, leave out the id (the server assigns one)",
            ));
        }
        [] => body_id.clone().unwrap_or_else(write::new_id),
        [one] => {
            if body_id.as_deref().is_some_and(|b| b != one) {
                return Err(FhirError::bad_request(
                    &format!("{rt}.id"),
                    "the body id differs from the resource the criteria match",
                ));
            }
            one.clone()
        }
        _ => {
            return Err(FhirError::PreconditionFailed(
                "the criteria match more than one resource".into(),
            ))
        }
    };
    let mut resource = resource;
    resource["id"] = serde_json::Value::String(id.clone());
    let resource = check_resource(resource, rt, Some(&id))?;
    check_write_scope(&policy, rt, Permission::Update, &resource)?;
    let op = update_op(rt, id, resource, if_match(&headers)?);
    let tx = state.db.begin().await?;
    write_one(&state, tx, op, fmt, prefer_return(&headers), &policy).await
}

/// `DELETE [base]/{type}/{id}`: 204; a tombstone version is written, later reads give 410.
/// Deleting a resource that does not exist or is already deleted is also 204, with no new version.
#[tracing::instrument(level = "debug", skip_all, fields(fhir.type = %rt, fhir.id = %id))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    Path((rt, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let rt = resource_type(&rt)?;
    let id = logical_id(&id)?;
    let mut tx = state.db.begin().await?;
    let op = WriteOp {
        kind: WriteKind::Delete,
        resource_type: rt.to_owned(),
        id: id.to_owned(),
        resource: None,
        if_match: if_match(&headers)?,
    };
    let r = write::apply(&state, &mut tx, vec![op], &policy)
        .await?
        .remove(0);
    tx.commit().await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    if r.version_id > 0 {
        version_headers(resp.headers_mut(), r.version_id, &r.last_updated);
    }
    Ok(resp)
}

/// The body of a stored version as the caller's policy lets it see it: 410 for a tombstone it
/// reaches, and for anything it may not see the same 404 as for a resource that does not exist.
pub async fn readable_body(
    state: &AppState,
    policy: &Policy,
    rt: &str,
    id: &str,
    v: &mut storage::StoredVersion,
) -> Result<Vec<u8>> {
    let Some(body) = v.body.take() else {
        if !policy.reaches(rt, v.compartment.as_deref()) {
            return Err(FhirError::not_found(rt, id));
        }
        return Err(FhirError::Gone {
            resource_type: rt.to_owned(),
            id: id.to_owned(),
            version: v.version_id,
        });
    };
    if !policy
        .sees(state, rt, v.compartment.as_deref(), &body, Permission::Read)
        .await?
    {
        return Err(FhirError::not_found(rt, id));
    }
    Ok(body)
}

/// 403 when a granular write scope does not cover the resource being written.
fn check_write_scope(
    policy: &Policy,
    rt: &str,
    p: Permission,
    resource: &serde_json::Value,
) -> Result<()> {
    if policy.scopes_allow(rt, p, resource) {
        Ok(())
    } else {
        Err(FhirError::Forbidden(format!(
            "the token's scopes do not cover this {rt}"
        )))
    }
}

/// `PATCH [base]/{type}/{id}`: the current version changed by a JSON Patch, a FHIRPath Patch or
/// a JSON Merge Patch (see `fhir::patch`), then written as an update would be.
#[tracing::instrument(level = "debug", skip_all, fields(fhir.type = %rt, fhir.id = %id))]
pub async fn patch(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    Path((rt, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response> {
    let rt = resource_type(&rt)?;
    let id = logical_id(&id)?;
    let fmt = negotiate(&headers, &query_pairs(q.as_deref()))?;
    let doc = patch_body(&state, &headers, body).await?;
    patch_one(&state, &policy, rt, id, &doc, &headers, fmt).await
}

/// `PATCH [base]/{type}?criteria`: patches the one resource the criteria match; 404 when none
/// does and 412 when several do.
pub async fn conditional_patch(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    Path(rt): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response> {
    let rt = resource_type(&rt)?;
    let pairs = query_pairs(q.as_deref());
    let fmt = negotiate(&headers, &pairs)?;
    let matches = conditional_matches(&state, &policy, rt, &pairs).await?;
    let doc = patch_body(&state, &headers, body).await?;
    match matches.as_slice() {
        [] => Err(FhirError::NotFound(format!(
            "no {rt} matches the criteria; nothing was patched"
        ))),
        [one] => patch_one(&state, &policy, rt, one, &doc, &headers, fmt).await,
        _ => Err(FhirError::PreconditionFailed(
            "the criteria match more than one resource; nothing was patched".into(),
        )),
    }
}

/// The ids of `rt` that the query's criteria match, among what the caller's policy sees.
async fn conditional_matches(
    state: &AppState,
    policy: &Policy,
    rt: &str,
    pairs: &[(String, String)],
) -> Result<Vec<String>> {
    let criteria_text: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            pairs
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty")),
        )
        .finish();
    let criteria = conditional::Criteria::parse(&criteria_text)?;
    let mut conn = state.db.acquire().await?;
    criteria.matches(&mut conn, &state.keys, rt, policy).await
}

async fn patch_body(
    state: &AppState,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<crate::fhir::patch::Patch> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            FhirError::UnsupportedMediaType(
                "(none; PATCH needs a Content-Type that names the patch format)".into(),
            )
        })?
        .to_owned();
    let bytes = crate::fhir::body::read_limited(body, state.max_body_bytes).await?;
    crate::fhir::patch::Patch::parse(&content_type, &bytes)
}

/// Applies `doc` to the current version of `rt/id` and writes the result as an update. Without
/// `If-Match`, a concurrent change between the read and the write makes it read again (the patch
/// applies to the newest version); with it, a version other than the one named is 412.
async fn patch_one(
    state: &AppState,
    policy: &Policy,
    rt: &str,
    id: &str,
    doc: &crate::fhir::patch::Patch,
    headers: &HeaderMap,
    fmt: format::Format,
) -> Result<Response> {
    let wanted = if_match(headers)?;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut v = storage::read_current(state, rt, id)
            .await?
            .ok_or_else(|| FhirError::not_found(rt, id))?;
        // Hidden resources read as missing; a deleted one is 410.
        let body = readable_body(state, policy, rt, id, &mut v).await?;
        if wanted.is_some_and(|w| w != v.version_id) {
            return Err(FhirError::PreconditionFailed(format!(
                "{rt}/{id} is at version {}, not the version If-Match names",
                v.version_id
            )));
        }
        let current = fhirgate_codec::parse_json(&body)?;
        let patched = doc.apply(&current)?;
        let resource = check_resource(patched, rt, Some(id))?;
        check_write_scope(policy, rt, Permission::Update, &resource)?;
        let op = update_op(rt, id.to_owned(), resource, Some(v.version_id));
        let tx = state.db.begin().await?;
        match write_one(state, tx, op, fmt, prefer_return(headers), policy).await {
            Err(FhirError::PreconditionFailed(_)) if wanted.is_none() && attempts < 5 => continue,
            other => return other,
        }
    }
}

/// Most resources one conditional delete removes; more matches are 412.
pub const MAX_CONDITIONAL_DELETE: usize = 100;

/// `DELETE [base]/{type}?criteria` (R4 §3.1.0.7.1): no match is an ordinary delete of nothing
/// (204); one match is deleted as `DELETE [type]/[id]` would delete it (204 with its ETag);
/// several, up to [`MAX_CONDITIONAL_DELETE`], are all deleted in one transaction (200 with an
/// OperationOutcome that counts them). More matches, or criteria that name nothing, are refused.
pub async fn conditional_delete(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    Path(rt): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let rt = resource_type(&rt)?;
    let pairs = query_pairs(q.as_deref());
    if !pairs
        .iter()
        .any(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty"))
    {
        return Err(FhirError::bad_request(
            "url",
            "a conditional delete needs criteria; DELETE [type] alone would match everything",
        ));
    }
    let fmt = negotiate(&headers, &pairs)?;
    let matches = conditional_matches(&state, &policy, rt, &pairs).await?;
    if matches.len() > MAX_CONDITIONAL_DELETE {
        return Err(FhirError::PreconditionFailed(format!(
            "the criteria match {} resources; a conditional delete removes at most {MAX_CONDITIONAL_DELETE}",
            matches.len()
        )));
    }
    let if_match = if_match(&headers)?;
    if if_match.is_some() && matches.len() > 1 {
        return Err(FhirError::PreconditionFailed(
            "If-Match names one version, but the criteria match several resources".into(),
        ));
    }
    let ops: Vec<WriteOp> = matches
        .iter()
        .map(|id| WriteOp {
            kind: WriteKind::Delete,
            resource_type: rt.to_owned(),
            id: id.clone(),
            resource: None,
            if_match,
        })
        .collect();
    if ops.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let mut tx = state.db.begin().await?;
    let written = write::apply(&state, &mut tx, ops, &policy).await?;
    tx.commit().await?;
    if let [one] = written.as_slice() {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        if one.version_id > 0 {
            version_headers(resp.headers_mut(), one.version_id, &one.last_updated);
        }
        return Ok(resp);
    }
    let outcome = serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "information", "code": "informational",
                   "diagnostics": format!("deleted {} {rt} resources", written.len())}]
    });
    format::resource_value(StatusCode::OK, fmt, &outcome)
}
