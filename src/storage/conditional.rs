//! Matching for conditional operations (`If-None-Exist`, conditional update, conditional
//! references in transactions; <https://hl7.org/fhir/R4/http.html#ccreate>), over the identifier
//! blind index and ids. The full search engine extends this set of parameters.

use serde_json::Value;
use sqlx::PgConnection;

use crate::crypto::Keyring;
use crate::error::{FhirError, Result};

/// Parameters conditional operations understand.
pub const SUPPORTED: &[&str] = &["_id", "identifier"];

/// The blind hashes stored for each `Resource.identifier` of `resource`, so that `system|value`,
/// `|value` (no system), `value` (any system) and `system|` all find it.
pub fn identifier_hashes(keys: &Keyring, rt: &str, resource: &Value) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let list = match resource.get("identifier") {
        Some(Value::Array(a)) => a.iter().collect::<Vec<_>>(),
        Some(v @ Value::Object(_)) => vec![v],
        _ => return out,
    };
    for ident in list {
        let system = ident.get("system").and_then(Value::as_str);
        let Some(value) = ident.get("value").and_then(Value::as_str) else {
            if let Some(s) = system {
                out.push(hash(keys, rt, Some(s), None));
            }
            continue;
        };
        out.push(hash(keys, rt, Some(system.unwrap_or("")), Some(value)));
        out.push(hash(keys, rt, None, Some(value)));
        if let Some(s) = system {
            out.push(hash(keys, rt, Some(s), None));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// `system`: `Some("")` = explicitly no system, `None` = any system; `value`: `None` = any value.
fn hash(keys: &Keyring, rt: &str, system: Option<&str>, value: Option<&str>) -> Vec<u8> {
    let s = system.map_or(&b"\x01*"[..], str::as_bytes);
    let v = value.map_or(&b"\x01*"[..], str::as_bytes);
    keys.blind(&[b"identifier", rt.as_bytes(), s, v])
}

/// Parsed criteria: the query string of a conditional request.
#[derive(Debug, Clone)]
pub struct Criteria {
    params: Vec<(String, String)>,
}

impl Criteria {
    /// Parses `a=b&c=d`; refuses parameters we cannot match on (naming them) and an empty query.
    pub fn parse(query: &str) -> Result<Self> {
        let mut params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if params.is_empty() {
            return Err(FhirError::bad_request(
                "criteria",
                "a conditional operation needs search criteria",
            ));
        }
        for (k, v) in &params {
            if !SUPPORTED.contains(&k.as_str()) {
                return Err(FhirError::bad_request(
                    k,
                    format!("search parameter '{k}' is not supported in conditional operations (supported: {})", SUPPORTED.join(", ")),
                ));
            }
            if v.is_empty() {
                return Err(FhirError::bad_request(
                    k,
                    format!("search parameter '{k}' has no value"),
                ));
            }
        }
        params.sort();
        Ok(Self { params })
    }

    /// A blind, canonical fingerprint of the criteria (the identifiers inside are PHI).
    pub fn fingerprint(&self, keys: &Keyring, rt: &str) -> Vec<u8> {
        let mut parts: Vec<&[u8]> = vec![b"criteria", rt.as_bytes()];
        for (k, v) in &self.params {
            parts.push(k.as_bytes());
            parts.push(v.as_bytes());
        }
        keys.blind(&parts)
    }

    /// Ids of current, non-deleted `rt` resources matching every parameter (OR within commas).
    pub async fn matches(
        &self,
        conn: &mut PgConnection,
        keys: &Keyring,
        rt: &str,
    ) -> Result<Vec<String>> {
        let mut result: Option<Vec<String>> = None;
        for (name, value) in &self.params {
            let alternatives: Vec<&str> = value.split(',').collect();
            let ids: Vec<String> = match name.as_str() {
                "_id" => {
                    let wanted: Vec<String> =
                        alternatives.iter().map(|s| (*s).to_owned()).collect();
                    // language=PostgreSQL
                    sqlx::query_scalar("select id from resource where resource_type = $1 and id = any($2) and not deleted order by id")
                        .bind(rt)
                        .bind(&wanted)
                        .fetch_all(&mut *conn)
                        .await?
                }
                _ => {
                    let hashes: Vec<Vec<u8>> = alternatives
                        .iter()
                        .map(|a| token_hash(keys, rt, a))
                        .collect();
                    // language=PostgreSQL
                    sqlx::query_scalar(
                        "select distinct id from resource_identifier where resource_type = $1 and hash = any($2) order by id",
                    )
                    .bind(rt)
                    .bind(&hashes)
                    .fetch_all(&mut *conn)
                    .await?
                }
            };
            result = Some(match result {
                None => ids,
                Some(prev) => prev.into_iter().filter(|i| ids.contains(i)).collect(),
            });
        }
        Ok(result.unwrap_or_default())
    }
}

/// Token syntax for identifiers: `system|value`, `|value`, `value`, `system|`.
fn token_hash(keys: &Keyring, rt: &str, token: &str) -> Vec<u8> {
    match token.split_once('|') {
        Some((system, "")) => hash(keys, rt, Some(system), None),
        Some((system, value)) => hash(keys, rt, Some(system), Some(value)),
        None => hash(keys, rt, None, Some(token)),
    }
}

/// Outcome of [`claim_create`].
#[derive(Debug)]
pub enum Claim {
    /// We hold the criteria: create the resource with the id we proposed.
    Create,
    /// Another request created a resource for the same criteria: answer with it.
    Existing(String),
}

/// Takes the conditional-create guard for `(rt, criteria)` with `id`. The primary key of
/// `conditional_create` makes concurrent creators with the same criteria agree on one resource:
/// a second inserter waits for the first to commit and then sees the conflict.
pub async fn claim_create(
    conn: &mut PgConnection,
    keys: &Keyring,
    rt: &str,
    criteria: &Criteria,
    id: &str,
) -> Result<Claim> {
    let fp = criteria.fingerprint(keys, rt);
    // language=PostgreSQL
    let won: Option<String> = sqlx::query_scalar(
        "insert into conditional_create (resource_type, criteria, id) values ($1, $2, $3) on conflict do nothing returning id",
    )
    .bind(rt)
    .bind(&fp)
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    if won.is_some() {
        return Ok(Claim::Create);
    }
    // language=PostgreSQL
    let holder: String = sqlx::query_scalar(
        "select id from conditional_create where resource_type = $1 and criteria = $2",
    )
    .bind(rt)
    .bind(&fp)
    .fetch_one(&mut *conn)
    .await?;
    // The holder may since have been deleted or changed so that it no longer matches: then the
    // guard is stale and we take it over (compare-and-set on the old holder).
    if criteria.matches(conn, keys, rt).await?.contains(&holder) {
        return Ok(Claim::Existing(holder));
    }
    // language=PostgreSQL
    let taken = sqlx::query("update conditional_create set id = $4, created_at = now() where resource_type = $1 and criteria = $2 and id = $3")
        .bind(rt)
        .bind(&fp)
        .bind(&holder)
        .bind(id)
        .execute(&mut *conn)
        .await?;
    if taken.rows_affected() == 1 {
        Ok(Claim::Create)
    } else {
        Err(FhirError::Conflict(
            "a concurrent conditional create is in progress; retry".into(),
        ))
    }
}
