//! `Idempotency-Key` on writes (`POST [base]` Bundles and `POST [type]` creates): a client that
//! did not get an answer (a dropped connection, a restart) sends the same request with the same
//! key again and gets the first answer back instead of a second write.
//!
//! - The key (1 to 255 visible ASCII characters) is scoped to the caller.
//! - It is claimed inside the write's own transaction, so a committed write always holds its key
//!   and a concurrent request with the same key waits for it or is refused (409).
//! - The answer (status, `Location`/`ETag`/`Content-Type` and body) is stored sealed (AES-GCM
//!   under the server's cursor key, bound to the caller and the key) just after the commit, and
//!   replayed with `Idempotent-Replayed: true`.
//! - The same key with a different request is 422. A write that committed but whose answer could
//!   not be stored (the server stopped in between) answers 409 saying so: it is not written again.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{Postgres, Transaction};

use crate::access::Policy;
use crate::error::{FhirError, Result};
use crate::state::AppState;

/// The request header.
pub const HEADER: &str = "idempotency-key";

/// One idempotent request: who, which key, and what was asked.
#[derive(Debug, Clone)]
pub struct Idempotent {
    caller: String,
    key: String,
    hash: Vec<u8>,
}

impl Idempotent {
    /// The request's key, if it sent one (400 when it is malformed), with the hash of what it
    /// asks: the method and path and the body as parsed.
    pub fn of(
        headers: &HeaderMap,
        policy: &Policy,
        target: &str,
        body: &Value,
    ) -> Result<Option<Self>> {
        let Some(raw) = headers.get(HEADER) else {
            return Ok(None);
        };
        let key = raw
            .to_str()
            .ok()
            .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                FhirError::bad_request(
                    "Idempotency-Key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                )
            })?;
        let mut h = Sha256::new();
        h.update(target.as_bytes());
        h.update([0]);
        h.update(serde_json::to_vec(body).map_err(anyhow::Error::from)?);
        Ok(Some(Idempotent {
            caller: policy.caller_key().to_owned(),
            key: key.to_owned(),
            hash: h.finalize().to_vec(),
        }))
    }

    fn binding(&self) -> Vec<u8> {
        format!("idempotency\u{1f}{}\u{1f}{}", self.caller, self.key).into_bytes()
    }

    /// The stored answer of an earlier request with this key, if there is one.
    pub async fn replay(&self, state: &AppState) -> Result<Option<Response>> {
        // language=PostgreSQL
        type Stored = (Vec<u8>, Option<i32>, Option<Value>, Option<String>);
        let row: Option<Stored> = sqlx::query_as(
            "select request_hash, status, headers, body from idempotent_request where caller = $1 and key = $2",
        )
        .bind(&self.caller)
        .bind(&self.key)
        .fetch_optional(&state.db)
        .await?;
        let Some((hash, status, headers, body)) = row else {
            return Ok(None);
        };
        if hash != self.hash {
            return Err(FhirError::InvalidResource {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                issues: vec![crate::error::OutcomeIssue::at(
                    crate::error::IssueType::Conflict,
                    "Idempotency-Key",
                    "this Idempotency-Key was used with a different request",
                )],
            });
        }
        let (Some(status), Some(body)) = (status, body) else {
            return Err(FhirError::Conflict(
                "a request with this Idempotency-Key was committed, but its answer was not recorded; it is not written again".into(),
            ));
        };
        let body = state
            .keys
            .open_cursor(&body, &self.binding())
            .ok_or_else(|| FhirError::Internal(anyhow::anyhow!("a stored answer did not open")))?;
        let mut resp = (
            StatusCode::from_u16(status as u16).unwrap_or(StatusCode::OK),
            body,
        )
            .into_response();
        if let Some(Value::Object(h)) = headers {
            for (k, v) in h {
                if let (Ok(k), Some(Ok(v))) = (
                    HeaderName::try_from(k.as_str()),
                    v.as_str().map(HeaderValue::from_str),
                ) {
                    resp.headers_mut().insert(k, v);
                }
            }
        }
        resp.headers_mut().insert(
            HeaderName::from_static("idempotent-replayed"),
            HeaderValue::from_static("true"),
        );
        Ok(Some(resp))
    }

    /// Claims the key inside the write's transaction: 409 when another request holds it.
    pub async fn claim(&self, tx: &mut Transaction<'static, Postgres>) -> Result<()> {
        // language=PostgreSQL
        let claimed = sqlx::query(
            "insert into idempotent_request (caller, key, request_hash) values ($1, $2, $3) on conflict do nothing",
        )
        .bind(&self.caller)
        .bind(&self.key)
        .bind(&self.hash)
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if claimed == 0 {
            return Err(FhirError::Conflict(
                "another request with this Idempotency-Key is in progress or done; retry to get its answer".into(),
            ));
        }
        Ok(())
    }

    /// Stores the answer of the committed write, and returns it.
    pub async fn record(&self, state: &AppState, resp: Response) -> Response {
        let (parts, body) = resp.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
            return FhirError::Internal(anyhow::anyhow!("the answer could not be buffered"))
                .into_response();
        };
        let mut kept = serde_json::Map::new();
        for name in [
            header::LOCATION,
            header::ETAG,
            header::CONTENT_TYPE,
            header::LAST_MODIFIED,
        ] {
            if let Some(v) = parts.headers.get(&name).and_then(|v| v.to_str().ok()) {
                kept.insert(name.as_str().to_owned(), Value::String(v.to_owned()));
            }
        }
        let sealed = state.keys.seal_cursor(&bytes, &self.binding());
        // language=PostgreSQL
        let stored = sqlx::query(
            "update idempotent_request set status = $3, headers = $4, body = $5 where caller = $1 and key = $2",
        )
        .bind(&self.caller)
        .bind(&self.key)
        .bind(i32::from(parts.status.as_u16()))
        .bind(Value::Object(kept))
        .bind(sealed)
        .execute(&state.db)
        .await;
        if let Err(e) = stored {
            // The write committed and holds its key: a retry is told so (409), never written twice.
            tracing::error!(error = %e, "the answer of an idempotent request could not be stored");
        }
        Response::from_parts(parts, axum::body::Body::from(bytes))
    }
}
