//! Search index extraction: for every search parameter of a resource's type, evaluate its
//! expression and turn what it selects into typed [`IndexValue`]s.
//!
//! What each parameter type takes from each FHIR datatype:
//!
//! | parameter | datatype | values |
//! | --- | --- | --- |
//! | string | string, markdown, … | the string (+ normalised form) |
//! | string | HumanName | family, given, prefix, suffix, text |
//! | string | Address | line, city, district, state, postalCode, country, text |
//! | token | Coding | (system, code); display as [`IndexValue::TokenText`] |
//! | token | CodeableConcept | every coding as above; text as [`IndexValue::TokenText`] |
//! | token | Identifier | (system, value); each type coding as [`IndexValue::IdentifierOfType`] |
//! | token | ContactPoint | (system, value) — `phone`/`email` is the token system |
//! | token | code, string, id, uri, boolean, number | code only |
//! | date | date, dateTime, instant | the range its precision covers |
//! | date | Period | start's low .. end's high, open ends unbounded |
//! | date | Timing | earliest event .. latest event, widened by `repeat.boundsPeriod` |
//! | number | decimal, integer, … | value with its source text |
//! | quantity | Quantity and its profiles (Age, Duration, …) | value, comparator, system, code, unit |
//! | quantity | Money | value with system `urn:iso:std:iso:4217` and the currency as code |
//! | quantity | Range | [`IndexValue::QuantityRange`] (low and high kept together) |
//! | reference | Reference | `Type/id` (absolute URL kept as `url`), target type, identifier |
//! | reference | canonical, uri | [`IndexValue::Uri`] |
//! | reference | a resource (`Bundle.entry[0].resource`) | `Type/id` of that resource |
//! | uri | uri, url, canonical, … | the string |
//! | composite | — | one [`IndexValue::Composite`] per combination of component values |
//!
//! Not extracted: `special` parameters (`Location.near`), SampledData for quantity,
//! Range for number parameters, and the expression-less `_text`, `_content`, `_query`.

use std::borrow::Cow;
use std::sync::LazyLock;

use serde_json::Value;

use crate::dates::{parse_date_range, DateRange, Timestamp};
use crate::eval::{eval, field, Env, Item};
use crate::model::Ty;
use crate::normalize::normalize;
use crate::reference::parse_reference;
use crate::registry::{CompiledParam, ParamType, Registry, REGISTRY};

/// The ISO 4217 system used for Money currencies.
pub const CURRENCY_SYSTEM: &str = "urn:iso:std:iso:4217";

/// At most this many tuples are produced per item a composite parameter selects.
pub const MAX_COMPOSITE_TUPLES: usize = 256;

/// Above this many values for one parameter, duplicates are no longer removed.
const DEDUPE_LIMIT: usize = 256;

/// One value of one search parameter of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry<'a> {
    /// The parameter's code (`code`, `value-quantity`, `_lastUpdated`).
    pub code: &'static str,
    /// The parameter's type.
    pub param_type: ParamType,
    /// The value.
    pub value: IndexValue<'a>,
}

/// A typed index value; strings borrow from the resource where they can.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue<'a> {
    /// A string parameter value.
    String(StringValue<'a>),
    /// A token (system, code).
    Token(TokenValue<'a>),
    /// Text a token parameter's `:text` modifier searches (CodeableConcept.text,
    /// Coding.display).
    TokenText(StringValue<'a>),
    /// An identifier with one of its type codings, for `identifier:of-type`.
    IdentifierOfType(OfTypeValue<'a>),
    /// A date parameter value.
    Date(DateRange),
    /// A number parameter value.
    Number(NumberValue<'a>),
    /// A quantity parameter value.
    Quantity(QuantityValue<'a>),
    /// A quantity parameter selecting a Range.
    QuantityRange(QuantityRangeValue<'a>),
    /// A reference parameter value.
    Reference(ReferenceValue<'a>),
    /// A uri parameter value, or a canonical/uri selected by a reference parameter.
    Uri(&'a str),
    /// A composite value: one value per component, in component order.
    Composite(Vec<IndexValue<'a>>),
}

/// A string as written and normalised (see [`crate::normalize`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StringValue<'a> {
    /// As written.
    pub value: &'a str,
    /// Lower case, accents removed.
    pub normalized: Cow<'a, str>,
}

/// A token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenValue<'a> {
    /// Code system (Coding.system, Identifier.system, ContactPoint.system).
    pub system: Option<&'a str>,
    /// Code (Coding.code, Identifier.value, ContactPoint.value, primitive value).
    pub code: Option<&'a str>,
}

/// An identifier value with one of its type codings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfTypeValue<'a> {
    /// Identifier.type.coding.system.
    pub type_system: Option<&'a str>,
    /// Identifier.type.coding.code.
    pub type_code: &'a str,
    /// Identifier.value.
    pub value: &'a str,
}

/// A number with its source text (so precision is known).
#[derive(Debug, Clone, PartialEq)]
pub struct NumberValue<'a> {
    /// As written in the JSON (`1.50`).
    pub text: &'a str,
    /// Its value.
    pub value: f64,
}

/// A quantity.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantityValue<'a> {
    /// The value.
    pub value: NumberValue<'a>,
    /// `<`, `<=`, `>=`, `>` when present.
    pub comparator: Option<&'a str>,
    /// Unit system (usually UCUM).
    pub system: Option<&'a str>,
    /// Coded unit.
    pub code: Option<&'a str>,
    /// Human unit.
    pub unit: Option<&'a str>,
}

/// A Range: a search value matches when it falls between `low` and `high` (open ends
/// unbounded).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantityRangeValue<'a> {
    /// Range.low.
    pub low: Option<QuantityValue<'a>>,
    /// Range.high.
    pub high: Option<QuantityValue<'a>>,
}

/// A reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceValue<'a> {
    /// `Type/id` when the reference names one (also for absolute URLs, version dropped);
    /// otherwise the reference as written (`#contained`, `urn:uuid:…`).
    pub reference: Option<Cow<'a, str>>,
    /// The reference as written when it is an absolute URL or URN.
    pub url: Option<&'a str>,
    /// The target's resource type (from the reference, `Reference.type`, or the contained
    /// resource).
    pub target_type: Option<&'a str>,
    /// `Reference.identifier` (system, value), for `:identifier`.
    pub identifier: Option<TokenValue<'a>>,
}

/// The datatypes extraction distinguishes.
struct Known {
    coding: Option<Ty>,
    codeable_concept: Option<Ty>,
    identifier: Option<Ty>,
    contact_point: Option<Ty>,
    human_name: Option<Ty>,
    address: Option<Ty>,
    period: Option<Ty>,
    timing: Option<Ty>,
    quantity: Option<Ty>,
    money: Option<Ty>,
    range: Option<Ty>,
}

static KNOWN: LazyLock<Known> = LazyLock::new(|| Known {
    coding: Ty::named("Coding"),
    codeable_concept: Ty::named("CodeableConcept"),
    identifier: Ty::named("Identifier"),
    contact_point: Ty::named("ContactPoint"),
    human_name: Ty::named("HumanName"),
    address: Ty::named("Address"),
    period: Ty::named("Period"),
    timing: Ty::named("Timing"),
    quantity: Ty::named("Quantity"),
    money: Ty::named("Money"),
    range: Ty::named("Range"),
});

/// Every index entry of `resource`, for each search parameter whose `base` includes its
/// `resourceType` (plus the `Resource`/`DomainResource` parameters). Unknown or missing
/// `resourceType` gives nothing. Duplicate values of one parameter are removed.
pub fn extract(resource: &Value) -> Vec<IndexEntry<'_>> {
    let Some(rt) = field(resource, "resourceType").and_then(Value::as_str) else {
        return Vec::new();
    };
    let reg: &'static Registry = &REGISTRY;
    let env = Env::new(resource);
    let mut out = Vec::new();
    let mut items = Vec::new();
    let mut values = Vec::new();
    for p in reg.params(rt) {
        let def = reg.def(p);
        values.clear();
        param_values(reg, p, &env, &mut items, &mut values);
        out.extend(values.drain(..).map(|value| IndexEntry {
            code: &def.code,
            param_type: def.param_type,
            value,
        }));
    }
    out
}

/// The values of one parameter (by code) of `resource`; empty when the resource type has
/// no such parameter.
pub fn extract_parameter<'a>(resource: &'a Value, code: &str) -> Vec<IndexValue<'a>> {
    let Some(rt) = field(resource, "resourceType").and_then(Value::as_str) else {
        return Vec::new();
    };
    let reg: &'static Registry = &REGISTRY;
    let env = Env::new(resource);
    let mut values = Vec::new();
    if let Some(p) = reg.params(rt).iter().find(|p| reg.def(p).code == code) {
        param_values(reg, p, &env, &mut Vec::new(), &mut values);
    }
    values
}

fn param_values<'a>(
    reg: &'static Registry,
    p: &'static CompiledParam,
    env: &Env<'a>,
    items: &mut Vec<Item<'a>>,
    values: &mut Vec<IndexValue<'a>>,
) {
    let Some(expr) = &p.expr else { return };
    let def = reg.def(p);
    items.clear();
    eval(&expr.expr, &[env.context], env, items);
    match def.param_type {
        ParamType::Composite => {
            if p.components.len() == def.components.len() {
                for item in items.iter() {
                    composite(reg, p, item, env, values);
                }
            }
        }
        ParamType::Special => {}
        t => {
            for item in items.iter() {
                convert(t, item, env, values, true);
            }
        }
    }
    dedupe(values, 0);
}

fn dedupe(values: &mut Vec<IndexValue<'_>>, start: usize) {
    if values.len() - start > DEDUPE_LIMIT {
        return;
    }
    let mut i = start + 1;
    while i < values.len() {
        if values[start..i].contains(&values[i]) {
            values.remove(i);
        } else {
            i += 1;
        }
    }
}

/// The tuples of a composite parameter for one selected item: each component evaluated
/// on the item, combined as a cartesian product (capped at [`MAX_COMPOSITE_TUPLES`]).
fn composite<'a>(
    reg: &'static Registry,
    p: &'static CompiledParam,
    item: &Item<'a>,
    env: &Env<'a>,
    out: &mut Vec<IndexValue<'a>>,
) {
    let def = reg.def(p);
    let inner = Env {
        resource: env.resource,
        context: *item,
    };
    let mut columns: Vec<Vec<IndexValue<'a>>> = Vec::with_capacity(p.components.len());
    for (expr, cdef) in p.components.iter().zip(&def.components) {
        let mut citems = Vec::new();
        eval(&expr.expr, std::slice::from_ref(item), &inner, &mut citems);
        let mut vals = Vec::new();
        for ci in &citems {
            convert(cdef.param_type, ci, &inner, &mut vals, false);
        }
        dedupe(&mut vals, 0);
        if vals.is_empty() {
            return;
        }
        columns.push(vals);
    }
    let mut tuples: Vec<Vec<IndexValue<'a>>> = vec![Vec::new()];
    for col in &columns {
        let mut next = Vec::with_capacity(tuples.len() * col.len());
        'outer: for t in &tuples {
            for v in col {
                if next.len() == MAX_COMPOSITE_TUPLES {
                    break 'outer;
                }
                let mut t2 = t.clone();
                t2.push(v.clone());
                next.push(t2);
            }
        }
        tuples = next;
    }
    out.extend(tuples.into_iter().map(IndexValue::Composite));
}

/// Appends the values `item` gives a parameter of type `t`. `aux` adds the values only
/// modifiers use (`:text`, `:of-type`); composites leave them out.
fn convert<'a>(
    t: ParamType,
    item: &Item<'a>,
    env: &Env<'a>,
    out: &mut Vec<IndexValue<'a>>,
    aux: bool,
) {
    match t {
        ParamType::String => strings(item, out),
        ParamType::Token => tokens(item, out, aux),
        ParamType::Date => dates(item, out),
        ParamType::Number => {
            if let Some(n) = number_of(item) {
                out.push(IndexValue::Number(n));
            }
        }
        ParamType::Quantity => quantities(item, out),
        ParamType::Reference => references(item, env, out),
        ParamType::Uri => {
            if let Some(s) = item.as_str() {
                out.push(IndexValue::Uri(s));
            }
        }
        ParamType::Composite | ParamType::Special => {}
    }
}

fn is(ty: Ty, known: Option<Ty>) -> bool {
    known.is_some_and(|k| ty == k)
}

fn str_of<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    field(v, key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The strings at `key`, whether one or an array.
fn strs_of<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a str> {
    let (one, many) = match field(v, key) {
        Some(Value::String(s)) => (Some(s.as_str()), None),
        Some(Value::Array(a)) => (None, Some(a.iter().filter_map(Value::as_str))),
        _ => (None, None),
    };
    one.into_iter()
        .chain(many.into_iter().flatten())
        .filter(|s| !s.is_empty())
}

fn string_value(s: &str) -> StringValue<'_> {
    StringValue {
        value: s,
        normalized: normalize(s),
    }
}

fn strings<'a>(item: &Item<'a>, out: &mut Vec<IndexValue<'a>>) {
    let k = &*KNOWN;
    let Item::Node(v, ty) = *item else {
        if let Item::Str(s) = item {
            out.push(IndexValue::String(string_value(s)));
        }
        return;
    };
    let keys: &[&str] = match v {
        Value::String(s) if !s.is_empty() => {
            out.push(IndexValue::String(string_value(s)));
            return;
        }
        Value::Object(_) if is(ty, k.human_name) => {
            &["family", "given", "prefix", "suffix", "text"]
        }
        Value::Object(_) if is(ty, k.address) => &[
            "line",
            "city",
            "district",
            "state",
            "postalCode",
            "country",
            "text",
        ],
        _ => return,
    };
    for key in keys {
        for s in strs_of(v, key) {
            out.push(IndexValue::String(string_value(s)));
        }
    }
}

fn coding_token<'a>(c: &'a Value, out: &mut Vec<IndexValue<'a>>, aux: bool) {
    let system = str_of(c, "system");
    let code = str_of(c, "code");
    if system.is_some() || code.is_some() {
        out.push(IndexValue::Token(TokenValue { system, code }));
    }
    if aux {
        if let Some(d) = str_of(c, "display") {
            out.push(IndexValue::TokenText(string_value(d)));
        }
    }
}

fn tokens<'a>(item: &Item<'a>, out: &mut Vec<IndexValue<'a>>, aux: bool) {
    let code_only = |code: &'a str| {
        IndexValue::Token(TokenValue {
            system: None,
            code: Some(code),
        })
    };
    let (v, ty) = match *item {
        Item::Node(v, ty) => (v, ty),
        Item::Bool(b) => {
            out.push(code_only(if b { "true" } else { "false" }));
            return;
        }
        Item::Str(s) => {
            out.push(code_only(s));
            return;
        }
        _ => return,
    };
    let k = &*KNOWN;
    match v {
        Value::String(s) if !s.is_empty() => out.push(code_only(s)),
        Value::Bool(b) => out.push(code_only(if *b { "true" } else { "false" })),
        Value::Number(n) => out.push(code_only(n.as_str())),
        Value::Object(o) => {
            let unknown = ty == Ty::UNKNOWN;
            if is(ty, k.codeable_concept) || (unknown && o.contains_key("coding")) {
                if let Some(Value::Array(codings)) = field(v, "coding") {
                    for c in codings {
                        coding_token(c, out, aux);
                    }
                }
                if aux {
                    if let Some(t) = str_of(v, "text") {
                        out.push(IndexValue::TokenText(string_value(t)));
                    }
                }
            } else if is(ty, k.coding) || (unknown && o.contains_key("code")) {
                coding_token(v, out, aux);
            } else if is(ty, k.identifier) || is(ty, k.contact_point) || unknown {
                let system = str_of(v, "system");
                let value = str_of(v, "value");
                if system.is_some() || value.is_some() {
                    out.push(IndexValue::Token(TokenValue {
                        system,
                        code: value,
                    }));
                }
                if aux && is(ty, k.identifier) {
                    if let (Some(value), Some(Value::Array(types))) =
                        (value, field(v, "type").and_then(|t| field(t, "coding")))
                    {
                        for c in types {
                            if let Some(type_code) = str_of(c, "code") {
                                out.push(IndexValue::IdentifierOfType(OfTypeValue {
                                    type_system: str_of(c, "system"),
                                    type_code,
                                    value,
                                }));
                            }
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

fn period_range(v: &Value) -> Option<DateRange> {
    let start = str_of(v, "start").and_then(parse_date_range);
    let end = str_of(v, "end").and_then(parse_date_range);
    let low = start.map_or(Timestamp::MIN, |r| r.low);
    let high = end.map_or(Timestamp::MAX, |r| r.high);
    match (start, end) {
        (None, None) => None,
        // An inverted period is malformed; index the span its two ends cover.
        (Some(s), Some(e)) if low > high => Some(s.union(e)),
        _ => Some(DateRange { low, high }),
    }
}

fn dates<'a>(item: &Item<'a>, out: &mut Vec<IndexValue<'a>>) {
    let k = &*KNOWN;
    let Item::Node(v, ty) = *item else {
        if let Some(r) = item.as_str().and_then(parse_date_range) {
            out.push(IndexValue::Date(r));
        }
        return;
    };
    let range = match v {
        Value::String(s) => parse_date_range(s),
        Value::Object(o) if is(ty, k.timing) || (ty == Ty::UNKNOWN && o.contains_key("event")) => {
            let events = strs_of(v, "event").filter_map(parse_date_range);
            let bounds = field(v, "repeat")
                .and_then(|r| field(r, "boundsPeriod"))
                .and_then(period_range);
            events.chain(bounds).reduce(DateRange::union)
        }
        Value::Object(_) if is(ty, k.period) || ty == Ty::UNKNOWN => period_range(v),
        _ => None,
    };
    if let Some(r) = range {
        out.push(IndexValue::Date(r));
    }
}

fn number_of<'a>(item: &Item<'a>) -> Option<NumberValue<'a>> {
    let text = match item {
        Item::Node(Value::Number(n), _) => n.as_str(),
        Item::Decimal(d) => d,
        _ => return None,
    };
    let value = text.parse::<f64>().ok().filter(|f| f.is_finite())?;
    Some(NumberValue { text, value })
}

fn quantity_of(v: &Value) -> Option<QuantityValue<'_>> {
    let value = number_of(&Item::Node(field(v, "value")?, Ty::UNKNOWN))?;
    Some(QuantityValue {
        value,
        comparator: str_of(v, "comparator"),
        system: str_of(v, "system"),
        code: str_of(v, "code"),
        unit: str_of(v, "unit"),
    })
}

fn quantities<'a>(item: &Item<'a>, out: &mut Vec<IndexValue<'a>>) {
    let k = &*KNOWN;
    let Item::Node(v, ty) = *item else {
        return;
    };
    match v {
        Value::Number(_) => {
            if let Some(value) = number_of(item) {
                out.push(IndexValue::Quantity(QuantityValue {
                    value,
                    comparator: None,
                    system: None,
                    code: None,
                    unit: None,
                }));
            }
        }
        Value::Object(_) if is(ty, k.range) => {
            let low = field(v, "low").and_then(quantity_of);
            let high = field(v, "high").and_then(quantity_of);
            if low.is_some() || high.is_some() {
                out.push(IndexValue::QuantityRange(QuantityRangeValue { low, high }));
            }
        }
        Value::Object(_) if is(ty, k.money) => {
            if let Some(value) = field(v, "value").and_then(|n| number_of(&Item::Node(n, ty))) {
                out.push(IndexValue::Quantity(QuantityValue {
                    value,
                    comparator: None,
                    system: Some(CURRENCY_SYSTEM),
                    code: str_of(v, "currency"),
                    unit: None,
                }));
            }
        }
        Value::Object(_) if k.quantity.is_some_and(|q| ty.is_a(q)) || ty == Ty::UNKNOWN => {
            if let Some(q) = quantity_of(v) {
                out.push(IndexValue::Quantity(q));
            }
        }
        _ => {}
    }
}

fn references<'a>(item: &Item<'a>, env: &Env<'a>, out: &mut Vec<IndexValue<'a>>) {
    let Item::Node(v, ty) = *item else {
        if let Some(s) = item.as_str() {
            out.push(IndexValue::Uri(s));
        }
        return;
    };
    match v {
        Value::String(s) if !s.is_empty() => out.push(IndexValue::Uri(s)),
        Value::Object(_) if ty.is_resource() => {
            if let (Some(t), Some(id)) = (ty.name(), str_of(v, "id")) {
                out.push(IndexValue::Reference(ReferenceValue {
                    reference: Some(Cow::Owned(format!("{t}/{id}"))),
                    url: None,
                    target_type: Some(t),
                    identifier: None,
                }));
            }
        }
        Value::Object(_) => {
            let identifier = field(v, "identifier").and_then(|i| {
                let system = str_of(i, "system");
                let code = str_of(i, "value");
                (system.is_some() || code.is_some()).then_some(TokenValue { system, code })
            });
            let raw = str_of(v, "reference");
            if raw.is_none() && identifier.is_none() {
                return;
            }
            let parsed = raw.map(|r| (r, parse_reference(r, Some(env.resource))));
            out.push(IndexValue::Reference(ReferenceValue {
                reference: parsed.map(|(r, p)| Cow::Borrowed(p.local.unwrap_or(r))),
                url: parsed.and_then(|(r, p)| p.absolute.then_some(r)),
                target_type: parsed
                    .and_then(|(_, p)| p.target_type)
                    .or_else(|| str_of(v, "type")),
                identifier,
            }));
        }
        _ => {}
    }
}
