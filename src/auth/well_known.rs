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
        "authorization_endpoint": format!("{}/auth/authorize", state.issuer),
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "revocation_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post", "none"],
        "revocation_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "introspection_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "client_secret_post"],
        "introspection_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "scopes_supported": ["openid", "fhirUser", "launch/patient", "offline_access", "online_access",
            "patient/*.rs", "patient/*.cruds", "patient/*.read", "patient/*.write",
            "user/*.rs", "user/*.cruds", "system/*.rs", "system/*.cruds", "system/*.read", "system/*.write"],
        "response_types_supported": ["code"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "capabilities": ["launch-standalone", "client-public", "client-confidential-symmetric",
            "client-confidential-asymmetric", "context-standalone-patient", "sso-openid-connect",
            "permission-offline", "permission-online", "permission-patient", "permission-user",
            "permission-v1", "permission-v2", "authorize-post"],
        "code_challenge_methods_supported": ["S256"],
    })
}

/// The OpenID Connect discovery document (for `openid fhirUser`).
pub fn openid_configuration(state: &AppState) -> Value {
    json!({
        "issuer": state.issuer,
        "authorization_endpoint": format!("{}/auth/authorize", state.issuer),
        "token_endpoint": state.token_url(),
        "jwks_uri": format!("{}/auth/jwks", state.issuer),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "scopes_supported": ["openid", "fhirUser"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "fhirUser"],
        "code_challenge_methods_supported": ["S256"],
    })
}

/// `GET /.well-known/openid-configuration`.
pub async fn openid(State(state): State<AppState>) -> Response {
    Json(openid_configuration(&state)).into_response()
}

/// `GET /.well-known/smart-configuration` (also under `/fhir`).
pub async fn smart_configuration(State(state): State<AppState>) -> Response {
    Json(configuration(&state)).into_response()
}

/// `GET /auth/jwks`: the public keys that verify this server's access tokens.
pub async fn jwks(State(state): State<AppState>) -> Response {
    Json(state.signing.jwks().clone()).into_response()
}
