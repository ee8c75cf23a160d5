//! Operations invoked by POST (<https://hl7.org/fhir/R4/operations.html#request>):
//! `POST [base]/Patient/{id}/$everything`, `POST [base]/Observation/$lastn` and
//! `POST [base]/Observation/$stats`. The body is a `Parameters` resource (JSON or XML), or a
//! form (`application/x-www-form-urlencoded`), or empty. Its parameters join those of the URL and
//! the operation runs exactly as its GET form does, under the same access policy.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::Extension;
use serde_json::Value;

use crate::access::Policy;
use crate::error::{FhirError, Result};
use crate::fhir::body::{body_format, read_limited};
use crate::fhir::format::{query_pairs, Format};
use crate::state::AppState;

/// `POST [base]/{type}/{id}`: a type-level operation when `{id}` is `$name`; else 405, as a
/// POST to an instance is not an interaction.
pub async fn type_level(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    Path((rt, op)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response> {
    if !op.starts_with('$') {
        return Err(FhirError::MethodNotAllowed(
            "POST to an instance is not a FHIR interaction; use PUT to update".into(),
        ));
    }
    let rt = crate::fhir::resource_type(&rt)?;
    let (pairs, sent) = parameters(&state, q.as_deref(), &headers, body).await?;
    let resp =
        crate::fhir::search::type_operation_with(&state, &policy, rt, &op, pairs, &headers).await?;
    Ok(recorded(resp, sent))
}

/// `POST [base]/{type}/{id}/{op}`: an instance-level operation (`Patient/{id}/$everything`).
pub async fn instance_level(
    State(state): State<AppState>,
    Extension(policy): Extension<Arc<Policy>>,
    Path((rt, id, op)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response> {
    if !op.starts_with('$') {
        return Err(FhirError::MethodNotAllowed(format!(
            "POST is not allowed on {rt}/{{id}}/{op}; search with GET"
        )));
    }
    let rt = crate::fhir::resource_type(&rt)?;
    let (pairs, sent) = parameters(&state, q.as_deref(), &headers, body).await?;
    let resp = crate::fhir::search::instance_operation_with(
        &state, &policy, rt, &id, &op, pairs, &headers,
    )
    .await?;
    Ok(recorded(resp, sent))
}

/// The audit event records parameters sent in the body as if they had been in the URL.
pub(crate) fn recorded(mut resp: Response, sent: Option<String>) -> Response {
    if let Some(sent) = sent {
        let mut info = resp
            .extensions_mut()
            .remove::<crate::audit::api::AuditInfo>()
            .unwrap_or_default();
        info.query = Some(sent);
        info.attach(&mut resp);
    }
    resp
}

/// The URL's parameters followed by the body's, and the body's as a query string (for the
/// audit event) when it had any.
async fn parameters(
    state: &AppState,
    query: Option<&str>,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<(Vec<(String, String)>, Option<String>)> {
    let mut pairs = query_pairs(query);
    let bytes = read_limited(body, state.max_body_bytes).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok((pairs, None));
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| {
            t.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        });
    let from_body = if form {
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| FhirError::bad_request("body", "the form is not UTF-8"))?;
        query_pairs(Some(text))
    } else {
        let value = match body_format(headers)? {
            Format::Json => fhirgate_codec::parse_json(&bytes)?,
            Format::Xml => fhirgate_codec::xml_to_json(&bytes)?,
        };
        from_parameters(&value)?
    };
    let sent = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(from_body.iter())
        .finish();
    pairs.extend(from_body);
    Ok((pairs, Some(sent)))
}

/// A `Parameters` resource as name/value pairs in search syntax. Only primitive values and
/// references, codings and codeable concepts (each coding as `system|code`) have one; anything
/// else (`resource`, `part`, a Quantity, …) is refused by name.
pub fn from_parameters(value: &Value) -> Result<Vec<(String, String)>> {
    if value.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(FhirError::bad_request(
            "resourceType",
            "an operation's body must be a Parameters resource (or a form)",
        ));
    }
    let mut out = Vec::new();
    for (i, p) in value["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let at = format!("Parameters.parameter[{i}]");
        let name = p["name"].as_str().ok_or_else(|| {
            FhirError::bad_request(&format!("{at}.name"), "a parameter needs a name")
        })?;
        let Some(obj) = p.as_object() else { continue };
        let Some((key, v)) = obj.iter().find(|(k, _)| k.starts_with("value")) else {
            return Err(FhirError::bad_request(
                &at,
                format!(
                    "parameter '{name}' has no value[x]; this operation takes simple values only"
                ),
            ));
        };
        let text = match (key.as_str(), v) {
            (_, Value::String(s)) => s.clone(),
            (_, Value::Bool(b)) => b.to_string(),
            (_, Value::Number(n)) => n.to_string(),
            ("valueReference", r) => r["reference"]
                .as_str()
                .ok_or_else(|| {
                    FhirError::bad_request(&format!("{at}.valueReference"), "a literal reference is needed")
                })?
                .to_owned(),
            ("valueCoding", c) => coding(c),
            ("valueCodeableConcept", cc) => cc["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .map(coding)
                .collect::<Vec<_>>()
                .join(","),
            _ => {
                return Err(FhirError::bad_request(
                    &format!("{at}.{key}"),
                    format!("parameter '{name}': a {key} has no search form; send a primitive, a reference or a coding"),
                ))
            }
        };
        out.push((name.to_owned(), text));
    }
    Ok(out)
}

fn coding(c: &Value) -> String {
    match (c["system"].as_str(), c["code"].as_str()) {
        (Some(s), Some(code)) => format!("{s}|{code}"),
        (None, Some(code)) => code.to_owned(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::from_parameters;
    use serde_json::json;

    #[test]
    fn parameters_become_search_pairs() {
        let p = json!({"resourceType": "Parameters", "parameter": [
            {"name": "patient", "valueReference": {"reference": "Patient/p1"}},
            {"name": "code", "valueCoding": {"system": "http://loinc.org", "code": "8867-4"}},
            {"name": "category", "valueCodeableConcept": {"coding": [{"system": "s", "code": "a"}, {"code": "b"}]}},
            {"name": "max", "valueInteger": 3},
            {"name": "_since", "valueInstant": "2024-01-01T00:00:00Z"},
            {"name": "flag", "valueBoolean": true}
        ]});
        assert_eq!(
            from_parameters(&p).expect("pairs"),
            [
                ("patient", "Patient/p1"),
                ("code", "http://loinc.org|8867-4"),
                ("category", "s|a,b"),
                ("max", "3"),
                ("_since", "2024-01-01T00:00:00Z"),
                ("flag", "true"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
        );
    }

    #[test]
    fn other_bodies_and_values_are_refused_by_name() {
        assert!(from_parameters(&json!({"resourceType": "Patient"})).is_err());
        let e = from_parameters(&json!({"resourceType": "Parameters", "parameter": [
            {"name": "x", "valueQuantity": {"value": 1}}]}))
        .expect_err("quantity");
        assert!(e.to_string().contains("valueQuantity"), "{e}");
        let e = from_parameters(&json!({"resourceType": "Parameters", "parameter": [
            {"name": "x", "part": []}]}))
        .expect_err("part");
        assert!(e.to_string().contains("'x'"), "{e}");
    }
}
