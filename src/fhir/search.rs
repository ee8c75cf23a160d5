//! FHIR search (<https://hl7.org/fhir/R4/search.html>) over the index of `crate::search`: type
//! search (GET and `POST _search`), compartment search (`Patient/{id}/{type}`), system search
//! (`GET [base]?_type=…`), and the operations built on it: `Patient/{id}/$everything`,
//! `Observation/$lastn` and `Observation/$stats`. Every query carries the caller's access
//! (patient compartment, partner consent) in its SQL. Unknown parameters follow
//! `Prefer: handling` (strict → 400; lenient → ignored and reported in the Bundle).

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use fhirgate_fhirpath::ParamType;
use serde_json::{json, Value};

use std::sync::Arc;

use crate::access::Policy;
use crate::auth::scopes::Permission;
use crate::error::{FhirError, Result};
use crate::fhir::body::read_limited;
use crate::fhir::format::{self, negotiate, query_pairs};
use crate::fhir::history::{link, parse_count, DEFAULT_COUNT};
use crate::fhir::resource_type;
use crate::fhir::respond::prefer_strict;
use crate::search::exec::{self, Cursor, Found, Include, Plan, SortKey};
use crate::search::query;
use crate::state::AppState;
use crate::storage;

/// Most `_include` and `_revinclude` parameters one search may carry (each is a query per
/// page, and `:iterate` ones repeat).
pub const MAX_INCLUDES: usize = 10;

/// How a response shows totals and resources.
#[derive(Debug, Default)]
struct Shape {
    total: Option<String>,
    summary: Option<String>,
    elements: Option<Vec<String>>,
    includes: Vec<Include>,
    revincludes: Vec<Include>,
    ignored: Vec<String>,
    /// Parameters echoed in links (without `_cursor`).
    used: Vec<(String, String)>,
    /// The sealed `_cursor` asked for, opened once the caller and query are known.
    cursor: Option<String>,
    /// `$everything`: also the resources outside the compartment that the page's resources
    /// refer to (Organization, Practitioner, …).
    referenced: bool,
}

/// What `$everything` follows out of the compartment (Patient-everything: "resources referenced
/// by the compartment's resources", such as the organisations and practitioners of encounters).
const REFERENCED_TYPES: &[&str] = &[
    "Organization",
    "Practitioner",
    "PractitionerRole",
    "Location",
    "Medication",
    "Device",
    "Substance",
    "HealthcareService",
    "Endpoint",
];

/// `GET [base]/{type}?params`.
pub async fn search_type(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    Path(rt): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let rt = resource_type(&rt)?;
    type_search(
        &state,
        &policy,
        rt,
        None,
        query_pairs(q.as_deref()),
        &headers,
    )
    .await
}

/// `POST [base]/{type}/_search` with an `application/x-www-form-urlencoded` body.
pub async fn search_type_post(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    Path(rt): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response> {
    let rt = resource_type(&rt)?;
    let form = read_limited(body, state.max_body_bytes).await?;
    let form = String::from_utf8_lossy(&form).into_owned();
    let mut pairs = query_pairs(q.as_deref());
    pairs.extend(query_pairs(Some(&form)));
    let resp = type_search(&state, &policy, rt, None, pairs, &headers).await?;
    // The parameters came in the body: the audit event records them as if in the URL.
    Ok(crate::fhir::operation::recorded(resp, Some(form)))
}

/// `GET [base]?_type=A,B&…`: search across types with the common parameters.
pub async fn search_system(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let pairs = query_pairs(q.as_deref());
    let mut types = Vec::new();
    for (k, v) in pairs.iter().filter(|(k, _)| k == "_type") {
        for t in v.split(',') {
            let t = resource_type(t).map_err(|_| {
                FhirError::bad_request(k, format!("'{t}' in _type is not a resource type"))
            })?;
            policy.require(t, Permission::Search)?;
            types.push(t.to_owned());
        }
    }
    if types.is_empty() {
        return Err(FhirError::bad_request(
            "_type",
            "a system search needs _type (e.g. _type=Observation,Patient)",
        ));
    }
    if types.iter().any(|t| t == "AuditEvent") {
        return Err(FhirError::bad_request(
            "_type",
            "AuditEvent is searched on its own endpoint",
        ));
    }
    let mut plan = Plan {
        types,
        ..Plan::default()
    };
    let rest: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k != "_type")
        .cloned()
        .collect();
    let mut shape = parse(&state, "Resource", rest, prefer_strict(&headers), &mut plan)?;
    shape.used.insert(0, ("_type".into(), plan.types.join(",")));
    respond(&state, &policy, plan, shape, "", &pairs, &headers).await
}

/// `GET [base]/{type}/{id}/{op}`: `Patient/{id}/$everything`, or a compartment search
/// `Patient/{id}/{type}`.
pub async fn instance_operation(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    Path((rt, id, op)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let rt = resource_type(&rt)?;
    let pairs = query_pairs(q.as_deref());
    if op.starts_with('$') {
        return instance_operation_with(&state, &policy, rt, &id, &op, pairs, &headers).await;
    }
    let id = crate::fhir::logical_id(&id)?.to_owned();
    if rt != "Patient" {
        return Err(FhirError::NotFound(format!(
            "{rt} has no compartment or operations here"
        )));
    }
    let target = resource_type(&op)?;
    policy.require(target, Permission::Search)?;
    type_search(&state, &policy, target, Some(id), pairs, &headers).await
}

/// An instance-level operation with its parameters (from the URL, or a POST body too).
pub async fn instance_operation_with(
    state: &AppState,
    policy: &Policy,
    rt: &str,
    id: &str,
    op: &str,
    pairs: Vec<(String, String)>,
    headers: &HeaderMap,
) -> Result<Response> {
    let id = crate::fhir::logical_id(id)?.to_owned();
    match (rt, op) {
        ("Patient", "$everything") => everything(state, policy, id, pairs, headers).await,
        _ => Err(FhirError::NotFound(format!(
            "operation {op} is not defined on {rt} instances"
        ))),
    }
}

/// `GET [base]/{type}/{op}` for type-level operations (`Observation/$lastn`, `Observation/$stats`).
pub async fn type_operation(
    state: &AppState,
    policy: &Policy,
    rt: &str,
    op: &str,
    q: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response> {
    type_operation_with(state, policy, rt, op, query_pairs(q), headers).await
}

/// A type-level operation with its parameters (from the URL, or a POST body too).
pub async fn type_operation_with(
    state: &AppState,
    policy: &Policy,
    rt: &str,
    op: &str,
    pairs: Vec<(String, String)>,
    headers: &HeaderMap,
) -> Result<Response> {
    match (rt, op) {
        ("Observation", "$lastn") => lastn(state, policy, pairs, headers).await,
        ("Observation", "$stats") => stats(state, policy, pairs, headers).await,
        _ => Err(FhirError::NotFound(format!(
            "operation {op} is not defined on {rt}"
        ))),
    }
}

/// A search entry of a batch Bundle (`GET Type?query`), answered in JSON as the same search
/// over HTTP would be.
pub async fn search_in_bundle(
    state: &AppState,
    policy: &Policy,
    rt: &str,
    query: &str,
) -> Result<Response> {
    let pairs: Vec<(String, String)> = query_pairs(Some(query))
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty"))
        .collect();
    type_search(state, policy, rt, None, pairs, &HeaderMap::new()).await
}

async fn type_search(
    state: &AppState,
    policy: &Policy,
    rt: &str,
    compartment: Option<String>,
    pairs: Vec<(String, String)>,
    headers: &HeaderMap,
) -> Result<Response> {
    if rt == "AuditEvent" {
        // `Patient/{id}/AuditEvent`: the events about that patient only.
        let mut pairs = pairs;
        if let Some(p) = &compartment {
            pairs.push(("patient".into(), format!("Patient/{p}")));
        }
        return crate::fhir::audit_event::search(state, policy, pairs, headers).await;
    }
    let mut plan = Plan {
        types: vec![rt.to_owned()],
        compartment: compartment.clone(),
        ..Plan::default()
    };
    let shape = parse(state, rt, pairs.clone(), prefer_strict(headers), &mut plan)?;
    let path = match &compartment {
        Some(p) => format!("Patient/{p}/{rt}"),
        None => rt.to_owned(),
    };
    respond(state, policy, plan, shape, &path, &pairs, headers).await
}

fn bad(param: &str, msg: impl Into<String>) -> FhirError {
    FhirError::bad_request(param, msg)
}

/// Parses the parameters of a search on `rt` into `plan`, and how to shape the response.
fn parse(
    state: &AppState,
    rt: &str,
    pairs: Vec<(String, String)>,
    strict: bool,
    plan: &mut Plan,
) -> Result<Shape> {
    let ctx = exec::ctx(state);
    let mut shape = Shape::default();
    plan.count = DEFAULT_COUNT;
    for (k, v) in pairs {
        let keep = !matches!(k.as_str(), "_cursor" | "_format" | "_pretty");
        match k.as_str() {
            "_count" => plan.count = parse_count(&v)?,
            "_cursor" => shape.cursor = Some(v.clone()),
            "_format" | "_pretty" => {}
            "_sort" => plan.sort = parse_sort(rt, &ctx, &v)?,
            "_total" => match v.as_str() {
                "none" => shape.total = None,
                "estimate" | "accurate" => shape.total = Some(v.clone()),
                _ => {
                    return Err(bad(
                        &k,
                        format!("_total takes none, estimate or accurate, not '{v}'"),
                    ))
                }
            },
            "_summary" => match v.as_str() {
                "true" | "text" | "data" | "count" => shape.summary = Some(v.clone()),
                "false" => shape.summary = None,
                _ => {
                    return Err(bad(
                        &k,
                        format!("_summary takes true, false, text, data or count, not '{v}'"),
                    ))
                }
            },
            "_elements" => {
                shape.elements = Some(
                    v.split(',')
                        .map(|e| e.trim().to_owned())
                        .filter(|e| !e.is_empty())
                        .collect(),
                );
            }
            "_include" | "_include:iterate" | "_revinclude" | "_revinclude:iterate" => {
                let rev = k.starts_with("_revinclude");
                let inc = parse_include(&ctx, &k, &v, k.ends_with(":iterate"))?;
                if !rev && rt != "Resource" && inc.source != rt && !inc.iterate {
                    return Err(bad(&k, format!("'{v}' does not start with {rt}; use _include:iterate for resources included on the way")));
                }
                if rev {
                    shape.revincludes.push(inc)
                } else {
                    shape.includes.push(inc)
                }
                if shape.includes.len() + shape.revincludes.len() > MAX_INCLUDES {
                    return Err(bad(
                        &k,
                        format!(
                            "at most {MAX_INCLUDES} _include and _revinclude parameters per search"
                        ),
                    ));
                }
            }
            "_contained" | "_containedType" => {
                if v != "false" && strict {
                    return Err(bad(&k, format!("{k} is not supported")));
                }
            }
            _ => match query::parse(&ctx, rt, &k, &v, 0)? {
                Some(c) => plan.clauses.push(c),
                None if strict => {
                    return Err(bad(
                        &k,
                        format!(
                            "'{k}' is not a search parameter of {rt} that this server supports"
                        ),
                    ));
                }
                None => {
                    shape.ignored.push(k.clone());
                    continue;
                }
            },
        }
        if keep {
            shape.used.push((k, v));
        }
    }
    Ok(shape)
}

fn parse_sort(rt: &str, ctx: &query::Ctx<'_>, v: &str) -> Result<Vec<SortKey>> {
    let mut keys = Vec::new();
    for part in v.split(',').filter(|p| !p.is_empty()) {
        let (desc, code) = match part.strip_prefix('-') {
            Some(c) => (true, c),
            None => (false, part),
        };
        if code == "_id" || code == "_lastUpdated" {
            keys.push(SortKey {
                code: code.to_owned(),
                param: None,
                desc,
            });
            continue;
        }
        let def = fhirgate_fhirpath::parameter(rt, code).ok_or_else(|| {
            bad(
                "_sort",
                format!("'{code}' is not a search parameter of {rt}"),
            )
        })?;
        if crate::search::index::is_blind(rt, code) {
            return Err(bad("_sort", format!("'{code}' identifies a person and is stored only as keyed hashes; it cannot be sorted on")));
        }
        if matches!(def.param_type, ParamType::Composite | ParamType::Special) {
            return Err(bad(
                "_sort",
                format!(
                    "'{code}' is a {} parameter and cannot be sorted on",
                    def.param_type.as_str()
                ),
            ));
        }
        let pid = ctx
            .ids
            .get(rt, ctx.ids.storage_code(rt, code))
            .ok_or_else(|| bad("_sort", format!("'{code}' is not indexed")))?;
        keys.push(SortKey {
            code: code.to_owned(),
            param: Some((pid, def.param_type)),
            desc,
        });
    }
    Ok(keys)
}

fn parse_include(ctx: &query::Ctx<'_>, k: &str, v: &str, iterate: bool) -> Result<Include> {
    let parts: Vec<&str> = v.split(':').collect();
    let (source, code, target) = match parts.as_slice() {
        [s, c] => (*s, *c, None),
        [s, c, t] => (*s, *c, Some((*t).to_owned())),
        _ => return Err(bad(k, format!("'{v}' is not Type:parameter[:targetType]"))),
    };
    let def = fhirgate_fhirpath::parameter(source, code)
        .ok_or_else(|| bad(k, format!("'{code}' is not a search parameter of {source}")))?;
    if def.param_type != ParamType::Reference {
        return Err(bad(
            k,
            format!("'{code}' of {source} is not a reference parameter"),
        ));
    }
    if let Some(t) = &target {
        if !def.target.contains(t) {
            return Err(bad(
                k,
                format!("'{code}' of {source} cannot refer to a {t}"),
            ));
        }
    }
    let pid = ctx
        .ids
        .get(source, ctx.ids.storage_code(source, code))
        .ok_or_else(|| bad(k, format!("'{code}' is not indexed")))?;
    // `patient` is answered from `subject`'s rows: keep to its Patient targets.
    let target = target.or_else(|| {
        ctx.ids
            .is_alias(source, code)
            .then(|| def.target.first().cloned())
            .flatten()
    });
    Ok(Include {
        source: source.to_owned(),
        pid,
        target,
        iterate,
    })
}

/// What a search's cursors are bound to: the caller, the path and the parameters.
fn cursor_binding(policy: &Policy, path: &str, used: &[(String, String)]) -> Vec<u8> {
    let mut b = format!("{}\u{1f}{path}", policy.caller_key());
    for (k, v) in used {
        b.push('\u{1f}');
        b.push_str(k);
        b.push('=');
        b.push_str(v);
    }
    b.into_bytes()
}

/// Runs `plan` and answers with a searchset Bundle.
async fn respond(
    state: &AppState,
    policy: &Policy,
    plan: Plan,
    shape: Shape,
    path: &str,
    pairs: &[(String, String)],
    headers: &HeaderMap,
) -> Result<Response> {
    let fmt = negotiate(headers, pairs)?;
    let base = &state.fhir_base;
    let mut info = crate::audit::api::AuditInfo::default();
    // Cursors are sealed to the caller and the query: they name rows of this search only.
    let binding = cursor_binding(policy, path, &shape.used);
    let mut plan = plan;
    if let Some(text) = &shape.cursor {
        plan.cursor = Some(Cursor::open(&state.keys, text, &binding)?);
    }
    let self_link = |cursor: Option<&Cursor>| {
        let mut p = shape.used.clone();
        if let Some(c) = cursor {
            p.push(("_cursor".into(), c.seal(&state.keys, &binding)));
        }
        link(base, path, &p)
    };
    // `_count=0` asks for the total only, like `_summary=count` (R4 search §3.1.1.5.7).
    if shape.summary.as_deref() == Some("count") || plan.count == 0 {
        let mut bundle = crate::fhir::respond::bundle(
            "searchset",
            vec![json!({"relation": "self", "url": self_link(None)})],
            Vec::new(),
        );
        bundle["total"] = json!(exec::count(state, &plan, policy).await?);
        return format::resource_value(StatusCode::OK, fmt, &bundle);
    }
    let page = exec::page(state, &plan, policy).await?;
    let mut links = vec![json!({"relation": "self", "url": self_link(plan.cursor.as_ref())})];
    for (relation, more, row, direction) in [
        ("next", page.has_next, page.rows.last(), "n"),
        ("previous", page.has_prev, page.rows.first(), "p"),
    ] {
        if let (true, Some(row)) = (more, row) {
            let c = Cursor {
                d: direction.into(),
                k: row.keys.clone(),
                r: row.rid,
            };
            links.push(json!({"relation": relation, "url": self_link(Some(&c))}));
        }
    }
    // Includes, under the same access rules; `:iterate` follows included resources too.
    let mut included: Vec<Found> = Vec::new();
    if !page.rows.is_empty() {
        let mut seen: std::collections::HashSet<i64> = page.rows.iter().map(|f| f.rid).collect();
        let mut frontier: Vec<Found> = page.rows.clone();
        for round in 0..3 {
            let mut next = Vec::new();
            for (inc, rev) in shape
                .includes
                .iter()
                .map(|i| (i, false))
                .chain(shape.revincludes.iter().map(|i| (i, true)))
            {
                if round > 0 && !inc.iterate {
                    continue;
                }
                for f in exec::include(state, &frontier, inc, rev, policy).await? {
                    if seen.insert(f.rid) {
                        next.push(f);
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            included.extend(next.iter().cloned());
            frontier = next;
        }
        if shape.referenced {
            for f in exec::referenced(state, &page.rows, REFERENCED_TYPES, policy).await? {
                if seen.insert(f.rid) {
                    included.push(f);
                }
            }
        }
    }
    let mut rids: Vec<i64> = page.rows.iter().map(|f| f.rid).collect();
    let matched = rids.len();
    rids.extend(included.iter().map(|f| f.rid));
    let match_rids: std::collections::HashSet<i64> = rids[..matched].iter().copied().collect();
    let mut entries =
        visible_entries(state, &rids, page.fetched, &match_rids, &shape, &mut info).await?;
    if !shape.ignored.is_empty() {
        let oo = json!({"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "not-supported",
            "diagnostics": format!("ignored unknown search parameters: {}", shape.ignored.join(", ")), "expression": shape.ignored}]});
        entries.push(Entry::Value(
            json!({"resource": oo, "search": {"mode": "outcome"}}),
        ));
    }
    let mut bundle = crate::fhir::respond::bundle("searchset", links, Vec::new());
    if shape.total.is_some() {
        bundle["total"] = json!(exec::count(state, &plan, policy).await?);
    }
    let mut resp = searchset(fmt, bundle, entries)?;
    info.attach(&mut resp);
    Ok(resp)
}

/// The Bundle entries of `rids`, in order: decrypted (unless `known`), and shaped by
/// `_summary`/`_elements`; `matches` are `match` entries, the rest `include`. Every rid comes
/// from a query that carried the caller's policy, so all of them are the caller's to see.
async fn visible_entries(
    state: &AppState,
    rids: &[i64],
    known: Vec<(i64, storage::StoredVersion)>,
    matches: &std::collections::HashSet<i64>,
    shape: &Shape,
    info: &mut crate::audit::api::AuditInfo,
) -> Result<Vec<Entry>> {
    let mut have: std::collections::HashMap<i64, storage::StoredVersion> =
        known.into_iter().collect();
    let missing: Vec<i64> = rids
        .iter()
        .copied()
        .filter(|r| !have.contains_key(r))
        .collect();
    have.extend(storage::read_rids(state, &missing).await?);
    let versions: Vec<(i64, storage::StoredVersion)> = rids
        .iter()
        .filter_map(|r| have.remove(r).map(|v| (*r, v)))
        .collect();
    let mut entries = Vec::with_capacity(versions.len() + 1);
    let as_stored = shape.summary.is_none() && shape.elements.is_none();
    for (rid, v) in versions {
        let Some(body) = v.body else { continue };
        let mode = if matches.contains(&rid) {
            "match"
        } else {
            "include"
        };
        let full_url = format!("{}/{}/{}", state.fhir_base, v.resource_type, v.id);
        info.patient(v.compartment.as_deref());
        // Nothing to change: the stored body goes out as it is (as a read sends it).
        if as_stored {
            entries.push(Entry::Stored {
                full_url,
                body,
                mode,
            });
            continue;
        }
        let mut resource: Value = fhirgate_codec::parse_json(&body)?;
        shape_resource(
            &mut resource,
            shape.summary.as_deref(),
            shape.elements.as_deref(),
        );
        entries.push(Entry::Value(
            json!({"fullUrl": full_url, "resource": resource, "search": {"mode": mode}}),
        ));
    }
    Ok(entries)
}

/// A searchset entry: built here, or a stored resource to send as stored.
enum Entry {
    Value(Value),
    Stored {
        full_url: String,
        body: Vec<u8>,
        mode: &'static str,
    },
}

/// A searchset `bundle` with `entries`, in `fmt`. Stored bodies are written into the JSON as the
/// bytes they are, not parsed and written again (most of a search's own CPU time otherwise).
fn searchset(fmt: format::Format, mut bundle: Value, entries: Vec<Entry>) -> Result<Response> {
    let internal = |e: serde_json::Error| FhirError::Internal(e.into());
    if matches!(fmt, format::Format::Xml) {
        let mut values = Vec::with_capacity(entries.len());
        for e in entries {
            values.push(match e {
                Entry::Value(v) => v,
                Entry::Stored {
                    full_url,
                    body,
                    mode,
                } => json!({"fullUrl": full_url, "resource": fhirgate_codec::parse_json(&body)?,
                    "search": {"mode": mode}}),
            });
        }
        if !values.is_empty() {
            bundle["entry"] = Value::Array(values);
        }
        return format::resource_value(StatusCode::OK, fmt, &bundle);
    }
    let mut out = serde_json::to_vec(&bundle).map_err(internal)?;
    if !entries.is_empty() && out.pop() == Some(b'}') {
        out.extend_from_slice(b",\"entry\":[");
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            match e {
                Entry::Value(v) => serde_json::to_writer(&mut out, v).map_err(internal)?,
                Entry::Stored {
                    full_url,
                    body,
                    mode,
                } => {
                    out.extend_from_slice(b"{\"fullUrl\":");
                    serde_json::to_writer(&mut out, full_url).map_err(internal)?;
                    out.extend_from_slice(b",\"resource\":");
                    out.extend_from_slice(body);
                    out.extend_from_slice(b",\"search\":{\"mode\":\"");
                    out.extend_from_slice(mode.as_bytes());
                    out.extend_from_slice(b"\"}}");
                }
            }
        }
        out.extend_from_slice(b"]}");
    }
    format::resource_bytes(StatusCode::OK, fmt, out)
}

/// `_summary` and `_elements`: keep part of a resource and tag it SUBSETTED.
fn shape_resource(resource: &mut Value, summary: Option<&str>, elements: Option<&[String]>) {
    let Value::Object(obj) = resource else { return };
    let keep: Option<Vec<&str>> = match (summary, elements) {
        (Some("text"), _) => Some(vec!["text"]),
        (Some("true"), _) => None,
        (_, Some(list)) => Some(list.iter().map(String::as_str).collect()),
        _ => None,
    };
    let mut subsetted = false;
    match summary {
        Some("data") => subsetted |= obj.remove("text").is_some(),
        // Summary: the elements the R4 StructureDefinitions mark as summary (Σ).
        Some("true") => {
            let rt = obj
                .get("resourceType")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if !crate::fhir::summary::apply(&rt, obj, &mut subsetted) {
                for k in ["text", "contained", "extension", "modifierExtension"] {
                    subsetted |= obj.remove(k).is_some();
                }
            }
        }
        _ => {}
    }
    if let Some(keep) = keep {
        let before = obj.len();
        obj.retain(|k, _| {
            matches!(k.as_str(), "resourceType" | "id" | "meta") || keep.contains(&k.as_str())
        });
        subsetted |= obj.len() != before;
    }
    if subsetted {
        let meta = obj.entry("meta").or_insert_with(|| json!({}));
        if let Some(m) = meta.as_object_mut() {
            let tags = m.entry("tag").or_insert_with(|| json!([]));
            if let Some(t) = tags.as_array_mut() {
                t.push(json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}));
            }
        }
    }
}

/// `Patient/{id}/$everything` with `_since`, `_type` and `_count`, paged.
async fn everything(
    state: &AppState,
    policy: &Policy,
    id: String,
    pairs: Vec<(String, String)>,
    headers: &HeaderMap,
) -> Result<Response> {
    let mut plan = Plan {
        compartment: Some(id.clone()),
        count: DEFAULT_COUNT,
        ..Plan::default()
    };
    let mut shape = Shape::default();
    for (k, v) in &pairs {
        match k.as_str() {
            "_count" => plan.count = parse_count(v)?,
            "_cursor" => shape.cursor = Some(v.clone()),
            "_since" => {
                let t = chrono::DateTime::parse_from_rfc3339(v).map_err(|_| {
                    bad(
                        k,
                        format!("'{v}' is not an instant (e.g. 2024-01-01T00:00:00Z)"),
                    )
                })?;
                plan.since = Some(t.with_timezone(&chrono::Utc));
            }
            "_type" => {
                for t in v.split(',') {
                    let t = resource_type(t)
                        .map_err(|_| bad(k, format!("'{t}' in _type is not a resource type")))?;
                    plan.types.push(t.to_owned());
                }
            }
            "_format" => {}
            "start" | "end" if !prefer_strict(headers) => {
                shape.ignored.push(k.clone());
                continue;
            }
            _ => {
                return Err(bad(
                    k,
                    format!("'{k}' is not a parameter of $everything (use _since, _type, _count)"),
                ))
            }
        }
        if k != "_cursor" && k != "_format" {
            shape.used.push((k.clone(), v.clone()));
        }
    }
    // A patient the caller reaches nothing of answers as one that does not exist.
    let exists = storage::read_current(state, "Patient", &id)
        .await?
        .is_some_and(|v| v.body.is_some());
    let visible = exists && policy.reaches_patient(state, &id).await?;
    if !visible {
        return Err(FhirError::not_found("Patient", &id));
    }
    shape.referenced = true;
    let path = format!("Patient/{id}/$everything");
    respond(state, policy, plan, shape, &path, &pairs, headers).await
}

/// The Observation search part of an operation's parameters (everything but `skip`).
fn observation_plan(state: &AppState, pairs: &[(String, String)], skip: &[&str]) -> Result<Plan> {
    let ctx = exec::ctx(state);
    let mut plan = Plan {
        types: vec!["Observation".into()],
        ..Plan::default()
    };
    for (k, v) in pairs {
        if skip.contains(&k.as_str()) || k == "_format" {
            continue;
        }
        match query::parse(&ctx, "Observation", k, v, 0)? {
            Some(c) => plan.clauses.push(c),
            None => {
                return Err(bad(
                    k,
                    format!("'{k}' is not a search parameter of Observation"),
                ))
            }
        }
    }
    Ok(plan)
}

/// `Observation/$lastn?patient=…&category=…&code=…&max=N`: the N most recent Observations per code.
async fn lastn(
    state: &AppState,
    policy: &Policy,
    pairs: Vec<(String, String)>,
    headers: &HeaderMap,
) -> Result<Response> {
    let mut max: i64 = 1;
    for (k, v) in &pairs {
        if k == "max" {
            max = v
                .parse()
                .ok()
                .filter(|m| (1..=1000).contains(m))
                .ok_or_else(|| {
                    bad(
                        "max",
                        format!("max must be a whole number from 1 to 1000, not '{v}'"),
                    )
                })?;
        }
    }
    let plan = observation_plan(state, &pairs, &["max"])?;
    let rids = exec::lastn(state, &plan, policy, max).await?;
    let plan_rows: Vec<Found> = rids
        .into_iter()
        .map(|rid| Found {
            rid,
            resource_type: "Observation".into(),
            id: String::new(),
            keys: Vec::new(),
        })
        .collect();
    let shape = Shape {
        used: pairs
            .iter()
            .filter(|(k, _)| k != "_format")
            .cloned()
            .collect(),
        ..Shape::default()
    };
    rows_bundle(
        state,
        plan_rows,
        shape,
        "Observation/$lastn",
        &pairs,
        headers,
    )
    .await
}

/// A searchset Bundle of given rows (no paging).
async fn rows_bundle(
    state: &AppState,
    rows: Vec<Found>,
    shape: Shape,
    path: &str,
    pairs: &[(String, String)],
    headers: &HeaderMap,
) -> Result<Response> {
    let fmt = negotiate(headers, pairs)?;
    let rids: Vec<i64> = rows.iter().map(|f| f.rid).collect();
    let matches: std::collections::HashSet<i64> = rids.iter().copied().collect();
    let mut info = crate::audit::api::AuditInfo::default();
    let entries = visible_entries(state, &rids, Vec::new(), &matches, &shape, &mut info).await?;
    let links = vec![json!({"relation": "self", "url": link(&state.fhir_base, path, &shape.used)})];
    let bundle = crate::fhir::respond::bundle("searchset", links, Vec::new());
    let mut resp = searchset(fmt, bundle, entries)?;
    info.attach(&mut resp);
    Ok(resp)
}

/// `Observation/$stats`: count, minimum, maximum and average of `value-quantity` per code, over
/// Observations matching the search parameters (`patient`, `code`, `date=ge…&date=lt…`), or
/// `period=start/end`.
async fn stats(
    state: &AppState,
    policy: &Policy,
    pairs: Vec<(String, String)>,
    headers: &HeaderMap,
) -> Result<Response> {
    let fmt = negotiate(headers, &pairs)?;
    let mut wanted: Vec<String> = vec![
        "count".into(),
        "minimum".into(),
        "maximum".into(),
        "average".into(),
    ];
    let mut extra: Vec<(String, String)> = Vec::new();
    for (k, v) in &pairs {
        match k.as_str() {
            "statistic" => {
                wanted = v.split(',').map(str::to_owned).collect();
                if let Some(bad_one) = wanted
                    .iter()
                    .find(|s| !matches!(s.as_str(), "count" | "minimum" | "maximum" | "average"))
                {
                    return Err(bad("statistic", format!("statistic '{bad_one}' is not supported (count, minimum, maximum, average)")));
                }
            }
            "period" => {
                let (start, end) = v.split_once('/').ok_or_else(|| {
                    bad(
                        "period",
                        "period takes start/end, e.g. 2024-01-01/2024-02-01",
                    )
                })?;
                if !start.is_empty() {
                    extra.push(("date".into(), format!("ge{start}")));
                }
                if !end.is_empty() {
                    extra.push(("date".into(), format!("le{end}")));
                }
            }
            "subject" => extra.push(("subject".into(), v.clone())),
            _ => {}
        }
    }
    let mut all: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "statistic" | "period" | "subject"))
        .cloned()
        .collect();
    all.extend(extra);
    let plan = observation_plan(state, &all, &[])?;
    let rows = exec::stats(state, &plan, policy).await?;
    let mut params = Vec::new();
    for r in rows {
        let mut components = Vec::new();
        let q = |v: f64| {
            let mut x = json!({"value": v});
            if let Some(u) = &r.unit {
                x["unit"] = json!(u);
                x["system"] = json!("http://unitsofmeasure.org");
                x["code"] = json!(u);
            }
            x
        };
        for s in &wanted {
            let value = match s.as_str() {
                "count" => json!({"valueQuantity": {"value": r.count}}),
                "minimum" => json!({"valueQuantity": q(r.min)}),
                "maximum" => json!({"valueQuantity": q(r.max)}),
                _ => json!({"valueQuantity": q(r.avg)}),
            };
            let mut c = json!({"code": {"coding": [{"system": "http://hl7.org/fhir/observation-statistics", "code": s}]}});
            if let (Some(o), Value::Object(v)) = (c.as_object_mut(), value) {
                o.extend(v);
            }
            components.push(c);
        }
        let mut coding = json!({"code": r.code});
        if let Some(s) = &r.system {
            coding["system"] = json!(s);
        }
        let obs = json!({"resourceType": "Observation", "status": "final", "code": {"coding": [coding]}, "component": components});
        params.push(json!({"name": "statistics", "resource": obs}));
    }
    let out = json!({"resourceType": "Parameters", "parameter": params});
    format::resource_value(StatusCode::OK, fmt, &out)
}
