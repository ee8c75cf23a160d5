//! Signed checkpoints of the audit trail, kept outside the database.
//!
//! The hash chain (`chain.rs`) finds an edited or deleted row in the middle, but a superuser can
//! delete the newest rows, truncate the table, or edit a row and recompute every later hash:
//! the chain still verifies. A checkpoint pins the chain's state at a moment: the last row's
//! sequence number, the number of events through it and its hash, with the time, signed
//! (ECDSA P-256) by a key that is not in the database and appended to a sink that is not the
//! database (by default a file opened in append mode; the [`Sink`] seam takes an object store
//! with a retention lock or a transparency log). `fhirgate audit verify --checkpoints PATH` then
//! proves that every checkpointed event is still there, unchanged.
//!
//! What it detects: any change to rows up to the newest checkpoint. Events recorded after the
//! newest checkpoint are protected by the chain alone until the next one (every
//! `--checkpoint-interval-secs`, and on demand with `fhirgate audit checkpoint`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// One checkpoint, as one JSON line of the sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sequence number of the newest row.
    pub seq: i64,
    /// Events through that row (event ids are 1..=count).
    pub count: i64,
    /// That row's chain hash (hex).
    pub head: String,
    /// When the checkpoint was taken (RFC 3339).
    pub time: String,
    /// The signer's public key (SEC1 compressed, hex).
    pub key: String,
    /// ECDSA P-256 over [`Checkpoint::message`] (base64 of r‖s).
    pub sig: String,
}

impl Checkpoint {
    /// The signed text.
    fn message(seq: i64, count: i64, head: &str, time: &str) -> String {
        format!("fhirgate-audit-checkpoint\n{seq}\n{count}\n{head}\n{time}")
    }
}

/// The checkpoint signing key: 32 random bytes (hex) in a file outside the database, made on
/// first use.
pub fn signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    if !path.exists() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let key = SigningKey::random(&mut rand::rngs::OsRng);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts
            .open(path)
            .with_context(|| format!("creating the checkpoint key {}", path.display()))?;
        f.write_all(hex::encode(key.to_bytes()).as_bytes())?;
        f.sync_all()?;
        tracing::warn!(path = %path.display(), "wrote a new audit checkpoint signing key; keep it (and a copy of its public key) away from the database");
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the checkpoint key {}", path.display()))?;
    let bytes = hex::decode(text.trim()).context("the checkpoint key file is not hex")?;
    SigningKey::from_slice(&bytes).context("the checkpoint key file does not hold a P-256 key")
}

/// The public key as it appears in checkpoints.
pub fn public_hex(key: &VerifyingKey) -> String {
    hex::encode(key.to_encoded_point(true).as_bytes())
}

/// Where checkpoints go.
pub trait Sink: Send + Sync {
    /// Appends one line durably.
    fn append(&self, line: &str) -> anyhow::Result<()>;
}

/// A local file, only ever opened for appending (make it append-only with `chattr +a`, or put
/// it on another machine's mount, for protection against the database's superuser).
#[derive(Debug, Clone)]
pub struct FileSink(pub PathBuf);

impl Sink for FileSink {
    fn append(&self, line: &str) -> anyhow::Result<()> {
        if let Some(dir) = self.0.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.0)
            .with_context(|| format!("opening the checkpoint file {}", self.0.display()))?;
        f.write_all(format!("{line}\n").as_bytes())?;
        f.sync_data()?;
        Ok(())
    }
}

/// Signs the chain's current head and appends it to `sink`; `None` while the trail is empty.
pub async fn take(
    pool: &PgPool,
    key: &SigningKey,
    sink: &dyn Sink,
) -> anyhow::Result<Option<Checkpoint>> {
    super::chain::drain_inbox(pool).await?;
    // language=PostgreSQL
    let head: Option<(i64, i64, Vec<u8>)> = sqlx::query_as(
        "select seq, first_id + count - 1, hash from audit_log order by seq desc limit 1",
    )
    .fetch_optional(pool)
    .await?;
    let Some((seq, count, hash)) = head else {
        return Ok(None);
    };
    let head = hex::encode(hash);
    let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let sig: Signature = key.sign(Checkpoint::message(seq, count, &head, &time).as_bytes());
    let checkpoint = Checkpoint {
        seq,
        count,
        head,
        time,
        key: public_hex(key.verifying_key()),
        sig: base64::engine::general_purpose::STANDARD.encode(sig.to_bytes()),
    };
    sink.append(&serde_json::to_string(&checkpoint)?)?;
    Ok(Some(checkpoint))
}

/// What checking the checkpoints found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointReport {
    /// Every checkpoint is signed by the key and its events are all there, unchanged.
    Ok {
        /// Checkpoints checked.
        checkpoints: usize,
        /// Events covered by the newest.
        covered: i64,
    },
    /// The first checkpoint that does not hold.
    Failed {
        /// Its line in the file (from 1).
        line: usize,
        /// Why.
        reason: String,
    },
}

/// Checks every checkpoint in `path` against the database: the signature (by `key`), then that
/// its row is still there with the same hash and event count. Run it together with the chain
/// walk ([`super::verify`]): the chain proves every earlier row from the checkpointed one.
pub async fn check(
    pool: &PgPool,
    path: &Path,
    key: &VerifyingKey,
) -> anyhow::Result<CheckpointReport> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the checkpoints {}", path.display()))?;
    let expected_key = public_hex(key);
    let mut covered = 0;
    let mut checked = 0;
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let fail = |reason: String| {
            Ok(CheckpointReport::Failed {
                line: i + 1,
                reason,
            })
        };
        let Ok(c) = serde_json::from_str::<Checkpoint>(line) else {
            return fail("not a checkpoint".into());
        };
        if c.key != expected_key {
            return fail(format!("signed by another key ({})", c.key));
        }
        let signature = base64::engine::general_purpose::STANDARD
            .decode(&c.sig)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok());
        let message = Checkpoint::message(c.seq, c.count, &c.head, &c.time);
        if signature.is_none_or(|s| key.verify(message.as_bytes(), &s).is_err()) {
            return fail("the signature does not verify".into());
        }
        // language=PostgreSQL
        let row: Option<(i64, Vec<u8>)> =
            sqlx::query_as("select first_id + count - 1, hash from audit_log where seq = $1")
                .bind(c.seq)
                .fetch_optional(pool)
                .await?;
        match row {
            None => {
                return fail(format!(
                    "row {} (events through {}) is gone from the trail",
                    c.seq, c.count
                ))
            }
            Some((count, hash)) if count != c.count || hex::encode(&hash) != c.head => {
                return fail(format!(
                    "row {} changed: {} events and hash {} where the checkpoint signed {} and {}",
                    c.seq,
                    count,
                    hex::encode(hash),
                    c.count,
                    c.head
                ))
            }
            Some(_) => {}
        }
        covered = covered.max(c.count);
        checked += 1;
    }
    Ok(CheckpointReport::Ok {
        checkpoints: checked,
        covered,
    })
}
