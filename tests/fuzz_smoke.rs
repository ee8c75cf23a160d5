//! The fuzz smoke of CI: every target of `fhirgate::fuzz` on its seed corpus and a few hundred
//! mutations of it, which must not panic. `fhirgate-fuzz` runs the same for hours
//! (docs/fuzzing.md); `FHIRGATE_FUZZ_RUNS` raises the count here.

use std::time::Duration;

fn runs() -> u64 {
    std::env::var("FHIRGATE_FUZZ_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn smoke(name: &str) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let targets = fhirgate::fuzz::targets();
    let target = targets
        .iter()
        .find(|t| t.name == name)
        .expect("a target of that name");
    // Seeds small enough for a debug build to get through many mutations.
    let seeds = fhirgate::fuzz::seeds(root, name, 16 * 1024);
    assert!(!seeds.is_empty(), "{name} has seeds");
    let report = fhirgate::fuzz::run(target, &seeds, runs(), Duration::from_secs(60), 7);
    assert!(
        report.findings.is_empty(),
        "{name} panicked on {} inputs; the first (lossy): {}",
        report.findings.len(),
        String::from_utf8_lossy(&report.findings[0])
            .chars()
            .take(400)
            .collect::<String>()
    );
}

#[test]
fn json_resources() {
    smoke("json-resource");
}

#[test]
fn xml_resources() {
    smoke("xml-resource");
}

#[test]
fn smart_scopes() {
    smoke("smart-scopes");
}

#[test]
fn mappers() {
    for name in [
        "mapper-apple-health",
        "mapper-healthkit",
        "mapper-fitbit",
        "mapper-google-fit",
        "mapper-oura",
        "mapper-withings",
    ] {
        smoke(name);
    }
}
