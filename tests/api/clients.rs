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
