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

/// Longest pause while a request body is read: a client that stops sending (a body shorter than
/// its `Content-Length`) gets 408 after it instead of holding a worker until the request timeout.
pub const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads at most `limit` bytes; more is a 413, a pause longer than [`BODY_IDLE_TIMEOUT`] a 408.
pub async fn read_limited(body: Body, limit: usize) -> Result<bytes::Bytes, FhirError> {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut out = bytes::BytesMut::new();
    loop {
        let frame = match tokio::time::timeout(BODY_IDLE_TIMEOUT, body.frame()).await {
            Err(_) => {
                return Err(FhirError::RequestTimeout(format!(
                    "the request body stopped arriving for {} s",
                    BODY_IDLE_TIMEOUT.as_secs()
                )))
            }
            Ok(None) => return Ok(out.freeze()),
            Ok(Some(Err(_))) => {
                return Err(FhirError::bad_request(
                    "body",
                    "the request body could not be read completely",
                ))
            }
            Ok(Some(Ok(frame))) => frame,
        };
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > limit {
                return Err(FhirError::PayloadTooLarge(limit));
            }
            out.extend_from_slice(&data);
        }
    }
}

/// The format of a request body from its `Content-Type`; JSON when none is given.
pub(crate) fn body_format(headers: &axum::http::HeaderMap) -> Result<Format, FhirError> {
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
    let format =
        Format::from_mime(&lower).ok_or_else(|| FhirError::UnsupportedMediaType(ct.to_owned()))?;
    crate::fhir::format::check_fhir_version(ct, "Content-Type")?;
    Ok(format)
}
