//! Standard FHIR behaviour partners' clients expect, over plain HTTP: conditional delete,
//! negotiation (q-values, fhirVersion, `_format` aliases, `_pretty`) and conditional reads.

use serde_json::{json, Value};

use crate::audit::token;
use crate::helpers::{assert_outcome, json, observation, spawn_app, TestApp};

async fn tagged_observation(app: &TestApp, pid: &str, tag: &str) -> String {
    let mut o = observation(pid, 60.0);
    o["identifier"] = json!([{"system": "urn:batch", "value": tag}]);
    let r = app.post("Observation", &o).await;
    assert_eq!(r.status(), 201);
    json(r).await["id"].as_str().expect("id").to_owned()
}

async fn delete_as(app: &TestApp, bearer: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .delete(format!("{}/{path}", app.base))
        .bearer_auth(bearer)
        .send()
        .await
        .expect("delete")
}

#[tokio::test]
async fn conditional_delete_single_multiple_and_refused() {
    let app = spawn_app().await;
    let admin = token(&app, "admin", "system/*.cruds", None, None);
    let one = tagged_observation(&app, "p1", "one").await;
    let many: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..3 {
            v.push(tagged_observation(&app, "p1", "many").await);
        }
        v
    };
    // No criteria: refused; criteria matching nothing: an ordinary delete of nothing.
    assert_outcome(delete_as(&app, &admin, "Observation").await, 400, "invalid").await;
    let r = delete_as(&app, &admin, "Observation?identifier=urn:batch|none").await;
    assert_eq!(r.status(), 204);
    // One match: 204 with the tombstone's version, then reads are 410.
    let r = delete_as(&app, &admin, "Observation?identifier=urn:batch|one").await;
    assert_eq!(r.status(), 204);
    assert_eq!(r.headers()["etag"], "W/\"2\"");
    assert_eq!(app.get(&format!("Observation/{one}")).await.status(), 410);
    // If-Match with several matches is refused; without it, all are deleted at once.
    let r = reqwest::Client::new()
        .delete(format!(
            "{}/Observation?identifier=urn:batch|many",
            app.base
        ))
        .bearer_auth(&admin)
        .header("if-match", "W/\"1\"")
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 412);
    let r = delete_as(&app, &admin, "Observation?identifier=urn:batch|many").await;
    assert_eq!(r.status(), 200);
    assert!(json(r).await["issue"][0]["diagnostics"]
        .as_str()
        .expect("text")
        .contains("deleted 3"));
    for id in &many {
        assert_eq!(app.get(&format!("Observation/{id}")).await.status(), 410);
    }
    // Too many matches: 412 and nothing deleted.
    for _ in 0..(fhirgate::fhir::crud::MAX_CONDITIONAL_DELETE + 1) {
        tagged_observation(&app, "p2", "lots").await;
    }
    let before = app.count("resource where not deleted").await;
    let r = delete_as(&app, &admin, "Observation?identifier=urn:batch|lots").await;
    assert_eq!(r.status(), 412);
    assert_eq!(app.count("resource where not deleted").await, before);
    // Scopes and reach: read-only is 403; a patient's token deletes only in its compartment;
    // partners are refused.
    let kept = tagged_observation(&app, "p3", "kept").await;
    let reader = token(&app, "reader", "system/*.rs", None, None);
    assert_eq!(
        delete_as(&app, &reader, "Observation?identifier=urn:batch|kept")
            .await
            .status(),
        403
    );
    let other = token(&app, "app", "patient/*.cruds", Some("p4"), None);
    assert_eq!(
        delete_as(&app, &other, "Observation?identifier=urn:batch|kept")
            .await
            .status(),
        204
    );
    assert_eq!(app.get(&format!("Observation/{kept}")).await.status(), 200);
    let partner = token(
        &app,
        "acme",
        "system/*.cruds",
        None,
        Some("Organization/acme"),
    );
    assert_eq!(
        delete_as(&app, &partner, "Observation?identifier=urn:batch|kept")
            .await
            .status(),
        403
    );
    let own = token(&app, "app", "patient/*.cruds", Some("p3"), None);
    assert_eq!(
        delete_as(&app, &own, "Observation?identifier=urn:batch|kept")
            .await
            .status(),
        204
    );
    assert_eq!(app.get(&format!("Observation/{kept}")).await.status(), 410);
    // Each deletion is in the trail.
    let events: String = sqlx::query_scalar("select string_agg(events, '\n') from audit_log")
        .fetch_one(&app.pool)
        .await
        .expect("events");
    for id in many.iter().chain([&one, &kept]) {
        assert!(events.contains(&format!("Observation/{id}")), "{id}");
    }
}

fn get_with(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> reqwest::RequestBuilder {
    let mut r = app.client.get(format!("{}/{path}", app.base));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r
}

#[tokio::test]
async fn negotiation_honours_quality_versions_aliases_and_pretty() {
    let app = spawn_app().await;
    let id = json(
        app.post(
            "Patient",
            &json!({"resourceType": "Patient", "active": true}),
        )
        .await,
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let path = format!("Patient/{id}");
    let ct = |r: &reqwest::Response| {
        r.headers()["content-type"]
            .to_str()
            .expect("ascii")
            .to_owned()
    };
    for (accept, want) in [
        ("application/fhir+xml;q=0.5, application/fhir+json", "json"),
        ("application/fhir+json;q=0.1, application/fhir+xml", "xml"),
        ("application/fhir+json; fhirVersion=4.0", "json"),
        ("text/html", "json"),
    ] {
        let r = get_with(&app, &path, &[("accept", accept)])
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "{accept}");
        assert!(ct(&r).contains(want), "{accept}: {}", ct(&r));
    }
    let r = get_with(
        &app,
        &path,
        &[("accept", "application/fhir+json; fhirVersion=3.0")],
    )
    .send()
    .await
    .expect("get");
    assert_outcome(r, 406, "not-supported").await;
    let r = app
        .client
        .post(format!("{}/Patient", app.base))
        .header("content-type", "application/fhir+json; fhirVersion=5.0")
        .body(json!({"resourceType": "Patient"}).to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 406);
    for (f, want) in [
        ("json", "json"),
        ("application/json", "json"),
        ("application/fhir%2Bjson", "json"),
        ("application/fhir+json", "json"),
        ("xml", "xml"),
        ("text/xml", "xml"),
        ("application/fhir+xml", "xml"),
    ] {
        let r = app.get(&format!("{path}?_format={f}")).await;
        assert_eq!(r.status(), 200, "{f}");
        assert!(ct(&r).contains(want), "{f}: {}", ct(&r));
    }
    // _pretty indents JSON without changing it.
    let pretty = app
        .get(&format!("{path}?_pretty=true"))
        .await
        .text()
        .await
        .expect("text");
    let plain = app.get(&path).await.text().await.expect("text");
    assert!(pretty.contains("\n  \""), "{pretty}");
    assert!(!plain.contains('\n'));
    assert_eq!(
        serde_json::from_str::<Value>(&pretty).expect("json"),
        serde_json::from_str::<Value>(&plain).expect("json")
    );
}

#[tokio::test]
async fn conditional_reads_by_etag_and_by_date() {
    let app = spawn_app().await;
    let created = app
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "active": true}),
        )
        .await;
    let last_modified = created.headers()["last-modified"]
        .to_str()
        .expect("date")
        .to_owned();
    let id = json(created).await["id"].as_str().expect("id").to_owned();
    let path = format!("Patient/{id}");
    let status = |h: Vec<(&'static str, String)>| {
        let r = app.client.get(format!("{}/{path}", app.base));
        let r = h.into_iter().fold(r, |r, (k, v)| r.header(k, v));
        async move { r.send().await.expect("get").status().as_u16() }
    };
    assert_eq!(status(vec![("if-none-match", "W/\"1\"".into())]).await, 304);
    assert_eq!(status(vec![("if-none-match", "W/\"9\"".into())]).await, 200);
    assert_eq!(
        status(vec![("if-modified-since", last_modified.clone())]).await,
        304
    );
    assert_eq!(
        status(vec![(
            "if-modified-since",
            "Mon, 01 Jan 2001 00:00:00 GMT".into()
        )])
        .await,
        200
    );
    // If-None-Match decides when both are sent.
    assert_eq!(
        status(vec![
            ("if-none-match", "W/\"9\"".into()),
            ("if-modified-since", last_modified)
        ])
        .await,
        200
    );
    let caps = json(
        app.anonymous
            .get(format!("{}/metadata", app.base))
            .send()
            .await
            .expect("m"),
    )
    .await;
    let patient = caps["rest"][0]["resource"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["type"] == "Patient")
        .expect("Patient")
        .clone();
    assert_eq!(patient["conditionalRead"], "full-support");
    assert_eq!(patient["conditionalDelete"], "multiple");
    assert!(patient["interaction"]
        .as_array()
        .expect("interactions")
        .contains(&json!({"code": "patch"})));
}

#[tokio::test]
async fn everything_follows_references_out_of_the_compartment_within_access() {
    let app = spawn_app().await;
    let id_of = |v: Value| v["id"].as_str().expect("id").to_owned();
    let pid = id_of(
        json(
            app.post("Patient", &json!({"resourceType": "Patient"}))
                .await,
        )
        .await,
    );
    let org = id_of(
        json(
            app.post(
                "Organization",
                &json!({"resourceType": "Organization", "name": "Clinic"}),
            )
            .await,
        )
        .await,
    );
    let doc = id_of(
        json(
            app.post("Practitioner", &json!({"resourceType": "Practitioner"}))
                .await,
        )
        .await,
    );
    let place = id_of(
        json(
            app.post(
                "Location",
                &json!({"resourceType": "Location", "name": "Room 1"}),
            )
            .await,
        )
        .await,
    );
    let unrelated = id_of(
        json(
            app.post(
                "Organization",
                &json!({"resourceType": "Organization", "name": "Elsewhere"}),
            )
            .await,
        )
        .await,
    );
    let enc = json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{pid}")},
        "participant": [{"individual": {"reference": format!("Practitioner/{doc}")}}],
        "location": [{"location": {"reference": format!("Location/{place}")}}],
        "serviceProvider": {"reference": format!("Organization/{org}")}});
    assert_eq!(app.post("Encounter", &enc).await.status(), 201);
    let everything = |bearer: Option<String>| {
        let app = &app;
        let pid = pid.clone();
        async move {
            let mut r =
                reqwest::Client::new().get(format!("{}/Patient/{pid}/$everything", app.base));
            r = match bearer {
                Some(b) => r.bearer_auth(b),
                None => r.bearer_auth(token(app, "admin", "system/*.rs", None, None)),
            };
            r.send().await.expect("everything")
        }
    };
    let b = json(everything(None).await).await;
    let modes: Vec<(String, String)> = b["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                format!(
                    "{}/{}",
                    e["resource"]["resourceType"].as_str().unwrap_or(""),
                    e["resource"]["id"].as_str().unwrap_or("")
                ),
                e["search"]["mode"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for want in [
        format!("Organization/{org}"),
        format!("Practitioner/{doc}"),
        format!("Location/{place}"),
    ] {
        assert!(
            modes.contains(&(want.clone(), "include".into())),
            "{want}: {modes:?}"
        );
    }
    assert!(
        !modes.iter().any(|(r, _)| r.ends_with(&unrelated)),
        "{modes:?}"
    );
    // The patient's own app gets the same; another patient's app gets nothing (404).
    let own = token(&app, "app", "patient/*.rs", Some(&pid), None);
    let b = json(everything(Some(own)).await).await;
    assert!(b.to_string().contains(&format!("\"id\":\"{org}\"")), "{b}");
    let other = token(&app, "app", "patient/*.rs", Some("someone-else"), None);
    assert_eq!(everything(Some(other)).await.status(), 404);
    // Scopes still decide: without Organization in the scopes, no Organization comes back.
    let narrow = token(
        &app,
        "app",
        "patient/Patient.rs patient/Encounter.rs",
        Some(&pid),
        None,
    );
    let b = json(everything(Some(narrow)).await).await;
    assert!(!b.to_string().contains("\"Organization\""), "{b}");
    assert!(b.to_string().contains("\"Encounter\""), "{b}");
}

/// Every interaction and operation the CapabilityStatement claims is routed and answered: none
/// is 405, 501 or a server error, for every resource type it lists.
#[tokio::test]
async fn every_interaction_the_capability_statement_claims_is_answered() {
    let app = spawn_app().await;
    let caps = json(
        app.anonymous
            .get(format!("{}/metadata", app.base))
            .send()
            .await
            .expect("metadata"),
    )
    .await;
    let pid = json(
        app.post("Patient", &json!({"resourceType": "Patient"}))
            .await,
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let c = &app.client;
    let url = |p: &str| format!("{}/{p}", app.base);
    let mut checked = 0;
    let mut broken = Vec::new();
    for r in caps["rest"][0]["resource"].as_array().expect("resources") {
        let rt = r["type"].as_str().expect("type");
        let body = json!({"resourceType": rt, "id": "claimed"}).to_string();
        for i in r["interaction"].as_array().expect("interactions") {
            let code = i["code"].as_str().expect("code");
            let req = match code {
                "read" => c.get(url(&format!("{rt}/claimed"))),
                "vread" => c.get(url(&format!("{rt}/claimed/_history/1"))),
                "update" => c
                    .put(url(&format!("{rt}/claimed")))
                    .header("content-type", "application/fhir+json")
                    .body(body.clone()),
                "patch" => c
                    .patch(url(&format!("{rt}/claimed")))
                    .header("content-type", "application/merge-patch+json")
                    .body("{}"),
                "delete" => c.delete(url(&format!("{rt}/claimed"))),
                "history-instance" => c.get(url(&format!("{rt}/claimed/_history"))),
                "history-type" => c.get(url(&format!("{rt}/_history"))),
                "create" => c
                    .post(url(rt))
                    .header("content-type", "application/fhir+json")
                    .body(json!({"resourceType": rt}).to_string()),
                "search-type" => c.get(url(&format!("{rt}?_count=1"))),
                other => panic!("an interaction this test does not know: {other}"),
            };
            let status = req.send().await.expect("request").status().as_u16();
            checked += 1;
            if matches!(status, 405 | 501) || status >= 500 {
                broken.push(format!("{code} {rt}: {status}"));
            }
        }
        for op in r["operation"].as_array().into_iter().flatten() {
            let name = op["name"].as_str().expect("name");
            let path = match (rt, name) {
                ("Patient", _) => format!("Patient/{pid}/${name}"),
                _ => format!("{rt}/${name}"),
            };
            for req in [
                c.get(url(&path)),
                c.post(url(&path))
                    .header("content-type", "application/fhir+json")
                    .body(json!({"resourceType": "Parameters"}).to_string()),
            ] {
                let status = req.send().await.expect("operation").status().as_u16();
                checked += 1;
                // $export of the trail is GET only, as documented.
                if (matches!(status, 405 | 501) && name != "export") || status >= 500 {
                    broken.push(format!("${name} on {rt}: {status}"));
                }
            }
        }
    }
    for i in caps["rest"][0]["interaction"].as_array().expect("system") {
        let req = match i["code"].as_str().expect("code") {
            kind @ ("batch" | "transaction") => c
                .post(&app.base)
                .header("content-type", "application/fhir+json")
                .body(json!({"resourceType": "Bundle", "type": kind}).to_string()),
            "history-system" => c.get(url("_history")),
            "search-system" => c.get(format!("{}?_type=Patient", app.base)),
            other => panic!("a system interaction this test does not know: {other}"),
        };
        let status = req.send().await.expect("system").status().as_u16();
        checked += 1;
        if status >= 400 {
            broken.push(format!("{i}: {status}"));
        }
    }
    assert!(checked > 1000, "{checked}");
    assert!(broken.is_empty(), "claimed but not answered: {broken:#?}");
}
