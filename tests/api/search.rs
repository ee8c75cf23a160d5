//! FHIR search over the SearchParameter-driven index: every parameter type, prefix and modifier,
//! chains, `_has`, includes, sorting, paging while writing, totals, summaries, strict and lenient
//! handling, compartment and system search, and the operations `$lastn`, `$everything` and
//! `$stats`. Each query is checked against the exact set of ids it must return.

use serde_json::{json, Value};

use crate::helpers::{assert_outcome, json, spawn_app, TestApp};

fn hr(id: &str, patient: &str, value: f64, at: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}], "text": "Heart rate"},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": at,
        "valueQuantity": {"value": value, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}})
}

/// A small store whose every search result is known.
async fn seed(app: &TestApp) {
    let resources = vec![
        json!({"resourceType": "Organization", "id": "org1", "name": "Acme Health"}),
        json!({"resourceType": "Patient", "id": "p1", "gender": "female", "birthDate": "1970-01-02",
            "name": [{"family": "Müller", "given": ["Anna"]}],
            "identifier": [{"system": "urn:mrn", "value": "MRN1",
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
            "telecom": [{"system": "email", "value": "anna@example.org"}],
            "managingOrganization": {"reference": "Organization/org1"}}),
        json!({"resourceType": "Patient", "id": "p2", "gender": "male", "birthDate": "1985-06",
            "name": [{"family": "Mueller", "given": ["Bob"]}],
            "identifier": [{"system": "urn:mrn", "value": "MRN2"}]}),
        json!({"resourceType": "Patient", "id": "p3", "gender": "other",
            "name": [{"family": "Smith", "given": ["Carol"]}],
            "identifier": [{"system": "urn:other", "value": "MRN1"}],
            "meta": {"tag": [{"system": "urn:tag", "code": "vip"}]}}),
        hr("o1", "p1", 72.0, "2024-03-01T08:00:00Z"),
        hr("o2", "p1", 80.0, "2024-03-02T08:00:00Z"),
        json!({"resourceType": "Observation", "id": "o3", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "activity"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "55423-8"}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-03-01",
            "valueQuantity": {"value": 1000, "unit": "steps", "system": "http://unitsofmeasure.org", "code": "{steps}"}}),
        {
            let mut o = hr("o4", "p2", 100.0, "2024-04-01T00:00:00Z");
            o["status"] = json!("preliminary");
            o["performer"] = json!([{"reference": "Organization/org1"}]);
            o
        },
        json!({"resourceType": "Observation", "id": "o5", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
            "subject": {"reference": "Patient/p2"}, "effectiveDateTime": "2024-03-15",
            "valueQuantity": {"value": 70.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}),
        json!({"resourceType": "Observation", "id": "o6", "status": "final",
            "code": {"coding": [{"code": "abc"}], "text": "Free text pulse"},
            "subject": {"reference": "Patient/p3"},
            "effectivePeriod": {"start": "2024-01-01", "end": "2024-01-31"},
            "valueString": "feeling dizzy"}),
        json!({"resourceType": "Observation", "id": "o7", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-03-03T09:00:00Z",
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                 "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                 "valueQuantity": {"value": 80, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]}),
    ];
    for r in resources {
        let path = format!(
            "{}/{}",
            r["resourceType"].as_str().unwrap(),
            r["id"].as_str().unwrap()
        );
        let resp = app.put(&path, &r).await;
        assert!(
            resp.status().is_success(),
            "{path}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
}

/// The ids of the `match` entries of a search, sorted.
async fn ids(app: &TestApp, query: &str) -> Vec<String> {
    let mut v = ordered(app, query).await;
    v.sort();
    v
}

/// The ids of the `match` entries in Bundle order.
async fn ordered(app: &TestApp, query: &str) -> Vec<String> {
    let resp = app.get(query).await;
    let status = resp.status();
    let b = json(resp).await;
    assert_eq!(status, 200, "{query}: {b}");
    entries(&b, "match")
}

fn entries(b: &Value, mode: &str) -> Vec<String> {
    b["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e["search"]["mode"] == mode)
                .map(|e| e["resource"]["id"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn every_parameter_type_prefix_and_modifier_finds_exactly_its_matches() {
    let app = spawn_app().await;
    seed(&app).await;
    let cases: &[(&str, &[&str])] = &[
        // token
        ("Observation?code=8867-4", &["o1", "o2", "o4"]),
        (
            "Observation?code=http://loinc.org|8867-4",
            &["o1", "o2", "o4"],
        ),
        ("Observation?code=http://snomed.info/sct|8867-4", &[]),
        ("Observation?code=|abc", &["o6"]),
        (
            "Observation?code=http://loinc.org|",
            &["o1", "o2", "o3", "o4", "o5", "o7"],
        ),
        ("Observation?code=8867-4,29463-7", &["o1", "o2", "o4", "o5"]),
        ("Observation?code:not=8867-4", &["o3", "o5", "o6", "o7"]),
        ("Observation?code:text=free", &["o6"]),
        ("Observation?code:text=heart", &["o1", "o2", "o4"]),
        ("Observation?status=preliminary", &["o4"]),
        ("Observation?category=activity", &["o3"]),
        ("Patient?gender=female,male", &["p1", "p2"]),
        ("Patient?identifier=MRN1", &["p1", "p3"]),
        ("Patient?identifier=urn:mrn|MRN1", &["p1"]),
        ("Patient?identifier=urn:mrn|", &["p1", "p2"]),
        (
            "Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|MRN1",
            &["p1"],
        ),
        ("Patient?email=anna@example.org", &["p1"]),
        ("Patient?_tag=urn:tag|vip", &["p3"]),
        // string (blind-indexed names: starts-with and exact, case and accent folded)
        ("Patient?family=mul", &["p1"]),
        ("Patient?family=MUELL", &["p2"]),
        ("Patient?family=Müller", &["p1"]),
        ("Patient?family:exact=Müller", &["p1"]),
        ("Patient?family:exact=müller", &[]),
        ("Patient?name=anna", &["p1"]),
        ("Patient?name=bob,carol", &["p2", "p3"]),
        ("Organization?name=acme", &["org1"]),
        ("Organization?name:contains=health", &["org1"]),
        ("Organization?name:exact=Acme", &[]),
        ("Observation?value-string=feeling", &["o6"]),
        // date (precision as ranges)
        ("Observation?date=2024-03-01", &["o1", "o3"]),
        ("Observation?date=2024-03", &["o1", "o2", "o3", "o5", "o7"]),
        ("Observation?date=ge2024-03-02", &["o2", "o4", "o5", "o7"]),
        ("Observation?date=gt2024-03-02", &["o4", "o5", "o7"]),
        (
            "Observation?date=lt2024-03-01T09:00:00Z",
            &["o1", "o3", "o6"],
        ),
        ("Observation?date=le2024-01-15", &["o6"]),
        (
            "Observation?date=ge2024-03-01&date=lt2024-03-02",
            &["o1", "o3"],
        ),
        ("Observation?date=ne2024-03", &["o4", "o6"]),
        ("Observation?date=sa2024-03-31", &["o4"]),
        ("Observation?date=eb2024-02-01", &["o6"]),
        ("Observation?date=2024-01-10", &[]),
        ("Observation?date=ap2023-10-01", &["o6"]),
        ("Patient?birthdate=1970-01-02", &["p1"]),
        ("Patient?birthdate=1970", &["p1"]),
        ("Patient?birthdate=1985-06", &["p2"]),
        // quantity and number
        ("Observation?value-quantity=72", &["o1"]),
        ("Observation?value-quantity=gt75", &["o2", "o3", "o4"]),
        ("Observation?value-quantity=le72", &["o1", "o5"]),
        (
            "Observation?value-quantity=70.5|http://unitsofmeasure.org|kg",
            &["o5"],
        ),
        ("Observation?value-quantity=70.5||kg", &["o5"]),
        (
            "Observation?value-quantity=ge70|http://unitsofmeasure.org|/min",
            &["o1", "o2", "o4"],
        ),
        ("Observation?value-quantity=ap100", &["o4"]),
        ("Observation?component-value-quantity=gt100", &["o7"]),
        // composite
        (
            "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt110",
            &["o7"],
        ),
        (
            "Observation?component-code-value-quantity=8462-4$gt110",
            &[],
        ),
        ("Observation?code-value-quantity=8867-4$lt90", &["o1", "o2"]),
        ("Observation?code-value-string=abc$Feeling Dizzy", &["o6"]),
        ("Observation?code-value-string=abc$feeling", &[]),
        // reference
        ("Observation?subject=Patient/p1", &["o1", "o2", "o3", "o7"]),
        ("Observation?subject=p2", &["o4", "o5"]),
        ("Observation?patient=p3", &["o6"]),
        ("Observation?subject:Patient=p3", &["o6"]),
        ("Observation?performer=Organization/org1", &["o4"]),
        (
            "Observation?subject=Patient/p1,Patient/p3",
            &["o1", "o2", "o3", "o6", "o7"],
        ),
        // :missing
        ("Patient?birthdate:missing=true", &["p3"]),
        ("Patient?birthdate:missing=false", &["p1", "p2"]),
        ("Observation?performer:missing=false", &["o4"]),
        // _id, _lastUpdated
        ("Observation?_id=o1,o6", &["o1", "o6"]),
        ("Patient?_lastUpdated=gt2020-01-01", &["p1", "p2", "p3"]),
        ("Patient?_lastUpdated=lt2020-01-01", &[]),
        // chains and reverse chains
        (
            "Observation?subject:Patient.identifier=urn:mrn|MRN1",
            &["o1", "o2", "o3", "o7"],
        ),
        ("Observation?subject:Patient.name=bob", &["o4", "o5"]),
        (
            "Observation?patient.organization.name=acme",
            &["o1", "o2", "o3", "o7"],
        ),
        ("Patient?_has:Observation:patient:code=29463-7", &["p2"]),
        (
            "Patient?_has:Observation:subject:status=preliminary",
            &["p2"],
        ),
        (
            "Organization?_has:Patient:organization:_has:Observation:patient:code=85354-9",
            &["org1"],
        ),
    ];
    let mut failures = Vec::new();
    for (query, expected) in cases {
        let got = ids(&app, query).await;
        let mut want: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
        if got != want {
            failures.push(format!("{query}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn sort_include_revinclude_total_summary_and_elements() {
    let app = spawn_app().await;
    seed(&app).await;
    assert_eq!(
        ordered(&app, "Observation?code=8867-4&_sort=-date").await,
        ["o4", "o2", "o1"]
    );
    assert_eq!(
        ordered(&app, "Observation?code=8867-4&_sort=value-quantity").await,
        ["o1", "o2", "o4"]
    );
    assert_eq!(
        ordered(&app, "Patient?_sort=gender,-_id").await,
        ["p1", "p2", "p3"]
    );
    // Descending date sorts by the end of each range: o3's whole day ends after o1's morning.
    assert_eq!(
        ordered(&app, "Observation?subject=p1&_sort=status,-date").await,
        ["o7", "o2", "o3", "o1"]
    );

    let b = json(
        app.get("Observation?code=29463-7&_include=Observation:patient")
            .await,
    )
    .await;
    assert_eq!(entries(&b, "match"), ["o5"]);
    assert_eq!(entries(&b, "include"), ["p2"]);
    let b = json(
        app.get(
            "Observation?_id=o1&_include=Observation:patient&_include:iterate=Patient:organization",
        )
        .await,
    )
    .await;
    assert_eq!(entries(&b, "include"), ["p1", "org1"]);
    let b = json(
        app.get("Patient?_id=p2&_revinclude=Observation:subject")
            .await,
    )
    .await;
    assert_eq!(entries(&b, "match"), ["p2"]);
    let mut inc = entries(&b, "include");
    inc.sort();
    assert_eq!(inc, ["o4", "o5"]);

    let b = json(
        app.get("Observation?code=8867-4&_total=accurate&_count=1")
            .await,
    )
    .await;
    assert_eq!(b["total"], 3);
    assert_eq!(entries(&b, "match").len(), 1);
    let b = json(app.get("Observation?code=8867-4").await).await;
    assert!(b.get("total").is_none(), "no total unless asked");
    let b = json(app.get("Observation?_summary=count&code=8867-4").await).await;
    assert_eq!(b["total"], 3);
    let b = json(
        app.get("Observation?_summary=count&code=http://loinc.org|8867-4")
            .await,
    )
    .await;
    assert_eq!(b["total"], 3);
    // A tag shared with another type counts only this type's resources.
    let mut tagged = hr("o-tag", "p2", 90.0, "2024-06-01T00:00:00Z");
    tagged["meta"] = json!({"tag": [{"system": "urn:tag", "code": "vip"}]});
    assert!(app
        .put("Observation/o-tag", &tagged)
        .await
        .status()
        .is_success());
    let b = json(app.get("Patient?_tag=urn:tag|vip&_summary=count").await).await;
    assert_eq!(b["total"], 1);
    app.delete("Observation/o-tag").await;
    let b = json(app.get("Observation?_summary=count&code=8867-4").await).await;
    assert_eq!(b["total"], 3, "a deleted resource leaves the count");
    assert!(b.get("entry").is_none());
    let b = json(app.get("Patient?_id=p1&_elements=gender").await).await;
    let p = &b["entry"][0]["resource"];
    assert_eq!(p["gender"], "female");
    assert!(p.get("name").is_none() && p.get("birthDate").is_none());
    assert_eq!(p["meta"]["tag"][0]["code"], "SUBSETTED");
    // _summary=true: the summary elements of the R4 definition, tagged SUBSETTED.
    let b = json(app.get("Patient?_id=p1&_summary=true").await).await;
    let p = &b["entry"][0]["resource"];
    assert_eq!(p["gender"], "female");
    assert_eq!(p["birthDate"], "1970-01-02");
    assert!(p.get("name").is_some() && p.get("managingOrganization").is_some());
    let b = json(app.get("Observation?_id=o1&_summary=true").await).await;
    let o = &b["entry"][0]["resource"];
    assert!(o.get("code").is_some() && o.get("effectiveDateTime").is_some());
    assert!(o.get("valueQuantity").is_some() && o.get("subject").is_some());
    assert!(
        o.get("category").is_none(),
        "category is not a summary element in R4"
    );
    assert_eq!(o["meta"]["tag"][0]["code"], "SUBSETTED");
    let b = json(app.get("Observation?_id=o1&_summary=data").await).await;
    assert!(b["entry"][0]["resource"].get("category").is_some());

    // POST _search, compartment search and system search.
    let resp = app
        .client
        .post(format!("{}/Observation/_search", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("code=8867-4&subject=p1")
        .send()
        .await
        .expect("post");
    let b = json(resp).await;
    let mut got = entries(&b, "match");
    got.sort();
    assert_eq!(got, ["o1", "o2"]);
    assert_eq!(
        ids(&app, "Patient/p2/Observation?code=8867-4").await,
        ["o4"]
    );
    assert_eq!(
        ids(&app, "?_type=Patient,Organization&_tag=urn:tag|vip").await,
        ["p3"]
    );
    assert_eq!(
        ids(&app, "?_type=Organization,Patient&_id=org1,p2").await,
        ["org1", "p2"]
    );
}

#[tokio::test]
async fn paging_links_stay_correct_while_data_is_written() {
    let app = spawn_app().await;
    seed(&app).await;
    for i in 0..7 {
        let r = app
            .put(
                &format!("Observation/w{i}"),
                &hr(
                    &format!("w{i}"),
                    "p2",
                    60.0 + f64::from(i),
                    "2024-05-01T00:00:00Z",
                ),
            )
            .await;
        assert!(r.status().is_success());
    }
    // 3 + 7 heart rates, pages of 4, newest date first.
    let url = |path: &str| path.split("/fhir/").nth(1).unwrap_or("").to_owned();
    let first = json(
        app.get("Observation?code=8867-4&_count=4&_sort=-date")
            .await,
    )
    .await;
    let page1 = entries(&first, "match");
    assert_eq!(page1.len(), 4);
    // Writes between pages: a new match sorting first and one sorting last do not shift pages.
    app.put(
        "Observation/new-first",
        &hr("new-first", "p2", 61.0, "2025-01-01T00:00:00Z"),
    )
    .await;
    app.put(
        "Observation/new-last",
        &hr("new-last", "p2", 61.0, "2020-01-01T00:00:00Z"),
    )
    .await;
    let next = first["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("next link");
    let second = json(app.get(&url(next["url"].as_str().unwrap())).await).await;
    let page2 = entries(&second, "match");
    assert_eq!(page2.len(), 4);
    assert!(
        page2.iter().all(|id| !page1.contains(id)),
        "{page1:?} {page2:?}"
    );
    let prev = second["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "previous")
        .expect("previous link");
    let back = json(app.get(&url(prev["url"].as_str().unwrap())).await).await;
    // Going back shows the four rows before page 2 (page 1), and a previous link to the row
    // written before them since.
    assert_eq!(entries(&back, "match"), page1);
    let before = back["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "previous")
        .expect("previous link");
    let front = json(app.get(&url(before["url"].as_str().unwrap())).await).await;
    assert_eq!(entries(&front, "match"), ["new-first"]);
    let next2 = second["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("next link");
    let third = json(app.get(&url(next2["url"].as_str().unwrap())).await).await;
    let page3 = entries(&third, "match");
    assert_eq!(page3.last().map(String::as_str), Some("new-last"));
    let mut all: Vec<String> = page1.iter().chain(&page2).chain(&page3).cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 11, "every match exactly once: {all:?}");
    assert!(
        !all.contains(&"new-first".to_owned()),
        "new-first sorts before the cursor"
    );
    assert!(third["link"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["relation"] != "next"));
}

#[tokio::test]
async fn one_patients_observations_by_code_and_date_page_both_ways() {
    let app = spawn_app().await;
    seed(&app).await;
    for i in 0..5 {
        let at = format!("2024-05-0{}T00:00:00Z", i + 1);
        assert!(app
            .put(
                &format!("Observation/m{i}"),
                &hr(&format!("m{i}"), "p1", 70.0, &at)
            )
            .await
            .status()
            .is_success());
    }
    let url = |l: &Value, rel: &str| -> Option<String> {
        l["link"]
            .as_array()?
            .iter()
            .find(|x| x["relation"] == rel)
            .map(|x| {
                x["url"]
                    .as_str()
                    .unwrap_or("")
                    .split("/fhir/")
                    .nth(1)
                    .unwrap_or("")
                    .to_owned()
            })
    };
    // 2 + 5 heart rates of p1, pages of 3, newest first.
    let q = "Observation?patient=p1&code=http://loinc.org|8867-4&date=ge2024-01-01&_count=3";
    let first = json(app.get(q).await).await;
    assert_eq!(entries(&first, "match"), ["m4", "m3", "m2"]);
    // A newer heart rate written while paging shows on a new first page, and moves no page.
    assert!(app
        .put(
            "Observation/m9",
            &hr("m9", "p1", 71.0, "2024-06-01T00:00:00Z")
        )
        .await
        .status()
        .is_success());
    let second = json(app.get(&url(&first, "next").expect("next")).await).await;
    assert_eq!(entries(&second, "match"), ["m1", "m0", "o2"]);
    let third = json(app.get(&url(&second, "next").expect("next")).await).await;
    assert_eq!(entries(&third, "match"), ["o1"]);
    assert!(url(&third, "next").is_none());
    let back = json(app.get(&url(&third, "previous").expect("previous")).await).await;
    assert_eq!(entries(&back, "match"), ["m1", "m0", "o2"]);
    let front = json(app.get(&url(&back, "previous").expect("previous")).await).await;
    assert_eq!(entries(&front, "match"), ["m4", "m3", "m2"]);
    let newest = json(app.get(&url(&front, "previous").expect("previous")).await).await;
    assert_eq!(entries(&newest, "match"), ["m9"]);
    assert!(url(&newest, "previous").is_none());
    // Observations without a date are found by code alone (after the dated ones) and by no
    // date range; paging crosses them both ways.
    for u in ["u0", "u1"] {
        let mut undated = hr(u, "p1", 72.0, "");
        undated.as_object_mut().unwrap().remove("effectiveDateTime");
        assert!(app
            .put(&format!("Observation/{u}"), &undated)
            .await
            .status()
            .is_success());
    }
    let q = "Observation?patient=p1&code=http://loinc.org|8867-4&_count=3";
    let mut pages = vec![json(app.get(q).await).await];
    while let Some(next) = url(pages.last().unwrap(), "next") {
        pages.push(json(app.get(&next).await).await);
    }
    let got: Vec<Vec<String>> = pages.iter().map(|p| entries(p, "match")).collect();
    assert_eq!(
        got,
        [
            vec!["m9", "m4", "m3"],
            vec!["m2", "m1", "m0"],
            vec!["o2", "o1", "u1"],
            vec!["u0"]
        ]
    );
    let back = json(
        app.get(&url(&pages[3], "previous").expect("previous"))
            .await,
    )
    .await;
    assert_eq!(entries(&back, "match"), ["o2", "o1", "u1"]);
    let back = json(app.get(&url(&back, "previous").expect("previous")).await).await;
    assert_eq!(entries(&back, "match"), ["m2", "m1", "m0"]);
    assert!(
        !ids(&app, "Observation?patient=p1&code=8867-4&date=ge1900-01-01")
            .await
            .contains(&"u0".to_owned())
    );
    assert!(
        !ids(&app, "Observation?patient=p1&code=8867-4&date=lt2100-01-01")
            .await
            .contains(&"u0".to_owned())
    );
    // $lastn: the newest dated one first; undated ones only after every dated one.
    let last = ordered(&app, "Observation/$lastn?patient=p1&code=8867-4&max=20").await;
    assert_eq!(last.first().map(String::as_str), Some("m9"));
    assert_eq!(&last[last.len() - 2..], ["u1", "u0"]);
    assert!(app.delete("Observation/u1").await.status().is_success());
    assert!(app.delete("Observation/u0").await.status().is_success());
    assert!(app.delete("Observation/m9").await.status().is_success());
    // Dates narrow it; other patients and codes stay out; OR lists of codes work.
    assert_eq!(
        ids(
            &app,
            "Observation?patient=p1&code=8867-4&date=ge2024-05-03&date=lt2024-05-05"
        )
        .await,
        ["m2", "m3"]
    );
    assert_eq!(
        ids(&app, "Observation?patient=p2&code=8867-4").await,
        ["o4"]
    );
    assert_eq!(
        ids(&app, "Observation?patient=p1&code=55423-8,85354-9").await,
        ["o3", "o7"]
    );
    assert_eq!(
        ids(
            &app,
            "Observation?subject=Patient/p1&code=8867-4&date=lt2024-03-02"
        )
        .await,
        ["o1"]
    );
}

#[tokio::test]
async fn lastn_everything_and_stats() {
    let app = spawn_app().await;
    seed(&app).await;
    // One per code, codes in order.
    assert_eq!(
        ordered(&app, "Observation/$lastn?patient=p1").await,
        ["o3", "o7", "o2"]
    );
    let mut got = ids(
        &app,
        "Observation/$lastn?patient=p1&max=2&category=vital-signs",
    )
    .await;
    got.sort();
    assert_eq!(got, ["o1", "o2", "o7"]);
    assert_eq!(
        ids(&app, "Observation/$lastn?patient=p2&code=8867-4").await,
        ["o4"]
    );

    assert_eq!(
        ids(&app, "Patient/p2/$everything").await,
        ["o4", "o5", "p2"]
    );
    assert_eq!(
        ids(&app, "Patient/p2/$everything?_type=Observation").await,
        ["o4", "o5"]
    );
    let b = json(app.get("Patient/p1/$everything?_count=2").await).await;
    assert_eq!(entries(&b, "match").len(), 2);
    assert!(b["link"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["relation"] == "next"));
    assert_eq!(
        ids(&app, "Patient/p1/$everything?_since=2999-01-01T00:00:00Z").await,
        Vec::<String>::new()
    );

    let s = json(app.get("Observation/$stats?patient=p1&code=8867-4").await).await;
    let obs = &s["parameter"][0]["resource"];
    assert_eq!(obs["code"]["coding"][0]["code"], "8867-4");
    let stat = |name: &str| {
        obs["component"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["code"]["coding"][0]["code"] == name)
            .unwrap()["valueQuantity"]["value"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(stat("count"), 2.0);
    assert_eq!(stat("minimum"), 72.0);
    assert_eq!(stat("maximum"), 80.0);
    assert_eq!(stat("average"), 76.0);
    let s = json(
        app.get("Observation/$stats?code=8867-4&period=2024-03-02/2024-12-31")
            .await,
    )
    .await;
    assert_eq!(
        s["parameter"][0]["resource"]["component"][0]["valueQuantity"]["value"],
        2
    );
}

#[tokio::test]
async fn bad_search_input_gets_a_precise_400() {
    let app = spawn_app().await;
    seed(&app).await;
    let strict = |q: &str| {
        app.client
            .get(format!("{}/{q}", app.base))
            .header("prefer", "handling=strict")
            .send()
    };
    let oo = assert_outcome(
        strict("Observation?nonsense=1").await.expect("req"),
        400,
        "invalid",
    )
    .await;
    assert!(oo.to_string().contains("nonsense"));
    // Lenient (the default): ignored and reported.
    let b = json(app.get("Observation?nonsense=1&code=abc").await).await;
    assert_eq!(entries(&b, "match"), ["o6"]);
    assert!(b.to_string().contains("nonsense"));
    for (q, param) in [
        ("Observation?date=2024-13-45", "date"),
        ("Observation?date=xx2024", "date"),
        ("Observation?value-quantity=abc", "value-quantity"),
        ("Observation?code:below=123", "code:below"),
        ("Observation?status.name=x", "status.name"),
        ("Patient?family:contains=ller", "family:contains"),
        ("Patient?birthdate=ge1970-06-15", "birthdate"),
        ("Patient?_sort=family", "_sort"),
        ("Observation?_include=Observation:status", "_include"),
        ("Observation?_total=maybe", "_total"),
        ("Observation?_summary=everything", "_summary"),
        ("Observation?performer:missing=perhaps", "performer:missing"),
        ("Observation?_cursor=garbage", "_cursor"),
        ("Observation/$lastn?max=0", "max"),
        ("Patient/p1/$everything?_since=yesterday", "_since"),
    ] {
        let resp = app.get(q).await;
        assert_eq!(resp.status(), 400, "{q}");
        let oo = json(resp).await;
        assert_eq!(oo["resourceType"], "OperationOutcome", "{q}");
        assert!(oo.to_string().contains(param), "{q}: {oo}");
    }
}

#[tokio::test]
async fn person_identifying_values_are_only_in_blind_indexes() {
    let app = spawn_app().await;
    seed(&app).await;
    for (table, column) in [
        ("idx_string", "norm"),
        ("idx_string", "exact"),
        ("idx_token", "code"),
        ("idx_token", "system"),
    ] {
        let sql = format!("select count(*) from {table} where {column} ilike any(array['%müller%', '%mueller%', '%anna%', '%mrn1%', '%anna@example.org%', '%urn:mrn%', '%1970-01-02%', '%dizzy%'])");
        let n: i64 = sqlx::query_scalar(&sql)
            .fetch_one(&app.pool)
            .await
            .expect("query");
        assert_eq!(n, 0, "{table}.{column} holds a person-identifying value");
    }
    let n: i64 = sqlx::query_scalar("select count(*) from idx_blind")
        .fetch_one(&app.pool)
        .await
        .expect("q");
    assert!(
        n > 20,
        "names, identifiers, telecom and birth dates are blind-indexed"
    );
    // A patient token searching finds only its own compartment.
    let now = chrono::Utc::now().timestamp();
    let claims = fhirgate::auth::jwt::AccessClaims {
        iss: app.state.issuer.clone(),
        aud: app.state.fhir_base.clone(),
        sub: "patient-app".into(),
        exp: now + 3600,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        scope: "patient/*.rs".into(),
        client_id: "patient-app".into(),
        patient: Some("p1".into()),
        organization: None,
    };
    let token = app.state.signing.sign(&claims).expect("sign");
    let resp = reqwest::Client::new()
        .get(format!("{}/Observation?code=8867-4", app.base))
        .bearer_auth(token)
        .send()
        .await
        .expect("req");
    let b = json(resp).await;
    let mut got = entries(&b, "match");
    got.sort();
    assert_eq!(got, ["o1", "o2"]);
}
