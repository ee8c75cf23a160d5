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

/// What a partner may see in a search, worked out once per search: the (patient, class) pairs its
/// patients' Consents permit now, for SQL, and those Consents, to check each result's codes.
#[derive(Debug, Default)]
pub struct Grants {
    /// The partner, `Organization/<id>`.
    pub organization: String,
    /// Patients of the pairs, in step with `classes`.
    pub patients: Vec<String>,
    /// Classes of the pairs.
    pub classes: Vec<String>,
    purpose: Option<String>,
    consents: HashMap<String, Vec<Value>>,
}

impl Grants {
    /// Whether a fetched resource is permitted (its codes may be denied where its class is not).
    pub fn permits(&self, rt: &str, compartment: Option<&str>, resource: &Value) -> bool {
        let Some(patient) = compartment else {
            return false;
        };
        let Some(consents) = self.consents.get(patient) else {
            return false;
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

/// The grants of a partner token, or `None` for other tokens.
pub async fn grants(state: &AppState, principal: &Principal) -> Result<Option<Grants>> {
    let Some(organization) = partner(principal) else {
        return Ok(None);
    };
    // language=PostgreSQL
    let patients: Vec<String> = sqlx::query_scalar(
        "select distinct patient from consent_party where organizations @> array[$1::text] order by patient",
    )
    .bind(&organization)
    .fetch_all(&state.db)
    .await?;
    let mut g = Grants {
        organization,
        purpose: crate::audit::current().and_then(|c| c.purpose.clone()),
        ..Grants::default()
    };
    for p in patients {
        let consents = consents_of(state, &p).await?;
        let ctx = fhirgate_consent::AccessContext {
            organization: g.organization.clone(),
            purpose: g.purpose.clone(),
            at: now(),
            ..Default::default()
        };
        for class in fhirgate_consent::permitted_classes(&consents, &ctx) {
            g.patients.push(p.clone());
            g.classes.push(class.to_owned());
        }
        g.consents.insert(p, consents);
    }
    Ok(Some(g))
}
