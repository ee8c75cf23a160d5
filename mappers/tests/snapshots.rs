//! Snapshot tests: every fixture of every source is mapped and the full FHIR output (plus errors
//! and skip counts) compared with the committed snapshot in `tests/snapshots/`. Every produced
//! resource must also pass the server's own validator (`fhirgate_codec::validate`).

mod common;

use fhirgate_mappers::Source;

fn snapshot_dir(source: Source, dir: &str) {
    let ctx = common::ctx(source);
    for name in common::fixture_names(dir) {
        let rendered = common::render(source, &format!("{dir}/{name}"), &ctx);
        let snap = format!("{dir}__{}", name.replace('.', "_"));
        // Rendered as text: serde_json's `arbitrary_precision` (enabled by fhirbolt in this
        // workspace) would otherwise show numbers as private structs in insta's JSON.
        insta::assert_snapshot!(snap, serde_json::to_string_pretty(&rendered).unwrap());
    }
}

#[test]
fn withings_fixtures_map_to_the_committed_snapshots() {
    snapshot_dir(Source::Withings, "withings");
}

#[test]
fn fitbit_fixtures_map_to_the_committed_snapshots() {
    snapshot_dir(Source::Fitbit, "fitbit");
}

#[test]
fn oura_fixtures_map_to_the_committed_snapshots() {
    snapshot_dir(Source::Oura, "oura");
}

#[test]
fn google_fit_fixtures_map_to_the_committed_snapshots() {
    snapshot_dir(Source::GoogleFit, "googlefit");
}

#[test]
fn apple_health_fixtures_map_to_the_committed_snapshots() {
    snapshot_dir(Source::AppleHealth, "apple_health");
}

#[test]
fn healthkit_fixtures_map_to_the_committed_snapshots() {
    snapshot_dir(Source::HealthKit, "healthkit");
}
