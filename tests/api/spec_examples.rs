//! Round trip of the official R4 examples: every one is PUT and read back equal apart from `meta`.
//! The examples the server rejects are listed here with the defect in each.

use std::collections::BTreeMap;
use std::io::Read;

use serde_json::Value;

use crate::helpers::{json, spawn_app_with};

/// Examples that are not valid R4, with the reason. Each reason is a real defect of that example.
const KNOWN_INVALID: &[(&str, &str)] = &[
    (
        "Bundle-v2-valuesets.json",
        "CodeSystem v2-0550 has codes ending in a no-break space (U+00A0, mojibake such as 'CHEST\\u00c2\\u00a0'); R4 codes may not have leading or trailing whitespace",
    ),
    (
        "ImplementationGuide-fhir.json",
        "manifest.resource[11904] references SearchParameter/questionnaireresponse-extensions-QuestionnaireResponse-item-subject, an id of 67 characters; R4 ids have at most 64",
    ),
    ("ig-r4.json", "the same ImplementationGuide as ImplementationGuide-fhir.json, with the same 67-character id"),
    ("Questionnaire-qs1.json", "an item has no linkId, which Questionnaire.item.linkId (1..1) requires"),
];

fn examples() -> Vec<(String, Vec<u8>)> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/r4-examples.tgz");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(path).expect("fixture"),
    ));
    let mut out = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read");
        out.push((name, bytes));
    }
    out.sort();
    out
}

fn without_meta(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("meta");
    }
    v
}

#[tokio::test]
async fn every_official_example_round_trips() {
    // Two examples (Bundle-dataelements, Bundle-resources) are 20 MB, above the 16 MiB default.
    let app = spawn_app_with(|a| a.max_body_bytes = 64 * 1024 * 1024).await;
    let all = examples();
    assert_eq!(all.len(), 746);
    let mut rejected: BTreeMap<String, String> = BTreeMap::new();
    let mut differing = Vec::new();
    let mut invalid_summaries: Vec<String> = Vec::new();
    let mut audit_examples = 0;
    let mut consent_examples = 0;
    for (name, bytes) in &all {
        let original: Value = serde_json::from_slice(bytes).expect("example is JSON");
        let rt = original["resourceType"].as_str().expect("rt").to_owned();
        let id = original["id"].as_str().expect("id").to_owned();
        let (rt, id) = (rt.as_str(), id.as_str());
        if rt == "Consent" {
            // fhirgate accepts only Consents of its own profile (a patient's permit or deny for a
            // partner organisation); the specification's examples are other kinds of consent.
            consent_examples += 1;
            let resp = app.put(&format!("{rt}/{id}"), &original).await;
            assert_eq!(resp.status(), 422, "{name}");
            let oo = json(resp).await;
            assert!(oo.to_string().contains("patient-consent"), "{name}: {oo}");
            continue;
        }
        if rt == "AuditEvent" {
            // Only the server writes AuditEvents (the audit trail); the API refuses them.
            audit_examples += 1;
            let resp = app.put(&format!("{rt}/{id}"), &original).await;
            assert_eq!(resp.status(), 405, "{name}");
            continue;
        }
        let resp = app
            .client
            .put(format!("{}/{rt}/{id}", app.base))
            .header("content-type", "application/fhir+json")
            .body(bytes.clone())
            .send()
            .await
            .expect("put");
        let status = resp.status();
        if !status.is_success() {
            let oo = json(resp).await;
            let reason: Vec<String> = oo["issue"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| i["diagnostics"].as_str().unwrap_or("").to_owned())
                .collect();
            rejected.insert(name.clone(), reason.join("; "));
            continue;
        }
        let back = json(app.get(&format!("{rt}/{id}")).await).await;
        let mut orig_meta = original.get("meta").cloned().unwrap_or(Value::Null);
        let back_meta = back.get("meta").cloned().unwrap_or(Value::Null);
        // meta: the server sets versionId and lastUpdated; everything else in meta must survive.
        if let (Some(o), Some(b)) = (orig_meta.as_object_mut(), back_meta.as_object()) {
            o.remove("versionId");
            o.remove("lastUpdated");
            for (k, v) in o.iter() {
                if b.get(k) != Some(v) {
                    differing.push(format!("{name}: meta.{k}"));
                }
            }
        }
        if without_meta(back) != without_meta(original) {
            differing.push(name.clone());
        }
        // `_summary=true` keeps only summary elements, and what it keeps is still valid R4.
        let found = json(app.get(&format!("{rt}?_id={id}&_summary=true")).await).await;
        let summary = found["entry"][0]["resource"].clone();
        assert!(
            summary.get("text").is_none(),
            "{name}: narrative is not summary"
        );
        let mut bare = summary.clone();
        if let Some(tags) = bare.pointer_mut("/meta/tag").and_then(Value::as_array_mut) {
            tags.retain(|t| t["code"] != "SUBSETTED");
            if tags.is_empty() {
                if let Some(m) = bare.pointer_mut("/meta").and_then(Value::as_object_mut) {
                    m.remove("tag");
                }
            }
        }
        if let Err(e) = fhirgate::fhir::write::check_resource(bare, rt, Some(id)) {
            invalid_summaries.push(format!("{name}: {e:?}"));
        }
    }
    assert!(
        invalid_summaries.is_empty(),
        "summaries that are not valid: {invalid_summaries:#?}"
    );
    assert_eq!(audit_examples, 9, "the R4 package's AuditEvent examples");
    assert_eq!(consent_examples, 12, "the R4 package's Consent examples");
    let expected: BTreeMap<String, String> = KNOWN_INVALID
        .iter()
        .map(|(n, r)| ((*n).to_owned(), (*r).to_owned()))
        .collect();
    let unexplained: Vec<_> = rejected
        .iter()
        .filter(|(n, _)| !expected.contains_key(*n))
        .collect();
    assert!(
        unexplained.is_empty(),
        "rejected without a listed defect: {unexplained:#?}"
    );
    let accepted_now: Vec<_> = expected
        .keys()
        .filter(|n| !rejected.contains_key(*n))
        .collect();
    assert!(
        accepted_now.is_empty(),
        "listed as invalid but accepted: {accepted_now:?}"
    );
    assert!(
        differing.is_empty(),
        "changed on the round trip: {differing:#?}"
    );
    search_matches_an_oracle_over_the_examples(&app, &all).await;
}

/// Searches over the loaded examples, answered here from the example JSON itself.
async fn search_matches_an_oracle_over_the_examples(
    app: &crate::helpers::TestApp,
    all: &[(String, Vec<u8>)],
) {
    let stored: Vec<Value> = all
        .iter()
        .map(|(_, b)| serde_json::from_slice::<Value>(b).expect("json"))
        .filter(|r| !matches!(r["resourceType"].as_str(), Some("Consent" | "AuditEvent")))
        .collect();
    let ids = |rt: &str, keep: &dyn Fn(&Value) -> bool| -> Vec<String> {
        let mut v: Vec<String> = stored
            .iter()
            .filter(|r| r["resourceType"] == rt && keep(r))
            .map(|r| r["id"].as_str().unwrap_or("").to_owned())
            .collect();
        v.sort();
        v
    };
    let search = |q: String| async move {
        let b = json(app.get(&q).await).await;
        let mut v: Vec<String> = b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["search"]["mode"] == "match")
            .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
            .collect();
        v.sort();
        (v, b)
    };
    let codings = |r: &Value, path: &str| -> Vec<(String, String)> {
        let cc: Vec<&Value> = match &r[path] {
            Value::Array(a) => a.iter().collect(),
            v => vec![v],
        };
        cc.iter()
            .flat_map(|c| c["coding"].as_array().cloned().unwrap_or_default())
            .map(|c| {
                (
                    c["system"].as_str().unwrap_or("").to_owned(),
                    c["code"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    // Observation.code over every LOINC code the examples use.
    let mut loinc: Vec<String> = stored
        .iter()
        .filter(|r| r["resourceType"] == "Observation")
        .flat_map(|r| codings(r, "code"))
        .filter(|(s, _)| s == "http://loinc.org")
        .map(|(_, c)| c)
        .collect();
    loinc.sort();
    loinc.dedup();
    assert!(loinc.len() > 20);
    for code in &loinc {
        let want = ids("Observation", &|r: &Value| {
            codings(r, "code")
                .iter()
                .any(|(s, c)| s == "http://loinc.org" && c == code)
        });
        let (got, _) = search(format!(
            "Observation?code=http://loinc.org|{code}&_count=1000"
        ))
        .await;
        assert_eq!(got, want, "Observation code {code}");
    }
    // Patient gender, Condition clinical status, Observation status: every value used.
    for (rt, param, field) in [
        ("Patient", "gender", "gender"),
        ("Observation", "status", "status"),
        ("Encounter", "status", "status"),
    ] {
        let mut values: Vec<String> = stored
            .iter()
            .filter(|r| r["resourceType"] == rt)
            .filter_map(|r| r[field].as_str().map(str::to_owned))
            .collect();
        values.sort();
        values.dedup();
        for v in values {
            let want = ids(rt, &|r: &Value| r[field] == v.as_str());
            let (got, _) = search(format!("{rt}?{param}={v}&_count=1000")).await;
            assert_eq!(got, want, "{rt}?{param}={v}");
        }
    }
    // _summary=count agrees with the oracle; _id lists exactly.
    let all_obs = ids("Observation", &|_: &Value| true);
    let (_, b) = search("Observation?_summary=count".to_owned()).await;
    assert_eq!(b["total"], all_obs.len());
    let (got, _) = search(format!("Observation?_id={}", all_obs[..3].join(","))).await;
    assert_eq!(got, all_obs[..3].to_vec());
}
