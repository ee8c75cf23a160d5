//! Revoked access tokens (by token id, and every token of a removed client), cached in memory. A background task reads new revocations every second,
//! so verifying a token never costs a database round trip and a revocation takes effect within
//! about a second on every server.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The set of revoked token ids.
#[derive(Default)]
pub struct RevokedSet {
    jtis: RwLock<HashSet<String>>,
    /// Removed clients and when: tokens they were issued before then are refused.
    clients: RwLock<HashMap<String, i64>>,
}

impl RevokedSet {
    /// Whether `jti` was revoked.
    pub fn contains(&self, jti: &str) -> bool {
        self.jtis
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(jti)
    }

    /// Whether a token of `client_id` issued at `iat` (seconds) belongs to a removed client.
    pub fn client_revoked(&self, client_id: &str, iat: i64) -> bool {
        self.clients
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(client_id)
            .is_some_and(|at| iat <= *at)
    }

    /// Marks every token `client_id` holds now revoked on this server at once (others learn it
    /// from the table).
    pub fn revoke_client(&self, client_id: &str) {
        self.note_clients(vec![(client_id.to_owned(), Utc::now())]);
    }

    fn note_clients(&self, rows: Vec<(String, DateTime<Utc>)>) {
        let mut map = self
            .clients
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (client, at) in rows {
            let at = at.timestamp();
            let e = map.entry(client).or_insert(at);
            *e = (*e).max(at);
        }
    }

    /// Marks `jti` revoked on this server at once (others learn it from the table).
    pub fn insert(&self, jti: &str) {
        self.extend(vec![jti.to_owned()]);
    }

    fn extend(&self, jtis: Vec<String>) {
        if !jtis.is_empty() {
            self.jtis
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(jtis);
        }
    }

    /// Polls `revoked_token` for rows newer than the last seen, forever.
    pub async fn follow(&self, db: PgPool) {
        let mut since: Option<DateTime<Utc>> = None;
        loop {
            // language=PostgreSQL
            let rows: Result<Vec<(String, DateTime<Utc>)>, _> = sqlx::query_as(
                "select jti, revoked_at from revoked_token where ($1::timestamptz is null or revoked_at >= $1) and expires_at > now()",
            )
            .bind(since)
            .fetch_all(&db)
            .await;
            match rows {
                Ok(rows) => {
                    if let Some(max) = rows.iter().map(|r| r.1).max() {
                        since = Some(max);
                    }
                    self.extend(rows.into_iter().map(|r| r.0).collect());
                }
                Err(e) => tracing::warn!(error = %e, "could not refresh revoked tokens"),
            }
            // language=PostgreSQL
            let clients: Result<Vec<(String, DateTime<Utc>)>, _> =
                sqlx::query_as("select client_id, revoked_at from revoked_client")
                    .fetch_all(&db)
                    .await;
            match clients {
                Ok(rows) => self.note_clients(rows),
                Err(e) => tracing::warn!(error = %e, "could not refresh removed clients"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
