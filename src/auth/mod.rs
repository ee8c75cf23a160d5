//! SMART on FHIR 2.x authorization (<https://hl7.org/fhir/smart-app-launch/>): discovery, the
//! server's signing keys and JWKS, client registration, the token endpoint for Backend Services,
//! and scope enforcement on the FHIR API.

pub mod admin;
pub mod clients;
pub mod grants;
pub mod guard;
pub mod introspect;
pub mod jwt;
pub mod keys;
pub mod limit;
pub mod revoked;
pub mod scopes;
pub mod token;
pub mod users;
pub mod well_known;

use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

/// Discovery, JWKS and token routes (public).
pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/.well-known/smart-configuration",
            get(well_known::smart_configuration),
        )
        .route(
            "/fhir/.well-known/smart-configuration",
            get(well_known::smart_configuration),
        )
        .route("/.well-known/openid-configuration", get(well_known::openid))
        .route("/auth/jwks", get(well_known::jwks))
        .route("/auth/token", post(token::token))
        .route("/auth/introspect", post(introspect::introspect))
        .route("/auth/revoke", post(introspect::revoke))
}
