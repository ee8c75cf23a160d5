//! Hostile input (issue "Hardening"): bodies and queries built to exhaust the stack, the parser or
//! the store. Every one gets an OperationOutcome, and the server keeps answering afterwards.

use serde_json::{json, Value};

use crate::helpers::{assert_outcome, json, spawn_app, TestApp};

/// `<Patient><extension url="http://x">` + `open`×n + `close`×n + `</extension></Patient>`.
fn deep_xml(open: &str, close: &str, n: usize) -> String {
    format!(
        r#"<Patient xmlns="http://hl7.org/fhir"><extension url="http://x">{}{}</extension></Patient>"#,
        open.repeat(n),
        close.repeat(n)
    )
}

/// Valid FHIR: `<extension url="…">` nested `n` deep, with a value at the bottom.
fn nested_extensions_xml(n: usize) -> String {
    format!(
        r#"<Patient xmlns="http://hl7.org/fhir">{}<valueString value="x"/>{}</Patient>"#,
        r#"<extension url="http://example.org/x">"#.repeat(n),
        "</extension>".repeat(n)
    )
}

async fn send_xml(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: String,
) -> reqwest::Response {
    app.client
        .request(method, format!("{}/{path}", app.base))
        .header("content-type", "application/fhir+xml")
        .body(body)
        .send()
        .await
        .expect("request")
}

/// The server still answers (a stack overflow would have aborted the whole test process).
async fn still_alive(app: &TestApp) {
    let resp = app.get("metadata").await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn deep_xml_is_a_400_outcome_not_a_crash() {
    let app = spawn_app().await;
    // The review's reproduction: 14 KB of `<a>` nesting inside an extension.
    let body = deep_xml("<a>", "</a>", 2000);
    assert!(body.len() > 14_000);
    let oo = assert_outcome(
        send_xml(&app, reqwest::Method::POST, "Patient", body).await,
        400,
        "structure",
    )
    .await;
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .unwrap_or_default()
            .contains("nested more than"),
        "{oo}"
    );
    still_alive(&app).await;

    // Valid extension nesting, deep `code` nesting, on POST and on PUT.
    for (method, path, body) in [
        (
            reqwest::Method::POST,
            "Patient",
            nested_extensions_xml(1_000),
        ),
        (
            reqwest::Method::POST,
            "Patient",
            nested_extensions_xml(1_500),
        ),
        (
            reqwest::Method::POST,
            "Observation",
            deep_xml("<code>", "</code>", 5_000),
        ),
        (
            reqwest::Method::PUT,
            "Patient/p1",
            nested_extensions_xml(1_500),
        ),
        (
            reqwest::Method::PUT,
            "Patient/p1",
            deep_xml("<a>", "</a>", 100_000),
        ),
    ] {
        let resp = send_xml(&app, method, path, body).await;
        assert_outcome(resp, 400, "structure").await;
        still_alive(&app).await;
    }

    // Inside a transaction Bundle.
    let bundle = format!(
        r#"<Bundle xmlns="http://hl7.org/fhir"><type value="transaction"/><entry><resource>{}</resource><request><method value="POST"/><url value="Patient"/></request></entry></Bundle>"#,
        nested_extensions_xml(1_500)
    );
    let resp = send_xml(&app, reqwest::Method::POST, "", bundle).await;
    assert_outcome(resp, 400, "structure").await;
    still_alive(&app).await;

    // Bundles nested in Bundles within the element bound: each level is a large stack frame in
    // the typed parse, so resource nesting has a bound of its own.
    let mut inner = String::from(r#"<Patient><active value="true"/></Patient>"#);
    for _ in 0..20 {
        inner = format!(
            r#"<Bundle><type value="collection"/><entry><resource>{inner}</resource></entry></Bundle>"#
        );
    }
    let doc = inner.replacen("<Bundle>", r#"<Bundle xmlns="http://hl7.org/fhir">"#, 1);
    let resp = send_xml(&app, reqwest::Method::POST, "Bundle", doc).await;
    let oo = assert_outcome(resp, 400, "structure").await;
    assert!(oo.to_string().contains("nested more than"), "{oo}");
    still_alive(&app).await;
    assert_eq!(app.count("resource").await, 0);
}

#[tokio::test]
async fn moderate_xml_nesting_still_works() {
    let app = spawn_app().await;
    // Ten levels of extensions and a narrative with nested XHTML are ordinary FHIR.
    let body = format!(
        r#"<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml"><table><tbody><tr><td><p><b><i>Ann</i></b></p></td></tr></tbody></table></div></text>{}<valueString value="x"/>{}<active value="true"/></Patient>"#,
        r#"<extension url="http://example.org/x">"#.repeat(10),
        "</extension>".repeat(10)
    );
    let resp = send_xml(&app, reqwest::Method::POST, "Patient", body).await;
    assert_eq!(
        resp.status(),
        201,
        "{}",
        resp.text().await.unwrap_or_default()
    );
}

/// JSON `{"extension":[{"url":…,"extension":[…]}]}` nested `n` deep.
fn nested_extensions_json(n: usize) -> Value {
    let mut inner = json!({"url": "http://example.org/x", "valueString": "x"});
    for _ in 1..n {
        inner = json!({"url": "http://example.org/x", "extension": [inner]});
    }
    json!({"resourceType": "Patient", "extension": [inner]})
}

#[tokio::test]
async fn every_recursive_path_is_bounded() {
    let app = spawn_app().await;

    // Extension depth: as deep as JSON allows is refused with the element named, not recursed
    // into without bound.
    let resp = app.post("Patient", &nested_extensions_json(63)).await;
    let status = resp.status().as_u16();
    assert!(matches!(status, 400 | 422), "status {status}");
    still_alive(&app).await;
    // Beyond JSON's own depth limit: a syntax error.
    let text = format!(
        r#"{{"resourceType":"Patient","extension":{}{}}}"#,
        r#"[{"url":"http://x","extension":"#.repeat(200),
        "[]}]".repeat(200)
    );
    let resp = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("content-type", "application/fhir+json")
        .body(text)
        .send()
        .await
        .expect("post");
    assert_outcome(resp, 400, "structure").await;

    // Contained resources may not contain resources themselves (R4 dom-2).
    let nested = json!({"resourceType": "Patient", "contained": [
        {"resourceType": "Patient", "id": "c1", "contained": [{"resourceType": "Patient", "id": "c2"}]}
    ]});
    let resp = app.post("Patient", &nested).await;
    let status = resp.status().as_u16();
    assert!(matches!(status, 400 | 422), "status {status}");

    // Bundles nested in Bundles, as deep as JSON allows, in a transaction entry.
    let mut doc = json!({"resourceType": "Bundle", "type": "collection"});
    for _ in 0..30 {
        doc = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": doc}]});
    }
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": doc, "request": {"method": "POST", "url": "Bundle"}}
    ]});
    let resp = app.post("", &tx).await;
    let status = resp.status().as_u16();
    assert!(matches!(status, 200 | 400 | 422), "status {status}");
    still_alive(&app).await;

    // Chains deeper than the limit are refused.
    let resp = app
        .get("Observation?subject:Patient.organization.partof.partof.partof.name=x")
        .await;
    assert_outcome(resp, 400, "invalid").await;

    // `_include:iterate` over a reference cycle stops (Observations that are members of each other).
    let mut ids = Vec::new();
    for i in 0..3 {
        let mut o = crate::helpers::observation("p1", f64::from(i));
        o["id"] = json!(format!("cyc{i}"));
        ids.push(format!("cyc{i}"));
        let resp = app.put(&format!("Observation/cyc{i}"), &o).await;
        assert!(resp.status().is_success());
    }
    for i in 0..3 {
        let mut o = crate::helpers::observation("p1", f64::from(i));
        o["id"] = json!(format!("cyc{i}"));
        o["hasMember"] = json!([{"reference": format!("Observation/cyc{}", (i + 1) % 3)}]);
        let resp = app.put(&format!("Observation/cyc{i}"), &o).await;
        assert_eq!(resp.status(), 200);
    }
    let resp = app
        .get("Observation?_id=cyc0&_include:iterate=Observation:has-member&_include=Observation:has-member")
        .await;
    assert_eq!(resp.status(), 200);
    let bundle = json(resp).await;
    let mut found: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect();
    found.sort();
    assert_eq!(found, ids);
}
