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
pub mod respond;
pub mod search;
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
                .put(crud::conditional_update),
        )
        .route("/fhir/{rt}/_search", post(search::search_type_post))
        .route("/fhir/{rt}/_history", get(history::history_type))
        .route(
            "/fhir/{rt}/{id}",
            get(crud::read).put(crud::update).delete(crud::delete),
        )
        .route("/fhir/{rt}/{id}/_history", get(history::history_instance))
        .route("/fhir/{rt}/{id}/{op}", get(search::instance_operation))
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
