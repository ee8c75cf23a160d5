//! The token endpoint (RFC 6749 §3.2) for SMART Backend Services
//! (<https://hl7.org/fhir/smart-app-launch/backend-services.html>): `client_credentials` with a
//! `private_key_jwt` client assertion (RFC 7523), signed RS384 or ES384 with a key of the client's
//! registered JWKS.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::clients;
use crate::auth::grants::{self, GrantForm};
use crate::auth::jwt::{AccessClaims, LEEWAY_SECS};
use crate::auth::limit::ClientAddr;
use crate::auth::scopes::{Context, ScopeSet};
use crate::state::AppState;

/// Lifetime of a backend access token (Backend Services: at most five minutes).
pub const BACKEND_TOKEN_SECS: i64 = 300;
/// Longest `exp - now` accepted on a client assertion.
const MAX_ASSERTION_SECS: i64 = 300;
use crate::audit::event::Kind;
use crate::audit::Outcome;

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// An OAuth2 error response (RFC 6749 §5.2): `{"error", "error_description"}`, never cached.
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    /// 429: too many failures from this address.
    pub fn too_many(retry_after: std::time::Duration) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            error: "temporarily_unavailable",
            description: format!(
                "too many failed requests; try again in {} s",
                retry_after.as_secs().max(1)
            ),
        }
    }

    /// Whether this refusal counts as a failed authentication or grant (for rate limiting).
    pub fn is_failure(&self) -> bool {
        matches!(self.error, "invalid_client" | "invalid_grant")
    }

    /// The HTTP status.
    pub fn status_code(&self) -> u16 {
        self.status.as_u16()
    }

    /// The OAuth error code.
    pub fn code(&self) -> &'static str {
        self.error
    }

    /// The human-readable reason (for the audit trail; never contains a secret or a token).
    pub fn description(&self) -> &str {
        &self.description
    }

    /// 401 `invalid_client`: the client could not be authenticated.
    pub fn invalid_client(description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: description.into(),
        }
    }
    /// 503: the audit trail could not record the grant, so nothing is granted.
    pub fn unavailable() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "temporarily_unavailable",
            description: "the server cannot record this request; try again later".into(),
        }
    }

    /// 400 with another error code.
    pub fn bad(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        tracing::debug!(error = self.error, reason = %self.description, "token request refused");
        let body = json!({"error": self.error, "error_description": self.description});
        no_store((self.status, axum::Json(body)).into_response())
    }
}

impl From<sqlx::Error> for OAuthError {
    fn from(e: sqlx::Error) -> Self {
        tracing::error!(error = %e, "database error at the token endpoint");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error: "temporarily_unavailable",
            description: "try again later".into(),
        }
    }
}

/// Adds `Cache-Control: no-store` and `Pragma: no-cache` (RFC 6749 §5.1).
pub fn no_store(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// The form of a token request.
#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    grant_type: Option<String>,
    scope: Option<String>,
    client_id: Option<String>,
    client_assertion_type: Option<String>,
    client_assertion: Option<String>,
    client_secret: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
}

impl TokenRequest {
    fn grant_form(self) -> GrantForm {
        GrantForm {
            client_id: self.client_id,
            client_secret: self.client_secret,
            code: self.code,
            redirect_uri: self.redirect_uri,
            code_verifier: self.code_verifier,
            refresh_token: self.refresh_token,
            scope: self.scope,
        }
    }
}

/// `POST /auth/token`: `client_credentials` (backends), `authorization_code` and `refresh_token`
/// (apps). Failed client authentications and grants are counted per address; past the limit the
/// address gets 429 for the rest of the minute.
pub async fn token(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Form(req): Form<TokenRequest>,
) -> Result<Response, OAuthError> {
    let key = addr.key();
    if let Some(wait) = state.limits.token_address.blocked(&key) {
        return Err(OAuthError::too_many(wait));
    }
    let claimed = claimed_client(
        &headers,
        req.client_id.as_deref(),
        req.client_assertion.as_deref(),
    );
    let subtype = match req.grant_type.as_deref() {
        Some("refresh_token") => "token-refresh",
        _ => "token-issue",
    };
    let assertion = req.client_assertion.is_some();
    let result = match req.grant_type.as_deref() {
        Some("client_credentials") => client_credentials(&state, req).await,
        Some("authorization_code") => {
            let form = req.grant_form();
            match grants::authenticate_app(&state, &headers, &form).await {
                Ok(client) => grants::exchange_code(&state, &client, &form)
                    .await
                    .map(|b| no_store(axum::Json(b).into_response())),
                Err(e) => Err(e),
            }
        }
        Some("refresh_token") => {
            let form = req.grant_form();
            match grants::authenticate_app(&state, &headers, &form).await {
                Ok(client) => grants::refresh(&state, &client, &form)
                    .await
                    .map(|b| no_store(axum::Json(b).into_response())),
                Err(e) => Err(e),
            }
        }
        Some(other) => Err(OAuthError::bad(
            "unsupported_grant_type",
            format!("grant_type {other} is not supported"),
        )),
        None => Err(OAuthError::bad("invalid_request", "grant_type is missing")),
    };
    if let Err(e) = &result {
        if e.is_failure() {
            state.limits.token_address.fail(&key);
        }
    }
    let ctx = crate::audit::api::auth_context(addr.0, &headers, claimed.as_deref(), None);
    let (kind, outcome) = match &result {
        Ok(_) => (Kind::Token(subtype), Outcome::Success),
        Err(e) if assertion && e.code() == "invalid_client" => (
            Kind::Token("assertion-failure"),
            Outcome::from_status(e.status.as_u16(), e.description.clone()),
        ),
        Err(e) => (
            Kind::Token(subtype),
            Outcome::from_status(e.status.as_u16(), e.code()),
        ),
    };
    if !crate::audit::api::record_auth(&state, kind, outcome, &ctx).await && result.is_ok() {
        return Err(OAuthError::unavailable());
    }
    result
}

fn unverified_claims(jwt: &str) -> Option<Value> {
    let payload = jwt.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// The client authentication parameters of RFC 7523 §2.2 in a request's form.
#[derive(Debug, Clone, Copy, Default)]
pub struct AssertionParams<'a> {
    /// `client_id`, optional; when present it must name the assertion's issuer.
    pub client_id: Option<&'a str>,
    /// `client_assertion_type`: only `urn:ietf:params:oauth:client-assertion-type:jwt-bearer`.
    pub assertion_type: Option<&'a str>,
    /// `client_assertion`: the signed JWT.
    pub assertion: Option<&'a str>,
}

impl AssertionParams<'_> {
    /// Whether the request tries this method at all (either parameter is present).
    pub fn present(&self) -> bool {
        self.assertion_type.is_some() || self.assertion.is_some()
    }
}

/// The client id a request claims, before any verification (for the audit trail only): the form's
/// `client_id`, else the Basic user name, else the unverified `iss` of a client assertion.
pub fn claimed_client(
    headers: &HeaderMap,
    client_id: Option<&str>,
    assertion: Option<&str>,
) -> Option<String> {
    client_id
        .map(str::to_owned)
        .or_else(|| {
            grants::basic_credentials(headers)
                .ok()
                .flatten()
                .map(|(id, _)| id)
        })
        .or_else(|| {
            assertion
                .and_then(unverified_claims)
                .and_then(|c| c["iss"].as_str().map(str::to_owned))
        })
}

/// Authenticates a backend by its `private_key_jwt` client assertion (RFC 7523, SMART Backend
/// Services): RS384 or ES384 only, verified with exactly one key of the client's registered JWKS
/// (never a key named by the assertion itself), `iss` = `sub` = a registered backend, `aud` one of
/// `audiences`, at most five minutes to `exp`, and a `jti` that was never seen before. The token,
/// revocation and introspection endpoints share this check and its replay table, so an assertion
/// spent at one cannot be replayed at another.
pub async fn authenticate_assertion(
    state: &AppState,
    params: AssertionParams<'_>,
    audiences: &[String],
) -> Result<clients::Client, OAuthError> {
    match params.assertion_type {
        Some(JWT_BEARER) => {}
        Some(_) => {
            return Err(OAuthError::invalid_client(
                "client_assertion_type must be jwt-bearer",
            ))
        }
        None => {
            return Err(OAuthError::bad(
                "invalid_request",
                "client_assertion_type is missing",
            ))
        }
    }
    let assertion = params
        .assertion
        .ok_or_else(|| OAuthError::bad("invalid_request", "client_assertion is missing"))?;
    // `alg=none` cannot even be represented by jsonwebtoken's header type: it fails here.
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|_| OAuthError::invalid_client("the client assertion is not a valid JWS"))?;
    let (kty, crv) = match header.alg {
        Algorithm::RS384 => ("RSA", None),
        Algorithm::ES384 => ("EC", Some("P-384")),
        other => {
            return Err(OAuthError::invalid_client(format!(
                "assertion algorithm {other:?} is not accepted (RS384 or ES384)"
            )))
        }
    };
    if header.jku.is_some() || header.jwk.is_some() || header.x5u.is_some() {
        return Err(OAuthError::invalid_client(
            "keys must come from the registered JWKS, not from the assertion header",
        ));
    }
    let claimed = unverified_claims(assertion)
        .ok_or_else(|| OAuthError::invalid_client("the client assertion payload is not JSON"))?;
    let iss = claimed
        .get("iss")
        .and_then(Value::as_str)
        .ok_or_else(|| OAuthError::invalid_client("the assertion has no iss"))?;
    if params.client_id.is_some_and(|c| c != iss) {
        return Err(OAuthError::invalid_client(
            "client_id differs from the assertion issuer",
        ));
    }
    let client = clients::get(&state.db, iss)
        .await?
        .filter(|c| c.kind == "backend")
        .ok_or_else(|| OAuthError::invalid_client("unknown client"))?;
    let keys = client
        .jwks
        .as_ref()
        .and_then(|j| j.get("keys"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let candidates: Vec<&Value> = keys
        .iter()
        .filter(|k| k.get("kty").and_then(Value::as_str) == Some(kty))
        .filter(|k| crv.is_none() || k.get("crv").and_then(Value::as_str) == crv)
        .filter(|k| {
            header.kid.is_none() || k.get("kid").and_then(Value::as_str) == header.kid.as_deref()
        })
        .collect();
    // SMART: zero or several matching keys is a failure, never a guess.
    let [key] = candidates.as_slice() else {
        return Err(OAuthError::invalid_client(format!(
            "{} registered keys match the assertion; exactly one must",
            candidates.len()
        )));
    };
    let jwk: Jwk = serde_json::from_value((*key).clone())
        .map_err(|_| OAuthError::invalid_client("the registered key is unusable"))?;
    let decoding = DecodingKey::from_jwk(&jwk)
        .map_err(|_| OAuthError::invalid_client("the registered key is unusable"))?;
    let mut v = Validation::new(header.alg);
    v.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    v.set_issuer(&[&client.client_id]);
    v.set_audience(audiences);
    v.sub = Some(client.client_id.clone());
    v.leeway = LEEWAY_SECS;
    let verified = jsonwebtoken::decode::<Value>(assertion, &decoding, &v)
        .map_err(|e| OAuthError::invalid_client(format!("the client assertion was refused: {e}")))?
        .claims;
    let now = chrono::Utc::now().timestamp();
    let exp = verified.get("exp").and_then(Value::as_i64).unwrap_or(0);
    if exp - now > MAX_ASSERTION_SECS + LEEWAY_SECS as i64 {
        return Err(OAuthError::invalid_client(
            "the assertion expires more than five minutes from now",
        ));
    }
    let jti = verified
        .get("jti")
        .and_then(Value::as_str)
        .filter(|j| !j.is_empty())
        .ok_or_else(|| OAuthError::invalid_client("the assertion has no jti"))?;
    // A jti is single use until the assertion expires; the primary key settles concurrent replays.
    // language=PostgreSQL
    let fresh = sqlx::query("insert into client_assertion_jti (client_id, jti, expires_at) values ($1, $2, to_timestamp($3)) on conflict do nothing")
        .bind(&client.client_id)
        .bind(jti)
        .bind(exp as f64)
        .execute(&state.db)
        .await?
        .rows_affected()
        == 1;
    if !fresh {
        return Err(OAuthError::invalid_client(
            "the assertion was already used (jti replay)",
        ));
    }
    Ok(client)
}

async fn client_credentials(state: &AppState, req: TokenRequest) -> Result<Response, OAuthError> {
    let params = AssertionParams {
        client_id: req.client_id.as_deref(),
        assertion_type: req.client_assertion_type.as_deref(),
        assertion: req.client_assertion.as_deref(),
    };
    let client = authenticate_assertion(state, params, &[state.token_url()]).await?;
    let now = chrono::Utc::now().timestamp();
    let requested = ScopeSet::parse(req.scope.as_deref().unwrap_or_default())
        .map_err(|e| OAuthError::bad("invalid_scope", e.to_string()))?;
    if requested
        .resources
        .iter()
        .any(|r| r.context != Context::System)
    {
        return Err(OAuthError::bad(
            "invalid_scope",
            "a backend may only ask for system/ scopes",
        ));
    }
    let registered = ScopeSet::parse(&client.scopes).unwrap_or_default();
    let granted = requested.intersect(&registered);
    if granted.resources.is_empty() && granted.other.is_empty() {
        return Err(OAuthError::bad(
            "invalid_scope",
            "none of the requested scopes is allowed for this client",
        ));
    }
    if let Some(org) = &client.organization {
        clients::ensure_organization(state, org, &client.client_id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "could not create the partner's Organization");
                OAuthError::bad("server_error", "could not issue a token")
            })?;
    }
    let claims = AccessClaims {
        iss: state.issuer.clone(),
        aud: state.fhir_base.clone(),
        sub: client.client_id.clone(),
        exp: now + BACKEND_TOKEN_SECS,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        scope: granted.to_string(),
        client_id: client.client_id.clone(),
        patient: None,
        organization: client.organization.clone(),
    };
    let access_token = state.signing.sign(&claims).map_err(|e| {
        tracing::error!(error = %e, "signing failed");
        OAuthError::bad("server_error", "could not issue a token")
    })?;
    let body = json!({"access_token": access_token, "token_type": "Bearer", "expires_in": BACKEND_TOKEN_SECS, "scope": claims.scope});
    Ok(no_store(axum::Json(body).into_response()))
}

/// The client id of tokens printed by `fhirgate token`.
pub const DEVELOPMENT_CLIENT: &str = "fhirgate-development";

/// `fhirgate token --ttl`: seconds, or a number with `s`, `m` or `h`; from 1 s to 24 h.
pub fn parse_ttl(text: &str) -> anyhow::Result<i64> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1),
        Some((i, 'm')) => (&t[..i], 60),
        Some((i, 'h')) => (&t[..i], 3600),
        _ => (t, 1),
    };
    let seconds = number
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .filter(|s| (1..=24 * 3600).contains(s))
        .ok_or_else(|| anyhow::anyhow!("--ttl must be 1 s to 24 h, e.g. 3600, 30m or 1h"))?;
    Ok(seconds)
}

/// Signs an access token for the built-in development client with the server's own key, as its
/// token endpoint would, and audits the issuance (`fhirgate token`; the command refuses
/// production first).
pub async fn development_token(
    pool: sqlx::PgPool,
    keys: Box<dyn crate::crypto::KeyProvider>,
    public_url: &str,
    scopes: &str,
    patient: Option<String>,
    organization: Option<String>,
    ttl_secs: i64,
) -> anyhow::Result<String> {
    let state = crate::startup::open_state(pool, keys, public_url, usize::MAX, false, true).await?;
    development_token_for(&state, scopes, patient, organization, ttl_secs).await
}

/// [`development_token`] with the state already open (`fhirgate demo` issues several).
pub async fn development_token_for(
    state: &AppState,
    scopes: &str,
    patient: Option<String>,
    organization: Option<String>,
    ttl_secs: i64,
) -> anyhow::Result<String> {
    let parsed = ScopeSet::parse(scopes).map_err(|e| anyhow::anyhow!("--scopes: {e}"))?;
    if parsed.resources.is_empty() {
        anyhow::bail!("--scopes names no FHIR resource scope (for example system/*.rs)");
    }
    let patient_scopes = parsed.has_context(crate::auth::scopes::Context::Patient);
    if patient.is_some() && !patient_scopes {
        anyhow::bail!("--patient needs patient/ scopes (for example patient/*.rs)");
    }
    if patient.is_none() && patient_scopes {
        anyhow::bail!("patient/ scopes need --patient ID (the patient the token acts for)");
    }
    if let Some(p) = &patient {
        if !fhirgate_codec::is_valid_id(p) {
            anyhow::bail!("--patient must be a FHIR id");
        }
    }
    let organization = organization.map(|o| crate::access::organization_reference(&o));
    let now = chrono::Utc::now().timestamp();
    let claims = AccessClaims {
        iss: state.issuer.clone(),
        aud: state.fhir_base.clone(),
        sub: DEVELOPMENT_CLIENT.to_owned(),
        exp: now + ttl_secs,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        scope: scopes.to_owned(),
        client_id: DEVELOPMENT_CLIENT.to_owned(),
        patient,
        organization,
    };
    let token = state.signing.sign(&claims)?;
    let mut ctx = crate::audit::RequestContext::default();
    ctx.client_id = Some(DEVELOPMENT_CLIENT.to_owned());
    ctx.organization = claims.organization.clone();
    ctx.user = claims.patient.as_ref().map(|p| format!("Patient/{p}"));
    ctx.command_line = true;
    if !crate::audit::api::record_auth(
        state,
        crate::audit::event::Kind::Token("token-issue"),
        crate::audit::Outcome::Success,
        &ctx,
    )
    .await
    {
        anyhow::bail!("the issuance could not be audited; no token was printed");
    }
    Ok(token)
}
