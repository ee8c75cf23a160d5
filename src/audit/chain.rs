//! The hash chain: numbering, hashing and storing events, group commit, and verification.
//!
//! One writer task per server owns its view of the head of the chain. Requests send it their
//! events and wait; it takes every event queued by then (plus, after writes, the events waiting in
//! `audit_inbox`) and stores them with one insert (group commit), then answers each request. A
//! failed insert fails every request of the batch: no audit, no access. Several servers on one
//! database need no lock: the sequence number is the primary key, so a writer whose head is stale
//! is refused and chains its batch again on the new head.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::event::{columns, text, Columns, Event};
use super::RequestContext;

/// Most events stored by one transaction.
const MAX_BATCH: usize = 2000;
/// Most inbox rows (write transactions) linked by one statement.
const MAX_INBOX_ROWS: i64 = 8;
/// Separates the terms of the events of one inbox row.
const RECORD_SEPARATOR: char = '\u{1e}';
/// How often the writer links waiting write events when no request wakes it.
const INBOX_TICK: Duration = Duration::from_millis(200);
/// Idle ticks between sweeps of the inbox for events of other processes.
const IDLE_SWEEP_TICKS: u32 = 50;
/// Attempts at appending a batch when another writer took the same sequence numbers.
const ATTEMPTS: usize = 8;

type Reply = oneshot::Sender<Result<(), String>>;

/// An event ready to be chained: its JSON body (without the id), its time and its search terms.
#[derive(Debug, Clone)]
pub struct Prepared {
    body: String,
    recorded: DateTime<Utc>,
    /// The event's search terms, one per line.
    terms: String,
}

impl Prepared {
    /// `event` made by `ctx`.
    pub fn new(event: &Event, ctx: Option<&RequestContext>) -> Self {
        let columns: Columns = event.columns(ctx);
        Prepared {
            body: event.body(ctx),
            recorded: columns.recorded,
            terms: columns.terms().join("\n"),
        }
    }
}

enum Msg {
    /// Store this event.
    Event(Box<Prepared>, Reply),
    /// Link the inbox now.
    Flush(Reply),
}

/// A handle to the audit writer task; cheap to clone.
#[derive(Clone, Debug)]
pub struct Auditor {
    tx: mpsc::Sender<Msg>,
    /// Set when this process put events into the inbox since the writer last drained it.
    pending: Arc<AtomicBool>,
    /// Whether read events are written (off only for `serve --no-read-audit` benchmarks).
    audit_reads: bool,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Event(..) => "Event",
            Msg::Flush(_) => "Flush",
        })
    }
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
        let prepared = Box::new(Prepared::new(event, ctx));
        self.send(|reply| Msg::Event(prepared, reply)).await
    }

    /// Links every write event waiting in the inbox into the chain, so that a search right after
    /// a write sees it.
    pub async fn flush(&self) -> anyhow::Result<()> {
        self.send(Msg::Flush).await
    }

    async fn send(&self, msg: impl FnOnce(Reply) -> Msg) -> anyhow::Result<()> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send(msg(reply))
            .await
            .map_err(|_| anyhow::anyhow!("the audit writer has stopped"))?;
        done.await
            .map_err(|_| anyhow::anyhow!("the audit writer has stopped"))?
            .map_err(|e| anyhow::anyhow!("audit write failed: {e}"))
    }
}

async fn writer(pool: PgPool, mut rx: mpsc::Receiver<Msg>, pending: Arc<AtomicBool>) {
    let mut head: Option<Head> = None;
    let mut idle_ticks = 0u32;
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => Some(m),
                None => return,
            },
            () = tokio::time::sleep(INBOX_TICK) => None,
        };
        let mut drain = false;
        if first.is_none() {
            // Idle: drain the inbox when this process wrote to it, and now and then for events
            // other processes (`fhirgate import`) left there.
            idle_ticks += 1;
            if !pending.load(Ordering::Relaxed) && idle_ticks < IDLE_SWEEP_TICKS {
                continue;
            }
            idle_ticks = 0;
            drain = true;
        }
        let mut events = Vec::new();
        let mut replies = Vec::new();
        let mut next = first;
        while let Some(m) = next {
            match m {
                Msg::Event(e, r) => {
                    events.push(*e);
                    replies.push(r);
                }
                Msg::Flush(r) => {
                    drain = true;
                    replies.push(r);
                }
            }
            next = if replies.len() < MAX_BATCH {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        if pending.swap(false, Ordering::Relaxed) {
            drain = true;
        }
        let started = std::time::Instant::now();
        let result = append(&pool, &mut head, &events, drain).await;
        tracing::trace!(
            events = events.len(),
            drain,
            micros = started.elapsed().as_micros() as u64,
            "audit batch"
        );
        let result = result.map(|_| ()).map_err(|e| {
            tracing::error!(error = %format!("{e:#}"), "audit write failed");
            e.to_string()
        });
        for r in replies {
            let _ = r.send(result.clone());
        }
    }
}

/// The head of the chain: the last row's sequence number and hash, and the next event id.
type Head = (i64, Vec<u8>, i64);

/// Chains `events` as one row, after the write events waiting in the inbox when `drain`; returns
/// how many events were stored. Without `drain` this is one statement (one round trip) on the
/// cached head; when another writer took that sequence number, the primary key refuses the insert
/// and the batch is chained again on the new head.
async fn append(
    pool: &PgPool,
    head: &mut Option<Head>,
    events: &[Prepared],
    drain: bool,
) -> anyhow::Result<u64> {
    for _ in 0..ATTEMPTS {
        let result = if drain {
            append_draining(pool, head, events).await
        } else {
            append_fast(pool, head, events).await
        };
        match result {
            Err(e) if is_taken(&e) => *head = None,
            Err(e) => {
                *head = None;
                return Err(e);
            }
            ok => return ok,
        }
    }
    anyhow::bail!("the audit chain stayed contended")
}

fn is_taken(e: &anyhow::Error) -> bool {
    e.downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .and_then(|d| d.code())
        .is_some_and(|c| c == "23505")
}

async fn append_fast(
    pool: &PgPool,
    head: &mut Option<Head>,
    events: &[Prepared],
) -> anyhow::Result<u64> {
    if events.is_empty() {
        return Ok(0);
    }
    let start = match head.take() {
        Some(h) => h,
        None => read_head(&mut *pool.acquire().await?).await?,
    };
    let (query, end) = chained(start, events.iter());
    query.execute(pool).await?;
    *head = Some(end);
    Ok(events.len() as u64)
}

async fn append_draining(
    pool: &PgPool,
    head: &mut Option<Head>,
    events: &[Prepared],
) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    // language=PostgreSQL
    // Each inbox row holds the events of one write transaction.
    let mut waiting: Vec<(i64, String, Vec<DateTime<Utc>>, String)> = sqlx::query_as(
        r#"delete from audit_inbox where inbox_id in
             (select inbox_id from audit_inbox order by inbox_id limit $1)
           returning inbox_id, events, recorded, terms"#,
    )
    .bind(MAX_INBOX_ROWS)
    .fetch_all(&mut *tx)
    .await?;
    waiting.sort_by_key(|(id, ..)| *id);
    let mut all: Vec<Prepared> = Vec::new();
    for (id, bodies, recorded, terms) in waiting {
        let bodies: Vec<&str> = bodies.split('\n').collect();
        let terms: Vec<&str> = terms.split(RECORD_SEPARATOR).collect();
        if bodies.len() != recorded.len() || bodies.len() != terms.len() {
            anyhow::bail!("audit inbox row {id} is malformed");
        }
        for ((body, recorded), terms) in bodies.into_iter().zip(recorded).zip(terms) {
            all.push(Prepared {
                body: body.to_owned(),
                recorded,
                terms: terms.to_owned(),
            });
        }
    }
    let n = (all.len() + events.len()) as u64;
    if n == 0 {
        return Ok(0);
    }
    let start = read_head(&mut tx).await?;
    let (query, end) = chained(start, all.iter().chain(events));
    query.execute(&mut *tx).await?;
    tx.commit().await?;
    *head = Some(end);
    Ok(n)
}

/// The head, or 0, the zero hash and event id 1 for an empty chain.
async fn read_head(conn: &mut sqlx::PgConnection) -> anyhow::Result<Head> {
    // language=PostgreSQL
    let row: Option<Head> = sqlx::query_as(
        "select seq, hash, first_id + count from audit_log order by seq desc limit 1",
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.unwrap_or((0, vec![0; 32], 1)))
}

/// SHA-256 of the previous hash followed by the events' text.
pub fn link_hash(prev: &[u8], event: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(event.as_bytes());
    h.finalize().to_vec()
}

/// Numbers `events` after `head` into one row and hashes it: the insert, and the new head.
fn chained<'a>(
    head: Head,
    events: impl Iterator<Item = &'a Prepared>,
) -> (
    sqlx::query::Query<'static, Postgres, sqlx::postgres::PgArguments>,
    Head,
) {
    let (seq, prev, first_id) = head;
    let mut id = first_id;
    let mut lines = String::new();
    let mut terms = std::collections::BTreeSet::new();
    let mut span: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    for e in events {
        if id > first_id {
            lines.push('\n');
        }
        lines.push_str(&text(id, &e.body));
        terms.extend(e.terms.split('\n').filter(|t| !t.is_empty()));
        let r = e.recorded;
        span = Some(span.map_or((r, r), |(lo, hi)| (lo.min(r), hi.max(r))));
        id += 1;
    }
    let (lo, hi) = span.unwrap_or_default();
    let hash = link_hash(&prev, &lines);
    let terms: Vec<String> = terms.into_iter().map(str::to_owned).collect();
    // language=PostgreSQL
    let query = sqlx::query(
        r#"insert into audit_log (seq, first_id, count, recorded_min, recorded_max, terms, events, prev_hash, hash)
           values ($1, $2, $3, $4, $5, $6, $7, $8, $9)"#,
    )
    .bind(seq + 1)
    .bind(first_id)
    .bind((id - first_id) as i32)
    .bind(lo)
    .bind(hi)
    .bind(terms)
    .bind(lines)
    .bind(prev)
    .bind(hash.clone());
    (query, (seq + 1, hash, id))
}

/// Puts the events of a write into the inbox inside the writer's transaction `tx`, as one row.
pub async fn enqueue(
    tx: &mut Transaction<'static, Postgres>,
    events: &[Prepared],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    // Event bodies are one line of JSON each; terms hold no control characters.
    let bodies: Vec<&str> = events.iter().map(|e| e.body.as_str()).collect();
    let recorded: Vec<DateTime<Utc>> = events.iter().map(|e| e.recorded).collect();
    let terms: Vec<&str> = events.iter().map(|e| e.terms.as_str()).collect();
    let separator = RECORD_SEPARATOR.to_string();
    // language=PostgreSQL
    sqlx::query("insert into audit_inbox (events, recorded, terms) values ($1, $2, $3)")
        .bind(bodies.join("\n"))
        .bind(&recorded)
        .bind(terms.join(&separator))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Links every event waiting in the inbox.
pub async fn drain_inbox(pool: &PgPool) -> anyhow::Result<()> {
    let mut head = None;
    while append(pool, &mut head, &[], true).await? > 0 {}
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

/// Links waiting inbox events, then walks the whole chain in order: row sequence numbers without
/// gaps, each `prev_hash` equal to the previous row's hash, each hash equal to SHA-256 of the
/// previous hash and the row's events, the events numbered without gaps, and the row's other
/// columns equal to what its events say.
pub async fn verify(pool: &PgPool) -> anyhow::Result<VerifyReport> {
    drain_inbox(pool).await?;
    type Row = (
        i64,
        i64,
        i32,
        DateTime<Utc>,
        DateTime<Utc>,
        Vec<String>,
        String,
        Vec<u8>,
        Vec<u8>,
    );
    let mut prev = vec![0u8; 32];
    let mut expected_seq = 0i64;
    let mut next_id = 1i64;
    let mut count = 0u64;
    loop {
        // language=PostgreSQL
        let rows: Vec<Row> = sqlx::query_as(
            r#"select seq, first_id, count, recorded_min, recorded_max, terms, events, prev_hash, hash
               from audit_log where seq > $1 order by seq limit 1000"#,
        )
        .bind(expected_seq)
        .fetch_all(pool)
        .await?;
        if rows.is_empty() {
            return Ok(VerifyReport::Ok { count });
        }
        for (seq, first_id, n, lo, hi, terms, events, prev_hash, hash) in rows {
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
            let computed = link_hash(&prev, &events);
            if computed != hash {
                return Ok(broken(
                    format!("hash {}", hex::encode(&computed)),
                    format!("hash {}", hex::encode(&hash)),
                ));
            }
            let derived = derive_row(&events, next_id);
            let stored = (first_id, n, lo, hi, terms);
            if derived.as_ref() != Some(&stored) {
                return Ok(broken(
                    format!("columns {derived:?}"),
                    format!("columns {stored:?}"),
                ));
            }
            prev = hash;
            next_id = first_id + i64::from(n);
            count += n as u64;
        }
    }
}

/// `first_id`, `count`, `recorded_min`, `recorded_max` and `terms` of a row.
type RowColumns = (i64, i32, DateTime<Utc>, DateTime<Utc>, Vec<String>);

/// What a row's columns must be, from its events (which must be numbered from `first_id`).
fn derive_row(events: &str, first_id: i64) -> Option<RowColumns> {
    let mut terms = std::collections::BTreeSet::new();
    let mut span: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    let mut n = 0i64;
    for line in events.split('\n') {
        let v: Value = serde_json::from_str(line).ok()?;
        if v["id"].as_str() != Some((first_id + n).to_string().as_str()) {
            return None;
        }
        let c = columns(&v)?;
        terms.extend(c.terms());
        let r = c.recorded;
        span = Some(span.map_or((r, r), |(lo, hi)| (lo.min(r), hi.max(r))));
        n += 1;
    }
    let (lo, hi) = span?;
    Some((first_id, n as i32, lo, hi, terms.into_iter().collect()))
}
