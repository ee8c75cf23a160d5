//! Behaviour tests: determinism of ids, malformed input per source, and streaming of large
//! Apple Health exports in constant memory.

mod common;

use std::io::{BufReader, Read};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fhirgate_mappers::{
    generate_apple_export, map, map_apple_health_stream, MapContext, MapError, MappedRecord, Source,
};
use serde_json::Value;

fn ids(resources: &[Value]) -> Vec<String> {
    resources
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn mapping_the_same_bytes_twice_gives_identical_ids_and_content() {
    for (source, rel) in [
        (
            Source::Withings,
            "withings/shimmer_withings-body-measures.json",
        ),
        (Source::Fitbit, "fitbit/GetSleep.json"),
        (Source::Oura, "oura/dexta_oura_sleep.json"),
        (
            Source::GoogleFit,
            "googlefit/shimmer_googlefit-merge-step-deltas.json",
        ),
        (
            Source::AppleHealth,
            "apple_health/alxdrcirilo_tests_export.xml",
        ),
        (Source::HealthKit, "healthkit/samples.json"),
    ] {
        let ctx = common::ctx(source);
        let a = map(source, &common::fixture(rel), &ctx).unwrap();
        let b = map(source, &common::fixture(rel), &ctx).unwrap();
        assert!(!a.resources.is_empty(), "{rel}");
        assert_eq!(a, b, "{rel}");
    }
}

#[test]
fn a_changed_value_keeps_the_id_but_changes_the_content() {
    let ctx = MapContext::new("p1");
    let original = common::fixture("withings/shimmer_withings-body-measures.json");
    let changed = String::from_utf8(original.clone())
        .unwrap()
        .replace("\"value\": 74126", "\"value\": 75126");
    let a = map(Source::Withings, &original, &ctx).unwrap();
    let b = map(Source::Withings, changed.as_bytes(), &ctx).unwrap();
    assert_eq!(ids(&a.resources), ids(&b.resources));
    assert_ne!(a.resources, b.resources);
}

#[test]
fn another_patient_gets_other_ids_for_the_same_file() {
    let bytes = common::fixture("oura/dexta_oura_workout.json");
    let a = map(Source::Oura, &bytes, &MapContext::new("p1")).unwrap();
    let b = map(Source::Oura, &bytes, &MapContext::new("p2")).unwrap();
    assert!(ids(&a.resources)
        .iter()
        .all(|id| !ids(&b.resources).contains(id)));
}

#[test]
fn workouts_reference_members_that_exist() {
    let out = map(
        Source::Fitbit,
        &common::fixture("fitbit/GetActivityLogsList.json"),
        &common::ctx(Source::Fitbit),
    )
    .unwrap();
    let all = ids(&out.resources);
    let groups: Vec<&Value> = out
        .resources
        .iter()
        .filter(|r| r.get("hasMember").is_some())
        .collect();
    assert!(!groups.is_empty());
    for g in groups {
        for m in g["hasMember"].as_array().unwrap() {
            let id = m["reference"]
                .as_str()
                .unwrap()
                .trim_start_matches("Observation/");
            assert!(all.iter().any(|x| x == id));
        }
    }
}

#[test]
fn blood_pressure_is_one_panel_with_8480_6_and_8462_4() {
    let out = map(
        Source::Withings,
        &common::fixture("withings/shimmer_withings-body-measures.json"),
        &MapContext::new("p"),
    )
    .unwrap();
    let text = serde_json::to_string(&out.resources).unwrap();
    assert!(text.contains("85354-9") && text.contains("8480-6") && text.contains("8462-4"));
    let bp = out
        .resources
        .iter()
        .find(|r| r["code"]["coding"][0]["code"] == "85354-9")
        .unwrap();
    assert_eq!(bp["component"][1]["code"]["coding"][0]["code"], "8462-4");
    assert_eq!(bp["component"][1]["valueQuantity"]["value"], 68);
}

#[test]
fn fitbit_local_times_without_a_time_zone_are_record_errors_not_utc() {
    let out = map(
        Source::Fitbit,
        &common::fixture("fitbit/GetSpO2IntradayByDate.json"),
        &MapContext::new("p"),
    )
    .unwrap();
    assert!(out.resources.is_empty());
    assert_eq!(out.errors.len(), 3);
    assert!(
        out.errors[0].reason.contains("time zone"),
        "{:?}",
        out.errors[0]
    );
    assert_eq!(out.errors[0].location, "$.minutes[0]");
}

fn expect_map_error(source: Source, bytes: &[u8]) -> MapError {
    match map(source, bytes, &MapContext::new("p")) {
        Err(e) => e,
        Ok(out) => panic!("{source}: expected a MapError, got {out:?}"),
    }
}

#[test]
fn non_json_and_wrong_shapes_are_map_errors_for_every_json_source() {
    for source in [
        Source::Fitbit,
        Source::GoogleFit,
        Source::Oura,
        Source::Withings,
        Source::HealthKit,
    ] {
        assert!(
            matches!(expect_map_error(source, b"<HealthData>"), MapError::Json(_)),
            "{source}"
        );
        assert!(
            matches!(
                expect_map_error(source, b"{\"a\": [1, 2"),
                MapError::Json(_)
            ),
            "{source}"
        );
        assert!(
            matches!(
                expect_map_error(source, b"42"),
                MapError::Unrecognised { .. }
            ),
            "{source}"
        );
    }
}

#[test]
fn a_bom_is_stripped_for_every_source() {
    let mut bytes = b"\xEF\xBB\xBF".to_vec();
    bytes.extend(common::fixture("oura/dexta_oura_workout.json"));
    assert!(!map(Source::Oura, &bytes, &MapContext::new("p"))
        .unwrap()
        .resources
        .is_empty());
    let mut xml = b"\xEF\xBB\xBF".to_vec();
    xml.extend(common::fixture("apple_health/tdda_export6s3sample.xml"));
    assert!(!map(Source::AppleHealth, &xml, &MapContext::new("p"))
        .unwrap()
        .resources
        .is_empty());
}

#[test]
fn fitbit_trailing_commas_are_tolerated_but_other_sources_are_strict() {
    let body = br#"{"hrv": [{"value": {"dailyRmssd": 34.9,}, "dateTime": "2021-10-25",},]}"#;
    let out = map(Source::Fitbit, body, &MapContext::new("p")).unwrap();
    assert_eq!(out.resources.len(), 1);
    assert!(matches!(
        expect_map_error(Source::Oura, br#"[{"id": "x",}]"#),
        MapError::Json(_)
    ));
}

#[test]
fn wrong_types_missing_fields_and_huge_numbers_are_per_record_errors() {
    let body = br#"{"status": 0, "body": {"measuregrps": [
        {"grpid": 1, "date": 1433052383, "category": 1, "attrib": 0, "measures": [{"type": 1, "unit": -3, "value": "heavy"}]},
        {"grpid": 2, "category": 1, "attrib": 0, "measures": [{"type": 1, "unit": -3, "value": 74000}]},
        {"grpid": 3, "date": 1433052383, "category": 1, "attrib": 0, "measures": [{"type": 1, "unit": 0, "value": 1e300}]},
        {"grpid": 4, "date": 1433052383, "category": 1, "attrib": 0, "measures": [{"type": 1, "unit": 0, "value": 123456789012345678901234567890}]},
        {"grpid": 5, "date": 1433052383, "category": 1, "attrib": 0, "measures": [{"type": 1, "unit": 99999, "value": 1}]},
        {"grpid": 6, "date": 1433052383, "category": 1, "attrib": 0, "measures": [{"type": 999, "unit": 0, "value": 1}]},
        {"grpid": 7, "date": 1433052383, "category": 1, "attrib": 0, "measures": [{"type": 1, "unit": -3, "value": 74000}]}
    ]}}"#;
    let out = map(Source::Withings, body, &MapContext::new("p")).unwrap();
    common::assert_all_valid(&out);
    assert_eq!(out.resources.len(), 1, "only group 7 maps");
    let locations: Vec<&str> = out.errors.iter().map(|e| e.location.as_str()).collect();
    assert_eq!(
        locations,
        [
            "$.body.measuregrps[0].measures[0].value",
            "$.body.measuregrps[1]",
            "$.body.measuregrps[2].measures[0].value",
            "$.body.measuregrps[3].measures[0].value",
            "$.body.measuregrps[4].measures[0].unit",
        ]
    );
    assert_eq!(
        out.skipped.get("withings: unsupported meastype 999"),
        Some(&1)
    );
    // A literal too large for a float is not a panic either.
    let _ = map(
        Source::Oura,
        b"[{\"id\": \"x\", \"bpm\": 1e999, \"timestamp\": \"2021-01-01T00:00:00+00:00\"}]",
        &MapContext::new("p"),
    );
}

#[test]
fn unknown_metrics_are_counted_or_reported_never_a_panic() {
    let oura = map(
        Source::Oura,
        br#"[{"id": "x", "day": "2024-01-01", "mood": 3}]"#,
        &MapContext::new("p"),
    )
    .unwrap();
    assert_eq!(oura.errors[0].location, "$[0]");
    let gf = map(
        Source::GoogleFit,
        &common::fixture("googlefit/shimmer_googlefit-merge-speed.json"),
        &MapContext::new("p"),
    )
    .unwrap();
    assert_eq!(gf.skipped.values().sum::<u64>(), 2);
}

#[test]
fn truncated_or_foreign_xml_is_a_map_error_and_bad_records_name_their_line() {
    let full = common::fixture("apple_health/tdda_export6s3sample.xml");
    let truncated = &full[..full.len() - 200];
    assert!(matches!(
        expect_map_error(Source::AppleHealth, truncated),
        MapError::Xml(_)
    ));
    assert!(matches!(
        expect_map_error(Source::AppleHealth, b"{\"not\": \"xml\"}"),
        MapError::Xml(_)
    ));
    assert!(matches!(
        expect_map_error(Source::AppleHealth, b"<Other/>"),
        MapError::Xml(_)
    ));
    let xml = br#"<?xml version="1.0"?>
<HealthData locale="en">
 <Record type="HKQuantityTypeIdentifierHeartRate" sourceName="W" unit="count/min" startDate="2024-01-01 01:00:00 +0200" endDate="2024-01-01 01:00:00 +0200" value="fast"/>
 <Record type="HKQuantityTypeIdentifierHeartRate" sourceName="W" unit="count/min" startDate="yesterday" endDate="2024-01-01 01:00:00 +0200" value="60"/>
 <Record type="HKQuantityTypeIdentifierHeartRate" sourceName="W" unit="count/min" startDate="2024-01-01 01:00:00 +0200" endDate="2024-01-01 01:00:00 +0200" value="61"/>
</HealthData>"#;
    let out = map(Source::AppleHealth, xml, &MapContext::new("p")).unwrap();
    common::assert_all_valid(&out);
    let locations: Vec<&str> = out.errors.iter().map(|e| e.location.as_str()).collect();
    assert_eq!(locations, ["line 3", "line 4"]);
    assert_eq!(out.resources.len(), 2, "one Device and one Observation");
}

/// A reader that records how many bytes it has handed out, in a cell the test can watch.
struct Counting<R> {
    inner: R,
    read: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

#[test]
fn a_50_mb_export_streams_through_a_small_buffer() {
    // Generated into a temporary file, so the test itself never holds the export in memory.
    let path = std::env::temp_dir().join(format!(
        "fhirgate-mappers-stream-{}.xml",
        std::process::id()
    ));
    let file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let size = generate_apple_export(50 * 1024 * 1024, file).unwrap();
    assert!(size >= 50 * 1024 * 1024);
    let read = Arc::new(AtomicU64::new(0));
    let counting = Counting {
        inner: std::fs::File::open(&path).unwrap(),
        read: Arc::clone(&read),
    };
    let reader = BufReader::with_capacity(64 * 1024, counting);
    let (mut observations, mut devices) = (0u64, 0u64);
    let mut read_at_first_resource = None;
    let summary = map_apple_health_stream(reader, &MapContext::new("bench"), |rec| match rec {
        MappedRecord::Resource(r) => {
            read_at_first_resource.get_or_insert(read.load(Ordering::Relaxed));
            if r["resourceType"] == "Device" {
                devices += 1;
            } else {
                observations += 1;
            }
        }
        MappedRecord::Error(e) => panic!("{e}"),
    })
    .unwrap();
    std::fs::remove_file(&path).unwrap();
    // The first resource arrived after one buffer-full, not after the whole file.
    assert!(read_at_first_resource.unwrap() <= 64 * 1024);
    assert_eq!(read.load(Ordering::Relaxed), size);
    assert!(observations > 200_000, "{observations}");
    assert_eq!(devices, 2);
    assert_eq!(summary.errors, 0);
    assert_eq!(summary.resources, observations + devices);
}

/// Everything the stream hands to the sink, in order, and how the run ended.
fn stream(bytes: &[u8]) -> (Vec<Value>, Vec<String>, Result<u64, String>) {
    let (mut resources, mut errors) = (Vec::new(), Vec::new());
    let result = map_apple_health_stream(bytes, &MapContext::new("p1"), |rec| match rec {
        MappedRecord::Resource(r) => resources.push(r),
        MappedRecord::Error(e) => errors.push(e.to_string()),
    });
    (
        resources,
        errors,
        result.map(|s| s.elements).map_err(|e| e.to_string()),
    )
}

#[test]
fn the_stream_gives_what_in_memory_mapping_gives_in_document_order() {
    let mut export = Vec::new();
    generate_apple_export(3 * 1024 * 1024, &mut export).unwrap();
    let whole = map(Source::AppleHealth, &export, &MapContext::new("p1")).unwrap();
    let (resources, errors, result) = stream(&export);
    assert!(result.unwrap() > 5000);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(resources.len(), whole.resources.len());
    assert!(
        resources == whole.resources,
        "same resources in the same order"
    );
    let devices = resources
        .iter()
        .filter(|r| r["resourceType"] == "Device")
        .count();
    assert_eq!(devices, 2, "each Device once");

    // Cut in the middle: the stream fails, after handing over everything before the cut.
    let half = export.len() / 2;
    let line_end = export[..half].iter().rposition(|b| *b == b'\n').unwrap();
    let cut = &export[..=line_end];
    let (resources, _, result) = stream(cut);
    let e = result.unwrap_err();
    assert!(e.contains("truncated"), "{e}");
    assert!(resources.len() > whole.resources.len() / 3);
    assert!(resources == whole.resources[..resources.len()]);
}
