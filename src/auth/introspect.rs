//! Token introspection (RFC 7662) and revocation (RFC 7009). Both need the caller to present a
//! valid access token of its own; a client learns about, and revokes, only its own tokens (a
//! first-party backend may introspect any). An unknown, expired, revoked or foreign token is
//! simply `{"active": false}`, with no other fields.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::grants::{self, GrantForm};
use crate::auth::jwt::{self, AccessClaims};
use crate::auth::token::{no_store, OAuthError};
use crate::state::AppState;

/// The form of both endpoints.
#[derive(Debug, Deserialize)]
pub struct TokenForm {
    token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

fn has_bearer(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
}

fn caller(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<std::sync::Arc<AccessClaims>, OAuthError> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or_else(|| OAuthError::invalid_client("authenticate with your own bearer token"))?;
    let claims = state
        .verified
        .verify(&state.signing, value, &state.issuer, &state.fhir_base)
        .map_err(|_| OAuthError::invalid_client("the caller's token is not valid"))?
        .0;
    if state.revoked.contains(&claims.jti)
        || state.revoked.client_revoked(&claims.client_id, claims.iat)
    {
        return Err(OAuthError::invalid_client("the caller's token was revoked"));
    }
    Ok(claims)
}

/// The caller's claims and the `token` parameter, or the OAuth error for a missing one.
fn authenticated(
    state: &AppState,
    headers: &HeaderMap,
    form: TokenForm,
) -> Result<(std::sync::Arc<AccessClaims>, String), OAuthError> {
    let me = caller(state, headers)?;
    let token = form
        .token
        .ok_or_else(|| OAuthError::bad("invalid_request", "token is missing"))?;
    Ok((me, token))
}

/// The claims of `token` if it is active and the caller may see it.
fn visible(state: &AppState, me: &AccessClaims, token: &str) -> Option<AccessClaims> {
    let claims = jwt::verify(&state.signing, token, &state.issuer, &state.fhir_base).ok()?;
    let first_party = me.organization.is_none() && me.patient.is_none();
    let own = claims.client_id == me.client_id;
    (!state.revoked.contains(&claims.jti)
        && !state.revoked.client_revoked(&claims.client_id, claims.iat)
        && (own || first_party))
        .then_some(claims)
}

/// `POST /auth/introspect`.
pub async fn introspect(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Result<Response, OAuthError> {
    let (me, token) = authenticated(&state, &headers, form)?;
    let body: Value = match visible(&state, &me, &token) {
        Some(c) => {
            let mut v = json!({"active": true, "token_type": "Bearer", "scope": c.scope, "client_id": c.client_id,
                "sub": c.sub, "exp": c.exp, "iat": c.iat, "iss": c.iss, "aud": c.aud, "jti": c.jti});
            if let Some(p) = c.patient {
                v["patient"] = json!(p);
            }
            v
        }
        None => json!({"active": false}),
    };
    Ok(no_store(Json(body).into_response()))
}

/// `POST /auth/revoke`: 200 whether or not the token was known (RFC 7009 §2.2). A backend
/// authenticates with its own bearer token; an app authenticates as at the token endpoint
/// (`client_id`, with its secret if confidential) and may revoke its refresh tokens, which ends
/// the whole grant, or its access tokens.
pub async fn revoke(
    State(state): State<AppState>,
    addr: crate::auth::limit::ClientAddr,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Result<Response, OAuthError> {
    let claimed = form.client_id.clone().or_else(|| {
        grants::basic_credentials(&headers)
            .ok()
            .flatten()
            .map(|(id, _)| id)
    });
    let result = revoke_token(&state, &headers, form).await;
    let ctx = crate::audit::api::auth_context(addr.0, &headers, claimed.as_deref(), None);
    let outcome = match &result {
        Ok(_) => crate::audit::Outcome::Success,
        Err(e) => crate::audit::Outcome::from_status(e.status_code(), e.code()),
    };
    let kind = crate::audit::event::Kind::Token("token-revoke");
    if !crate::audit::api::record_auth(&state, kind, outcome, &ctx).await && result.is_ok() {
        return Err(OAuthError::unavailable());
    }
    result
}

async fn revoke_token(
    state: &AppState,
    headers: &HeaderMap,
    form: TokenForm,
) -> Result<Response, OAuthError> {
    let state = state.clone();
    let headers = headers.clone();
    if !has_bearer(&headers) {
        let token = form
            .token
            .clone()
            .ok_or_else(|| OAuthError::bad("invalid_request", "token is missing"))?;
        let grant_form = GrantForm {
            client_id: form.client_id,
            client_secret: form.client_secret,
            ..Default::default()
        };
        let client = grants::authenticate_app(&state, &headers, &grant_form).await?;
        if !grants::revoke_refresh_token(&state, &client, &token).await? {
            let own = jwt::verify(&state.signing, &token, &state.issuer, &state.fhir_base)
                .ok()
                .filter(|c| c.client_id == client.client_id);
            if let Some(c) = own {
                revoke_jti(&state, &c).await?;
            }
        }
        return Ok(no_store(StatusCode::OK.into_response()));
    }
    let (me, token) = authenticated(&state, &headers, form)?;
    if let Some(c) = visible(&state, &me, &token) {
        revoke_jti(&state, &c).await?;
    }
    Ok(no_store(StatusCode::OK.into_response()))
}

async fn revoke_jti(state: &AppState, c: &AccessClaims) -> Result<(), OAuthError> {
    // language=PostgreSQL
    sqlx::query("insert into revoked_token (jti, expires_at) values ($1, to_timestamp($2)) on conflict do nothing")
        .bind(&c.jti)
        .bind(c.exp as f64)
        .execute(&state.db)
        .await?;
    state.revoked.insert(&c.jti);
    Ok(())
}
