//! Token introspection (RFC 7662) and revocation (RFC 7009).
//!
//! The caller authenticates the way it does at the token endpoint, with exactly one method:
//!
//! - a backend with a `private_key_jwt` client assertion (RFC 7523), checked by the token
//!   endpoint's own verification; its `aud` is the token endpoint or this endpoint;
//! - a confidential app with its secret (`client_secret_basic` or `client_secret_post`);
//! - a public app with its `client_id` alone, for revocation only (RFC 7009 §2.1 allows it;
//!   introspection needs a real client authentication);
//! - as before, a bearer access token of the caller's own.
//!
//! A client learns about, and revokes, only its own tokens; a first-party backend (no partner
//! organization, no patient) may also introspect any token. Revoking another client's token is
//! refused silently (200, no effect) and introspecting it answers `{"active": false}`, exactly as
//! for an unknown, expired or revoked token. Both refusals, every failed authentication and every
//! revocation are audited; failed authentications count against the token endpoint's per-address
//! limit.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Form, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::audit::event::Kind;
use crate::audit::Outcome;
use crate::auth::grants::{self, GrantForm, RefreshInfo};
use crate::auth::jwt::{self, AccessClaims};
use crate::auth::limit::ClientAddr;
use crate::auth::token::{self, no_store, AssertionParams, OAuthError};
use crate::state::AppState;

/// The form of both endpoints.
#[derive(Debug, Deserialize)]
pub struct TokenForm {
    // `token_type_hint` (RFC 7009 §2.1, RFC 7662 §2.1) is optional and not needed: both kinds of
    // token are looked up, so it is accepted and ignored.
    token: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
}

impl TokenForm {
    fn assertion(&self) -> AssertionParams<'_> {
        AssertionParams {
            client_id: self.client_id.as_deref(),
            assertion_type: self.client_assertion_type.as_deref(),
            assertion: self.client_assertion.as_deref(),
        }
    }
}

/// Which of the two endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Revoke,
    Introspect,
}

impl Endpoint {
    fn path(self) -> &'static str {
        match self {
            Endpoint::Revoke => "/auth/revoke",
            Endpoint::Introspect => "/auth/introspect",
        }
    }

    fn subtype(self) -> &'static str {
        match self {
            Endpoint::Revoke => "token-revoke",
            Endpoint::Introspect => "token-introspect",
        }
    }
}

/// The authenticated caller.
#[derive(Debug)]
struct Caller {
    client_id: String,
    /// A first-party backend: may introspect any token.
    first_party: bool,
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
}

/// The caller of a request authenticated with its own access token (kept for the clients that
/// authenticated this way before the token endpoint's methods were accepted here).
fn bearer_caller(
    state: &AppState,
    value: &str,
) -> Result<std::sync::Arc<AccessClaims>, OAuthError> {
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

/// Authenticates the caller with exactly one of the accepted methods.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    form: &TokenForm,
    endpoint: Endpoint,
) -> Result<Caller, OAuthError> {
    let basic = grants::basic_credentials(headers)?;
    let bearer = bearer(headers);
    let assertion = form.assertion();
    if assertion.present() {
        if basic.is_some() || bearer.is_some() || form.client_secret.is_some() {
            return Err(OAuthError::invalid_client(
                "use exactly one client authentication method",
            ));
        }
        let audiences = [
            state.token_url(),
            format!("{}{}", state.issuer, endpoint.path()),
        ];
        let client = token::authenticate_assertion(state, assertion, &audiences).await?;
        return Ok(Caller {
            first_party: client.organization.is_none(),
            client_id: client.client_id,
        });
    }
    if let Some(value) = bearer {
        if form.client_secret.is_some() {
            return Err(OAuthError::invalid_client(
                "use exactly one client authentication method",
            ));
        }
        let claims = bearer_caller(state, value)?;
        if form
            .client_id
            .as_deref()
            .is_some_and(|c| c != claims.client_id)
        {
            return Err(OAuthError::invalid_client(
                "client_id differs from the authenticated client",
            ));
        }
        return Ok(Caller {
            client_id: claims.client_id.clone(),
            first_party: claims.organization.is_none() && claims.patient.is_none(),
        });
    }
    if basic.is_none() && form.client_id.is_none() {
        return Err(OAuthError::invalid_client(
            "authenticate as at the token endpoint (client assertion, client secret or client_id)",
        ));
    }
    let grant_form = GrantForm {
        client_id: form.client_id.clone(),
        client_secret: form.client_secret.clone(),
        ..Default::default()
    };
    let client = grants::authenticate_app(state, headers, &grant_form).await?;
    if endpoint == Endpoint::Introspect && client.secret_hash.is_none() {
        return Err(OAuthError::invalid_client(
            "a public client cannot authenticate for introspection",
        ));
    }
    Ok(Caller {
        client_id: client.client_id,
        first_party: false,
    })
}

/// What a presented token turned out to be.
enum Presented {
    /// An access token of this server with a valid signature; `live` when unexpired and unrevoked.
    Access { claims: AccessClaims, live: bool },
    /// One of this server's refresh tokens.
    Refresh(RefreshInfo),
    /// Nothing this server issued (or an expired access token, which cannot be told apart).
    Unknown,
}

impl Presented {
    fn client_id(&self) -> Option<&str> {
        match self {
            Presented::Access { claims, .. } => Some(&claims.client_id),
            Presented::Refresh(r) => Some(&r.client_id),
            Presented::Unknown => None,
        }
    }
}

/// Looks `token` up as an access token, then as a refresh token (`token_type_hint` is not needed:
/// the two kinds cannot be confused).
async fn find(state: &AppState, token: &str) -> Result<Presented, OAuthError> {
    if let Ok(claims) = jwt::verify(&state.signing, token, &state.issuer, &state.fhir_base) {
        let live = !state.revoked.contains(&claims.jti)
            && !state.revoked.client_revoked(&claims.client_id, claims.iat);
        return Ok(Presented::Access { claims, live });
    }
    Ok(grants::find_refresh_token(state, token)
        .await?
        .map_or(Presented::Unknown, Presented::Refresh))
}

/// What a request did, for the audit trail.
enum Effect {
    /// Revoked (an access token, or the grant of a refresh token).
    Revoked,
    /// Nothing to do: the token is unknown, expired or already revoked.
    Nothing,
    /// The token belongs to another client: refused silently.
    Foreign,
    /// Introspection answered about a token the caller may see.
    Answered,
}

/// `POST /auth/introspect`.
pub async fn introspect(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Result<Response, OAuthError> {
    handle(&state, addr, &headers, form, Endpoint::Introspect).await
}

/// `POST /auth/revoke`: 200 whether or not the token was known (RFC 7009 §2.2). Revoking a
/// refresh token ends its whole grant; revoking an access token ends that token.
pub async fn revoke(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Form(form): Form<TokenForm>,
) -> Result<Response, OAuthError> {
    handle(&state, addr, &headers, form, Endpoint::Revoke).await
}

async fn handle(
    state: &AppState,
    addr: ClientAddr,
    headers: &HeaderMap,
    form: TokenForm,
    endpoint: Endpoint,
) -> Result<Response, OAuthError> {
    let key = addr.key();
    if let Some(wait) = state.limits.token_address.blocked(&key) {
        return Err(OAuthError::too_many(wait));
    }
    let claimed = token::claimed_client(
        headers,
        form.client_id.as_deref(),
        form.client_assertion.as_deref(),
    );
    let assertion = form.assertion().present();
    let result = match endpoint {
        Endpoint::Revoke => revoke_token(state, headers, form).await,
        Endpoint::Introspect => introspect_token(state, headers, form).await,
    };
    if let Err(e) = &result {
        if e.is_failure() {
            state.limits.token_address.fail(&key);
        }
    }
    let ctx = crate::audit::api::auth_context(addr.0, headers, claimed.as_deref(), None);
    let subtype = Kind::Token(endpoint.subtype());
    let audited = match &result {
        Err(e) if assertion && e.code() == "invalid_client" => Some((
            Kind::Token("assertion-failure"),
            Outcome::from_status(e.status_code(), e.description()),
        )),
        Err(e) => Some((subtype, Outcome::from_status(e.status_code(), e.code()))),
        Ok((_, Effect::Revoked)) => Some((subtype, Outcome::Success)),
        Ok((_, Effect::Foreign)) => Some((
            subtype,
            Outcome::Minor("the token was issued to another client".into()),
        )),
        Ok((_, Effect::Nothing)) if endpoint == Endpoint::Revoke => Some((
            subtype,
            Outcome::Minor("the token is unknown, expired or already revoked".into()),
        )),
        Ok((_, Effect::Nothing | Effect::Answered)) => None,
    };
    if let Some((kind, outcome)) = audited {
        if !crate::audit::api::record_auth(state, kind, outcome, &ctx).await && result.is_ok() {
            return Err(OAuthError::unavailable());
        }
    }
    result.map(|(resp, _)| resp)
}

fn token_of(form: &TokenForm) -> Result<&str, OAuthError> {
    form.token
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| OAuthError::bad("invalid_request", "token is missing"))
}

async fn introspect_token(
    state: &AppState,
    headers: &HeaderMap,
    form: TokenForm,
) -> Result<(Response, Effect), OAuthError> {
    let me = authenticate(state, headers, &form, Endpoint::Introspect).await?;
    let token = token_of(&form)?;
    let found = find(state, token).await?;
    let foreign = found
        .client_id()
        .is_some_and(|owner| owner != me.client_id && !me.first_party);
    let (body, effect) = match found {
        _ if foreign => (json!({"active": false}), Effect::Foreign),
        Presented::Access {
            claims: c,
            live: true,
        } => {
            let mut v = json!({"active": true, "token_type": "Bearer", "scope": c.scope,
                "client_id": c.client_id, "sub": c.sub, "exp": c.exp, "iat": c.iat, "iss": c.iss,
                "aud": c.aud, "jti": c.jti});
            if let Some(p) = c.patient {
                v["patient"] = json!(p);
            }
            (v, Effect::Answered)
        }
        Presented::Refresh(r) if r.active => (
            json!({"active": true, "scope": r.scope, "client_id": r.client_id, "sub": r.user_id,
                "exp": r.exp, "iat": r.iat, "iss": state.issuer, "aud": state.fhir_base,
                "patient": r.patient_id}),
            Effect::Answered,
        ),
        _ => (json!({"active": false}), Effect::Nothing),
    };
    Ok((no_store(Json::<Value>(body).into_response()), effect))
}

async fn revoke_token(
    state: &AppState,
    headers: &HeaderMap,
    form: TokenForm,
) -> Result<(Response, Effect), OAuthError> {
    let me = authenticate(state, headers, &form, Endpoint::Revoke).await?;
    let token = token_of(&form)?;
    let found = find(state, token).await?;
    let foreign = found.client_id().is_some_and(|owner| owner != me.client_id);
    let effect = match found {
        _ if foreign => Effect::Foreign,
        Presented::Access { claims, live: true } => {
            revoke_jti(state, &claims).await?;
            Effect::Revoked
        }
        // A used or expired refresh token still ends its grant (the grant may hold live tokens).
        Presented::Refresh(r) => {
            grants::revoke_grant_of(state, &r).await?;
            Effect::Revoked
        }
        Presented::Access { live: false, .. } | Presented::Unknown => Effect::Nothing,
    };
    Ok((no_store(StatusCode::OK.into_response()), effect))
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
