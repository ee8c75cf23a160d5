//! One audit event: the AuditEvent JSON (IHE BALP shapes) and the columns searches use.

use chrono::{DateTime, SubsecRound, Utc};
use serde_json::Value;

use super::RequestContext;

const EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const RESTFUL: &str = "http://hl7.org/fhir/restful-interaction";
const LOCAL_SUBTYPE: &str = "https://fhirgate.org/CodeSystem/audit-subtype";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const BALP_ENTITY: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const SECURITY_ROLE: &str = "http://terminology.hl7.org/CodeSystem/extra-security-role-type";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
/// Identifier system of OAuth clients in `agent.who`.
pub const CLIENT_SYSTEM: &str = "https://fhirgate.org/identifier/client";

/// `AuditEvent.action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Create.
    Create,
    /// Read, vread, search, history.
    Read,
    /// Update.
    Update,
    /// Delete.
    Delete,
    /// Execute: operations, sign-in, token events.
    Execute,
}

impl Action {
    /// The R4 code.
    pub fn code(self) -> &'static str {
        match self {
            Action::Create => "C",
            Action::Read => "R",
            Action::Update => "U",
            Action::Delete => "D",
            Action::Execute => "E",
        }
    }
}

/// `AuditEvent.outcome` with `outcomeDesc` for failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `0`: success.
    Success,
    /// `4`: minor failure: the request was refused (authentication, scope, consent, bad input).
    Minor(String),
    /// `8`: serious failure: the server failed.
    Serious(String),
}

impl Outcome {
    /// From an HTTP status: 2xx and 3xx succeed, 4xx are minor and 5xx serious failures.
    pub fn from_status(status: u16, description: impl Into<String>) -> Self {
        match status {
            0..=399 => Outcome::Success,
            400..=499 => Outcome::Minor(description.into()),
            _ => Outcome::Serious(description.into()),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Outcome::Success => "0",
            Outcome::Minor(_) => "4",
            Outcome::Serious(_) => "8",
        }
    }
}

/// What happened, as the `type` and `subtype` codings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A FHIR REST interaction; the subtype is its `restful-interaction` code (`read`,
    /// `search-type`, `create`, …).
    Rest(&'static str),
    /// A FHIR operation (`$everything`, `$export`, …) named by the subtype.
    Operation(&'static str),
    /// An upload of wearable data (`POST /ingest/…` or `fhirgate import`).
    Ingest,
    /// Sign-in to the web pages (DICOM 110122 Login / 110123 Logout).
    Login,
    /// Sign-out.
    Logout,
    /// An OAuth event: `token-issue`, `token-refresh`, `token-revoke`, `token-introspect`,
    /// `assertion-failure`.
    Token(&'static str),
    /// An administrator's call (`/admin/…`): `client-list`, `client-add`, `client-read`,
    /// `client-remove`.
    Admin(&'static str),
}

impl Kind {
    /// `(system, code, display)` of `type` and of `subtype`.
    fn codings(
        self,
    ) -> (
        (&'static str, &'static str, &'static str),
        (&'static str, &'static str, &'static str),
    ) {
        let rest = (EVENT_TYPE, "rest", "RESTful Operation");
        let auth = (DCM, "110114", "User Authentication");
        match self {
            Kind::Rest(sub) => (rest, (RESTFUL, sub, sub)),
            Kind::Operation(op) => (rest, (LOCAL_SUBTYPE, op, op)),
            Kind::Ingest => (rest, (LOCAL_SUBTYPE, "ingest", "Wearable data ingest")),
            Kind::Login => (auth, (DCM, "110122", "Login")),
            Kind::Logout => (auth, (DCM, "110123", "Logout")),
            Kind::Token(sub) => (auth, (LOCAL_SUBTYPE, sub, sub)),
            Kind::Admin(sub) => (
                (DCM, "110100", "Application Activity"),
                (LOCAL_SUBTYPE, sub, sub),
            ),
        }
    }

    fn type_code(self) -> &'static str {
        self.codings().0 .1
    }

    fn subtype_code(self) -> &'static str {
        self.codings().1 .1
    }
}

/// One event, before it is numbered and chained.
#[derive(Debug, Clone)]
pub struct Event {
    /// What happened.
    pub kind: Kind,
    /// The action code.
    pub action: Action,
    /// How it ended.
    pub outcome: Outcome,
    /// When.
    pub recorded: DateTime<Utc>,
    /// Ids of the patients whose data was touched or returned.
    pub patients: Vec<String>,
    /// References of the resources touched (`Observation/1/_history/2`).
    pub entities: Vec<String>,
    /// The query of a search (`Observation?code=…`).
    pub query: Option<String>,
    /// The client an administrator's call touched (its `client_id`).
    pub client: Option<String>,
}

impl Event {
    /// A successful event of `kind`, now.
    pub fn new(kind: Kind, action: Action) -> Self {
        Event {
            kind,
            action,
            outcome: Outcome::Success,
            // Stored with microseconds, so the columns and the JSON agree exactly.
            recorded: Utc::now().trunc_subsecs(6),
            patients: Vec::new(),
            entities: Vec::new(),
            query: None,
            client: None,
        }
    }

    /// Sets the outcome.
    pub fn outcome(mut self, outcome: Outcome) -> Self {
        self.outcome = outcome;
        self
    }

    /// Adds a patient (by id), once.
    pub fn patient(mut self, id: &str) -> Self {
        if !self.patients.iter().any(|p| p == id) {
            self.patients.push(id.to_owned());
        }
        self
    }

    /// Adds a resource entity.
    pub fn entity(mut self, reference: impl Into<String>) -> Self {
        self.entities.push(reference.into());
        self
    }

    /// The event as JSON text without its leading `{"resourceType":"AuditEvent","id":"N"` (see
    /// [`text`]): the chain writer numbers events, so the id is added there. Written directly,
    /// without a JSON tree: every request makes one.
    pub fn body(&self, ctx: Option<&RequestContext>) -> String {
        let mut o = String::with_capacity(900);
        let (type_, subtype) = self.kind.codings();
        o.push_str(",\"type\":");
        coding(&mut o, type_);
        o.push_str(",\"subtype\":[");
        coding(&mut o, subtype);
        o.push_str("],\"action\":\"");
        o.push_str(self.action.code());
        o.push_str("\",\"recorded\":\"");
        o.push_str(&self.recorded_text());
        o.push_str("\",\"outcome\":\"");
        o.push_str(self.outcome.code());
        o.push('"');
        if let Outcome::Minor(d) | Outcome::Serious(d) = &self.outcome {
            o.push_str(",\"outcomeDesc\":");
            string(&mut o, d);
        }
        if let Some(p) = ctx.and_then(|c| c.purpose.as_deref()) {
            o.push_str(",\"purposeOfEvent\":[{\"coding\":[{\"system\":\"");
            o.push_str(ACT_REASON);
            o.push_str("\",\"code\":");
            string(&mut o, p);
            o.push_str("}]}]");
        }
        o.push_str(",\"agent\":[");
        agents(&mut o, ctx);
        o.push_str("],\"source\":{\"site\":\"fhirgate\",\"observer\":{\"display\":\"fhirgate\"},\"type\":[{\"system\":\"");
        o.push_str(SOURCE_TYPE);
        o.push_str("\",\"code\":\"4\",\"display\":\"Application Server\"}]}");
        let mut first = true;
        let mut entity = |o: &mut String| {
            o.push_str(if first { ",\"entity\":[" } else { "," });
            first = false;
        };
        for p in &self.patients {
            entity(&mut o);
            o.push_str("{\"what\":{\"reference\":");
            string(&mut o, &format!("Patient/{p}"));
            o.push_str("},");
            entity_kind(&mut o, "1", "1");
            o.push('}');
        }
        for r in &self.entities {
            entity(&mut o);
            o.push_str("{\"what\":{\"reference\":");
            string(&mut o, r);
            o.push_str("},");
            entity_kind(&mut o, "2", "4");
            o.push('}');
        }
        if let Some(client) = &self.client {
            entity(&mut o);
            o.push_str("{\"what\":{\"identifier\":{\"system\":\"");
            o.push_str(CLIENT_SYSTEM);
            o.push_str("\",\"value\":");
            string(&mut o, client);
            o.push_str("}},");
            entity_kind(&mut o, "2", "4");
            o.push('}');
        }
        if let Some(q) = &self.query {
            use base64::Engine;
            entity(&mut o);
            o.push('{');
            entity_kind(&mut o, "2", "24");
            o.push_str(",\"query\":\"");
            o.push_str(&base64::engine::general_purpose::STANDARD.encode(q));
            o.push_str("\"}");
        }
        if let Some(ctx) = ctx.filter(|c| c.request_id.is_some() || c.user_agent.is_some()) {
            entity(&mut o);
            o.push('{');
            if let Some(id) = &ctx.request_id {
                o.push_str("\"what\":{\"identifier\":{\"value\":");
                string(&mut o, id);
                o.push_str("}},");
            }
            o.push_str("\"type\":{\"system\":\"");
            o.push_str(BALP_ENTITY);
            o.push_str("\",\"code\":\"XrequestId\"}");
            if let Some(ua) = &ctx.user_agent {
                o.push_str(",\"detail\":[{\"type\":\"user-agent\",\"valueString\":");
                string(&mut o, ua);
                o.push_str("}]");
            }
            o.push('}');
        }
        if !first {
            o.push(']');
        }
        o.push('}');
        o
    }

    /// `recorded` as stored (microseconds, UTC).
    fn recorded_text(&self) -> String {
        self.recorded
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    }

    /// The AuditEvent resource for this event made by `ctx`, with an empty id.
    pub fn resource(&self, ctx: Option<&RequestContext>) -> Value {
        serde_json::from_str(&text(0, &self.body(ctx))).unwrap_or(Value::Null)
    }

    /// The searchable columns of this event, as [`columns`] derives them from its JSON.
    pub fn columns(&self, ctx: Option<&RequestContext>) -> Columns {
        let mut agents = Vec::new();
        if let Some(ctx) = ctx {
            agents.extend(ctx.user.clone());
            if !ctx.command_line {
                agents.extend(ctx.client_id.as_ref().map(|c| format!("client:{c}")));
                agents.extend(ctx.organization.clone());
            }
        }
        Columns {
            recorded: self.recorded,
            type_code: self.kind.type_code().to_owned(),
            subtype: Some(self.kind.subtype_code().to_owned()),
            action: self.action.code().to_owned(),
            outcome: self.outcome.code().to_owned(),
            agents,
            patients: self
                .patients
                .iter()
                .map(|p| format!("Patient/{p}"))
                .collect(),
            entities: self
                .entities
                .iter()
                .map(|r| r.split("/_history/").next().unwrap_or(r).to_owned())
                .collect(),
        }
    }
}

/// The text of event number `seq` whose [`Event::body`] is `body`.
pub fn text(seq: i64, body: &str) -> String {
    format!("{{\"resourceType\":\"AuditEvent\",\"id\":\"{seq}\"{body}")
}

/// A JSON string literal.
fn string(o: &mut String, s: &str) {
    use std::fmt::Write;
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
}

/// `{"system":…,"code":…,"display":…}`, without a display that only repeats the code.
fn coding(o: &mut String, (system, code, display): (&str, &str, &str)) {
    o.push_str("{\"system\":");
    string(o, system);
    o.push_str(",\"code\":");
    string(o, code);
    if display != code {
        o.push_str(",\"display\":");
        string(o, display);
    }
    o.push('}');
}

/// `"type"` and `"role"` of an entity.
fn entity_kind(o: &mut String, type_code: &str, role: &str) {
    o.push_str("\"type\":{\"system\":\"");
    o.push_str(ENTITY_TYPE);
    o.push_str("\",\"code\":\"");
    o.push_str(type_code);
    o.push_str("\"},\"role\":{\"system\":\"");
    o.push_str(OBJECT_ROLE);
    o.push_str("\",\"code\":\"");
    o.push_str(role);
    o.push_str("\"}");
}

/// `agent`: the user (the requestor when present), the client and the partner organisation. An
/// event without a caller names fhirgate itself, or its command line.
fn agents(o: &mut String, ctx: Option<&RequestContext>) {
    let agent_type = |o: &mut String, system: &str, code: &str| {
        o.push_str("{\"type\":{\"coding\":[{\"system\":\"");
        o.push_str(system);
        o.push_str("\",\"code\":\"");
        o.push_str(code);
        o.push_str("\"}]},\"who\":");
    };
    let user = ctx.and_then(|c| c.user.as_deref());
    if let Some(u) = user {
        agent_type(o, SECURITY_ROLE, "humanuser");
        o.push_str("{\"reference\":");
        string(o, u);
        o.push_str("},\"requestor\":true},");
    }
    agent_type(o, DCM, "110150");
    match ctx {
        None => o.push_str("{\"display\":\"fhirgate\"},\"requestor\":true}"),
        Some(c) if c.command_line => {
            o.push_str("{\"display\":\"fhirgate command line\"},\"requestor\":true}")
        }
        Some(c) => {
            match &c.client_id {
                Some(id) => {
                    o.push_str("{\"identifier\":{\"system\":\"");
                    o.push_str(CLIENT_SYSTEM);
                    o.push_str("\",\"value\":");
                    string(o, id);
                    o.push_str("}}");
                }
                None => o.push_str("{\"display\":\"unauthenticated caller\"}"),
            }
            o.push_str(if user.is_none() {
                ",\"requestor\":true"
            } else {
                ",\"requestor\":false"
            });
            if let Some(a) = &c.address {
                o.push_str(",\"network\":{\"address\":");
                string(o, a);
                o.push_str(",\"type\":\"2\"}");
            }
            o.push('}');
            if let Some(org) = &c.organization {
                o.push(',');
                agent_type(o, PARTICIPATION, "IRCP");
                o.push_str("{\"reference\":");
                string(o, org);
                o.push_str("},\"requestor\":false}");
            }
        }
    }
}

/// The searchable columns of a stored event, derived from its JSON (by the writer, and again by
/// `audit verify`, which compares them with the row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// `recorded`.
    pub recorded: DateTime<Utc>,
    /// `type.code`.
    pub type_code: String,
    /// `subtype[0].code`.
    pub subtype: Option<String>,
    /// `action`.
    pub action: String,
    /// `outcome`.
    pub outcome: String,
    /// Every `agent.who` reference, and `client:ID` for client identifiers.
    pub agents: Vec<String>,
    /// `Patient/…` references of patient entities.
    pub patients: Vec<String>,
    /// References of the other entities, without `/_history/…`.
    pub entities: Vec<String>,
}

impl Columns {
    /// The search terms of the event: its type (`t|`), subtype (`s|`), action (`x|`) and outcome
    /// (`o|`) codes, and one per agent (`a|`), patient (`p|`) and entity (`e|`), with control
    /// characters replaced so that each stays one term.
    pub fn terms(&self) -> Vec<String> {
        let clean = |prefix: &str, v: &str| {
            let mut t = String::with_capacity(prefix.len() + v.len());
            t.push_str(prefix);
            t.extend(v.chars().map(|c| if c.is_control() { '?' } else { c }));
            t
        };
        let mut out = vec![
            clean("t|", &self.type_code),
            clean("x|", &self.action),
            clean("o|", &self.outcome),
        ];
        out.extend(self.subtype.iter().map(|s| clean("s|", s)));
        out.extend(self.agents.iter().map(|a| clean("a|", a)));
        out.extend(self.patients.iter().map(|p| clean("p|", p)));
        out.extend(self.entities.iter().map(|e| clean("e|", e)));
        out
    }
}

/// Derives the columns; `None` when the JSON is not a well-formed event of ours.
pub fn columns(e: &Value) -> Option<Columns> {
    let s = |v: &Value| v.as_str().map(str::to_owned);
    let recorded = DateTime::parse_from_rfc3339(e.get("recorded")?.as_str()?)
        .ok()?
        .with_timezone(&Utc);
    let mut agents = Vec::new();
    for a in e.get("agent")?.as_array()? {
        let who = &a["who"];
        if let Some(r) = who["reference"].as_str() {
            agents.push(r.to_owned());
        }
        if let Some(c) = who["identifier"]["value"].as_str() {
            agents.push(format!("client:{c}"));
        }
    }
    let mut patients = Vec::new();
    let mut entities = Vec::new();
    for en in e
        .get("entity")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let Some(r) = en["what"]["reference"].as_str() else {
            continue;
        };
        if en["role"]["code"] == "1" {
            patients.push(r.to_owned());
        } else {
            let plain = r.split("/_history/").next().unwrap_or(r);
            entities.push(plain.to_owned());
        }
    }
    Some(Columns {
        recorded,
        type_code: s(&e["type"]["code"])?,
        subtype: s(&e["subtype"][0]["code"]),
        action: s(&e["action"])?,
        outcome: s(&e["outcome"])?,
        agents,
        patients,
        entities,
    })
}

/// Events of a write, one per stored version (or one for a whole ingest batch), for the inbox.
pub fn write_events(
    ctx: Option<&RequestContext>,
    versions: &[crate::storage::NewVersion],
) -> Vec<super::chain::Prepared> {
    let event = |v: &crate::storage::NewVersion| {
        let (sub, action) = match (&v.body, v.version_id) {
            (None, _) => ("delete", Action::Delete),
            (Some(_), 1) => ("create", Action::Create),
            _ => ("update", Action::Update),
        };
        let mut e = Event::new(Kind::Rest(sub), action).entity(format!(
            "{}/{}/_history/{}",
            v.resource_type, v.id, v.version_id
        ));
        if let Some(p) = &v.compartment {
            e = e.patient(p);
        }
        e
    };
    if ctx.is_some_and(|c| c.batched) {
        let mut e = Event::new(Kind::Ingest, Action::Create);
        for v in versions {
            if let Some(p) = &v.compartment {
                e = e.patient(p);
            }
            if v.resource_type == "Provenance" {
                e = e.entity(format!("Provenance/{}", v.id));
            }
        }
        return vec![super::chain::Prepared::new(&e, ctx)];
    }
    versions
        .iter()
        .map(|v| super::chain::Prepared::new(&event(v), ctx))
        .collect()
}

/// The event of a read inside a Bundle (`GET` entry), stored with the Bundle's transaction.
pub fn read_event(
    ctx: Option<&RequestContext>,
    reference: String,
    compartment: Option<&str>,
) -> super::chain::Prepared {
    let mut e = Event::new(Kind::Rest("read"), Action::Read).entity(reference);
    if let Some(p) = compartment {
        e = e.patient(p);
    }
    super::chain::Prepared::new(&e, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partner_read_names_user_client_organisation_patient_and_entity() {
        let ctx = RequestContext {
            request_id: Some("req-1".into()),
            client_id: Some("partner-app".into()),
            organization: Some("Organization/o1".into()),
            purpose: Some("TREAT".into()),
            address: Some("10.0.0.1".into()),
            ..RequestContext::default()
        };
        let e = Event::new(Kind::Rest("read"), Action::Read)
            .patient("p1")
            .entity("Observation/o/_history/2");
        let v = e.resource(Some(&ctx));
        assert_eq!(v["purposeOfEvent"][0]["coding"][0]["code"], "TREAT");
        assert_eq!(v["agent"][0]["requestor"], true);
        let c = columns(&v).unwrap();
        assert_eq!(c.agents, ["client:partner-app", "Organization/o1"]);
        assert_eq!(c.patients, ["Patient/p1"]);
        assert_eq!(c.entities, ["Observation/o"]);
        assert_eq!((c.action.as_str(), c.outcome.as_str()), ("R", "0"));
        assert_eq!(c.subtype.as_deref(), Some("read"));
    }

    #[test]
    fn the_columns_of_an_event_are_what_its_json_gives() {
        let full = RequestContext {
            request_id: Some("r\"1".into()),
            client_id: Some("app\nwith newline".into()),
            user: Some("Patient/me".into()),
            organization: Some("Organization/o".into()),
            purpose: Some("TREAT".into()),
            address: Some("::1".into()),
            user_agent: Some("ua \\ \u{1}".into()),
            ..RequestContext::default()
        };
        let anonymous = RequestContext {
            address: Some("10.0.0.2".into()),
            ..RequestContext::default()
        };
        let cli = RequestContext::command_line();
        let e = Event::new(Kind::Rest("search-type"), Action::Read)
            .outcome(Outcome::Minor("bad \"input\"\n".into()))
            .patient("p1")
            .patient("p2")
            .entity("Observation/1/_history/3");
        let mut q = e.clone();
        q.query = Some("Observation?code=*".into());
        for ctx in [Some(&full), Some(&anonymous), Some(&cli), None] {
            for ev in [&e, &q] {
                let v = ev.resource(ctx);
                assert_eq!(v["resourceType"], "AuditEvent", "valid JSON for {ctx:?}");
                assert_eq!(columns(&v), Some(ev.columns(ctx)), "{ctx:?}");
            }
        }
        let terms = e.columns(Some(&full)).terms();
        assert!(terms.contains(&"a|client:app?with newline".to_owned()));
        assert!(terms.contains(&"p|Patient/p2".to_owned()));
        assert!(terms.contains(&"e|Observation/1".to_owned()));
    }

    #[test]
    fn failures_carry_a_description() {
        let e = Event::new(Kind::Rest("read"), Action::Read)
            .outcome(Outcome::from_status(403, "no consent"));
        let v = e.resource(None);
        assert_eq!(v["outcome"], "4");
        assert_eq!(v["outcomeDesc"], "no consent");
        assert_eq!(Outcome::from_status(500, "x").code(), "8");
        assert_eq!(Outcome::from_status(304, "x"), Outcome::Success);
    }
}
