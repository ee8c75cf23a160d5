//! Matching for conditional operations (`If-None-Exist`, conditional update, conditional
//! references in transactions; <https://hl7.org/fhir/R4/http.html#ccreate>), over the identifier
//! blind index and ids. The full search engine extends this set of parameters.

use serde_json::Value;
use sqlx::{PgConnection, Postgres, QueryBuilder};

use crate::access::Policy;
use crate::auth::scopes::Permission;

use crate::crypto::Keyring;
use crate::error::{FhirError, Result};

/// Parameters conditional operations understand.
pub const SUPPORTED: &[&str] = &["_id", "identifier"];

/// The blind `(value, system)` hashes of each `Resource.identifier` of `resource`. An identifier
/// without a system gets the hash of the empty system, one without a value the hash of "no value",
/// so `system|value`, `|value`, `value` and `system|` can all be answered (see [`Token`]).
pub fn identifier_hashes(keys: &Keyring, rt: &str, resource: &Value) -> Vec<(Vec<u8>, Vec<u8>)> {
    let list = match resource.get("identifier") {
        Some(Value::Array(a)) => a.iter().collect::<Vec<_>>(),
        Some(v @ Value::Object(_)) => vec![v],
        _ => return Vec::new(),
    };
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = list
        .into_iter()
        .filter_map(|ident| {
            let system = ident.get("system").and_then(Value::as_str);
            let value = ident.get("value").and_then(Value::as_str);
            if system.is_none() && value.is_none() {
                return None;
            }
            Some((
                value_hash(keys, rt, value),
                system_hash(keys, rt, system.unwrap_or("")),
            ))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `None` = an identifier without a value.
fn value_hash(keys: &Keyring, rt: &str, value: Option<&str>) -> Vec<u8> {
    match value {
        Some(v) => keys.blind(&[b"identifier-value", rt.as_bytes(), v.as_bytes()]),
        None => keys.blind(&[b"identifier-no-value", rt.as_bytes()]),
    }
}

/// `""` = no system.
fn system_hash(keys: &Keyring, rt: &str, system: &str) -> Vec<u8> {
    keys.blind(&[b"identifier-system", rt.as_bytes(), system.as_bytes()])
}

/// One alternative of an `identifier` search value, as blind hashes: `system|value`, `|value`
/// (no system), `value` (any system) or `system|` (any value).
#[derive(Debug)]
struct Token {
    value: Option<Vec<u8>>,
    system: Option<Vec<u8>>,
}

impl Token {
    fn parse(keys: &Keyring, rt: &str, token: &str) -> Self {
        match token.split_once('|') {
            Some((system, "")) => Self {
                value: None,
                system: Some(system_hash(keys, rt, system)),
            },
            Some((system, value)) => Self {
                value: Some(value_hash(keys, rt, Some(value))),
                system: Some(system_hash(keys, rt, system)),
            },
            None => Self {
                value: Some(value_hash(keys, rt, Some(token))),
                system: None,
            },
        }
    }
}

/// The blind `(value, system)` hashes an `identifier` search value matches: `value` (any
/// system), `system|value`, `|value` (no system) or `system|` (any value).
pub fn identifier_token(
    keys: &Keyring,
    rt: &str,
    token: &str,
) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let t = Token::parse(keys, rt, token);
    (t.value, t.system)
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
            if fhirgate_codec::has_control_character(v) {
                return Err(FhirError::bad_request(
                    k,
                    "the search parameter contains a control character (only tab, CR and LF are allowed)",
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

    /// A blind, canonical fingerprint of the criteria (the identifiers inside are PHI), for
    /// the caller: callers who see different rows hold different guards.
    pub fn fingerprint(&self, keys: &Keyring, rt: &str, policy: &Policy) -> Vec<u8> {
        let caller = if policy.sees_everything() {
            ""
        } else {
            policy.caller_key()
        };
        let mut parts: Vec<&[u8]> = vec![b"criteria", rt.as_bytes(), caller.as_bytes()];
        for (k, v) in &self.params {
            parts.push(k.as_bytes());
            parts.push(v.as_bytes());
        }
        keys.blind(&parts)
    }

    /// Ids of current, non-deleted `rt` resources that the caller sees and that match every
    /// parameter (OR within commas). What the caller may not see matches nothing.
    pub async fn matches(
        &self,
        conn: &mut PgConnection,
        keys: &Keyring,
        rt: &str,
        policy: &Policy,
    ) -> Result<Vec<String>> {
        let mut result: Option<Vec<String>> = None;
        for (name, value) in &self.params {
            let alternatives: Vec<&str> = value.split(',').collect();
            let ids: Vec<String> = match name.as_str() {
                "_id" => {
                    let wanted: Vec<String> =
                        alternatives.iter().map(|s| (*s).to_owned()).collect();
                    let mut qb: QueryBuilder<'static, Postgres> = QueryBuilder::new(
                        "select r.id from resource r where not r.deleted and r.resource_type = ",
                    );
                    qb.push_bind(rt.to_owned());
                    qb.push(" and r.id = any(");
                    qb.push_bind(wanted);
                    qb.push(")");
                    policy.restrict(&mut qb, "r", Permission::Search, None, None);
                    qb.push(" order by r.id");
                    qb.build_query_scalar()
                        .persistent(false)
                        .fetch_all(&mut *conn)
                        .await?
                }
                _ => {
                    let mut ids = Vec::new();
                    for alt in &alternatives {
                        ids.extend(
                            identifier_matches(conn, rt, &Token::parse(keys, rt, alt), policy)
                                .await?,
                        );
                    }
                    ids.sort();
                    ids.dedup();
                    ids
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

impl Criteria {
    /// Whether a resource not stored yet (an earlier entry of the same transaction) with id `id`
    /// matches every parameter, by the same rules as [`Criteria::matches`].
    pub fn matches_resource(&self, id: &str, resource: &Value) -> bool {
        let identifiers: Vec<(Option<&str>, Option<&str>)> = match resource.get("identifier") {
            Some(Value::Array(a)) => a.iter().collect::<Vec<_>>(),
            Some(v @ Value::Object(_)) => vec![v],
            _ => Vec::new(),
        }
        .into_iter()
        .map(|i| {
            (
                i.get("system").and_then(Value::as_str),
                i.get("value").and_then(Value::as_str),
            )
        })
        .collect();
        self.params.iter().all(|(name, value)| {
            value.split(',').any(|alt| match name.as_str() {
                "_id" => alt == id,
                _ => identifiers
                    .iter()
                    .any(|(system, v)| match alt.split_once('|') {
                        Some((sys, "")) => *system == Some(sys),
                        Some(("", val)) => system.is_none() && *v == Some(val),
                        Some((sys, val)) => *system == Some(sys) && *v == Some(val),
                        None => *v == Some(alt),
                    }),
            })
        })
    }
}

/// Current, non-deleted resources the caller sees with an identifier matching `t`. The index
/// rows of old versions stay behind; the join on the current version ignores them.
async fn identifier_matches(
    conn: &mut PgConnection,
    rt: &str,
    t: &Token,
    policy: &Policy,
) -> Result<Vec<String>> {
    let mut qb: QueryBuilder<'static, Postgres> = QueryBuilder::new(
        "select distinct i.id from resource_identifier i join resource r on r.resource_type = i.resource_type and r.id = i.id and r.version_id = i.version_id where not r.deleted and i.resource_type = ",
    );
    qb.push_bind(rt.to_owned());
    match &t.value {
        Some(v) => {
            qb.push(" and i.value_hash = ");
            qb.push_bind(v.clone());
            if let Some(sys) = &t.system {
                qb.push(" and i.system_hash = ");
                qb.push_bind(sys.clone());
            }
        }
        None => {
            qb.push(" and i.system_hash = ");
            qb.push_bind(t.system.clone().unwrap_or_default());
        }
    }
    policy.restrict(&mut qb, "r", Permission::Search, None, None);
    Ok(qb
        .build_query_scalar()
        .persistent(false)
        .fetch_all(&mut *conn)
        .await?)
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
    policy: &Policy,
) -> Result<Claim> {
    let fp = criteria.fingerprint(keys, rt, policy);
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
    if criteria
        .matches(conn, keys, rt, policy)
        .await?
        .contains(&holder)
    {
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

#[cfg(test)]
mod tests {
    use super::Criteria;
    use serde_json::json;

    #[test]
    fn unstored_resources_match_by_the_rules_of_the_index() {
        let r = json!({"resourceType": "Patient", "identifier": [
            {"system": "urn:a", "value": "1"}, {"value": "2"}]});
        for (q, want) in [
            ("identifier=urn:a|1", true),
            ("identifier=urn:a|2", false),
            ("identifier=1", true),
            ("identifier=|2", true),
            ("identifier=|1", false),
            ("identifier=urn:a|", true),
            ("identifier=urn:b|", false),
            ("identifier=urn:b|9,urn:a|1", true),
            ("_id=p1", true),
            ("_id=p2", false),
            ("_id=p1&identifier=urn:a|2", false),
        ] {
            let c = Criteria::parse(q).expect(q);
            assert_eq!(c.matches_resource("p1", &r), want, "{q}");
        }
    }
}
