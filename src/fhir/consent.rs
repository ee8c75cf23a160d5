//! Consent enforcement for partner tokens (tokens bound to an Organization): a partner reads a
//! resource only when its patient's active Consents permit that partner, for the request's purpose
//! of use, the resource's data classes and codes, now. Decisions come from the `consent` crate and
//! are made on every request, from the Consents as stored, so a revocation applies to the very
//! next request.

use std::collections::HashMap;

use serde_json::Value;

use crate::auth::guard::Principal;
use crate::error::{FhirError, Result};
use crate::state::AppState;
use crate::storage;

/// The refusal a partner gets; it says nothing about the resource.
pub fn refused() -> FhirError {
    FhirError::Forbidden("no patient consent permits this access".into())
}

/// An organisation as a reference: `Organization/<id>` for a bare id.
pub fn organization_reference(o: &str) -> String {
    if o.contains('/') {
        o.to_owned()
    } else {
        format!("Organization/{o}")
    }
}

/// The partner organisation of a token, as `Organization/<id>`.
pub fn partner(principal: &Principal) -> Option<String> {
    principal
        .claims
        .organization
        .as_deref()
        .map(organization_reference)
}

/// The active and inactive Consents of a patient, as stored now.
pub async fn consents_of(state: &AppState, patient: &str) -> Result<Vec<Value>> {
    // language=PostgreSQL
    let ids: Vec<String> = sqlx::query_scalar(
        "select id from resource where resource_type = 'Consent' and compartment = $1 and not deleted",
    )
    .bind(patient)
    .fetch_all(&state.db)
    .await?;
    let mut out = Vec::with_capacity(ids.len());
    for v in storage::read_many(state, "Consent", &ids).await? {
        if let Some(body) = v.body {
            out.push(fhirgate_codec::parse_json(&body)?);
        }
    }
    Ok(out)
}

/// For partner tokens: 403 unless a Consent of the resource's patient permits reading it. Other
/// tokens pass.
pub async fn check_read(
    state: &AppState,
    principal: &Principal,
    rt: &str,
    compartment: Option<&str>,
    body: &[u8],
) -> Result<()> {
    let Some(organization) = partner(principal) else {
        return Ok(());
    };
    // Only data of a patient can be consented to.
    let Some(patient) = compartment else {
        return Err(refused());
    };
    let consents = consents_of(state, patient).await?;
    let resource = fhirgate_codec::parse_json(body)?;
    let purpose = crate::audit::current().and_then(|c| c.purpose.clone());
    if permits(&consents, organization, purpose, rt, &resource) {
        Ok(())
    } else {
        Err(refused())
    }
}

/// Whether `consents` let `organization` read `resource` now for `purpose`.
fn permits(
    consents: &[Value],
    organization: String,
    purpose: Option<String>,
    rt: &str,
    resource: &Value,
) -> bool {
    let ctx = fhirgate_consent::AccessContext {
        organization,
        purpose,
        resource_type: rt.to_owned(),
        classes: fhirgate_consent::classes_of(resource),
        codes: fhirgate_consent::codes_of_resource(resource),
        at: now(),
    };
    match fhirgate_consent::decide(consents, &ctx) {
        fhirgate_consent::Decision::Permit { .. } => true,
        fhirgate_consent::Decision::Deny { reason } => {
            tracing::debug!(reason, "partner access refused by consent");
            false
        }
    }
}

/// The purpose key a partner request uses in `consent_grant` (`""` when it states none).
pub fn purpose_key() -> String {
    crate::audit::current()
        .and_then(|c| c.purpose.clone())
        .unwrap_or_default()
}

/// For a partner's search results: class grants are enforced in SQL; where a patient's Consents
/// also name single codes, each result of that patient is checked against the Consents here.
#[derive(Debug, Default)]
pub struct CodeCheck {
    organization: String,
    purpose: Option<String>,
    consents: HashMap<String, Vec<Value>>,
}

impl CodeCheck {
    /// Whether results of `compartment` need [`CodeCheck::permits`] (its Consents name codes).
    pub fn applies(&self, compartment: Option<&str>) -> bool {
        compartment.is_some_and(|p| self.consents.contains_key(p))
    }

    /// Whether a fetched resource passes the code-level rules (true where there are none).
    pub fn permits(&self, rt: &str, compartment: Option<&str>, resource: &Value) -> bool {
        let Some(consents) = compartment.and_then(|p| self.consents.get(p)) else {
            return true;
        };
        permits(
            consents,
            self.organization.clone(),
            self.purpose.clone(),
            rt,
            resource,
        )
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The code-level check for a partner token over results of `patients`; `None` for other tokens.
/// `known` flags (patient, whether its grants to this partner carry code rules) that the caller
/// read in this request already; the others are looked up.
pub async fn code_check(
    state: &AppState,
    principal: &Principal,
    patients: &[String],
    known: &[(String, bool)],
) -> Result<Option<CodeCheck>> {
    let Some(organization) = partner(principal) else {
        return Ok(None);
    };
    let unknown: Vec<&String> = patients
        .iter()
        .filter(|p| !known.iter().any(|(k, _)| k == *p))
        .collect();
    let mut flagged: Vec<String> = known
        .iter()
        .filter(|(_, rules)| *rules)
        .map(|(p, _)| p.clone())
        .collect();
    if !unknown.is_empty() {
        // language=PostgreSQL
        let found: Vec<String> = sqlx::query_scalar(
            "select distinct patient from consent_grant where organization = $1 and code_rules and patient = any($2)",
        )
        .bind(&organization)
        .bind(unknown)
        .fetch_all(&state.db)
        .await?;
        flagged.extend(found);
    }
    flagged.sort();
    flagged.dedup();
    let mut check = CodeCheck {
        organization,
        purpose: crate::audit::current().and_then(|c| c.purpose.clone()),
        consents: HashMap::new(),
    };
    for p in flagged {
        let consents = consents_of(state, &p).await?;
        check.consents.insert(p, consents);
    }
    Ok(Some(check))
}
