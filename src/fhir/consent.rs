//! Partner tokens (tokens bound to an Organization) and the Consents that decide what they see.
//! The decisions themselves are made by the request's [`crate::access::Policy`], from the
//! Consents as stored, so a revocation applies to the very next request.

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
