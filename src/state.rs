//! Shared application state, cheap to clone into every handler.

use std::ops::Deref;
use std::sync::Arc;

use sqlx::PgPool;

use crate::auth::keys::SigningKeys;
use crate::auth::revoked::RevokedSet;
use crate::crypto::Keyring;

/// Application state: `AppState(Arc<AppInner>)`, dereferencing to the inner struct.
#[derive(Clone)]
pub struct AppState(pub Arc<AppInner>);

/// What every request can reach.
pub struct AppInner {
    /// The PostgreSQL pool.
    pub db: PgPool,
    /// Connections to the same database that plan prepared statements once (generic plans), for
    /// the fixed-shape per-patient search statements only.
    pub db_generic: PgPool,
    /// Data keys and the blind-index key.
    pub keys: Keyring,
    /// Public base URL of the FHIR endpoint, e.g. `http://127.0.0.1:8080/fhir` (no trailing slash).
    pub fhir_base: String,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// The OAuth issuer: this server's public base URL (no trailing slash).
    pub issuer: String,
    /// Keys that sign and verify access tokens.
    pub signing: SigningKeys,
    /// Revoked token ids, refreshed in the background.
    pub revoked: Arc<RevokedSet>,
    /// Access tokens already verified.
    pub verified: crate::auth::jwt::VerifiedCache,
    /// Failure counters for sign-in and the token endpoint.
    pub limits: crate::auth::limit::Limits,
    /// Whether reads without a token are answered (`serve --allow-anonymous-read`; off by default).
    pub anonymous_read: bool,
    /// The audit trail writer.
    pub auditor: crate::audit::Auditor,
    /// Ids of the search parameters index rows are stored under.
    pub search_params: crate::search::ParamIds,
}

impl AppInner {
    /// The token endpoint, which is also the audience of client assertions.
    pub fn token_url(&self) -> String {
        format!("{}/auth/token", self.issuer)
    }
}

impl Deref for AppState {
    type Target = AppInner;
    fn deref(&self) -> &AppInner {
        &self.0
    }
}
