//! Helpers shared by the integration tests: fixture loading, contexts and FHIR validation.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

use fhirgate_mappers::{map, MapContext, MapOutput, Source};
use serde_json::{json, Value};

/// The fixtures folder of this crate.
pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Reads `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(rel)).unwrap_or_else(|e| panic!("reading fixture {rel}: {e}"))
}

/// The file names in `tests/fixtures/<dir>`, sorted.
pub fn fixture_names(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures().join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The context the fixture tests use: patient `example`; Fitbit gets a profile time zone.
pub fn ctx(source: Source) -> MapContext {
    let mut c = MapContext::new("example");
    if source == Source::Fitbit {
        c.default_time_zone = Some(chrono_tz::America::New_York);
    }
    c
}

/// Panics unless every resource passes the server's validator.
#[track_caller]
pub fn assert_all_valid(out: &MapOutput) {
    for r in &out.resources {
        if let Err(issues) = fhirgate_codec::validate(r.clone()) {
            panic!(
                "invalid resource {}:\n{issues:#?}",
                serde_json::to_string_pretty(r).unwrap()
            );
        }
    }
}

/// Maps a fixture and renders the whole result (resources, errors, skips or the MapError) as
/// JSON for a snapshot, validating every resource on the way.
pub fn render(source: Source, rel: &str, ctx: &MapContext) -> Value {
    match map(source, &fixture(rel), ctx) {
        Ok(out) => {
            assert_all_valid(&out);
            render_output(&out)
        }
        Err(e) => json!({"map_error": e.to_string()}),
    }
}

/// A MapOutput as JSON.
pub fn render_output(out: &MapOutput) -> Value {
    let errors: Vec<Value> = out
        .errors
        .iter()
        .map(|e| json!({"location": e.location, "reason": e.reason}))
        .collect();
    json!({"resources": out.resources, "errors": errors, "skipped": out.skipped})
}
