//! `fhirgate-consent`: pure consent decisions (no I/O).
//!
//! Input: the patient's FHIR R4 `Consent` resources and the context of one access (the partner
//! organisation, purpose, resource type and data class, time). Output: permit or deny, with the
//! reason. This skeleton fixes the API and the safe default: anything not explicitly and currently
//! permitted is denied. The full rules (provisions, periods, classes, deny-overrides) arrive with
//! the consent issue.

use serde_json::Value;

/// The context of one access request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessContext {
    /// The partner `Organization/<id>` the request is made for.
    pub organization: String,
    /// Purpose of use code (e.g. `TREAT`).
    pub purpose: Option<String>,
    /// FHIR resource type asked for.
    pub resource_type: String,
    /// Data classes (Observation categories) of the resource, if known.
    pub classes: Vec<String>,
    /// The time of the request, as an R4 instant.
    pub at: String,
}

/// The outcome of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Access allowed by the Consent with this id.
    Permit {
        /// Id of the Consent that allows it.
        consent_id: String,
    },
    /// Access refused, and why (for the audit trail; never shown to the partner).
    Deny {
        /// The reason.
        reason: String,
    },
}

/// Decides an access. Deny is the default: with no active Consent there is no access.
pub fn decide(consents: &[Value], ctx: &AccessContext) -> Decision {
    let active = consents
        .iter()
        .filter(|c| c.get("resourceType").and_then(Value::as_str) == Some("Consent"))
        .filter(|c| c.get("status").and_then(Value::as_str) == Some("active"))
        .count();
    if active == 0 {
        return Decision::Deny {
            reason: format!(
                "no active Consent permits {} to read {}",
                ctx.organization, ctx.resource_type
            ),
        };
    }
    Decision::Deny {
        reason: "consent provisions are not evaluated yet; denied by default".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> AccessContext {
        AccessContext {
            organization: "Organization/partner".into(),
            purpose: Some("TREAT".into()),
            resource_type: "Observation".into(),
            classes: vec!["vital-signs".into()],
            at: "2026-11-23T10:00:00Z".into(),
        }
    }

    #[test]
    fn no_consent_means_deny() {
        assert!(matches!(decide(&[], &ctx()), Decision::Deny { .. }));
    }

    #[test]
    fn an_inactive_consent_means_deny() {
        let c = json!({"resourceType": "Consent", "id": "c1", "status": "inactive"});
        assert!(matches!(decide(&[c], &ctx()), Decision::Deny { .. }));
    }
}
