//! Consents are written only in fhirgate's profile (issue "Patient consent"): a patient's permit
//! or deny for a partner organisation, for data classes of the ValueSet.

use serde_json::{json, Value};

use crate::audit::token;
use crate::helpers::{assert_outcome, expressions, spawn_app, TestApp};

/// A permit for `org` to see `classes` of patient `pid` for treatment this year.
pub(crate) fn consent(pid: &str, org: &str, classes: &[&str]) -> Value {
    json!({
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{pid}")},
        "provision": {
            "type": "permit",
            "period": {"start": "2026-01-01", "end": "2027-12-31"},
            "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                       "reference": {"reference": format!("Organization/{org}")}}],
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
            "class": classes.iter().map(|c| json!({"system": "https://fhirgate.org/CodeSystem/data-class", "code": c})).collect::<Vec<_>>()
        }
    })
}

async fn post(app: &TestApp, bearer: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/Consent", app.base))
        .bearer_auth(bearer)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .expect("post")
}

#[tokio::test]
async fn patients_write_consents_of_the_profile_and_others_are_422() {
    let app = spawn_app().await;
    let me = token(&app, "phone-app", "patient/Consent.cruds", Some("p1"), None);
    let resp = post(&app, &me, &consent("p1", "acme", &["vital-signs"])).await;
    assert_eq!(resp.status(), 201);

    // A class outside the ValueSet, an actor that is not an Organization, another scope.
    let mut bad = consent("p1", "acme", &["genome"]);
    bad["provision"]["actor"][0]["reference"]["reference"] = json!("Practitioner/x");
    bad["scope"]["coding"][0]["code"] = json!("research");
    let resp = post(&app, &me, &bad).await;
    let oo = assert_outcome(resp, 422, "invalid").await;
    assert_eq!(
        expressions(&oo),
        [
            "Consent.scope",
            "Consent.provision.actor[0].reference",
            "Consent.provision.class[0]"
        ]
    );

    // A permit that names nobody is refused; a patient cannot write another patient's consent.
    let mut nobody = consent("p1", "acme", &["sleep"]);
    nobody["provision"]
        .as_object_mut()
        .expect("object")
        .remove("actor");
    let oo = assert_outcome(post(&app, &me, &nobody).await, 422, "invalid").await;
    assert_eq!(expressions(&oo), ["Consent.provision.actor"]);
    let resp = post(&app, &me, &consent("p2", "acme", &["sleep"])).await;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        app.count("resource where resource_type = 'Consent'").await,
        1
    );
}

/// An Observation of `class` (a category) for patient `pid`, created by the first-party client.
async fn observation_of(app: &TestApp, pid: &str, class: &str) -> String {
    let mut o = crate::helpers::observation(pid, 60.0);
    if class != "vital-signs" {
        o["category"] = json!([{"coding": [{"system": "https://fhirgate.org/CodeSystem/data-class", "code": class}]}]);
        o["code"] = json!({"coding": [{"system": "http://loinc.org", "code": "93832-4", "display": "Sleep duration"}]});
        o["valueQuantity"] =
            json!({"value": 7.5, "unit": "h", "system": "http://unitsofmeasure.org", "code": "h"});
    }
    let resp = app.post("Observation", &o).await;
    assert_eq!(resp.status(), 201);
    crate::helpers::json(resp).await["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

/// The ids a partner's search returns.
async fn search_ids(app: &TestApp, org: &str, query: &str) -> Vec<String> {
    let resp = partner_read(app, org, query).await;
    assert_eq!(resp.status(), 200, "{query}");
    let b = crate::helpers::json(resp).await;
    b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect()
}

async fn partner_read(app: &TestApp, org: &str, path: &str) -> reqwest::Response {
    let t = token(
        app,
        &format!("{org}-app"),
        "system/*.rs",
        None,
        Some(&format!("Organization/{org}")),
    );
    reqwest::Client::new()
        .get(format!("{}/{path}", app.base))
        .bearer_auth(t)
        .header("x-purpose-of-use", "TREAT")
        .send()
        .await
        .expect("read")
}

#[tokio::test]
async fn a_partner_reads_only_what_the_patient_consented_to() {
    let app = spawn_app().await;
    let vital = observation_of(&app, "p1", "vital-signs").await;
    let sleep = observation_of(&app, "p1", "sleep").await;
    let read = |org: &'static str, id: &str| {
        let path = format!("Observation/{id}");
        let app = &app;
        async move { partner_read(app, org, &path).await.status().as_u16() }
    };

    // No consent: exactly like a missing id, and nothing about the data.
    let resp = partner_read(&app, "acme", &format!("Observation/{vital}")).await;
    let oo = assert_outcome(resp, 404, "not-found").await;
    assert!(!oo.to_string().contains("8867-4"));

    // The patient grants acme vital signs: vital signs yes, sleep no, globex nothing.
    let me = token(&app, "phone-app", "patient/Consent.cruds", Some("p1"), None);
    let resp = post(&app, &me, &consent("p1", "acme", &["vital-signs"])).await;
    assert_eq!(resp.status(), 201);
    let granted = crate::helpers::json(resp).await;
    assert_eq!(read("acme", &vital).await, 200);
    assert_eq!(read("acme", &sleep).await, 404);
    assert_eq!(read("globex", &vital).await, 404);
    // Without the purpose it was granted for: refused.
    let t = token(
        &app,
        "acme-app",
        "system/*.rs",
        None,
        Some("Organization/acme"),
    );
    let resp = reqwest::Client::new()
        .get(format!("{}/Observation/{vital}", app.base))
        .bearer_auth(t)
        .send()
        .await
        .expect("read");
    assert_eq!(resp.status(), 404);
    // A search finds only the permitted resources of consenting patients, filtered in SQL.
    let other_patient = observation_of(&app, "p2", "vital-signs").await;
    assert_eq!(
        search_ids(&app, "acme", "Observation").await,
        std::slice::from_ref(&vital)
    );
    assert!(search_ids(&app, "globex", "Observation").await.is_empty());
    assert!(!search_ids(&app, "acme", "Observation")
        .await
        .contains(&other_patient));
    // A partner discovers the Consents that name it, and only those.
    let theirs = post(&app, &me, &consent("p1", "globex", &["sleep"])).await;
    assert_eq!(theirs.status(), 201);
    let found = search_ids(&app, "acme", "Consent").await;
    assert_eq!(found, [granted["id"].as_str().expect("id").to_owned()]);
    // History and Bundles stay refused for partners.
    assert_eq!(
        partner_read(&app, "acme", "Observation/_history")
            .await
            .status(),
        403
    );

    // A deny inside the permit; then an expired period; then revocation: each on the next request.
    let id = granted["id"].as_str().expect("id").to_owned();
    let put = |body: Value| {
        let (app, me, id) = (&app, me.clone(), id.clone());
        async move {
            reqwest::Client::new()
                .put(format!("{}/Consent/{id}", app.base))
                .bearer_auth(me)
                .header("content-type", "application/fhir+json")
                .body(body.to_string())
                .send()
                .await
                .expect("put")
                .status()
                .as_u16()
        }
    };
    let mut everything_but_sleep = consent("p1", "acme", &["everything"]);
    everything_but_sleep["id"] = json!(id);
    everything_but_sleep["provision"]["provision"] = json!([{"type": "deny",
        "class": [{"system": "https://fhirgate.org/CodeSystem/data-class", "code": "sleep"}]}]);
    assert_eq!(put(everything_but_sleep.clone()).await, 200);
    assert_eq!(read("acme", &vital).await, 200);
    assert_eq!(read("acme", &sleep).await, 404);
    assert_eq!(
        search_ids(&app, "acme", "Observation").await,
        std::slice::from_ref(&vital)
    );

    let mut expired = everything_but_sleep.clone();
    let yesterday = (chrono::Utc::now() - chrono::Duration::days(1))
        .format("%Y-%m-%d")
        .to_string();
    expired["provision"]["period"] = json!({"start": "2020-01-01", "end": yesterday});
    assert_eq!(put(expired).await, 200);
    assert_eq!(read("acme", &vital).await, 404);

    assert_eq!(put(everything_but_sleep.clone()).await, 200);
    assert_eq!(read("acme", &vital).await, 200);
    let mut revoked = everything_but_sleep;
    revoked["status"] = json!("inactive");
    assert_eq!(put(revoked).await, 200);
    assert_eq!(read("acme", &vital).await, 404);
    assert!(search_ids(&app, "acme", "Observation").await.is_empty());
}

#[tokio::test]
async fn two_partners_with_different_consents_on_one_patient() {
    let app = spawn_app().await;
    let vital = observation_of(&app, "p1", "vital-signs").await;
    let sleep = observation_of(&app, "p1", "sleep").await;
    let me = token(&app, "phone-app", "patient/Consent.cruds", Some("p1"), None);
    for (org, classes) in [("acme", vec!["vital-signs"]), ("globex", vec!["sleep"])] {
        let resp = post(&app, &me, &consent("p1", org, &classes)).await;
        assert_eq!(resp.status(), 201);
    }
    let status = |org: &'static str, id: String| {
        let app = &app;
        async move {
            partner_read(app, org, &format!("Observation/{id}"))
                .await
                .status()
                .as_u16()
        }
    };
    assert_eq!(status("acme", vital.clone()).await, 200);
    assert_eq!(status("acme", sleep.clone()).await, 404);
    assert_eq!(status("globex", vital.clone()).await, 404);
    assert_eq!(status("globex", sleep.clone()).await, 200);
    assert_eq!(
        search_ids(&app, "acme", "Observation").await,
        std::slice::from_ref(&vital)
    );
    assert_eq!(search_ids(&app, "globex", "Observation").await, [sleep]);

    // A deny by code inside a permit hides that code from searches as well as reads.
    let mut no_heart_rate = consent("p1", "initech", &["everything"]);
    no_heart_rate["provision"]["provision"] = json!([{"type": "deny",
        "code": [{"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}]}]);
    assert_eq!(post(&app, &me, &no_heart_rate).await.status(), 201);
    let found = search_ids(&app, "initech", "Observation").await;
    assert!(!found.contains(&vital), "{found:?}");
    assert_eq!(found.len(), 1, "the sleep Observation only");
    assert_eq!(status("initech", vital).await, 404);
}

#[tokio::test]
async fn headless_chromium_grants_and_revokes_a_partner_on_the_sharing_page() {
    let app = spawn_app().await;
    let key = crate::helpers::es384_key("k1");
    crate::auth::register(
        &app,
        "acme-backend",
        &key,
        "system/*.rs",
        Some("Organization/acme"),
    )
    .await;
    let mut b = crate::smart_app::Browser::new(&app);
    b.sign_up("sharer@example.org").await;
    let pid = b.patient_id().await;
    let vital = observation_of(&app, &pid, "vital-signs").await;
    let sleep = observation_of(&app, &pid, "sleep").await;
    let root = app.base.trim_end_matches("/fhir").to_owned();
    let run = |mode: &'static str| {
        let root = root.clone();
        async move {
            crate::helpers::browser_script(
                "sharing.mjs",
                &[
                    &root,
                    "sharer@example.org",
                    crate::smart_app::PASSWORD,
                    "acme",
                    mode,
                ],
            )
            .await
        }
    };
    assert!(search_ids(&app, "acme", "Observation").await.is_empty());

    let granted = run("grant").await;
    assert_eq!(granted["checked"], json!(["acme-vital-signs"]));
    assert_eq!(
        search_ids(&app, "acme", "Observation").await,
        std::slice::from_ref(&vital)
    );
    let read = partner_read(&app, "acme", &format!("Observation/{sleep}")).await;
    assert_eq!(read.status(), 404);

    let revoked = run("revoke").await;
    assert_eq!(revoked["checked"], json!([]));
    assert!(search_ids(&app, "acme", "Observation").await.is_empty());
    let read = partner_read(&app, "acme", &format!("Observation/{vital}")).await;
    assert_eq!(read.status(), 404);
    let history: Vec<&str> = revoked["history"]
        .as_array()
        .expect("history")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(history.len(), 2, "{history:?}");
    assert!(history[0].ends_with("stopped sharing with Organization/acme"));
    assert!(history[1].ends_with("shared vital-signs with Organization/acme"));
}

#[tokio::test]
async fn includes_everything_lastn_stats_and_totals_never_leak_to_a_partner() {
    let app = spawn_app().await;
    let patient = json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Doe"}],
        "identifier": [{"system": "urn:mrn", "value": "M-1"}]});
    assert_eq!(app.put("Patient/p1", &patient).await.status(), 201);
    let sleep = observation_of(&app, "p1", "sleep").await;
    let mut v = crate::helpers::observation("p1", 61.0);
    v["id"] = json!("vital");
    v["derivedFrom"] = json!([{"reference": format!("Observation/{sleep}")}]);
    assert_eq!(app.put("Observation/vital", &v).await.status(), 201);
    let other = observation_of(&app, "p2", "vital-signs").await;
    let me = token(&app, "phone-app", "patient/Consent.cruds", Some("p1"), None);
    let resp = post(&app, &me, &consent("p1", "acme", &["vital-signs"])).await;
    assert_eq!(resp.status(), 201);
    let consent_id = crate::helpers::json(resp).await["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let bundle = |q: &'static str| {
        let app = &app;
        async move {
            let resp = partner_read(app, "acme", q).await;
            assert_eq!(resp.status(), 200, "{q}");
            crate::helpers::json(resp).await
        }
    };
    let all_ids = |b: &Value| -> Vec<String> {
        let mut v: Vec<String> = b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
            .collect();
        v.sort();
        v
    };
    // Searches with criteria, chains and includes: the permitted vital sign only.
    assert_eq!(
        search_ids(&app, "acme", "Observation?code=8867-4").await,
        ["vital"]
    );
    // A chain is evaluated over what the partner may see: the Patient's demographics were not
    // shared, so they select nothing (else they could be read back through the chain).
    assert!(search_ids(
        &app,
        "acme",
        "Observation?subject:Patient.identifier=urn:mrn|M-1"
    )
    .await
    .is_empty());
    let b = bundle(
        "Observation?code=8867-4&_include=Observation:patient&_include=Observation:derived-from",
    )
    .await;
    assert_eq!(
        all_ids(&b),
        ["vital"],
        "neither the Patient (no class granted) nor the sleep record"
    );
    let b =
        bundle("Observation?_id=vital&_revinclude=Observation:derived-from&_total=accurate").await;
    assert_eq!(b["total"], 1);
    // $everything, $lastn and $stats see the same (and the Consent naming the partner).
    let with_consent = |ids: &[&str]| {
        let mut v: Vec<String> = ids.iter().map(|s| (*s).to_owned()).collect();
        v.push(consent_id.clone());
        v.sort();
        v
    };
    assert_eq!(
        all_ids(&bundle("Patient/p1/$everything").await),
        with_consent(&["vital"])
    );
    // A patient who shares nothing with the partner answers like one that does not exist.
    assert_eq!(
        partner_read(&app, "acme", "Patient/p2/$everything")
            .await
            .status(),
        404
    );
    assert_eq!(
        all_ids(&bundle("Observation/$lastn?patient=p1").await),
        ["vital"]
    );
    let s = bundle("Observation/$stats?patient=p1").await;
    let codes: Vec<&str> = s["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["resource"]["code"]["coding"][0]["code"].as_str())
        .collect();
    assert_eq!(codes, ["8867-4"]);
    assert!(!search_ids(&app, "acme", "Observation")
        .await
        .contains(&other));
    // A compartment search of a patient who did not consent: nothing.
    assert!(search_ids(&app, "acme", "Patient/p2/Observation")
        .await
        .is_empty());

    // Everything: now the Patient is visible and included, the sleep record still not
    // (a deny for sleep inside).
    let mut wider = consent("p1", "acme", &["everything"]);
    wider["id"] = json!(consent_id);
    wider["provision"]["provision"] = json!([{"type": "deny",
        "class": [{"system": "https://fhirgate.org/CodeSystem/data-class", "code": "sleep"}]}]);
    let resp = reqwest::Client::new()
        .put(format!("{}/Consent/{consent_id}", app.base))
        .bearer_auth(&me)
        .header("content-type", "application/fhir+json")
        .body(wider.to_string())
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 200);
    let b = bundle(
        "Observation?code=8867-4&_include=Observation:patient&_include=Observation:derived-from",
    )
    .await;
    assert_eq!(all_ids(&b), ["p1", "vital"]);
    assert_eq!(
        all_ids(&bundle("Patient/p1/$everything").await),
        with_consent(&["p1", "vital"])
    );

    // Revoked: the very next search, include and $everything show nothing.
    let mut revoked = wider;
    revoked["status"] = json!("inactive");
    let resp = reqwest::Client::new()
        .put(format!("{}/Consent/{consent_id}", app.base))
        .bearer_auth(&me)
        .header("content-type", "application/fhir+json")
        .body(revoked.to_string())
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        all_ids(&bundle("Patient/p1/$everything").await),
        with_consent(&[])
    );
    assert!(all_ids(&bundle("Observation?_include=Observation:patient").await).is_empty());
    let b = bundle("Observation?_summary=count").await;
    assert_eq!(b["total"], 0);
}

/// R4's usage of `provision.class`: a resource type (`http://hl7.org/fhir/resource-types`),
/// accepted and enforced alongside the data classes, for reads, searches and operations.
#[tokio::test]
async fn consents_by_resource_type_are_accepted_and_enforced() {
    let app = spawn_app().await;
    let vital = observation_of(&app, "p1", "vital-signs").await;
    let sleep = observation_of(&app, "p1", "sleep").await;
    let condition = crate::helpers::json(
        app.post(
            "Condition",
            &json!({"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
                    "code": {"text": "asthma"}}),
        )
        .await,
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let me = token(&app, "phone-app", "patient/Consent.cruds", Some("p1"), None);
    let type_class = |t: &str| json!({"system": "http://hl7.org/fhir/resource-types", "code": t});
    // An unknown type is refused, naming the element.
    let mut bad = consent("p1", "acme", &[]);
    bad["provision"]["class"] = json!([type_class("Observatoin")]);
    let oo = crate::helpers::json(post(&app, &me, &bad).await).await;
    assert!(
        oo.to_string().contains("Consent.provision.class[0]"),
        "{oo}"
    );
    // Every Observation, whatever its data class; nothing else.
    let mut by_type = consent("p1", "acme", &[]);
    by_type["provision"]["class"] = json!([type_class("Observation")]);
    let resp = post(&app, &me, &by_type).await;
    assert_eq!(resp.status(), 201);
    let consent_id = crate::helpers::json(resp).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let status = |id: String| {
        let app = &app;
        async move { partner_read(app, "acme", &id).await.status().as_u16() }
    };
    assert_eq!(status(format!("Observation/{vital}")).await, 200);
    assert_eq!(status(format!("Observation/{sleep}")).await, 200);
    assert_eq!(status(format!("Condition/{condition}")).await, 404);
    let mut seen = search_ids(&app, "acme", "Observation").await;
    seen.sort();
    let mut both = vec![vital.clone(), sleep.clone()];
    both.sort();
    assert_eq!(seen, both);
    assert!(search_ids(&app, "acme", "Condition").await.is_empty());
    let everything =
        crate::helpers::json(partner_read(&app, "acme", "Patient/p1/$everything").await).await;
    assert!(!everything.to_string().contains(&condition), "{everything}");
    // A deny by type takes away what a data class permits.
    let mut class_but_not_observations = consent("p1", "acme", &["vital-signs"]);
    class_but_not_observations["id"] = json!(consent_id);
    class_but_not_observations["provision"]["provision"] =
        json!([{"type": "deny", "class": [type_class("Observation")]}]);
    let resp = app_put(&app, &me, &consent_id, &class_but_not_observations).await;
    assert_eq!(resp, 200);
    assert_eq!(status(format!("Observation/{vital}")).await, 404);
    assert!(search_ids(&app, "acme", "Observation").await.is_empty());
    let lastn =
        crate::helpers::json(partner_read(&app, "acme", "Observation/$lastn?patient=p1").await)
            .await;
    assert!(lastn.get("entry").is_none(), "{lastn}");
}

async fn app_put(app: &TestApp, bearer: &str, id: &str, body: &Value) -> u16 {
    reqwest::Client::new()
        .put(format!("{}/Consent/{id}", app.base))
        .bearer_auth(bearer)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .expect("put")
        .status()
        .as_u16()
}
