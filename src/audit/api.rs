//! The auditing of each request: who asked (from the token and headers), what they asked (the
//! request's [`Interaction`]) and how it ended, stored before the answer leaves. Sign-in and
//! OAuth events are recorded here too. Reading the trail is [`super::trail`]; its FHIR face is
//! `fhir::audit_event`.

use std::sync::Arc;

use axum::extract::Request;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use super::event::{Action, Event, Kind, Outcome};
use super::RequestContext;
use crate::access::Interaction;
use crate::auth::guard::Principal;
use crate::error::FhirError;
use crate::fhir::format::query_pairs;
use crate::state::AppState;

/// What a handler tells the audit middleware about its answer (a response extension).
#[derive(Debug, Clone, Default)]
pub struct AuditInfo {
    /// Ids of the patients whose data is in the answer.
    pub patients: Vec<String>,
    /// References of the resources in the answer.
    pub entities: Vec<String>,
    /// The interaction, when the URL alone does not tell it (`batch` or `transaction`).
    pub subtype: Option<&'static str>,
    /// The search parameters, when they came in the body (`POST _search`) and not the URL.
    pub query: Option<String>,
}

impl AuditInfo {
    /// Attaches the info to `resp`.
    pub fn attach(self, resp: &mut Response) {
        resp.extensions_mut().insert(self);
    }

    /// Adds a patient once.
    pub fn patient(&mut self, id: Option<&str>) {
        if let Some(id) = id {
            if !self.patients.iter().any(|p| p == id) {
                self.patients.push(id.to_owned());
            }
        }
    }
}

/// The caller of a request, from its token and headers.
pub fn context(
    principal: Option<&Principal>,
    req: &Request,
    interaction: &Interaction,
) -> RequestContext {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let address = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .or_else(|| header("x-forwarded-for"));
    RequestContext {
        request_id: header("x-request-id"),
        client_id: principal.map(|p| p.claims.client_id.clone()),
        user: principal.and_then(|p| p.owner().map(|o| format!("Patient/{o}"))),
        organization: principal.and_then(crate::fhir::consent::partner),
        purpose: interaction.purpose.clone(),
        address,
        user_agent: header("user-agent"),
        ..RequestContext::default()
    }
}

/// The caller of a sign-in or OAuth request, which has no access token yet.
pub fn auth_context(
    address: Option<std::net::IpAddr>,
    headers: &HeaderMap,
    client_id: Option<&str>,
    user: Option<String>,
) -> RequestContext {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    RequestContext {
        request_id: header("x-request-id"),
        // An unauthenticated claim of identity: kept short, it is only what the caller said.
        client_id: client_id.map(|c| c.chars().take(128).collect()),
        user,
        address: address.map(|a| a.to_string()),
        user_agent: header("user-agent"),
        ..RequestContext::default()
    }
}

/// Stores a sign-in or token event; `false` when it could not be stored (the caller then refuses
/// what it was about to grant).
pub async fn record_auth(
    state: &AppState,
    kind: Kind,
    outcome: Outcome,
    ctx: &RequestContext,
) -> bool {
    let event = Event::new(kind, Action::Execute).outcome(outcome);
    match state.auditor.record(&event, Some(ctx)).await {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, "an authentication event could not be audited");
            false
        }
    }
}

/// Runs `work` (the rest of a FHIR or ingest request) with its caller in scope, then audits it.
/// Single writes were audited by storage in their own transaction; everything else is stored here
/// before the response leaves (group commit). When that fails, the answer is a 503 instead: no
/// audit, no access.
pub async fn audited(
    state: &AppState,
    ctx: RequestContext,
    interaction: &Interaction,
    uri: &axum::http::Uri,
    work: impl std::future::Future<Output = Response>,
) -> Response {
    let ctx = Arc::new(ctx);
    let resp = super::REQUEST.scope(ctx.clone(), work).await;
    let (path, query) = (uri.path(), uri.query());
    if ctx.wrote() {
        // The write has committed by now; its inbox events can be linked.
        state.auditor.note_inbox();
    }
    let (_, action) = interaction.audit();
    // A single write and an upload were audited by storage, in their own transactions; a Bundle
    // gets an event of its own besides those of its entries.
    if ctx.wrote() && interaction.audited_by_storage() && resp.status().is_success() {
        return resp;
    }
    if action == Action::Read && resp.status().is_success() && !state.auditor.audits_reads() {
        return resp;
    }
    let mut event = outcome_event(interaction, &resp, &ctx, query, path);
    if !resp.status().is_success() || action == Action::Delete {
        // A refused (or not-found, or no-op) attempt on a resource is about its patient, who
        // sees it on their page, besides the requester.
        if let Some(p) = target_compartment(state, &event).await {
            if !event.patients.contains(&p) {
                event = event.patient(&p);
            }
        }
    }
    match state.auditor.record(&event, Some(&ctx)).await {
        Ok(()) => resp,
        Err(e) if ctx.wrote() && resp.status().is_success() => {
            // The write has committed, and its own events with it (in its transaction). The
            // answer follows the commit: a 503 here would make a client write it all again.
            tracing::error!(error = %e, "the summary event of a committed write could not be stored");
            resp
        }
        Err(e) => {
            tracing::error!(error = %e, "request refused: its audit event could not be stored");
            FhirError::Unavailable(anyhow::anyhow!("the audit trail is unavailable"))
                .into_response()
        }
    }
}

/// The patient of the resource a refused instance interaction aimed at, if it exists.
async fn target_compartment(state: &AppState, event: &Event) -> Option<String> {
    let (rt, id) = event.entities.first()?.split_once('/')?;
    // language=PostgreSQL
    let found: Option<Option<String>> =
        sqlx::query_scalar("select compartment from resource where resource_type = $1 and id = $2")
            .bind(rt)
            .bind(id)
            .fetch_optional(&state.db)
            .await
            .ok()?;
    found.flatten()
}

/// Search parameters whose values are kept in an audited query; the values of every other
/// parameter (names, identifiers, addresses, …) are replaced by `*` so that no PHI reaches the
/// trail.
const PLAIN_PARAMS: &[&str] = &[
    "_id",
    "_count",
    "_cursor",
    "_sort",
    "_total",
    "_summary",
    "_elements",
    "_format",
    "_type",
    "_since",
    "_include",
    "_revinclude",
    "_lastUpdated",
    "_tag",
    "_profile",
    "_security",
    "_outputFormat",
    "patient",
    "subject",
    "code",
    "category",
    "date",
    "status",
    "max",
    "period",
    "agent",
    "entity",
    "type",
    "subtype",
    "outcome",
    "action",
];

/// The query of a request with the values of identifying parameters masked.
pub fn redacted_query(query: &str) -> String {
    let pairs: Vec<(String, String)> = query_pairs(Some(query))
        .into_iter()
        .map(|(k, v)| {
            // The value belongs to the last link of a chain (`subject:Patient.identifier`) or
            // of a reverse chain (`_has:Observation:patient:code`).
            let last = k.rsplit('.').next().unwrap_or(&k);
            let name = match last.strip_prefix("_has:") {
                Some(rest) => rest.rsplit(':').next().unwrap_or(rest),
                None => last.split(':').next().unwrap_or(last),
            };
            if PLAIN_PARAMS.contains(&name) {
                (k, v)
            } else {
                (k, "*".to_owned())
            }
        })
        .collect();
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&pairs)
        .finish()
}

fn outcome_event(
    interaction: &Interaction,
    resp: &Response,
    ctx: &RequestContext,
    query: Option<&str>,
    path: &str,
) -> Event {
    let (kind, action) = interaction.audit();
    let status = resp.status().as_u16();
    let description = resp
        .extensions()
        .get::<crate::error::Diagnostics>()
        .map(|d| d.0.clone())
        .unwrap_or_else(|| format!("HTTP {status}"));
    let kind = match resp.extensions().get::<AuditInfo>().and_then(|i| i.subtype) {
        Some(sub) => Kind::Rest(sub),
        None => kind,
    };
    let mut e = Event::new(kind, action).outcome(Outcome::from_status(status, description));
    if let Some(info) = resp.extensions().get::<AuditInfo>() {
        for p in &info.patients {
            e = e.patient(p);
        }
        e.entities.extend(info.entities.iter().cloned());
    }
    if let (None, Some(target)) = (resp.extensions().get::<AuditInfo>(), interaction.target()) {
        // A refused or failed instance interaction still names what it was aimed at.
        e = e.entity(target);
    }
    if let Some(me) = ctx.user.as_deref().and_then(|u| u.strip_prefix("Patient/")) {
        if e.patients.is_empty() {
            e = e.patient(me);
        }
    }
    if let Kind::Admin(_) = kind {
        // The client touched: in the path, or (for a registration) told by the handler.
        let named = resp
            .extensions()
            .get::<AuditInfo>()
            .and_then(|i| i.query.clone());
        let named = named.unwrap_or_else(|| path.trim_start_matches('/').to_owned());
        e.client = interaction.id.clone().or_else(|| {
            named
                .strip_prefix("admin/clients/")
                .filter(|id| !id.is_empty())
                .map(str::to_owned)
        });
        e.query = Some(named);
        return e;
    }
    if matches!(
        kind,
        Kind::Rest("search-type" | "history-type" | "history-system")
    ) || matches!(kind, Kind::Operation(_))
    {
        let rest = path.strip_prefix("/fhir/").unwrap_or(path);
        let body_query = resp
            .extensions()
            .get::<AuditInfo>()
            .and_then(|i| i.query.as_deref());
        let query = match (query, body_query) {
            (Some(q), Some(b)) => Some(format!("{q}&{b}")),
            (q, b) => q.or(b).map(str::to_owned),
        };
        let query = query.as_deref();
        e.query = Some(match query {
            Some(q) => format!("{rest}?{}", redacted_query(q)),
            None => rest.to_owned(),
        });
    }
    e
}

/// Records the failure of one entry of a batch (`entry`: how the entry classified, `None` when
/// its request could not be read); successful entries were audited by storage with their own
/// transactions.
pub async fn record_entry_failure(
    state: &AppState,
    entry: Option<&Interaction>,
    error: &FhirError,
) -> anyhow::Result<()> {
    let (kind, action) = entry.map_or((Kind::Rest("batch"), Action::Execute), Interaction::audit);
    let (status, issues) = error.client_response();
    let description = crate::error::Diagnostics::of(error, &issues).0;
    let mut event =
        Event::new(kind, action).outcome(Outcome::from_status(status.as_u16(), description));
    if let Some(target) = entry.and_then(Interaction::target) {
        event = event.entity(target);
    }
    let ctx = super::current();
    state.auditor.record(&event, ctx.as_deref()).await
}

/// Records the event of a Bundle entry that was answered like a request of its own (a search
/// inside a batch), as `audited` records that request.
pub async fn record_entry_response(
    state: &AppState,
    entry: &Interaction,
    resp: Response,
    query: Option<&str>,
    path: &str,
) -> anyhow::Result<Response> {
    let ctx = super::current();
    let event = {
        let fallback = RequestContext::default();
        outcome_event(
            entry,
            &resp,
            ctx.as_deref().unwrap_or(&fallback),
            query,
            path,
        )
    };
    state.auditor.record(&event, ctx.as_deref()).await?;
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifying_search_values_are_masked_even_at_the_end_of_a_chain() {
        assert_eq!(
            redacted_query("subject:Patient.identifier=urn:mrn|42&code=8867-4&family:exact=Doe"),
            "subject%3APatient.identifier=*&code=8867-4&family%3Aexact=*"
        );
        assert_eq!(
            redacted_query("patient.name=ann&_has:Observation:patient:code=1234&_has:Observation:subject:value-string=dizzy"),
            "patient.name=*&_has%3AObservation%3Apatient%3Acode=1234&_has%3AObservation%3Asubject%3Avalue-string=*"
        );
    }
}
