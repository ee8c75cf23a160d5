//! One route table for every guarded request: a FHIR interaction, an upload, an administrator's
//! call. The bearer guard classifies each request once into an [`Interaction`]; the scope check,
//! the consent rules (through [`super::Policy`]) and the audit trail all read that value, and
//! Bundle entries are classified by the same table.

use std::sync::OnceLock;

use axum::http::Method;

use crate::audit::event::{Action, Kind as AuditKind};
use crate::auth::scopes::Permission;

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `GET [base]?…`: a search across types.
    SearchSystem,
    /// `POST [base]`: a batch or transaction Bundle.
    Bundle,
    /// `GET [base]/_history`.
    HistorySystem,
    /// `GET [base]/{type}?…` or `POST [base]/{type}/_search`.
    SearchType,
    /// `POST [base]/{type}`.
    Create,
    /// `PUT [base]/{type}?…`.
    ConditionalUpdate,
    /// `DELETE [base]/{type}?…`.
    ConditionalDelete,
    /// `PATCH [base]/{type}?…`.
    ConditionalPatch,
    /// `GET [base]/{type}/_history`.
    HistoryType,
    /// `GET [base]/{type}/{id}`.
    Read,
    /// `GET [base]/{type}/{id}/_history/{vid}`.
    Vread,
    /// `PUT [base]/{type}/{id}`.
    Update,
    /// `PATCH [base]/{type}/{id}`.
    Patch,
    /// `DELETE [base]/{type}/{id}`.
    Delete,
    /// `GET [base]/{type}/{id}/_history`.
    HistoryInstance,
    /// `GET [base]/Patient/{id}/{type}?…`: a search of one patient's compartment.
    SearchCompartment,
    /// `[base]/{type}/${op}` or `[base]/{type}/{id}/${op}`.
    Operation,
    /// `POST /ingest/{source}`: an upload of wearable data.
    Ingest,
    /// `GET /ingest/jobs/{job}`.
    IngestStatus,
    /// `GET /admin/clients`.
    ClientList,
    /// `POST /admin/clients`.
    ClientAdd,
    /// `GET /admin/clients/{id}`.
    ClientRead,
    /// `DELETE /admin/clients/{id}`.
    ClientRemove,
}

/// One classified request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interaction {
    /// What it does.
    pub kind: Kind,
    /// The resource type it acts on: the searched type of a compartment search, the type in
    /// the URL otherwise (`None` at the base and outside FHIR).
    pub resource_type: Option<String>,
    /// The logical id in the URL (the patient of a compartment search or `$everything`; the
    /// client of an administrator's call; the job of an upload's status).
    pub id: Option<String>,
    /// The version of a vread.
    pub version: Option<String>,
    /// An operation's name without its `$` (`everything`, `lastn`, `stats`, `export`), or an
    /// upload's source.
    pub operation: Option<String>,
    /// The patient whose compartment the URL names (`Patient/{id}/…`, `Patient/{id}`).
    pub compartment: Option<String>,
    /// The purpose of use the request states (`X-Purpose-Of-Use`), which a partner's grants are
    /// keyed by.
    pub purpose: Option<String>,
}

/// Why a request has no interaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unrouted {
    /// No template matches the path.
    NotFound,
    /// A template matches, but not with this method.
    MethodNotAllowed,
}

/// The templates of the table.
#[derive(Debug, Clone, Copy)]
enum Template {
    Base,
    BaseHistory,
    Type,
    TypeSearch,
    TypeHistory,
    Instance,
    InstanceHistory,
    Version,
    InstanceSub,
    Ingest,
    IngestJob,
    Clients,
    Client,
}

/// Every template, as the HTTP routers spell them.
const TEMPLATES: &[(&str, Template)] = &[
    ("/fhir", Template::Base),
    ("/fhir/", Template::Base),
    ("/fhir/_history", Template::BaseHistory),
    ("/fhir/{rt}", Template::Type),
    ("/fhir/{rt}/_search", Template::TypeSearch),
    ("/fhir/{rt}/_history", Template::TypeHistory),
    ("/fhir/{rt}/{id}", Template::Instance),
    ("/fhir/{rt}/{id}/_history", Template::InstanceHistory),
    ("/fhir/{rt}/{id}/_history/{vid}", Template::Version),
    ("/fhir/{rt}/{id}/{op}", Template::InstanceSub),
    ("/ingest/{source}", Template::Ingest),
    ("/ingest/jobs/{job}", Template::IngestJob),
    ("/admin/clients", Template::Clients),
    ("/admin/clients/{id}", Template::Client),
];

fn table() -> &'static matchit::Router<Template> {
    static TABLE: OnceLock<matchit::Router<Template>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut router = matchit::Router::new();
        for (path, template) in TEMPLATES {
            // The templates are constants that do not conflict (a unit test inserts them all).
            let _ = router.insert(*path, *template);
        }
        router
    })
}

impl Interaction {
    fn new(kind: Kind) -> Self {
        Interaction {
            kind,
            resource_type: None,
            id: None,
            version: None,
            operation: None,
            compartment: None,
            purpose: None,
        }
    }

    /// Classifies `method` on `path` (the URL's path, `/fhir/…`, `/ingest/…` or `/admin/…`).
    pub fn classify(method: &Method, path: &str) -> Result<Interaction, Unrouted> {
        let found = table().at(path).map_err(|_| Unrouted::NotFound)?;
        let param = |name: &str| found.params.get(name).map(str::to_owned);
        let get = matches!(*method, Method::GET | Method::HEAD);
        let (post, put, delete, patch) = (
            *method == Method::POST,
            *method == Method::PUT,
            *method == Method::DELETE,
            *method == Method::PATCH,
        );
        let rt = param("rt");
        let kind = match found.value {
            Template::Base if get => Kind::SearchSystem,
            Template::Base if post => Kind::Bundle,
            Template::BaseHistory if get => Kind::HistorySystem,
            Template::Type if get => Kind::SearchType,
            Template::Type if post => Kind::Create,
            Template::Type if put => Kind::ConditionalUpdate,
            Template::Type if delete => Kind::ConditionalDelete,
            Template::Type if patch => Kind::ConditionalPatch,
            Template::TypeSearch if post => Kind::SearchType,
            Template::TypeHistory if get => Kind::HistoryType,
            Template::Instance if param("id").is_some_and(|id| id.starts_with('$')) => {
                if !(get || post) {
                    return Err(Unrouted::MethodNotAllowed);
                }
                let mut i = Interaction::new(Kind::Operation);
                i.resource_type = rt;
                i.operation = param("id").map(|op| op[1..].to_owned());
                return Ok(i);
            }
            Template::Instance if get => Kind::Read,
            Template::Instance if put => Kind::Update,
            Template::Instance if delete => Kind::Delete,
            Template::Instance if patch => Kind::Patch,
            Template::InstanceHistory if get => Kind::HistoryInstance,
            Template::Version if get => Kind::Vread,
            Template::InstanceSub if get || post => {
                let op = param("op").unwrap_or_default();
                let mut i = Interaction::new(Kind::Operation);
                i.id = param("id");
                if rt.as_deref() == Some("Patient") {
                    i.compartment = i.id.clone();
                }
                if let Some(name) = op.strip_prefix('$') {
                    i.resource_type = rt;
                    i.operation = Some(name.to_owned());
                } else if get && rt.as_deref() == Some("Patient") {
                    i.kind = Kind::SearchCompartment;
                    i.resource_type = Some(op);
                } else {
                    return Err(Unrouted::NotFound);
                }
                return Ok(i);
            }
            Template::Ingest if post => {
                let mut i = Interaction::new(Kind::Ingest);
                i.operation = param("source");
                return Ok(i);
            }
            Template::IngestJob if get => {
                let mut i = Interaction::new(Kind::IngestStatus);
                i.id = param("job");
                return Ok(i);
            }
            Template::Clients if get => Kind::ClientList,
            Template::Clients if post => Kind::ClientAdd,
            Template::Client if get => Kind::ClientRead,
            Template::Client if delete => Kind::ClientRemove,
            _ => return Err(Unrouted::MethodNotAllowed),
        };
        let mut i = Interaction::new(kind);
        i.id = param("id");
        i.version = param("vid");
        if rt.as_deref() == Some("Patient") {
            i.compartment = i.id.clone();
        }
        i.resource_type = rt;
        Ok(i)
    }

    /// Classifies an HTTP request, with the purpose of use it states.
    pub fn of_request(req: &axum::extract::Request) -> Result<Interaction, Unrouted> {
        let purpose = req
            .headers()
            .get("x-purpose-of-use")
            .and_then(|v| v.to_str().ok())
            .filter(|p| {
                !p.is_empty()
                    && p.len() <= 32
                    && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            })
            .map(str::to_owned);
        Ok(Self::classify(req.method(), req.uri().path())?.with_purpose(purpose))
    }

    /// Classifies a Bundle entry's `request` (its method and its URL relative to the base, with
    /// or without a query).
    pub fn of_entry(method: &Method, url: &str) -> Result<Interaction, Unrouted> {
        let path = url.split_once('?').map_or(url, |(p, _)| p);
        Self::classify(method, &format!("/fhir/{}", path.trim_start_matches('/')))
    }

    /// The same interaction, stating `purpose`.
    pub fn with_purpose(mut self, purpose: Option<String>) -> Self {
        self.purpose = purpose;
        self
    }

    /// The resource type and SMART permission the caller's scopes must grant, or `None` where
    /// the handler checks each type itself (Bundles, searches across types, `$everything`) or
    /// the call is not a FHIR interaction (uploads and the admin API check their own scopes).
    pub fn permission(&self) -> Option<(&str, Permission)> {
        let rt = self.resource_type.as_deref().unwrap_or("*");
        let p = match self.kind {
            Kind::SearchType | Kind::HistoryType | Kind::SearchCompartment => Permission::Search,
            Kind::HistorySystem => return Some(("*", Permission::Search)),
            Kind::Read | Kind::Vread | Kind::HistoryInstance => Permission::Read,
            Kind::Create => Permission::Create,
            Kind::Update | Kind::ConditionalUpdate | Kind::Patch | Kind::ConditionalPatch => {
                Permission::Update
            }
            Kind::Delete | Kind::ConditionalDelete => Permission::Delete,
            Kind::Operation if self.operation.as_deref() == Some("everything") => return None,
            Kind::Operation => Permission::Search,
            Kind::SearchSystem
            | Kind::Bundle
            | Kind::Ingest
            | Kind::IngestStatus
            | Kind::ClientList
            | Kind::ClientAdd
            | Kind::ClientRead
            | Kind::ClientRemove => return None,
        };
        Some((rt, p))
    }

    /// Whether a partner organisation may ask this at all: reads by id and searches (including
    /// the search-based operations), each filtered by the patients' Consents. History, Bundles,
    /// writes and the audit trail stay refused for partners.
    pub fn open_to_partners(&self) -> bool {
        if self.resource_type.as_deref() == Some("AuditEvent") {
            // The trail is for auditors and the patients it names.
            return false;
        }
        match self.kind {
            Kind::Read
            | Kind::Vread
            | Kind::SearchType
            | Kind::SearchSystem
            | Kind::SearchCompartment => true,
            Kind::Operation => matches!(
                (self.resource_type.as_deref(), self.operation.as_deref()),
                (Some("Patient"), Some("everything"))
                    | (Some("Observation"), Some("lastn" | "stats"))
            ),
            _ => false,
        }
    }

    /// Whether only reads happen (the anonymous reader of `--allow-anonymous-read` may ask).
    pub fn reads_only(&self) -> bool {
        matches!(
            self.kind,
            Kind::SearchSystem
                | Kind::HistorySystem
                | Kind::SearchType
                | Kind::HistoryType
                | Kind::Read
                | Kind::Vread
                | Kind::HistoryInstance
                | Kind::SearchCompartment
        ) || (self.kind == Kind::Operation && self.operation.as_deref() != Some("export"))
    }

    /// The audit trail's event type and action for this interaction.
    pub fn audit(&self) -> (AuditKind, Action) {
        let rest = |sub| (AuditKind::Rest(sub), Action::Read);
        match self.kind {
            Kind::SearchSystem => rest("search-system"),
            Kind::HistorySystem => rest("history-system"),
            Kind::SearchType | Kind::SearchCompartment => rest("search-type"),
            Kind::HistoryType => rest("history-type"),
            Kind::Read => rest("read"),
            Kind::Vread => rest("vread"),
            Kind::HistoryInstance => rest("history-instance"),
            Kind::Bundle => (AuditKind::Rest("transaction"), Action::Execute),
            Kind::Create => (AuditKind::Rest("create"), Action::Create),
            // A patch is recorded as the update it is (storage writes the event of a success).
            Kind::Update | Kind::ConditionalUpdate | Kind::Patch | Kind::ConditionalPatch => {
                (AuditKind::Rest("update"), Action::Update)
            }
            Kind::Delete | Kind::ConditionalDelete => (AuditKind::Rest("delete"), Action::Delete),
            Kind::Operation => (
                AuditKind::Operation(match self.operation.as_deref() {
                    Some("everything") => "everything",
                    Some("lastn") => "lastn",
                    Some("stats") => "stats",
                    Some("export") => "export",
                    _ => "operation",
                }),
                Action::Execute,
            ),
            Kind::Ingest => (AuditKind::Ingest, Action::Create),
            Kind::IngestStatus => (AuditKind::Operation("ingest-status"), Action::Read),
            Kind::ClientList => (AuditKind::Admin("client-list"), Action::Read),
            Kind::ClientAdd => (AuditKind::Admin("client-add"), Action::Create),
            Kind::ClientRead => (AuditKind::Admin("client-read"), Action::Read),
            Kind::ClientRemove => (AuditKind::Admin("client-remove"), Action::Delete),
        }
    }

    /// The resource an instance interaction aims at (`Type/id`), which its audit event names
    /// even when it was refused.
    pub fn target(&self) -> Option<String> {
        match self.kind {
            Kind::Read
            | Kind::Vread
            | Kind::Update
            | Kind::Patch
            | Kind::Delete
            | Kind::HistoryInstance => Some(format!(
                "{}/{}",
                self.resource_type.as_deref()?,
                self.id.as_deref()?
            )),
            _ => None,
        }
    }

    /// Whether a successful answer was already audited by storage, in the write's own
    /// transaction (single writes and uploads).
    pub fn audited_by_storage(&self) -> bool {
        matches!(
            self.kind,
            Kind::Create
                | Kind::Update
                | Kind::ConditionalUpdate
                | Kind::Patch
                | Kind::ConditionalPatch
                | Kind::Delete
                | Kind::ConditionalDelete
                | Kind::Ingest
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(m: Method, p: &str) -> Interaction {
        Interaction::classify(&m, p).unwrap_or_else(|e| panic!("{m} {p}: {e:?}"))
    }

    #[test]
    fn every_template_is_in_the_table_without_conflict() {
        let mut router = matchit::Router::new();
        for (path, t) in TEMPLATES {
            assert!(router.insert(*path, *t).is_ok(), "{path}");
        }
    }

    #[test]
    fn every_fhir_template_classifies_with_its_parts() {
        type Case<'a> = (Method, &'a str, Kind, Option<&'a str>, Option<&'a str>);
        let cases: &[Case<'_>] = &[
            (Method::GET, "/fhir", Kind::SearchSystem, None, None),
            (Method::GET, "/fhir/", Kind::SearchSystem, None, None),
            (Method::POST, "/fhir", Kind::Bundle, None, None),
            (
                Method::GET,
                "/fhir/_history",
                Kind::HistorySystem,
                None,
                None,
            ),
            (
                Method::GET,
                "/fhir/Observation",
                Kind::SearchType,
                Some("Observation"),
                None,
            ),
            (
                Method::HEAD,
                "/fhir/Observation",
                Kind::SearchType,
                Some("Observation"),
                None,
            ),
            (
                Method::POST,
                "/fhir/Observation",
                Kind::Create,
                Some("Observation"),
                None,
            ),
            (
                Method::PUT,
                "/fhir/Observation",
                Kind::ConditionalUpdate,
                Some("Observation"),
                None,
            ),
            (
                Method::DELETE,
                "/fhir/Observation",
                Kind::ConditionalDelete,
                Some("Observation"),
                None,
            ),
            (
                Method::POST,
                "/fhir/Observation/_search",
                Kind::SearchType,
                Some("Observation"),
                None,
            ),
            (
                Method::GET,
                "/fhir/Observation/_history",
                Kind::HistoryType,
                Some("Observation"),
                None,
            ),
            (
                Method::GET,
                "/fhir/Observation/1",
                Kind::Read,
                Some("Observation"),
                Some("1"),
            ),
            (
                Method::PUT,
                "/fhir/Observation/1",
                Kind::Update,
                Some("Observation"),
                Some("1"),
            ),
            (
                Method::DELETE,
                "/fhir/Observation/1",
                Kind::Delete,
                Some("Observation"),
                Some("1"),
            ),
            (
                Method::GET,
                "/fhir/Observation/1/_history",
                Kind::HistoryInstance,
                Some("Observation"),
                Some("1"),
            ),
            (
                Method::GET,
                "/fhir/Observation/1/_history/2",
                Kind::Vread,
                Some("Observation"),
                Some("1"),
            ),
            (
                Method::GET,
                "/fhir/Patient/p/Observation",
                Kind::SearchCompartment,
                Some("Observation"),
                Some("p"),
            ),
            (
                Method::GET,
                "/fhir/Patient/p/$everything",
                Kind::Operation,
                Some("Patient"),
                Some("p"),
            ),
            (
                Method::GET,
                "/fhir/Observation/$lastn",
                Kind::Operation,
                Some("Observation"),
                None,
            ),
            (
                Method::GET,
                "/fhir/Observation/$stats",
                Kind::Operation,
                Some("Observation"),
                None,
            ),
            (
                Method::GET,
                "/fhir/AuditEvent/$export",
                Kind::Operation,
                Some("AuditEvent"),
                None,
            ),
            (
                Method::GET,
                "/fhir/AuditEvent/7",
                Kind::Read,
                Some("AuditEvent"),
                Some("7"),
            ),
        ];
        for (m, p, kind, rt, id) in cases {
            let i = c(m.clone(), p);
            assert_eq!(i.kind, *kind, "{m} {p}");
            assert_eq!(i.resource_type.as_deref(), *rt, "{m} {p}");
            assert_eq!(i.id.as_deref(), *id, "{m} {p}");
        }
        assert_eq!(
            c(Method::GET, "/fhir/Observation/1/_history/2")
                .version
                .as_deref(),
            Some("2")
        );
        assert_eq!(
            c(Method::GET, "/fhir/Patient/p/$everything")
                .operation
                .as_deref(),
            Some("everything")
        );
        assert_eq!(
            c(Method::GET, "/fhir/Patient/p/Observation")
                .compartment
                .as_deref(),
            Some("p")
        );
        assert_eq!(
            c(Method::GET, "/fhir/Patient/p").compartment.as_deref(),
            Some("p")
        );
        assert_eq!(c(Method::GET, "/fhir/Observation/1").compartment, None);
    }

    #[test]
    fn the_other_guarded_routes_classify() {
        assert_eq!(c(Method::POST, "/ingest/fitbit").kind, Kind::Ingest);
        assert_eq!(
            c(Method::POST, "/ingest/fitbit").operation.as_deref(),
            Some("fitbit")
        );
        assert_eq!(c(Method::GET, "/ingest/jobs/9").kind, Kind::IngestStatus);
        assert_eq!(c(Method::GET, "/admin/clients").kind, Kind::ClientList);
        assert_eq!(c(Method::POST, "/admin/clients").kind, Kind::ClientAdd);
        let read = c(Method::GET, "/admin/clients/app");
        assert_eq!(
            (read.kind, read.id.as_deref()),
            (Kind::ClientRead, Some("app"))
        );
        assert_eq!(
            c(Method::DELETE, "/admin/clients/app").kind,
            Kind::ClientRemove
        );
    }

    #[test]
    fn wrong_methods_and_unknown_paths_are_unrouted() {
        let u = |m: Method, p: &str| Interaction::classify(&m, p).err();
        assert_eq!(u(Method::DELETE, "/fhir"), Some(Unrouted::MethodNotAllowed));
        assert_eq!(
            u(Method::POST, "/fhir/_history"),
            Some(Unrouted::MethodNotAllowed)
        );
        assert_eq!(
            u(Method::GET, "/fhir/Observation/_search"),
            Some(Unrouted::MethodNotAllowed)
        );
        assert_eq!(
            u(Method::POST, "/fhir/Observation/1"),
            Some(Unrouted::MethodNotAllowed)
        );
        assert_eq!(
            u(Method::PATCH, "/fhir/Observation/1/_history"),
            Some(Unrouted::MethodNotAllowed)
        );
        assert_eq!(
            c(Method::PATCH, "/fhir/Observation/1").kind,
            Kind::Patch,
            "PATCH is an update"
        );
        assert_eq!(
            c(Method::PATCH, "/fhir/Observation").kind,
            Kind::ConditionalPatch
        );
        assert_eq!(
            u(Method::PUT, "/fhir/Observation/1/_history/2"),
            Some(Unrouted::MethodNotAllowed)
        );
        assert_eq!(
            u(Method::DELETE, "/fhir/Observation/$lastn"),
            Some(Unrouted::MethodNotAllowed)
        );
        assert_eq!(
            u(Method::GET, "/fhir/Observation/1/Observation"),
            Some(Unrouted::NotFound)
        );
        assert_eq!(u(Method::GET, "/fhir/a/b/c/d/e"), Some(Unrouted::NotFound));
        assert_eq!(u(Method::GET, "/other"), Some(Unrouted::NotFound));
        assert_eq!(
            u(Method::PUT, "/admin/clients"),
            Some(Unrouted::MethodNotAllowed)
        );
    }

    #[test]
    fn permissions_follow_the_interaction() {
        let p = |m: Method, path: &str| c(m, path).permission().map(|(t, p)| (t.to_owned(), p));
        let s = |t: &str, perm| Some((t.to_owned(), perm));
        assert_eq!(
            p(Method::GET, "/fhir/Observation"),
            s("Observation", Permission::Search)
        );
        assert_eq!(
            p(Method::POST, "/fhir/Observation/_search"),
            s("Observation", Permission::Search)
        );
        assert_eq!(
            p(Method::GET, "/fhir/Observation/_history"),
            s("Observation", Permission::Search)
        );
        assert_eq!(p(Method::GET, "/fhir/_history"), s("*", Permission::Search));
        assert_eq!(
            p(Method::GET, "/fhir/Observation/1"),
            s("Observation", Permission::Read)
        );
        assert_eq!(
            p(Method::GET, "/fhir/Observation/1/_history"),
            s("Observation", Permission::Read)
        );
        assert_eq!(
            p(Method::GET, "/fhir/Observation/1/_history/1"),
            s("Observation", Permission::Read)
        );
        assert_eq!(
            p(Method::POST, "/fhir/Observation"),
            s("Observation", Permission::Create)
        );
        assert_eq!(
            p(Method::PUT, "/fhir/Observation/1"),
            s("Observation", Permission::Update)
        );
        assert_eq!(
            p(Method::PUT, "/fhir/Observation"),
            s("Observation", Permission::Update)
        );
        assert_eq!(
            p(Method::DELETE, "/fhir/Observation/1"),
            s("Observation", Permission::Delete)
        );
        assert_eq!(
            p(Method::DELETE, "/fhir/Observation"),
            s("Observation", Permission::Delete)
        );
        assert_eq!(
            p(Method::GET, "/fhir/Patient/p/Condition"),
            s("Condition", Permission::Search)
        );
        assert_eq!(
            p(Method::GET, "/fhir/Observation/$stats"),
            s("Observation", Permission::Search)
        );
        assert_eq!(p(Method::GET, "/fhir/Patient/p/$everything"), None);
        assert_eq!(p(Method::GET, "/fhir"), None);
        assert_eq!(p(Method::POST, "/fhir"), None);
        assert_eq!(p(Method::POST, "/ingest/oura"), None);
    }

    #[test]
    fn partners_get_reads_and_searches_only() {
        let open = |m: Method, p: &str| c(m, p).open_to_partners();
        for p in [
            "/fhir/Observation",
            "/fhir/Observation/1",
            "/fhir/Observation/1/_history/1",
            "/fhir",
            "/fhir/Patient/p/Observation",
            "/fhir/Patient/p/$everything",
            "/fhir/Observation/$lastn",
            "/fhir/Observation/$stats",
        ] {
            assert!(open(Method::GET, p), "{p}");
        }
        assert!(open(Method::POST, "/fhir/Observation/_search"));
        for (m, p) in [
            (Method::GET, "/fhir/_history"),
            (Method::GET, "/fhir/Observation/_history"),
            (Method::GET, "/fhir/Observation/1/_history"),
            (Method::POST, "/fhir"),
            (Method::POST, "/fhir/Observation"),
            (Method::PUT, "/fhir/Observation/1"),
            (Method::DELETE, "/fhir/Observation/1"),
            (Method::GET, "/fhir/AuditEvent/$export"),
            (Method::GET, "/fhir/AuditEvent"),
            (Method::GET, "/fhir/AuditEvent/1"),
            (Method::POST, "/ingest/oura"),
            (Method::GET, "/admin/clients"),
        ] {
            assert!(!open(m.clone(), p), "{m} {p}");
        }
    }

    #[test]
    fn audit_kinds_follow_the_interaction() {
        let a = |m: Method, p: &str| c(m, p).audit();
        assert_eq!(
            a(Method::GET, "/fhir/Observation/1"),
            (AuditKind::Rest("read"), Action::Read)
        );
        assert_eq!(
            a(Method::GET, "/fhir/Observation/1/_history/1"),
            (AuditKind::Rest("vread"), Action::Read)
        );
        assert_eq!(
            a(Method::GET, "/fhir/Observation"),
            (AuditKind::Rest("search-type"), Action::Read)
        );
        assert_eq!(
            a(Method::GET, "/fhir"),
            (AuditKind::Rest("search-system"), Action::Read)
        );
        assert_eq!(
            a(Method::POST, "/fhir"),
            (AuditKind::Rest("transaction"), Action::Execute)
        );
        assert_eq!(
            a(Method::PUT, "/fhir/Observation"),
            (AuditKind::Rest("update"), Action::Update)
        );
        assert_eq!(
            a(Method::DELETE, "/fhir/Observation/1"),
            (AuditKind::Rest("delete"), Action::Delete)
        );
        assert_eq!(
            a(Method::GET, "/fhir/Patient/p/$everything"),
            (AuditKind::Operation("everything"), Action::Execute)
        );
        assert_eq!(
            a(Method::GET, "/fhir/AuditEvent/$export"),
            (AuditKind::Operation("export"), Action::Execute)
        );
        assert_eq!(
            a(Method::POST, "/ingest/oura"),
            (AuditKind::Ingest, Action::Create)
        );
        assert_eq!(
            a(Method::DELETE, "/admin/clients/x"),
            (AuditKind::Admin("client-remove"), Action::Delete)
        );
        assert_eq!(
            c(Method::DELETE, "/fhir/Observation/1").target().as_deref(),
            Some("Observation/1")
        );
        assert_eq!(c(Method::GET, "/fhir/Observation").target(), None);
    }

    #[test]
    fn bundle_entries_use_the_same_table() {
        let e = |m: Method, u: &str| Interaction::of_entry(&m, u).map(|i| i.kind);
        assert_eq!(e(Method::GET, "Observation/1"), Ok(Kind::Read));
        assert_eq!(e(Method::POST, "Observation"), Ok(Kind::Create));
        assert_eq!(
            e(Method::PUT, "Observation?identifier=x|1"),
            Ok(Kind::ConditionalUpdate)
        );
        assert_eq!(e(Method::PUT, "Observation/1"), Ok(Kind::Update));
        assert_eq!(e(Method::DELETE, "Observation/1"), Ok(Kind::Delete));
        assert_eq!(e(Method::GET, "Observation?code=x"), Ok(Kind::SearchType));
        assert_eq!(e(Method::GET, "/Observation/1/_history/2"), Ok(Kind::Vread));
        assert_eq!(
            e(Method::POST, "Observation/1"),
            Err(Unrouted::MethodNotAllowed)
        );
    }
}
