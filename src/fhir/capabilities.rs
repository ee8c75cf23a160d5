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

/// Builds the CapabilityStatement for `base`.
pub fn capability_statement(base: &str, token_url: &str) -> Value {
    let issuer = token_url.trim_end_matches("/auth/token");
    let resources: Vec<Value> = fhirgate_codec::resource_types()
        .iter()
        .map(|rt| {
            if *rt == "AuditEvent" {
                return audit_event_resource();
            }
            let mut params = vec![json!({"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"})];
            if fhirgate_codec::has_element(rt, "identifier") {
                params.push(json!({"name": "identifier", "type": "token",
                    "documentation": "Exact match on system|value, |value, value or system|; stored as a keyed blind index (no :text, :contains or :missing)."}));
            }
            json!({
                "type": rt,
                "interaction": TYPE_INTERACTIONS.iter().map(|c| json!({"code": c})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                "conditionalDelete": "not-supported",
                "referencePolicy": ["literal", "logical"],
                "searchParam": params,
            })
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
            "documentation": "Resource bodies are encrypted at rest (AES-256-GCM, per-patient keys). Prefer: return=minimal|representation|OperationOutcome and handling=strict|lenient are honoured.",
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}],
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
