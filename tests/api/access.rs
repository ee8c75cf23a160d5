//! One access policy for every data path: a named test for each leak an attacker's review found
//! (issue "One access policy"). The noninterference suite covers their variations.

use serde_json::{json, Value};

use crate::audit::token;
use crate::helpers::{observation, spawn_app, TestApp};

/// `PUT {rt}/{id}` as the first-party backend.
async fn seed(app: &TestApp, rt: &str, id: &str, mut body: Value) {
    body["id"] = json!(id);
    let resp = app.put(&format!("{rt}/{id}"), &body).await;
    assert!(
        resp.status().is_success(),
        "{}",
        resp.text().await.unwrap_or_default()
    );
}

fn patient(family: &str, ssn: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family}], "birthDate": "1990-01-01",
        "gender": "male", "identifier": [{"system": "urn:ssn", "value": ssn}]})
}

async fn call(
    app: &TestApp,
    bearer: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}/{path}", app.base))
        .bearer_auth(bearer)
        .header("x-purpose-of-use", "TREAT");
    if let Some(b) = body {
        req = req
            .header("content-type", "application/fhir+json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn get(app: &TestApp, bearer: &str, path: &str) -> (u16, Value) {
    call(app, bearer, reqwest::Method::GET, path, None).await
}

fn ids(bundle: &Value) -> Vec<String> {
    let mut out: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect();
    out.sort();
    out
}

/// Patients `a` and `b`; `a`'s token; `a`'s Observation pointing at `b` (focus) and at `b`'s
/// Observation (hasMember).
async fn two_patients(app: &TestApp) -> String {
    seed(app, "Patient", "a", patient("Alpha", "111")).await;
    seed(app, "Patient", "b", patient("Bravo", "222")).await;
    seed(app, "Observation", "b-hr", observation("b", 180.0)).await;
    let mut mine = observation("a", 70.0);
    mine["focus"] = json!([{"reference": "Patient/b"}]);
    mine["hasMember"] = json!([{"reference": "Observation/b-hr"}]);
    seed(app, "Observation", "a-hr", mine).await;
    token(app, "patient-app", "patient/*.cruds", Some("a"), None)
}

#[tokio::test]
async fn chains_and_has_see_only_what_the_caller_may_see() {
    let app = spawn_app().await;
    let a = two_patients(&app).await;
    for q in [
        "focus:Patient.name=Br",
        "focus:Patient.identifier=222",
        "focus:Patient.birthdate=1990",
        "focus:Patient.gender=male",
        "has-member:Observation.value-quantity=gt173",
    ] {
        let (status, body) = get(&app, &a, &format!("Observation?{q}&_summary=count")).await;
        assert_eq!((status, body["total"].as_i64()), (200, Some(0)), "{q}");
    }
    // The same chain on the caller's own data still works.
    let (_, body) = get(&app, &a, "Observation?subject:Patient.name=Alp").await;
    assert_eq!(ids(&body), ["a-hr"]);
    // Which partners B shares with is B's business.
    seed(
        &app,
        "Organization",
        "acme",
        json!({"resourceType": "Organization", "name": "Acme"}),
    )
    .await;
    let c = crate::consent::consent("b", "acme", &["vital-signs"]);
    assert_eq!(app.post("Consent", &c).await.status(), 201);
    let reader = token(&app, "patient-app", "patient/*.rs", Some("a"), None);
    for q in [
        "_has:Consent:actor:patient=Patient/b",
        "_has:Consent:actor:patient.name=Br",
    ] {
        let (status, body) = get(&app, &reader, &format!("Organization?{q}")).await;
        assert_eq!((status, ids(&body)), (200, Vec::<String>::new()), "{q}");
    }
    // A partner with B's consent for vital signs cannot search by B's demographics.
    let partner = token(
        &app,
        "acme-app",
        "system/*.rs",
        None,
        Some("Organization/acme"),
    );
    let (_, body) = get(&app, &partner, "Observation").await;
    assert_eq!(ids(&body), ["b-hr"]);
    for q in [
        "subject:Patient.name=Br",
        "subject:Patient.identifier=222",
        "subject:Patient.birthdate=1990",
        "patient.gender=male",
        "_has:Provenance:target:agent=Patient/b",
    ] {
        let (status, body) = get(&app, &partner, &format!("Observation?{q}")).await;
        assert_eq!((status, ids(&body)), (200, Vec::<String>::new()), "{q}");
    }
}

#[tokio::test]
async fn conditional_matching_sees_only_the_callers_rows() {
    let app = spawn_app().await;
    let a = two_patients(&app).await;
    let mut theirs = observation("b", 1.0);
    theirs["identifier"] = json!([{"system": "urn:obs", "value": "secret"}]);
    seed(&app, "Observation", "b-id", theirs).await;
    // If-None-Exist matching only B's row: as if nothing matched.
    let resp = reqwest::Client::new()
        .post(format!("{}/Observation", app.base))
        .bearer_auth(&a)
        .header("content-type", "application/fhir+json")
        .header("if-none-exist", "identifier=urn:obs|secret")
        .body(observation("a", 2.0).to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 201);
    // Conditional update: no match; an id of one's choosing is refused whoever holds it.
    let mut body = observation("a", 3.0);
    body["id"] = json!("b-id");
    let (status, oo) = call(
        &app,
        &a,
        reqwest::Method::PUT,
        "Observation?identifier=urn:obs|secret",
        Some(body.clone()),
    )
    .await;
    body["id"] = json!("free-id");
    let (status2, oo2) = call(
        &app,
        &a,
        reqwest::Method::PUT,
        "Observation?identifier=urn:obs|secret",
        Some(body),
    )
    .await;
    assert_eq!((status, status2), (400, 400));
    assert_eq!(
        oo["issue"][0]["diagnostics"],
        oo2["issue"][0]["diagnostics"]
    );
    // A transaction cannot link A's Observation to B's Patient through B's SSN.
    let tx = |ssn: &str| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": format!("Patient?identifier=urn:ssn|{ssn}")}},
        "request": {"method": "POST", "url": "Observation"}}]})
    };
    let (s_b, o_b) = call(&app, &a, reqwest::Method::POST, "", Some(tx("222"))).await;
    let (s_none, o_none) = call(&app, &a, reqwest::Method::POST, "", Some(tx("000"))).await;
    assert_eq!((s_b, s_none), (412, 412));
    assert_eq!(
        o_b["issue"][0]["diagnostics"],
        o_none["issue"][0]["diagnostics"]
    );
    assert!(!o_b.to_string().contains("Patient/b"), "{o_b}");
    let (s_a, _) = call(&app, &a, reqwest::Method::POST, "", Some(tx("111"))).await;
    assert_eq!(s_a, 200);
    // A batch entry never echoes B's id.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation/b-id"}},
        {"request": {"method": "GET", "url": "Observation/nope"}}]});
    let (_, out) = call(&app, &a, reqwest::Method::POST, "", Some(batch)).await;
    let statuses: Vec<&str> = out["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(statuses[0], statuses[1]);
    let texts: Vec<String> = out["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            let text = e["response"]["outcome"]["issue"][0]["diagnostics"]
                .as_str()
                .unwrap_or("");
            let text = text.split_once("]: ").map_or(text, |(_, t)| t);
            text.replace("b-id", "ID").replace("nope", "ID")
        })
        .collect();
    assert_eq!(texts[0], texts[1]);
}

#[tokio::test]
async fn derived_resources_and_absolute_references_belong_to_their_patient() {
    let app = spawn_app().await;
    let a = two_patients(&app).await;
    let b = token(&app, "patient-app", "patient/*.cruds", Some("b"), None);
    seed(
        &app,
        "Provenance",
        "b-import",
        json!({"resourceType": "Provenance",
        "target": [{"reference": "Observation/b-hr"}], "recorded": "2024-03-01T09:00:00Z",
        "agent": [{"who": {"reference": "Patient/b"}}]}),
    )
    .await;
    let mut abs = observation("b", 5.0);
    abs["subject"] = json!({"reference": format!("{}/Patient/b", app.base)});
    seed(&app, "Observation", "b-abs", abs).await;
    for path in ["Provenance/b-import", "Observation/b-abs"] {
        assert_eq!(get(&app, &a, path).await.0, 404, "{path}");
        assert_eq!(get(&app, &b, path).await.0, 200, "{path}");
    }
    let (_, stored) = get(&app, &b, "Observation/b-abs").await;
    assert_eq!(stored["subject"]["reference"], "Patient/b");
    let (_, found) = get(&app, &a, "Provenance").await;
    assert_eq!(ids(&found), Vec::<String>::new());
}

#[tokio::test]
async fn aggregates_and_cursors_keep_to_the_policy() {
    let app = spawn_app().await;
    seed(&app, "Patient", "a", patient("Alpha", "111")).await;
    seed(&app, "Observation", "vital", observation("a", 70.0)).await;
    let mut lab = observation("a", 5.5);
    lab["category"][0]["coding"][0]["code"] = json!("laboratory");
    lab["code"]["coding"][0]["code"] = json!("2345-7");
    seed(&app, "Observation", "lab", lab).await;
    let granular = token(
        &app,
        "g-app",
        "patient/Observation.rs?category=vital-signs",
        Some("a"),
        None,
    );
    let (_, count) = get(&app, &granular, "Observation?_summary=count").await;
    assert_eq!(count["total"], 1);
    let (_, count) = get(&app, &granular, "Observation?_count=0&_total=accurate").await;
    assert_eq!(count["total"], 1);
    let (_, stats) = get(&app, &granular, "Observation/$stats?patient=Patient/a").await;
    assert!(!stats.to_string().contains("2345-7"), "{stats}");
    // A partner's code-level deny holds for $stats and totals too.
    seed(&app, "Observation", "bp", {
        let mut o = observation("a", 120.0);
        o["code"]["coding"][0]["code"] = json!("8480-6");
        o
    })
    .await;
    let mut c = crate::consent::consent("a", "acme", &["vital-signs"]);
    c["provision"]["provision"] = json!([{"type": "deny", "code": [{"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}]}]);
    assert_eq!(app.post("Consent", &c).await.status(), 201);
    let partner = token(
        &app,
        "acme-app",
        "system/*.rs",
        None,
        Some("Organization/acme"),
    );
    let (_, stats) = get(&app, &partner, "Observation/$stats?patient=Patient/a").await;
    assert!(stats.to_string().contains("8867-4"), "{stats}");
    assert!(!stats.to_string().contains("8480-6"), "{stats}");
    let (_, count) = get(&app, &partner, "Observation?_summary=count").await;
    assert_eq!(count["total"], 1);
    // Cursors: sealed (nothing readable inside), bound to the caller, and never built from a
    // hidden row.
    let me = token(&app, "patient-app", "patient/*.rs", Some("a"), None);
    let (_, page) = get(&app, &me, "Observation/_history?_count=1").await;
    let next = page["link"]
        .as_array()
        .expect("links")
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("next")["url"]
        .as_str()
        .expect("url")
        .to_owned();
    let cursor = next.split("_cursor=").nth(1).expect("cursor").to_owned();
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&cursor)
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&raw);
    assert!(
        !text.contains("Observation") && !text.contains("|1"),
        "{text}"
    );
    let (status, _) = get(
        &app,
        &granular,
        &format!("Observation/_history?_count=1&_cursor={cursor}"),
    )
    .await;
    assert_eq!(status, 400, "a cursor of another caller");
    let mut forged = cursor.clone().into_bytes();
    forged[10] = if forged[10] == b'A' { b'B' } else { b'A' };
    let (status, _) = get(
        &app,
        &me,
        &format!(
            "Observation/_history?_count=1&_cursor={}",
            String::from_utf8_lossy(&forged)
        ),
    )
    .await;
    assert_eq!(status, 400, "a forged cursor");
    let (_, hidden) = get(&app, &granular, "Observation?code=2345-7&_count=1").await;
    assert_eq!(ids(&hidden), Vec::<String>::new());
    assert!(hidden["link"]
        .as_array()
        .expect("links")
        .iter()
        .all(|l| l["relation"] == "self"));
}

#[tokio::test]
async fn what_the_caller_may_not_see_answers_as_missing() {
    let app = spawn_app().await;
    let a = two_patients(&app).await;
    use reqwest::Method as M;
    for (method, hidden, missing) in [
        (
            M::GET,
            "Observation/b-hr/_history",
            "Observation/nope/_history",
        ),
        (M::GET, "Observation/b-hr", "Observation/nope"),
        (
            M::GET,
            "Observation/b-hr/_history/1",
            "Observation/nope/_history/1",
        ),
        (M::GET, "Patient/b/$everything", "Patient/nope/$everything"),
        (M::DELETE, "Observation/b-hr", "Observation/nope"),
    ] {
        let (s1, o1) = call(&app, &a, method.clone(), hidden, None).await;
        let (s2, o2) = call(&app, &a, method.clone(), missing, None).await;
        assert_eq!(s1, s2, "{method} {hidden}");
        let norm = |o: &Value| {
            o.to_string()
                .replace("b-hr", "ID")
                .replace("nope", "ID")
                .replace("Patient/b", "Patient/ID")
                .replace("Patient/ID", "P")
        };
        assert_eq!(norm(&o1), norm(&o2), "{method} {hidden}");
    }
    let mut body = observation("a", 1.0);
    body["id"] = json!("b-hr");
    let (s1, _) = call(&app, &a, M::PUT, "Observation/b-hr", Some(body.clone())).await;
    body["id"] = json!("nope");
    let (s2, _) = call(&app, &a, M::PUT, "Observation/nope", Some(body)).await;
    assert_eq!((s1, s2), (404, 404));
    // B's resource was not deleted.
    assert_eq!(app.get("Observation/b-hr").await.status(), 200);
}

#[tokio::test]
async fn refused_attempts_and_resolved_references_name_the_patient() {
    let app = spawn_app().await;
    let a = two_patients(&app).await;
    assert_eq!(get(&app, &a, "Observation/b-hr").await.0, 404);
    let b_events = crate::audit::events(&app).await;
    let about_b: Vec<&Value> = b_events
        .iter()
        .filter(|e| e.to_string().contains("Observation/b-hr") && e["outcome"] != "0")
        .collect();
    assert!(
        about_b
            .iter()
            .any(|e| e.to_string().contains("\"Patient/b\"")),
        "{about_b:?}"
    );
    // A first-party transaction that resolves B's SSN names B.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/a"}, "focus": [{"reference": "Patient?identifier=urn:ssn|222"}]},
        "request": {"method": "POST", "url": "Observation"}}]});
    assert_eq!(app.post("", &tx).await.status(), 200);
    let events = crate::audit::events(&app).await;
    let last_tx = events
        .iter()
        .rev()
        .find(|e| e["subtype"].to_string().contains("transaction"))
        .expect("transaction event");
    assert!(last_tx.to_string().contains("Patient/b"), "{last_tx}");
    // A's compartment of AuditEvent holds A's events only.
    let admin = token(&app, "auditor", "system/AuditEvent.rs", None, None);
    let (status, found) = get(&app, &admin, "Patient/a/AuditEvent?_count=100").await;
    assert_eq!(status, 200);
    for e in found["entry"].as_array().into_iter().flatten() {
        assert!(e["resource"].to_string().contains("Patient/a"), "{e}");
    }
}

#[tokio::test]
async fn a_removed_clients_live_token_stops_working_within_seconds() {
    let app = spawn_app().await;
    let key = crate::helpers::es384_key("k1");
    crate::auth::register(&app, "leaving", &key, "system/*.rs", None).await;
    let t = token(&app, "leaving", "system/*.rs", None, None);
    assert_eq!(get(&app, &t, "Patient").await.0, 200);
    let admin = token(&app, "admin", "fhirgate/admin", None, None);
    let resp = reqwest::Client::new()
        .delete(format!(
            "{}/admin/clients/leaving",
            app.base.trim_end_matches("/fhir")
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204);
    assert_eq!(get(&app, &t, "Patient").await.0, 401);
    // The removal is audited as an administrator's call naming the client.
    let events = crate::audit::events(&app).await;
    assert!(
        events
            .iter()
            .any(|e| e.to_string().contains("client-remove") && e.to_string().contains("leaving")),
        "{events:?}"
    );
}
