//! The request-body extractor: size limit (413), content type (415), strict JSON or XML parsing
//! (400 with the position of the error).

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde_json::Value;

use crate::error::FhirError;
use crate::fhir::format::Format;
use crate::state::AppState;

/// A parsed FHIR body (XML is converted to the equivalent JSON).
pub struct FhirBody(pub Value);

impl FromRequest<AppState> for FhirBody {
    type Rejection = FhirError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, FhirError> {
        let format = body_format(req.headers())?;
        let limit = state.max_body_bytes;
        if let Some(len) = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            if len > limit as u64 {
                return Err(FhirError::PayloadTooLarge(limit));
            }
        }
        let bytes = read_limited(req.into_body(), limit).await?;
        let value = match format {
            Format::Json => fhirgate_codec::parse_json(&bytes)?,
            Format::Xml => fhirgate_codec::xml_to_json(&bytes)?,
        };
        if !value.is_object() {
            return Err(FhirError::bad_request(
                "resourceType",
                "the body must be a FHIR resource (a JSON object)",
            ));
        }
        Ok(Self(value))
    }
}

/// Reads at most `limit` bytes; more is a 413.
pub async fn read_limited(body: Body, limit: usize) -> Result<bytes::Bytes, FhirError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if e.into_inner().is::<http_body_util::LengthLimitError>() {
            FhirError::PayloadTooLarge(limit)
        } else {
            FhirError::bad_request("body", "the request body could not be read completely")
        }
    })
}

/// The format of a request body from its `Content-Type`; JSON when none is given.
fn body_format(headers: &axum::http::HeaderMap) -> Result<Format, FhirError> {
    let Some(ct) = headers.get(header::CONTENT_TYPE) else {
        return Ok(Format::Json);
    };
    let ct = ct
        .to_str()
        .map_err(|_| FhirError::UnsupportedMediaType("(not ASCII)".into()))?;
    let lower = ct.to_ascii_lowercase();
    if let Some(charset) = lower
        .split(';')
        .skip(1)
        .find_map(|p| p.trim().strip_prefix("charset="))
    {
        if charset.trim_matches('"') != "utf-8" {
            return Err(FhirError::UnsupportedMediaType(format!(
                "{ct} (only UTF-8 is accepted)"
            )));
        }
    }
    Format::from_mime(&lower).ok_or_else(|| FhirError::UnsupportedMediaType(ct.to_owned()))
}
