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

/// The response format: `_format` (400 if unknown) overrides `Accept` (first type we speak wins).
pub fn negotiate(headers: &HeaderMap, params: &[(String, String)]) -> Result<Format> {
    if let Some((_, f)) = params.iter().find(|(k, _)| k == "_format") {
        return Format::from_mime(f).ok_or_else(|| {
            FhirError::bad_request(
                "_format",
                "_format must be json, xml or a FHIR JSON/XML MIME type",
            )
        });
    }
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    Ok(accept
        .split(',')
        .find_map(Format::from_mime)
        .unwrap_or(Format::Json))
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
