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
mod narrative;
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
///
/// The narrative XHTML (`text.div`) is copied verbatim from the document, whitespace included.
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
    let mut json = fhirbolt::json::to_json_value(resource, None)
        .map_err(|e| CodecError::Invalid(vec![structure("", e.to_string())]))?;
    // fhirbolt trims the text nodes of the narrative XHTML; the narrative is taken verbatim.
    narrative::keep_xml_divs(bytes, &mut json);
    Ok(json)
}

/// Renders a FHIR JSON resource as FHIR XML.
///
/// The narrative XHTML (`text.div`) is written exactly as the JSON has it, whitespace included.
pub fn json_to_xml(value: &Value) -> Result<Vec<u8>, CodecError> {
    let resource = typed(value)?;
    let xml = fhirbolt::xml::to_vec(&resource, None)
        .map_err(|e| CodecError::Invalid(vec![structure("", e.to_string())]))?;
    Ok(narrative::restore_json_divs(xml, value))
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

    const XHTML: &str = r#"<div xmlns="http://www.w3.org/1999/xhtml">Generated by <a href="x">Synthea</a> and <b>bold</b> text</div>"#;

    fn xml_patient(narrative: &str) -> String {
        format!(
            r#"<Patient xmlns="http://hl7.org/fhir">
  <id value="p1"/>
  <text>
    <status value="generated"/>
    {narrative}
  </text>
</Patient>"#
        )
    }

    #[test]
    fn xml_narrative_keeps_its_whitespace() {
        let json = xml_to_json(xml_patient(XHTML).as_bytes()).expect("json");
        assert_eq!(json["text"]["div"], XHTML);
        let xml = String::from_utf8(json_to_xml(&json).expect("xml")).expect("utf-8");
        assert!(xml.contains(XHTML), "{xml}");
        // What the server stores goes through validate: it keeps the div as it is.
        assert_eq!(validate(json).expect("valid")["text"]["div"], XHTML);
    }

    #[test]
    fn json_narrative_is_written_to_xml_exactly() {
        let div = "<div xmlns=\"http://www.w3.org/1999/xhtml\">Generated by <a href=\"https://github.com/synthetichealth/synthea\">Synthea</a>.Version identifier: v2.4.0-404-ge7ce2295\n .   Person seed: 123 &lt;&amp;&gt; \u{e9}\r\n  <div>  nested  </div><br/> </div>";
        let v = json!({"resourceType":"Patient","id":"s1","text":{"status":"generated","div":div},
            "contained":[{"resourceType":"Basic","id":"c1","code":{"text":"x"},
                "text":{"status":"generated","div":"<div xmlns=\"http://www.w3.org/1999/xhtml\"> contained </div>"}}]});
        let xml = String::from_utf8(json_to_xml(&v).expect("xml")).expect("utf-8");
        assert!(xml.contains(div), "{xml}");
        assert!(
            xml.contains(r#"<div xmlns="http://www.w3.org/1999/xhtml"> contained </div>"#),
            "{xml}"
        );
        assert_eq!(xml_to_json(xml.as_bytes()).expect("json"), v);
    }

    #[test]
    fn narratives_are_matched_by_path_in_bundles_and_contained_resources() {
        let d =
            |s: &str| format!(r#"<div xmlns="http://www.w3.org/1999/xhtml"> {s} <i>x</i> </div>"#);
        let xml = format!(
            r#"<Bundle xmlns="http://hl7.org/fhir"><type value="collection"/>
<entry><resource><Patient><text><status value="generated"/>{}</text>
<contained><Basic><id value="b1"/><text><status value="generated"/>{}</text><code><text value="x"/></code></Basic></contained>
<contained><Basic><id value="b2"/><text><status value="generated"/>{}</text><code><text value="x"/></code></Basic></contained>
</Patient></resource></entry>
<entry><resource><Composition><text><status value="generated"/>{}</text><status value="final"/><type><text value="t"/></type><date value="2024-01-01"/><author><display value="a"/></author><title value="t"/>
<section><text><status value="generated"/>{}</text></section><section><title value="empty"/></section><section><text><status value="generated"/>{}</text></section>
</Composition></resource></entry></Bundle>"#,
            d("patient"),
            d("b1"),
            d("b2"),
            d("composition"),
            d("section 1"),
            d("section 3"),
        );
        let json = xml_to_json(xml.as_bytes()).expect("json");
        let p = &json["entry"][0]["resource"];
        assert_eq!(p["text"]["div"], d("patient"));
        assert_eq!(p["contained"][0]["text"]["div"], d("b1"));
        assert_eq!(p["contained"][1]["text"]["div"], d("b2"));
        let c = &json["entry"][1]["resource"];
        assert_eq!(c["text"]["div"], d("composition"));
        assert_eq!(c["section"][0]["text"]["div"], d("section 1"));
        assert_eq!(c["section"][2]["text"]["div"], d("section 3"));
        let back = String::from_utf8(json_to_xml(&json).expect("xml")).expect("utf-8");
        for s in [
            "patient",
            "b1",
            "b2",
            "composition",
            "section 1",
            "section 3",
        ] {
            assert!(back.contains(&d(s)), "{s}: {back}");
        }
        assert_eq!(xml_to_json(back.as_bytes()).expect("json"), json);
    }

    #[test]
    fn the_outer_div_keeps_its_attributes_and_id() {
        let div = r#"<div xmlns="http://www.w3.org/1999/xhtml" id="n1" lang="en"> x </div>"#;
        let json = xml_to_json(xml_patient(div).as_bytes()).expect("json");
        assert_eq!(json["text"]["div"], div);
        assert!(json["text"].get("_div").is_none(), "{json}");
        let xml = String::from_utf8(json_to_xml(&json).expect("xml")).expect("utf-8");
        assert!(xml.contains(div), "{xml}");
    }

    #[test]
    fn comments_and_references_in_a_narrative_are_kept() {
        let div = r#"<div xmlns="http://www.w3.org/1999/xhtml"> <!-- a comment --> &lt;b&gt; &amp; &#160;<br/> </div>"#;
        let json = xml_to_json(xml_patient(div).as_bytes()).expect("json");
        assert_eq!(json["text"]["div"], div);
        let xml = String::from_utf8(json_to_xml(&json).expect("xml")).expect("utf-8");
        assert!(xml.contains(div), "{xml}");
    }

    #[test]
    fn narratives_fhirbolt_refuses_are_refused() {
        for bad in [
            // JSON needs the unprefixed div; fhirbolt refuses the prefixed namespace.
            r#"<h:div xmlns:h="http://www.w3.org/1999/xhtml"><h:p>x</h:p></h:div>"#,
            r#"<div xmlns="http://www.w3.org/1999/xhtml"><![CDATA[x]]></div>"#,
            r#"<div xmlns="http://www.w3.org/1999/xhtml"><p>x</div>"#,
            r#"<div xmlns="http://example.org">x</div>"#,
            r#"<div>x</div>"#,
        ] {
            assert!(
                matches!(
                    xml_to_json(xml_patient(bad).as_bytes()),
                    Err(CodecError::Syntax { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn xml_round_trips() {
        let v = json!({"resourceType":"Patient","id":"x","active":true,"name":[{"family":"Doe"}]});
        let xml = json_to_xml(&v).expect("xml");
        let back = xml_to_json(&xml).expect("json");
        assert_eq!(back, v);
    }
}
