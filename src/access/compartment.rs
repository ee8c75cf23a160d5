//! Patient compartment membership (<https://hl7.org/fhir/R4/compartmentdefinition-patient.html>):
//! the patient a stored resource belongs to, which the `compartment` column holds and every
//! access decision reads.
//!
//! Each type is in the compartment of the first `Patient/<id>` that its compartment parameters
//! name, in the order the CompartmentDefinition lists them. Two rules are the server's own:
//! - an Observation belongs to its `subject` only (the `patient` search then equals the
//!   compartment, which the per-patient indexes serve), not to a patient named as `performer`;
//! - resources the server derives from a patient's data belong to that patient: a Device bound
//!   to a patient (`Device.patient`), and a Provenance whose agent is the patient (an import's
//!   record) when its targets name none.
//!
//! Only relative references count: references to this server's own base are stored relative
//! (see [`relativise`]), and a reference to another server names a patient of that server.

use fhirgate_fhirpath::IndexValue;
use serde_json::Value;

/// Each type's compartment parameters, from the R4 Patient CompartmentDefinition, with the
/// server's own rules (see the module documentation).
const PARAMS: &[(&str, &[&str])] = &[
    ("Account", &["subject"]),
    ("AdverseEvent", &["subject"]),
    ("AllergyIntolerance", &["patient", "recorder", "asserter"]),
    ("Appointment", &["actor"]),
    ("AppointmentResponse", &["actor"]),
    ("AuditEvent", &["patient"]),
    ("Basic", &["patient", "author"]),
    ("BodyStructure", &["patient"]),
    ("CarePlan", &["patient", "performer"]),
    ("CareTeam", &["patient", "participant"]),
    ("ChargeItem", &["subject"]),
    ("Claim", &["patient", "payee"]),
    ("ClaimResponse", &["patient"]),
    ("ClinicalImpression", &["subject"]),
    ("Communication", &["subject", "sender", "recipient"]),
    (
        "CommunicationRequest",
        &["subject", "sender", "recipient", "requester"],
    ),
    ("Composition", &["subject", "author", "attester"]),
    ("Condition", &["patient", "asserter"]),
    ("Consent", &["patient"]),
    (
        "Coverage",
        &["policy-holder", "subscriber", "beneficiary", "payor"],
    ),
    ("CoverageEligibilityRequest", &["patient"]),
    ("CoverageEligibilityResponse", &["patient"]),
    ("DetectedIssue", &["patient"]),
    ("DeviceRequest", &["subject", "performer"]),
    ("DeviceUseStatement", &["subject"]),
    ("DiagnosticReport", &["subject"]),
    ("DocumentManifest", &["subject", "author", "recipient"]),
    ("DocumentReference", &["subject", "author"]),
    ("Encounter", &["patient"]),
    ("EnrollmentRequest", &["subject"]),
    ("EpisodeOfCare", &["patient"]),
    ("ExplanationOfBenefit", &["patient", "payee"]),
    ("FamilyMemberHistory", &["patient"]),
    ("Flag", &["patient"]),
    ("Goal", &["patient"]),
    ("Group", &["member"]),
    ("ImagingStudy", &["patient"]),
    ("Immunization", &["patient"]),
    ("ImmunizationEvaluation", &["patient"]),
    ("ImmunizationRecommendation", &["patient"]),
    ("Invoice", &["subject", "patient", "recipient"]),
    ("List", &["subject", "source"]),
    ("MeasureReport", &["patient"]),
    ("Media", &["subject"]),
    (
        "MedicationAdministration",
        &["patient", "performer", "subject"],
    ),
    ("MedicationDispense", &["subject", "patient", "receiver"]),
    ("MedicationRequest", &["subject"]),
    ("MedicationStatement", &["subject"]),
    ("MolecularSequence", &["patient"]),
    ("NutritionOrder", &["patient"]),
    ("Observation", &["subject"]),
    ("Person", &["patient"]),
    ("Procedure", &["patient", "performer"]),
    ("Provenance", &["patient", "agent"]),
    ("QuestionnaireResponse", &["subject", "author"]),
    ("RelatedPerson", &["patient"]),
    ("RequestGroup", &["subject", "participant"]),
    ("ResearchSubject", &["individual"]),
    ("RiskAssessment", &["subject"]),
    ("Schedule", &["actor"]),
    ("ServiceRequest", &["subject", "performer"]),
    ("Specimen", &["subject"]),
    ("SupplyDelivery", &["patient"]),
    ("SupplyRequest", &["subject"]),
    ("VisionPrescription", &["patient"]),
    ("Device", &["patient"]),
];

/// The compartment parameters of `rt` (empty when it is in no patient compartment).
pub fn params(rt: &str) -> &'static [&'static str] {
    PARAMS
        .iter()
        .find(|(t, _)| *t == rt)
        .map_or(&[], |(_, p)| p)
}

/// The patient whose compartment `resource` (of type `rt`, with id `id`) is in, if any.
pub fn patient_of(rt: &str, id: &str, resource: &Value) -> Option<String> {
    if rt == "Patient" {
        return Some(id.to_owned());
    }
    params(rt).iter().find_map(|param| {
        fhirgate_fhirpath::extract_parameter(resource, param)
            .into_iter()
            .find_map(|v| match v {
                IndexValue::Reference(r) if r.url.is_none() => {
                    let reference = r.reference?;
                    let pid = reference.strip_prefix("Patient/")?;
                    fhirgate_codec::is_valid_id(pid).then(|| pid.to_owned())
                }
                _ => None,
            })
    })
}

/// Rewrites every `reference` to this server's own `base` (`https://host/fhir/Patient/1`) as the
/// relative reference it is (`Patient/1`), so that compartments and searches see one form.
pub fn relativise(value: &mut Value, base: &str) {
    let prefix = format!("{}/", base.trim_end_matches('/'));
    walk(value, &prefix);
}

fn walk(value: &mut Value, prefix: &str) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match v {
                    Value::String(s) if k == "reference" => {
                        if let Some(rest) = s.strip_prefix(prefix) {
                            if rest.split('/').count() >= 2 && !rest.contains(['?', '#']) {
                                *s = rest.to_owned();
                            }
                        }
                    }
                    _ => walk(v, prefix),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| walk(v, prefix)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn compartments_follow_the_definition_and_the_servers_rules() {
        let obs = json!({"resourceType": "Observation", "subject": {"reference": "Patient/a"},
            "performer": [{"reference": "Patient/b"}]});
        assert_eq!(patient_of("Observation", "o", &obs).as_deref(), Some("a"));
        let perf_only =
            json!({"resourceType": "Observation", "performer": [{"reference": "Patient/b"}]});
        assert_eq!(patient_of("Observation", "o", &perf_only), None);
        let prov = json!({"resourceType": "Provenance", "target": [{"reference": "Observation/x"}],
            "recorded": "2024-01-01T00:00:00Z", "agent": [{"who": {"reference": "Patient/b"}}]});
        assert_eq!(patient_of("Provenance", "p", &prov).as_deref(), Some("b"));
        let dev = json!({"resourceType": "Device", "patient": {"reference": "Patient/c"}});
        assert_eq!(patient_of("Device", "d", &dev).as_deref(), Some("c"));
        let cond = json!({"resourceType": "Condition", "subject": {"reference": "Patient/d"}});
        assert_eq!(patient_of("Condition", "c", &cond).as_deref(), Some("d"));
        let elsewhere = json!({"resourceType": "Observation",
            "subject": {"reference": "https://other.example/fhir/Patient/a"}});
        assert_eq!(patient_of("Observation", "o", &elsewhere), None);
        assert_eq!(
            patient_of("Patient", "p1", &json!({})).as_deref(),
            Some("p1")
        );
        assert_eq!(patient_of("Organization", "o", &json!({})), None);
    }

    #[test]
    fn references_to_this_server_become_relative() {
        let mut obs = json!({"resourceType": "Observation",
            "subject": {"reference": "https://h/fhir/Patient/b"},
            "hasMember": [{"reference": "https://h/fhir/Observation/x/_history/2"}],
            "focus": [{"reference": "https://other/fhir/Patient/b"}],
            "note": [{"text": "https://h/fhir/Patient/b"}]});
        relativise(&mut obs, "https://h/fhir");
        assert_eq!(obs["subject"]["reference"], "Patient/b");
        assert_eq!(obs["hasMember"][0]["reference"], "Observation/x/_history/2");
        assert_eq!(obs["focus"][0]["reference"], "https://other/fhir/Patient/b");
        assert_eq!(obs["note"][0]["text"], "https://h/fhir/Patient/b");
        assert_eq!(patient_of("Observation", "o", &obs).as_deref(), Some("b"));
    }
}
