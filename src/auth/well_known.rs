//! `/.well-known/smart-configuration` (SMART App Launch 2.x, "Conformance") and the JWKS of the
//! server's token-signing keys. Both list only what is actually supported.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use crate::state::AppState;

/// The discovery document for this server.
pub fn configuration(state: &AppState) -> Value {
    json!({
        "issuer": state.issuer,
        "jwks_uri": format!("{}/auth/jwks", state.issuer),
        "token_endpoint": state.token_url(),
        "introspection_endpoint": format!("{}/auth/introspect", state.issuer),
        "revocation_endpoint": format!("{}/auth/revoke", state.issuer),
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": ["system/*.rs", "system/*.cruds", "system/*.read", "system/*.write"],
        "response_types_supported": [],
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
        "code_challenge_methods_supported": ["S256"],
    })
}

/// `GET /.well-known/smart-configuration` (also under `/fhir`).
pub async fn smart_configuration(State(state): State<AppState>) -> Response {
    Json(configuration(&state)).into_response()
}

/// `GET /auth/jwks`: the public keys that verify this server's access tokens.
pub async fn jwks(State(state): State<AppState>) -> Response {
    Json(state.signing.jwks().clone()).into_response()
}
