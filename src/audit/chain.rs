//! The hash chain: numbering, hashing and storing events, group commit, and verification.
//!
//! One writer task owns the head of the chain. Requests send it their events and wait; it takes
//! every event queued by then, plus the write events waiting in `audit_inbox`, and stores them in
//! one transaction (group commit), then answers each request. A failed insert fails every request
//! of the batch: no audit, no access. Several servers on one database serialise on an advisory
//! lock and read the head inside it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::event::{columns, Event};
use super::RequestContext;

/// The advisory lock that serialises chain writers ("audit" in ASCII).
const CHAIN_LOCK: i64 = 0x0061_7564_6974;
/// Most events stored by one transaction.
const MAX_BATCH: usize = 2000;
/// How often the writer links waiting write events when no request wakes it.
const INBOX_TICK: Duration = Duration::from_millis(200);

/// Idle ticks between sweeps of the inbox for events of other processes.
const IDLE_SWEEP_TICKS: u32 = 50;

type Reply = oneshot::Sender<Result<(), String>>;

/// A handle to the audit writer task; cheap to clone.
#[derive(Clone, Debug)]
pub struct Auditor {
    tx: mpsc::Sender<(Option<Value>, Reply)>,
    /// Set when this process put events into the inbox since the writer last drained it.
    pending: Arc<AtomicBool>,
    /// Whether read events are written (off only for `serve --no-read-audit` benchmarks).
    audit_reads: bool,
}

impl Auditor {
    /// Starts the writer task on `pool`.
    pub fn start(pool: PgPool, audit_reads: bool) -> Self {
        let (tx, rx) = mpsc::channel(16 * 1024);
        let pending = Arc::new(AtomicBool::new(true));
        tokio::spawn(writer(pool, rx, pending.clone()));
        Auditor {
            tx,
            pending,
            audit_reads,
        }
    }

    /// Tells the writer that a transaction put events into the inbox.
    pub fn note_inbox(&self) {
        self.pending.store(true, Ordering::Relaxed);
    }

    /// Whether read events are written.
    pub fn audits_reads(&self) -> bool {
        self.audit_reads
    }

    /// Stores `event` made by `ctx` durably, returning once it is committed.
    pub async fn record(&self, event: &Event, ctx: Option<&RequestContext>) -> anyhow::Result<()> {
        self.send(Some(event.resource(ctx))).await
    }

    /// Links every write event waiting in the inbox into the chain, so that a search right after
    /// a write sees it.
    pub async fn flush(&self) -> anyhow::Result<()> {
        self.send(None).await
    }

    async fn send(&self, event: Option<Value>) -> anyhow::Result<()> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send((event, reply))
            .await
            .map_err(|_| anyhow::anyhow!("the audit writer has stopped"))?;
        done.await
            .map_err(|_| anyhow::anyhow!("the audit writer has stopped"))?
            .map_err(|e| anyhow::anyhow!("audit write failed: {e}"))
    }
}

async fn writer(
    pool: PgPool,
    mut rx: mpsc::Receiver<(Option<Value>, Reply)>,
    pending: Arc<AtomicBool>,
) {
    let mut idle_ticks = 0u32;
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => Some(m),
                None => return,
            },
            () = tokio::time::sleep(INBOX_TICK) => None,
        };
        if first.is_none() {
            // Idle: drain the inbox when this process wrote to it, and now and then for events
            // other processes (`fhirgate import`) left there.
            idle_ticks += 1;
            if !pending.swap(false, Ordering::Relaxed) && idle_ticks < IDLE_SWEEP_TICKS {
                continue;
            }
            idle_ticks = 0;
        } else {
            pending.store(false, Ordering::Relaxed);
        }
        let mut events = Vec::new();
        let mut replies = Vec::new();
        let mut next = first;
        while let Some((e, r)) = next {
            events.extend(e);
            replies.push(r);
            next = if replies.len() < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        let result = append(&pool, events).await.map_err(|e| {
            tracing::error!(error = %e, "audit write failed");
            e.to_string()
        });
        for r in replies {
            let _ = r.send(result.clone().map(|_| ()));
        }
    }
}

/// Stores `events` after the write events waiting in the inbox, in one transaction; returns how
/// many rows were chained.
pub async fn append(pool: &PgPool, events: Vec<Value>) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    // language=PostgreSQL
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(CHAIN_LOCK)
        .execute(&mut *tx)
        .await?;
    // language=PostgreSQL
    let mut waiting: Vec<(i64, String)> = sqlx::query_as(
        r#"delete from audit_inbox where inbox_id in
             (select inbox_id from audit_inbox order by inbox_id limit $1)
           returning inbox_id, event"#,
    )
    .bind(MAX_BATCH as i64)
    .fetch_all(&mut *tx)
    .await?;
    waiting.sort_by_key(|(id, _)| *id);
    let mut all = Vec::with_capacity(waiting.len() + events.len());
    for (id, text) in waiting {
        all.push(
            serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("audit inbox row {id} is not JSON: {e}"))?,
        );
    }
    all.extend(events);
    let n = all.len() as u64;
    if !all.is_empty() {
        insert(&mut tx, all).await?;
    }
    tx.commit().await?;
    Ok(n)
}

/// The last sequence number and hash, or 0 and the zero hash for an empty chain.
async fn head(tx: &mut Transaction<'static, Postgres>) -> anyhow::Result<(i64, Vec<u8>)> {
    // language=PostgreSQL
    let row: Option<(i64, Vec<u8>)> =
        sqlx::query_as("select seq, hash from audit_log order by seq desc limit 1")
            .fetch_optional(&mut **tx)
            .await?;
    Ok(row.unwrap_or((0, vec![0; 32])))
}

/// SHA-256 of the previous hash followed by the event text.
pub fn link_hash(prev: &[u8], event: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(event.as_bytes());
    h.finalize().to_vec()
}

async fn insert(tx: &mut Transaction<'static, Postgres>, events: Vec<Value>) -> anyhow::Result<()> {
    let (mut seq, mut prev) = head(tx).await?;
    let n = events.len();
    let mut seqs = Vec::with_capacity(n);
    let mut recorded = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    let mut subtypes = Vec::with_capacity(n);
    let mut actions = Vec::with_capacity(n);
    let mut outcomes = Vec::with_capacity(n);
    // Arrays of arrays of different lengths cannot be bound; each list travels as a JSON array.
    let mut agents = Vec::with_capacity(n);
    let mut patients = Vec::with_capacity(n);
    let mut entities = Vec::with_capacity(n);
    let mut texts = Vec::with_capacity(n);
    let mut prevs = Vec::with_capacity(n);
    let mut hashes = Vec::with_capacity(n);
    for mut e in events {
        seq += 1;
        e["id"] = Value::String(seq.to_string());
        let c = columns(&e).ok_or_else(|| anyhow::anyhow!("malformed audit event"))?;
        let text = serde_json::to_string(&e)?;
        let hash = link_hash(&prev, &text);
        seqs.push(seq);
        recorded.push(c.recorded);
        types.push(c.type_code);
        subtypes.push(c.subtype);
        actions.push(c.action);
        outcomes.push(c.outcome);
        agents.push(serde_json::to_string(&c.agents)?);
        patients.push(serde_json::to_string(&c.patients)?);
        entities.push(serde_json::to_string(&c.entities)?);
        texts.push(text);
        prevs.push(std::mem::replace(&mut prev, hash.clone()));
        hashes.push(hash);
    }
    // language=PostgreSQL
    sqlx::query(
        r#"insert into audit_log (seq, recorded, type_code, subtype, action, outcome, agents, patients, entities, event, prev_hash, hash)
           select s, r, t, st, a, o,
                  array(select jsonb_array_elements_text(ag::jsonb)),
                  array(select jsonb_array_elements_text(pa::jsonb)),
                  array(select jsonb_array_elements_text(en::jsonb)),
                  ev, ph, h
           from unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
                       $7::text[], $8::text[], $9::text[], $10::text[], $11::bytea[], $12::bytea[])
                as u(s, r, t, st, a, o, ag, pa, en, ev, ph, h)"#,
    )
    .bind(&seqs)
    .bind(&recorded)
    .bind(&types)
    .bind(&subtypes)
    .bind(&actions)
    .bind(&outcomes)
    .bind(&agents)
    .bind(&patients)
    .bind(&entities)
    .bind(&texts)
    .bind(&prevs)
    .bind(&hashes)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Puts write events into the inbox inside the writer's transaction `tx`.
pub async fn enqueue(
    tx: &mut Transaction<'static, Postgres>,
    events: &[Value],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let texts: Vec<String> = events.iter().map(Value::to_string).collect();
    // language=PostgreSQL
    sqlx::query("insert into audit_inbox (event) select * from unnest($1::text[])")
        .bind(&texts)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// What `fhirgate audit verify` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyReport {
    /// Every link holds.
    Ok {
        /// Events checked.
        count: u64,
    },
    /// The first broken link.
    Broken {
        /// Sequence number of the first row that does not verify.
        seq: i64,
        /// What the chain requires there.
        expected: String,
        /// What the row holds.
        found: String,
    },
}

/// Links waiting inbox events, then walks the whole chain in order: sequence numbers without
/// gaps, each `prev_hash` equal to the previous row's hash, each hash equal to SHA-256 of the
/// previous hash and the event text, and the searchable columns equal to what the event says.
pub async fn verify(pool: &PgPool) -> anyhow::Result<VerifyReport> {
    while append(pool, Vec::new()).await? > 0 {}
    type Row = (
        i64,
        chrono::DateTime<chrono::Utc>,
        String,
        Option<String>,
        String,
        String,
        Vec<String>,
        Vec<String>,
        Vec<String>,
        String,
        Vec<u8>,
        Vec<u8>,
    );
    let mut prev = vec![0u8; 32];
    let mut expected_seq = 0i64;
    let mut count = 0u64;
    loop {
        // language=PostgreSQL
        let rows: Vec<Row> = sqlx::query_as(
            r#"select seq, recorded, type_code, subtype, action, outcome, agents, patients, entities, event, prev_hash, hash
               from audit_log where seq > $1 order by seq limit 5000"#,
        )
        .bind(expected_seq)
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            return Ok(VerifyReport::Ok { count });
        }
        for (seq, recorded, t, st, a, o, ag, pa, en, event, prev_hash, hash) in rows {
            expected_seq += 1;
            let broken = |expected: String, found: String| VerifyReport::Broken {
                seq,
                expected,
                found,
            };
            if seq != expected_seq {
                return Ok(broken(
                    format!("sequence number {expected_seq}"),
                    format!("sequence number {seq}"),
                ));
            }
            if prev_hash != prev {
                return Ok(broken(
                    format!("previous hash {}", hex::encode(&prev)),
                    format!("previous hash {}", hex::encode(&prev_hash)),
                ));
            }
            let computed = link_hash(&prev, &event);
            if computed != hash {
                return Ok(broken(
                    format!("hash {}", hex::encode(&computed)),
                    format!("hash {}", hex::encode(&hash)),
                ));
            }
            let derived = serde_json::from_str::<Value>(&event)
                .ok()
                .filter(|v| v["id"].as_str() == Some(seq.to_string().as_str()))
                .and_then(|v| columns(&v));
            let stored = super::event::Columns {
                recorded,
                type_code: t,
                subtype: st,
                action: a,
                outcome: o,
                agents: ag,
                patients: pa,
                entities: en,
            };
            if derived.as_ref() != Some(&stored) {
                return Ok(broken(
                    format!("columns {derived:?}"),
                    format!("columns {stored:?}"),
                ));
            }
            prev = hash;
            count += 1;
        }
    }
}
