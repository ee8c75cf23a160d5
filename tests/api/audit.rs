//! The audit trail (issue 7): one BALP-shaped AuditEvent per interaction, denials and failures
//! included; no audit, no access; the hash chain and `fhirgate audit verify`; and the read-only
//! AuditEvent API for auditors and patients.

use serde_json::{json, Value};

use crate::helpers::{assert_outcome, json, observation, spawn_app, TestApp};

/// A token for `client` with `scope`, for a patient's own app (`patient`) or a partner (`org`).
pub(crate) fn token(
    app: &TestApp,
    client: &str,
    scope: &str,
    patient: Option<&str>,
    org: Option<&str>,
) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = fhirgate::auth::jwt::AccessClaims {
        iss: app.state.issuer.clone(),
        aud: app.state.fhir_base.clone(),
        sub: client.into(),
        exp: now + 3600,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        scope: scope.into(),
        client_id: client.into(),
        patient: patient.map(str::to_owned),
        organization: org.map(str::to_owned),
    };
    app.state.signing.sign(&claims).expect("sign")
}

/// Every stored event, oldest first (after linking what waits in the inbox).
pub(crate) async fn events(app: &TestApp) -> Vec<Value> {
    app.state.auditor.flush().await.expect("flush");
    let rows: Vec<String> = sqlx::query_scalar("select events from audit_log order by seq")
        .fetch_all(&app.pool)
        .await
        .expect("events");
    rows.iter()
        .flat_map(|t| t.split('\n'))
        .map(|t| serde_json::from_str(t).expect("event JSON"))
        .collect()
}

/// The events after the first `skip`.
async fn new_events(app: &TestApp, skip: usize) -> Vec<Value> {
    events(app).await.into_iter().skip(skip).collect()
}

fn subtype(e: &Value) -> &str {
    e["subtype"][0]["code"].as_str().unwrap_or("")
}

fn agents(e: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for a in e["agent"].as_array().expect("agents") {
        if let Some(r) = a["who"]["reference"].as_str() {
            out.push(r.to_owned());
        }
        if let Some(c) = a["who"]["identifier"]["value"].as_str() {
            out.push(format!("client:{c}"));
        }
    }
    out
}

fn entities(e: &Value, role: &str) -> Vec<String> {
    e["entity"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|x| x["role"]["code"] == role)
                .filter_map(|x| x["what"]["reference"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn patients(e: &Value) -> Vec<String> {
    entities(e, "1")
}

fn query(e: &Value) -> String {
    use base64::Engine;
    let q = e["entity"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["role"]["code"] == "24"))
        .and_then(|x| x["query"].as_str())
        .expect("query entity");
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(q)
            .expect("base64"),
    )
    .expect("utf-8")
}

fn request_id(e: &Value) -> Option<&str> {
    e["entity"]
        .as_array()?
        .iter()
        .find(|x| x["type"]["code"] == "XrequestId")?["what"]["identifier"]["value"]
        .as_str()
}

async fn create(app: &TestApp, body: &Value) -> String {
    let resp = app
        .post(body["resourceType"].as_str().expect("type"), body)
        .await;
    assert_eq!(resp.status(), 201);
    json(resp).await["id"].as_str().expect("id").to_owned()
}

fn patient() -> Value {
    json!({"resourceType": "Patient", "name": [{"family": "Audit"}]})
}

#[tokio::test]
async fn every_rest_interaction_is_one_event_with_agent_entity_outcome_and_purpose() {
    let app = spawn_app().await;
    let pid = create(&app, &patient()).await;
    let mark = events(&app).await.len();
    let oid = create(&app, &observation(&pid, 61.0)).await;

    // create: action C, the new version and its patient; the first-party client is the requestor.
    let e = new_events(&app, mark).await;
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(e[0]["action"], "C");
    assert_eq!(subtype(&e[0]), "create");
    assert_eq!(e[0]["outcome"], "0");
    assert_eq!(
        entities(&e[0], "4"),
        [format!("Observation/{oid}/_history/1")]
    );
    assert_eq!(patients(&e[0]), [format!("Patient/{pid}")]);
    assert_eq!(agents(&e[0]), ["client:test-backend"]);
    assert_eq!(e[0]["agent"][0]["requestor"], true);

    // read, with the purpose of use, request id and user agent the caller sent.
    let mark = events(&app).await.len();
    let resp = app
        .client
        .get(format!("{}/Observation/{oid}", app.base))
        .header("x-purpose-of-use", "TREAT")
        .header("x-request-id", "req-read-1")
        .header("user-agent", "audit-test/1.0")
        .send()
        .await
        .expect("read");
    assert_eq!(resp.status(), 200);
    let e = new_events(&app, mark).await;
    assert_eq!(e.len(), 1, "{e:#?}");
    let read = &e[0];
    assert_eq!(
        (read["action"].as_str(), subtype(read)),
        (Some("R"), "read")
    );
    assert_eq!(read["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
    assert_eq!(request_id(read), Some("req-read-1"));
    assert_eq!(
        entities(read, "4"),
        [format!("Observation/{oid}/_history/1")]
    );
    assert_eq!(patients(read), [format!("Patient/{pid}")]);
    assert_eq!(read["agent"][0]["network"]["address"], "127.0.0.1");
    assert!(read.to_string().contains("audit-test/1.0"));
    assert!(
        !read.to_string().contains("Audit\""),
        "no PHI (the patient's name) in an event"
    );

    // update, vread, history, search, delete: one event each, with the right codes.
    let mark = events(&app).await.len();
    assert_eq!(
        app.put(&format!("Observation/{oid}"), &{
            let mut o = observation(&pid, 62.0);
            o["id"] = json!(oid);
            o
        })
        .await
        .status(),
        200
    );
    assert_eq!(
        app.get(&format!("Observation/{oid}/_history/1"))
            .await
            .status(),
        200
    );
    assert_eq!(
        app.get(&format!("Observation/{oid}/_history"))
            .await
            .status(),
        200
    );
    assert_eq!(
        app.get("Patient?identifier=http://x|secret-mrn&_count=5")
            .await
            .status(),
        200
    );
    assert_eq!(app.get("Observation?_count=5").await.status(), 200);
    assert_eq!(
        app.delete(&format!("Observation/{oid}")).await.status(),
        204
    );
    let e = new_events(&app, mark).await;
    let codes: Vec<(&str, &str)> = e
        .iter()
        .map(|x| (x["action"].as_str().unwrap_or(""), subtype(x)))
        .collect();
    assert_eq!(
        codes,
        [
            ("U", "update"),
            ("R", "vread"),
            ("R", "history-instance"),
            ("R", "search-type"),
            ("R", "search-type"),
            ("D", "delete"),
        ]
    );
    assert_eq!(
        entities(&e[0], "4"),
        [format!("Observation/{oid}/_history/2")]
    );
    assert_eq!(
        entities(&e[5], "4"),
        [format!("Observation/{oid}/_history/3")]
    );
    // A search records its query, with identifying values masked, and the patients returned.
    assert_eq!(query(&e[3]), "Patient?identifier=*&_count=5");
    assert!(!e[3].to_string().contains("secret-mrn"));
    assert_eq!(query(&e[4]), "Observation?_count=5");
    assert_eq!(patients(&e[4]), [format!("Patient/{pid}")]);
}

#[tokio::test]
async fn every_entry_of_a_transaction_is_an_event_with_the_request_id() {
    let app = spawn_app().await;
    let pid = create(&app, &patient()).await;
    let mark = events(&app).await.len();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(&pid, 70.0), "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation(&pid, 71.0), "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": format!("Patient/{pid}")}},
    ]});
    let resp = app
        .client
        .post(&app.base)
        .header("content-type", "application/fhir+json")
        .header("x-request-id", "bundle-7")
        .body(bundle.to_string())
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    let e = new_events(&app, mark).await;
    let codes: Vec<&str> = e.iter().map(subtype).collect();
    assert_eq!(codes, ["create", "create", "read", "transaction"], "{e:#?}");
    assert!(e.iter().all(|x| request_id(x) == Some("bundle-7")));
    assert_eq!(entities(&e[2], "4"), [format!("Patient/{pid}/_history/1")]);
    assert!(e
        .iter()
        .take(3)
        .all(|x| patients(x) == [format!("Patient/{pid}")]));

    // A batch: each entry on its own, refused ones included.
    let mark = events(&app).await.len();
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": observation(&pid, 72.0), "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": format!("Patient/{pid}")}},
        {"request": {"method": "GET", "url": "Patient/missing"}},
    ]});
    let resp = app.post("", &batch).await;
    assert_eq!(resp.status(), 200);
    let e = new_events(&app, mark).await;
    let codes: Vec<(&str, &str)> = e
        .iter()
        .map(|x| (subtype(x), x["outcome"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        codes,
        [
            ("create", "0"),
            ("read", "0"),
            ("read", "4"),
            ("batch", "0")
        ],
        "{e:#?}"
    );
    assert_eq!(entities(&e[2], "4"), ["Patient/missing"]);
}

#[tokio::test]
async fn denials_and_failures_are_audited_with_a_description() {
    let app = spawn_app().await;
    let pid = create(&app, &patient()).await;
    let oid = create(&app, &observation(&pid, 61.0)).await;
    let url = format!("{}/Observation/{oid}", app.base);
    let mark = events(&app).await.len();

    // No token, a token without the scope, a partner without consent, an unknown resource.
    let no_token = app.anonymous.get(&url).send().await.expect("get");
    assert_eq!(no_token.status(), 401);
    let narrow = token(&app, "narrow-app", "system/Patient.rs", None, None);
    let resp = app
        .anonymous
        .get(&url)
        .bearer_auth(&narrow)
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 403);
    let partner = token(
        &app,
        "partner-app",
        "system/*.rs",
        None,
        Some("Organization/acme"),
    );
    let resp = app
        .anonymous
        .get(&url)
        .bearer_auth(&partner)
        .header("x-purpose-of-use", "TREAT")
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 404);
    assert_eq!(app.get("Observation/does-not-exist").await.status(), 404);
    let bad = app.get("Observation?_count=many").await;
    assert_eq!(bad.status(), 400);

    let e = new_events(&app, mark).await;
    assert_eq!(e.len(), 5, "{e:#?}");
    assert!(e.iter().all(|x| x["outcome"] == "4"), "{e:#?}");
    assert_eq!(
        e[0]["outcomeDesc"],
        "an access token is required (Authorization: Bearer)"
    );
    assert_eq!(e[0]["agent"][0]["who"]["display"], "unauthenticated caller");
    assert_eq!(entities(&e[0], "4"), [format!("Observation/{oid}")]);
    assert_eq!(agents(&e[1]), ["client:narrow-app"]);
    assert!(e[1]["outcomeDesc"]
        .as_str()
        .unwrap_or("")
        .contains("scopes"));
    assert_eq!(agents(&e[2]), ["client:partner-app", "Organization/acme"]);
    assert_eq!(e[2]["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
    // The partner was answered exactly as for a missing id; the trail still names whose
    // resource it aimed at.
    assert_eq!(
        e[2]["outcomeDesc"],
        format!("Observation/{oid} is not known")
    );
    assert_eq!(patients(&e[2]), [format!("Patient/{pid}")]);
    assert_eq!(entities(&e[3], "4"), ["Observation/does-not-exist"]);
    assert_eq!(e[4]["outcomeDesc"], "invalid input at _count");
}

#[tokio::test]
async fn an_upload_is_one_ingest_event_naming_its_provenance() {
    let app = spawn_app().await;
    let mark = events(&app).await.len();
    let payload = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/mappers/tests/fixtures/withings/shimmer_withings-body-measures.json"
    ))
    .expect("fixture");
    let resp = app
        .client
        .post(
            app.base
                .replace("/fhir", "/ingest/withings?patient=p-ingest"),
        )
        .body(payload)
        .send()
        .await
        .expect("ingest");
    assert_eq!(resp.status(), 200);
    let e = new_events(&app, mark).await;
    assert_eq!(e.len(), 1, "{e:#?}");
    assert_eq!(subtype(&e[0]), "ingest");
    assert_eq!(e[0]["action"], "C");
    assert_eq!(patients(&e[0]), ["Patient/p-ingest"]);
    let provenance = entities(&e[0], "4");
    assert_eq!(provenance.len(), 1);
    assert!(provenance[0].starts_with("Provenance/"));
}

/// Makes every insert into `table` fail, as a full disk or a broken audit table would.
async fn break_table(app: &TestApp, table: &str) {
    for sql in [
        "create or replace function test_refuse() returns trigger language plpgsql as $$ begin raise exception 'audit storage is broken'; end; $$".to_owned(),
        format!("create trigger test_refuse before insert on {table} for each row execute function test_refuse()"),
    ] {
        sqlx::query(&sql).execute(&app.pool).await.expect("break");
    }
}

#[tokio::test]
async fn a_failed_audit_write_fails_the_request_and_changes_nothing() {
    let app = spawn_app().await;
    let pid = create(&app, &patient()).await;
    let versions = app.count("resource_version").await;

    // A write whose event cannot be stored is rolled back with it.
    break_table(&app, "audit_inbox").await;
    let resp = app.post("Observation", &observation(&pid, 99.0)).await;
    assert_outcome(resp, 500, "exception").await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation(&pid, 70.0), "request": {"method": "POST", "url": "Observation"}}]});
    assert_eq!(app.post("", &bundle).await.status(), 500);
    assert_eq!(app.count("resource_version").await, versions);
    // The failures themselves are in the trail, as server errors.
    let failed: Vec<Value> = events(&app)
        .await
        .into_iter()
        .filter(|e| e["outcome"] == "8")
        .collect();
    assert_eq!(failed.len(), 2, "{failed:#?}");
    assert_eq!(subtype(&failed[0]), "create");
    assert_eq!(failed[0]["outcomeDesc"], "internal server error");
    assert_eq!(subtype(&failed[1]), "transaction");

    // A read whose event cannot be stored is not answered.
    break_table(&app, "audit_log").await;
    let resp = app.get(&format!("Patient/{pid}")).await;
    let body = assert_outcome(resp, 503, "transient").await;
    assert!(
        !body.to_string().contains("Audit\""),
        "no data in the refusal"
    );
    assert_eq!(app.get("Patient?_count=1").await.status(), 503);
}

#[tokio::test]
async fn the_chain_verifies_and_a_tampered_row_is_found() {
    let app = spawn_app().await;
    let pid = create(&app, &patient()).await;
    for v in [60.0, 61.0, 62.0] {
        create(&app, &observation(&pid, v)).await;
    }
    app.get(&format!("Patient/{pid}")).await;
    let n = events(&app).await.len() as u64;
    assert!(n >= 5);
    assert_eq!(
        fhirgate::audit::verify(&app.pool).await.expect("verify"),
        fhirgate::audit::VerifyReport::Ok { count: n }
    );
    let verify_cli = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_fhirgate"))
            .args(["audit", "verify"])
            .env("DATABASE_URL", database_url(&app))
            .env("FHIRGATE_MASTER_KEY", &app.master_key)
            .output()
            .expect("run fhirgate audit verify")
    };
    let out = verify_cli();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("OK: {n} events, every link verified")
    );

    // The table refuses changes, even from its owner.
    for sql in [
        "update audit_log set count = 1 where seq = 1",
        "delete from audit_log where seq = 1",
        "truncate audit_log",
    ] {
        let err = sqlx::query(sql).execute(&app.pool).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{err}");
    }

    // A superuser who bypasses the triggers changes event 3: verify names it.
    let mut conn = app.pool.acquire().await.expect("conn");
    sqlx::query("set session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .expect("replica");
    let row: i64 = sqlx::query_scalar(
        "select seq from audit_log where first_id <= 3 order by seq desc limit 1",
    )
    .fetch_one(&mut *conn)
    .await
    .expect("row of event 3");
    sqlx::query("update audit_log set events = replace(events, '{\"resourceType\":\"AuditEvent\",\"id\":\"3\",', '{\"resourceType\":\"AuditEvent\",\"id\":\"3\",\"language\":\"en\",') where seq = $1")
        .bind(row)
        .execute(&mut *conn)
        .await
        .expect("tamper");
    sqlx::query("set session_replication_role = origin")
        .execute(&mut *conn)
        .await
        .expect("origin");
    drop(conn);
    match fhirgate::audit::verify(&app.pool).await.expect("verify") {
        fhirgate::audit::VerifyReport::Broken {
            seq,
            expected,
            found,
        } => {
            assert_eq!(seq, row);
            assert_ne!(expected, found);
            assert!(expected.starts_with("hash "), "{expected}");
        }
        ok => panic!("tampering not found: {ok:?}"),
    }
    let out = verify_cli();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.starts_with(&format!("BROKEN at row {row}: expected hash ")),
        "{report}"
    );
}

fn database_url(app: &TestApp) -> String {
    format!(
        "postgres://postgres@{}:{}/{}",
        app.options.get_host(),
        app.options.get_port(),
        app.db_name
    )
}

#[tokio::test]
async fn nobody_writes_or_deletes_audit_events_through_the_api() {
    let app = spawn_app().await;
    let cs = json(app.get("metadata").await).await;
    let audit = cs["rest"][0]["resource"]
        .as_array()
        .expect("resources")
        .iter()
        .find(|r| r["type"] == "AuditEvent")
        .expect("AuditEvent listed");
    assert_eq!(
        audit["interaction"],
        json!([{"code": "read"}, {"code": "search-type"}])
    );
    let event = json!({"resourceType": "AuditEvent", "type": {"code": "rest"}, "recorded": "2026-01-01T00:00:00Z",
        "agent": [{"requestor": true}], "source": {"observer": {"display": "x"}}});
    assert_outcome(app.post("AuditEvent", &event).await, 405, "not-supported").await;
    assert_outcome(app.put("AuditEvent/1", &event).await, 405, "not-supported").await;
    assert_outcome(app.delete("AuditEvent/1").await, 405, "not-supported").await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": event, "request": {"method": "POST", "url": "AuditEvent"}}]});
    assert_eq!(app.post("", &bundle).await.status(), 405);
    let e = events(&app).await;
    assert!(
        e.iter().all(|x| x["outcome"] == "4"),
        "only the refusals were stored: {e:#?}"
    );
    assert_eq!(e.len(), 4);
}

#[tokio::test]
async fn auditors_search_page_and_export_the_trail_and_patients_see_their_own() {
    let app = spawn_app().await;
    let p1 = create(&app, &patient()).await;
    let p2 = create(&app, &patient()).await;
    let o1 = create(&app, &observation(&p1, 60.0)).await;
    create(&app, &observation(&p2, 61.0)).await;
    let partner = token(
        &app,
        "partner-app",
        "system/*.rs",
        None,
        Some("Organization/acme"),
    );
    let denied = app
        .anonymous
        .get(format!("{}/Observation/{o1}", app.base))
        .bearer_auth(&partner)
        .send()
        .await
        .expect("get");
    assert_eq!(denied.status(), 404);
    app.get(&format!("Observation/{o1}")).await;

    let auditor = token(&app, "auditor-app", "system/AuditEvent.rs", None, None);
    let search = |q: String, t: String| {
        let url = format!("{}/AuditEvent?{q}", app.base);
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(t)
                .send()
                .await
                .expect("search");
            assert_eq!(r.status(), 200);
            json(r).await
        }
    };
    let ids = |b: &Value| -> Vec<String> {
        b["entry"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let all = events(&app).await;

    // patient, agent, outcome, action, subtype, type, date, sort and paging.
    let b = search(
        format!("patient=Patient/{p1}&_total=accurate"),
        auditor.clone(),
    )
    .await;
    let expected: Vec<String> = all
        .iter()
        .rev()
        .filter(|e| patients(e).contains(&format!("Patient/{p1}")))
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();
    assert_eq!(ids(&b), expected);
    assert_eq!(b["total"], expected.len());
    let b = search("agent=Organization/acme".into(), auditor.clone()).await;
    assert_eq!(ids(&b).len(), 1);
    assert_eq!(b["entry"][0]["resource"]["outcome"], "4");
    let b = search("outcome=4".into(), auditor.clone()).await;
    assert_eq!(ids(&b).len(), 1);
    let b = search("agent=client:partner-app".into(), auditor.clone()).await;
    assert_eq!(ids(&b).len(), 1);
    let b = search(format!("entity=Observation/{o1}&action=R"), auditor.clone()).await;
    assert_eq!(ids(&b).len(), 2, "the denied and the allowed read");
    let b = search("subtype=create&type=rest".into(), auditor.clone()).await;
    assert_eq!(ids(&b).len(), 4);
    let b = search(
        "date=ge2000-01-01&date=lt2000-01-02".into(),
        auditor.clone(),
    )
    .await;
    assert_eq!(ids(&b).len(), 0);
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let b = search(format!("date={today}&_sort=date&_count=2"), auditor.clone()).await;
    assert_eq!(ids(&b), ["1", "2"]);
    let next = b["link"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["relation"] == "next"))
        .and_then(|x| x["url"].as_str())
        .expect("next link")
        .to_owned();
    let r = reqwest::Client::new()
        .get(next)
        .bearer_auth(&auditor)
        .send()
        .await
        .expect("next");
    assert_eq!(ids(&json(r).await), ["3", "4"]);

    // Bad input is a 400 naming the parameter.
    let r = reqwest::Client::new()
        .get(format!("{}/AuditEvent?date=yesterday", app.base))
        .bearer_auth(&auditor)
        .send()
        .await
        .expect("bad");
    let oo = assert_outcome(r, 400, "invalid").await;
    assert_eq!(oo["issue"][0]["expression"][0], "date");

    // Export as NDJSON and CSV.
    let export = |fmt: &str| {
        reqwest::Client::new()
            .get(format!(
                "{}/AuditEvent/$export?date=ge{today}&_outputFormat={fmt}",
                app.base
            ))
            .bearer_auth(&auditor)
            .send()
    };
    let nd = export("ndjson")
        .await
        .expect("export")
        .text()
        .await
        .expect("text");
    let lines: Vec<Value> = nd
        .lines()
        .map(|l| serde_json::from_str(l).expect("line"))
        .collect();
    assert!(lines.len() >= all.len());
    assert_eq!(lines[0]["id"], "1");
    let csv = export("csv")
        .await
        .expect("export")
        .text()
        .await
        .expect("text");
    assert!(csv.starts_with("id,recorded,type,subtype,action,outcome,"));
    assert!(csv.contains("Organization/acme"));

    // A partner never reads the trail; a patient reads only events about themselves.
    let r = reqwest::Client::new()
        .get(format!("{}/AuditEvent", app.base))
        .bearer_auth(&partner)
        .send()
        .await
        .expect("partner");
    assert_eq!(r.status(), 403);
    let mine = token(&app, "phone-app", "patient/AuditEvent.rs", Some(&p2), None);
    let b = search(String::new(), mine.clone()).await;
    assert!(!ids(&b).is_empty());
    assert!(b["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .all(|e| patients(&e["resource"]).contains(&format!("Patient/{p2}"))));
    let other = expected.last().expect("an event about p1");
    let r = reqwest::Client::new()
        .get(format!("{}/AuditEvent/{other}", app.base))
        .bearer_auth(&mine)
        .send()
        .await
        .expect("read");
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn token_and_sign_in_events_are_recorded() {
    let app = spawn_app().await;
    let key = crate::helpers::es384_key("k1");
    crate::auth::register(&app, "backend-1", &key, "system/*.rs", None).await;
    let url = app.state.token_url();
    let ok = crate::helpers::request_token(
        &url,
        &key.assertion("backend-1", &url, json!({})),
        "system/Patient.rs",
    )
    .await;
    assert_eq!(ok.status(), 200);
    let forged = crate::helpers::es384_key("k1");
    let bad = crate::helpers::request_token(
        &url,
        &forged.assertion("backend-1", &url, json!({})),
        "system/Patient.rs",
    )
    .await;
    assert_eq!(bad.status(), 401);

    let mut b = crate::smart_app::Browser::new(&app);
    b.sign_up("audit-login@example.org").await;
    let pid = b.patient_id().await;
    let p = b.get("/auth/login").await;
    let csrf = crate::smart_app::field(&p.body, "csrf").expect("csrf");
    let wrong = b
        .post(
            "/auth/login",
            &crate::smart_app::pairs(&[
                ("csrf", &csrf),
                ("email", "audit-login@example.org"),
                ("password", "wrong"),
            ]),
        )
        .await;
    assert_eq!(wrong.status, 401);
    let right = b
        .post(
            "/auth/login",
            &crate::smart_app::pairs(&[
                ("csrf", &csrf),
                ("email", "audit-login@example.org"),
                ("password", crate::smart_app::PASSWORD),
            ]),
        )
        .await;
    assert_eq!(right.status, 303);

    let e: Vec<Value> = events(&app)
        .await
        .into_iter()
        .filter(|e| e["type"]["code"] == "110114")
        .collect();
    let seen: Vec<(&str, &str)> = e
        .iter()
        .map(|x| (subtype(x), x["outcome"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        seen,
        [
            ("token-issue", "0"),
            ("assertion-failure", "4"),
            ("110122", "0"),
            ("110122", "4"),
            ("110122", "0")
        ]
    );
    assert_eq!(agents(&e[0]), ["client:backend-1"]);
    assert_eq!(
        agents(&e[2]),
        [format!("Patient/{pid}")],
        "sign-up signs in"
    );
    assert_eq!(agents(&e[4]), [format!("Patient/{pid}")]);
    assert!(
        !e[3].to_string().contains("audit-login@"),
        "no typed address in events"
    );
}

#[tokio::test]
async fn headless_chromium_finds_a_partner_read_on_the_auditor_and_patient_pages() {
    let app = spawn_app().await;
    let mut auditor = crate::smart_app::Browser::new(&app);
    auditor.sign_up("auditor@example.org").await;
    assert!(
        fhirgate::auth::users::set_auditor(&app.state, "auditor@example.org", true)
            .await
            .expect("grant")
    );
    let mut patient = crate::smart_app::Browser::new(&app);
    patient.sign_up("watched@example.org").await;
    let pid = patient.patient_id().await;
    let oid = create(&app, &observation(&pid, 64.0)).await;

    // The partner's read (refused: this patient has not consented).
    let partner = token(
        &app,
        "acme-app",
        "system/Observation.rs",
        None,
        Some("Organization/acme"),
    );
    let resp = app
        .anonymous
        .get(format!("{}/Observation/{oid}", app.base))
        .bearer_auth(&partner)
        .header("x-purpose-of-use", "TREAT")
        .send()
        .await
        .expect("partner read");
    assert_eq!(resp.status(), 404);

    // Without the role, the auditor page is refused.
    let p = patient.get("/audit").await;
    assert_eq!(p.status, 403);

    let root = app.base.trim_end_matches("/fhir").to_owned();
    let report = crate::helpers::browser_script(
        "audit_pages.mjs",
        &[
            &root,
            "auditor@example.org",
            "watched@example.org",
            crate::smart_app::PASSWORD,
            "acme",
        ],
    )
    .await;
    let auditor_rows: Vec<&str> = report["auditorRows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(auditor_rows.len(), 1, "{report:#}");
    let row = auditor_rows[0];
    for part in [
        "read",
        &format!("Observation/{oid}"),
        "Organization/acme",
        "app acme-app",
        &format!("Patient/{pid}"),
        "refused",
    ] {
        assert!(row.contains(part), "{part} not in {row}");
    }
    let event = report["eventText"].as_str().expect("event");
    assert!(event.contains("\"TREAT\""), "{event}");
    assert!(event.contains("Organization/acme"), "{event}");
    let csv = report["csv"].as_str().expect("csv");
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(csv.contains("Organization/acme"));
    let patient_rows: Vec<&str> = report["patientRows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        patient_rows
            .iter()
            .any(|r| r.contains("partner Organization/acme")
                && r.contains(&format!("Observation/{oid}"))
                && r.ends_with("no")),
        "{patient_rows:#?}"
    );
}

#[tokio::test]
async fn two_servers_on_one_database_keep_one_unbroken_chain() {
    use fhirgate::audit::event::Kind;
    use fhirgate::audit::{Action, Event};
    let app = spawn_app().await;
    // A second writer on the same database, as a second server process would have.
    let other = fhirgate::audit::Auditor::start(app.pool.clone(), true);
    let mut tasks = Vec::new();
    for i in 0..400 {
        let writer = if i % 2 == 0 {
            app.state.auditor.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            let event = Event::new(Kind::Login, Action::Execute);
            writer.record(&event, None).await
        }));
    }
    for t in tasks {
        t.await.expect("task").expect("recorded");
    }
    let n = events(&app).await.len() as u64;
    assert_eq!(n, 400);
    assert_eq!(
        fhirgate::audit::verify(&app.pool).await.expect("verify"),
        fhirgate::audit::VerifyReport::Ok { count: n }
    );
}

#[tokio::test]
async fn paging_walks_every_matching_event_once_in_order() {
    use fhirgate::audit::event::Kind;
    use fhirgate::audit::{Action, Event};
    let app = spawn_app().await;
    // Many events, in rows of different sizes (concurrent requests share a group commit).
    for round in 0..6 {
        let mut tasks = Vec::new();
        for i in 0..(round * 20 + 1) {
            let a = app.state.auditor.clone();
            tasks.push(tokio::spawn(async move {
                let kind = if i % 3 == 0 {
                    Kind::Logout
                } else {
                    Kind::Login
                };
                a.record(&Event::new(kind, Action::Execute), None).await
            }));
        }
        for t in tasks {
            t.await.expect("task").expect("recorded");
        }
    }
    // And more rows than a search reads per round, one event each.
    for i in 0..80 {
        let kind = if i % 40 == 0 {
            Kind::Logout
        } else {
            Kind::Login
        };
        app.state
            .auditor
            .record(&Event::new(kind, Action::Execute), None)
            .await
            .expect("recorded");
    }
    let all = events(&app).await;
    let rows: i64 = sqlx::query_scalar("select count(*) from audit_log")
        .fetch_one(&app.pool)
        .await
        .expect("rows");
    assert!(rows > 80, "more rows than one round reads");
    let logins: Vec<String> = all
        .iter()
        .filter(|e| subtype(e) == "110122")
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();
    let logouts: Vec<String> = all
        .iter()
        .filter(|e| subtype(e) == "110123")
        .map(|e| e["id"].as_str().expect("id").to_owned())
        .collect();
    let auditor = token(&app, "auditor-app", "system/AuditEvent.rs", None, None);
    for (code, sort, expected) in [
        (
            "110122",
            "-date",
            logins.iter().rev().cloned().collect::<Vec<_>>(),
        ),
        ("110122", "date", logins.clone()),
        ("110123", "-date", logouts.iter().rev().cloned().collect()),
        ("110123", "date", logouts.clone()),
    ] {
        let mut url = format!(
            "{}/AuditEvent?subtype={code}&_sort={sort}&_count=7&_total=accurate",
            app.base
        );
        let mut seen = Vec::new();
        loop {
            let r = reqwest::Client::new()
                .get(&url)
                .bearer_auth(&auditor)
                .send()
                .await
                .expect("page");
            let b = json(r).await;
            assert_eq!(b["total"], expected.len(), "{sort}");
            for e in b["entry"].as_array().into_iter().flatten() {
                seen.push(e["resource"]["id"].as_str().expect("id").to_owned());
            }
            match b["link"]
                .as_array()
                .and_then(|l| l.iter().find(|x| x["relation"] == "next"))
            {
                Some(next) => url = next["url"].as_str().expect("url").to_owned(),
                None => break,
            }
        }
        assert_eq!(seen, expected, "{sort}");
    }
}

/// Runs SQL as a superuser who bypasses the trail's triggers.
async fn as_superuser(app: &TestApp, sql: &[&str]) {
    let mut conn = app.pool.acquire().await.expect("conn");
    sqlx::query("set session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .expect("replica");
    for s in sql {
        sqlx::query(s).execute(&mut *conn).await.expect("tamper");
    }
    sqlx::query("set session_replication_role = origin")
        .execute(&mut *conn)
        .await
        .expect("origin");
}

/// Rewrites every row from `from` on so that the chain verifies again after an edit: the
/// strongest tampering a superuser can do inside the database.
async fn rechain_from(app: &TestApp, from: i64) {
    let rows: Vec<(i64, String, Vec<u8>)> =
        sqlx::query_as("select seq, events, prev_hash from audit_log where seq >= $1 order by seq")
            .bind(from)
            .fetch_all(&app.pool)
            .await
            .expect("rows");
    let mut prev = rows.first().map(|r| r.2.clone()).unwrap_or_default();
    let mut conn = app.pool.acquire().await.expect("conn");
    sqlx::query("set session_replication_role = replica")
        .execute(&mut *conn)
        .await
        .expect("replica");
    for (seq, events, _) in rows {
        let hash = fhirgate::audit::chain::link_hash(&prev, &events);
        sqlx::query("update audit_log set prev_hash = $2, hash = $3 where seq = $1")
            .bind(seq)
            .bind(&prev)
            .bind(&hash)
            .execute(&mut *conn)
            .await
            .expect("rechain");
        prev = hash;
    }
    sqlx::query("set session_replication_role = origin")
        .execute(&mut *conn)
        .await
        .expect("origin");
}

/// The five ways a superuser can tamper with the trail, and what finds each: the chain finds an
/// edited and a deleted middle row; the signed checkpoints find deleted newest rows, a
/// truncated table, and an edit with every later hash recomputed.
#[tokio::test]
async fn signed_checkpoints_find_what_the_chain_alone_cannot() {
    use fhirgate::audit::checkpoint::{self, CheckpointReport, FileSink};
    for case in [
        "edit",
        "delete-middle",
        "delete-newest",
        "truncate",
        "edit-and-rechain",
    ] {
        let app = spawn_app().await;
        let dir = tempfile::tempdir().expect("dir");
        let key = checkpoint::signing_key(&dir.path().join("checkpoint.key")).expect("key");
        let sink = FileSink(dir.path().join("checkpoints.jsonl"));
        let pid = create(&app, &patient()).await;
        for v in [60.0, 61.0, 62.0, 63.0] {
            create(&app, &observation(&pid, v)).await;
            app.get(&format!("Patient/{pid}")).await;
        }
        let taken = checkpoint::take(&app.pool, &key, &sink)
            .await
            .expect("take")
            .expect("a checkpoint");
        assert!(taken.seq >= 3, "{case}: several rows");
        let check = || async {
            (
                fhirgate::audit::verify(&app.pool).await.expect("verify"),
                checkpoint::check(&app.pool, &sink.0, key.verifying_key())
                    .await
                    .expect("check"),
            )
        };
        let (chain, signed) = check().await;
        assert!(
            matches!(chain, fhirgate::audit::VerifyReport::Ok { .. }),
            "{case}"
        );
        assert!(
            matches!(signed, CheckpointReport::Ok { checkpoints: 1, .. }),
            "{case}"
        );
        let middle = taken.seq / 2;
        match case {
            "edit" => {
                as_superuser(&app, &[&format!("update audit_log set events = replace(events, 'RESTful Operation', 'RESTful 0peration') where seq = {middle}")]).await;
                let (chain, _) = check().await;
                assert!(
                    matches!(chain, fhirgate::audit::VerifyReport::Broken { .. }),
                    "{case}"
                );
            }
            "delete-middle" => {
                as_superuser(
                    &app,
                    &[&format!("delete from audit_log where seq = {middle}")],
                )
                .await;
                let (chain, _) = check().await;
                assert!(
                    matches!(chain, fhirgate::audit::VerifyReport::Broken { .. }),
                    "{case}"
                );
            }
            "delete-newest" => {
                as_superuser(
                    &app,
                    &[&format!(
                        "delete from audit_log where seq >= {}",
                        taken.seq - 1
                    )],
                )
                .await;
                let (chain, signed) = check().await;
                assert!(
                    matches!(chain, fhirgate::audit::VerifyReport::Ok { .. }),
                    "{case}: the chain alone misses it"
                );
                assert!(
                    matches!(signed, CheckpointReport::Failed { line: 1, .. }),
                    "{case}: {signed:?}"
                );
            }
            "truncate" => {
                as_superuser(&app, &["truncate audit_log"]).await;
                let (chain, signed) = check().await;
                assert!(
                    matches!(chain, fhirgate::audit::VerifyReport::Ok { .. }),
                    "{case}: the chain alone misses it"
                );
                assert!(
                    matches!(signed, CheckpointReport::Failed { line: 1, .. }),
                    "{case}: {signed:?}"
                );
            }
            _ => {
                as_superuser(&app, &[&format!("update audit_log set events = replace(events, 'RESTful Operation', 'RESTful 0peration') where seq = {middle}")]).await;
                rechain_from(&app, middle).await;
                let (chain, signed) = check().await;
                assert!(
                    matches!(chain, fhirgate::audit::VerifyReport::Ok { .. }),
                    "{case}: the chain alone misses it"
                );
                assert!(
                    matches!(signed, CheckpointReport::Failed { line: 1, .. }),
                    "{case}: {signed:?}"
                );
            }
        }
        // A forged checkpoint (another key, or an edited line) is refused too.
        if case == "edit" {
            let other = checkpoint::signing_key(&dir.path().join("other.key")).expect("other");
            let forged = FileSink(dir.path().join("forged.jsonl"));
            checkpoint::take(&app.pool, &other, &forged)
                .await
                .expect("take");
            let r = checkpoint::check(&app.pool, &forged.0, key.verifying_key())
                .await
                .expect("check");
            assert!(matches!(r, CheckpointReport::Failed { .. }), "{r:?}");
        }
    }
}

/// `fhirgate audit checkpoint` and `audit verify --checkpoints` on the command line.
#[tokio::test]
async fn the_command_line_takes_and_checks_checkpoints() {
    let app = spawn_app().await;
    let pid = create(&app, &patient()).await;
    create(&app, &observation(&pid, 70.0)).await;
    let dir = tempfile::tempdir().expect("dir");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_fhirgate"))
            .args(args)
            .env("DATABASE_URL", database_url(&app))
            .env("FHIRGATE_DATA_DIR", dir.path())
            .env("FHIRGATE_MASTER_KEY", &app.master_key)
            .env_remove("FHIRGATE_ENV")
            .output()
            .expect("run")
    };
    let out = run(&["audit", "checkpoint"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("checkpoint: row"));
    let file = dir.path().join("audit-checkpoints.jsonl");
    let out = run(&[
        "audit",
        "verify",
        "--checkpoints",
        file.to_str().expect("path"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("signed checkpoints hold"));
    as_superuser(&app, &["truncate audit_log"]).await;
    let out = run(&[
        "audit",
        "verify",
        "--checkpoints",
        file.to_str().expect("path"),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("CHECKPOINT FAILED"));
}
