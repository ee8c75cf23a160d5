//! Extraction over every official R4 example (`tests/fixtures/r4-examples.tgz`): no panic,
//! and sane output.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use fhirgate_fhirpath::{extract, parameters_for, IndexValue, ParamType};
use serde_json::Value;

fn examples() -> Vec<(String, Value)> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/r4-examples.tgz"
    );
    let file = std::fs::File::open(path).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut out = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".json") {
            continue;
        }
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        out.push((name, serde_json::from_str(&text).unwrap()));
    }
    out
}

fn has(entries: &[fhirgate_fhirpath::IndexEntry<'_>], code: &str) -> bool {
    entries.iter().any(|e| e.code == code)
}

#[test]
fn every_example_extracts_sanely() {
    let examples = examples();
    assert_eq!(examples.len(), 746);
    let mut per_type: BTreeMap<ParamType, usize> = BTreeMap::new();
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    let mut total = 0;
    for (name, resource) in &examples {
        let rt = resource["resourceType"].as_str().unwrap();
        let entries = extract(resource);
        total += entries.len();
        for e in &entries {
            *per_type.entry(e.param_type).or_default() += 1;
            used.insert((rt.to_owned(), e.code.to_owned()));
            // The value's shape fits the parameter type.
            let fits = match (&e.param_type, &e.value) {
                (ParamType::String, IndexValue::String(s)) => !s.value.is_empty(),
                (
                    ParamType::Token,
                    IndexValue::Token(_)
                    | IndexValue::TokenText(_)
                    | IndexValue::IdentifierOfType(_),
                ) => true,
                (ParamType::Date, IndexValue::Date(r)) => r.low <= r.high,
                (ParamType::Number, IndexValue::Number(n)) => n.value.is_finite(),
                (ParamType::Quantity, IndexValue::Quantity(_) | IndexValue::QuantityRange(_)) => {
                    true
                }
                (ParamType::Reference, IndexValue::Reference(r)) => {
                    r.reference.is_some() || r.identifier.is_some()
                }
                (ParamType::Reference | ParamType::Uri, IndexValue::Uri(u)) => !u.is_empty(),
                (ParamType::Composite, IndexValue::Composite(parts)) => parts.len() >= 2,
                _ => false,
            };
            assert!(
                fits,
                "{name}: {} {:?} -> {:?}",
                e.code, e.param_type, e.value
            );
            assert!(
                parameters_for(rt).any(|p| p.code == e.code),
                "{name}: {} is not a parameter of {rt}",
                e.code
            );
        }
        match rt {
            "Observation" => assert!(has(&entries, "code"), "{name} has no code tokens"),
            "Patient" if resource.get("name").is_some() => {
                assert!(has(&entries, "name"), "{name} has no name strings");
                let families = resource["name"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|n| n.get("family").is_some());
                assert!(!families || has(&entries, "family"), "{name} has no family");
            }
            _ => {}
        }
        if resource.get("id").is_some() {
            assert!(has(&entries, "_id"), "{name} has no _id");
        }
        if resource.pointer("/meta/lastUpdated").is_some() {
            assert!(has(&entries, "_lastUpdated"), "{name} has no _lastUpdated");
        }
    }
    println!("{} examples, {total} entries: {per_type:?}", examples.len());
    println!(
        "{} distinct (type, parameter) pairs with values",
        used.len()
    );
    assert!(total > 8_000, "{total}");
    for t in [
        ParamType::String,
        ParamType::Token,
        ParamType::Date,
        ParamType::Number,
        ParamType::Quantity,
        ParamType::Reference,
        ParamType::Uri,
        ParamType::Composite,
    ] {
        assert!(
            per_type.get(&t).copied().unwrap_or(0) > 0,
            "no {t:?} entries"
        );
    }
}
