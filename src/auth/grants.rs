//! What a patient's approval of an app turns into (RFC 6749 §4.1 with PKCE, RFC 7636): a grant,
//! its single-use authorization code, and the tokens exchanged for it: a short-lived access token,
//! an OpenID Connect `id_token` for `openid`, and, for `offline_access`/`online_access`, refresh
//! tokens that rotate on every use.
//!
//! Reuse is treated as theft. A second exchange of a code, or a refresh token presented after it
//! was rotated, revokes the whole grant: every access token issued under it (through the revoked
//! set, within a second on every server) and every refresh token.

use axum::http::HeaderMap;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, Postgres, Transaction};

use crate::auth::clients::{self, Client};
use crate::auth::jwt::AccessClaims;
use crate::auth::scopes::ScopeSet;
use crate::auth::token::OAuthError;
use crate::auth::users::User;
use crate::state::AppState;

/// How long an authorization code can be exchanged.
pub const CODE_SECS: i64 = 60;
/// Lifetime of an app's access token.
pub const APP_TOKEN_SECS: i64 = 900;
/// Lifetime of a refresh token (each use replaces it).
pub const REFRESH_SECS: i64 = 30 * 24 * 60 * 60;

/// A patient's approval, ready to become a code.
#[derive(Debug, Clone)]
pub struct Approval {
    /// The app.
    pub client_id: String,
    /// The signed-in patient.
    pub user: User,
    /// The granted scopes (requested ∩ registered).
    pub scope: String,
    /// The exact redirect URI of the request.
    pub redirect_uri: String,
    /// The PKCE S256 challenge.
    pub code_challenge: String,
    /// The OpenID Connect nonce, echoed in the id_token.
    pub nonce: Option<String>,
}

fn digest(s: &str) -> Vec<u8> {
    Sha256::digest(s.as_bytes()).to_vec()
}

fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

/// Records the grant and returns a fresh authorization code for it.
pub async fn issue_code(state: &AppState, a: &Approval) -> sqlx::Result<String> {
    let code = random_token();
    let grant_id = uuid::Uuid::new_v4().to_string();
    let mut tx = state.db.begin().await?;
    // language=PostgreSQL
    sqlx::query(
        "insert into oauth_grant (grant_id, client_id, user_id, patient_id, scope) values ($1::uuid, $2, $3::uuid, $4, $5)",
    )
    .bind(&grant_id)
    .bind(&a.client_id)
    .bind(&a.user.user_id)
    .bind(&a.user.patient_id)
    .bind(&a.scope)
    .execute(&mut *tx)
    .await?;
    // language=PostgreSQL
    sqlx::query(
        r#"insert into authorization_code (code_hash, grant_id, redirect_uri, code_challenge, nonce, expires_at)
           values ($1, $2::uuid, $3, $4, $5, now() + make_interval(secs => $6))"#,
    )
    .bind(digest(&code))
    .bind(&grant_id)
    .bind(&a.redirect_uri)
    .bind(&a.code_challenge)
    .bind(&a.nonce)
    .bind(CODE_SECS as f64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(code)
}

/// The parameters of the two app grants at the token endpoint.
#[derive(Debug, Default)]
pub struct GrantForm {
    /// `client_id` in the form (public clients, or `client_secret_post`).
    pub client_id: Option<String>,
    /// `client_secret` in the form (`client_secret_post`).
    pub client_secret: Option<String>,
    /// `code` (authorization_code).
    pub code: Option<String>,
    /// `redirect_uri` (authorization_code).
    pub redirect_uri: Option<String>,
    /// `code_verifier` (authorization_code).
    pub code_verifier: Option<String>,
    /// `refresh_token` (refresh_token).
    pub refresh_token: Option<String>,
    /// `scope` (refresh_token: a narrower scope, optional).
    pub scope: Option<String>,
}

/// The client id and secret of an `Authorization: Basic` header, if there is one.
pub fn basic_credentials(headers: &HeaderMap) -> Result<Option<(String, String)>, OAuthError> {
    let Some(b) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .map(|(_, b)| b.trim().to_owned())
    else {
        return Ok(None);
    };
    let decoded = STANDARD
        .decode(b)
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
        .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
    let unescape = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    Ok(Some((unescape(id), unescape(secret))))
}

/// Authenticates an app: HTTP Basic (`client_secret_basic`), or `client_id` [+ `client_secret`]
/// in the form. A confidential app must prove its secret; a public app must not send one.
pub async fn authenticate_app(
    state: &AppState,
    headers: &HeaderMap,
    form: &GrantForm,
) -> Result<Client, OAuthError> {
    let (id, secret) = match basic_credentials(headers)? {
        Some((id, secret)) => (id, Some(secret)),
        None => (
            form.client_id
                .clone()
                .ok_or_else(|| OAuthError::invalid_client("client_id is missing"))?,
            form.client_secret.clone(),
        ),
    };
    if form.client_id.as_deref().is_some_and(|f| f != id) {
        return Err(OAuthError::invalid_client(
            "client_id differs from the authenticated client",
        ));
    }
    let client = clients::get(&state.db, &id)
        .await?
        .filter(|c| c.kind == "app")
        .ok_or_else(|| OAuthError::invalid_client("unknown client"))?;
    match (&client.secret_hash, secret) {
        (Some(hash), Some(s))
            if constant_eq(hash.as_bytes(), clients::hash_secret(&s).as_bytes()) => {}
        (Some(_), _) => {
            return Err(OAuthError::invalid_client(
                "the client secret is wrong or missing",
            ))
        }
        (None, Some(_)) => return Err(OAuthError::invalid_client("a public client has no secret")),
        (None, None) => {}
    }
    Ok(client)
}

/// Compares without an early exit.
pub fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// RFC 7636 §4.1: 43 to 128 characters of `[A-Za-z0-9-._~]`.
fn valid_verifier(v: &str) -> bool {
    (43..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

/// Whether `challenge` is a well-formed S256 challenge (43 base64url characters).
pub fn valid_challenge(challenge: &str) -> bool {
    challenge.len() == 43
        && challenge
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// An authorization code with its grant, as locked for an exchange.
#[derive(sqlx::FromRow)]
struct CodeRow {
    grant_id: String,
    redirect_uri: String,
    code_challenge: String,
    nonce: Option<String>,
    live: bool,
    used: bool,
    client_id: String,
    user_id: String,
    patient_id: String,
    scope: String,
    revoked: bool,
}

/// A refresh token with its grant, as locked for a refresh.
#[derive(sqlx::FromRow)]
struct RefreshRow {
    grant_id: String,
    scope: String,
    live: bool,
    used: bool,
    client_id: String,
    user_id: String,
    patient_id: String,
    revoked: bool,
}

struct GrantRow {
    grant_id: String,
    client_id: String,
    user_id: String,
    patient_id: String,
    revoked: bool,
}

/// Revokes a grant: it, its refresh tokens, and every live access token issued under it.
pub async fn revoke_grant(
    state: &AppState,
    conn: &mut PgConnection,
    grant_id: &str,
) -> sqlx::Result<()> {
    // language=PostgreSQL
    sqlx::query(
        "update oauth_grant set revoked_at = coalesce(revoked_at, now()) where grant_id = $1::uuid",
    )
    .bind(grant_id)
    .execute(&mut *conn)
    .await?;
    // language=PostgreSQL
    let jtis: Vec<String> = sqlx::query_scalar(
        r#"insert into revoked_token (jti, expires_at)
           select jti, expires_at from grant_access_token where grant_id = $1::uuid and expires_at > now()
           on conflict (jti) do nothing returning jti"#,
    )
    .bind(grant_id)
    .fetch_all(&mut *conn)
    .await?;
    for j in &jtis {
        state.revoked.insert(j);
    }
    tracing::info!(grant = %grant_id, tokens = jtis.len(), "grant revoked");
    Ok(())
}

/// Revokes in its own committed transaction (the refusal that follows must not roll it back).
async fn revoke_now(state: &AppState, grant_id: &str) -> Result<(), OAuthError> {
    let mut conn = state.db.acquire().await?;
    revoke_grant(state, &mut conn, grant_id).await?;
    Ok(())
}

/// A code or refresh token as found, locked, in the database.
struct Presented<'a> {
    what: &'a str,
    grant_id: &'a str,
    client_id: &'a str,
    live: bool,
    used: bool,
    revoked: bool,
}

/// What codes and refresh tokens share: issued to this client, unexpired, unrevoked, and never
/// used before. A second use is taken as theft and revokes the whole grant first. Revoking does
/// not touch the locked code or refresh-token row, so it runs beside the caller's transaction.
async fn check_presented(
    state: &AppState,
    client: &Client,
    p: Presented<'_>,
) -> Result<(), OAuthError> {
    let invalid = |d: String| OAuthError::bad("invalid_grant", d);
    if p.client_id != client.client_id {
        return Err(invalid(format!(
            "the {} was issued to another client",
            p.what
        )));
    }
    if p.used {
        revoke_now(state, p.grant_id).await?;
        return Err(invalid(format!(
            "the {} was already used; every token of its grant is revoked",
            p.what
        )));
    }
    if !p.live || p.revoked {
        return Err(invalid(format!(
            "the {} has expired or was revoked",
            p.what
        )));
    }
    Ok(())
}

/// `grant_type=authorization_code`.
pub async fn exchange_code(
    state: &AppState,
    client: &Client,
    form: &GrantForm,
) -> Result<Value, OAuthError> {
    let invalid = |d: &str| OAuthError::bad("invalid_grant", d.to_owned());
    let code = form
        .code
        .as_deref()
        .ok_or_else(|| OAuthError::bad("invalid_request", "code is missing"))?;
    let mut tx = state.db.begin().await?;
    // language=PostgreSQL
    let row: Option<CodeRow> = sqlx::query_as(
        r#"select c.grant_id::text as grant_id, c.redirect_uri, c.code_challenge, c.nonce,
                  c.expires_at > now() as live, c.used_at is not null as used,
                  g.client_id, g.user_id::text as user_id, g.patient_id, g.scope, g.revoked_at is not null as revoked
           from authorization_code c join oauth_grant g on g.grant_id = c.grant_id
           where c.code_hash = $1 for update of c"#,
    )
    .bind(digest(code))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(CodeRow {
        grant_id,
        redirect_uri,
        code_challenge: challenge,
        nonce,
        live,
        used,
        client_id,
        user_id,
        patient_id,
        scope,
        revoked,
    }) = row
    else {
        return Err(invalid("the authorization code is not valid"));
    };
    let presented = Presented {
        what: "authorization code",
        grant_id: &grant_id,
        client_id: &client_id,
        live,
        used,
        revoked,
    };
    check_presented(state, client, presented).await?;
    if form.redirect_uri.as_deref() != Some(redirect_uri.as_str()) {
        return Err(invalid(
            "redirect_uri must be exactly the one of the authorization request",
        ));
    }
    let verifier = form.code_verifier.as_deref().unwrap_or_default();
    if !valid_verifier(verifier) {
        return Err(invalid("code_verifier is missing or malformed (PKCE)"));
    }
    if !constant_eq(s256(verifier).as_bytes(), challenge.as_bytes()) {
        return Err(invalid(
            "code_verifier does not match the code challenge (PKCE S256)",
        ));
    }
    // language=PostgreSQL
    sqlx::query("update authorization_code set used_at = now() where code_hash = $1")
        .bind(digest(code))
        .execute(&mut *tx)
        .await?;
    let grant = GrantRow {
        grant_id,
        client_id,
        user_id,
        patient_id,
        revoked,
    };
    let body = issue(state, &mut tx, &grant, &scope, &scope, Some(nonce)).await?;
    tx.commit().await?;
    Ok(body)
}

/// `grant_type=refresh_token`: rotates the refresh token; a reused one revokes the grant.
pub async fn refresh(
    state: &AppState,
    client: &Client,
    form: &GrantForm,
) -> Result<Value, OAuthError> {
    let invalid = |d: &str| OAuthError::bad("invalid_grant", d.to_owned());
    let token = form
        .refresh_token
        .as_deref()
        .ok_or_else(|| OAuthError::bad("invalid_request", "refresh_token is missing"))?;
    let mut tx = state.db.begin().await?;
    // language=PostgreSQL
    let row: Option<RefreshRow> = sqlx::query_as(
        r#"select r.grant_id::text as grant_id, r.scope, r.expires_at > now() as live, r.used_at is not null as used,
                  g.client_id, g.user_id::text as user_id, g.patient_id, g.revoked_at is not null as revoked
           from refresh_token r join oauth_grant g on g.grant_id = r.grant_id
           where r.token_hash = $1 for update of r"#,
    )
    .bind(digest(token))
    .fetch_optional(&mut *tx)
    .await?;
    let Some(RefreshRow {
        grant_id,
        scope,
        live,
        used,
        client_id,
        user_id,
        patient_id,
        revoked,
    }) = row
    else {
        return Err(invalid("the refresh token is not valid"));
    };
    let presented = Presented {
        what: "refresh token",
        grant_id: &grant_id,
        client_id: &client_id,
        live,
        used,
        revoked,
    };
    check_presented(state, client, presented).await?;
    let original = ScopeSet::parse(&scope).unwrap_or_default();
    let access_scope = match form.scope.as_deref() {
        None => scope.clone(),
        Some(asked) => {
            let asked = ScopeSet::parse(asked)
                .map_err(|e| OAuthError::bad("invalid_scope", e.to_string()))?;
            if asked.intersect(&original) != asked {
                return Err(OAuthError::bad(
                    "invalid_scope",
                    "a refresh may only narrow the scope of the original grant",
                ));
            }
            asked.to_string()
        }
    };
    // language=PostgreSQL
    sqlx::query("update refresh_token set used_at = now() where token_hash = $1")
        .bind(digest(token))
        .execute(&mut *tx)
        .await?;
    let grant = GrantRow {
        grant_id,
        client_id,
        user_id,
        patient_id,
        revoked,
    };
    let body = issue(state, &mut tx, &grant, &access_scope, &scope, None).await?;
    tx.commit().await?;
    Ok(body)
}

/// Issues the token response of a grant: the access token (recorded under the grant), the
/// id_token for `openid`, a new refresh token for `offline_access`/`online_access`, and the
/// patient for `launch/patient`. `nonce` is `Some` on a code exchange (id_token issued).
async fn issue(
    state: &AppState,
    tx: &mut Transaction<'static, Postgres>,
    grant: &GrantRow,
    scope: &str,
    refresh_scope: &str,
    nonce: Option<Option<String>>,
) -> Result<Value, OAuthError> {
    debug_assert!(!grant.revoked);
    let set = ScopeSet::parse(scope).unwrap_or_default();
    let now = chrono::Utc::now().timestamp();
    let claims = AccessClaims {
        iss: state.issuer.clone(),
        aud: state.fhir_base.clone(),
        sub: grant.user_id.clone(),
        exp: now + APP_TOKEN_SECS,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        scope: scope.to_owned(),
        client_id: grant.client_id.clone(),
        patient: Some(grant.patient_id.clone()),
        organization: None,
    };
    let sign_failed = |e: anyhow::Error| {
        tracing::error!(error = %e, "signing failed");
        OAuthError::bad("server_error", "could not issue a token")
    };
    let access_token = state.signing.sign(&claims).map_err(sign_failed)?;
    // language=PostgreSQL
    sqlx::query("insert into grant_access_token (jti, grant_id, expires_at) values ($1, $2::uuid, to_timestamp($3))")
        .bind(&claims.jti)
        .bind(&grant.grant_id)
        .bind(claims.exp as f64)
        .execute(&mut **tx)
        .await?;
    let mut body = json!({"access_token": access_token, "token_type": "Bearer",
        "expires_in": APP_TOKEN_SECS, "scope": scope});
    if set.has("launch/patient") {
        body["patient"] = json!(grant.patient_id);
    }
    if let (Some(nonce), true) = (nonce, set.has("openid")) {
        let mut id = json!({"iss": state.issuer, "sub": grant.user_id, "aud": grant.client_id,
            "exp": now + APP_TOKEN_SECS, "iat": now, "auth_time": now});
        if let Some(n) = nonce {
            id["nonce"] = json!(n);
        }
        if set.has("fhirUser") {
            id["fhirUser"] = json!(format!("{}/Patient/{}", state.fhir_base, grant.patient_id));
        }
        body["id_token"] = json!(state.signing.sign(&id).map_err(sign_failed)?);
    }
    let refresh_set = ScopeSet::parse(refresh_scope).unwrap_or_default();
    if refresh_set.has("offline_access") || refresh_set.has("online_access") {
        let refresh = random_token();
        // language=PostgreSQL
        sqlx::query(
            "insert into refresh_token (token_hash, grant_id, scope, expires_at) values ($1, $2::uuid, $3, now() + make_interval(secs => $4))",
        )
        .bind(digest(&refresh))
        .bind(&grant.grant_id)
        .bind(refresh_scope)
        .bind(REFRESH_SECS as f64)
        .execute(&mut **tx)
        .await?;
        body["refresh_token"] = json!(refresh);
    }
    Ok(body)
}

/// A refresh token as the revocation and introspection endpoints see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefreshInfo {
    /// Its grant.
    pub grant_id: String,
    /// The client the grant belongs to.
    pub client_id: String,
    /// The signed-in user who approved the grant.
    pub user_id: String,
    /// The patient of the grant.
    pub patient_id: String,
    /// The scope the refresh token carries.
    pub scope: String,
    /// When it was issued (seconds since the epoch).
    pub iat: i64,
    /// When it expires (seconds since the epoch).
    pub exp: i64,
    /// Unexpired, never used, and its grant not revoked.
    pub active: bool,
}

/// The refresh token `token`, whoever it was issued to; `None` when it is not one.
pub async fn find_refresh_token(
    state: &AppState,
    token: &str,
) -> Result<Option<RefreshInfo>, OAuthError> {
    // language=PostgreSQL
    let row: Option<RefreshInfo> = sqlx::query_as(
        r#"select g.grant_id::text as grant_id, g.client_id, g.user_id::text as user_id, g.patient_id, r.scope,
                  (extract(epoch from r.expires_at)::bigint - $2) as iat,
                  extract(epoch from r.expires_at)::bigint as exp,
                  (r.expires_at > now() and r.used_at is null and g.revoked_at is null) as active
           from refresh_token r join oauth_grant g on g.grant_id = r.grant_id
           where r.token_hash = $1"#,
    )
    .bind(digest(token))
    .bind(REFRESH_SECS)
    .fetch_optional(&state.db)
    .await?;
    Ok(row)
}

/// Revokes the grant of a refresh token (RFC 7009 §2.1: revoking a refresh token also ends the
/// access tokens of the same grant). The caller checked that the token is its own.
pub async fn revoke_grant_of(state: &AppState, refresh: &RefreshInfo) -> Result<(), OAuthError> {
    revoke_now(state, &refresh.grant_id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert!(valid_verifier(verifier));
        assert_eq!(
            s256(verifier),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        assert!(valid_challenge(
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        ));
        assert!(!valid_verifier("short"));
        assert!(!valid_verifier(&"a".repeat(129)));
        assert!(!valid_verifier(&format!("{}!", "a".repeat(43))));
    }

    #[test]
    fn constant_eq_compares_whole_values() {
        assert!(constant_eq(b"abc", b"abc"));
        assert!(!constant_eq(b"abc", b"abd"));
        assert!(!constant_eq(b"abc", b"ab"));
    }
}
