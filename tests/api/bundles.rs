//! batch and transaction Bundles, and loading the Synthea fixtures.

use std::collections::HashMap;
use std::io::Read;

use serde_json::{json, Value};

use crate::helpers::{assert_outcome, json, observation, spawn_app};

fn entry_post(full_url: &str, resource: Value) -> Value {
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}})
}

#[tokio::test]
async fn a_transaction_resolves_urn_uuids_and_is_all_or_nothing() {
    let app = spawn_app().await;
    let pid = "urn:uuid:2f3e6c52-6f0a-4b4e-8d49-0a7c1f4b2a11";
    let mut obs = observation("x", 70.0);
    obs["subject"] = json!({"reference": pid});
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry_post("urn:uuid:7d1e8a7b-93b4-4a0c-9d7f-3a1f5b7c9e01", obs),
        entry_post(pid, json!({"resourceType": "Patient", "name": [{"family": "Tx"}]})),
    ]});
    let resp = app.post("", &bundle).await;
    assert_eq!(resp.status(), 200);
    let out = json(resp).await;
    assert_eq!(out["type"], "transaction-response");
    let loc = out["entry"][1]["response"]["location"]
        .as_str()
        .expect("location");
    assert!(loc.starts_with("Patient/"), "{loc}");
    assert_eq!(out["entry"][0]["response"]["status"], "201 Created");
    let obs_loc = out["entry"][0]["response"]["location"]
        .as_str()
        .expect("obs")
        .split("/_history")
        .next()
        .expect("p")
        .to_owned();
    let stored = json(app.get(&obs_loc).await).await;
    let patient_ref = loc.split("/_history").next().expect("p");
    assert_eq!(stored["subject"]["reference"], patient_ref);

    // One bad entry: nothing of the Bundle is stored, and the outcome names the entry.
    let before = app.count("resource_version").await;
    let bad = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry_post("urn:uuid:00000000-0000-4000-8000-000000000001", json!({"resourceType": "Patient"})),
        entry_post("urn:uuid:00000000-0000-4000-8000-000000000002", json!({"resourceType": "Observation", "status": "bogus", "code": {"text": "x"}})),
    ]});
    let oo = assert_outcome(app.post("", &bad).await, 422, "code-invalid").await;
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .expect("d")
            .contains("Bundle.entry[1]"),
        "{oo}"
    );
    assert_eq!(app.count("resource_version").await, before);
}

#[tokio::test]
async fn transaction_order_conditions_and_errors() {
    let app = spawn_app().await;
    app.put(
        "Patient/keep",
        &json!({"resourceType": "Patient", "id": "keep"}),
    )
    .await;
    app.put(
        "Patient/drop",
        &json!({"resourceType": "Patient", "id": "drop"}),
    )
    .await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": "Patient/keep"}},
        {"resource": {"resourceType": "Patient", "id": "keep", "active": true}, "request": {"method": "PUT", "url": "Patient/keep", "ifMatch": "W/\"1\""}},
        {"request": {"method": "DELETE", "url": "Patient/drop"}},
        {"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111",
         "resource": {"resourceType": "Organization", "identifier": [{"system": "urn:org", "value": "o1"}]},
         "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=urn:org|o1"}},
    ]});
    let out = json(app.post("", &bundle).await).await;
    let statuses: Vec<&str> = out["entry"]
        .as_array()
        .expect("e")
        .iter()
        .map(|e| e["response"]["status"].as_str().expect("s"))
        .collect();
    assert_eq!(
        statuses,
        ["200 OK", "200 OK", "204 No Content", "201 Created"]
    );
    // The GET runs after the PUT (processing order), so it sees version 2.
    assert_eq!(out["entry"][0]["response"]["etag"], "W/\"2\"");
    assert_outcome(app.get("Patient/drop").await, 410, "deleted").await;
    // ifNoneExist on a second load: 200, no new Organization; conditional reference resolves.
    let again = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:22222222-2222-4222-8222-222222222222",
         "resource": {"resourceType": "Organization", "identifier": [{"system": "urn:org", "value": "o1"}]},
         "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=urn:org|o1"}},
        entry_post("urn:uuid:33333333-3333-4333-8333-333333333333", json!({"resourceType": "Patient", "managingOrganization": {"reference": "Organization?identifier=urn:org|o1"}})),
    ]});
    let out = json(app.post("", &again).await).await;
    assert_eq!(out["entry"][0]["response"]["status"], "200 OK");
    let org_id = out["entry"][0]["response"]["location"]
        .as_str()
        .expect("l")
        .split('/')
        .nth(1)
        .expect("id")
        .to_owned();
    let pat = out["entry"][1]["response"]["location"]
        .as_str()
        .expect("l")
        .split("/_history")
        .next()
        .expect("p")
        .to_owned();
    assert_eq!(
        json(app.get(&pat).await).await["managingOrganization"]["reference"],
        format!("Organization/{org_id}")
    );
    assert_eq!(
        app.count("resource where resource_type = 'Organization'")
            .await,
        1
    );
    // A conditional reference with no match fails the whole transaction with 412.
    let missing = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry_post("urn:uuid:44444444-4444-4444-8444-444444444444", json!({"resourceType": "Patient", "managingOrganization": {"reference": "Organization?identifier=urn:org|none"}})),
    ]});
    assert_outcome(app.post("", &missing).await, 412, "conflict").await;
    // If-Match mismatch fails the transaction.
    let stale = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": "keep"}, "request": {"method": "PUT", "url": "Patient/keep", "ifMatch": "W/\"1\""}},
    ]});
    assert_outcome(app.post("", &stale).await, 412, "conflict").await;
    // Two entries writing the same resource: 400.
    let dup = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "id": "keep"}, "request": {"method": "PUT", "url": "Patient/keep"}},
        {"request": {"method": "DELETE", "url": "Patient/keep"}},
    ]});
    assert_outcome(app.post("", &dup).await, 400, "invalid").await;
    // Not a batch or transaction.
    assert_outcome(
        app.post("", &json!({"resourceType": "Bundle", "type": "collection"}))
            .await,
        400,
        "invalid",
    )
    .await;
    assert_outcome(
        app.post("", &json!({"resourceType": "Patient"})).await,
        400,
        "invalid",
    )
    .await;
    let too_many: Vec<Value> = (0..10_001)
        .map(|_| json!({"request": {"method": "GET", "url": "Patient/keep"}}))
        .collect();
    assert_outcome(
        app.post(
            "",
            &json!({"resourceType": "Bundle", "type": "batch", "entry": too_many}),
        )
        .await,
        413,
        "too-costly",
    )
    .await;
}

#[tokio::test]
async fn a_batch_answers_each_entry() {
    let app = spawn_app().await;
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        entry_post("urn:uuid:55555555-5555-4555-8555-555555555555", json!({"resourceType": "Patient"})),
        entry_post("urn:uuid:66666666-6666-4666-8666-666666666666", json!({"resourceType": "Patient", "gender": "nope"})),
        {"request": {"method": "GET", "url": "Patient/absent"}},
    ]});
    let out = json(app.post("", &bundle).await).await;
    assert_eq!(out["type"], "batch-response");
    assert_eq!(out["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(
        out["entry"][1]["response"]["status"],
        "422 Unprocessable Entity"
    );
    assert_eq!(
        out["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(out["entry"][2]["response"]["status"], "404 Not Found");
    assert_eq!(app.count("resource").await, 1);
}

fn synthea_bundles() -> Vec<(String, Value)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/synthea");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures")
        .flatten()
        .map(|e| e.path())
        .collect();
    // The two `0-*` batch Bundles (organisations, practitioners) first.
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let mut text = String::new();
            bzip2::read::BzDecoder::new(std::fs::File::open(&p).expect("open"))
                .read_to_string(&mut text)
                .expect("bz2");
            (
                p.file_name().expect("name").to_string_lossy().into_owned(),
                serde_json::from_str(&text).expect("json"),
            )
        })
        .collect()
}

#[tokio::test]
async fn all_synthea_patients_load_with_matching_counts() {
    let app = spawn_app().await;
    let bundles = synthea_bundles();
    assert_eq!(bundles.len(), 42);
    let mut expected: HashMap<String, i64> = HashMap::new();
    // fullUrl → Type/id the server gave it, for the search checks below.
    let mut located: HashMap<String, String> = HashMap::new();
    for (name, b) in &bundles {
        for e in b["entry"].as_array().expect("entries") {
            let rt = e["resource"]["resourceType"]
                .as_str()
                .expect("rt")
                .to_owned();
            // ifNoneExist entries of the batch Bundles are unique by identifier per file.
            *expected.entry(rt).or_default() += 1;
        }
        let resp = app
            .client
            .post(&app.base)
            .header("content-type", "application/fhir+json")
            .body(b.to_string())
            .send()
            .await
            .expect("post");
        let status = resp.status();
        let out = json(resp).await;
        assert_eq!(status, 200, "{name}: {out}");
        for (e, req) in out["entry"]
            .as_array()
            .expect("entries")
            .iter()
            .zip(b["entry"].as_array().expect("entries"))
        {
            let s = e["response"]["status"].as_str().expect("status");
            assert!(s.starts_with("201") || s.starts_with("200"), "{name}: {e}");
            if let (Some(full), Some(loc)) =
                (req["fullUrl"].as_str(), e["response"]["location"].as_str())
            {
                let local = loc.split("/_history").next().unwrap_or(loc);
                located.insert(
                    full.to_owned(),
                    local
                        .rsplitn(3, '/')
                        .take(2)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("/"),
                );
            }
        }
    }
    search_matches_an_oracle_over_synthea(&app, &bundles, &located).await;
    let rows: Vec<(String, i64)> =
        sqlx::query_as("select resource_type, count(*) from resource group by resource_type")
            .fetch_all(&app.pool)
            .await
            .expect("counts");
    let actual: HashMap<String, i64> = rows.into_iter().collect();
    assert_eq!(actual, expected);
    assert_eq!(actual.values().sum::<i64>(), 26_367);
    // Every conditional reference was resolved to a literal one.
    let patients: Vec<String> =
        sqlx::query_scalar("select id from resource where resource_type = 'Encounter' limit 5")
            .fetch_all(&app.pool)
            .await
            .expect("ids");
    for id in patients {
        let enc = json(app.get(&format!("Encounter/{id}")).await).await;
        let s = enc.to_string();
        assert!(!s.contains("?identifier="), "{s}");
        assert!(!s.contains("urn:uuid:"), "{s}");
        assert!(enc["subject"]["reference"]
            .as_str()
            .expect("subject")
            .starts_with("Patient/"));
    }
    // Loading the organisations again creates nothing: every entry has ifNoneExist.
    let (name, hospitals) = &bundles[0];
    assert!(name.starts_with("0-hospitalInformation"));
    let before = app.count("resource").await;
    let out = json(
        app.client
            .post(&app.base)
            .header("content-type", "application/fhir+json")
            .body(hospitals.to_string())
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert!(
        out["entry"]
            .as_array()
            .expect("e")
            .iter()
            .all(|e| e["response"]["status"] == "200 OK"),
        "{out}"
    );
    assert_eq!(app.count("resource").await, before);
}

#[tokio::test]
async fn unsupported_bundle_entries_are_refused_by_name() {
    let app = spawn_app().await;
    // A search inside a transaction could not see the transaction's own writes: 501, use a batch.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": "Patient?identifier=urn:x|1"}}]});
    let out = assert_outcome(app.post("", &tx).await, 501, "not-supported").await;
    assert!(out.to_string().contains("batch"), "{out}");
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "PATCH", "url": "Patient/1"}}]});
    let out = json(app.post("", &batch).await).await;
    assert_eq!(out["entry"][0]["response"]["status"], "400 Bad Request");
}

#[tokio::test]
async fn bundles_answer_reads_and_searches_and_resolve_within_the_transaction() {
    let app = spawn_app().await;
    // Conditional references and ifNoneExist find what earlier entries of the same transaction
    // create; conditional delete works in a transaction.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0a4b6a8e-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "77"}], "name": [{"family": "Same"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "77"}]},
         "request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|77"}},
        {"resource": {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient?identifier=urn:mrn|77"},
            "valueQuantity": {"value": 61, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "DELETE", "url": "Patient?identifier=urn:mrn|nobody"}}
    ]});
    let out = json(app.post("", &tx).await).await;
    let status = |i: usize| {
        out["entry"][i]["response"]["status"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(status(0), "201 Created", "{out}");
    assert_eq!(status(1), "200 OK", "{out}");
    assert_eq!(status(2), "201 Created", "{out}");
    assert_eq!(status(3), "204 No Content", "{out}");
    let patient = out["entry"][0]["response"]["location"]
        .as_str()
        .expect("location");
    let pid = patient.split('/').nth(1).expect("id").to_owned();
    assert!(out["entry"][1]["response"]["location"]
        .as_str()
        .expect("location")
        .contains(&pid));
    let obs_loc = out["entry"][2]["response"]["location"]
        .as_str()
        .expect("location");
    let obs_id = obs_loc.split('/').nth(1).expect("id").to_owned();
    let obs = json(app.get(&format!("Observation/{obs_id}")).await).await;
    assert_eq!(obs["subject"]["reference"], format!("Patient/{pid}"));
    assert_eq!(
        app.count("resource where resource_type = 'Patient'").await,
        1
    );

    // A batch: reads return the resource, searches return the searchset, conditional delete
    // deletes the one match.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Patient/{pid}")}},
        {"request": {"method": "GET", "url": format!("Observation?subject=Patient/{pid}&_count=5")}},
        {"request": {"method": "GET", "url": "Observation?unknown-param=1"}},
        {"request": {"method": "GET", "url": "Patient/nobody"}},
        {"request": {"method": "DELETE", "url": "Observation?_id=".to_owned() + &obs_id}}
    ]});
    let out = json(app.post("", &batch).await).await;
    assert_eq!(out["entry"][0]["response"]["status"], "200 OK", "{out}");
    assert_eq!(out["entry"][0]["resource"]["id"], pid.as_str(), "{out}");
    assert_eq!(out["entry"][0]["resource"]["name"][0]["family"], "Same");
    assert_eq!(out["entry"][1]["response"]["status"], "200 OK", "{out}");
    assert_eq!(out["entry"][1]["resource"]["type"], "searchset", "{out}");
    assert_eq!(
        out["entry"][1]["resource"]["entry"][0]["resource"]["id"],
        obs_id.as_str()
    );
    // Lenient, as over HTTP without `Prefer: handling=strict`: the unknown parameter is named.
    assert_eq!(out["entry"][2]["response"]["status"], "200 OK", "{out}");
    assert!(out["entry"][2]["resource"]
        .to_string()
        .contains("ignored unknown search parameters: unknown-param"));
    assert_eq!(
        out["entry"][3]["response"]["status"], "404 Not Found",
        "{out}"
    );
    assert_eq!(
        out["entry"][4]["response"]["status"], "204 No Content",
        "{out}"
    );
    assert_eq!(
        app.get(&format!("Observation/{obs_id}")).await.status(),
        410
    );
    // A search in a batch sees only what the caller may see, and is audited as a search.
    let other = crate::audit::token(&app, "app", "patient/*.rs", Some("someone-else"), None);
    let r = reqwest::Client::new()
        .post(&app.base)
        .bearer_auth(&other)
        .header("content-type", "application/fhir+json")
        .body(
            json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": "Patient?identifier=urn:mrn|77"}}]})
            .to_string(),
        )
        .send()
        .await
        .expect("batch");
    let out = json(r).await;
    assert_eq!(out["entry"][0]["response"]["status"], "200 OK", "{out}");
    assert!(out["entry"][0]["resource"].get("entry").is_none(), "{out}");
    let events: String = sqlx::query_scalar("select string_agg(events, '\n') from audit_log")
        .fetch_one(&app.pool)
        .await
        .expect("events");
    assert!(
        events.contains("search-type"),
        "the batch's searches are audited"
    );
}

/// The ids (`Type/id`) of a search's `match` entries, following `next` links, sorted.
async fn all_matches(app: &crate::helpers::TestApp, query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut url = format!("{}/{query}", app.base);
    loop {
        let resp = app.client.get(&url).send().await.expect("search");
        assert_eq!(resp.status(), 200, "{query}");
        let b = json(resp).await;
        for e in b["entry"].as_array().into_iter().flatten() {
            if e["search"]["mode"] == "match" {
                out.push(format!(
                    "{}/{}",
                    e["resource"]["resourceType"].as_str().unwrap_or(""),
                    e["resource"]["id"].as_str().unwrap_or("")
                ));
            }
        }
        match b["link"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["relation"] == "next"))
        {
            Some(next) => url = next["url"].as_str().expect("url").to_owned(),
            None => break,
        }
    }
    out.sort();
    out
}

/// Searches over the loaded Synthea patients against answers worked out here from the fixture
/// JSON itself: token, reference, date, quantity, blind-indexed string, chain and `_has`.
async fn search_matches_an_oracle_over_synthea(
    app: &crate::helpers::TestApp,
    bundles: &[(String, Value)],
    located: &HashMap<String, String>,
) {
    let instant = |v: &Value| -> Option<chrono::DateTime<chrono::FixedOffset>> {
        chrono::DateTime::parse_from_rfc3339(v.as_str()?).ok()
    };
    let mut checked = 0;
    for (name, b) in bundles.iter().filter(|(n, _)| !n.starts_with("0-")).take(4) {
        let entries = b["entry"].as_array().expect("entries");
        let (patient_url, patient) = entries
            .iter()
            .find(|e| e["resource"]["resourceType"] == "Patient")
            .map(|e| (e["fullUrl"].as_str().expect("url"), &e["resource"]))
            .expect("a Patient");
        let pid = located[patient_url]
            .trim_start_matches("Patient/")
            .to_owned();
        let of_patient = |rt: &str| -> Vec<(&Value, String)> {
            entries
                .iter()
                .filter(|e| e["resource"]["resourceType"] == rt)
                .filter(|e| {
                    let r = &e["resource"];
                    r["subject"]["reference"] == patient_url
                        || r["patient"]["reference"] == patient_url
                })
                .map(|e| {
                    (
                        &e["resource"],
                        located[e["fullUrl"].as_str().expect("url")].clone(),
                    )
                })
                .collect()
        };
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let observations = of_patient("Observation");
        // token: each LOINC code of the patient's Observations.
        let mut codes: Vec<&str> = observations
            .iter()
            .filter_map(|(o, _)| o["code"]["coding"][0]["code"].as_str())
            .collect();
        codes.sort();
        codes.dedup();
        for code in codes.iter().take(5) {
            let want = sorted(
                observations
                    .iter()
                    .filter(|(o, _)| {
                        o["code"]["coding"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| c["code"] == *code && c["system"] == "http://loinc.org")
                    })
                    .map(|(_, id)| id.clone())
                    .collect(),
            );
            let got = all_matches(
                app,
                &format!("Observation?patient={pid}&code=http://loinc.org|{code}&_count=200"),
            )
            .await;
            assert_eq!(got, want, "{name}: code {code}");
            checked += 1;
        }
        // date: Observations on or after 2015, by effectiveDateTime.
        let cut = chrono::DateTime::parse_from_rfc3339("2015-01-01T00:00:00Z").expect("t");
        let want = sorted(
            observations
                .iter()
                .filter(|(o, _)| instant(&o["effectiveDateTime"]).is_some_and(|t| t >= cut))
                .map(|(_, id)| id.clone())
                .collect(),
        );
        assert_eq!(
            all_matches(
                app,
                &format!(
                    "Observation?subject=Patient/{pid}&date=ge2015-01-01T00:00:00Z&_count=500"
                )
            )
            .await,
            want,
            "{name}: date"
        );
        // quantity: values above 100 in any unit.
        let want = sorted(
            observations
                .iter()
                .filter(|(o, _)| {
                    o["valueQuantity"]["value"]
                        .as_f64()
                        .is_some_and(|v| v > 100.0)
                })
                .map(|(_, id)| id.clone())
                .collect(),
        );
        assert_eq!(
            all_matches(
                app,
                &format!("Observation?patient={pid}&value-quantity=gt100&_count=500")
            )
            .await,
            want,
            "{name}: quantity"
        );
        // reference: every Condition and Encounter of the patient.
        for rt in ["Condition", "Encounter"] {
            let want = sorted(of_patient(rt).into_iter().map(|(_, id)| id).collect());
            assert_eq!(
                all_matches(app, &format!("{rt}?patient=Patient/{pid}&_count=500")).await,
                want,
                "{name}: {rt}"
            );
        }
        // blind-indexed string and token: the patient by family name prefix and identifier.
        let family = patient["name"][0]["family"].as_str().expect("family");
        let found = all_matches(
            app,
            &format!(
                "Patient?family={}",
                &family[..family.len().min(4)].to_lowercase()
            ),
        )
        .await;
        assert!(found.contains(&format!("Patient/{pid}")), "{name}: family");
        let ident = &patient["identifier"][1];
        let token = format!(
            "{}|{}",
            ident["system"].as_str().expect("s"),
            ident["value"].as_str().expect("v")
        );
        assert_eq!(
            all_matches(app, &format!("Patient?identifier={token}")).await,
            [format!("Patient/{pid}")],
            "{name}: identifier"
        );
        // chain and reverse chain.
        let want = sorted(observations.iter().map(|(_, id)| id.clone()).collect());
        assert_eq!(
            all_matches(
                app,
                &format!("Observation?subject:Patient.identifier={token}&_count=1000")
            )
            .await,
            want,
            "{name}: chain"
        );
        if let Some(code) = codes.first() {
            let has = all_matches(
                app,
                &format!("Patient?_has:Observation:patient:code={code}&_id={pid}"),
            )
            .await;
            assert_eq!(has, [format!("Patient/{pid}")], "{name}: _has");
        }
        checked += 1;
    }
    assert!(checked > 10, "the oracle covered {checked} searches");
}
