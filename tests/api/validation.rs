//! Validation on write: every rejection is an OperationOutcome naming the element, and nothing is
//! stored (security-test-plan B1–B14).

use serde_json::json;

use crate::helpers::{assert_outcome, expressions, json, observation, spawn_app, spawn_app_with};

async fn nothing_stored(app: &crate::helpers::TestApp) {
    assert_eq!(app.count("resource_version").await, 0);
    assert_eq!(app.count("resource").await, 0);
    assert_eq!(app.count("resource_identifier").await, 0);
}

#[tokio::test]
async fn what_fhirbolt_accepts_is_refused_with_the_element_named() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"resourceType": "Patient", "birthDate": "2024-13-45"}),
            "Patient.birthDate",
            "value",
        ),
        (
            json!({"resourceType": "Patient", "birthDate": "2024-02-30"}),
            "Patient.birthDate",
            "value",
        ),
        (
            json!({"resourceType": "Observation", "status": "bogus", "code": {"text": "x"}}),
            "Observation.status",
            "code-invalid",
        ),
        (
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": "80"}}),
            "Observation.valueQuantity.value",
            "value",
        ),
        (
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueInteger": 2_147_483_648_i64}),
            "Observation.valueInteger",
            "value",
        ),
        (
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "effectiveDateTime": "2024-01-01T00:00:00"}),
            "Observation.effectiveDateTime",
            "value",
        ),
        (
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "issued": "2024-01-01"}),
            "Observation.issued",
            "value",
        ),
        (
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "effectiveDateTime": "2024-01-01T23:59:60Z"}),
            "Observation.effectiveDateTime",
            "value",
        ),
        (
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/../etc"}}),
            "Observation.subject.reference",
            "value",
        ),
        (
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient?identifier=x"}}),
            "Observation.subject.reference",
            "value",
        ),
        (
            json!({"resourceType": "Patient", "implicitRules": "has space"}),
            "Patient.implicitRules",
            "value",
        ),
        (
            json!({"resourceType": "Patient", "gender": "M"}),
            "Patient.gender",
            "code-invalid",
        ),
        (
            json!({"resourceType": "Patient", "name": [{"family": ""}]}),
            "Patient.name[0].family",
            "value",
        ),
        (
            json!({"resourceType": "Patient", "name": {"family": "x"}}),
            "Patient.name",
            "structure",
        ),
        (
            json!({"resourceType": "Patient", "bogusElement": 1}),
            "Patient.bogusElement",
            "structure",
        ),
        (
            json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "../o"}]}),
            "Patient.contained[0].id",
            "value",
        ),
    ];
    for (body, expr, code) in cases {
        let resp = app
            .post(body["resourceType"].as_str().expect("rt"), &body)
            .await;
        let status = resp.status().as_u16();
        let oo = json(resp).await;
        assert!(status == 400 || status == 422, "{expr}: {status} {oo}");
        crate::helpers::assert_outcome_parts(
            reqwest::StatusCode::from_u16(status).expect("s"),
            status,
            &oo,
            code,
        );
        assert!(
            expressions(&oo).iter().any(|e| e == expr),
            "{expr} not named in {oo}"
        );
    }
    nothing_stored(&app).await;
}

#[tokio::test]
async fn url_and_body_must_agree() {
    let app = spawn_app().await;
    // resourceType differs from the URL (B2).
    let oo = assert_outcome(
        app.post("Observation", &json!({"resourceType": "Patient"}))
            .await,
        400,
        "invalid",
    )
    .await;
    assert_eq!(expressions(&oo), ["resourceType"]);
    assert_outcome(
        app.post("Patient", &json!({"name": []})).await,
        400,
        "invalid",
    )
    .await;
    assert_outcome(
        app.post("Patient", &json!({"resourceType": "patient"}))
            .await,
        400,
        "invalid",
    )
    .await;
    // PUT: body id missing or different (B3).
    let oo = assert_outcome(
        app.put("Patient/a", &json!({"resourceType": "Patient", "id": "b"}))
            .await,
        400,
        "invalid",
    )
    .await;
    assert_eq!(expressions(&oo), ["Patient.id"]);
    assert_outcome(
        app.put("Patient/a", &json!({"resourceType": "Patient"}))
            .await,
        400,
        "invalid",
    )
    .await;
    assert_outcome(
        app.put(
            "Patient/a%2Fb",
            &json!({"resourceType": "Patient", "id": "a/b"}),
        )
        .await,
        400,
        "invalid",
    )
    .await;
    nothing_stored(&app).await;
}

#[tokio::test]
async fn malformed_bodies_are_400_with_a_position() {
    let app = spawn_app().await;
    let bodies: [&[u8]; 7] = [
        b"{\"resourceType\": \"Patient\",",
        b"{\"resourceType\": \"Patient\",}",
        b"{\"resourceType\": \"Patient\", \"active\": NaN}",
        b"{\"resourceType\": \"Patient\", \"id\": \"a\", \"id\": \"b\"}",
        b"\xef\xbb\xbf{\"resourceType\": \"Patient\"}",
        b"{\"resourceType\": \"Patient\", \"id\": \"\xff\"}",
        b"{\"resourceType\": \"Patient\", \"id\": \"\\ud800\"}",
    ];
    for b in bodies {
        let resp = app
            .client
            .post(format!("{}/Patient", app.base))
            .header("content-type", "application/fhir+json")
            .body(b.to_vec())
            .send()
            .await
            .expect("post");
        let oo = assert_outcome(resp, 400, "structure").await;
        assert!(
            oo["issue"][0]["diagnostics"]
                .as_str()
                .expect("d")
                .contains("line"),
            "{oo}"
        );
    }
    // Nesting deeper than serde_json's 128 levels.
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let resp = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("content-type", "application/fhir+json")
        .body(deep)
        .send()
        .await
        .expect("post");
    assert_outcome(resp, 400, "structure").await;
    // An array instead of an object.
    let resp = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("content-type", "application/fhir+json")
        .body("[]")
        .send()
        .await
        .expect("post");
    assert_outcome(resp, 400, "invalid").await;
    nothing_stored(&app).await;
}

#[tokio::test]
async fn content_types_and_sizes() {
    let app = spawn_app_with(|a| a.max_body_bytes = 4096).await;
    let body = json!({"resourceType": "Patient"}).to_string();
    for ct in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/fhir+json; charset=latin1",
    ] {
        let resp = app
            .client
            .post(format!("{}/Patient", app.base))
            .header("content-type", ct)
            .body(body.clone())
            .send()
            .await
            .expect("post");
        assert_outcome(resp, 415, "not-supported").await;
    }
    // Over the limit: 413, with or without a Content-Length.
    let big = json!({"resourceType": "Patient", "text": {"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>", "x".repeat(5000))}}).to_string();
    let resp = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("content-type", "application/fhir+json")
        .body(big.clone())
        .send()
        .await
        .expect("post");
    assert_outcome(resp, 413, "too-costly").await;
    let stream = futures::stream::iter(vec![Ok::<_, std::io::Error>(big.into_bytes())]);
    let resp = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("content-type", "application/fhir+json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .expect("post");
    assert_outcome(resp, 413, "too-costly").await;
    nothing_stored(&app).await;
    // The default limit is 16 MiB.
    let app = spawn_app().await;
    let mut o = observation("p", 1.0);
    o["note"] = json!([{"text": "y".repeat(17 * 1024 * 1024)}]);
    assert_outcome(app.post("Observation", &o).await, 413, "too-costly").await;
}
