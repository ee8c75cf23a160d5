//! PATCH (<https://hl7.org/fhir/R4/http.html#patch>): the body says how to change the current
//! version, and the result is written exactly as an update (PUT) would be: validation, the
//! caller's scopes and compartment, `If-Match`, and the audit event in the write's transaction.
//!
//! Three body formats:
//! - JSON Patch (RFC 6902, `application/json-patch+json`): `add`, `remove`, `replace`, `move`,
//!   `copy` and `test` on JSON Pointers;
//! - FHIRPath Patch (a `Parameters` body in FHIR JSON or XML): `add`, `insert`, `delete`,
//!   `replace` and `move`, on paths of element names with `[n]` indexes and
//!   `where(element = 'literal')` filters. Other FHIRPath is refused by name;
//! - JSON Merge Patch (RFC 7386, `application/merge-patch+json`, or a plain JSON object sent as
//!   `application/json`, which is what fhirpy sends).

use serde_json::{Map, Value};

use crate::error::{FhirError, IssueType, OutcomeIssue, Result};

/// A parsed PATCH body.
#[derive(Debug, Clone)]
pub enum Patch {
    /// RFC 6902 operations.
    Json(Vec<Value>),
    /// FHIRPath Patch operations (the `Parameters` resource).
    FhirPath(Value),
    /// An RFC 7386 merge document.
    Merge(Value),
}

impl Patch {
    /// Reads a body by its `Content-Type`.
    pub fn parse(content_type: &str, bytes: &[u8]) -> Result<Patch> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let json = || fhirgate_codec::parse_json(bytes).map_err(FhirError::from);
        match essence.as_str() {
            "application/json-patch+json" => match json()? {
                Value::Array(ops) => Ok(Patch::Json(ops)),
                _ => Err(FhirError::bad_request(
                    "body",
                    "a JSON Patch is an array of operations",
                )),
            },
            "application/merge-patch+json" => Ok(Patch::Merge(json()?)),
            "application/json" | "application/fhir+json" | "application/json+fhir" => {
                match json()? {
                    Value::Array(ops) => Ok(Patch::Json(ops)),
                    v if v["resourceType"] == "Parameters" => Ok(Patch::FhirPath(v)),
                    v if v.is_object() => Ok(Patch::Merge(v)),
                    _ => Err(FhirError::bad_request(
                        "body",
                        "a PATCH body is a JSON Patch array, a Parameters resource or an object to merge",
                    )),
                }
            }
            "application/fhir+xml" | "application/xml" | "text/xml" => {
                let v = fhirgate_codec::xml_to_json(bytes)?;
                if v["resourceType"] != "Parameters" {
                    return Err(FhirError::bad_request(
                        "body",
                        "an XML PATCH body is a FHIRPath Patch (Parameters)",
                    ));
                }
                Ok(Patch::FhirPath(v))
            }
            _ => Err(FhirError::UnsupportedMediaType(format!(
                "{content_type} (PATCH takes application/json-patch+json, a FHIRPath Patch Parameters in application/fhir+json or +xml, or application/merge-patch+json)"
            ))),
        }
    }

    /// The patched copy of `resource`; it keeps its type and id.
    pub fn apply(&self, resource: &Value) -> Result<Value> {
        let mut out = resource.clone();
        match self {
            Patch::Json(ops) => {
                for (i, op) in ops.iter().enumerate() {
                    json_patch_op(&mut out, op, i)?;
                }
            }
            Patch::Merge(doc) => merge(&mut out, doc),
            Patch::FhirPath(params) => {
                for (i, p) in params["parameter"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    fhirpath_op(&mut out, p, i)?;
                }
            }
        }
        if out.get("resourceType") != resource.get("resourceType") {
            return Err(unprocessable(
                "resourceType",
                "a patch may not change the resource type",
            ));
        }
        if out.get("id") != resource.get("id") {
            return Err(unprocessable("id", "a patch may not change the id"));
        }
        Ok(out)
    }
}

/// 422: the patch cannot be applied to this resource (RFC 5789 §2.2), naming where.
fn unprocessable(at: &str, msg: impl Into<String>) -> FhirError {
    FhirError::InvalidResource {
        status: axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        issues: vec![OutcomeIssue::at(IssueType::Processing, at, msg)],
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 7386

fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RFC 6902

/// The reference tokens of a JSON Pointer (RFC 6901).
fn pointer(path: &str, at: &str) -> Result<Vec<String>> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(unprocessable(
            at,
            format!("'{path}' is not a JSON Pointer (it starts with /)"),
        ));
    };
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn index_of(token: &str, len: usize, adding: bool, at: &str) -> Result<usize> {
    if adding && token == "-" {
        return Ok(len);
    }
    let limit = if adding { len } else { len.saturating_sub(1) };
    match token.parse::<usize>() {
        Ok(i) if (token == "0" || !token.starts_with('0')) && i <= limit && (adding || len > 0) => {
            Ok(i)
        }
        _ => Err(unprocessable(
            at,
            format!("'{token}' is not an index of this array (length {len})"),
        )),
    }
}

/// The value at `tokens`, if any.
fn get<'a>(doc: &'a Value, tokens: &[String]) -> Option<&'a Value> {
    tokens.iter().try_fold(doc, |v, t| match v {
        Value::Object(o) => o.get(t),
        Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

fn parent_mut<'a>(doc: &'a mut Value, tokens: &[String], at: &str) -> Result<&'a mut Value> {
    let mut v = doc;
    for t in tokens {
        v = match v {
            Value::Object(o) => o.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| unprocessable(at, format!("the path has no element '{t}'")))?;
    }
    Ok(v)
}

fn add(doc: &mut Value, tokens: &[String], value: Value, at: &str) -> Result<()> {
    let Some((last, parents)) = tokens.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent_mut(doc, parents, at)? {
        Value::Object(o) => {
            o.insert(last.clone(), value);
        }
        Value::Array(a) => {
            let i = index_of(last, a.len(), true, at)?;
            a.insert(i, value);
        }
        _ => return Err(unprocessable(at, "the parent is not an object or an array")),
    }
    Ok(())
}

fn remove(doc: &mut Value, tokens: &[String], at: &str) -> Result<Value> {
    let Some((last, parents)) = tokens.split_last() else {
        return Err(unprocessable(at, "the whole resource cannot be removed"));
    };
    match parent_mut(doc, parents, at)? {
        Value::Object(o) => o
            .remove(last)
            .ok_or_else(|| unprocessable(at, format!("there is no element '{last}' to remove"))),
        Value::Array(a) => {
            let i = index_of(last, a.len(), false, at)?;
            Ok(a.remove(i))
        }
        _ => Err(unprocessable(at, "the parent is not an object or an array")),
    }
}

fn json_patch_op(doc: &mut Value, op: &Value, n: usize) -> Result<()> {
    let at = format!("operation[{n}]");
    let field = |k: &str| {
        op.get(k)
            .and_then(Value::as_str)
            .ok_or_else(|| unprocessable(&at, format!("'{k}' is required")))
    };
    let path = pointer(field("path")?, &at)?;
    let value = || {
        op.get("value")
            .cloned()
            .ok_or_else(|| unprocessable(&at, "'value' is required"))
    };
    match field("op")? {
        "add" => add(doc, &path, value()?, &at),
        "remove" => remove(doc, &path, &at).map(|_| ()),
        "replace" => {
            if get(doc, &path).is_none() {
                return Err(unprocessable(
                    &at,
                    "there is nothing at the path to replace",
                ));
            }
            remove(doc, &path, &at)?;
            add(doc, &path, value()?, &at)
        }
        "move" => {
            let from = pointer(field("from")?, &at)?;
            if path.len() > from.len() && path.starts_with(&from) {
                return Err(unprocessable(&at, "a value cannot move into itself"));
            }
            let v = remove(doc, &from, &at)?;
            add(doc, &path, v, &at)
        }
        "copy" => {
            let from = pointer(field("from")?, &at)?;
            let v = get(doc, &from)
                .cloned()
                .ok_or_else(|| unprocessable(&at, "there is nothing at 'from' to copy"))?;
            add(doc, &path, v, &at)
        }
        "test" => {
            if get(doc, &path) == Some(&value()?) {
                Ok(())
            } else {
                Err(unprocessable(&at, "the test failed: the value differs"))
            }
        }
        other => Err(unprocessable(
            &at,
            format!(
                "'{other}' is not a JSON Patch operation (add, remove, replace, move, copy, test)"
            ),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// FHIRPath Patch

/// One step of a path: an element name, then an optional index or `where` filter.
#[derive(Debug, PartialEq)]
enum Step {
    Name(String),
    Index(usize),
    Where(String, String),
}

/// Parses the subset of FHIRPath a patch path may use.
fn parse_path(path: &str, rt: &str, at: &str) -> Result<Vec<Step>> {
    let refuse = |why: &str| {
        unprocessable(
            at,
            format!("path '{path}': {why}; this server takes element names, [n] and where(element = 'text')"),
        )
    };
    let mut steps = Vec::new();
    let mut rest = path.trim();
    let first = rest.split(['.', '[']).next().unwrap_or("");
    if first != rt {
        return Err(refuse(&format!("it must start with {rt}")));
    }
    rest = &rest[first.len()..];
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('[') {
            let (n, after) = r.split_once(']').ok_or_else(|| refuse("an unclosed ["))?;
            steps.push(Step::Index(
                n.trim()
                    .parse()
                    .map_err(|_| refuse("a non-numeric index"))?,
            ));
            rest = after;
        } else if let Some(r) = rest.strip_prefix(".where(") {
            let (inner, after) = r
                .split_once(')')
                .ok_or_else(|| refuse("an unclosed where("))?;
            let (k, v) = inner
                .split_once('=')
                .ok_or_else(|| refuse("where() without ="))?;
            let v = v.trim();
            let literal = v
                .strip_prefix('\'')
                .and_then(|x| x.strip_suffix('\''))
                .ok_or_else(|| refuse("where() compares with a quoted text"))?;
            let k = k.trim();
            if !k.chars().all(|c| c.is_ascii_alphanumeric()) || k.is_empty() {
                return Err(refuse("where() names one element"));
            }
            steps.push(Step::Where(k.to_owned(), literal.replace("\\'", "'")));
            rest = after;
        } else if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let name = &r[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric()) {
                return Err(refuse(&format!("'{name}' is not an element name")));
            }
            steps.push(Step::Name(name.to_owned()));
            rest = &r[end..];
        } else {
            return Err(refuse("unexpected text"));
        }
    }
    Ok(steps)
}

/// A node the path selects: the JSON pointer tokens that reach it, and its model context.
#[derive(Debug, Clone)]
struct Node {
    tokens: Vec<String>,
    context: String,
    /// Whether the node is a whole repeating element (an array), not one item of it.
    list: bool,
}

/// Evaluates `steps` on `doc`: every node they select (FHIRPath flattens repeating elements).
fn select(doc: &Value, rt: &str, steps: &[Step], at: &str) -> Result<Vec<Node>> {
    let mut nodes = vec![Node {
        tokens: Vec::new(),
        context: rt.to_owned(),
        list: false,
    }];
    for step in steps {
        let mut next = Vec::new();
        match step {
            Step::Name(name) => {
                for n in &nodes {
                    let Some((ctx, repeats)) = fhirgate_codec::element(&n.context, name) else {
                        return Err(unprocessable(
                            at,
                            format!("{} has no element '{name}'", n.context),
                        ));
                    };
                    let mut tokens = n.tokens.clone();
                    tokens.push(name.clone());
                    match get(doc, &tokens) {
                        Some(Value::Array(items)) if repeats => {
                            for i in 0..items.len() {
                                let mut t = tokens.clone();
                                t.push(i.to_string());
                                next.push(Node {
                                    tokens: t,
                                    context: ctx.to_owned(),
                                    list: false,
                                });
                            }
                        }
                        Some(_) => next.push(Node {
                            tokens,
                            context: ctx.to_owned(),
                            list: false,
                        }),
                        None => {}
                    }
                }
            }
            Step::Index(i) => next.extend(nodes.get(*i).cloned()),
            Step::Where(k, v) => {
                for n in &nodes {
                    let value = get(doc, &n.tokens).and_then(|x| x.get(k));
                    let text = match value {
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(Value::Bool(b)) => Some(b.to_string()),
                        Some(Value::Number(x)) => Some(x.to_string()),
                        _ => None,
                    };
                    if text.as_deref() == Some(v.as_str()) {
                        next.push(n.clone());
                    }
                }
            }
        }
        nodes = next;
    }
    Ok(nodes)
}

/// The repeating element a path names as a whole (for `insert` and `move`): its tokens and the
/// context of its items. The path must end in an element name that repeats.
fn list_of(doc: &Value, rt: &str, steps: &[Step], at: &str) -> Result<Node> {
    let Some((Step::Name(name), parents)) = steps.split_last() else {
        return Err(unprocessable(
            at,
            "the path must end in a repeating element",
        ));
    };
    let owner = one(select(doc, rt, parents, at)?, at)?;
    let (ctx, repeats) = fhirgate_codec::element(&owner.context, name)
        .ok_or_else(|| unprocessable(at, format!("{} has no element '{name}'", owner.context)))?;
    if !repeats {
        return Err(unprocessable(at, format!("'{name}' does not repeat")));
    }
    let mut tokens = owner.tokens;
    tokens.push(name.clone());
    Ok(Node {
        tokens,
        context: ctx.to_owned(),
        list: true,
    })
}

fn one(mut nodes: Vec<Node>, at: &str) -> Result<Node> {
    match nodes.len() {
        1 => Ok(nodes.remove(0)),
        0 => Err(unprocessable(at, "the path selects nothing")),
        n => Err(unprocessable(
            at,
            format!("the path selects {n} elements; it must select one"),
        )),
    }
}

/// The `value` part of an operation: a `value[x]`, or for complex values without one, parts
/// named after the elements.
fn part_value(parts: &[Value], at: &str) -> Result<Option<Value>> {
    parts
        .iter()
        .find(|p| p["name"] == "value")
        .map(|p| value_of(p, at))
        .transpose()
}

fn value_of(p: &Value, at: &str) -> Result<Value> {
    if let Some((_, v)) = p
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))
    {
        return Ok(v.clone());
    }
    if let Some(inner) = p["part"].as_array() {
        let mut obj = Map::new();
        for q in inner {
            let name = q["name"]
                .as_str()
                .ok_or_else(|| unprocessable(at, "a value part without a name"))?;
            obj.insert(name.to_owned(), value_of(q, at)?);
        }
        return Ok(Value::Object(obj));
    }
    Err(unprocessable(at, "a value part has no value"))
}

fn int_part(parts: &[Value], name: &str, at: &str) -> Result<usize> {
    parts
        .iter()
        .find(|p| p["name"] == name)
        .and_then(|p| p["valueInteger"].as_u64())
        .map(|n| n as usize)
        .ok_or_else(|| unprocessable(at, format!("'{name}' (an integer) is required")))
}

fn fhirpath_op(doc: &mut Value, param: &Value, n: usize) -> Result<()> {
    let at = format!("Parameters.parameter[{n}]");
    if param["name"] != "operation" {
        return Err(unprocessable(
            &at,
            "a FHIRPath Patch parameter is named 'operation'",
        ));
    }
    let parts = param["part"].as_array().cloned().unwrap_or_default();
    let text = |name: &str| {
        parts
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| {
                p.as_object()?
                    .iter()
                    .find(|(k, _)| k.starts_with("value"))
                    .and_then(|(_, v)| v.as_str())
            })
            .map(str::to_owned)
            .ok_or_else(|| unprocessable(&at, format!("'{name}' is required")))
    };
    let rt = doc["resourceType"].as_str().unwrap_or_default().to_owned();
    let kind = text("type")?;
    let steps = parse_path(&text("path")?, &rt, &at)?;
    let value =
        || part_value(&parts, &at)?.ok_or_else(|| unprocessable(&at, "'value' is required"));
    match kind.as_str() {
        "add" => {
            let owner = one(select(doc, &rt, &steps, &at)?, &at)?;
            let name = text("name")?;
            let (_, repeats) = fhirgate_codec::element(&owner.context, &name).ok_or_else(|| {
                unprocessable(&at, format!("{} has no element '{name}'", owner.context))
            })?;
            let target = parent_mut(doc, &owner.tokens, &at)?;
            let Value::Object(o) = target else {
                return Err(unprocessable(
                    &at,
                    "the path does not select an element with children",
                ));
            };
            let v = value()?;
            if repeats {
                match o.entry(name).or_insert_with(|| Value::Array(Vec::new())) {
                    Value::Array(a) => a.push(v),
                    _ => return Err(unprocessable(&at, "the element is not a list")),
                }
            } else if o.contains_key(&name) {
                return Err(unprocessable(
                    &at,
                    format!("'{name}' already has a value; use replace"),
                ));
            } else {
                o.insert(name, v);
            }
            Ok(())
        }
        "insert" => {
            let list = list_of(doc, &rt, &steps, &at)?;
            let index = int_part(&parts, "index", &at)?;
            let v = value()?;
            let mut tokens = list.tokens;
            let len = get(doc, &tokens)
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if index > len {
                return Err(unprocessable(
                    &at,
                    format!("index {index} is past the end ({len})"),
                ));
            }
            if len == 0 {
                return add(doc, &tokens, Value::Array(vec![v]), &at);
            }
            tokens.push(index.to_string());
            add(doc, &tokens, v, &at)
        }
        "delete" => {
            let nodes = select(doc, &rt, &steps, &at)?;
            match nodes.len() {
                0 => Ok(()),
                1 => {
                    let node = &nodes[0];
                    remove(doc, &node.tokens, &at)?;
                    // An emptied list disappears (FHIR JSON has no empty arrays).
                    if let Some((last, parents)) = node.tokens.split_last() {
                        if last.parse::<usize>().is_ok()
                            && get(doc, parents)
                                .and_then(Value::as_array)
                                .is_some_and(Vec::is_empty)
                        {
                            remove(doc, parents, &at)?;
                        }
                    }
                    Ok(())
                }
                k => Err(unprocessable(
                    &at,
                    format!("the path selects {k} elements; delete takes one"),
                )),
            }
        }
        "replace" => {
            let node = one(select(doc, &rt, &steps, &at)?, &at)?;
            let v = value()?;
            *parent_mut(doc, &node.tokens, &at)? = v;
            Ok(())
        }
        "move" => {
            let list = list_of(doc, &rt, &steps, &at)?;
            debug_assert!(list.list);
            let (from, to) = (
                int_part(&parts, "source", &at)?,
                int_part(&parts, "destination", &at)?,
            );
            let items = parent_mut(doc, &list.tokens, &at)?
                .as_array_mut()
                .ok_or_else(|| unprocessable(&at, "the path selects no list"))?;
            if from >= items.len() || to >= items.len() {
                return Err(unprocessable(
                    &at,
                    "source or destination is outside the list",
                ));
            }
            let item = items.remove(from);
            items.insert(to, item);
            Ok(())
        }
        other => Err(unprocessable(
            &at,
            format!(
                "'{other}' is not a FHIRPath Patch operation (add, insert, delete, replace, move)"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p1", "active": true,
               "name": [{"family": "Doe", "given": ["Jane"]}, {"use": "nickname", "family": "J"}],
               "identifier": [{"system": "urn:a", "value": "1"}, {"system": "urn:b", "value": "2"}]})
    }

    fn op(kind: &str, path: &str, extra: Vec<Value>) -> Value {
        let mut part = vec![
            json!({"name": "type", "valueCode": kind}),
            json!({"name": "path", "valueString": path}),
        ];
        part.extend(extra);
        json!({"name": "operation", "part": part})
    }

    fn fhirpath(ops: Vec<Value>) -> Patch {
        Patch::FhirPath(json!({"resourceType": "Parameters", "parameter": ops}))
    }

    #[test]
    fn json_patch_follows_rfc_6902() {
        let p = Patch::Json(vec![
            json!({"op": "replace", "path": "/active", "value": false}),
            json!({"op": "add", "path": "/name/0/given/-", "value": "Ann"}),
            json!({"op": "remove", "path": "/identifier/1"}),
            json!({"op": "copy", "from": "/name/0/family", "path": "/name/1/family"}),
            json!({"op": "test", "path": "/name/1/family", "value": "Doe"}),
            json!({"op": "move", "from": "/name/1/use", "path": "/name/0/use"}),
        ]);
        let out = p.apply(&patient()).expect("patched");
        assert_eq!(out["active"], false);
        assert_eq!(out["name"][0]["given"], json!(["Jane", "Ann"]));
        assert_eq!(
            out["identifier"],
            json!([{"system": "urn:a", "value": "1"}])
        );
        assert_eq!(out["name"][1], json!({"family": "Doe"}));
        assert_eq!(out["name"][0]["use"], "nickname");
        for bad in [
            json!({"op": "test", "path": "/active", "value": false}),
            json!({"op": "remove", "path": "/nothing"}),
            json!({"op": "replace", "path": "/gender", "value": "x"}),
            json!({"op": "add", "path": "/name/9", "value": {}}),
            json!({"op": "frobnicate", "path": "/active"}),
            json!({"op": "add", "path": "active", "value": 1}),
            json!({"op": "replace", "path": "/id", "value": "other"}),
            json!({"op": "replace", "path": "/resourceType", "value": "Group"}),
        ] {
            assert!(
                Patch::Json(vec![bad.clone()]).apply(&patient()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let out = Patch::Merge(json!({"active": null, "gender": "female"}))
            .apply(&patient())
            .expect("merged");
        assert!(out.get("active").is_none());
        assert_eq!(out["gender"], "female");
        assert_eq!(out["name"], patient()["name"]);
    }

    #[test]
    fn fhirpath_patch_operations() {
        let p = fhirpath(vec![
            op(
                "replace",
                "Patient.active",
                vec![json!({"name": "value", "valueBoolean": false})],
            ),
            op(
                "add",
                "Patient",
                vec![
                    json!({"name": "name", "valueString": "birthDate"}),
                    json!({"name": "value", "valueDate": "1980-02-03"}),
                ],
            ),
            op(
                "add",
                "Patient.name[0]",
                vec![
                    json!({"name": "name", "valueString": "given"}),
                    json!({"name": "value", "valueString": "Ann"}),
                ],
            ),
            op("delete", "Patient.identifier.where(system='urn:b')", vec![]),
            op(
                "insert",
                "Patient.identifier",
                vec![
                    json!({"name": "index", "valueInteger": 0}),
                    json!({"name": "value", "valueIdentifier": {"system": "urn:c", "value": "3"}}),
                ],
            ),
            op(
                "move",
                "Patient.name",
                vec![
                    json!({"name": "source", "valueInteger": 1}),
                    json!({"name": "destination", "valueInteger": 0}),
                ],
            ),
            op("delete", "Patient.telecom", vec![]),
        ]);
        let out = p.apply(&patient()).expect("patched");
        assert_eq!(out["active"], false);
        assert_eq!(out["birthDate"], "1980-02-03");
        assert_eq!(out["name"][1]["given"], json!(["Jane", "Ann"]));
        assert_eq!(out["name"][0]["use"], "nickname");
        assert_eq!(
            out["identifier"],
            json!([{"system": "urn:c", "value": "3"}, {"system": "urn:a", "value": "1"}])
        );
        // Deleting the last item removes the list.
        let out = fhirpath(vec![
            op("delete", "Patient.name[1]", vec![]),
            op("delete", "Patient.name[0]", vec![]),
        ])
        .apply(&patient())
        .expect("deleted");
        assert!(out.get("name").is_none(), "{out}");
    }

    #[test]
    fn fhirpath_patch_refuses_what_it_cannot_do_by_name() {
        for (o, says) in [
            (
                op(
                    "replace",
                    "Patient.name.family",
                    vec![json!({"name": "value", "valueString": "X"})],
                ),
                "selects 2",
            ),
            (
                op(
                    "replace",
                    "Observation.status",
                    vec![json!({"name": "value", "valueCode": "final"})],
                ),
                "must start with Patient",
            ),
            (
                op("replace", "Patient.name.first()", vec![]),
                "not an element name",
            ),
            (
                op(
                    "add",
                    "Patient",
                    vec![
                        json!({"name": "name", "valueString": "active"}),
                        json!({"name": "value", "valueBoolean": true}),
                    ],
                ),
                "already has a value",
            ),
            (
                op(
                    "add",
                    "Patient",
                    vec![
                        json!({"name": "name", "valueString": "colour"}),
                        json!({"name": "value", "valueString": "x"}),
                    ],
                ),
                "no element 'colour'",
            ),
            (
                op(
                    "insert",
                    "Patient.active",
                    vec![
                        json!({"name": "index", "valueInteger": 0}),
                        json!({"name": "value", "valueBoolean": true}),
                    ],
                ),
                "does not repeat",
            ),
            (
                op(
                    "replace",
                    "Patient.gender",
                    vec![json!({"name": "value", "valueCode": "x"})],
                ),
                "selects nothing",
            ),
            (
                op("rename", "Patient.active", vec![]),
                "not a FHIRPath Patch operation",
            ),
        ] {
            let e = fhirpath(vec![o.clone()]).apply(&patient()).expect_err(says);
            assert!(
                e.to_string().contains(says) || format!("{e:?}").contains(says),
                "{says}: {e:?}"
            );
        }
    }
}
