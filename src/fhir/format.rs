//! Content negotiation (<https://hl7.org/fhir/R4/http.html#mime-type>): the request body by
//! `Content-Type`, the response by `_format`, else `Accept`. JSON is the default.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::error::{FhirError, Result};

/// A wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/fhir+json`.
    Json,
    /// `application/fhir+xml`.
    Xml,
}

impl Format {
    /// The `Content-Type` we send.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/fhir+json; charset=utf-8",
            Self::Xml => "application/fhir+xml; charset=utf-8",
        }
    }

    /// Classifies a MIME type or `_format` value; `None` for anything we do not speak.
    pub fn from_mime(m: &str) -> Option<Self> {
        let essence = m
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "json"
            | "application/json"
            | "application/fhir+json"
            | "application/json+fhir"
            | "text/json" => Some(Self::Json),
            "xml"
            | "application/xml"
            | "application/fhir+xml"
            | "application/xml+fhir"
            | "text/xml" => Some(Self::Xml),
            _ => None,
        }
    }
}

/// The FHIR version this server speaks, as the `fhirVersion` MIME parameter names it
/// (<https://hl7.org/fhir/R4/http.html#version-parameter>).
const FHIR_VERSIONS: [&str; 2] = ["4.0", "4.0.1"];

/// The `fhirVersion` parameter of one media range, if it names one.
fn fhir_version(range: &str) -> Option<&str> {
    range.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("fhirVersion")
            .then(|| v.trim().trim_matches('"'))
    })
}

/// 406 unless `range` asks for R4 or no version at all. `what` names the header.
pub fn check_fhir_version(range: &str, what: &str) -> Result<()> {
    match fhir_version(range) {
        Some(v) if !FHIR_VERSIONS.contains(&v) => Err(FhirError::Status(
            StatusCode::NOT_ACCEPTABLE,
            format!(
                "{what} asks for FHIR version {v}; this server speaks FHIR R4 (fhirVersion=4.0)"
            ),
        )),
        _ => Ok(()),
    }
}

/// The quality of one media range (`q=`, 1 when absent or unreadable).
fn quality(range: &str) -> f32 {
    range
        .split(';')
        .skip(1)
        .find_map(|p| p.trim().strip_prefix("q="))
        .and_then(|q| q.trim().parse::<f32>().ok())
        .unwrap_or(1.0)
}

/// The response format: `_format` (400 if unknown) overrides `Accept`, where the type we speak
/// with the highest `q` wins (the first on a tie; JSON when none is ours). A `fhirVersion` other
/// than R4's is 406.
pub fn negotiate(headers: &HeaderMap, params: &[(String, String)]) -> Result<Format> {
    if let Some((_, f)) = params.iter().find(|(k, _)| k == "_format") {
        // An unencoded `+` in a query string reads as a space: `application/fhir+json`.
        let f = f.replace(' ', "+");
        check_fhir_version(&f, "_format")?;
        return Format::from_mime(&f).ok_or_else(|| {
            FhirError::bad_request(
                "_format",
                "_format must be json, xml or a FHIR JSON/XML MIME type",
            )
        });
    }
    let mut best: Option<(f32, Format)> = None;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let q = quality(range);
            let Some(format) = Format::from_mime(range) else {
                continue;
            };
            if q <= 0.0 {
                continue;
            }
            check_fhir_version(range, "Accept")?;
            if best.is_none_or(|(b, _)| q > b) {
                best = Some((q, format));
            }
        }
    }
    Ok(best.map_or(Format::Json, |(_, f)| f))
}

/// Parses a query string into pairs (repeated keys are kept in order).
pub fn query_pairs(raw: Option<&str>) -> Vec<(String, String)> {
    raw.map(|q| {
        form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    })
    .unwrap_or_default()
}

/// A response carrying a FHIR resource in `format`, from its canonical JSON bytes.
pub fn resource_bytes(status: StatusCode, format: Format, json: Vec<u8>) -> Result<Response> {
    let body = match format {
        Format::Json => json,
        Format::Xml => fhirgate_codec::json_to_xml(&fhirgate_codec::parse_json(&json)?)?,
    };
    Ok(with_type(status, format, body))
}

/// A response carrying a resource given as a JSON value.
pub fn resource_value(status: StatusCode, format: Format, v: &Value) -> Result<Response> {
    let body = match format {
        Format::Json => serde_json::to_vec(v).map_err(|e| FhirError::Internal(e.into()))?,
        Format::Xml => fhirgate_codec::json_to_xml(v)?,
    };
    Ok(with_type(status, format, body))
}

fn with_type(status: StatusCode, format: Format, body: Vec<u8>) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::{negotiate, Format};
    use axum::http::{header, HeaderMap, HeaderValue};

    fn accept(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::ACCEPT, HeaderValue::from_str(v).expect("header"));
        }
        h
    }

    #[test]
    fn the_highest_quality_we_speak_wins() {
        for (values, want) in [
            (
                vec!["application/fhir+xml;q=0.5, application/fhir+json"],
                Format::Json,
            ),
            (
                vec!["application/fhir+json;q=0.2, application/fhir+xml;q=0.9"],
                Format::Xml,
            ),
            (
                vec!["application/fhir+xml", "application/fhir+json"],
                Format::Xml,
            ),
            (
                vec!["text/html, application/xml;q=0.9, */*;q=0.8"],
                Format::Xml,
            ),
            (
                vec!["application/fhir+xml;q=0, application/json;q=0.1"],
                Format::Json,
            ),
            (vec!["text/html"], Format::Json),
            (vec![], Format::Json),
        ] {
            assert_eq!(
                negotiate(&accept(&values), &[]).expect("ok"),
                want,
                "{values:?}"
            );
        }
    }

    #[test]
    fn fhir_versions_other_than_r4_are_406() {
        for ok in [
            "application/fhir+json; fhirVersion=4.0",
            "application/fhir+xml;fhirVersion=4.0.1",
        ] {
            assert!(negotiate(&accept(&[ok]), &[]).is_ok(), "{ok}");
        }
        for bad in [
            "application/fhir+json; fhirVersion=3.0",
            "application/fhir+json;fhirVersion=5.0",
        ] {
            let e = negotiate(&accept(&[bad]), &[]).expect_err(bad);
            assert!(e.to_string().contains("R4"), "{e}");
        }
    }

    #[test]
    fn format_aliases_and_an_unencoded_plus() {
        for (f, want) in [
            ("json", Format::Json),
            ("application/json", Format::Json),
            ("application/fhir json", Format::Json),
            ("xml", Format::Xml),
            ("text/xml", Format::Xml),
            ("application/fhir+xml", Format::Xml),
        ] {
            let p = vec![("_format".to_owned(), f.to_owned())];
            assert_eq!(negotiate(&HeaderMap::new(), &p).expect(f), want, "{f}");
        }
        let p = vec![("_format".to_owned(), "turtle".to_owned())];
        assert!(negotiate(&HeaderMap::new(), &p).is_err());
    }
}
