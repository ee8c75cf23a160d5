//! The ingest path: provider payloads become de-duplicated, versioned FHIR, through
//! `POST /ingest/{source}` and `fhirgate import`.

use serde_json::Value;

use crate::helpers::{assert_outcome, json, mint, spawn_app};

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("mappers/tests/fixtures")
            .join(path),
    )
    .expect("fixture")
}

async fn ingest(
    app: &crate::helpers::TestApp,
    source: &str,
    patient: &str,
    body: Vec<u8>,
) -> reqwest::Response {
    app.client
        .post(
            app.base
                .replace("/fhir", &format!("/ingest/{source}?patient={patient}")),
        )
        .body(body)
        .send()
        .await
        .expect("ingest")
}

#[tokio::test]
async fn a_reimport_creates_nothing_and_a_changed_value_is_a_new_amended_version() {
    let app = spawn_app().await;
    let payload = fixture("withings/shimmer_withings-body-measures.json");
    let first = ingest(&app, "withings", "w1", payload.clone()).await;
    assert_eq!(first.status(), 200);
    let first = json(first).await;
    let created = first["created"].as_u64().expect("created");
    assert!(created > 0, "{first}");
    assert_eq!(first["updated"], 0);
    let versions = app.count("resource_version").await;
    // The same data again: nothing new except no Provenance either.
    let again = json(ingest(&app, "withings", "w1", payload.clone()).await).await;
    assert_eq!(again["created"], 0);
    assert_eq!(again["updated"], 0);
    assert_eq!(again["unchanged"].as_u64(), Some(created));
    assert_eq!(app.count("resource_version").await, versions);
    // One Provenance for the import batch.
    assert_eq!(
        app.count("resource where resource_type = 'Provenance'")
            .await,
        1
    );
    // Change one measured value: exactly that record gets a new version with status amended.
    let mut doc: Value = serde_json::from_slice(&payload).expect("json");
    let old = doc["body"]["measuregrps"][0]["measures"][0]["value"]
        .as_i64()
        .expect("value");
    doc["body"]["measuregrps"][0]["measures"][0]["value"] = Value::from(old + 7);
    let changed = json(
        ingest(
            &app,
            "withings",
            "w1",
            serde_json::to_vec(&doc).expect("bytes"),
        )
        .await,
    )
    .await;
    assert_eq!(changed["created"], 0, "{changed}");
    assert_eq!(changed["updated"], 1, "{changed}");
    let (id,): (String,) = sqlx::query_as(
        "select id from resource where resource_type = 'Observation' and version_id = 2",
    )
    .fetch_one(&app.pool)
    .await
    .expect("the amended one");
    let obs = json(app.get(&format!("Observation/{id}")).await).await;
    assert_eq!(obs["status"], "amended");
    assert_eq!(obs["subject"]["reference"], "Patient/w1");
}

#[tokio::test]
async fn bad_ingest_requests_write_nothing() {
    let app = spawn_app().await;
    let resp = ingest(
        &app,
        "withings",
        "w2",
        b"{\"body\": {\"measuregrps\": [".to_vec(),
    )
    .await;
    let oo = assert_outcome(resp, 400, "invalid").await;
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .expect("d")
            .contains("withings"),
        "{oo}"
    );
    assert_outcome(
        ingest(&app, "myspace", "w2", b"{}".to_vec()).await,
        404,
        "not-found",
    )
    .await;
    let resp = app
        .client
        .post(app.base.replace("/fhir", "/ingest/oura"))
        .body(fixture("oura/dexta_oura_sleep.json"))
        .send()
        .await
        .expect("post");
    assert_outcome(resp, 400, "invalid").await;
    let read_only = mint(&app.state, "system/*.rs", None);
    let resp = app
        .anonymous
        .post(app.base.replace("/fhir", "/ingest/oura?patient=w2"))
        .bearer_auth(read_only)
        .body(fixture("oura/dexta_oura_sleep.json"))
        .send()
        .await
        .expect("post");
    assert_outcome(resp, 403, "forbidden").await;
    let resp = app
        .anonymous
        .post(app.base.replace("/fhir", "/ingest/oura?patient=w2"))
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_outcome(resp, 401, "login").await;
    assert_eq!(app.count("resource_version").await, 0);
    // A payload that maps: Oura sleep works end to end.
    let ok = json(ingest(&app, "oura", "w2", fixture("oura/dexta_oura_sleep.json")).await).await;
    assert!(ok["created"].as_u64().expect("created") > 0, "{ok}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_import_command_uses_the_same_path() {
    let app = spawn_app().await;
    let url = {
        let o = crate::helpers::admin_options();
        let host = o.get_host().to_owned();
        if host.starts_with('/') {
            format!(
                "postgres://postgres@localhost/{}?host={host}&port={}",
                app.db_name,
                o.get_port()
            )
        } else {
            format!(
                "postgres://postgres@{host}:{}/{}",
                o.get_port(),
                app.db_name
            )
        }
    };
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("mappers/tests/fixtures/withings/shimmer_withings-body-measures.json");
    let run_as = |source: &str, f: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fhirgate"))
            .args(["import", "--source", source, "--patient", "cli1"])
            .arg(f)
            .env("DATABASE_URL", &url)
            .env_remove("FHIRGATE_MASTER_KEY_FILE")
            .env("FHIRGATE_MASTER_KEY", &app.master_key)
            .output()
            .expect("import")
    };
    let run = |f: &std::path::Path| run_as("withings", f);
    let out = run(&file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("summary json");
    assert!(summary["created"].as_u64().expect("created") > 0);
    // Imported data reads through the API (same keys).
    let (id,): (String,) =
        sqlx::query_as("select id from resource where resource_type = 'Observation' limit 1")
            .fetch_one(&app.pool)
            .await
            .expect("one");
    assert_eq!(app.get(&format!("Observation/{id}")).await.status(), 200);
    // A file that is not a Withings payload: non-zero exit, nothing more written.
    let before = app.count("resource_version").await;
    let bad = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(bad.path(), "<html>not json</html>").expect("write");
    let out = run(bad.path());
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot be read as withings"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(app.count("resource_version").await, before);

    // An Apple export streams with a progress bar that ends full.
    let export = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("mappers/tests/fixtures/apple_health/tdda_export6s3sample.xml");
    let out = run_as("apple-health", &export);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!("[{}] 100%", "#".repeat(30))),
        "{stderr}"
    );
    let summary: Value = serde_json::from_slice(&out.stdout).expect("summary json");
    assert!(summary["created"].as_u64().expect("created") > 0);
}

#[tokio::test]
async fn an_apple_export_is_imported_in_the_background() {
    let app = spawn_app().await;
    let export = fixture("apple_health/tdda_export6s3sample.xml");
    let mut created = 0;
    for round in 0..2 {
        let resp = ingest(&app, "apple-health", "a1", export.clone()).await;
        assert_eq!(resp.status(), 202);
        let status_url = resp.headers()["content-location"]
            .to_str()
            .expect("url")
            .to_owned();
        let started = std::time::Instant::now();
        let done = loop {
            let r = app.client.get(&status_url).send().await.expect("status");
            if r.status() == 200 {
                break json(r).await;
            }
            assert_eq!(r.status(), 202);
            assert!(r.headers().contains_key("x-progress"));
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "import did not finish"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(done["status"], "done", "{done}");
        assert_eq!(done["percent"], 100, "{done}");
        assert_eq!(done["bytesTotal"].as_u64(), Some(export.len() as u64));
        if round == 0 {
            created = done["summary"]["created"].as_u64().expect("created");
            assert!(created > 0, "{done}");
        } else {
            // The same export again changes nothing.
            assert_eq!(done["summary"]["created"], 0, "{done}");
            assert_eq!(
                done["summary"]["unchanged"].as_u64(),
                Some(created),
                "{done}"
            );
        }
    }
    let resp = app
        .client
        .get(app.base.replace("/fhir", "/ingest/jobs/not-a-job"))
        .send()
        .await
        .expect("get");
    assert_outcome(resp, 404, "not-found").await;
}

/// A token a patient's own app holds (a `patient` claim and patient/ scopes).
fn patient_token(app: &crate::helpers::TestApp, patient: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = fhirgate::auth::jwt::AccessClaims {
        iss: app.state.issuer.clone(),
        aud: app.state.fhir_base.clone(),
        sub: format!("user-of-{patient}"),
        exp: now + 3600,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        scope: "patient/Observation.cru patient/Device.cru patient/Provenance.c".into(),
        client_id: "phone-app".into(),
        patient: Some(patient.into()),
        organization: None,
    };
    app.state.signing.sign(&claims).expect("sign")
}

#[tokio::test]
async fn a_patient_uploads_to_their_own_record_only() {
    let app = spawn_app().await;
    let token = patient_token(&app, "pt1");
    let url = |q: &str| app.base.replace("/fhir", &format!("/ingest/withings{q}"));
    let payload = fixture("withings/shimmer_withings-body-measures.json");
    let upload = |q: &str| {
        reqwest::Client::new()
            .post(url(q))
            .bearer_auth(&token)
            .body(payload.clone())
            .send()
    };

    // No patient parameter: the token's patient.
    let resp = upload("").await.expect("post");
    assert_eq!(resp.status(), 200);
    let summary = json(resp).await;
    let created = summary["created"].as_u64().expect("created");
    assert!(created > 0, "{summary}");
    // language=PostgreSQL
    let (in_own, elsewhere): (i64, i64) = sqlx::query_as(
        "select count(*) filter (where compartment = 'pt1'), count(*) filter (where compartment <> 'pt1') from resource where resource_type = 'Observation'",
    )
    .fetch_one(&app.state.db)
    .await
    .expect("count");
    assert!(in_own > 0 && elsewhere == 0, "{in_own} {elsewhere}");

    // Naming another patient is refused and writes nothing.
    let before = app.count("resource_version").await;
    let resp = upload("?patient=pt2").await.expect("post");
    assert_outcome(resp, 403, "forbidden").await;
    assert_eq!(app.count("resource_version").await, before);

    // Another patient's background job is invisible to this patient.
    let export = fixture("apple_health/tdda_export6s3sample.xml");
    let resp = ingest(&app, "apple-health", "pt2", export).await;
    assert_eq!(resp.status(), 202);
    let status_url = resp.headers()["content-location"]
        .to_str()
        .expect("url")
        .to_owned();
    let resp = reqwest::Client::new()
        .get(&status_url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("get");
    assert_outcome(resp, 404, "not-found").await;
}
