//! One audit event: the AuditEvent JSON (IHE BALP shapes) and the columns searches use.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

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
    /// An OAuth event: `token-issue`, `token-refresh`, `token-revoke`, `assertion-failure`.
    Token(&'static str),
}

impl Kind {
    fn codings(self) -> (Value, Value) {
        let coding = |s: &str, c: &str, d: &str| json!({"system": s, "code": c, "display": d});
        let rest = coding(EVENT_TYPE, "rest", "RESTful Operation");
        let auth = coding(DCM, "110114", "User Authentication");
        match self {
            Kind::Rest(sub) => (rest, coding(RESTFUL, sub, sub)),
            Kind::Operation(op) => (rest, coding(LOCAL_SUBTYPE, op, op)),
            Kind::Ingest => (
                rest,
                coding(LOCAL_SUBTYPE, "ingest", "Wearable data ingest"),
            ),
            Kind::Login => (auth, coding(DCM, "110122", "Login")),
            Kind::Logout => (auth, coding(DCM, "110123", "Logout")),
            Kind::Token(sub) => (auth, coding(LOCAL_SUBTYPE, sub, sub)),
        }
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
}

impl Event {
    /// A successful event of `kind`, now.
    pub fn new(kind: Kind, action: Action) -> Self {
        Event {
            kind,
            action,
            outcome: Outcome::Success,
            recorded: Utc::now(),
            patients: Vec::new(),
            entities: Vec::new(),
            query: None,
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

    /// The AuditEvent resource for this event made by `ctx`. Its `id` is left empty; the chain
    /// writer numbers it.
    pub fn resource(&self, ctx: Option<&RequestContext>) -> Value {
        let (type_, subtype) = self.kind.codings();
        let mut e = Map::new();
        e.insert("resourceType".into(), json!("AuditEvent"));
        e.insert("id".into(), json!(""));
        e.insert("type".into(), type_);
        e.insert("subtype".into(), json!([subtype]));
        e.insert("action".into(), json!(self.action.code()));
        e.insert(
            "recorded".into(),
            json!(self
                .recorded
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        e.insert("outcome".into(), json!(self.outcome.code()));
        if let Outcome::Minor(d) | Outcome::Serious(d) = &self.outcome {
            e.insert("outcomeDesc".into(), json!(d));
        }
        if let Some(p) = ctx.and_then(|c| c.purpose.as_deref()) {
            e.insert(
                "purposeOfEvent".into(),
                json!([{"coding": [{"system": ACT_REASON, "code": p}]}]),
            );
        }
        e.insert("agent".into(), Value::Array(agents(ctx)));
        e.insert(
            "source".into(),
            json!({"site": "fhirgate", "observer": {"display": "fhirgate"},
                   "type": [{"system": SOURCE_TYPE, "code": "4", "display": "Application Server"}]}),
        );
        let mut entities: Vec<Value> = self
            .patients
            .iter()
            .map(|p| {
                json!({"what": {"reference": format!("Patient/{p}")},
                       "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                       "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}})
            })
            .collect();
        for r in &self.entities {
            entities.push(json!({"what": {"reference": r},
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"}}));
        }
        if let Some(q) = &self.query {
            use base64::Engine;
            entities.push(json!({
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
                "query": base64::engine::general_purpose::STANDARD.encode(q)}));
        }
        if let Some(ctx) = ctx {
            if ctx.request_id.is_some() || ctx.user_agent.is_some() {
                let mut t = json!({"type": {"system": BALP_ENTITY, "code": "XrequestId", "display": "X-Request-Id"}});
                if let Some(id) = &ctx.request_id {
                    t["what"] = json!({"identifier": {"value": id}});
                }
                if let Some(ua) = &ctx.user_agent {
                    t["detail"] = json!([{"type": "user-agent", "valueString": ua}]);
                }
                entities.push(t);
            }
        }
        if !entities.is_empty() {
            e.insert("entity".into(), Value::Array(entities));
        }
        Value::Object(e)
    }
}

/// `agent`: the user (the requestor when present), the client and the partner organisation. An
/// event without a caller (the command line, an unauthenticated request) names fhirgate itself.
fn agents(ctx: Option<&RequestContext>) -> Vec<Value> {
    let mut out = Vec::new();
    let network = ctx
        .and_then(|c| c.address.as_deref())
        .map(|a| json!({"address": a, "type": "2"}));
    let user = ctx.and_then(|c| c.user.as_deref());
    if let Some(u) = user {
        out.push(json!({
            "type": {"coding": [{"system": SECURITY_ROLE, "code": "humanuser", "display": "human user"}]},
            "who": {"reference": u},
            "requestor": true}));
    }
    let client = ctx.and_then(|c| c.client_id.as_deref());
    let mut app = json!({
        "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
        "who": match client {
            Some(c) => json!({"identifier": {"system": CLIENT_SYSTEM, "value": c}}),
            None => json!({"display": "unauthenticated caller"}),
        },
        "requestor": user.is_none()});
    if let Some(n) = network {
        app["network"] = n;
    }
    if ctx.is_none_or(|c| c.command_line) {
        let who = if ctx.is_some() {
            "fhirgate command line"
        } else {
            "fhirgate"
        };
        app = json!({
            "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
            "who": {"display": who},
            "requestor": true});
    }
    out.push(app);
    if let Some(org) = ctx.and_then(|c| c.organization.as_deref()) {
        out.push(json!({
            "type": {"coding": [{"system": PARTICIPATION, "code": "IRCP", "display": "information recipient"}]},
            "who": {"reference": org},
            "requestor": false}));
    }
    out
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
