//! read, vread, create, update, delete, history, headers and content negotiation.

use serde_json::{json, Value};

use crate::helpers::{assert_outcome, json, observation, spawn_app};

#[tokio::test]
async fn create_read_update_delete_round_trip() {
    let app = spawn_app().await;
    // Create: 201, server-assigned id (a body id is ignored), Location, ETag, Last-Modified.
    let resp = app
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "id": "ignored", "name": [{"family": "Doe"}]}),
        )
        .await;
    assert_eq!(resp.status(), 201);
    let h = resp.headers().clone();
    assert_eq!(h["etag"], "W/\"1\"");
    assert!(h.contains_key("last-modified"));
    let location = h["location"].to_str().expect("location").to_owned();
    let created = json(resp).await;
    let id = created["id"].as_str().expect("id").to_owned();
    assert_ne!(id, "ignored");
    assert_eq!(location, format!("{}/Patient/{id}/_history/1", app.base));
    assert_eq!(created["meta"]["versionId"], "1");

    // Read.
    let resp = app.get(&format!("Patient/{id}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "W/\"1\"");
    assert_eq!(
        resp.headers()["content-type"],
        "application/fhir+json; charset=utf-8"
    );
    assert_eq!(json(resp).await["name"][0]["family"], "Doe");

    // Update: 200, version 2.
    let resp = app
        .put(
            &format!("Patient/{id}"),
            &json!({"resourceType": "Patient", "id": id, "name": [{"family": "Roe"}]}),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["etag"], "W/\"2\"");
    assert_eq!(json(resp).await["meta"]["versionId"], "2");

    // vread of both versions.
    assert_eq!(
        json(app.get(&format!("Patient/{id}/_history/1")).await).await["name"][0]["family"],
        "Doe"
    );
    assert_eq!(
        json(app.get(&format!("Patient/{id}/_history/2")).await).await["name"][0]["family"],
        "Roe"
    );
    assert_outcome(
        app.get(&format!("Patient/{id}/_history/9")).await,
        404,
        "not-found",
    )
    .await;
    assert_outcome(
        app.get(&format!("Patient/{id}/_history/x")).await,
        404,
        "not-found",
    )
    .await;

    // Delete: 204, then 410 Gone, history keeps all three versions, vread of the tombstone is 410.
    assert_eq!(app.delete(&format!("Patient/{id}")).await.status(), 204);
    let gone = app.get(&format!("Patient/{id}")).await;
    assert_eq!(gone.headers()["etag"], "W/\"3\"");
    assert_outcome(gone, 410, "deleted").await;
    assert_outcome(
        app.get(&format!("Patient/{id}/_history/3")).await,
        410,
        "deleted",
    )
    .await;
    let hist = json(app.get(&format!("Patient/{id}/_history")).await).await;
    assert_eq!(hist["type"], "history");
    let methods: Vec<&str> = hist["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["request"]["method"].as_str().expect("m"))
        .collect();
    assert_eq!(methods, ["DELETE", "PUT", "POST"]);
    assert!(hist["entry"][0].get("resource").is_none());
    // Deleting again is 204 with no new version.
    assert_eq!(app.delete(&format!("Patient/{id}")).await.status(), 204);
    assert_eq!(app.count("resource_version").await, 3);
    // Update after delete re-creates: 201, version 4.
    let resp = app
        .put(
            &format!("Patient/{id}"),
            &json!({"resourceType": "Patient", "id": id}),
        )
        .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["etag"], "W/\"4\"");
}

#[tokio::test]
async fn update_as_create_and_unknown_resources() {
    let app = spawn_app().await;
    let resp = app
        .put("Observation/obs-1", &{
            let mut o = observation("p1", 60.0);
            o["id"] = json!("obs-1");
            o
        })
        .await;
    assert_eq!(resp.status(), 201);
    assert_outcome(app.get("Observation/nope").await, 404, "not-found").await;
    assert_outcome(app.get("Patiënt/1").await, 404, "not-found").await;
    assert_outcome(app.get("Unknown/1").await, 404, "not-found").await;
    assert_outcome(app.get("Patient/a%00b").await, 400, "invalid").await;
    assert_outcome(
        app.get(&format!("Patient/{}", "a".repeat(65))).await,
        400,
        "invalid",
    )
    .await;
    assert_outcome(app.get("nothing/here/at/all/x").await, 404, "not-found").await;
    assert_outcome(app.get("Patient/nope/_history").await, 404, "not-found").await;
    // PATCH is supported; without a Content-Type naming the patch format it is 415, and a method
    // no route takes is still 405.
    let resp = app
        .client
        .patch(format!("{}/Patient/x", app.base))
        .send()
        .await
        .expect("patch");
    assert_outcome(resp, 415, "not-supported").await;
    let resp = app
        .client
        .patch(format!("{}/Patient/x/_history", app.base))
        .send()
        .await
        .expect("patch");
    assert_outcome(resp, 405, "not-supported").await;
}

#[tokio::test]
async fn if_match_and_if_none_match() {
    let app = spawn_app().await;
    let p = json!({"resourceType": "Patient", "id": "m1", "active": true});
    assert_eq!(app.put("Patient/m1", &p).await.status(), 201);
    let put = |etag: &'static str| {
        app.client
            .put(format!("{}/Patient/m1", app.base))
            .header("content-type", "application/fhir+json")
            .header("if-match", etag)
            .body(p.to_string())
            .send()
    };
    assert_outcome(put("W/\"7\"").await.expect("put"), 412, "conflict").await;
    assert_eq!(put("W/\"1\"").await.expect("put").status(), 200);
    assert_outcome(put("garbage").await.expect("put"), 400, "invalid").await;
    let resp = app
        .client
        .get(format!("{}/Patient/m1", app.base))
        .header("if-none-match", "W/\"2\"")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 304);
    let resp = app
        .client
        .delete(format!("{}/Patient/m1", app.base))
        .header("if-match", "W/\"1\"")
        .send()
        .await
        .expect("del");
    assert_outcome(resp, 412, "conflict").await;
}

#[tokio::test]
async fn prefer_return_variants() {
    let app = spawn_app().await;
    let send = |prefer: &'static str| {
        app.client
            .post(format!("{}/Patient", app.base))
            .header("content-type", "application/fhir+json")
            .header("prefer", prefer)
            .body(json!({"resourceType": "Patient"}).to_string())
            .send()
    };
    let minimal = send("return=minimal").await.expect("post");
    assert_eq!(minimal.status(), 201);
    assert!(minimal.headers().contains_key("location"));
    assert!(minimal.text().await.expect("body").is_empty());
    let oo = json(send("return=OperationOutcome").await.expect("post")).await;
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert_eq!(
        json(send("return=representation").await.expect("post")).await["resourceType"],
        "Patient"
    );
}

#[tokio::test]
async fn xml_in_and_out() {
    let app = spawn_app().await;
    let xml = r#"<Patient xmlns="http://hl7.org/fhir"><id value="x1"/><active value="true"/><name><family value="Xml"/></name></Patient>"#;
    let resp = app
        .client
        .put(format!("{}/Patient/x1", app.base))
        .header("content-type", "application/fhir+xml")
        .header("accept", "application/fhir+xml")
        .body(xml)
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 201);
    assert_eq!(
        resp.headers()["content-type"],
        "application/fhir+xml; charset=utf-8"
    );
    let body = resp.text().await.expect("xml");
    assert!(body.contains("<family value=\"Xml\"/>"), "{body}");
    // _format wins over Accept.
    let resp = app
        .client
        .get(format!("{}/Patient/x1?_format=json", app.base))
        .header("accept", "application/fhir+xml")
        .send()
        .await
        .expect("get");
    assert_eq!(json(resp).await["name"][0]["family"], "Xml");
    let resp = app
        .client
        .get(format!("{}/Patient/x1?_format=xml", app.base))
        .send()
        .await
        .expect("get");
    assert!(resp.text().await.expect("xml").starts_with("<?xml"));
    assert_outcome(app.get("Patient/x1?_format=yaml").await, 400, "invalid").await;
    // Malformed XML is a 400.
    let resp = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("content-type", "application/fhir+xml")
        .body("<Patient")
        .send()
        .await
        .expect("post");
    assert_outcome(resp, 400, "structure").await;
    // A document whose closing tags are missing is not well formed, even if fhirbolt would stop early.
    let resp = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("content-type", "application/fhir+xml")
        .body("<Patient xmlns=\"http://hl7.org/fhir\">\n<active value=\"true\">")
        .send()
        .await
        .expect("post");
    let oo = assert_outcome(resp, 400, "structure").await;
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .expect("d")
            .contains("line 2"),
        "{oo}"
    );
    assert_eq!(
        app.count("resource").await,
        1,
        "only the valid XML Patient was stored"
    );
}

#[tokio::test]
async fn history_paging_and_since() {
    let app = spawn_app().await;
    for i in 0..5 {
        let mut o = observation("hp", f64::from(i));
        o["id"] = json!(format!("h{i}"));
        assert_eq!(
            app.put(&format!("Observation/h{i}"), &o).await.status(),
            201
        );
    }
    let page1 = json(app.get("Observation/_history?_count=2").await).await;
    assert_eq!(page1["entry"].as_array().expect("e").len(), 2);
    let next = page1["link"]
        .as_array()
        .expect("links")
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("next")["url"]
        .as_str()
        .expect("url")
        .to_owned();
    // A write between pages does not shift the next page (keyset paging).
    let mut o = observation("hp", 99.0);
    o["id"] = json!("h-late");
    app.put("Observation/h-late", &o).await;
    let page2 = json(app.client.get(&next).send().await.expect("next")).await;
    let ids = |b: &serde_json::Value| {
        b["entry"]
            .as_array()
            .expect("e")
            .iter()
            .map(|e| e["resource"]["id"].as_str().expect("id").to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&page1), ["h4", "h3"]);
    assert_eq!(ids(&page2), ["h2", "h1"]);
    let all = json(app.get("_history?_count=100").await).await;
    assert_eq!(all["entry"].as_array().expect("e").len(), 6);
    let future = json(
        app.get("Observation/_history?_since=2999-01-01T00:00:00Z")
            .await,
    )
    .await;
    assert!(
        future.get("entry").is_none(),
        "an empty page has no entry array"
    );
    assert_outcome(
        app.get("Observation/_history?_since=yesterday").await,
        400,
        "invalid",
    )
    .await;
    assert_outcome(
        app.get("Observation/_history?_count=-1").await,
        400,
        "invalid",
    )
    .await;
}

#[tokio::test]
async fn conditional_create_and_update() {
    let app = spawn_app().await;
    let patient =
        json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "42"}]});
    let send = || {
        app.client
            .post(format!("{}/Patient", app.base))
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", "identifier=urn:mrn|42")
            .body(patient.to_string())
            .send()
    };
    let first = send().await.expect("post");
    assert_eq!(first.status(), 201);
    let id = json(first).await["id"].as_str().expect("id").to_owned();
    let second = send().await.expect("post");
    assert_eq!(second.status(), 200);
    assert_eq!(json(second).await["id"], id);
    // Conditional update: one match updates it.
    let resp = app.put("Patient?identifier=urn:mrn|42", &json!({"resourceType": "Patient", "active": true, "identifier": [{"system": "urn:mrn", "value": "42"}]})).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["id"], id);
    // No match creates.
    let resp = app.put("Patient?identifier=urn:mrn|43", &json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "43"}]})).await;
    assert_eq!(resp.status(), 201);
    // Two matches: 412.
    app.post(
        "Patient",
        &json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "43"}]}),
    )
    .await;
    let resp = app
        .put(
            "Patient?identifier=urn:mrn|43",
            &json!({"resourceType": "Patient"}),
        )
        .await;
    assert_outcome(resp, 412, "conflict").await;
    // Unsupported criteria name the parameter.
    let resp = app
        .put("Patient?name=smith", &json!({"resourceType": "Patient"}))
        .await;
    let oo = assert_outcome(resp, 400, "invalid").await;
    assert_eq!(crate::helpers::expressions(&oo), ["name"]);
    // Identifier search with the blind index: all token forms.
    let by_id = format!("_id={id}");
    for q in [
        "identifier=urn:mrn|42",
        "identifier=42",
        "identifier=urn:mrn|42,urn:mrn|999",
        by_id.as_str(),
    ] {
        let b = json(app.get(&format!("Patient?{q}")).await).await;
        assert_eq!(b["entry"][0]["resource"]["id"], id, "{q}");
        assert_eq!(b["entry"][0]["search"]["mode"], "match");
    }
    let by_system = json(app.get("Patient?identifier=urn:mrn|").await).await;
    assert_eq!(by_system["entry"].as_array().expect("e").len(), 3);
    let none = json(app.get("Patient?identifier=|42").await).await;
    assert!(none.get("entry").is_none());
    let strict = app
        .client
        .get(format!("{}/Patient?foo=bar", app.base))
        .header("prefer", "handling=strict")
        .send()
        .await
        .expect("get");
    assert_outcome(strict, 400, "invalid").await;
    let lenient = json(app.get("Patient?foo=bar&_count=1").await).await;
    assert_eq!(lenient["type"], "searchset");
}

#[tokio::test]
async fn metadata_describes_the_server() {
    let app = spawn_app().await;
    let cs = json(app.get("metadata").await).await;
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let resources = cs["rest"][0]["resource"].as_array().expect("resources");
    assert_eq!(resources.len(), 146);
    let obs = resources
        .iter()
        .find(|r| r["type"] == "Observation")
        .expect("Observation");
    assert_eq!(obs["conditionalCreate"], true);
    assert_eq!(obs["versioning"], "versioned-update");
    // Search parameters come from the R4 definitions, with what each supports.
    let param = |r: &Value, name: &str| -> Value {
        r["searchParam"]
            .as_array()
            .expect("params")
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    assert_eq!(param(obs, "value-quantity")["type"], "quantity");
    assert_eq!(param(obs, "code-value-quantity")["type"], "composite");
    let ops: Vec<&str> = obs["operation"]
        .as_array()
        .expect("ops")
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    assert_eq!(ops, ["lastn", "stats"]);
    let patient = resources
        .iter()
        .find(|r| r["type"] == "Patient")
        .expect("Patient");
    assert!(param(patient, "family")["documentation"]
        .as_str()
        .expect("doc")
        .contains(":contains is refused"));
    assert_eq!(patient["operation"][0]["name"], "everything");
    assert!(patient["searchInclude"]
        .as_array()
        .expect("inc")
        .iter()
        .any(|i| i == "Patient:organization"));
    let health = app
        .client
        .get(app.base.replace("/fhir", "/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    let ready = app
        .client
        .get(app.base.replace("/fhir", "/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    // The statement itself is valid R4.
    assert!(
        fhirgate_codec::validate(cs.clone()).is_ok(),
        "{:?}",
        fhirgate_codec::validate(cs.clone()).err()
    );
}
