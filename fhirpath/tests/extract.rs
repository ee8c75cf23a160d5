//! Extraction on realistic resources: what each parameter type takes from each datatype.

use fhirgate_fhirpath::{extract, extract_parameter, IndexValue, ParamType, QuantityValue};
use serde_json::{json, Value};

fn q(v: &QuantityValue<'_>) -> String {
    format!(
        "{}{} {}|{} ({})",
        v.comparator.unwrap_or(""),
        v.value.text,
        v.system.unwrap_or(""),
        v.code.unwrap_or(""),
        v.unit.unwrap_or("")
    )
}

/// A compact rendering to compare against.
fn render(v: &IndexValue<'_>) -> String {
    match v {
        IndexValue::String(s) => format!("{}/{}", s.value, s.normalized),
        IndexValue::Token(t) => format!("{}|{}", t.system.unwrap_or(""), t.code.unwrap_or("")),
        IndexValue::TokenText(s) => format!("text:{}", s.normalized),
        IndexValue::IdentifierOfType(o) => format!(
            "of-type:{}|{}|{}",
            o.type_system.unwrap_or(""),
            o.type_code,
            o.value
        ),
        IndexValue::Date(r) => format!("{}..{}", r.low, r.high),
        IndexValue::Number(n) => n.text.to_owned(),
        IndexValue::Quantity(v) => q(v),
        IndexValue::QuantityRange(r) => format!(
            "[{}, {}]",
            r.low.as_ref().map(q).unwrap_or_default(),
            r.high.as_ref().map(q).unwrap_or_default()
        ),
        IndexValue::Reference(r) => format!(
            "ref={} url={} type={} id={}",
            r.reference.as_deref().unwrap_or("-"),
            r.url.unwrap_or("-"),
            r.target_type.unwrap_or("-"),
            r.identifier
                .as_ref()
                .map(|i| format!("{}|{}", i.system.unwrap_or(""), i.code.unwrap_or("")))
                .unwrap_or_else(|| "-".to_owned())
        ),
        IndexValue::Uri(u) => format!("uri:{u}"),
        IndexValue::Composite(parts) => format!(
            "({})",
            parts.iter().map(render).collect::<Vec<_>>().join(" ; ")
        ),
    }
}

fn values(resource: &Value, code: &str) -> Vec<String> {
    extract_parameter(resource, code)
        .iter()
        .map(render)
        .collect()
}

fn patient() -> Value {
    json!({
        "resourceType": "Patient",
        "id": "pat-1",
        "meta": {"lastUpdated": "2024-05-01T10:00:00Z",
                 "tag": [{"system": "http://example.org/tags", "code": "test"}],
                 "profile": ["http://example.org/StructureDefinition/p"],
                 "source": "urn:app:x"},
        "identifier": [{
            "use": "usual",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
            "system": "urn:oid:1.2.36.146.595.217.0.1",
            "value": "12345"
        }],
        "active": true,
        "name": [
            {"use": "official", "family": "Chalmers", "given": ["Peter", "James"]},
            {"use": "usual", "given": ["Jim"]},
            {"use": "maiden", "family": "Müller", "prefix": ["Dr."], "text": "Dr. José Müller"}
        ],
        "telecom": [
            {"system": "phone", "value": "(03) 5555 6473", "use": "work"},
            {"system": "email", "value": "peter@example.org"}
        ],
        "gender": "male",
        "birthDate": "1974-12-25",
        "deceasedBoolean": false,
        "address": [{
            "use": "home", "line": ["534 Erewhon St", "Flat 2"], "city": "PleasantVille",
            "district": "Rainbow", "state": "Vic", "postalCode": "3999", "country": "AU"
        }],
        "generalPractitioner": [{"reference": "https://fhir.example.org/r4/Practitioner/gp-7"}],
        "managingOrganization": {"reference": "Organization/1"},
        "link": [{"other": {"reference": "Patient/pat-2"}, "type": "seealso"}]
    })
}

#[test]
fn patient_strings_tokens_dates_references() {
    let p = patient();
    assert_eq!(values(&p, "family"), ["Chalmers/chalmers", "Müller/muller"]);
    assert_eq!(
        values(&p, "given"),
        ["Peter/peter", "James/james", "Jim/jim"]
    );
    assert_eq!(
        values(&p, "name"),
        [
            "Chalmers/chalmers",
            "Peter/peter",
            "James/james",
            "Jim/jim",
            "Müller/muller",
            "Dr./dr.",
            "Dr. José Müller/dr. jose muller"
        ]
    );
    assert_eq!(
        values(&p, "address"),
        [
            "534 Erewhon St/534 erewhon st",
            "Flat 2/flat 2",
            "PleasantVille/pleasantville",
            "Rainbow/rainbow",
            "Vic/vic",
            "3999/3999",
            "AU/au"
        ]
    );
    assert_eq!(values(&p, "address-city"), ["PleasantVille/pleasantville"]);
    assert_eq!(values(&p, "address-use"), ["|home"]);
    assert_eq!(
        values(&p, "identifier"),
        [
            "urn:oid:1.2.36.146.595.217.0.1|12345",
            "of-type:http://terminology.hl7.org/CodeSystem/v2-0203|MR|12345"
        ]
    );
    assert_eq!(
        values(&p, "telecom"),
        ["phone|(03) 5555 6473", "email|peter@example.org"]
    );
    assert_eq!(values(&p, "phone"), ["phone|(03) 5555 6473"]);
    assert_eq!(values(&p, "email"), ["email|peter@example.org"]);
    assert_eq!(values(&p, "gender"), ["|male"]);
    assert_eq!(values(&p, "active"), ["|true"]);
    assert_eq!(values(&p, "deceased"), ["|false"]);
    assert_eq!(
        values(&p, "birthdate"),
        ["1974-12-25T00:00:00Z..1974-12-25T23:59:59.999999Z"]
    );
    assert_eq!(
        values(&p, "general-practitioner"),
        ["ref=Practitioner/gp-7 url=https://fhir.example.org/r4/Practitioner/gp-7 type=Practitioner id=-"]
    );
    assert_eq!(
        values(&p, "organization"),
        ["ref=Organization/1 url=- type=Organization id=-"]
    );
    assert_eq!(
        values(&p, "link"),
        ["ref=Patient/pat-2 url=- type=Patient id=-"]
    );
    // Common parameters.
    assert_eq!(values(&p, "_id"), ["|pat-1"]);
    assert_eq!(
        values(&p, "_lastUpdated"),
        ["2024-05-01T10:00:00Z..2024-05-01T10:00:00.999999Z"]
    );
    assert_eq!(values(&p, "_tag"), ["http://example.org/tags|test"]);
    assert_eq!(
        values(&p, "_profile"),
        ["uri:http://example.org/StructureDefinition/p"]
    );
    assert_eq!(values(&p, "_source"), ["uri:urn:app:x"]);
    assert!(values(&p, "_security").is_empty());

    // extract() gives the same values, tagged with code and type.
    let all = extract(&p);
    let family: Vec<_> = all.iter().filter(|e| e.code == "family").collect();
    assert_eq!(family.len(), 2);
    assert!(family.iter().all(|e| e.param_type == ParamType::String));
    assert!(all
        .iter()
        .any(|e| e.code == "birthdate" && e.param_type == ParamType::Date));
    // Deceased as a date is still "deceased=true".
    let mut dead = patient();
    dead.as_object_mut().unwrap().remove("deceasedBoolean");
    dead["deceasedDateTime"] = json!("2020-02-02");
    assert_eq!(values(&dead, "deceased"), ["|true"]);
    assert_eq!(
        values(&dead, "death-date"),
        ["2020-02-02T00:00:00Z..2020-02-02T23:59:59.999999Z"]
    );
}

fn blood_pressure() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "bp-1",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9",
                             "display": "Blood pressure panel"}], "text": "BP"},
        "subject": {"reference": "Patient/pat-1", "display": "Peter"},
        "encounter": {"identifier": {"system": "urn:enc", "value": "E1"}},
        "performer": [{"reference": "#prac"}, {"reference": "urn:uuid:2b1a9f0c-1f57-4a8e-b1a1-2d0f4c4b0c11"}],
        "contained": [{"resourceType": "Practitioner", "id": "prac"}],
        "effectivePeriod": {"start": "2024-05-01T09:00:00Z", "end": "2024-05-01T09:05:00Z"},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 107, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": 60.0, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
        ]
    })
}

#[test]
fn observation_tokens_references_composites() {
    let o = blood_pressure();
    assert_eq!(
        values(&o, "code"),
        [
            "http://loinc.org|85354-9",
            "text:blood pressure panel",
            "text:bp"
        ]
    );
    assert_eq!(
        values(&o, "category"),
        [
            "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
            "text:vital signs"
        ]
    );
    assert_eq!(values(&o, "status"), ["|final"]);
    assert_eq!(
        values(&o, "date"),
        ["2024-05-01T09:00:00Z..2024-05-01T09:05:00.999999Z"]
    );
    assert_eq!(
        values(&o, "subject"),
        ["ref=Patient/pat-1 url=- type=Patient id=-"]
    );
    assert_eq!(
        values(&o, "patient"),
        ["ref=Patient/pat-1 url=- type=Patient id=-"]
    );
    assert_eq!(
        values(&o, "encounter"),
        ["ref=- url=- type=- id=urn:enc|E1"]
    );
    assert_eq!(
        values(&o, "performer"),
        [
            "ref=#prac url=- type=Practitioner id=-",
            "ref=urn:uuid:2b1a9f0c-1f57-4a8e-b1a1-2d0f4c4b0c11 url=urn:uuid:2b1a9f0c-1f57-4a8e-b1a1-2d0f4c4b0c11 type=- id=-"
        ]
    );
    assert_eq!(
        values(&o, "component-code"),
        ["http://loinc.org|8480-6", "http://loinc.org|8462-4"]
    );
    assert_eq!(
        values(&o, "component-value-quantity"),
        [
            "107 http://unitsofmeasure.org|mm[Hg] (mmHg)",
            "60.0 http://unitsofmeasure.org|mm[Hg] (mmHg)"
        ]
    );
    // Pairs stay within their component.
    assert_eq!(
        values(&o, "component-code-value-quantity"),
        [
            "(http://loinc.org|8480-6 ; 107 http://unitsofmeasure.org|mm[Hg] (mmHg))",
            "(http://loinc.org|8462-4 ; 60.0 http://unitsofmeasure.org|mm[Hg] (mmHg))"
        ]
    );
    // combo-* covers the observation itself and its components; the panel has no value.
    assert_eq!(values(&o, "combo-code-value-quantity").len(), 2);
    assert!(values(&o, "code-value-quantity").is_empty());
    assert!(values(&o, "value-quantity").is_empty());
}

#[test]
fn observation_choice_values() {
    let mut o = json!({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"},
                            {"system": "urn:local", "code": "hr"}]},
        "effectiveDateTime": "2024-05",
        "valueQuantity": {"value": 72, "comparator": "<", "unit": "/min",
                          "system": "http://unitsofmeasure.org", "code": "/min"}
    });
    assert_eq!(
        values(&o, "value-quantity"),
        ["<72 http://unitsofmeasure.org|/min (/min)"]
    );
    assert_eq!(
        values(&o, "date"),
        ["2024-05-01T00:00:00Z..2024-05-31T23:59:59.999999Z"]
    );
    // One tuple per coding.
    assert_eq!(
        values(&o, "code-value-quantity"),
        [
            "(http://loinc.org|8867-4 ; <72 http://unitsofmeasure.org|/min (/min))",
            "(urn:local|hr ; <72 http://unitsofmeasure.org|/min (/min))"
        ]
    );
    let obj = o.as_object_mut().unwrap();
    obj.remove("valueQuantity");
    obj.insert("valueString".into(), json!("Très élevé"));
    obj.insert(
        "effectiveTiming".into(),
        json!({"event": ["2024-05-03", "2024-05-01T08:00:00Z"]}),
    );
    obj.remove("effectiveDateTime");
    assert_eq!(values(&o, "value-string"), ["Très élevé/tres eleve"]);
    assert_eq!(
        values(&o, "code-value-string"),
        [
            "(http://loinc.org|8867-4 ; Très élevé/tres eleve)",
            "(urn:local|hr ; Très élevé/tres eleve)"
        ]
    );
    assert_eq!(
        values(&o, "date"),
        ["2024-05-01T08:00:00Z..2024-05-03T23:59:59.999999Z"]
    );
    assert!(values(&o, "value-quantity").is_empty());
    o["valueCodeableConcept"] =
        json!({"coding": [{"system": "http://snomed.info/sct", "code": "260385009"}]});
    assert_eq!(
        values(&o, "value-concept"),
        ["http://snomed.info/sct|260385009"]
    );
    o["valuePeriod"] = json!({"start": "2024-01-01"});
    assert_eq!(
        values(&o, "value-date"),
        ["2024-01-01T00:00:00Z..9999-12-31T23:59:59.999999Z"]
    );
}

#[test]
fn condition_ages_ranges_and_strings() {
    let c = json!({
        "resourceType": "Condition", "id": "c1",
        "code": {"text": "Asthma"},
        "subject": {"reference": "Patient/p1"},
        "onsetAge": {"value": 12, "unit": "yr", "system": "http://unitsofmeasure.org", "code": "a"},
        "abatementRange": {"low": {"value": 20, "unit": "yr"}, "high": {"value": 25.5, "unit": "yr"}},
        "recordedDate": "2013-04-02T10:30:10+01:00"
    });
    assert_eq!(
        values(&c, "onset-age"),
        ["12 http://unitsofmeasure.org|a (yr)"]
    );
    assert_eq!(values(&c, "abatement-age"), ["[20 | (yr), 25.5 | (yr)]"]);
    assert_eq!(values(&c, "code"), ["text:asthma"]);
    assert_eq!(
        values(&c, "recorded-date"),
        ["2013-04-02T09:30:10Z..2013-04-02T09:30:10.999999Z"]
    );
    assert!(values(&c, "onset-date").is_empty());
    assert_eq!(
        values(&c, "patient"),
        ["ref=Patient/p1 url=- type=Patient id=-"]
    );
    let c2 = json!({"resourceType": "Condition", "onsetString": "childhood",
                    "abatementPeriod": {"end": "2020"}});
    assert_eq!(values(&c2, "onset-info"), ["childhood/childhood"]);
    assert_eq!(
        values(&c2, "abatement-date"),
        ["0001-01-01T00:00:00Z..2020-12-31T23:59:59.999999Z"]
    );
}

#[test]
fn money_numbers_uris_and_canonicals() {
    // Parsed from text so the number keeps its source form (`0.80`, not `0.8`).
    let item: Value = serde_json::from_str(
        r#"{"resourceType": "ChargeItem", "id": "ci", "status": "billable",
            "code": {"text": "x"}, "subject": {"reference": "Patient/p"},
            "factorOverride": 0.80, "priceOverride": {"value": 40.00, "currency": "EUR"}}"#,
    )
    .unwrap();
    assert_eq!(values(&item, "factor-override"), ["0.80"]);
    assert_eq!(
        values(&item, "price-override"),
        ["40.00 urn:iso:std:iso:4217|EUR ()"]
    );
    let plan = json!({
        "resourceType": "PlanDefinition", "id": "pd", "status": "active",
        "url": "http://example.org/PlanDefinition/pd",
        "relatedArtifact": [
            {"type": "depends-on", "resource": "http://example.org/Library/lib|1.0"},
            {"type": "citation", "citation": "x"}
        ],
        "library": ["http://example.org/Library/other"],
        "useContext": [{
            "code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "age"},
            "valueRange": {"low": {"value": 18, "unit": "a"}}
        }, {
            "code": {"system": "http://terminology.hl7.org/CodeSystem/usage-context-type", "code": "focus"},
            "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}
        }]
    });
    assert_eq!(
        values(&plan, "url"),
        ["uri:http://example.org/PlanDefinition/pd"]
    );
    assert_eq!(
        values(&plan, "depends-on"),
        [
            "uri:http://example.org/Library/lib|1.0",
            "uri:http://example.org/Library/other"
        ]
    );
    assert_eq!(values(&plan, "context-quantity"), ["[18 | (a), ]"]);
    assert_eq!(
        values(&plan, "context-type-quantity"),
        ["(http://terminology.hl7.org/CodeSystem/usage-context-type|age ; [18 | (a), ])"]
    );
    assert_eq!(
        values(&plan, "context-type-value"),
        ["(http://terminology.hl7.org/CodeSystem/usage-context-type|focus ; http://snomed.info/sct|1)"]
    );
}

#[test]
fn bundles_molecular_sequences_and_unknown_input() {
    let bundle = json!({"resourceType": "Bundle", "id": "b", "type": "document",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:0c3151bd"},
        "timestamp": "2024-01-01T00:00:00Z",
        "entry": [{"resource": {"resourceType": "Composition", "id": "c1"}}]});
    assert_eq!(
        values(&bundle, "composition"),
        ["ref=Composition/c1 url=- type=Composition id=-"]
    );
    assert_eq!(values(&bundle, "type"), ["|document"]);
    // %resource inside a composite component.
    let seq = json!({"resourceType": "MolecularSequence", "type": "dna", "coordinateSystem": 0,
        "referenceSeq": {"chromosome": {"coding": [{"system": "http://x", "code": "1"}]}},
        "variant": [{"start": 10, "end": 11}]});
    assert_eq!(
        values(&seq, "chromosome-variant-coordinate"),
        ["(http://x|1 ; 10 ; 11)"]
    );
    assert_eq!(values(&seq, "variant-start"), ["10"]);

    assert!(extract(&json!({"resourceType": "NoSuchType", "id": "x"})).is_empty());
    assert!(extract(&json!({"id": "x"})).is_empty());
    assert!(extract(&json!([1, 2])).is_empty());
    // Wrongly shaped data gives no values rather than a panic.
    let odd = json!({"resourceType": "Observation", "code": "not-an-object", "subject": [1, null],
        "effectiveDateTime": "yesterday", "valueQuantity": {"value": "72"}, "meta": null});
    let e = extract(&odd);
    assert!(
        e.iter()
            .all(|e| e.code != "date" && e.code != "value-quantity"),
        "{e:?}"
    );
}

#[test]
fn inverted_periods_cover_both_ends() {
    let enc = json!({"resourceType": "Encounter", "status": "finished",
        "class": {"code": "AMB"},
        "period": {"start": "2024-05-02", "end": "2024-05-01"}});
    assert_eq!(
        values(&enc, "date"),
        ["2024-05-01T00:00:00Z..2024-05-02T23:59:59.999999Z"]
    );
}
