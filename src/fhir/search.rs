//! Type-level search (<https://hl7.org/fhir/R4/search.html>) over the parameters the store indexes
//! today: `_id` and `identifier` (blind-indexed), with `_count`. Unknown parameters follow
//! `Prefer: handling` (strict → 400; lenient → ignored and reported in the Bundle).

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Value};

use crate::auth::guard::Principal;
use crate::auth::scopes::Permission;
use crate::error::{FhirError, Result};
use crate::fhir::body::read_limited;
use crate::fhir::format::{self, negotiate, query_pairs};
use crate::fhir::history::{link, parse_count, DEFAULT_COUNT};
use crate::fhir::resource_type;
use crate::fhir::respond::prefer_strict;
use crate::state::AppState;
use crate::storage::{self, conditional};

/// `GET [base]/{type}?params`.
pub async fn search_type(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(rt): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    let rt = resource_type(&rt)?;
    run(&state, &principal, rt, query_pairs(q.as_deref()), &headers).await
}

/// `POST [base]/{type}/_search` with an `application/x-www-form-urlencoded` body.
pub async fn search_type_post(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(rt): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response> {
    let rt = resource_type(&rt)?;
    let form = read_limited(body, state.max_body_bytes).await?;
    let mut pairs = query_pairs(q.as_deref());
    pairs.extend(query_pairs(Some(&String::from_utf8_lossy(&form))));
    run(&state, &principal, rt, pairs, &headers).await
}

async fn run(
    state: &AppState,
    principal: &Principal,
    rt: &str,
    pairs: Vec<(String, String)>,
    headers: &HeaderMap,
) -> Result<Response> {
    if rt == "AuditEvent" {
        return crate::audit::api::search(state, principal, pairs, headers).await;
    }
    let fmt = negotiate(headers, &pairs)?;
    let strict = prefer_strict(headers);
    let mut count = DEFAULT_COUNT;
    let mut after: Option<String> = None;
    let mut criteria = Vec::new();
    let mut ignored = Vec::new();
    for (k, v) in &pairs {
        match k.as_str() {
            "_count" => count = parse_count(v)?,
            "_cursor" => after = Some(v.clone()),
            "_format" => {}
            _ if conditional::SUPPORTED.contains(&k.as_str()) => {
                criteria.push((k.clone(), v.clone()))
            }
            _ if strict => {
                return Err(FhirError::bad_request(
                    k,
                    format!("search parameter '{k}' is not supported for {rt}"),
                ));
            }
            _ => ignored.push(k.clone()),
        }
    }
    // A partner sees only rows of (patient, class) pairs its patients' Consents permit, and
    // Consents that name it; the filter is part of the SQL.
    let is_partner = crate::fhir::consent::partner(principal).is_some();
    if is_partner && !criteria.is_empty() {
        return Err(FhirError::Forbidden(
            "partners search by patient consent without further criteria for now".into(),
        ));
    }
    let grants = crate::fhir::consent::grants(state, principal).await?;
    let (g_patients, g_classes, g_org) = match &grants {
        Some(g) => (
            Some(g.patients.clone()),
            Some(g.classes.clone()),
            Some(g.organization.clone()),
        ),
        None => (None, None, None),
    };
    let consent_search = rt == "Consent";
    let ids: Vec<String> = if criteria.is_empty() {
        // language=PostgreSQL
        sqlx::query_scalar(
            r#"select id from resource
               where resource_type = $1 and not deleted and ($2::text is null or id > $2)
                 and ($4::text is null or compartment is null or compartment = $4)
                 and ($5::text[] is null or ($8 and id in
                        (select consent_id from consent_party where organizations @> array[$7::text]))
                      or (not $8 and exists (select 1 from unnest($5::text[], $6::text[]) as g(p, c)
                                             where g.p = resource.compartment and g.c = any(resource.classes))))
               order by id limit $3"#,
        )
        .bind(rt)
        .bind(&after)
        .bind(count + 1)
        .bind(principal.owner())
        .bind(&g_patients)
        .bind(&g_classes)
        .bind(&g_org)
        .bind(consent_search)
        .fetch_all(&state.db)
        .await?
    } else {
        let text = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&criteria)
            .finish();
        let parsed = conditional::Criteria::parse(&text)?;
        let mut conn = state.db.acquire().await?;
        let mut all = parsed.matches(&mut conn, &state.keys, rt).await?;
        all.retain(|i| after.as_ref().is_none_or(|a| i > a));
        all.truncate(count as usize + 1);
        all
    };
    let more = ids.len() as i64 > count;
    let page: Vec<String> = ids.into_iter().take(count as usize).collect();
    let found = storage::read_many(state, rt, &page).await?;
    let base = &state.fhir_base;
    let used: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| !ignored.contains(k) && k != "_cursor")
        .cloned()
        .collect();
    let mut links = vec![json!({"relation": "self", "url": link(base, rt, &used)})];
    if more {
        if let Some(last) = page.last() {
            let mut next = used;
            next.push(("_cursor".into(), last.clone()));
            links.push(json!({"relation": "next", "url": link(base, rt, &next)}));
        }
    }
    let mut entries = Vec::with_capacity(found.len() + 1);
    let mut info = crate::audit::api::AuditInfo::default();
    for v in &found {
        // A patient token finds nothing outside its own compartment.
        if !principal.reaches(v.compartment.as_deref()) {
            continue;
        }
        let resource: Value = match &v.body {
            Some(b) => fhirgate_codec::parse_json(b)?,
            None => continue,
        };
        // A partner: the codes of each result are checked against the Consents as well.
        if let (Some(g), false) = (&grants, consent_search) {
            if !g.permits(rt, v.compartment.as_deref(), &resource) {
                continue;
            }
        }
        // Granular scopes: what the token may not see is simply not in the results.
        if !principal.sees(rt, Permission::Search, &resource) {
            continue;
        }
        info.patient(v.compartment.as_deref());
        entries.push(json!({"fullUrl": format!("{base}/{rt}/{}", v.id), "resource": resource, "search": {"mode": "match"}}));
    }
    if !ignored.is_empty() {
        let oo = json!({"resourceType": "OperationOutcome", "issue": [{"severity": "warning", "code": "not-supported",
            "diagnostics": format!("ignored unknown search parameters: {}", ignored.join(", ")), "expression": ignored}]});
        entries.push(json!({"resource": oo, "search": {"mode": "outcome"}}));
    }
    let bundle = crate::fhir::respond::bundle("searchset", links, entries);
    let mut resp = format::resource_value(StatusCode::OK, fmt, &bundle)?;
    info.attach(&mut resp);
    Ok(resp)
}
