//! Patients who sign in: sign-up (which also creates their Patient resource), password checks
//! with argon2id, and browser sessions.
//!
//! The email address is stored only as a keyed blind index, and an unknown address costs the same
//! argon2 work as a wrong password, so a failed sign-in says nothing about whether the account
//! exists.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::error::{FhirError, Result};
use crate::state::AppState;
use crate::storage::write::{self, WriteKind, WriteOp};

/// How long a browser session lasts.
pub const SESSION_SECS: i64 = 60 * 60;
/// Shortest password accepted.
pub const MIN_PASSWORD: usize = 10;
const MAX_PASSWORD: usize = 1024;

/// A signed-in patient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The account id (a UUID).
    pub user_id: String,
    /// The id of their Patient resource.
    pub patient_id: String,
}

/// What a sign-up form carries.
#[derive(Debug, Clone)]
pub struct SignUp {
    /// Email address, as typed.
    pub email: String,
    /// Password, as typed.
    pub password: String,
    /// Given name.
    pub given: String,
    /// Family name.
    pub family: String,
}

/// Why a sign-up was refused (shown to the person signing up).
#[derive(Debug, thiserror::Error)]
pub enum SignUpError {
    /// A field is wrong; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// The address is taken. The page says so without confirming it to anyone else.
    #[error("an account with this email address may already exist; sign in instead")]
    Taken,
    /// Storage failed.
    #[error(transparent)]
    Fhir(#[from] FhirError),
}

/// Trims and lower-cases an address; `None` unless it looks like `local@domain`.
pub fn normalize_email(raw: &str) -> Option<String> {
    let e = raw.trim().to_lowercase();
    let (local, domain) = e.split_once('@')?;
    let ok = !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains('@')
        && e.len() <= 254
        && !e.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then_some(e)
}

fn email_index(state: &AppState, email: &str) -> Vec<u8> {
    state.keys.blind(&[b"app_user.email", email.as_bytes()])
}

/// A key for rate limiting sign-ins to one account, without keeping the address in memory.
pub fn account_key(state: &AppState, raw_email: &str) -> String {
    let email = normalize_email(raw_email).unwrap_or_else(|| raw_email.to_owned());
    hex::encode(email_index(state, &email))
}

fn argon() -> Argon2<'static> {
    Argon2::default()
}

async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        argon()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| FhirError::Internal(anyhow::anyhow!("argon2: {e}")))
    })
    .await
    .map_err(|e| FhirError::Internal(e.into()))?
}

/// A hash nobody's password matches, checked when the address is unknown so that both failures
/// take the same time.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        argon()
            .hash_password(uuid::Uuid::new_v4().as_bytes(), &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&hash)
            .map(|h| argon().verify_password(password.as_bytes(), &h).is_ok())
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

/// Creates the account and its Patient resource in one transaction.
pub async fn sign_up(state: &AppState, form: SignUp) -> std::result::Result<User, SignUpError> {
    let email = normalize_email(&form.email)
        .ok_or_else(|| SignUpError::Invalid("enter a valid email address".into()))?;
    let chars = form.password.chars().count();
    if chars < MIN_PASSWORD || form.password.len() > MAX_PASSWORD {
        return Err(SignUpError::Invalid(format!(
            "the password must have at least {MIN_PASSWORD} characters"
        )));
    }
    let (given, family) = (form.given.trim(), form.family.trim());
    if given.is_empty() || family.is_empty() || given.len() > 200 || family.len() > 200 {
        return Err(SignUpError::Invalid(
            "enter your given and family names".into(),
        ));
    }
    let index = email_index(state, &email);
    let password_hash = hash_password(form.password).await?;
    let patient_id = write::new_id();
    let patient = json!({
        "resourceType": "Patient",
        "id": patient_id,
        "active": true,
        "name": [{"use": "official", "family": family, "given": [given]}],
        "telecom": [{"system": "email", "value": email}],
    });
    let patient = write::check_resource(patient, "Patient", Some(&patient_id))?;
    let user_id = uuid::Uuid::new_v4().to_string();
    let mut tx = state.db.begin().await.map_err(FhirError::from)?;
    // language=PostgreSQL
    let inserted = sqlx::query(
        "insert into app_user (user_id, email_index, password_hash, patient_id) values ($1::uuid, $2, $3, $4) on conflict (email_index) do nothing",
    )
    .bind(&user_id)
    .bind(&index)
    .bind(&password_hash)
    .bind(&patient_id)
    .execute(&mut *tx)
    .await
    .map_err(FhirError::from)?
    .rows_affected();
    if inserted == 0 {
        return Err(SignUpError::Taken);
    }
    let op = WriteOp {
        kind: WriteKind::Create,
        resource_type: "Patient".into(),
        id: patient_id.clone(),
        resource: Some(patient),
        if_match: None,
    };
    write::apply(state, &mut tx, vec![op], &crate::access::Policy::server()).await?;
    tx.commit().await.map_err(FhirError::from)?;
    tracing::info!(user = %user_id, "account created");
    Ok(User {
        user_id,
        patient_id,
    })
}

/// Gives the existing record `Patient/patient_id` a sign-in account (`fhirgate demo`); `false`
/// when the address already has an account, which is left as it is.
pub async fn attach_account(
    state: &AppState,
    email: &str,
    password: &str,
    patient_id: &str,
) -> Result<bool> {
    let email = normalize_email(email)
        .ok_or_else(|| FhirError::bad_request("email", "not an email address"))?;
    let password_hash = hash_password(password.to_owned()).await?;
    // language=PostgreSQL
    let inserted = sqlx::query(
        "insert into app_user (user_id, email_index, password_hash, patient_id) values ($1::uuid, $2, $3, $4) on conflict (email_index) do nothing",
    )
    .bind(uuid::Uuid::new_v4().to_string())
    .bind(email_index(state, &email))
    .bind(&password_hash)
    .bind(patient_id)
    .execute(&state.db)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The user with this email and password, or `None` (same work either way).
pub async fn authenticate(state: &AppState, email: &str, password: &str) -> Result<Option<User>> {
    let found: Option<(String, String, String)> = match normalize_email(email) {
        Some(e) => {
            // language=PostgreSQL
            sqlx::query_as(
                "select user_id::text, password_hash, patient_id from app_user where email_index = $1",
            )
            .bind(email_index(state, &e))
            .fetch_optional(&state.db)
            .await?
        }
        None => None,
    };
    let hash = found
        .as_ref()
        .map_or_else(|| decoy_hash().to_owned(), |f| f.1.clone());
    let ok = verify_password(password.to_owned(), hash).await;
    Ok(match found {
        Some((user_id, _, patient_id)) if ok => Some(User {
            user_id,
            patient_id,
        }),
        _ => None,
    })
}

fn session_hash(cookie: &str) -> Vec<u8> {
    Sha256::digest(cookie.as_bytes()).to_vec()
}

/// Starts a session for `user`; returns the cookie value (256 random bits, URL-safe).
pub async fn start_session(state: &AppState, user: &User) -> Result<String> {
    use base64::Engine;
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    // language=PostgreSQL
    sqlx::query(
        "insert into ui_session (session_hash, user_id, expires_at) values ($1, $2::uuid, now() + make_interval(secs => $3))",
    )
    .bind(session_hash(&value))
    .bind(&user.user_id)
    .bind(SESSION_SECS as f64)
    .execute(&state.db)
    .await?;
    Ok(value)
}

/// Whether `user` may read the whole audit trail.
pub async fn is_auditor(state: &AppState, user: &User) -> Result<bool> {
    // language=PostgreSQL
    let flag: Option<bool> =
        sqlx::query_scalar("select auditor from app_user where user_id = $1::uuid")
            .bind(&user.user_id)
            .fetch_optional(&state.db)
            .await?;
    Ok(flag.unwrap_or(false))
}

/// Grants or withdraws the auditor role of the account with this email; `false` when there is
/// no such account.
pub async fn set_auditor(state: &AppState, email: &str, auditor: bool) -> Result<bool> {
    let Some(e) = normalize_email(email) else {
        return Ok(false);
    };
    // language=PostgreSQL
    let n = sqlx::query("update app_user set auditor = $2 where email_index = $1")
        .bind(email_index(state, &e))
        .bind(auditor)
        .execute(&state.db)
        .await?
        .rows_affected();
    Ok(n == 1)
}

/// The user of a live session cookie.
pub async fn session_user(state: &AppState, cookie: &str) -> Result<Option<User>> {
    // language=PostgreSQL
    let row: Option<(String, String)> = sqlx::query_as(
        r#"select u.user_id::text, u.patient_id from ui_session s join app_user u on u.user_id = s.user_id
           where s.session_hash = $1 and s.expires_at > now()"#,
    )
    .bind(session_hash(cookie))
    .fetch_optional(&state.db)
    .await?;
    Ok(row.map(|(user_id, patient_id)| User {
        user_id,
        patient_id,
    }))
}

/// Ends a session (sign-out).
pub async fn end_session(state: &AppState, cookie: &str) -> Result<()> {
    // language=PostgreSQL
    sqlx::query("delete from ui_session where session_hash = $1 or expires_at < now()")
        .bind(session_hash(cookie))
        .execute(&state.db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::normalize_email;

    #[test]
    fn emails_are_normalised() {
        assert_eq!(
            normalize_email("  Ada@Example.ORG ").as_deref(),
            Some("ada@example.org")
        );
        for bad in [
            "",
            "ada",
            "@example.org",
            "ada@",
            "ada@org",
            "a b@x.org",
            "a@@x.org",
            "a@x.org.",
        ] {
            assert_eq!(normalize_email(bad), None, "{bad}");
        }
    }
}
