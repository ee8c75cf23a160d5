//! Access tokens: short-lived ES256 JWTs signed by this server, verified with a pinned algorithm,
//! issuer and audience. jsonwebtoken traps closed here (security-test-plan): `aud` is a required
//! claim (a token without it would otherwise pass), the leeway is 30 s (not the default 60 s), and
//! only ES256 is accepted, so `alg=none` and HS256-with-the-public-key both fail.

use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};

use crate::auth::keys::SigningKeys;
use crate::auth::scopes::ScopeSet;

/// Seconds of clock skew tolerated.
pub const LEEWAY_SECS: u64 = 30;

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// Issuer: this server's base URL.
    pub iss: String,
    /// Audience: the FHIR base URL.
    pub aud: String,
    /// Subject: the client id (backend) or the user id (app).
    pub sub: String,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    /// Issued at.
    pub iat: i64,
    /// Token id, for revocation.
    pub jti: String,
    /// Granted scopes.
    pub scope: String,
    /// The client the token was issued to.
    pub client_id: String,
    /// The patient in context, for patient-context tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// The partner Organization (`Organization/<id>`) a backend belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
}

/// Why a token was refused (logged at debug, never sent in detail).
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not a well-formed JWT, unknown key, bad signature, wrong algorithm, claims invalid.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verifies an access token issued by this server.
pub fn verify(
    keys: &SigningKeys,
    token: &str,
    issuer: &str,
    audience: &str,
) -> Result<AccessClaims, TokenError> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
    if header.alg != Algorithm::ES256 {
        return Err(TokenError::Invalid(format!(
            "algorithm {:?} is not accepted",
            header.alg
        )));
    }
    let kid = header
        .kid
        .ok_or_else(|| TokenError::Invalid("no kid".into()))?;
    let key = keys
        .decoding_key(&kid)
        .ok_or_else(|| TokenError::Invalid("unknown kid".into()))?;
    let mut v = Validation::new(Algorithm::ES256);
    v.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.leeway = LEEWAY_SECS;
    v.validate_nbf = true;
    let data = jsonwebtoken::decode::<AccessClaims>(token, key, &v)
        .map_err(|e| TokenError::Invalid(e.to_string()))?;
    Ok(data.claims)
}

/// A verified token: its claims and its parsed scopes, shared by every request that carries it.
pub type Verified = (std::sync::Arc<AccessClaims>, std::sync::Arc<ScopeSet>);

/// Tokens whose signature and claims were already verified, keyed by the whole token (an exact
/// match, so nothing but the very same token can hit an entry). A client sends the same token for
/// minutes; checking the ES256 signature and parsing the scopes once instead of on every request
/// removes most of the cost of authentication. Expiry is re-checked on each use and revocation is
/// checked separately (`revoked`), so the cache never extends a token's life.
#[derive(Default)]
pub struct VerifiedCache {
    map: std::sync::RwLock<std::collections::HashMap<Box<str>, Verified>>,
}

/// Entries kept before the cache is emptied (a crude bound; tokens live minutes).
const CACHE_LIMIT: usize = 50_000;

impl VerifiedCache {
    /// Verifies `token`, from the cache when it was seen before. A token whose scope string does
    /// not parse is refused.
    pub fn verify(
        &self,
        keys: &SigningKeys,
        token: &str,
        issuer: &str,
        audience: &str,
    ) -> Result<Verified, TokenError> {
        let now = chrono::Utc::now().timestamp();
        let cached = self
            .map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(token)
            .cloned();
        if let Some(v) = cached {
            return if v.0.exp + LEEWAY_SECS as i64 >= now {
                Ok(v)
            } else {
                Err(TokenError::Invalid("expired".into()))
            };
        }
        let claims = verify(keys, token, issuer, audience)?;
        let scopes =
            ScopeSet::parse(&claims.scope).map_err(|e| TokenError::Invalid(e.to_string()))?;
        let v = (std::sync::Arc::new(claims), std::sync::Arc::new(scopes));
        let mut map = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= CACHE_LIMIT {
            map.clear();
        }
        map.insert(token.into(), v.clone());
        Ok(v)
    }
}
