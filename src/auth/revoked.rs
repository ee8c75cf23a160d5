//! Revoked access tokens, cached in memory. A background task reads new revocations every second,
//! so verifying a token never costs a database round trip and a revocation takes effect within
//! about a second on every server.

use std::collections::HashSet;
use std::sync::RwLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// The set of revoked token ids.
#[derive(Default)]
pub struct RevokedSet {
    jtis: RwLock<HashSet<String>>,
}

impl RevokedSet {
    /// Whether `jti` was revoked.
    pub fn contains(&self, jti: &str) -> bool {
        self.jtis
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(jti)
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
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}
