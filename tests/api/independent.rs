//! What the server sends is valid R4 for an independent implementation: every kind of response is
//! checked with the Python `fhir.resources` 6.4.0 models (installed by `.ci/run`).

use serde_json::json;

use crate::helpers::{json, observation, spawn_app};

#[tokio::test]
async fn responses_validate_with_an_independent_r4_implementation() {
    let app = spawn_app().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let save = |name: &str, v: serde_json::Value| {
        std::fs::write(dir.path().join(format!("{name}.json")), v.to_string()).expect("write");
    };
    save("metadata", json(app.get("metadata").await).await);
    let p = json!({"resourceType": "Patient", "id": "v1", "identifier": [{"system": "urn:v", "value": "1"}], "birthDate": "1990-01-01"});
    save("created", json(app.put("Patient/v1", &p).await).await);
    save(
        "observation",
        json(app.post("Observation", &observation("v1", 72.5)).await).await,
    );
    save(
        "searchset",
        json(app.get("Patient?identifier=urn:v|1").await).await,
    );
    save(
        "searchset-empty",
        json(app.get("Patient?_id=nobody").await).await,
    );
    save(
        "searchset-lenient",
        json(app.get("Patient?unknown=1").await).await,
    );
    app.put(
        "Patient/v1",
        &json!({"resourceType": "Patient", "id": "v1", "active": true}),
    )
    .await;
    app.delete("Patient/v1").await;
    save("history", json(app.get("Patient/v1/_history").await).await);
    save("gone", json(app.get("Patient/v1").await).await);
    save(
        "invalid",
        json(
            app.post(
                "Patient",
                &json!({"resourceType": "Patient", "gender": "x"}),
            )
            .await,
        )
        .await,
    );
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:9b2f7a3e-1c1d-4f4e-9a1b-2c3d4e5f6a7b", "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}]});
    save("transaction-response", json(app.post("", &tx).await).await);
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "x"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/missing"}}]});
    save("batch-response", json(app.post("", &batch).await).await);
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/validate_r4.py"))
        .arg(dir.path())
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "independent validation failed (pip install 'fhir.resources==6.4.0' 'pydantic<2'):\n{text}"
    );
    assert!(text.contains("validated 11 resources, 0 invalid"), "{text}");
}
