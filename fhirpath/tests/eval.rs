//! Table tests for the FHIRPath evaluator: paths, choice types, `as`/`is`/`ofType`,
//! unions, `where`, `resolve()`, `extension()`, logic and literals.

use fhirgate_fhirpath::Expression;
use serde_json::{json, Value};

fn observation() -> Value {
    json!({
        "resourceType": "Observation",
        "id": "bp",
        "meta": {"lastUpdated": "2024-05-01T10:00:00Z", "tag": [{"system": "s", "code": "t"}]},
        "extension": [
            {"url": "http://example.org/a", "valueString": "A"},
            {"url": "http://example.org/b", "valueCode": "B"}
        ],
        "contained": [{"resourceType": "Practitioner", "id": "pr1"}],
        "status": "final",
        "code": {"coding": [
            {"system": "http://loinc.org", "code": "85354-9"},
            {"system": "http://snomed.info/sct", "code": "75367002"}
        ], "text": "Blood pressure"},
        "subject": {"reference": "Patient/p1"},
        "performer": [
            {"reference": "#pr1"},
            {"reference": "https://other.org/fhir/Organization/o1/_history/2"},
            {"reference": "urn:uuid:7e0e4bd0-2b4d-4b53-9d6e-2c3f3cf0a3f1"},
            {"identifier": {"value": "x"}, "type": "RelatedPerson"}
        ],
        "effectiveDateTime": "2024-05-01T09:30:00+02:00",
        "valueQuantity": {"value": 120, "unit": "mmHg"},
        "component": [
            {"code": {"coding": [{"code": "sys"}]}, "valueQuantity": {"value": 120}},
            {"code": {"coding": [{"code": "dia"}]}, "valueString": "n/a"},
            {"code": {"coding": [{"code": "age"}]}, "valueInteger": 7}
        ]
    })
}

fn eval(src: &str, resource: &Value) -> Vec<Value> {
    let e = Expression::parse(src).unwrap_or_else(|err| panic!("{src}: {err}"));
    e.evaluate(resource).iter().map(|i| i.to_json()).collect()
}

#[test]
fn table() {
    let obs = observation();
    let cases: Vec<(&str, Value)> = vec![
        // Paths and array flattening.
        ("Observation.status", json!(["final"])),
        (
            "Observation.code.coding.code",
            json!(["85354-9", "75367002"]),
        ),
        (
            "Observation.component.code.coding.code",
            json!(["sys", "dia", "age"]),
        ),
        ("Observation.code.text", json!(["Blood pressure"])),
        ("Observation.nothing", json!([])),
        ("Patient.name", json!([])),
        ("Resource.id", json!(["bp"])),
        ("DomainResource.id", json!(["bp"])),
        ("Observation.meta.tag.code", json!(["t"])),
        ("status", json!(["final"])),
        ("$this.status", json!(["final"])),
        ("%resource.status", json!(["final"])),
        // Choice types.
        ("Observation.value", json!([{"value": 120, "unit": "mmHg"}])),
        ("Observation.value.unit", json!(["mmHg"])),
        (
            "Observation.effective",
            json!(["2024-05-01T09:30:00+02:00"]),
        ),
        (
            "Observation.component.value",
            json!([{"value": 120}, "n/a", 7]),
        ),
        ("(Observation.value as Quantity).value", json!([120])),
        ("Observation.value.as(Quantity).unit", json!(["mmHg"])),
        ("Observation.value as string", json!([])),
        ("Observation.value.as(Period)", json!([])),
        (
            "Observation.component.value.ofType(Quantity).value",
            json!([120]),
        ),
        ("Observation.component.value.ofType(string)", json!(["n/a"])),
        ("Observation.component.value.ofType(integer)", json!([7])),
        (
            "Observation.component.value.ofType(FHIR.string)",
            json!(["n/a"]),
        ),
        (
            "Observation.component.value.ofType(System.String)",
            json!(["n/a"]),
        ),
        (
            "Observation.effective.as(DateTime)",
            json!(["2024-05-01T09:30:00+02:00"]),
        ),
        (
            "Observation.effective.as(dateTime)",
            json!(["2024-05-01T09:30:00+02:00"]),
        ),
        ("Observation.value is Quantity", json!([true])),
        ("Observation.value.is(Quantity)", json!([true])),
        ("Observation.value is Period", json!([false])),
        ("Observation.status is code", json!([true])),
        ("Observation.status is string", json!([true])),
        (
            "Observation.component.value.where($this is string)",
            json!(["n/a"]),
        ),
        // Unions remove duplicates.
        ("Observation.status | Observation.status", json!(["final"])),
        (
            "Observation.status | Observation.id",
            json!(["final", "bp"]),
        ),
        ("Patient.id | Observation.id", json!(["bp"])),
        // where.
        (
            "Observation.component.where(code.coding.code = 'dia').value",
            json!(["n/a"]),
        ),
        (
            "Observation.component.where(code.coding.code != 'dia').code.coding.code",
            json!(["sys", "age"]),
        ),
        (
            "Observation.code.coding.where(system = 'http://loinc.org' and code = '85354-9').code",
            json!(["85354-9"]),
        ),
        (
            "Observation.code.coding.where(code = 'x' or system = %sct).code",
            json!(["75367002"]),
        ),
        (
            "Observation.code.coding.where(system = %loinc).code",
            json!(["85354-9"]),
        ),
        // resolve().
        (
            "Observation.subject.where(resolve() is Patient).reference",
            json!(["Patient/p1"]),
        ),
        ("Observation.subject.where(resolve() is Group)", json!([])),
        (
            "Observation.subject.where(resolve().is(Patient)).reference",
            json!(["Patient/p1"]),
        ),
        (
            "Observation.performer.where(resolve() is Practitioner).reference",
            json!(["#pr1"]),
        ),
        (
            "Observation.performer.where(resolve() is Organization).reference",
            json!(["https://other.org/fhir/Organization/o1/_history/2"]),
        ),
        (
            "Observation.performer.where(resolve() is RelatedPerson).identifier.value",
            json!(["x"]),
        ),
        (
            "Observation.performer.resolve()",
            json!(["Practitioner", "Organization", "RelatedPerson"]),
        ),
        (
            "Observation.performer.where(resolve() is Resource).count()",
            json!([3]),
        ),
        // extension.
        (
            "Observation.extension('http://example.org/b').value",
            json!(["B"]),
        ),
        (
            "Observation.extension.where(url = 'http://example.org/a').value",
            json!(["A"]),
        ),
        (
            "Observation.extension('http://example.org/none')",
            json!([]),
        ),
        (
            "Observation.extension('http://example.org/a').value.ofType(string)",
            json!(["A"]),
        ),
        // Existence, logic, subsetting.
        ("Observation.component.exists()", json!([true])),
        ("Observation.bodySite.exists()", json!([false])),
        ("Observation.bodySite.empty()", json!([true])),
        (
            "Observation.component.exists(code.coding.code = 'age')",
            json!([true]),
        ),
        (
            "Observation.component.first().code.coding.code",
            json!(["sys"]),
        ),
        (
            "Observation.component.last().code.coding.code",
            json!(["age"]),
        ),
        (
            "Observation.component.tail().code.coding.code",
            json!(["dia", "age"]),
        ),
        ("Observation.component[1].value", json!(["n/a"])),
        ("Observation.component[5]", json!([])),
        ("Observation.component.count()", json!([3])),
        ("Observation.status.exists().not()", json!([false])),
        ("Observation.status = 'final'", json!([true])),
        ("Observation.status = 'draft'", json!([false])),
        ("Observation.status ~ 'FINAL'", json!([true])),
        ("Observation.status != 'draft'", json!([true])),
        ("Observation.nothing = 'x'", json!([])),
        ("true and Observation.nothing.exists()", json!([false])),
        ("true and Observation.nothing", json!([])),
        ("false and Observation.nothing", json!([false])),
        ("true or Observation.nothing", json!([true])),
        ("true xor false", json!([true])),
        ("false implies Observation.nothing", json!([true])),
        (
            "Observation.component.value.ofType(integer) = 7",
            json!([true]),
        ),
        ("Observation.component.all(code.exists())", json!([true])),
        (
            "Observation.component.select(code.coding.code)",
            json!(["sys", "dia", "age"]),
        ),
        ("Observation.status.hasValue()", json!([true])),
        ("{}", json!([])),
        ("'a' | 'b'", json!(["a", "b"])),
        ("%ucum", json!(["http://unitsofmeasure.org"])),
        ("1.5", json!([1.5])),
        ("-2", json!([-2])),
        // Contained resources are typed by their resourceType.
        (
            "Observation.contained.ofType(Practitioner).id",
            json!(["pr1"]),
        ),
        ("Observation.contained.ofType(Patient)", json!([])),
        (
            "Observation.contained.where($this is DomainResource).id",
            json!(["pr1"]),
        ),
    ];
    let mut failures = Vec::new();
    for (src, want) in cases {
        let got = Value::Array(eval(src, &obs));
        if got != want {
            failures.push(format!("{src}\n   want {want}\n    got {got}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn patient_deceased_expression() {
    let src = "Patient.deceased.exists() and Patient.deceased != false";
    let cases = [
        (json!({"resourceType": "Patient"}), json!([false])),
        (
            json!({"resourceType": "Patient", "deceasedBoolean": false}),
            json!([false]),
        ),
        (
            json!({"resourceType": "Patient", "deceasedBoolean": true}),
            json!([true]),
        ),
        (
            json!({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"}),
            json!([true]),
        ),
    ];
    for (patient, want) in cases {
        assert_eq!(Value::Array(eval(src, &patient)), want, "{patient}");
    }
}

#[test]
fn bundle_indexer_and_untyped_json() {
    let bundle = json!({"resourceType": "Bundle", "type": "document", "entry": [
        {"resource": {"resourceType": "Composition", "id": "c1"}},
        {"resource": {"resourceType": "Patient", "id": "p1"}}
    ]});
    assert_eq!(eval("Bundle.entry[0].resource.id", &bundle), [json!("c1")]);
    assert_eq!(
        eval("Bundle.entry.resource.ofType(Patient).id", &bundle),
        [json!("p1")]
    );
    // Elements the model does not know are still reachable inside unknown JSON.
    let odd = json!({"resourceType": "NotAType", "a": {"b": [1, 2]}});
    assert_eq!(eval("a.b", &odd), [json!(1), json!(2)]);
    // ...but not on a known type.
    let obs = json!({"resourceType": "Observation", "madeUp": 1});
    assert!(eval("Observation.madeUp", &obs).is_empty());
}

#[test]
fn evaluate_on_a_focus() {
    let obs = observation();
    let comp = Expression::parse("Observation.component").unwrap();
    let items = comp.evaluate(&obs);
    let value = Expression::parse("value.as(Quantity).value | %resource.id").unwrap();
    let got: Vec<Value> = value
        .evaluate_on(&obs, items[0])
        .iter()
        .map(|i| i.to_json())
        .collect();
    assert_eq!(got, [json!(120), json!("bp")]);
    assert_eq!(items[0].type_name(), Some("Observation.component"));
}

#[test]
fn parse_errors_are_reported() {
    for bad in [
        "Observation.code.substring(1)",
        "Observation.value as NotAType",
        "Observation.",
        "Observation.component[",
        "a <= b",
        "@2020-01-01",
        "$index",
    ] {
        let err = Expression::parse(bad).expect_err(bad);
        assert!(!err.message.is_empty());
    }
}
