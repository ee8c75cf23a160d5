//! Narrative fidelity over the 746 official R4 examples (`tests/fixtures/r4-examples.tgz` of the
//! repository, CC0): every narrative `div` survives JSON → XML → JSON and XML → JSON → XML byte for
//! byte, and the strict validation the server stores through leaves it untouched.

use std::collections::BTreeMap;
use std::io::Read;

use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::Value;

/// Examples fhirbolt's strict typed model refuses (a required element is missing), so they have no
/// XML form; tests/api/spec_examples.rs lists them with their defects.
const NOT_CONVERTIBLE: &[&str] = &[
    "ImplementationGuide-fhir.json",
    "Questionnaire-qs1.json",
    "ig-r4.json",
];

fn examples() -> Vec<(String, Value)> {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/r4-examples.tgz");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(path).expect("fixture"),
    ));
    let mut out = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = entry.path().expect("path").to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).expect("read");
        out.push((
            name,
            serde_json::from_slice(&bytes).expect("example is JSON"),
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Every narrative `div` of a JSON resource, keyed by its path (`entry[2].resource.text.div`).
fn json_divs(v: &Value, path: &str, out: &mut BTreeMap<String, String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let here = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match x {
                    Value::String(s) if k == "div" => {
                        out.insert(here, s.clone());
                    }
                    _ => json_divs(x, &here, out),
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                json_divs(x, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn divs_of(v: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    json_divs(v, "", &mut out);
    out
}

/// The narrative `div` elements of an XML document, as written, in document order.
fn xml_divs(xml: &[u8]) -> Vec<String> {
    let mut reader = Reader::from_reader(xml);
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut depth = 0usize;
    loop {
        let before = usize::try_from(reader.buffer_position()).expect("position");
        let event = reader.read_event().expect("well-formed XML");
        let after = usize::try_from(reader.buffer_position()).expect("position");
        let piece = |from: usize| String::from_utf8(xml[from..after].to_vec()).expect("utf-8");
        match event {
            Event::Eof => break,
            Event::Start(e) if depth == 0 && e.local_name().as_ref() == b"div" => {
                start = before;
                depth = 1;
            }
            Event::Empty(e) if depth == 0 && e.local_name().as_ref() == b"div" => {
                out.push(piece(before));
            }
            Event::Start(_) if depth > 0 => depth += 1,
            Event::End(_) if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    out.push(piece(start));
                }
            }
            _ => {}
        }
    }
    out
}

/// Where `got` first differs from `want`, with a little context on each side.
fn first_difference(want: &str, got: Option<&String>) -> String {
    let Some(got) = got else {
        return "the narrative is missing".to_owned();
    };
    let at = want
        .bytes()
        .zip(got.bytes())
        .position(|(a, b)| a != b)
        .unwrap_or(want.len().min(got.len()));
    let around = |s: &str| -> String {
        let from = at.saturating_sub(30);
        String::from_utf8_lossy(&s.as_bytes()[from..(at + 30).min(s.len())]).into_owned()
    };
    format!(
        "byte {at}: expected …{:?}… got …{:?}…",
        around(want),
        around(got)
    )
}

#[test]
fn every_official_narrative_round_trips_byte_for_byte() {
    let all = examples();
    assert_eq!(all.len(), 746);
    let mut narratives = 0usize;
    let mut with_spaces_next_to_markup = 0usize;
    let mut differences: Vec<String> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut not_convertible: Vec<&str> = Vec::new();
    for (name, original) in &all {
        let divs = divs_of(original);
        let spaced = divs
            .values()
            .filter(|d| d.contains(" <") || d.contains("> "))
            .count();

        // The write path: strict validation keeps every div as sent.
        if let Ok(valid) = fhirgate_codec::validate(original.clone()) {
            if divs_of(&valid) != divs {
                differences.push(format!("{name}: validate changed a narrative"));
            }
        }

        // JSON → XML → JSON.
        let xml = match fhirgate_codec::json_to_xml(original) {
            Ok(x) => x,
            Err(e) => {
                if NOT_CONVERTIBLE.contains(&name.as_str()) {
                    not_convertible.push(name);
                } else {
                    failures.push(format!("{name}: JSON → XML: {e}"));
                }
                continue;
            }
        };
        narratives += divs.len();
        with_spaces_next_to_markup += spaced;
        let mut in_xml = xml_divs(&xml);
        let mut expected: Vec<String> = divs.values().cloned().collect();
        in_xml.sort();
        expected.sort();
        if in_xml != expected {
            differences.push(format!(
                "{name}: the XML narratives differ from the JSON ones"
            ));
        }
        let back = match fhirgate_codec::xml_to_json(&xml) {
            Ok(v) => v,
            Err(e) => {
                failures.push(format!("{name}: XML → JSON: {e}"));
                continue;
            }
        };
        let back_divs = divs_of(&back);
        if back_divs != divs {
            let first = divs
                .iter()
                .find(|(k, v)| back_divs.get(*k) != Some(*v))
                .map(|(k, v)| format!("{k}: {}", first_difference(v, back_divs.get(k))))
                .unwrap_or_else(|| "an extra narrative".to_owned());
            differences.push(format!("{name}: JSON → XML → JSON: {first}"));
        }

        // XML → JSON → XML, from the XML just written.
        let again = match fhirgate_codec::json_to_xml(&back) {
            Ok(x) => x,
            Err(e) => {
                failures.push(format!("{name}: XML → JSON → XML: {e}"));
                continue;
            }
        };
        if xml_divs(&again) != xml_divs(&xml) {
            differences.push(format!("{name}: XML → JSON → XML changed a narrative"));
        }
    }
    eprintln!(
        "{} examples ({} without an XML form), {narratives} narratives round-tripped ({with_spaces_next_to_markup} with a space next to markup), {} conversion failures, {} narrative differences",
        all.len(),
        not_convertible.len(),
        failures.len(),
        differences.len()
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(differences.is_empty(), "{differences:#?}");
    assert_eq!(not_convertible, NOT_CONVERTIBLE);
    // Counted over the examples that have an XML form; a smaller count would mean skipped ones.
    assert!(narratives > 3_700, "{narratives}");
}
