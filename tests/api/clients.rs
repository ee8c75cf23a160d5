//! Independent FHIR clients against the real server (issue "Standard FHIR behaviour that
//! partners' client libraries expect"): fhir-kit-client (JavaScript, `tests/clients`) and fhirpy
//! (Python). Each script prints what the client got; the test compares it with what the same
//! request answers over plain HTTP, so a client-visible difference fails here.

use serde_json::{json, Value};

use crate::audit::token;
use crate::helpers::{json, observation, spawn_app, TestApp};

/// Runs a client script and returns the JSON line it prints last.
pub(crate) async fn client_script(program: &str, script: &str, args: &[&str]) -> Value {
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new(program)
        .arg(&path)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{program} {script}: {e}"));
    assert!(
        out.status.success(),
        "{script} failed (tests/clients: npm ci; pip install fhirpy): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| l.starts_with(b"{"))
            .expect("a JSON line"),
    )
    .expect("report JSON")
}

/// A patient with four heart rates on different days and one body weight.
async fn patient_with_observations(app: &TestApp) -> String {
    let p = json(
        app.post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Client"}]}),
        )
        .await,
    )
    .await;
    let pid = p["id"].as_str().expect("id").to_owned();
    for (day, value) in [(1, 61.0), (2, 72.0), (3, 58.0), (4, 90.0)] {
        let mut o = observation(&pid, value);
        o["effectiveDateTime"] = json!(format!("2024-03-0{day}T08:00:00Z"));
        assert_eq!(app.post("Observation", &o).await.status(), 201);
    }
    let mut w = observation(&pid, 70.5);
    w["code"] = json!({"coding": [{"system": "http://loinc.org", "code": "29463-7"}]});
    w["valueQuantity"] =
        json!({"value": 70.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"});
    assert_eq!(app.post("Observation", &w).await.status(), 201);
    pid
}

fn stats_values(parameters: &Value) -> Vec<String> {
    let mut v: Vec<String> = parameters["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| {
            p["resource"]["component"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|c| c.to_string())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn fhir_kit_client_operations_by_post_answer_as_by_get() {
    let app = spawn_app().await;
    let pid = patient_with_observations(&app).await;
    let t = token(&app, "kit", "system/*.rs", None, None);
    let r = client_script("node", "kit.mjs", &[&app.base, &t, &pid]).await;
    let everything = r["everything_post"].as_array().expect("everything");
    assert_eq!(everything.len(), 6, "{r}");
    assert_eq!(r["everything_post"], r["everything_get"], "{r}");
    assert_eq!(r["lastn_post"].as_array().map(Vec::len), Some(2), "{r}");
    assert_eq!(r["lastn_post"], r["lastn_get"], "{r}");
    let stats = stats_values(&r["stats_post"]);
    assert!(!stats.is_empty(), "{r}");
    assert_eq!(stats, stats_values(&r["stats_get"]), "{r}");
    // client.batch(): the read answers with the Patient, the search with its searchset.
    assert_eq!(r["batch"][0]["status"], "200 OK", "{r}");
    assert_eq!(r["batch"][0]["resource"]["id"], pid.as_str(), "{r}");
    assert_eq!(r["batch"][1]["resource"]["type"], "searchset", "{r}");
    assert_eq!(
        r["batch"][1]["resource"]["entry"].as_array().map(Vec::len),
        Some(4),
        "{r}"
    );
}

#[tokio::test]
async fn operations_take_forms_and_refuse_other_bodies_by_name() {
    let app = spawn_app().await;
    let pid = patient_with_observations(&app).await;
    let post = |path: &str, ct: &str, body: String| {
        app.client
            .post(format!("{}/{path}", app.base))
            .header("content-type", ct.to_owned())
            .body(body)
            .send()
    };
    let form = post(
        "Observation/$lastn",
        "application/x-www-form-urlencoded",
        format!("patient={pid}&max=3"),
    )
    .await
    .expect("form");
    assert_eq!(form.status(), 200);
    let by_get = json(
        app.get(&format!("Observation/$lastn?patient={pid}&max=3"))
            .await,
    )
    .await;
    let ids = |b: &Value| -> Vec<Value> {
        b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["resource"]["id"].clone())
            .collect()
    };
    assert_eq!(ids(&json(form).await), ids(&by_get));
    // XML Parameters work too.
    let xml = format!(
        r#"<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="patient"/><valueString value="{pid}"/></parameter></Parameters>"#
    );
    let r = post("Observation/$lastn", "application/fhir+xml", xml)
        .await
        .expect("xml");
    assert_eq!(r.status(), 200);
    // Not Parameters, or a value with no search form: 400 naming it.
    let r = post(
        "Observation/$lastn",
        "application/fhir+json",
        json!({"resourceType": "Patient"}).to_string(),
    )
    .await
    .expect("patient");
    assert_eq!(r.status(), 400);
    assert!(json(r).await.to_string().contains("Parameters"));
    let r = post(
        &format!("Patient/{pid}/$everything"),
        "application/fhir+json",
        json!({"resourceType": "Parameters", "parameter": [{"name": "_count", "valueQuantity": {"value": 1}}]}).to_string(),
    )
    .await
    .expect("quantity");
    assert_eq!(r.status(), 400);
    assert!(json(r).await.to_string().contains("valueQuantity"));
    // Unknown operations stay unknown; POST to an instance is still not an interaction.
    let r = post(
        "Observation/$nothing",
        "application/fhir+json",
        String::new(),
    )
    .await
    .expect("unknown");
    assert_eq!(r.status(), 404);
    let r = post(
        &format!("Patient/{pid}"),
        "application/fhir+json",
        "{}".into(),
    )
    .await
    .expect("instance");
    assert_eq!(r.status(), 405);
}

#[tokio::test]
async fn fhirpy_count_reads_the_total_of_count_zero() {
    let app = spawn_app().await;
    let pid = patient_with_observations(&app).await;
    let t = token(&app, "fhirpy", "system/*.rs", None, None);
    let r = client_script("python3", "fhirpy_checks.py", &[&app.base, &t, &pid]).await;
    assert_eq!(r["count_patient"], 5, "{r}");
    assert_eq!(r["count_heart_rate"], 4, "{r}");
    assert_eq!(r["count_none"], 0, "{r}");
    assert_eq!(r["fetched"], 5, "{r}");
    // Over plain HTTP: a total and no entries.
    let b = json(
        app.get(&format!("Observation?patient={pid}&_count=0"))
            .await,
    )
    .await;
    assert_eq!(b["total"], 5, "{b}");
    assert!(b.get("entry").is_none(), "{b}");
}

async fn new_patient(app: &TestApp, family: &str) -> String {
    let p = json(
        app.post(
            "Patient",
            &json!({"resourceType": "Patient", "active": true, "name": [{"family": family}],
                    "identifier": [{"system": "urn:test", "value": family}]}),
        )
        .await,
    )
    .await;
    p["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn fhir_kit_client_and_fhirpy_patch() {
    let app = spawn_app().await;
    let pid = new_patient(&app, "Kit").await;
    let t = token(&app, "patcher", "system/*.cruds", None, None);
    let r = client_script("node", "kit_patch.mjs", &[&app.base, &t, &pid]).await;
    assert_eq!(r["patched"]["active"], false, "{r}");
    assert_eq!(r["patched"]["gender"], "female", "{r}");
    assert_eq!(r["read"]["meta"]["versionId"], "2", "{r}");
    assert_eq!(r["read"]["gender"], "female", "{r}");
    let r = client_script("python3", "fhirpy_patch.py", &[&app.base, &t, &pid]).await;
    assert_eq!(r["after_client"]["birthDate"], "1980-02-03", "{r}");
    assert_eq!(r["read"]["gender"], "other", "{r}");
    assert_eq!(r["read"]["birthDate"], "1980-02-03", "{r}");
    assert_eq!(r["read"]["name"][0]["family"], "Kit", "{r}");
    assert_eq!(r["read"]["meta"]["versionId"], "4", "{r}");
}

/// `PATCH` with `content_type` and `body` on `path`, as `bearer`.
async fn patch_as(
    app: &TestApp,
    bearer: &str,
    path: &str,
    content_type: &str,
    body: String,
    if_match: Option<&str>,
) -> reqwest::Response {
    let mut req = reqwest::Client::new()
        .patch(format!("{}/{path}", app.base))
        .bearer_auth(bearer)
        .header("content-type", content_type.to_owned())
        .body(body);
    if let Some(m) = if_match {
        req = req.header("if-match", m.to_owned());
    }
    req.send().await.expect("patch")
}

#[tokio::test]
async fn patch_follows_the_rules_of_update() {
    let app = spawn_app().await;
    let pid = new_patient(&app, "Rules").await;
    let admin = token(&app, "patcher", "system/*.cruds", None, None);
    let jp = |v: Value| v.to_string();
    // FHIRPath Patch, in JSON and in XML.
    let fp = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
        {"name": "name", "valueString": "birthDate"}, {"name": "value", "valueDate": "1970-01-01"}]}]});
    let r = patch_as(
        &app,
        &admin,
        &format!("Patient/{pid}"),
        "application/fhir+json",
        fp.to_string(),
        Some("W/\"1\""),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["etag"], "W/\"2\"");
    let xml = r#"<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="operation"/><part><name value="type"/><valueCode value="replace"/></part><part><name value="path"/><valueString value="Patient.active"/></part><part><name value="value"/><valueBoolean value="false"/></part></parameter></Parameters>"#;
    let r = patch_as(
        &app,
        &admin,
        &format!("Patient/{pid}"),
        "application/fhir+xml",
        xml.into(),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    let now = json(app.get(&format!("Patient/{pid}")).await).await;
    assert_eq!(now["birthDate"], "1970-01-01");
    assert_eq!(now["active"], false);
    // If-Match on an old version: 412, nothing written.
    let r = patch_as(
        &app,
        &admin,
        &format!("Patient/{pid}"),
        "application/json-patch+json",
        jp(json!([{"op": "replace", "path": "/active", "value": true}])),
        Some("W/\"1\""),
    )
    .await;
    assert_eq!(r.status(), 412);
    // A result that is not a valid Patient: 422 naming the element; a patch that cannot apply: 422.
    let r = patch_as(
        &app,
        &admin,
        &format!("Patient/{pid}"),
        "application/json-patch+json",
        jp(json!([{"op": "add", "path": "/gender", "value": "cat"}])),
        None,
    )
    .await;
    assert_eq!(r.status(), 422);
    assert!(json(r).await.to_string().contains("gender"));
    let r = patch_as(
        &app,
        &admin,
        &format!("Patient/{pid}"),
        "application/json-patch+json",
        jp(json!([{"op": "test", "path": "/active", "value": true}])),
        None,
    )
    .await;
    assert_eq!(r.status(), 422);
    // Unknown content type 415; unknown or deleted resources 404 and 410.
    let r = patch_as(
        &app,
        &admin,
        &format!("Patient/{pid}"),
        "text/plain",
        "x".into(),
        None,
    )
    .await;
    assert_eq!(r.status(), 415);
    let r = patch_as(
        &app,
        &admin,
        "Patient/nobody",
        "application/merge-patch+json",
        "{}".into(),
        None,
    )
    .await;
    assert_eq!(r.status(), 404);
    let gone = new_patient(&app, "Gone").await;
    assert_eq!(app.delete(&format!("Patient/{gone}")).await.status(), 204);
    let r = patch_as(
        &app,
        &admin,
        &format!("Patient/{gone}"),
        "application/merge-patch+json",
        "{}".into(),
        None,
    )
    .await;
    assert_eq!(r.status(), 410);
    assert_eq!(
        json(app.get(&format!("Patient/{pid}")).await).await["meta"]["versionId"],
        "3"
    );

    // Scopes: read-only tokens are 403; another patient's token sees nothing (404); a partner is
    // refused; the patient's own token may patch its record.
    let merge = jp(json!({"gender": "female"}));
    let reader = token(&app, "reader", "system/*.rs", None, None);
    let r = patch_as(
        &app,
        &reader,
        &format!("Patient/{pid}"),
        "application/merge-patch+json",
        merge.clone(),
        None,
    )
    .await;
    assert_eq!(r.status(), 403);
    let other = token(&app, "app", "patient/*.cruds", Some("someone-else"), None);
    let r = patch_as(
        &app,
        &other,
        &format!("Patient/{pid}"),
        "application/merge-patch+json",
        merge.clone(),
        None,
    )
    .await;
    assert_eq!(r.status(), 404);
    let partner = token(
        &app,
        "acme",
        "system/*.cruds",
        None,
        Some("Organization/acme"),
    );
    let r = patch_as(
        &app,
        &partner,
        &format!("Patient/{pid}"),
        "application/merge-patch+json",
        merge.clone(),
        None,
    )
    .await;
    assert_eq!(r.status(), 403);
    let own = token(&app, "app", "patient/*.cruds", Some(&pid), None);
    let r = patch_as(
        &app,
        &own,
        &format!("Patient/{pid}"),
        "application/merge-patch+json",
        merge.clone(),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    // Conditional: one match patches it, none is 404, several are 412.
    let r = patch_as(
        &app,
        &admin,
        "Patient?identifier=urn:test|Rules",
        "application/merge-patch+json",
        jp(json!({"gender": "male"})),
        None,
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(json(r).await["gender"], "male");
    let r = patch_as(
        &app,
        &admin,
        "Patient?identifier=urn:test|Nobody",
        "application/merge-patch+json",
        "{}".into(),
        None,
    )
    .await;
    assert_eq!(r.status(), 404);
    new_patient(&app, "Twin").await;
    new_patient(&app, "Twin").await;
    let r = patch_as(
        &app,
        &admin,
        "Patient?identifier=urn:test|Twin",
        "application/merge-patch+json",
        "{}".into(),
        None,
    )
    .await;
    assert_eq!(r.status(), 412);
    // Every successful patch is in the trail as an update.
    let events: String = sqlx::query_scalar("select string_agg(events, '\n') from audit_log")
        .fetch_one(&app.pool)
        .await
        .expect("events");
    assert!(
        events.matches(&format!("Patient/{pid}")).count() >= 5,
        "audited"
    );
}
