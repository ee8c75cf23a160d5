//! Reading reference strings: `Patient/123`, `https://host/fhir/Patient/123/_history/2`,
//! `#contained-id`, `urn:uuid:…`. Used by `resolve()` and by reference index values.

use serde_json::Value;

use crate::model::is_resource_type;

/// What a reference string says about its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedReference<'a> {
    /// The target's resource type, when the string names one (or, for `#id`, the type of
    /// the contained resource with that id).
    pub target_type: Option<&'a str>,
    /// The `Type/id` part of the string (a slice of it, version dropped), when present.
    pub local: Option<&'a str>,
    /// Whether the string is an absolute URL or URN.
    pub absolute: bool,
}

/// Parses `reference`; `resource` is the resource holding it, for `#id` references.
pub fn parse_reference<'a>(reference: &'a str, resource: Option<&'a Value>) -> ParsedReference<'a> {
    if let Some(id) = reference.strip_prefix('#') {
        let target_type = resource
            .and_then(|r| r.get("contained"))
            .and_then(Value::as_array)
            .and_then(|list| {
                list.iter()
                    .find(|c| c.get("id").and_then(Value::as_str) == Some(id))
            })
            .and_then(|c| c.get("resourceType"))
            .and_then(Value::as_str);
        return ParsedReference {
            target_type,
            local: None,
            absolute: false,
        };
    }
    let absolute = reference.contains(':');
    // Conditional references (`Patient?identifier=…`) name no instance.
    if reference.contains('?') {
        return ParsedReference {
            target_type: None,
            local: None,
            absolute,
        };
    }
    let unversioned = match reference.find("/_history/") {
        Some(i) => &reference[..i],
        None => reference,
    };
    let mut parts = unversioned.rsplitn(3, '/');
    let id = parts.next().unwrap_or("");
    let Some(ty) = parts.next() else {
        return ParsedReference {
            target_type: None,
            local: None,
            absolute,
        };
    };
    if id.is_empty() || !is_resource_type(ty) {
        return ParsedReference {
            target_type: None,
            local: None,
            absolute,
        };
    }
    let start = unversioned.len() - id.len() - ty.len() - 1;
    ParsedReference {
        target_type: Some(ty),
        local: Some(&unversioned[start..]),
        absolute,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let p = parse_reference("Patient/123", None);
        assert_eq!(p.target_type, Some("Patient"));
        assert_eq!(p.local, Some("Patient/123"));
        assert!(!p.absolute);

        let p = parse_reference("https://x.org/fhir/Observation/a-1/_history/3", None);
        assert_eq!(p.target_type, Some("Observation"));
        assert_eq!(p.local, Some("Observation/a-1"));
        assert!(p.absolute);

        let p = parse_reference("urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0", None);
        assert_eq!(p.target_type, None);
        assert!(p.absolute);

        let p = parse_reference("Patient?identifier=x|1", None);
        assert_eq!(p.local, None);

        let p = parse_reference("Unknown/1", None);
        assert_eq!(p.target_type, None);

        let r = serde_json::json!({"resourceType": "Observation",
            "contained": [{"resourceType": "Patient", "id": "p1"}]});
        let p = parse_reference("#p1", Some(&r));
        assert_eq!(p.target_type, Some("Patient"));
        assert_eq!(parse_reference("#nope", Some(&r)).target_type, None);
    }
}
