//! Consents are written only in fhirgate's profile (issue "Patient consent"): a patient's permit
//! or deny for a partner organisation, for data classes of the ValueSet.

use serde_json::{json, Value};

use crate::audit::token;
use crate::helpers::{assert_outcome, expressions, spawn_app, TestApp};

/// A permit for `org` to see `classes` of patient `pid` for treatment this year.
pub(crate) fn consent(pid: &str, org: &str, classes: &[&str]) -> Value {
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{pid}")},
        "provision": {
            "type": "permit",
            "period": {"start": "2026-01-01", "end": "2027-12-31"},
            "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                       "reference": {"reference": format!("Organization/{org}")}}],
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
            "class": classes.iter().map(|c| json!({"system": "https://fhirgate.org/CodeSystem/data-class", "code": c})).collect::<Vec<_>>()
        }
    })
}

async fn post(app: &TestApp, bearer: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/Consent", app.base))
        .bearer_auth(bearer)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .expect("post")
}

#[tokio::test]
async fn patients_write_consents_of_the_profile_and_others_are_422() {
    let app = spawn_app().await;
    let me = token(&app, "phone-app", "patient/Consent.cruds", Some("p1"), None);
    let resp = post(&app, &me, &consent("p1", "acme", &["vital-signs"])).await;
    assert_eq!(resp.status(), 201);

    // A class outside the ValueSet, an actor that is not an Organization, another scope.
    let mut bad = consent("p1", "acme", &["genome"]);
    bad["provision"]["actor"][0]["reference"]["reference"] = json!("Practitioner/x");
    bad["scope"]["coding"][0]["code"] = json!("research");
    let resp = post(&app, &me, &bad).await;
    let oo = assert_outcome(resp, 422, "invalid").await;
    assert_eq!(
        expressions(&oo),
        [
            "Consent.scope",
            "Consent.provision.actor[0].reference",
            "Consent.provision.class[0]"
        ]
    );

    // A permit that names nobody is refused; a patient cannot write another patient's consent.
    let mut nobody = consent("p1", "acme", &["sleep"]);
    nobody["provision"]
        .as_object_mut()
        .expect("object")
        .remove("actor");
    let oo = assert_outcome(post(&app, &me, &nobody).await, 422, "invalid").await;
    assert_eq!(expressions(&oo), ["Consent.provision.actor"]);
    let resp = post(&app, &me, &consent("p2", "acme", &["sleep"])).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        app.count("resource where resource_type = 'Consent'").await,
        1
    );
}
