//! Parses search parameters against the R4 definitions and turns them into SQL over the typed
//! index tables. Every value is bound; only table and column names from this file are spliced.

use fhirgate_fhirpath::{parse_date_range, DateRange, ParamType, SearchParameterDef};
use sqlx::{Postgres, QueryBuilder};

use crate::crypto::Keyring;
use crate::error::{FhirError, Result};
use crate::search::index::{self, blind, kind, MAX_BLIND_PREFIX};
use crate::search::params::{ParamIds, Pid};

/// Deepest chain (`a.b.c`) or `_has` nesting accepted.
const MAX_DEPTH: usize = 3;

/// What the SQL needs to know besides the parameters.
pub struct Ctx<'a> {
    /// Blind-index key.
    pub keys: &'a Keyring,
    /// Parameter ids.
    pub ids: &'a ParamIds,
    /// This server's FHIR base URL (absolute references to it are local).
    pub base: &'a str,
}

/// The blind (value, system) hashes of one `identifier` alternative (`None` = any).
pub type IdentifierHashes = (Option<Vec<u8>>, Option<Vec<u8>>);

/// One parsed `name[:modifier]=value` of a resource type: AND of these, each an OR of values.
#[derive(Debug, Clone)]
pub enum Clause {
    /// `_id`.
    Id(Vec<String>, bool),
    /// `identifier`, from the per-version blind index `resource_identifier`: alternatives of
    /// (value hash, system hash), `:not`, or `:missing`.
    Identifier {
        /// The resource type the hashes were made for.
        rt: String,
        /// Alternatives.
        alts: Vec<IdentifierHashes>,
        /// `:not`.
        negate: bool,
        /// `:missing` instead of values.
        missing: Option<bool>,
    },
    /// `_lastUpdated` (one value per clause).
    LastUpdated(Prefix, DateRange),
    /// `:missing` (table, parameter, a combo's plain parameter, missing).
    Missing(&'static str, Pid, Option<Pid>, bool),
    /// A value test on an index table: `rid [not] in (select rid from table where pid and (…))`.
    Index {
        /// Table.
        table: &'static str,
        /// Parameter id.
        pid: Pid,
        /// For a combo parameter, its plain parameter (searched too).
        also: Option<Pid>,
        /// The parameter's code.
        code: String,
        /// `:not`.
        negate: bool,
        /// Alternatives (OR).
        alts: Vec<Alt>,
    },
    /// Chained: the reference parameter points at resources matching `inner`.
    Chain {
        /// The reference parameter.
        pid: Pid,
        /// Its code.
        code: String,
        /// Per target type, what targets of that type must match.
        targets: Vec<(String, Clause)>,
    },
    /// `_has:Type:param:...`: resources of `rt` referring to this one through `pid` match `inner`.
    Has {
        /// Referring type.
        rt: String,
        /// Its reference parameter.
        pid: Pid,
        /// What the referring resources must match.
        inner: Box<Clause>,
    },
}

/// One alternative value test.
#[derive(Debug, Clone)]
pub enum Alt {
    /// SQL with bound values, `?` marking where each goes in order.
    Sql(String, Vec<Bind>),
}

/// A bound value.
#[derive(Debug, Clone)]
pub enum Bind {
    /// Text.
    Text(String),
    /// Texts.
    Texts(Vec<String>),
    /// Bytes.
    Bytes(Vec<u8>),
    /// Float.
    Float(f64),
    /// Microseconds since 1970, bound as a timestamp.
    Micros(i64),
}

/// A comparison prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    /// eq
    Eq,
    /// ne
    Ne,
    /// gt
    Gt,
    /// lt
    Lt,
    /// ge
    Ge,
    /// le
    Le,
    /// sa
    Sa,
    /// eb
    Eb,
    /// ap
    Ap,
}

/// Splits a prefix off an ordered value (`ge2024` → (Ge, "2024")).
pub fn split_prefix(v: &str) -> (Prefix, &str) {
    let table = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (p, prefix) in table {
        if let Some(rest) = v.strip_prefix(p) {
            return (prefix, rest);
        }
    }
    (Prefix::Eq, v)
}

/// Splits on unescaped `sep` and unescapes `\,`, `\|`, `\$`, `\\`.
pub fn split_escaped(v: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n) if n == sep => out.last_mut().map_or((), |s| s.push(n)),
                Some(n) => {
                    if let Some(s) = out.last_mut() {
                        s.push('\\');
                        s.push(n);
                    }
                }
                None => out.last_mut().map_or((), |s| s.push('\\')),
            }
        } else if c == sep {
            out.push(String::new());
        } else if let Some(s) = out.last_mut() {
            s.push(c);
        }
    }
    out
}

fn unescape(v: &str) -> String {
    v.replace("\\,", ",")
        .replace("\\|", "|")
        .replace("\\$", "$")
        .replace("\\\\", "\\")
}

fn bad(param: &str, msg: impl Into<String>) -> FhirError {
    FhirError::bad_request(param, msg)
}

/// Parses one `name[:modifier][.chain]` = `value` of type `rt` into a clause. `Ok(None)` means
/// the parameter is unknown (the caller applies `Prefer: handling`).
pub fn parse(
    ctx: &Ctx<'_>,
    rt: &str,
    name: &str,
    value: &str,
    depth: usize,
) -> Result<Option<Clause>> {
    if depth > MAX_DEPTH {
        return Err(bad(
            name,
            format!("'{name}' nests chains deeper than {MAX_DEPTH} levels"),
        ));
    }
    if let Some(rest) = name.strip_prefix("_has:") {
        return parse_has(ctx, rt, name, rest, value, depth).map(Some);
    }
    // Chain: `subject:Patient.identifier`, `patient.name`.
    if let Some((head, rest)) = name.split_once('.') {
        let (code, modifier) = split_modifier(head);
        let Some(def) = fhirgate_fhirpath::parameter(rt, code) else {
            return Ok(None);
        };
        if def.param_type != ParamType::Reference {
            return Err(bad(
                name,
                format!(
                    "'{code}' is a {} parameter of {rt}; only reference parameters can be chained",
                    def.param_type.as_str()
                ),
            ));
        }
        let types: Vec<String> = match modifier {
            Some(t) if fhirgate_fhirpath::is_resource_type(t) => vec![t.to_owned()],
            Some(m) => {
                return Err(bad(
                    name,
                    format!("modifier ':{m}' cannot be used in a chain; use a resource type"),
                ))
            }
            None => def.target.clone(),
        };
        let next = rest.split(['.', ':']).next().unwrap_or(rest);
        let candidates: Vec<String> = types
            .into_iter()
            .filter(|t| fhirgate_fhirpath::parameter(t, next).is_some())
            .collect();
        if candidates.is_empty() {
            return Err(bad(
                name,
                format!("no target type of '{code}' has a search parameter '{next}'"),
            ));
        }
        let mut targets = Vec::new();
        for t in &candidates {
            match parse(ctx, t, rest, value, depth + 1)? {
                Some(c) => targets.push((t.clone(), c)),
                None => {
                    return Err(bad(
                        name,
                        format!("'{rest}' is not a search parameter of {t}"),
                    ))
                }
            }
        }
        let pid = pid_of(ctx, rt, code, name)?;
        return Ok(Some(Clause::Chain {
            pid,
            code: code.to_owned(),
            targets,
        }));
    }
    let (code, modifier) = split_modifier(name);
    if matches!(code, "_text" | "_content") {
        return Err(FhirError::BadRequest(crate::error::OutcomeIssue::at(
            crate::error::IssueType::NotSupported,
            name,
            format!("'{code}' is not supported: this server does not index narrative or full text (search the coded and structured parameters instead)"),
        )));
    }
    if code == "_id" {
        return match modifier {
            None => Ok(Some(Clause::Id(
                split_escaped(value, ',').into_iter().collect(),
                false,
            ))),
            Some("not") => Ok(Some(Clause::Id(
                split_escaped(value, ',').into_iter().collect(),
                true,
            ))),
            Some(m) => Err(bad(
                name,
                format!("modifier ':{m}' is not supported for _id"),
            )),
        };
    }
    if code == "_lastUpdated" {
        if modifier.is_some() {
            return Err(bad(name, "_lastUpdated takes no modifier"));
        }
        let (prefix, text) = split_prefix(value);
        let range = parse_date_range(text).ok_or_else(|| {
            bad(
                name,
                format!("'{value}' is not a valid date for _lastUpdated"),
            )
        })?;
        return Ok(Some(Clause::LastUpdated(prefix, range)));
    }
    let Some(def) = fhirgate_fhirpath::parameter(rt, code) else {
        return Ok(None);
    };
    if def.param_type == ParamType::Special || def.expression.is_none() {
        return Err(bad(
            name,
            format!("search parameter '{code}' of {rt} is not supported by this server"),
        ));
    }
    let pid = pid_of(ctx, rt, code, name)?;
    let blind_param = crate::search::index::is_blind(rt, code);
    if code == "identifier" && matches!(modifier, None | Some("not") | Some("missing")) {
        return identifier_clause(ctx, rt, name, modifier, value).map(Some);
    }
    if modifier == Some("missing") {
        let missing = parse_missing(name, value)?;
        let also = code
            .strip_prefix("combo-")
            .and_then(|_| ctx.ids.combo_partner(rt, code));
        return Ok(Some(Clause::Missing(
            table_of(def, blind_param),
            pid,
            also,
            missing,
        )));
    }
    let values = split_escaped(value, ',');
    if values.iter().any(String::is_empty) {
        return Err(bad(name, format!("'{name}' has an empty value")));
    }
    // A combo parameter also reads its plain parameter's rows (of the same pseudo-parameter).
    let also_for = |suffix: &str| -> Option<Pid> {
        let plain = code.strip_prefix("combo-")?;
        ctx.ids.combo_partner(rt, code)?;
        ctx.ids.get(rt, &format!("{plain}{suffix}"))
    };
    let mut also = also_for("");
    let mut negate = false;
    let mut alts = Vec::new();
    let mut table = table_of(def, blind_param);
    let mut pid = pid;
    match def.param_type {
        ParamType::Token => match modifier {
            None | Some("not") => {
                negate = modifier == Some("not");
                for v in &values {
                    alts.push(token_alt(ctx, pid, blind_param, v));
                }
            }
            Some("text") => {
                if blind_param {
                    return Err(bad(
                        name,
                        format!("'{code}' of {rt} is blind-indexed: ':text' cannot be searched"),
                    ));
                }
                pid = pid_of(ctx, rt, &format!("{code}:text"), name)?;
                also = also_for(":text");
                table = "idx_string";
                for v in &values {
                    alts.push(Alt::Sql(
                        String::from("norm like ? escape '\\'"),
                        vec![Bind::Text(like_prefix(&fhirgate_fhirpath::normalize(v)))],
                    ));
                }
            }
            Some("of-type") if code == "identifier" => {
                pid = pid_of(ctx, rt, "identifier:of-type", name)?;
                also = None;
                table = "idx_blind";
                for v in &values {
                    let parts: Vec<&str> = v.splitn(3, '|').collect();
                    let [s, c, val] = parts.as_slice() else {
                        return Err(bad(
                            name,
                            format!("':of-type' takes system|code|value, not '{v}'"),
                        ));
                    };
                    let text = index::of_type_text(s, c, val);
                    alts.push(Alt::Sql(
                        String::from("hash = ?"),
                        vec![Bind::Bytes(blind(ctx.keys, pid, kind::OF_TYPE, &text))],
                    ));
                }
            }
            Some(m @ ("in" | "not-in")) => {
                if blind_param {
                    return Err(FhirError::BadRequest(crate::error::OutcomeIssue::at(
                        crate::error::IssueType::NotSupported,
                        name,
                        format!("'{code}' of {rt} is blind-indexed and holds no codes of a ValueSet: ':{m}' cannot be searched"),
                    )));
                }
                negate = m == "not-in";
                for v in &values {
                    let Some((system, codes)) = value_set(v) else {
                        return Err(FhirError::BadRequest(crate::error::OutcomeIssue::at(
                            crate::error::IssueType::NotSupported,
                            name,
                            format!(
                                "ValueSet '{v}' is not known to this server; ':{m}' supports {}",
                                VALUE_SETS
                                    .iter()
                                    .map(|(url, ..)| url.to_string())
                                    .collect::<Vec<_>>()
                                    .join(" and ")
                            ),
                        )));
                    };
                    alts.push(Alt::Sql(
                        String::from("(system = ? and code = any(?))"),
                        vec![
                            Bind::Text(system.to_owned()),
                            Bind::Texts(codes.iter().map(|c| (*c).to_owned()).collect()),
                        ],
                    ));
                }
            }
            Some(m @ ("above" | "below")) => {
                let v = values.first().map_or("", String::as_str);
                let system = match split_escaped(v, '|').as_slice() {
                    [s, _] if !s.is_empty() => format!("system '{s}'"),
                    _ => format!("'{v}' (no system given)"),
                };
                return Err(FhirError::BadRequest(crate::error::OutcomeIssue::at(
                    crate::error::IssueType::NotSupported,
                    name,
                    format!("':{m}' needs a code hierarchy, and none is available on this server for {system}: the code systems it resolves locally are flat (':above' and ':below' work on uri parameters)"),
                )));
            }
            Some(m) => return Err(unsupported_modifier(name, m, def)),
        },
        ParamType::String => {
            for v in &values {
                let norm = fhirgate_fhirpath::normalize(v);
                let alt = match (modifier, blind_param) {
                    (None, false) => Alt::Sql(
                        String::from("norm like ? escape '\\'"),
                        vec![Bind::Text(like_prefix(&norm))],
                    ),
                    (Some("exact"), false) => {
                        Alt::Sql(String::from("exact = ?"), vec![Bind::Text(v.clone())])
                    }
                    (Some("contains"), false) => Alt::Sql(
                        String::from("norm like ? escape '\\'"),
                        vec![Bind::Text(format!("%{}", like_prefix(&norm)))],
                    ),
                    (None, true) => {
                        if norm.chars().count() > MAX_BLIND_PREFIX {
                            Alt::Sql(
                                String::from("hash = ?"),
                                vec![Bind::Bytes(blind(ctx.keys, pid, kind::NORM, &norm))],
                            )
                        } else {
                            Alt::Sql(
                                String::from("hash = ?"),
                                vec![Bind::Bytes(blind(ctx.keys, pid, kind::PREFIX, &norm))],
                            )
                        }
                    }
                    (Some("exact"), true) => Alt::Sql(
                        String::from("hash = ?"),
                        vec![Bind::Bytes(blind(ctx.keys, pid, kind::EXACT, v))],
                    ),
                    (Some("contains"), true) => {
                        return Err(FhirError::BadRequest(crate::error::OutcomeIssue::at(
                            crate::error::IssueType::NotSupported,
                            name,
                            format!("'{code}' of {rt} identifies a person and is stored only as keyed hashes: ':contains' cannot be searched (use the default starts-with or ':exact')"),
                        )));
                    }
                    (Some(m), _) => return Err(unsupported_modifier(name, m, def)),
                };
                alts.push(alt);
            }
        }
        ParamType::Date => {
            if let Some(m) = modifier {
                return Err(unsupported_modifier(name, m, def));
            }
            // A blind date is searched by its keyed hashes, except for ranges: those compare
            // its plain year (`birthdate:year`), at year precision only.
            let year = blind_param
                .then(|| ctx.ids.get(rt, &format!("{code}:year")))
                .flatten();
            let ranged = values.iter().any(|v| {
                let (prefix, text) = split_prefix(v);
                prefix != Prefix::Eq || text.contains('T')
            });
            match year {
                Some(year_pid) if ranged => {
                    pid = year_pid;
                    table = "idx_date";
                    for v in &values {
                        alts.push(year_alt(name, v)?);
                    }
                }
                _ => {
                    for v in &values {
                        alts.push(date_alt(ctx, name, pid, blind_param, v)?);
                    }
                }
            }
        }
        ParamType::Number | ParamType::Quantity => {
            if let Some(m) = modifier {
                return Err(unsupported_modifier(name, m, def));
            }
            for v in &values {
                alts.push(number_alt(name, v, def.param_type == ParamType::Quantity)?);
            }
        }
        ParamType::Reference => {
            // `patient` answered from `subject` (`subject.where(resolve() is Patient)`) refers
            // only to Patients, whatever targets its shared definition lists.
            let mut type_mod: Option<&str> = ctx.ids.is_alias(rt, code).then_some("Patient");
            match modifier {
                None => {}
                Some("identifier") => {
                    pid = pid_of(ctx, rt, &format!("{code}:identifier"), name)?;
                    also = None;
                    table = "idx_blind";
                    for v in &values {
                        alts.push(token_alt(ctx, pid, true, v));
                    }
                }
                Some(t) if fhirgate_fhirpath::is_resource_type(t) => {
                    if !def.target.iter().any(|x| x == t) {
                        return Err(bad(name, format!("'{code}' of {rt} cannot refer to a {t}")));
                    }
                    type_mod = Some(t);
                }
                Some(m) => return Err(unsupported_modifier(name, m, def)),
            }
            if modifier != Some("identifier") {
                let mut targets = Vec::new();
                for v in &values {
                    targets.extend(reference_targets(ctx, def, type_mod, v));
                }
                alts.push(Alt::Sql(
                    String::from("target = any(?)"),
                    vec![Bind::Texts(targets)],
                ));
            }
        }
        ParamType::Uri => {
            for v in &values {
                alts.push(match modifier {
                    None => Alt::Sql(String::from("code = ?"), vec![Bind::Text(v.clone())]),
                    Some("below") => Alt::Sql(String::from("code like ? escape '\\'"), vec![Bind::Text(like_prefix(v))]),
                    Some("above") => Alt::Sql(String::from("? like replace(replace(replace(code, '\\', '\\\\'), '%', '\\%'), '_', '\\_') || '%' escape '\\'"), vec![Bind::Text(v.clone())]),
                    Some(m) => return Err(unsupported_modifier(name, m, def)),
                });
            }
        }
        ParamType::Composite => {
            if let Some(m) = modifier {
                return Err(unsupported_modifier(name, m, def));
            }
            for v in &values {
                alts.push(composite_alt(ctx, pid, name, def, v)?);
            }
        }
        ParamType::Special => unreachable_special(name)?,
    }
    Ok(Some(Clause::Index {
        table,
        pid,
        also,
        code: code.to_owned(),
        negate,
        alts,
    }))
}

/// The value of `:missing`.
fn parse_missing(name: &str, value: &str) -> Result<bool> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad(
            name,
            format!("':missing' takes true or false, not '{value}'"),
        )),
    }
}

fn identifier_clause(
    ctx: &Ctx<'_>,
    rt: &str,
    name: &str,
    modifier: Option<&str>,
    value: &str,
) -> Result<Clause> {
    if modifier == Some("missing") {
        let missing = parse_missing(name, value)?;
        return Ok(Clause::Identifier {
            rt: rt.to_owned(),
            alts: Vec::new(),
            negate: false,
            missing: Some(missing),
        });
    }
    let mut alts = Vec::new();
    for v in split_escaped(value, ',') {
        if v.is_empty() || v == "|" {
            return Err(bad(name, format!("'{name}' has an empty value")));
        }
        alts.push(crate::storage::conditional::identifier_token(
            ctx.keys, rt, &v,
        ));
    }
    Ok(Clause::Identifier {
        rt: rt.to_owned(),
        alts,
        negate: modifier == Some("not"),
        missing: None,
    })
}

fn unreachable_special(name: &str) -> Result<()> {
    Err(bad(name, "special parameters are not supported"))
}

fn split_modifier(name: &str) -> (&str, Option<&str>) {
    match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    }
}

fn pid_of(ctx: &Ctx<'_>, rt: &str, code: &str, name: &str) -> Result<Pid> {
    ctx.ids
        .get(rt, ctx.ids.storage_code(rt, code))
        .ok_or_else(|| {
            bad(
                name,
                format!("search parameter '{code}' of {rt} is not indexed"),
            )
        })
}

fn unsupported_modifier(name: &str, m: &str, def: &SearchParameterDef) -> FhirError {
    FhirError::BadRequest(crate::error::OutcomeIssue::at(
        crate::error::IssueType::NotSupported,
        name,
        format!(
            "modifier ':{m}' is not supported for the {} parameter '{}'",
            def.param_type.as_str(),
            def.code
        ),
    ))
}

/// The table a parameter's values live in.
fn table_of(def: &SearchParameterDef, blind_param: bool) -> &'static str {
    if blind_param {
        return "idx_blind";
    }
    match def.param_type {
        ParamType::Token | ParamType::Uri => "idx_token",
        ParamType::String => "idx_string",
        ParamType::Date => "idx_date",
        ParamType::Number | ParamType::Quantity => "idx_number",
        ParamType::Reference => "idx_reference",
        ParamType::Composite => "idx_composite",
        ParamType::Special => "idx_token",
    }
}

/// `text%` for LIKE, with `%`, `_` and `\` escaped.
fn like_prefix(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 1);
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('%');
    s
}

fn token_alt(ctx: &Ctx<'_>, pid: Pid, blind_param: bool, v: &str) -> Alt {
    let parts = split_escaped(v, '|');
    let (system, code) = match parts.as_slice() {
        [code] => (None, Some(code.clone())),
        [s, c] => (Some(s.clone()), (!c.is_empty()).then(|| c.clone())),
        _ => (None, Some(unescape(v))),
    };
    if blind_param {
        let h = |k: &[u8], t: &str| Bind::Bytes(blind(ctx.keys, pid, k, t));
        return match (system, code) {
            (None, Some(c)) => Alt::Sql(String::from("hash = ?"), vec![h(kind::CODE, &c)]),
            (Some(s), Some(c)) => Alt::Sql(
                String::from("hash = ?"),
                vec![h(kind::SYSTEM_CODE, &format!("{s}|{c}"))],
            ),
            (Some(s), None) => Alt::Sql(String::from("hash = ?"), vec![h(kind::SYSTEM, &s)]),
            (None, None) => Alt::Sql(String::from("false"), vec![]),
        };
    }
    match (system, code) {
        (None, Some(c)) => Alt::Sql(String::from("code = ?"), vec![Bind::Text(c)]),
        (Some(s), Some(c)) if s.is_empty() => Alt::Sql(
            String::from("(code = ? and system is null)"),
            vec![Bind::Text(c)],
        ),
        (Some(s), Some(c)) => Alt::Sql(
            String::from("(code = ? and system = ?)"),
            vec![Bind::Text(c), Bind::Text(s)],
        ),
        (Some(s), None) => Alt::Sql(String::from("system = ?"), vec![Bind::Text(s)]),
        (None, None) => Alt::Sql(String::from("false"), vec![]),
    }
}

/// The range a date prefix compares against, as `(sql, binds)` over `low`/`high`.
fn date_alt(ctx: &Ctx<'_>, name: &str, pid: Pid, blind_param: bool, v: &str) -> Result<Alt> {
    let (prefix, text) = split_prefix(v);
    let range = parse_date_range(text).ok_or_else(|| {
        bad(name, format!("'{v}' is not a valid date search value (use an optional prefix eq, ne, gt, lt, ge, le, sa, eb or ap and a date such as 2024-03-01 or 2024-03-01T10:00:00Z)"))
    })?;
    if blind_param {
        if prefix != Prefix::Eq || text.contains('T') {
            return Err(FhirError::BadRequest(crate::error::OutcomeIssue::at(
                crate::error::IssueType::NotSupported,
                name,
                format!("'{name}' identifies a person and is stored only as keyed hashes: search it by a date (year, year-month or day) without a prefix"),
            )));
        }
        return Ok(Alt::Sql(
            String::from("hash = ?"),
            vec![Bind::Bytes(blind(ctx.keys, pid, kind::DATE, text))],
        ));
    }
    Ok(range_alt(prefix, range, "low", "high"))
}

/// The ValueSets `:in` and `:not-in` resolve locally, with the codes each holds (one system).
const VALUE_SETS: [(&str, &str, &[&str]); 2] = [
    // The R4 (4.0.1) expansion of the vital signs profile's result codes.
    (
        "http://hl7.org/fhir/ValueSet/observation-vitalsignresult",
        "http://loinc.org",
        &[
            "85353-1", "9279-1", "8867-4", "2708-6", "8310-5", "8302-2", "9843-4", "29463-7",
            "39156-5", "85354-9", "8480-6", "8462-4", "8478-0",
        ],
    ),
    // fhirgate's data classes (`fhir-profiles/fhirgate-consent.json`): the whole CodeSystem.
    (
        "https://fhirgate.org/ValueSet/data-class",
        fhirgate_consent::DATA_CLASS_SYSTEM,
        &[
            "vital-signs",
            "activity",
            "sleep",
            "body-measurement",
            fhirgate_consent::EVERYTHING,
        ],
    ),
];

/// The system and codes of a ValueSet this server resolves.
fn value_set(url: &str) -> Option<(&'static str, &'static [&'static str])> {
    VALUE_SETS
        .iter()
        .find(|(u, ..)| *u == url)
        .map(|(_, system, codes)| (*system, *codes))
}

/// Whether `micros` is the first instant of a year (UTC).
fn is_year_start(micros: i64) -> bool {
    use chrono::{Datelike, Timelike};
    chrono::DateTime::from_timestamp_micros(micros).is_some_and(|t| {
        t.ordinal() == 1 && t.num_seconds_from_midnight() == 0 && t.timestamp_subsec_micros() == 0
    })
}

/// A range search on a blind-indexed date, against its plain year: sound only when the bound the
/// prefix compares with falls on a year boundary, so the year alone decides as the full date
/// would. `ge`, `lt` and `eb` compare with the value's first instant (`ge1980`, `lt1990-01-01`);
/// `gt`, `le` and `sa` with its last (`gt1979`, `le1979-12-31`); `eq` and `ne` with both (a whole
/// year). `ap` widens by a fraction of the distance from now, which no year boundary bounds.
fn year_alt(name: &str, v: &str) -> Result<Alt> {
    let (prefix, text) = split_prefix(v);
    let range = parse_date_range(text).ok_or_else(|| {
        bad(name, format!("'{v}' is not a valid date search value (use an optional prefix and a year such as 1980)"))
    })?;
    let (starts, ends) = (
        is_year_start(range.low.micros()),
        is_year_start(range.high.micros() + 1),
    );
    let whole_year =
        starts && ends && range.high.micros() - range.low.micros() < 367 * 86_400_000_000;
    let why = "only the birth year is searchable by range, to keep exact dates private (they are stored only as keyed hashes)";
    let sound = match prefix {
        Prefix::Ap => {
            return Err(FhirError::BadRequest(crate::error::OutcomeIssue::at(
                crate::error::IssueType::NotSupported,
                name,
                format!("'{name}' does not take the prefix ap: {why}, and an approximate range does not fall on year boundaries; use ge and le with years"),
            )))
        }
        Prefix::Eq if !text.contains('T') && !whole_year => {
            return Err(FhirError::BadRequest(crate::error::OutcomeIssue::at(
                crate::error::IssueType::NotSupported,
                name,
                format!("'{v}' is an exact date and cannot be combined with a range in one '{name}' list: {why}; search the exact date on its own"),
            )))
        }
        Prefix::Eq | Prefix::Ne => whole_year,
        Prefix::Ge | Prefix::Lt | Prefix::Eb => starts,
        Prefix::Gt | Prefix::Le | Prefix::Sa => ends,
    };
    if !sound {
        return Err(FhirError::BadRequest(crate::error::OutcomeIssue::at(
            crate::error::IssueType::NotSupported,
            name,
            format!("'{v}' is finer than a year: {why}; give a year (ge1980, lt1990, gt1979) or a date on a year boundary (ge1980-01-01, le1979-12-31)"),
        )));
    }
    Ok(range_alt(prefix, range, "low", "high"))
}

fn range_alt(prefix: Prefix, r: DateRange, low: &str, high: &str) -> Alt {
    let (sl, sh) = (r.low.micros(), r.high.micros());
    let m = Bind::Micros;
    let (sql, binds) = match prefix {
        Prefix::Eq => (format!("({low} >= ? and {high} <= ?)"), vec![m(sl), m(sh)]),
        Prefix::Ne => (
            format!("not ({low} >= ? and {high} <= ?)"),
            vec![m(sl), m(sh)],
        ),
        Prefix::Gt => (format!("{high} > ?"), vec![m(sh)]),
        Prefix::Lt => (format!("{low} < ?"), vec![m(sl)]),
        Prefix::Ge => (format!("{high} >= ?"), vec![m(sl)]),
        Prefix::Le => (format!("{low} <= ?"), vec![m(sh)]),
        Prefix::Sa => (format!("{low} > ?"), vec![m(sh)]),
        Prefix::Eb => (format!("{high} < ?"), vec![m(sl)]),
        Prefix::Ap => {
            // Approximately: within 10% of the distance from now, and at least a day.
            let now = chrono::Utc::now().timestamp_micros();
            let slack = ((now - sl).abs() / 10).max(86_400_000_000);
            (
                format!("({high} >= ? and {low} <= ?)"),
                vec![m(sl - slack), m(sh + slack)],
            )
        }
    };
    Alt::Sql(sql, binds)
}

/// `[prefix]number[|system|code]`.
fn number_alt(name: &str, v: &str, quantity: bool) -> Result<Alt> {
    let (prefix, rest) = split_prefix(v);
    let parts = split_escaped(rest, '|');
    let (num, system, code) = match parts.as_slice() {
        [n] => (n.as_str(), None, None),
        [n, s, c] if quantity => (n.as_str(), Some(s.as_str()), Some(c.as_str())),
        _ => {
            return Err(bad(
                name,
                format!(
                    "'{v}' is not a valid {} search value",
                    if quantity {
                        "quantity (number|system|code)"
                    } else {
                        "number"
                    }
                ),
            ))
        }
    };
    let value: f64 = num
        .parse()
        .ok()
        .filter(|x: &f64| {
            x.is_finite()
                && !num.is_empty()
                && num
                    .bytes()
                    .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
        })
        .ok_or_else(|| bad(name, format!("'{num}' in '{v}' is not a number")))?;
    // Implicit precision: 100 means [99.5, 100.5); 1e2 likewise by its significant digits.
    let decimals = num
        .split(['e', 'E'])
        .next()
        .unwrap_or("")
        .split_once('.')
        .map_or(0, |(_, d)| d.len()) as i32;
    let half = 0.5 * 10f64.powi(-decimals);
    let (lo, hi) = (value - half, value + half);
    let f = Bind::Float;
    let (sql, mut binds): (&str, Vec<Bind>) = match prefix {
        Prefix::Eq => ("(low >= ? and high < ?)", vec![f(lo), f(hi)]),
        Prefix::Ne => ("not (low >= ? and high < ?)", vec![f(lo), f(hi)]),
        Prefix::Gt => ("high > ?", vec![f(value)]),
        Prefix::Lt => ("low < ?", vec![f(value)]),
        Prefix::Ge => ("high >= ?", vec![f(value)]),
        Prefix::Le => ("low <= ?", vec![f(value)]),
        Prefix::Sa => ("low > ?", vec![f(value)]),
        Prefix::Eb => ("high < ?", vec![f(value)]),
        Prefix::Ap => {
            let slack = (value.abs() * 0.1).max(half);
            (
                "(high >= ? and low <= ?)",
                vec![f(value - slack), f(value + slack)],
            )
        }
    };
    let sql: String = match (
        system.filter(|s| !s.is_empty()),
        code.filter(|c| !c.is_empty()),
    ) {
        (None, None) => sql.to_owned(),
        (Some(s), Some(c)) => {
            binds.push(Bind::Text(s.to_owned()));
            binds.push(Bind::Text(c.to_owned()));
            format!("({sql} and system = ? and code = ?)")
        }
        (None, Some(c)) => {
            binds.push(Bind::Text(c.to_owned()));
            binds.push(Bind::Text(c.to_owned()));
            format!("({sql} and (code = ? or unit = ?))")
        }
        (Some(s), None) => {
            binds.push(Bind::Text(s.to_owned()));
            format!("({sql} and system = ?)")
        }
    };
    Ok(Alt::Sql(sql, binds))
}

/// The `target` values a reference search value matches.
fn reference_targets(
    ctx: &Ctx<'_>,
    def: &SearchParameterDef,
    type_mod: Option<&str>,
    v: &str,
) -> Vec<String> {
    let local = v
        .strip_prefix(ctx.base)
        .and_then(|r| r.strip_prefix('/'))
        .unwrap_or(v);
    // Drop a version: `Patient/1/_history/2` → `Patient/1`.
    let local = match local.split_once("/_history/") {
        Some((r, _)) => r,
        None => local,
    };
    if local.contains("://") || local.starts_with("urn:") || local.starts_with('#') {
        return vec![local.to_owned()];
    }
    match local.split_once('/') {
        Some((t, id)) => {
            if type_mod.is_some_and(|m| m != t) {
                Vec::new()
            } else {
                vec![format!("{t}/{id}")]
            }
        }
        None => match type_mod {
            Some(t) => vec![format!("{t}/{local}")],
            None => {
                let mut targets: Vec<String> =
                    def.target.iter().map(|t| format!("{t}/{local}")).collect();
                if targets.is_empty() {
                    targets.push(local.to_owned());
                }
                targets
            }
        },
    }
}

/// `token$value` for a composite whose first component is a token.
fn composite_alt(
    ctx: &Ctx<'_>,
    pid: Pid,
    name: &str,
    def: &SearchParameterDef,
    v: &str,
) -> Result<Alt> {
    let parts = split_escaped(v, '$');
    let [first, second] = parts.as_slice() else {
        return Err(bad(name, format!("'{v}' is not a valid composite value: give one value per component, separated by '$'")));
    };
    let Some(comp2) = def.components.get(1) else {
        return Err(bad(name, "composite parameter without components"));
    };
    let t = split_escaped(first, '|');
    let (s1, c1) = match t.as_slice() {
        [c] => (None, c.clone()),
        [s, c] => (Some(s.clone()), c.clone()),
        _ => return Err(bad(name, format!("'{first}' is not a token"))),
    };
    let mut sql = String::from("code1 = ?");
    let mut binds = vec![Bind::Text(c1)];
    if let Some(s) = s1.filter(|s| !s.is_empty()) {
        sql.push_str(" and system1 = ?");
        binds.push(Bind::Text(s));
    }
    match comp2.param_type {
        ParamType::Token => {
            let t2 = split_escaped(second, '|');
            match t2.as_slice() {
                [c] => {
                    sql.push_str(" and code2 = ?");
                    binds.push(Bind::Text(c.clone()));
                }
                [s, c] => {
                    sql.push_str(" and code2 = ? and system2 = ?");
                    binds.push(Bind::Text(c.clone()));
                    binds.push(Bind::Text(s.clone()));
                }
                _ => return Err(bad(name, format!("'{second}' is not a token"))),
            }
        }
        ParamType::String => {
            sql.push_str(" and code2 = ?");
            binds.push(Bind::Text(index::composite_string(
                ctx.keys,
                pid,
                &fhirgate_fhirpath::normalize(second),
            )));
        }
        ParamType::Quantity | ParamType::Number => {
            let Alt::Sql(inner, b) =
                number_alt(name, second, comp2.param_type == ParamType::Quantity)?;
            let inner = inner
                .replace("low", "num")
                .replace("high", "num")
                .replace("system = ?", "system2 = ?")
                .replace("(code = ? or unit = ?)", "(code2 = ? or code2 = ?)")
                .replace("code = ?", "code2 = ?");
            sql.push_str(" and ");
            sql.push_str(&inner);
            binds.extend(b);
        }
        ParamType::Date => {
            let (prefix, text) = split_prefix(second);
            let range = parse_date_range(text)
                .ok_or_else(|| bad(name, format!("'{second}' is not a valid date")))?;
            let Alt::Sql(inner, b) = range_alt(prefix, range, "low", "high");
            sql.push_str(" and ");
            sql.push_str(&inner);
            binds.extend(b);
        }
        ParamType::Reference => {
            sql.push_str(" and code2 = ?");
            binds.push(Bind::Text(second.clone()));
        }
        _ => {
            return Err(bad(
                name,
                format!("composite '{}' is not supported", def.code),
            ))
        }
    }
    Ok(Alt::Sql(format!("({sql})"), binds))
}

fn parse_has(
    ctx: &Ctx<'_>,
    rt: &str,
    name: &str,
    rest: &str,
    value: &str,
    depth: usize,
) -> Result<Clause> {
    // `Observation:patient:code` or nested `Observation:patient:_has:…`.
    let mut it = rest.splitn(3, ':');
    let (Some(src), Some(param), Some(inner_name)) = (it.next(), it.next(), it.next()) else {
        return Err(bad(
            name,
            "_has takes _has:Type:reference-parameter:parameter",
        ));
    };
    if !fhirgate_fhirpath::is_resource_type(src) {
        return Err(bad(
            name,
            format!("'{src}' in '{name}' is not a resource type"),
        ));
    }
    let Some(def) = fhirgate_fhirpath::parameter(src, param) else {
        return Err(bad(
            name,
            format!("'{param}' is not a search parameter of {src}"),
        ));
    };
    if def.param_type != ParamType::Reference {
        return Err(bad(
            name,
            format!("'{param}' of {src} is not a reference parameter"),
        ));
    }
    if !def.target.iter().any(|t| t == rt) {
        return Err(bad(
            name,
            format!("'{param}' of {src} cannot refer to a {rt}"),
        ));
    }
    let pid = pid_of(ctx, src, param, name)?;
    let inner = parse(ctx, src, inner_name, value, depth + 1)?.ok_or_else(|| {
        bad(
            name,
            format!("'{inner_name}' is not a search parameter of {src}"),
        )
    })?;
    Ok(Clause::Has {
        rt: src.to_owned(),
        pid,
        inner: Box::new(inner),
    })
}

/// Appends `clause` as a predicate on the resource row aliased `r` (with type `rt`), using
/// `compartment` as a redundant filter on index rows when known.
///
/// The targets of a chain and the sources of `_has` are rows like any other: with a `policy`,
/// only those the caller sees can match, so neither is a window onto what it may not see.
pub fn push_clause(
    qb: &mut QueryBuilder<'static, Postgres>,
    clause: &Clause,
    r: &str,
    compartment: Option<&str>,
    depth: usize,
    policy: Option<&crate::access::Policy>,
) {
    match clause {
        Clause::Id(ids, negate) => {
            qb.push(format!(
                "{}{r}.id = any(",
                if *negate { "not " } else { "" }
            ));
            qb.push_bind(ids.clone());
            qb.push(")");
        }
        Clause::Identifier {
            rt,
            alts,
            negate,
            missing,
        } => {
            if let Some(m) = missing {
                qb.push(format!(
                    "{}exists (select 1 from resource_identifier m where m.resource_type = {r}.resource_type and m.id = {r}.id and m.version_id = {r}.version_id)",
                    if *m { "not " } else { "" }
                ));
                return;
            }
            qb.push(format!(
                "({r}.resource_type, {r}.id, {r}.version_id) {}in (select i.resource_type, i.id, i.version_id from resource_identifier i where i.resource_type = ",
                if *negate { "not " } else { "" }
            ));
            qb.push_bind(rt.clone());
            qb.push(" and (");
            for (k, (value, system)) in alts.iter().enumerate() {
                if k > 0 {
                    qb.push(" or ");
                }
                qb.push("(true");
                if let Some(v) = value {
                    qb.push(" and i.value_hash = ");
                    qb.push_bind(v.clone());
                }
                if let Some(s) = system {
                    qb.push(" and i.system_hash = ");
                    qb.push_bind(s.clone());
                }
                qb.push(")");
            }
            qb.push("))");
        }
        Clause::LastUpdated(prefix, range) => {
            let col = format!("{r}.last_updated");
            let Alt::Sql(sql, binds) = range_alt(*prefix, *range, &col, &col);
            push_sql(qb, &sql, binds);
        }
        Clause::Missing(table, pid, also, missing) => {
            qb.push(format!(
                "{}exists (select 1 from {table} m where m.rid = {r}.rid and m.",
                if *missing { "not " } else { "" }
            ));
            push_pids(qb, *pid, *also);
            qb.push(")");
        }
        Clause::Index {
            table,
            pid,
            also,
            negate,
            alts,
            ..
        } => {
            qb.push(format!(
                "{r}.rid {}in (select rid from {table} where ",
                if *negate { "not " } else { "" }
            ));
            push_pids(qb, *pid, *also);
            if let (Some(c), false) = (compartment, *negate) {
                qb.push(" and compartment = ");
                qb.push_bind(c.to_owned());
            }
            qb.push(" and (");
            push_alts(qb, alts);
            qb.push("))");
        }
        Clause::Chain { pid, targets, .. } => {
            let a = format!("c{depth}");
            qb.push(format!(
                "{r}.rid in (select rid from idx_reference where pid = "
            ));
            qb.push_bind(*pid);
            qb.push(format!(" and target in (select {a}.resource_type || '/' || {a}.id from resource {a} where not {a}.deleted and ("));
            for (i, (t, inner)) in targets.iter().enumerate() {
                if i > 0 {
                    qb.push(" or ");
                }
                qb.push(format!("({a}.resource_type = "));
                qb.push_bind(t.clone());
                qb.push(" and ");
                push_clause(qb, inner, &a, None, depth + 1, policy);
                qb.push(")");
            }
            qb.push(")");
            if let Some(p) = policy {
                p.restrict(qb, &a, crate::auth::scopes::Permission::Search, None, None);
            }
            qb.push("))");
        }
        Clause::Has { rt, pid, inner } => {
            let a = format!("h{depth}");
            qb.push(format!("({r}.resource_type || '/' || {r}.id) in (select target from idx_reference x where x.pid = "));
            qb.push_bind(*pid);
            qb.push(format!(
                " and x.rid in (select {a}.rid from resource {a} where {a}.resource_type = "
            ));
            qb.push_bind(rt.clone());
            qb.push(format!(" and not {a}.deleted and "));
            push_clause(qb, inner, &a, None, depth + 1, policy);
            if let Some(p) = policy {
                p.restrict(qb, &a, crate::auth::scopes::Permission::Search, None, None);
            }
            qb.push("))");
        }
    }
}

/// `pid = $1`, or `pid in ($1, $2)` for a combo parameter.
fn push_pids(qb: &mut QueryBuilder<'static, Postgres>, pid: Pid, also: Option<Pid>) {
    match also {
        None => {
            qb.push("pid = ");
            qb.push_bind(pid);
        }
        Some(other) => {
            qb.push("pid in (");
            qb.push_bind(pid);
            qb.push(", ");
            qb.push_bind(other);
            qb.push(")");
        }
    }
}

/// Alternatives joined by `or`.
pub fn push_alts(qb: &mut QueryBuilder<'static, Postgres>, alts: &[Alt]) {
    for (i, Alt::Sql(sql, binds)) in alts.iter().enumerate() {
        if i > 0 {
            qb.push(" or ");
        }
        push_sql(qb, sql, binds.clone());
    }
}

/// Pushes `sql`, replacing each `?` with the next bind.
pub fn push_sql(qb: &mut QueryBuilder<'static, Postgres>, sql: &str, binds: Vec<Bind>) {
    let mut binds = binds.into_iter();
    let mut parts = sql.split('?').peekable();
    while let Some(part) = parts.next() {
        qb.push(part);
        if parts.peek().is_some() {
            match binds.next() {
                Some(Bind::Text(t)) => qb.push_bind(t),
                Some(Bind::Texts(t)) => qb.push_bind(t),
                Some(Bind::Bytes(b)) => qb.push_bind(b),
                Some(Bind::Float(f)) => qb.push_bind(f),
                Some(Bind::Micros(m)) => {
                    qb.push_bind(chrono::DateTime::from_timestamp_micros(m).unwrap_or_default())
                }
                None => qb.push("null"),
            };
        }
    }
}
