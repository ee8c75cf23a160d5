//! The tamper-evident audit trail (DESIGN.md, "Audit").
//!
//! Every interaction becomes an R4 `AuditEvent` shaped like IHE BALP (Basic Audit Log Patterns):
//! who (client, user, partner organisation), about whom (the patient entities), what (the
//! resource entities or the query), the action, the outcome and why (purpose of use). Events hold
//! references only, never PHI.
//!
//! - [`event`] builds the AuditEvent JSON and derives the searchable columns from it.
//! - [`chain`] stores events: an append-only, hash-chained table, written by one task that
//!   batches the events of concurrent requests (group commit). Writes put their events into an
//!   inbox in their own transaction; the same task links them into the chain.
//! - [`api`] is the FHIR face: read and search for auditors and patients, NDJSON/CSV export, and
//!   the middleware that audits each FHIR request.

pub mod api;
pub mod chain;
pub mod checkpoint;
pub mod event;
pub mod trail;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub use chain::{verify, Auditor, VerifyReport};
pub use event::{Action, Event, Outcome};

/// Who is asking, carried through one request so that writes deep in storage can audit in their
/// own transaction.
#[derive(Debug, Default)]
pub struct RequestContext {
    /// The `X-Request-Id` of the request; it correlates the events of one Bundle.
    pub request_id: Option<String>,
    /// The OAuth client.
    pub client_id: Option<String>,
    /// The signed-in user, as a reference (`Patient/…`).
    pub user: Option<String>,
    /// The partner organisation the client acts for (`Organization/…`).
    pub organization: Option<String>,
    /// Purpose of use (a v3 ActReason code such as `TREAT`).
    pub purpose: Option<String>,
    /// The caller's network address.
    pub address: Option<String>,
    /// The caller's `User-Agent`.
    pub user_agent: Option<String>,
    /// One event per stored batch instead of one per version (bulk ingest).
    pub batched: bool,
    /// The caller is the `fhirgate` command line (an operator on the server).
    pub command_line: bool,
    /// Set when storage wrote events of this request into the inbox.
    wrote: AtomicBool,
}

impl RequestContext {
    /// Whether storage audited a write of this request.
    pub fn wrote(&self) -> bool {
        self.wrote.load(Ordering::Relaxed)
    }

    /// Marks that storage audited a write.
    pub fn mark_written(&self) {
        self.wrote.store(true, Ordering::Relaxed);
    }

    /// A copy for another task (a background import) with the same caller.
    pub fn fork(&self, batched: bool) -> Self {
        RequestContext {
            request_id: self.request_id.clone(),
            client_id: self.client_id.clone(),
            user: self.user.clone(),
            organization: self.organization.clone(),
            purpose: self.purpose.clone(),
            address: self.address.clone(),
            user_agent: self.user_agent.clone(),
            batched,
            command_line: self.command_line,
            wrote: AtomicBool::new(false),
        }
    }
}

impl RequestContext {
    /// The caller of a command-line import: the operator, one event per stored batch.
    pub fn command_line() -> Self {
        RequestContext {
            batched: true,
            command_line: true,
            ..RequestContext::default()
        }
    }
}

tokio::task_local! {
    /// The caller of the request this task serves.
    pub static REQUEST: Arc<RequestContext>;
}

/// The caller of the current request, when there is one (the CLI has none).
pub fn current() -> Option<Arc<RequestContext>> {
    REQUEST.try_with(Arc::clone).ok()
}
