//! `/healthz` (the process is alive) and `/readyz` (the database answers), and the request span.

use axum::extract::{MatchedPath, State};
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::state::AppState;

/// Health routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    // language=PostgreSQL
    let ping = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        sqlx::query("select 1").execute(&state.db),
    )
    .await;
    match ping {
        Ok(Ok(_)) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        _ => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "database unavailable"})),
        ),
    }
}

/// Request span with the matched route (low cardinality), never the raw URL: query strings can
/// carry identifiers and names.
pub fn request_span<B>(req: &Request<B>) -> tracing::Span {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched");
    tracing::info_span!("request", method = %req.method(), route = %route)
}
