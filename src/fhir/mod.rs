//! The FHIR REST API (<https://hl7.org/fhir/R4/http.html>): routes, content negotiation, the
//! instance/type/system interactions and batch/transaction Bundles.

pub mod audit_event;
pub mod body;
pub mod bundle;
pub mod capabilities;
pub mod consent;
pub mod crud;
pub mod format;
pub mod history;
pub mod idempotency;
pub mod operation;
pub mod patch;
pub mod respond;
pub mod search;
pub mod summary;
pub mod write;

use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::error::FhirError;
use crate::state::AppState;

/// All FHIR routes under `/fhir`. Everything but `/metadata` needs a bearer token whose scopes
/// allow the interaction (`auth::guard`).
pub fn router(state: &AppState) -> Router<AppState> {
    let guarded = Router::new()
        // The audit trail: read-only, and exported by period.
        .route("/fhir/AuditEvent/$export", get(audit_event::export))
        .route(
            "/fhir/AuditEvent/{id}",
            get(audit_event::read_route)
                .put(audit_event::refuse_write)
                .delete(audit_event::refuse_write),
        )
        .route(
            "/fhir/AuditEvent",
            get(audit_event::search_route)
                .post(audit_event::refuse_write)
                .put(audit_event::refuse_write)
                .delete(audit_event::refuse_write),
        )
        .route(
            "/fhir",
            post(bundle::batch_or_transaction).get(search::search_system),
        )
        .route(
            "/fhir/",
            post(bundle::batch_or_transaction).get(search::search_system),
        )
        .route("/fhir/_history", get(history::history_system))
        .route(
            "/fhir/{rt}",
            get(search::search_type)
                .post(crud::create)
                .put(crud::conditional_update)
                .patch(crud::conditional_patch)
                .delete(crud::conditional_delete),
        )
        .route("/fhir/{rt}/_search", post(search::search_type_post))
        .route("/fhir/{rt}/_history", get(history::history_type))
        .route(
            "/fhir/{rt}/{id}",
            get(crud::read)
                .put(crud::update)
                .delete(crud::delete)
                .patch(crud::patch)
                .post(operation::type_level),
        )
        .route("/fhir/{rt}/{id}/_history", get(history::history_instance))
        .route(
            "/fhir/{rt}/{id}/{op}",
            get(search::instance_operation).post(operation::instance_level),
        )
        .route("/fhir/{rt}/{id}/_history/{vid}", get(crud::vread))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::auth::guard::require_token,
        ));
    Router::new()
        .route("/fhir/metadata", get(capabilities::metadata))
        .merge(guarded)
        .method_not_allowed_fallback(method_not_allowed)
}

/// Longest request target (path and query) the server reads: longer ones are 414.
pub const MAX_URI_BYTES: usize = 32 * 1024;

/// Every error leaves as an OperationOutcome in the format the client asked for (`_format` or
/// `Accept`): errors the routers make outside the FHIR handlers (an undecodable path, an
/// over-long URL) get one instead of plain text or an empty body, and OperationOutcomes are
/// sent as XML to XML clients. OAuth errors (JSON by RFC 6749) and HTML pages keep their own.
/// An error answering a request whose body may be unread closes the connection cleanly.
pub async fn outcomes(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use axum::http::header;
    let pairs = format::query_pairs(req.uri().query());
    let xml = matches!(
        format::negotiate(req.headers(), &pairs),
        Ok(format::Format::Xml)
    );
    let with_body = req.headers().contains_key(header::TRANSFER_ENCODING)
        || req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0");
    let pretty = pairs.iter().any(|(k, v)| k == "_pretty" && v == "true");
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    let mut resp = if target > MAX_URI_BYTES {
        FhirError::UriTooLong(MAX_URI_BYTES).into_response()
    } else {
        next.run(req).await
    };
    if pretty {
        resp = pretty_json(resp).await;
    }
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let fhir_json = content_type.starts_with("application/fhir+json");
    let own_format = content_type.starts_with("application/json")
        || content_type.starts_with("text/html")
        || content_type.starts_with("application/fhir+xml");
    if !fhir_json && !own_format {
        // Plain text or nothing, from outside the FHIR handlers: an OperationOutcome instead.
        let text = plain_reason(status);
        let (parts, _) = resp.into_parts();
        let mut replaced = FhirError::Status(status, text).into_response();
        for (k, v) in parts.headers.iter() {
            if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
                replaced.headers_mut().insert(k.clone(), v.clone());
            }
        }
        replaced.extensions_mut().extend(parts.extensions);
        resp = replaced;
    }
    if xml && (fhir_json || !own_format) {
        resp = as_xml(resp).await;
    }
    if with_body {
        resp.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    resp
}

/// What a status without a FHIR body means, for its OperationOutcome.
fn plain_reason(status: axum::http::StatusCode) -> String {
    match status.as_u16() {
        400 => "the request could not be read (is the URL valid UTF-8?)".to_owned(),
        404 => "no such endpoint".to_owned(),
        405 => "this method is not allowed on this URL".to_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("the request failed")
            .to_owned(),
    }
}

/// An OperationOutcome response re-encoded as FHIR XML (unchanged if it cannot be).
async fn as_xml(resp: Response) -> Response {
    use axum::http::{header, HeaderValue};
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1024 * 1024).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    let xml = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| fhirgate_codec::json_to_xml(&v).ok());
    match xml {
        Some(xml) => {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/fhir+xml; charset=utf-8"),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, axum::body::Body::from(xml))
        }
        None => Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
}

/// `_pretty=true`: FHIR JSON indented for people. XML is left as it is, where indentation
/// would change the narrative's whitespace.
async fn pretty_json(resp: Response) -> Response {
    use axum::http::header;
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/fhir+json"));
    if !json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return Response::from_parts(parts, axum::body::Body::empty());
    };
    match serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| serde_json::to_vec_pretty(&v).ok())
    {
        Some(pretty) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            Response::from_parts(parts, axum::body::Body::from(pretty))
        }
        None => Response::from_parts(parts, axum::body::Body::from(bytes)),
    }
}

/// Unknown URL: a 404 OperationOutcome.
pub async fn fallback() -> FhirError {
    FhirError::NotFound("no such endpoint".into())
}

async fn method_not_allowed() -> FhirError {
    FhirError::MethodNotAllowed("this method is not allowed on this URL".into())
}

/// A panic in a handler becomes a 500 OperationOutcome; the payload is not echoed.
pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("handler panicked");
    FhirError::Internal(anyhow::anyhow!("handler panicked")).into_response()
}

/// Parses the `{rt}` path segment: a known R4 resource type, else 404.
pub fn resource_type(rt: &str) -> Result<&str, FhirError> {
    if fhirgate_codec::is_resource_type(rt) {
        Ok(rt)
    } else {
        Err(FhirError::NotFound(format!(
            "resource type '{rt}' is not supported"
        )))
    }
}

/// Parses an `{id}` path segment: the R4 id syntax, else 400 naming it.
pub fn logical_id(id: &str) -> Result<&str, FhirError> {
    if fhirgate_codec::is_valid_id(id) {
        Ok(id)
    } else {
        Err(FhirError::bad_request(
            "id",
            "the id in the URL is not a valid FHIR id ([A-Za-z0-9-.]{1,64})",
        ))
    }
}
