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
    let mut audit_examples = 0;
    let mut consent_examples = 0;
    for (name, bytes) in &all {
        let original: Value = serde_json::from_slice(bytes).expect("example is JSON");
        let rt = original["resourceType"].as_str().expect("rt");
        let id = original["id"].as_str().expect("id");
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
    }
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
}
