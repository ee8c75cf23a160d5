//! `GET [base]/metadata`: the CapabilityStatement (<https://hl7.org/fhir/R4/capabilitystatement.html>).
//! It lists exactly what this server implements; later features add to it here.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use crate::error::Result;
use crate::fhir::format::{self, negotiate, query_pairs};
use crate::state::AppState;

/// The interactions every resource type supports.
const TYPE_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

/// The audit trail: read and search only (the server writes it), with `$export`.
fn audit_event_resource() -> Value {
    let param = |name: &str, ty: &str, doc: &str| json!({"name": name, "type": ty, "definition": format!("http://hl7.org/fhir/SearchParameter/AuditEvent-{name}"), "documentation": doc});
    json!({
        "type": "AuditEvent",
        "documentation": "The tamper-evident audit trail, in IHE BALP shapes. Written only by the server: create, update and delete are refused with 405. Auditors need system/AuditEvent.rs; a patient's token (patient/AuditEvent.rs) finds the events about that patient; partner organisations are refused.",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "versioning": "no-version",
        "readHistory": false,
        "updateCreate": false,
        "searchParam": [
            param("date", "date", "recorded; prefixes eq ne gt lt ge le sa eb, any precision"),
            param("agent", "reference", "Organization/ID, Patient/ID or client:CLIENT_ID"),
            param("entity", "reference", "Type/ID of a resource the event is about"),
            param("patient", "reference", "Patient/ID or ID"),
            param("type", "token", "code of AuditEvent.type"),
            param("subtype", "token", "code of AuditEvent.subtype"),
            param("outcome", "token", "0, 4 or 8"),
            param("action", "token", "C, R, U, D or E"),
        ],
        "operation": [{"name": "export", "definition": "https://fhirgate.org/OperationDefinition/AuditEvent-export",
            "documentation": "GET AuditEvent/$export?date=ge…&date=lt…&_outputFormat=ndjson|csv: every matching event, oldest first."}],
    })
}

/// Modifiers each parameter type supports here.
fn modifiers(t: fhirgate_fhirpath::ParamType, blind: bool) -> &'static str {
    use fhirgate_fhirpath::ParamType as T;
    match (t, blind) {
        (T::String, false) => "default starts-with (case and accent folded), :exact, :contains, :missing",
        (T::String, true) => "blind-indexed (keyed hashes of normalised values and prefixes): default starts-with and :exact, :missing; :contains is refused with 400",
        (T::Token, false) => "system|code, |code, code, system|; :not, :text, :missing; :in and :not-in with http://hl7.org/fhir/ValueSet/observation-vitalsignresult (the R4 vital-sign LOINC codes) or https://fhirgate.org/ValueSet/data-class (any other ValueSet: 400); :above and :below are refused with 400 (no code system with a hierarchy is resolved locally)",
        (T::Token, true) => "blind-indexed: system|code, |code, code, system|, :of-type (identifier), :missing; :text, :in, :not-in, :above and :below are refused",
        (T::Date, false) => "prefixes eq ne gt lt ge le sa eb ap, any precision (compared as ranges); :missing",
        (T::Date, true) => "blind-indexed: a date at year, month or day precision without a prefix (or eq) matches through keyed hashes; ranges at year precision through the plain birth year: eq/ne with a whole year, ge/lt/eb with a year or a date on 1 January, gt/le/sa with a year or a date on 31 December (ge1980, lt1990-01-01, gt1979); finer ranges and ap are refused with 400; :missing",
        (T::Number, _) => "prefixes eq ne gt lt ge le sa eb ap with implicit precision; :missing",
        (T::Quantity, _) => "prefixes eq ne gt lt ge le sa eb ap; number, number|system|code or number||code; :missing",
        (T::Reference, _) => "id, Type/id, absolute URL; :Type, :identifier, :missing; chaining (a.b.c) and _has",
        (T::Uri, _) => "exact, :below and :above (URL prefix), :missing",
        (T::Composite, _) => "token$value with the second component's own syntax (string components match whole values)",
        (T::Special, _) => "not supported",
    }
}

/// Every search parameter of `rt` the index serves.
fn search_params(rt: &str) -> Vec<Value> {
    fhirgate_fhirpath::parameters_for(rt)
        .filter(|d| d.expression.is_some() && d.param_type != fhirgate_fhirpath::ParamType::Special)
        .map(|d| {
            let blind = crate::search::index::is_blind(rt, &d.code);
            json!({"name": d.code, "type": d.param_type.as_str(), "definition": d.url,
                "documentation": modifiers(d.param_type, blind)})
        })
        .collect()
}

/// Builds the CapabilityStatement for `base`.
pub fn capability_statement(base: &str, token_url: &str) -> Value {
    let issuer = token_url.trim_end_matches("/auth/token");
    let resources: Vec<Value> = fhirgate_codec::resource_types()
        .iter()
        .map(|rt| {
            if *rt == "AuditEvent" {
                return audit_event_resource();
            }
            let params = search_params(rt);
            let includes: Vec<String> = fhirgate_fhirpath::parameters_for(rt)
                .filter(|d| d.param_type == fhirgate_fhirpath::ParamType::Reference)
                .map(|d| format!("{rt}:{}", d.code))
                .collect();
            let operations = match rt.as_str() {
                "Patient" => json!([{"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                    "documentation": "GET Patient/[id]/$everything?_since&_type&_count, or POST with a Parameters body or a form: the patient and every resource in its compartment, paged, with the Organizations, Practitioners, Locations, Medications and Devices they refer to; partners see only what the patient consented to."}]),
                "Observation" => json!([
                    {"name": "lastn", "definition": "http://hl7.org/fhir/OperationDefinition/Observation-lastn",
                     "documentation": "GET Observation/$lastn?patient|subject&category&code&max (default 1), or POST with a Parameters body or a form: the most recent Observations per code, by date."},
                    {"name": "stats", "definition": "http://hl7.org/fhir/OperationDefinition/Observation-stats",
                     "documentation": "GET Observation/$stats?patient|subject&code&period=start/end|date=…&statistic=count,minimum,maximum,average, or POST with a Parameters body or a form: value-quantity statistics per code, as Observations in a Parameters resource."}]),
                _ => json!([]),
            };
            let mut r = json!({
                "type": rt,
                "interaction": TYPE_INTERACTIONS.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "full-support",
                "conditionalUpdate": true,
                "conditionalDelete": "multiple",
                "referencePolicy": ["literal", "logical"],
                "searchInclude": includes,
                "searchRevInclude": ["*"],
                "searchParam": params,
                "operation": operations,
            });
            // R4 forbids empty arrays.
            if let Some(o) = r.as_object_mut() {
                o.retain(|_, v| !v.as_array().is_some_and(Vec::is_empty));
            }
            r
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-23",
        "publisher": "fhirgate",
        "kind": "instance",
        "software": {"name": "fhirgate", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "fhirgate FHIR R4 server", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/fhir+xml", "json", "xml"],
        "rest": [{
            "mode": "server",
            "security": {
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}]}],
                "description": "SMART on FHIR 2.x: standalone app launch (authorization code with PKCE S256, refresh tokens, openid fhirUser) and Backend Services (client_credentials with private_key_jwt, RS384 or ES384). Every interaction but this statement and discovery needs a bearer token whose scopes allow it; a patient's token reaches only that patient's compartment.",
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [
                        {"url": "authorize", "valueUri": format!("{issuer}/auth/authorize")},
                        {"url": "token", "valueUri": token_url},
                        {"url": "introspect", "valueUri": format!("{issuer}/auth/introspect")},
                        {"url": "revoke", "valueUri": format!("{issuer}/auth/revoke")},
                    ],
                }],
            },
            "documentation": "Resource bodies are encrypted at rest (AES-256-GCM, per-patient keys). Search parameters that identify a person (names, identifiers, telecom, address, birth date) and Observation value text are stored only as keyed blind indexes: exact and starts-with search work, :contains does not (the birth year is kept plain, for ranges at year precision). _text and _content are not supported (the server does not index narrative or full text): 400 not-supported naming the parameter, also under Prefer: handling=lenient. Prefer: return=minimal|representation|OperationOutcome and handling=strict|lenient are honoured (unknown search parameters: strict gives 400, lenient ignores them and reports them in the Bundle). Formats: _format (json, xml and their MIME types), Accept with q-values, fhirVersion=4.0 (another version is 406), _pretty=true. Conditional reads answer If-None-Match and If-Modified-Since with 304. PATCH takes JSON Patch (application/json-patch+json), FHIRPath Patch (a Parameters body) and JSON Merge Patch (application/merge-patch+json), on an instance or Type?criteria. Conditional delete removes one match, or up to 100 in one transaction (more is 412). In batch Bundles, GET entries answer with the resource or the searchset; transactions resolve conditional references and ifNoneExist against their own earlier entries; searches inside a transaction are refused (use a batch).",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}, {"code": "search-system"}],
            "searchParam": [
                {"name": "_type", "type": "token", "documentation": "system search: GET [base]?_type=A,B with the common parameters"},
                {"name": "_count", "type": "number", "documentation": "page size (default 50, at most 1000); pages are keyset cursors in the next/previous links"},
                {"name": "_sort", "type": "string", "documentation": "any parameter but blind-indexed and composite ones, several keys, - for descending"},
                {"name": "_total", "type": "token", "documentation": "none (default), estimate or accurate"},
                {"name": "_summary", "type": "token", "documentation": "count (also _count=0), true (the summary elements of the R4 StructureDefinitions), data, text"},
                {"name": "_elements", "type": "string", "documentation": "top-level elements to keep"},
                {"name": "_include", "type": "special", "documentation": "Type:param[:target], and _include:iterate"},
                {"name": "_revinclude", "type": "special", "documentation": "Type:param[:target], and _revinclude:iterate"},
                {"name": "_has", "type": "special", "documentation": "_has:Type:reference-param:param=value, nested"},
            ],
        }],
    })
}

/// `GET [base]/metadata`.
pub async fn metadata(
    State(state): State<AppState>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let fmt = negotiate(&headers, &query_pairs(q.as_deref()))?;
    format::resource_value(
        StatusCode::OK,
        fmt,
        &capability_statement(&state.fhir_base, &state.token_url()),
    )
}
