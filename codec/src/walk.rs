//! Element-by-element validation of a FHIR JSON resource against the R4 element table.
//!
//! fhirbolt checks the shape of a resource, but it keeps primitive values as free strings. This
//! walk knows the declared type of every element, so it can check each primitive's JSON type and
//! format, the codes of required bindings and the format of references
//! (<https://hl7.org/fhir/R4/references.html#literal>).

use serde_json::{Map, Value};

use crate::model::{Child, MODEL};
use crate::primitive;
use crate::{is_resource_type, Issue, IssueKind};

/// Deepest nesting of elements we accept (security-test-plan B5).
const MAX_DEPTH: usize = 64;
/// Deepest nesting of extensions within extensions (security-test-plan B5).
pub(crate) const MAX_EXTENSION_DEPTH: usize = 10;
/// Deepest nesting of resources within resources (a Bundle in a Bundle entry, a contained
/// resource, a Parameters resource): the typed parse recurses through each with a large stack
/// frame, so thirty nested Bundles overflowed a worker thread's stack.
pub(crate) const MAX_RESOURCE_DEPTH: usize = 4;

pub(crate) fn validate_resource(v: &Value) -> Vec<Issue> {
    let mut issues = Vec::new();
    if let Some(obj) = v.as_object() {
        resource(obj, String::new(), 0, 0, &mut issues);
    }
    issues
}

fn push(issues: &mut Vec<Issue>, kind: IssueKind, expression: &str, message: String) {
    // Keep the outcome readable: the first twenty problems are enough to act on.
    if issues.len() < 20 {
        issues.push(Issue {
            kind,
            expression: expression.to_owned(),
            message,
        });
    }
}

fn resource(
    obj: &Map<String, Value>,
    prefix: String,
    depth: usize,
    nest: usize,
    issues: &mut Vec<Issue>,
) {
    if nest > MAX_RESOURCE_DEPTH {
        push(
            issues,
            IssueKind::Structure,
            &prefix,
            format!("{prefix}: resources are nested more than {MAX_RESOURCE_DEPTH} levels deep"),
        );
        return;
    }
    let Some(rt) = obj.get("resourceType").and_then(Value::as_str) else {
        push(
            issues,
            IssueKind::Structure,
            &prefix,
            format!("{prefix} has no resourceType"),
        );
        return;
    };
    if !is_resource_type(rt) {
        push(
            issues,
            IssueKind::Structure,
            &prefix,
            format!("unknown resource type '{rt}'"),
        );
        return;
    }
    let base = if prefix.is_empty() {
        rt.to_owned()
    } else {
        prefix
    };
    if let Some(id) = obj.get("id") {
        if !id.as_str().is_some_and(primitive::is_valid_id) {
            let expr = format!("{base}.id");
            push(
                issues,
                IssueKind::Value,
                &expr,
                format!("{expr} is not a valid id ([A-Za-z0-9-.]{{1,64}})"),
            );
        }
    }
    element(rt, obj, &base, depth, nest, issues);
}

fn element(
    ctx: &str,
    obj: &Map<String, Value>,
    expr: &str,
    depth: usize,
    nest: usize,
    issues: &mut Vec<Issue>,
) {
    if depth > MAX_DEPTH {
        push(
            issues,
            IssueKind::Structure,
            expr,
            format!("{expr} is nested more than {MAX_DEPTH} levels deep"),
        );
        return;
    }
    let Some(children) = MODEL.contexts.get(ctx) else {
        return;
    };
    for (key, value) in obj {
        if key == "resourceType" && depth_is_resource(ctx) {
            continue;
        }
        if key == "id" && depth_is_resource(ctx) {
            continue; // checked as an `id` by `resource`
        }
        let (name, is_ext) = match key.strip_prefix('_') {
            Some(n) => (n, true),
            None => (key.as_str(), false),
        };
        let here = format!("{expr}.{name}");
        if name == "extension" || name == "modifierExtension" {
            let levels =
                here.matches(".extension").count() + here.matches(".modifierExtension").count();
            if levels > MAX_EXTENSION_DEPTH {
                push(
                    issues,
                    IssueKind::Structure,
                    &here,
                    format!(
                        "{here}: extensions are nested more than {MAX_EXTENSION_DEPTH} levels deep"
                    ),
                );
                continue;
            }
        }
        if name == "contained" && expr.contains(".contained[") {
            // dom-2: a contained resource SHALL NOT contain additional contained resources.
            push(
                issues,
                IssueKind::Structure,
                &here,
                format!("{here}: a contained resource cannot contain resources itself"),
            );
            continue;
        }
        let Some(Child(ty, many, vs)) = children.get(name) else {
            push(
                issues,
                IssueKind::Structure,
                &here,
                format!("{here} is not a known element"),
            );
            continue;
        };
        let items: Vec<(Option<usize>, &Value)> = match (value, *many == 1) {
            (Value::Array(a), true) => {
                if a.is_empty() {
                    push(
                        issues,
                        IssueKind::Structure,
                        &here,
                        format!("{here} must not be an empty array"),
                    );
                }
                a.iter().enumerate().map(|(i, v)| (Some(i), v)).collect()
            }
            (Value::Array(_), false) => {
                push(
                    issues,
                    IssueKind::Structure,
                    &here,
                    format!("{here} does not repeat, but an array was given"),
                );
                continue;
            }
            (v, true) => {
                push(
                    issues,
                    IssueKind::Structure,
                    &here,
                    format!("{here} repeats, so it must be an array"),
                );
                vec![(None, v)]
            }
            (v, false) => vec![(None, v)],
        };
        let primitive = is_primitive(ty);
        for (idx, item) in items {
            let at = match idx {
                Some(i) => format!("{here}[{i}]"),
                None => here.clone(),
            };
            if is_ext || (primitive && item.is_null() && idx.is_some()) {
                // `_given: [null, {...}]` pairs with `given: ["a", null]`.
                match item {
                    Value::Object(o) if is_ext => {
                        element("Element", o, &at, depth + 1, nest, issues)
                    }
                    Value::Null => {}
                    _ => push(
                        issues,
                        IssueKind::Structure,
                        &at,
                        format!("{at} must be an object or null"),
                    ),
                }
                continue;
            }
            if primitive {
                if let Some(reason) = primitive::check(ty, item) {
                    push(issues, IssueKind::Value, &at, format!("{at} {reason}"));
                } else if *vs >= 0 {
                    check_code(*vs, item, &at, issues);
                }
                continue;
            }
            let Value::Object(o) = item else {
                push(
                    issues,
                    IssueKind::Structure,
                    &at,
                    format!("{at} must be a JSON object"),
                );
                continue;
            };
            if ty == "Resource" {
                resource(o, at, depth + 1, nest + 1, issues);
            } else {
                let sub = ty.strip_prefix('@').unwrap_or(ty);
                element(sub, o, &at, depth + 1, nest, issues);
                if sub == "Reference" {
                    check_reference(o, &at, issues);
                }
            }
        }
    }
}

fn depth_is_resource(ctx: &str) -> bool {
    !ctx.contains('.') && is_resource_type(ctx)
}

fn is_primitive(ty: &str) -> bool {
    ty.starts_with(|c: char| c.is_ascii_lowercase())
}

fn check_code(vs: i32, item: &Value, at: &str, issues: &mut Vec<Issue>) {
    let Some(set) = usize::try_from(vs)
        .ok()
        .and_then(|i| MODEL.valuesets.get(i))
    else {
        return;
    };
    let code = item.as_str().unwrap_or_default();
    if set
        .codes
        .binary_search_by(|c| c.as_str().cmp(code))
        .is_err()
    {
        push(
            issues,
            IssueKind::CodeInvalid,
            at,
            format!(
                "{at}: '{code}' is not in the required value set {}",
                set.url
            ),
        );
    }
}

/// Literal reference formats of R4: `Type/id`, `Type/id/_history/vid`, an absolute URL,
/// `urn:uuid:`/`urn:oid:` and `#local`. Conditional references (`Type?query`) are valid only inside
/// a transaction, which resolves them before a resource reaches this check.
fn check_reference(o: &Map<String, Value>, at: &str, issues: &mut Vec<Issue>) {
    let Some(Value::String(r)) = o.get("reference") else {
        return;
    };
    let here = format!("{at}.reference");
    let ok = if let Some(local) = r.strip_prefix('#') {
        local.is_empty() || primitive::is_valid_id(local)
    } else if let Some(u) = r.strip_prefix("urn:uuid:") {
        primitive::check("uuid", &Value::String(format!("urn:uuid:{u}"))).is_none()
    } else if r.starts_with("urn:oid:") {
        primitive::check("oid", &Value::String(r.clone())).is_none()
    } else if is_absolute(r) {
        !r.chars().any(char::is_whitespace)
    } else {
        is_relative_reference(r)
    };
    if !ok {
        push(
            issues,
            IssueKind::Value,
            &here,
            format!("{here} is not a valid reference (Type/id, Type/id/_history/vid, an absolute URL, urn:uuid: or #id)"),
        );
    }
}

/// `Type/id` or `Type/id/_history/vid` with a known type and valid ids.
pub(crate) fn is_relative_reference(r: &str) -> bool {
    let parts: Vec<&str> = r.split('/').collect();
    match parts.as_slice() {
        [t, id] => is_resource_type(t) && primitive::is_valid_id(id),
        [t, id, "_history", v] => {
            is_resource_type(t) && primitive::is_valid_id(id) && primitive::is_valid_id(v)
        }
        _ => false,
    }
}

/// An absolute URL: a scheme and `://` before any `?`, `#` or `/` path part.
pub fn is_absolute(r: &str) -> bool {
    let head = r.split(['?', '#']).next().unwrap_or("");
    head.split_once("://").is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    })
}
