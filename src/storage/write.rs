//! The resource-write service, below HTTP: what the single interactions, Bundles, uploads,
//! sign-up, client registration and the sharing page all write through. Version numbering,
//! `If-Match`, `meta`, the patient compartment (from the caller's access policy) and one batched
//! store call; it answers with domain outcomes ([`Written`]), which the FHIR layer turns into
//! statuses.

use std::collections::HashMap;

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::{Map, Value};
use sqlx::{Postgres, Transaction};

use crate::access::Policy;
use crate::error::{FhirError, Result};
use crate::state::AppState;
use crate::storage::{self, conditional, NewVersion};

/// What to do to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteKind {
    /// Create with a fresh server-assigned id.
    Create,
    /// Update, or create with the given id when it does not exist.
    Update,
    /// Delete (a versioned tombstone).
    Delete,
}

/// One write of a request or a Bundle entry.
#[derive(Debug, Clone)]
pub struct WriteOp {
    /// Kind of write.
    pub kind: WriteKind,
    /// Resource type.
    pub resource_type: String,
    /// Logical id (assigned by the caller for creates).
    pub id: String,
    /// The validated resource (`None` for deletes).
    pub resource: Option<Value>,
    /// The version `If-Match` requires, if any.
    pub if_match: Option<i32>,
}

/// What one write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// A new resource (or a new life of a deleted one).
    Created,
    /// A new version of a current resource.
    Updated,
    /// A tombstone version.
    Deleted,
    /// A delete of nothing (missing, already deleted, or not visible to the caller): no version.
    NothingDeleted,
}

/// The result of one write.
#[derive(Debug, Clone)]
pub struct WriteResult {
    /// Resource type.
    pub resource_type: String,
    /// Logical id.
    pub id: String,
    /// The version now current (for a delete of nothing: 0).
    pub version_id: i32,
    /// Time stamp of the version.
    pub last_updated: DateTime<Utc>,
    /// What happened.
    pub written: Written,
    /// The stored canonical JSON (creates and updates).
    pub body: Option<Vec<u8>>,
}

/// A new server-assigned logical id: a time-ordered UUID (v7), so that the primary-key index of a
/// bulk load grows at its right edge instead of at random pages (half the insert cost, measured).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The time stamp of a write, at the millisecond precision the JSON carries.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(3)
}

/// `lastUpdated` as an R4 instant.
pub fn instant(t: &DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// Puts `resourceType`, `id` and `meta` first, with the server's `versionId` and `lastUpdated`.
fn stamp(resource: Value, id: &str, version: i32, at: &DateTime<Utc>) -> Result<Vec<u8>> {
    let Value::Object(mut obj) = resource else {
        return Err(FhirError::bad_request(
            "resourceType",
            "the body must be a JSON object",
        ));
    };
    let rt = obj.remove("resourceType").unwrap_or(Value::Null);
    obj.remove("id");
    let mut meta = match obj.remove("meta") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    meta.remove("versionId");
    meta.remove("lastUpdated");
    let mut new_meta = Map::new();
    new_meta.insert("versionId".into(), Value::String(version.to_string()));
    new_meta.insert("lastUpdated".into(), Value::String(instant(at)));
    new_meta.extend(meta);
    let mut out = Map::with_capacity(obj.len() + 3);
    out.insert("resourceType".into(), rt);
    out.insert("id".into(), Value::String(id.to_owned()));
    out.insert("meta".into(), Value::Object(new_meta));
    out.extend(obj);
    serde_json::to_vec(&Value::Object(out)).map_err(|e| FhirError::Internal(e.into()))
}

/// Applies `ops` inside `tx`: locks the current versions, checks `If-Match`, writes every new
/// version in one batch. Results come back in the order of `ops`.
///
/// For a caller whose `policy` reaches one patient (a patient token), every write must stay
/// inside that patient's compartment: the current version (if any) and the new one must both
/// belong to the patient, so a resource can be neither taken from nor moved to another patient.
pub async fn apply(
    state: &AppState,
    tx: &mut Transaction<'static, Postgres>,
    ops: Vec<WriteOp>,
    policy: &Policy,
) -> Result<Vec<WriteResult>> {
    let owner = policy.patient();
    let targets: Vec<(String, String)> = ops
        .iter()
        .filter(|o| o.kind != WriteKind::Create)
        .map(|o| (o.resource_type.clone(), o.id.clone()))
        .collect();
    let current = storage::lock_current(tx, &targets).await?;
    let at = now();
    let mut versions = Vec::with_capacity(ops.len());
    let mut results = Vec::with_capacity(ops.len());
    let mut bumped: HashMap<(String, String), storage::Current> = HashMap::new();
    let mut stored_at = Vec::with_capacity(ops.len());
    for mut op in ops {
        if let Some(r) = op.resource.as_mut() {
            crate::access::compartment::relativise(r, &state.fhir_base);
        }
        let key = (op.resource_type.clone(), op.id.clone());
        let mut cur = bumped.get(&key).or_else(|| current.get(&key)).cloned();
        // A tombstone stays in the compartment of the version it deletes.
        let compartment = match &op.resource {
            Some(r) => crate::access::compartment::patient_of(&op.resource_type, &op.id, r),
            None => cur.as_ref().and_then(|c| c.compartment.clone()),
        };
        if let Some(me) = owner {
            // Another patient's resource answers as one that does not exist: its delete is the
            // delete of nothing (204, or 412 with If-Match), anything else 404.
            if cur
                .as_ref()
                .is_some_and(|c| c.compartment.as_deref() != Some(me))
            {
                if op.kind == WriteKind::Delete {
                    cur = None;
                } else {
                    return Err(FhirError::not_found(&op.resource_type, &op.id));
                }
            }
            if op.resource.is_some() && compartment.as_deref() != Some(me) {
                return Err(FhirError::Forbidden(format!(
                    "{}/{} is outside the patient compartment of this token",
                    op.resource_type, op.id
                )));
            }
        }
        if let Some(want) = op.if_match {
            if cur
                .as_ref()
                .is_none_or(|c| c.version_id != want || c.deleted)
            {
                return Err(FhirError::PreconditionFailed(format!(
                    "If-Match W/\"{want}\" does not match the current version of {}/{}",
                    op.resource_type, op.id
                )));
            }
        }
        let (version, status) = match (op.kind, cur) {
            (WriteKind::Create, _) => (1, Written::Created),
            (WriteKind::Update, None) => (1, Written::Created),
            (WriteKind::Update, Some(c)) => (
                c.version_id + 1,
                if c.deleted {
                    Written::Created
                } else {
                    Written::Updated
                },
            ),
            (WriteKind::Delete, Some(c)) if !c.deleted => (c.version_id + 1, Written::Deleted),
            (WriteKind::Delete, c) => {
                // Nothing to delete: 204 without a new version (http.html#delete).
                results.push(WriteResult {
                    resource_type: op.resource_type,
                    id: op.id,
                    version_id: c.map_or(0, |c| c.version_id),
                    last_updated: at,
                    written: Written::NothingDeleted,
                    body: None,
                });
                continue;
            }
        };
        bumped.insert(
            key,
            storage::Current {
                version_id: version,
                deleted: op.resource.is_none(),
                compartment: compartment.clone(),
            },
        );
        let identifier_hashes = op
            .resource
            .as_ref()
            .map(|r| conditional::identifier_hashes(&state.keys, &op.resource_type, r))
            .unwrap_or_default();
        let classes = op
            .resource
            .as_ref()
            .map(fhirgate_consent::classes_of)
            .unwrap_or_default();
        let consent_parties = op
            .resource
            .as_ref()
            .filter(|_| op.resource_type == "Consent")
            .map(fhirgate_consent::organizations_named);
        let index = op
            .resource
            .as_ref()
            .map(|r| {
                crate::search::index::rows(&state.keys, &state.search_params, &op.resource_type, r)
            })
            .unwrap_or_default();
        let body = op
            .resource
            .map(|r| stamp(r, &op.id, version, &at))
            .transpose()?;
        stored_at.push(results.len());
        versions.push(NewVersion {
            resource_type: op.resource_type.clone(),
            id: op.id.clone(),
            version_id: version,
            compartment,
            last_updated: at,
            body,
            identifier_hashes,
            classes,
            consent_parties,
            index,
        });
        results.push(WriteResult {
            resource_type: op.resource_type,
            id: op.id,
            version_id: version,
            last_updated: at,
            written: status,
            body: None,
        });
    }
    storage::write_versions(state, tx, &versions).await?;
    // The stored bodies go back to the caller (for `Prefer: return=representation`) without a copy.
    for (v, k) in versions.into_iter().zip(stored_at) {
        results[k].body = v.body;
    }
    Ok(results)
}

/// Checks a body against the URL before anything else: its `resourceType` must be the URL's type
/// and, for an update, its `id` must be present and equal to the URL's id. Then full validation;
/// returns the canonical form to store.
pub fn check_resource(resource: Value, rt: &str, url_id: Option<&str>) -> Result<Value> {
    match resource.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == rt => {}
        Some(t) => {
            return Err(FhirError::bad_request(
                "resourceType",
                format!("the body is a {t} but the URL is for {rt}"),
            ));
        }
        None => {
            return Err(FhirError::bad_request(
                "resourceType",
                "the body has no resourceType",
            ))
        }
    }
    if let Some(id) = url_id {
        match resource.get("id").and_then(Value::as_str) {
            Some(b) if b == id => {}
            Some(_) => {
                return Err(FhirError::bad_request(
                    &format!("{rt}.id"),
                    format!("the body id does not match the URL id {id}"),
                ))
            }
            None => {
                return Err(FhirError::bad_request(
                    &format!("{rt}.id"),
                    "an update needs the resource id in the body",
                ))
            }
        }
    }
    let resource = fhirgate_codec::validate(resource).map_err(FhirError::from_codec_issues)?;
    if rt == "Consent" {
        check_consent_profile(&resource)?;
    }
    Ok(resource)
}

/// Resource-type classes must name R4 resource types (the consent crate checks only their form).
fn unknown_resource_types(p: &Value, path: &str, out: &mut Vec<fhirgate_consent::Problem>) {
    for (i, c) in p["class"].as_array().into_iter().flatten().enumerate() {
        let code = c["code"].as_str().unwrap_or("");
        if c["system"] == fhirgate_consent::RESOURCE_TYPE_SYSTEM
            && !fhirgate_codec::is_resource_type(code)
        {
            out.push(fhirgate_consent::Problem {
                path: format!("{path}.class[{i}]"),
                message: format!("'{code}' is not an R4 resource type"),
            });
        }
    }
    for (i, child) in p["provision"].as_array().into_iter().flatten().enumerate() {
        unknown_resource_types(child, &format!("{path}.provision[{i}]"), out);
    }
}

/// A Consent must conform to fhirgate's profile (`fhir-profiles/fhirgate-consent.json`): 422
/// naming each element that does not.
fn check_consent_profile(consent: &Value) -> Result<()> {
    use crate::error::{IssueType, OutcomeIssue};
    let mut problems = fhirgate_consent::check(consent);
    unknown_resource_types(&consent["provision"], "Consent.provision", &mut problems);
    if problems.is_empty() {
        return Ok(());
    }
    Err(FhirError::InvalidResource {
        status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        issues: problems
            .into_iter()
            .map(|p| {
                OutcomeIssue::at(
                    IssueType::Invalid,
                    p.path,
                    format!("{} (profile {})", p.message, fhirgate_consent::PROFILE),
                )
            })
            .collect(),
    })
}
