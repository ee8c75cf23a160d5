//! Rough timing of extraction. The assertion is loose (debug builds and shared CI machines
//! are slow); run `cargo test --release -p fhirgate-fhirpath --test perf -- --ignored
//! --nocapture` for the figures.

use std::time::Instant;

use fhirgate_fhirpath::extract;
use serde_json::{json, Value};

fn typical_observation() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
        "meta": {"versionId": "1", "lastUpdated": "2024-05-01T10:00:00.123Z",
                 "profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"]},
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4",
                             "display": "Heart rate"}], "text": "Heart rate"},
        "subject": {"reference": "Patient/0190a1b2-0000-7000-8000-000000000001"},
        "device": {"reference": "Device/watch-1"},
        "effectiveDateTime": "2024-05-01T09:59:30+02:00",
        "issued": "2024-05-01T10:00:00.123Z",
        "valueQuantity": {"value": 72, "unit": "beats/minute",
                          "system": "http://unitsofmeasure.org", "code": "/min"}
    })
}

fn time_per_call(resource: &Value, rounds: u32) -> f64 {
    let start = Instant::now();
    let mut n = 0;
    for _ in 0..rounds {
        n += extract(std::hint::black_box(resource)).len();
    }
    assert!(n > 0);
    start.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
}

#[test]
fn extraction_is_not_pathologically_slow() {
    let obs = typical_observation();
    let _ = extract(&obs); // load the registry outside the timing
    let us = time_per_call(&obs, 200);
    // Generous bound for unoptimised builds; release figures are printed by the ignored test.
    assert!(us < 5_000.0, "{us:.1} µs per Observation");
}

#[test]
#[ignore = "timing figures; run in release with --ignored --nocapture"]
fn timing_figures() {
    let start = Instant::now();
    let obs = typical_observation();
    let n = extract(&obs).len();
    println!(
        "first call (loads model and {} parameters): {:.1} ms, {n} entries",
        fhirgate_fhirpath::all_parameters().len(),
        start.elapsed().as_secs_f64() * 1e3
    );
    let us = time_per_call(&obs, 100_000);
    println!(
        "typical Observation: {us:.2} µs per extract ({:.0}/s on one core)",
        1e6 / us
    );
    let patient = json!({
        "resourceType": "Patient", "id": "p1",
        "meta": {"lastUpdated": "2024-05-01T10:00:00Z"},
        "identifier": [{"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
        "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]}],
        "telecom": [{"system": "phone", "value": "(03) 5555 6473", "use": "work"}],
        "gender": "male", "birthDate": "1974-12-25",
        "address": [{"line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999"}],
        "managingOrganization": {"reference": "Organization/1"}
    });
    let us = time_per_call(&patient, 50_000);
    println!("typical Patient: {us:.2} µs per extract");

    // The official examples: total and slowest.
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/r4-examples.tgz"
    );
    let file = std::fs::File::open(path).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut resources = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut entry.unwrap(), &mut text).unwrap();
        resources.push(serde_json::from_str::<Value>(&text).unwrap());
    }
    let mut slowest = (0.0, String::new());
    let start = Instant::now();
    for r in &resources {
        let us = time_per_call(r, 5);
        if us > slowest.0 {
            slowest = (us, format!("{}/{}", r["resourceType"], r["id"]));
        }
    }
    println!(
        "{} examples x5: {:.1} ms; slowest {} at {:.0} µs",
        resources.len(),
        start.elapsed().as_secs_f64() * 1e3,
        slowest.1,
        slowest.0
    );
}
