//! The evaluator: walks a parsed [`Expr`] over FHIR JSON, producing FHIRPath collections of
//! [`Item`]s that borrow from the resource (and from the expression, for literals).

use serde_json::Value;

use crate::model::{Ty, MODEL};
use crate::parser::{parse, BinOp, EnvVar, Expr, Func, Literal, Name, TypeSpec};
use crate::reference::parse_reference;
use crate::ParseError;

/// One item of a FHIRPath collection.
#[derive(Debug, Clone, Copy)]
pub enum Item<'a> {
    /// An element of the resource with its FHIR type ([`Ty::UNKNOWN`] when the model does
    /// not describe it).
    Node(&'a Value, Ty),
    /// A Boolean result or literal.
    Bool(bool),
    /// A string literal (or constant such as `%ucum`).
    Str(&'a str),
    /// An integer result or literal.
    Int(i64),
    /// A decimal literal as written.
    Decimal(&'a str),
    /// What `resolve()` returns: the target's resource type, which is all that can be known
    /// without fetching it.
    Resolved(&'a str),
}

impl<'a> Item<'a> {
    /// The JSON behind a node.
    pub fn json(&self) -> Option<&'a Value> {
        match self {
            Item::Node(v, _) => Some(v),
            _ => None,
        }
    }

    /// The item's type name (`Quantity`, `boolean`, …); for [`Item::Resolved`] the target type.
    pub fn type_name(&self) -> Option<&'a str> {
        match self {
            Item::Node(_, ty) => ty.name(),
            Item::Bool(_) => Some("boolean"),
            Item::Str(_) => Some("string"),
            Item::Int(_) => Some("integer"),
            Item::Decimal(_) => Some("decimal"),
            Item::Resolved(t) => Some(t),
        }
    }

    /// The item as a string when it is one (a JSON string node or a string literal).
    pub fn as_str(&self) -> Option<&'a str> {
        match self {
            Item::Node(Value::String(s), _) => Some(s),
            Item::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An owned JSON rendering (nodes are cloned), convenient in tests.
    pub fn to_json(&self) -> Value {
        match self {
            Item::Node(v, _) => (*v).clone(),
            Item::Bool(b) => Value::Bool(*b),
            Item::Str(s) | Item::Resolved(s) => Value::String((*s).to_owned()),
            Item::Int(i) => Value::from(*i),
            Item::Decimal(d) => d
                .parse::<serde_json::Number>()
                .map(Value::Number)
                .unwrap_or(Value::Null),
        }
    }
}

/// A parsed FHIRPath expression, ready to evaluate any number of times.
#[derive(Debug, Clone)]
pub struct Expression {
    pub(crate) expr: Expr,
    source: Box<str>,
}

impl Expression {
    /// Parses `source`; fails on syntax errors and on anything outside the supported subset
    /// (unknown functions, unsupported operators, unknown type names).
    pub fn parse(source: &str) -> Result<Expression, ParseError> {
        Ok(Expression {
            expr: parse(source)?,
            source: source.into(),
        })
    }

    /// The same source with a rewritten tree (used to prune union branches per type).
    pub(crate) fn with_expr(&self, expr: Expr) -> Expression {
        Expression {
            expr,
            source: self.source.clone(),
        }
    }

    /// The text the expression was parsed from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates with the resource as context (`$this`, `%resource` and `%context`).
    pub fn evaluate<'a>(&'a self, resource: &'a Value) -> Vec<Item<'a>> {
        let env = Env::new(resource);
        let focus = [env.context];
        let mut out = Vec::new();
        eval(&self.expr, &focus, &env, &mut out);
        out
    }

    /// Evaluates with `focus` as `$this`/`%context` inside `resource` (as for the
    /// components of a composite search parameter).
    pub fn evaluate_on<'a>(&'a self, resource: &'a Value, focus: Item<'a>) -> Vec<Item<'a>> {
        let mut env = Env::new(resource);
        env.context = focus;
        let mut out = Vec::new();
        eval(&self.expr, &[focus], &env, &mut out);
        out
    }
}

/// What an evaluation runs in.
#[derive(Clone, Copy)]
pub(crate) struct Env<'a> {
    pub(crate) resource: &'a Value,
    pub(crate) context: Item<'a>,
}

impl<'a> Env<'a> {
    pub(crate) fn new(resource: &'a Value) -> Env<'a> {
        let ty = field(resource, "resourceType")
            .and_then(Value::as_str)
            .and_then(|t| MODEL.resource_type(t))
            .unwrap_or(Ty::UNKNOWN);
        Env {
            resource,
            context: Item::Node(resource, ty),
        }
    }
}

/// Evaluates `e` against `focus`, appending the result to `out`.
pub(crate) fn eval<'a>(e: &'a Expr, focus: &[Item<'a>], env: &Env<'a>, out: &mut Vec<Item<'a>>) {
    match e {
        Expr::This => out.extend_from_slice(focus),
        Expr::Env(v) => out.push(match v {
            EnvVar::Resource => Env::new(env.resource).context,
            EnvVar::Context => env.context,
            EnvVar::Ucum => Item::Str("http://unitsofmeasure.org"),
            EnvVar::Sct => Item::Str("http://snomed.info/sct"),
            EnvVar::Loinc => Item::Str("http://loinc.org"),
        }),
        Expr::Literal(l) => out.push(match l {
            Literal::Bool(b) => Item::Bool(*b),
            Literal::Str(s) => Item::Str(s),
            Literal::Int(i) => Item::Int(*i),
            Literal::Decimal(d) => Item::Decimal(d),
        }),
        Expr::Empty => {}
        Expr::Ident(name) => ident(name, focus, out),
        Expr::Member(inner, name) => {
            let mut tmp = Vec::new();
            eval(inner, focus, env, &mut tmp);
            for item in &tmp {
                member(item, name, out);
            }
        }
        Expr::Index(inner, idx) => {
            let mut tmp = Vec::new();
            eval(inner, focus, env, &mut tmp);
            let mut i = Vec::new();
            eval(idx, focus, env, &mut i);
            if let [Item::Int(n)] = i[..] {
                if let Some(item) = usize::try_from(n).ok().and_then(|n| tmp.get(n)) {
                    out.push(*item);
                }
            }
        }
        Expr::Call(input, func, args) => {
            let owned;
            let input: &[Item<'a>] = match input {
                Some(inner) => {
                    let mut tmp = Vec::new();
                    eval(inner, focus, env, &mut tmp);
                    owned = tmp;
                    &owned
                }
                None => focus,
            };
            call(func, args, input, env, out);
        }
        Expr::Union(branches) => {
            let start = out.len();
            let mut nonempty = 0;
            for b in branches {
                let before = out.len();
                eval(b, focus, env, out);
                nonempty += usize::from(out.len() > before);
            }
            if nonempty > 1 {
                dedupe(out, start);
            }
        }
        Expr::Binary(op, l, r) => binary(*op, l, r, focus, env, out),
    }
}

fn ident<'a>(name: &'a Name, focus: &[Item<'a>], out: &mut Vec<Item<'a>>) {
    let type_like = name.text.starts_with(|c: char| c.is_ascii_uppercase());
    if !type_like {
        for item in focus {
            member(item, name, out);
        }
        return;
    }
    // A capitalised name is a type: keep the focus items of that type.
    if let Some(ty) = name.ty {
        out.extend(focus.iter().filter(|i| item_is(i, ty)));
    }
}

fn item_is(item: &Item<'_>, ty: Ty) -> bool {
    match item {
        Item::Node(_, t) => t.is_a(ty),
        Item::Resolved(name) => Ty::named(name).is_some_and(|t| t.is_a(ty)),
        _ => false,
    }
}

/// Appends the children called `name` of `item`.
fn member<'a>(item: &Item<'a>, name: &'a Name, out: &mut Vec<Item<'a>>) {
    let Item::Node(Value::Object(obj), ty) = *item else {
        return;
    };
    if MODEL.is_known(ty) {
        let Some(id) = name.id else {
            return;
        };
        let children = MODEL.children(ty, id);
        if children.len() > 2 && obj.len() < children.len() {
            // A choice with many variants on a small object: scan the object's keys once
            // (children are sorted by key) instead of probing every variant.
            for (k, cv) in obj {
                if k.starts_with(&*name.text) {
                    if let Ok(i) = children.binary_search_by(|c| (*c.key).cmp(k.as_str())) {
                        push_value(cv, children[i].ty, out);
                    }
                }
            }
            return;
        }
        for child in children {
            if let Some(cv) = get(obj, &child.key) {
                push_value(cv, child.ty, out);
            }
        }
    } else if let Some(cv) = get(obj, &name.text) {
        push_value(cv, Ty::UNKNOWN, out);
    }
}

/// Looks a key up; small objects are scanned, which beats hashing the key.
#[inline]
pub(crate) fn get<'a>(obj: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    if obj.len() <= 16 {
        obj.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
    } else {
        obj.get(key)
    }
}

/// `v[key]` for objects, with [`get`]'s scan.
#[inline]
pub(crate) fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(o) => get(o, key),
        _ => None,
    }
}

/// Appends a JSON value (flattening arrays, skipping nulls) as nodes of type `ty`.
pub(crate) fn push_value<'a>(v: &'a Value, ty: Ty, out: &mut Vec<Item<'a>>) {
    match v {
        Value::Null => {}
        Value::Array(items) => {
            for i in items {
                if !i.is_null() {
                    out.push(Item::Node(i, concrete(i, ty)));
                }
            }
        }
        _ => out.push(Item::Node(v, concrete(v, ty))),
    }
}

/// Elements typed `Resource` (contained, Bundle entries) take their `resourceType`.
fn concrete(v: &Value, ty: Ty) -> Ty {
    if ty == MODEL.resource || ty == MODEL.domain_resource || ty == Ty::UNKNOWN {
        if let Some(t) = field(v, "resourceType")
            .and_then(Value::as_str)
            .and_then(|t| MODEL.resource_type(t))
        {
            return t;
        }
    }
    ty
}

fn dedupe(out: &mut Vec<Item<'_>>, start: usize) {
    if out.len() - start > 32 {
        // Large unions (value set expansions): nodes by address, other items linearly.
        let mut seen = std::collections::HashSet::new();
        let mut i = start;
        while i < out.len() {
            let dup = match out[i] {
                Item::Node(v, _) => !seen.insert(std::ptr::from_ref(v) as usize),
                _ => out[start..i].iter().any(|p| same(p, &out[i])),
            };
            if dup {
                out.remove(i);
            } else {
                i += 1;
            }
        }
        return;
    }
    let mut i = start + 1;
    while i < out.len() {
        if out[start..i].iter().any(|p| same(p, &out[i])) {
            out.remove(i);
        } else {
            i += 1;
        }
    }
}

/// Identity for nodes (the same JSON element), equality for other values.
fn same(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (a, b) {
        (Item::Node(x, _), Item::Node(y, _)) => std::ptr::eq(*x, *y),
        (Item::Node(..), _) | (_, Item::Node(..)) => false,
        _ => equal(a, b) == Some(true),
    }
}

/// Singleton evaluation to a Boolean: empty is unknown, one Boolean is itself, any other
/// single item is true; several items are unknown.
fn truth(items: &[Item<'_>]) -> Option<bool> {
    match items {
        [Item::Bool(b)] => Some(*b),
        [Item::Node(Value::Bool(b), _)] => Some(*b),
        [_] => Some(true),
        _ => None,
    }
}

fn call<'a>(
    func: &'a Func,
    args: &'a [Expr],
    input: &[Item<'a>],
    env: &Env<'a>,
    out: &mut Vec<Item<'a>>,
) {
    let criteria = |item: &Item<'a>| -> Option<bool> {
        let mut r = Vec::new();
        eval(&args[0], std::slice::from_ref(item), env, &mut r);
        truth(&r)
    };
    match func {
        Func::Where => out.extend(input.iter().filter(|i| criteria(i) == Some(true))),
        Func::Select => {
            for item in input {
                eval(&args[0], std::slice::from_ref(item), env, out);
            }
        }
        Func::All => out.push(Item::Bool(input.iter().all(|i| criteria(i) == Some(true)))),
        Func::Exists => out.push(Item::Bool(if args.is_empty() {
            !input.is_empty()
        } else {
            input.iter().any(|i| criteria(i) == Some(true))
        })),
        Func::Empty => out.push(Item::Bool(input.is_empty())),
        Func::First => out.extend(input.first()),
        Func::Last => out.extend(input.last()),
        Func::Tail => out.extend(input.iter().skip(1)),
        Func::Not => out.extend(truth(input).map(|b| Item::Bool(!b))),
        Func::Count => out.push(Item::Int(i64::try_from(input.len()).unwrap_or(i64::MAX))),
        Func::HasValue => out.push(Item::Bool(matches!(
            input,
            [Item::Node(
                Value::String(_) | Value::Number(_) | Value::Bool(_),
                _
            )]
        ))),
        Func::Resolve => {
            for item in input {
                if let Some(t) = resolve(item, env) {
                    out.push(Item::Resolved(t));
                }
            }
        }
        Func::Extension => {
            let Some(Expr::Literal(Literal::Str(url))) = args.first() else {
                return;
            };
            for item in input {
                let Item::Node(v, _) = item else { continue };
                let Some(Value::Array(exts)) = field(v, "extension") else {
                    continue;
                };
                for x in exts {
                    if field(x, "url").and_then(Value::as_str) == Some(&**url) {
                        out.push(Item::Node(x, MODEL.extension));
                    }
                }
            }
        }
        Func::As(spec) | Func::OfType(spec) => {
            out.extend(input.iter().filter(|i| type_matches(i, spec)));
        }
        Func::Is(spec) => {
            if let [item] = input {
                out.push(Item::Bool(type_matches(item, spec)));
            }
        }
    }
}

fn type_matches(item: &Item<'_>, spec: &TypeSpec) -> bool {
    match item {
        Item::Node(_, t) => spec.tys.iter().any(|s| t.is_a(*s)),
        Item::Resolved(name) => {
            **name == *spec.name
                || Ty::named(name).is_some_and(|t| spec.tys.iter().any(|s| t.is_a(*s)))
        }
        Item::Bool(_) => spec.boolean,
        Item::Str(_) => spec.string,
        Item::Int(_) | Item::Decimal(_) => spec.number,
    }
}

/// The resource type a reference (or canonical/uri) item points at.
fn resolve<'a>(item: &Item<'a>, env: &Env<'a>) -> Option<&'a str> {
    match item {
        Item::Node(Value::Object(o), _) => {
            let parsed = get(o, "reference")
                .and_then(Value::as_str)
                .and_then(|r| parse_reference(r, Some(env.resource)).target_type);
            parsed.or_else(|| get(o, "type").and_then(Value::as_str))
        }
        Item::Node(Value::String(s), _) => parse_reference(s, Some(env.resource)).target_type,
        Item::Resolved(t) => Some(t),
        _ => None,
    }
}

fn binary<'a>(
    op: BinOp,
    l: &'a Expr,
    r: &'a Expr,
    focus: &[Item<'a>],
    env: &Env<'a>,
    out: &mut Vec<Item<'a>>,
) {
    let mut a = Vec::new();
    eval(l, focus, env, &mut a);
    let mut b = Vec::new();
    eval(r, focus, env, &mut b);
    let result = match op {
        BinOp::And => match (truth(&a), truth(&b)) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        BinOp::Or => match (truth(&a), truth(&b)) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        BinOp::Xor => match (truth(&a), truth(&b)) {
            (Some(x), Some(y)) => Some(x != y),
            _ => None,
        },
        BinOp::Implies => match (truth(&a), truth(&b)) {
            (Some(false), _) | (_, Some(true)) => Some(true),
            (Some(true), Some(false)) => Some(false),
            _ => None,
        },
        BinOp::Eq | BinOp::Ne => {
            if a.is_empty() || b.is_empty() {
                None
            } else {
                let eq =
                    a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| equal(x, y) == Some(true));
                Some(eq == (op == BinOp::Eq))
            }
        }
        BinOp::Equiv | BinOp::NotEquiv => {
            let eq = a.len() == b.len() && a.iter().zip(&b).all(|(x, y)| equivalent(x, y));
            Some(eq == (op == BinOp::Equiv))
        }
    };
    out.extend(result.map(Item::Bool));
}

/// A primitive view of an item for comparisons.
enum Prim<'a> {
    Str(&'a str),
    Bool(bool),
    Num(f64),
    Json(&'a Value),
}

fn prim<'a>(i: &Item<'a>) -> Prim<'a> {
    match i {
        Item::Node(Value::String(s), _) => Prim::Str(s),
        Item::Node(Value::Bool(b), _) => Prim::Bool(*b),
        Item::Node(Value::Number(n), _) => Prim::Num(n.as_str().parse().unwrap_or(f64::NAN)),
        Item::Node(v, _) => Prim::Json(v),
        Item::Str(s) | Item::Resolved(s) => Prim::Str(s),
        Item::Bool(b) => Prim::Bool(*b),
        // Integers beyond 2^53 compare approximately; no search expression needs more.
        #[allow(clippy::cast_precision_loss)]
        Item::Int(n) => Prim::Num(*n as f64),
        Item::Decimal(d) => Prim::Num(d.parse().unwrap_or(f64::NAN)),
    }
}

/// FHIRPath `=` on two single items; values of different kinds are unequal.
fn equal(a: &Item<'_>, b: &Item<'_>) -> Option<bool> {
    Some(match (prim(a), prim(b)) {
        (Prim::Str(x), Prim::Str(y)) => x == y,
        (Prim::Bool(x), Prim::Bool(y)) => x == y,
        (Prim::Num(x), Prim::Num(y)) => x == y,
        (Prim::Json(x), Prim::Json(y)) => x == y,
        _ => false,
    })
}

/// FHIRPath `~`: strings compare case-insensitively with whitespace collapsed.
fn equivalent(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (prim(a), prim(b)) {
        (Prim::Str(x), Prim::Str(y)) => {
            let norm = |s: &str| {
                s.split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
                    .to_lowercase()
            };
            norm(x) == norm(y)
        }
        _ => equal(a, b) == Some(true),
    }
}
