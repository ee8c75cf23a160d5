//! The official R4 SearchParameter bundle: every expression parses, and the per-type
//! registry answers the questions a search request parser asks.

use fhirgate_fhirpath::{
    all_parameters, parameter, parameters_for, unsupported_parameters, Expression, ParamType,
};

const BUNDLE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../fhir-profiles/search-parameters.json"
));

#[test]
fn every_expression_in_the_bundle_parses() {
    let bundle: serde_json::Value = serde_json::from_str(BUNDLE).unwrap();
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1375);
    let mut parsed = 0;
    let mut without = Vec::new();
    let mut failures = Vec::new();
    for e in entries {
        let r = &e["resource"];
        let id = r["id"].as_str().unwrap();
        match r["expression"].as_str() {
            Some(src) => match Expression::parse(src) {
                Ok(_) => parsed += 1,
                Err(err) => failures.push(format!("{id}: {err}")),
            },
            None => without.push(id),
        }
        for c in r["component"].as_array().into_iter().flatten() {
            let src = c["expression"].as_str().unwrap();
            if let Err(err) = Expression::parse(src) {
                failures.push(format!("{id} component {src}: {err}"));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(parsed, 1372);
    // Defined without an expression: full-text and named-query parameters.
    without.sort_unstable();
    assert_eq!(
        without,
        ["DomainResource-text", "Resource-content", "Resource-query"]
    );
    assert!(
        unsupported_parameters().is_empty(),
        "{:?}",
        unsupported_parameters()
    );
    assert_eq!(all_parameters().len(), 1375);
}

#[test]
fn lookups() {
    let p = parameter("Observation", "code").unwrap();
    assert_eq!(p.param_type, ParamType::Token);
    assert_eq!(p.id, "clinical-code");

    let p = parameter("Observation", "subject").unwrap();
    assert_eq!(p.param_type, ParamType::Reference);
    assert!(p.target.iter().any(|t| t == "Patient"));

    let p = parameter("Observation", "code-value-quantity").unwrap();
    assert_eq!(p.param_type, ParamType::Composite);
    let comps: Vec<(&str, ParamType)> = p
        .components
        .iter()
        .map(|c| (c.code.as_str(), c.param_type))
        .collect();
    assert_eq!(
        comps,
        [
            ("code", ParamType::Token),
            ("value-quantity", ParamType::Quantity)
        ]
    );

    for code in [
        "_id",
        "_lastUpdated",
        "_tag",
        "_profile",
        "_security",
        "_source",
    ] {
        assert!(parameter("Patient", code).is_some(), "{code}");
        assert!(parameter("Bundle", code).is_some(), "{code}");
        assert!(parameter("Resource", code).is_some(), "{code}");
    }
    assert_eq!(
        parameter("Patient", "_lastUpdated").unwrap().param_type,
        ParamType::Date
    );
    assert!(parameter("Patient", "_text").is_some());
    assert!(
        parameter("Bundle", "_text").is_none(),
        "Bundle is no DomainResource"
    );
    assert!(parameter("Patient", "value-quantity").is_none());
    assert!(parameter("NoSuchType", "_id").is_none());

    let codes: Vec<&str> = parameters_for("Patient").map(|p| p.code.as_str()).collect();
    for code in [
        "name",
        "family",
        "given",
        "birthdate",
        "identifier",
        "_id",
        "general-practitioner",
    ] {
        assert!(codes.contains(&code), "{code}");
    }
    let mut sorted = codes.clone();
    sorted.sort_unstable();
    assert_eq!(codes, sorted);
    assert_eq!(parameters_for("NoSuchType").count(), 0);
}
