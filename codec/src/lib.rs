//! The one place where fhirbolt is instantiated.
//!
//! fhirbolt's generic (de)serialisers take minutes to monomorphise for the full R4 model, so every
//! call into them lives in this small crate behind non-generic functions. The server and the tools
//! depend on this crate and never name a fhirbolt type, so editing the server does not recompile the
//! FHIR model.
//!
//! What it offers:
//! - [`parse_json`]: strict JSON syntax (no duplicate keys, serde_json's depth limit of 128) with the
//!   line and column of the first error;
//! - [`xml_to_json`] and [`json_to_xml`]: the XML format, through fhirbolt's typed R4 model;
//! - [`validate`]: fhirbolt's strict structural parse, then the checks fhirbolt does not make
//!   (primitive formats, JSON types of primitives, required bindings on `code` elements, reference
//!   format), each reported with a FHIRPath-style `expression` naming the element
//!   (<https://hl7.org/fhir/R4/datatypes.html#primitive>).

mod model;
mod primitive;
mod strict_json;
mod walk;
mod xml_check;

use fhirbolt::model::r4::Resource;
use fhirbolt::serde::{DeserializationConfig, DeserializationMode};
use serde_json::Value;

pub use model::{element, has_element, is_resource_type, resource_types};
pub use primitive::{
    has_control_character, is_valid_date_time, is_valid_id, is_valid_instant, MAX_STRING_BYTES,
};
pub use walk::is_absolute as is_absolute_reference;

/// The kind of a validation problem, mapped by the server to an OperationOutcome issue code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueKind {
    /// The content is not well formed for its type (`structure`).
    Structure,
    /// A primitive value does not match its datatype (`value`).
    Value,
    /// A code is not in the required value set (`code-invalid`).
    CodeInvalid,
}

/// One validation problem with the element it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// What kind of problem it is.
    pub kind: IssueKind,
    /// FHIRPath-style location, e.g. `Observation.component[1].valueQuantity.value`.
    pub expression: String,
    /// Human-readable description that names the element and the problem (never the value of a
    /// person-identifying element).
    pub message: String,
}

/// Errors from parsing or converting a body.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes are not well-formed JSON or XML.
    #[error("{message} at line {line} column {column}")]
    Syntax {
        /// What the parser said.
        message: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
    },
    /// The document parsed but is not a valid FHIR R4 resource.
    #[error("invalid resource: {}", .0.first().map(|i| i.message.as_str()).unwrap_or("unknown problem"))]
    Invalid(Vec<Issue>),
}

fn strict() -> Option<DeserializationConfig> {
    Some(DeserializationConfig {
        mode: DeserializationMode::Strict,
    })
}

/// Parses JSON bytes into a value, refusing duplicate object keys (a differential-parsing risk)
/// and nesting deeper than 128 levels.
pub fn parse_json(bytes: &[u8]) -> Result<Value, CodecError> {
    strict_json::from_slice(bytes)
}

/// Parses a FHIR XML document into the equivalent FHIR JSON value.
pub fn xml_to_json(bytes: &[u8]) -> Result<Value, CodecError> {
    xml_check::well_formed(bytes)?;
    let resource: Resource = fhirbolt::xml::from_slice(bytes, strict()).map_err(|e| {
        let message = e.to_string();
        CodecError::Syntax {
            message,
            line: 0,
            column: 0,
        }
    })?;
    fhirbolt::json::to_json_value(resource, None)
        .map_err(|e| CodecError::Invalid(vec![structure("", e.to_string())]))
}

/// Renders a FHIR JSON resource as FHIR XML.
pub fn json_to_xml(value: &Value) -> Result<Vec<u8>, CodecError> {
    let resource = typed(value)?;
    fhirbolt::xml::to_vec(&resource, None)
        .map_err(|e| CodecError::Invalid(vec![structure("", e.to_string())]))
}

fn typed(value: &Value) -> Result<Resource, CodecError> {
    typed_owned(value.clone())
}

fn typed_owned(value: Value) -> Result<Resource, CodecError> {
    let rt = value
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("Resource")
        .to_owned();
    fhirbolt::json::from_json_value::<Resource>(value, strict())
        .map_err(|e| CodecError::Invalid(vec![structure(&rt, e.to_string())]))
}

fn structure(expression: &str, message: String) -> Issue {
    Issue {
        kind: IssueKind::Structure,
        expression: expression.to_owned(),
        message,
    }
}

/// Validates a FHIR R4 resource given as JSON and returns its canonical form (elements in the
/// order of the specification, as fhirbolt serialises them).
///
/// First the element-by-element walk of `walk` for what fhirbolt accepts but R4 forbids, then
/// fhirbolt's strict typed parse (structure, unknown elements, cardinality of arrays).
pub fn validate(value: Value) -> Result<Value, Vec<Issue>> {
    let Some(rt) = value.get("resourceType").and_then(Value::as_str) else {
        return Err(vec![structure(
            "resourceType",
            "resourceType is missing".to_owned(),
        )]);
    };
    if !is_resource_type(rt) {
        return Err(vec![structure(
            "resourceType",
            format!("unknown resource type '{rt}'"),
        )]);
    }
    // Walk first: its messages name the element precisely, fhirbolt's do not.
    let issues = walk::validate_resource(&value);
    if !issues.is_empty() {
        return Err(issues);
    }
    let rt = rt.to_owned();
    let resource = typed_owned(value).map_err(|e| match e {
        CodecError::Invalid(issues) => issues,
        other => vec![structure(&rt, other.to_string())],
    })?;
    fhirbolt::json::to_json_value(resource, None).map_err(|e| vec![structure(&rt, e.to_string())])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn expr_of(v: Value) -> Vec<String> {
        validate(v)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|i| i.expression)
            .collect()
    }

    #[test]
    fn a_valid_observation_passes() {
        let v = json!({"resourceType":"Observation","id":"a1","status":"final",
            "code":{"coding":[{"system":"http://loinc.org","code":"8867-4"}]},
            "subject":{"reference":"Patient/p1"},"effectiveDateTime":"2024-01-02T10:00:00+01:00",
            "valueQuantity":{"value":72.50,"unit":"/min","system":"http://unitsofmeasure.org","code":"/min"}});
        assert!(validate(v).is_ok());
    }

    #[test]
    fn what_fhirbolt_accepts_is_rejected() {
        assert_eq!(
            expr_of(json!({"resourceType":"Patient","birthDate":"2024-13-45"})),
            ["Patient.birthDate"]
        );
        assert_eq!(
            expr_of(json!({"resourceType":"Observation","status":"bogus","code":{"text":"x"}})),
            ["Observation.status"]
        );
        assert_eq!(
            expr_of(
                json!({"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":"80"}})
            ),
            ["Observation.valueQuantity.value"]
        );
        assert_eq!(
            expr_of(json!({"resourceType":"Patient","id":"../etc"})),
            ["Patient.id"]
        );
    }

    #[test]
    fn references_must_be_well_formed() {
        let bad = json!({"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient/../x"}});
        assert_eq!(expr_of(bad), ["Observation.subject.reference"]);
        let cond = json!({"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patient?identifier=https://x|1"}});
        assert_eq!(expr_of(cond), ["Observation.subject.reference"]);
        let unknown = json!({"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":"Patiënt/1"}});
        assert_eq!(expr_of(unknown), ["Observation.subject.reference"]);
        for ok in [
            "Patient/1",
            "Patient/1/_history/2",
            "#c1",
            "urn:uuid:0d6f3b68-8f42-4a59-9c8e-6a2f0b7c1d11",
            "http://example.org/fhir/Patient/1",
        ] {
            let v = json!({"resourceType":"Observation","status":"final","code":{"text":"x"},"subject":{"reference":ok}});
            assert!(validate(v).is_ok(), "{ok}");
        }
    }

    #[test]
    fn duplicate_keys_are_refused() {
        assert!(matches!(
            parse_json(br#"{"id":"a","id":"b"}"#),
            Err(CodecError::Syntax { .. })
        ));
    }

    #[test]
    fn xml_round_trips() {
        let v = json!({"resourceType":"Patient","id":"x","active":true,"name":[{"family":"Doe"}]});
        let xml = json_to_xml(&v).expect("xml");
        let back = xml_to_json(&xml).expect("json");
        assert_eq!(back, v);
    }
}
