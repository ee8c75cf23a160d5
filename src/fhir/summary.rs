//! `_summary=true` (<https://hl7.org/fhir/R4/search.html#summary>): only the elements the R4
//! StructureDefinitions mark as summary (Σ). The table is generated data,
//! `fhir-profiles/r4-summary.json`, built by `tools/gen_summary.py` from the official package.

use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::{Map, Value};

const SUMMARY_JSON: &str = include_str!("../../fhir-profiles/r4-summary.json");

/// Per resource type, the summary element paths relative to it (`name`, `deceased[x]`,
/// `link.other`).
static SUMMARY: LazyLock<HashMap<String, Vec<String>>> = LazyLock::new(|| {
    // The file is part of the build; a parse failure is a build defect every test catches.
    serde_json::from_str(SUMMARY_JSON)
        .unwrap_or_else(|e| panic!("fhir-profiles/r4-summary.json is corrupt: {e}"))
});

/// Whether JSON key `key` is the element `element` (`deceased[x]` is `deceasedBoolean`, …) or
/// its primitive extension (`_birthDate`).
fn is_element(key: &str, element: &str) -> bool {
    let key = key.strip_prefix('_').unwrap_or(key);
    match element.strip_suffix("[x]") {
        Some(stem) => key
            .strip_prefix(stem)
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase())),
        None => key == element,
    }
}

/// Keeps only the summary elements of `obj`, a resource of type `rt`; `false` when the type is
/// not in the table (the caller then decides). Sets `changed` when anything was removed.
pub fn apply(rt: &str, obj: &mut Map<String, Value>, changed: &mut bool) -> bool {
    let Some(paths) = SUMMARY.get(rt) else {
        return false;
    };
    keep(obj, paths, "", changed);
    true
}

/// Keeps the keys of `obj` whose element, below `prefix`, is a summary path; filters the children
/// of kept backbone elements the same way.
fn keep(obj: &mut Map<String, Value>, paths: &[String], prefix: &str, changed: &mut bool) {
    let here: Vec<&str> = paths
        .iter()
        .filter_map(|p| p.strip_prefix(prefix))
        .filter(|p| !p.contains('.'))
        .collect();
    let before = obj.len();
    obj.retain(|k, _| k == "resourceType" || here.iter().any(|e| is_element(k, e)));
    *changed |= obj.len() != before;
    for element in here {
        let child_prefix = format!("{prefix}{element}.");
        if !paths.iter().any(|p| p.starts_with(&child_prefix)) {
            continue;
        }
        let Some(value) = obj.get_mut(element) else {
            continue;
        };
        let items: Vec<&mut Value> = match value {
            Value::Array(a) => a.iter_mut().collect(),
            v => vec![v],
        };
        for item in items {
            if let Value::Object(o) = item {
                keep(o, paths, &child_prefix, changed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::apply;
    use serde_json::json;

    fn summarize(v: serde_json::Value) -> serde_json::Value {
        let mut v = v;
        let rt = v["resourceType"].as_str().expect("type").to_owned();
        let mut changed = false;
        assert!(apply(&rt, v.as_object_mut().expect("object"), &mut changed));
        v
    }

    #[test]
    fn summary_elements_come_from_the_structure_definitions() {
        let p = summarize(
            json!({"resourceType": "Patient", "id": "p", "meta": {"versionId": "1"},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
            "name": [{"family": "Doe"}], "birthDate": "1980-01-01", "_birthDate": {"extension": []},
            "deceasedBoolean": false, "maritalStatus": {"text": "M"}, "photo": [{"url": "x"}],
            "contact": [{"name": {"family": "Roe"}}],
            "link": [{"other": {"reference": "Patient/q"}, "type": "seealso", "id": "l1"}]}),
        );
        assert_eq!(
            p,
            json!({"resourceType": "Patient", "id": "p", "meta": {"versionId": "1"},
                "name": [{"family": "Doe"}], "birthDate": "1980-01-01", "_birthDate": {"extension": []},
                "deceasedBoolean": false,
                "link": [{"other": {"reference": "Patient/q"}, "type": "seealso"}]})
        );
        // A backbone's non-summary children go; its summary ones stay.
        let o = summarize(json!({"resourceType": "Observation", "status": "final",
            "code": {"text": "BP"}, "note": [{"text": "n"}], "interpretation": [{"text": "H"}],
            "component": [{"code": {"text": "sys"}, "valueQuantity": {"value": 120},
                           "referenceRange": [{"text": "r"}], "interpretation": [{"text": "H"}]}]}));
        assert_eq!(
            o,
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "BP"},
                "component": [{"code": {"text": "sys"}, "valueQuantity": {"value": 120}}]})
        );
    }

    #[test]
    fn every_r4_resource_type_has_a_summary() {
        for rt in fhirgate_codec::resource_types() {
            let mut changed = false;
            let mut o = serde_json::Map::new();
            assert!(apply(rt, &mut o, &mut changed), "{rt}");
        }
    }
}
