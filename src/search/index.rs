//! Index rows of a resource, from the R4 SearchParameter expressions (`fhirgate-fhirpath`), typed
//! for the tables of `migrations/20261201000008_search_index.sql`. Values that identify a person
//! become keyed blind hashes ([`blind`]); everything else stays plain so ranges can be searched.

use fhirgate_fhirpath::{IndexEntry, IndexValue, QuantityValue, TokenValue};
use serde_json::Value;

use crate::crypto::Keyring;
use crate::search::params::{ParamIds, Pid};

/// Longest prefix (in characters) a blind string index keeps hashes for; longer starts-with
/// searches on blind-indexed parameters are refused.
pub const MAX_BLIND_PREFIX: usize = 64;
/// Longest string kept in a plain string index.
const MAX_PLAIN: usize = 512;

/// One index row of one resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    /// `idx_token`: a token (system, code), or a uri in `code`.
    Token(Pid, Option<String>, Option<String>),
    /// `idx_string`: normalised and as written.
    String(Pid, String, String),
    /// `idx_date`: an inclusive range in microseconds since 1970.
    Date(Pid, i64, i64),
    /// `idx_number`: low, high, unit system, unit code, unit text.
    Number(
        Pid,
        Option<f64>,
        Option<f64>,
        Option<String>,
        Option<String>,
        Option<String>,
    ),
    /// `idx_reference`: `Type/id`, a URL or `#contained`.
    Reference(Pid, String),
    /// `idx_composite`.
    Composite(Pid, Composite),
    /// `idx_blind`: a keyed hash.
    Blind(Pid, Vec<u8>),
    /// `obs_code_date`: an Observation coding (system, code) with the Observation's date range
    /// (for patient-scoped searches by code and date, and `$lastn`).
    CodeDate(
        Option<String>,
        Option<String>,
        Option<i64>,
        Option<i64>,
        Vec<String>,
    ),
}

/// A composite value: the first component is a token; the second is a token or string (in
/// `system2`/`code2`), a number or quantity (`num`, unit in `system2`/`code2`) or a date.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Composite {
    /// First component's system.
    pub system1: Option<String>,
    /// First component's code.
    pub code1: Option<String>,
    /// Second component's system (or unit system).
    pub system2: Option<String>,
    /// Second component's code (or unit code, or normalised string).
    pub code2: Option<String>,
    /// Second component's number.
    pub num: Option<f64>,
    /// Second component's date range.
    pub low: Option<i64>,
    /// Second component's date range.
    pub high: Option<i64>,
}

/// Kinds of blind hash, so equal text of different meaning never collides.
pub mod kind {
    /// Normalised whole string.
    pub const NORM: &[u8] = b"n";
    /// String as written (`:exact`).
    pub const EXACT: &[u8] = b"x";
    /// Normalised prefix (starts-with).
    pub const PREFIX: &[u8] = b"p";
    /// Token `system|code` ("" for no system).
    pub const SYSTEM_CODE: &[u8] = b"sc";
    /// Token code in any system.
    pub const CODE: &[u8] = b"c";
    /// Token system with any code.
    pub const SYSTEM: &[u8] = b"s";
    /// A date at its own precision (`1970`, `1970-01`, `1970-01-02`).
    pub const DATE: &[u8] = b"d";
    /// Identifier type system, type code and value.
    pub const OF_TYPE: &[u8] = b"t";
}

/// The keyed hash of one value of parameter `pid`.
pub fn blind(keys: &Keyring, pid: Pid, kind: &[u8], value: &str) -> Vec<u8> {
    keys.blind(&[b"search", &pid.to_be_bytes(), kind, value.as_bytes()])
}

/// Every index row of `resource` (of type `rt`). `_id` and `_lastUpdated` are answered from the
/// resource table and are not repeated here.
pub fn rows(keys: &Keyring, ids: &ParamIds, rt: &str, resource: &Value) -> Vec<Row> {
    let mut out = Vec::new();
    for entry in fhirgate_fhirpath::extract(resource) {
        if matches!(entry.code, "_id" | "_lastUpdated") || ids.is_alias(rt, entry.code) {
            continue;
        }
        let Some(pid) = ids.get(rt, entry.code) else {
            continue;
        };
        if is_blind(rt, entry.code) {
            blind_rows(keys, ids, rt, pid, &entry, &mut out);
        } else {
            plain_rows(keys, ids, rt, pid, entry, &mut out);
        }
    }
    drop_combo_repeats(ids, rt, &mut out);
    if rt == "Observation" {
        add_code_dates(ids, &fhirgate_consent::classes_of(resource), &mut out);
    }
    out
}

/// One [`Row::CodeDate`] per (coding of `code`, value of `date`) of an Observation, and one
/// without a date per coding of an Observation that has none (so searches by code alone and
/// `$lastn` find it).
fn add_code_dates(ids: &ParamIds, classes: &[String], out: &mut Vec<Row>) {
    let (Some(code), Some(date)) = (
        ids.get("Observation", "code"),
        ids.get("Observation", "date"),
    ) else {
        return;
    };
    let dates: Vec<(Option<i64>, Option<i64>)> = out
        .iter()
        .filter_map(|d| match d {
            Row::Date(dp, low, high) if *dp == date => Some((Some(*low), Some(*high))),
            _ => None,
        })
        .collect();
    let dates = if dates.is_empty() {
        vec![(None, None)]
    } else {
        dates
    };
    let mut extra = Vec::new();
    for t in out.iter() {
        let Row::Token(p, system, c) = t else {
            continue;
        };
        if *p != code {
            continue;
        }
        for (low, high) in &dates {
            extra.push(Row::CodeDate(
                system.clone(),
                c.clone(),
                *low,
                *high,
                classes.to_vec(),
            ));
        }
    }
    out.extend(extra);
}

/// Removes the rows of combo parameters that repeat their plain parameter's rows.
fn drop_combo_repeats(ids: &ParamIds, rt: &str, out: &mut Vec<Row>) {
    let pairs = ids.combo_pairs(rt);
    if pairs.is_empty() {
        return;
    }
    let repeats: Vec<bool> = out
        .iter()
        .map(|r| {
            pairs.iter().any(|&(combo, plain)| {
                r.pid() == combo && out.iter().any(|o| o.pid() == plain && o.same_value(r))
            })
        })
        .collect();
    let mut i = 0;
    out.retain(|_| {
        i += 1;
        !repeats[i - 1]
    });
}

impl Row {
    /// The parameter id.
    pub fn pid(&self) -> Pid {
        match self {
            Row::Token(p, ..)
            | Row::String(p, ..)
            | Row::Date(p, ..)
            | Row::Number(p, ..)
            | Row::Reference(p, ..)
            | Row::Composite(p, ..)
            | Row::Blind(p, ..) => *p,
            Row::CodeDate(..) => 0,
        }
    }

    /// Whether both rows hold the same value (whatever their parameters).
    pub fn same_value(&self, other: &Row) -> bool {
        match (self, other) {
            (Row::Token(_, a, b), Row::Token(_, c, d)) => a == c && b == d,
            (Row::String(_, a, b), Row::String(_, c, d)) => a == c && b == d,
            (Row::Date(_, a, b), Row::Date(_, c, d)) => a == c && b == d,
            (Row::Number(_, a, b, c, d, e), Row::Number(_, f, g, h, i, j)) => {
                a == f && b == g && c == h && d == i && e == j
            }
            (Row::Reference(_, a), Row::Reference(_, b)) => a == b,
            (Row::Composite(_, a), Row::Composite(_, b)) => a == b,
            // Blind hashes include their parameter; they never repeat across parameters.
            _ => false,
        }
    }
}

fn plain_rows(
    keys: &Keyring,
    ids: &ParamIds,
    rt: &str,
    pid: Pid,
    entry: IndexEntry<'_>,
    out: &mut Vec<Row>,
) {
    let code = entry.code;
    match entry.value {
        IndexValue::String(s) => out.push(Row::String(
            pid,
            clip(&s.normalized).to_owned(),
            clip(s.value).to_owned(),
        )),
        IndexValue::Token(t) => out.push(Row::Token(
            pid,
            t.system.map(str::to_owned),
            t.code.map(|c| clip(c).to_owned()),
        )),
        IndexValue::TokenText(s) => {
            if let Some(text_pid) = ids.get(rt, &format!("{code}:text")) {
                out.push(Row::String(
                    text_pid,
                    clip(&s.normalized).to_owned(),
                    clip(s.value).to_owned(),
                ));
            }
        }
        IndexValue::IdentifierOfType(o) => {
            if let Some(p) = ids.get(rt, &format!("{code}:of-type")) {
                let text = of_type_text(o.type_system.unwrap_or(""), o.type_code, o.value);
                out.push(Row::Blind(p, blind(keys, p, kind::OF_TYPE, &text)));
            }
        }
        IndexValue::Date(d) => out.push(Row::Date(pid, d.low.micros(), d.high.micros())),
        IndexValue::Number(n) => out.push(Row::Number(
            pid,
            Some(n.value),
            Some(n.value),
            None,
            None,
            None,
        )),
        IndexValue::Quantity(q) => out.push(quantity_row(pid, Some(&q), Some(&q))),
        IndexValue::QuantityRange(r) => {
            out.push(quantity_row(pid, r.low.as_ref(), r.high.as_ref()))
        }
        IndexValue::Reference(r) => {
            if let Some(target) = &r.reference {
                out.push(Row::Reference(pid, target.to_string()));
            }
            if let Some(url) = r.url {
                if r.reference.as_deref() != Some(url) {
                    out.push(Row::Reference(pid, url.to_owned()));
                }
            }
            if let (Some(ident), Some(p)) =
                (&r.identifier, ids.get(rt, &format!("{code}:identifier")))
            {
                token_hashes(keys, p, ident, out);
            }
        }
        IndexValue::Uri(u) => out.push(Row::Token(pid, None, Some(clip(u).to_owned()))),
        IndexValue::Composite(parts) => {
            if let Some(c) = composite(keys, pid, &parts) {
                out.push(Row::Composite(pid, c));
            }
        }
    }
}

fn quantity_row(
    pid: Pid,
    low: Option<&QuantityValue<'_>>,
    high: Option<&QuantityValue<'_>>,
) -> Row {
    let unit = low.or(high);
    Row::Number(
        pid,
        low.map(|q| q.value.value),
        high.map(|q| q.value.value),
        unit.and_then(|q| q.system).map(str::to_owned),
        unit.and_then(|q| q.code).map(str::to_owned),
        unit.and_then(|q| q.unit).map(str::to_owned),
    )
}

/// A string second component is free text (Observation value text): it is kept as the hex of
/// its keyed hash, so composite string search matches whole normalised values only.
pub fn composite_string(keys: &Keyring, pid: Pid, normalized: &str) -> String {
    blind(keys, pid, kind::NORM, normalized)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn composite(keys: &Keyring, pid: Pid, parts: &[IndexValue<'_>]) -> Option<Composite> {
    let [first, second] = parts else {
        return None;
    };
    let IndexValue::Token(t) = first else {
        return None;
    };
    let mut c = Composite {
        system1: t.system.map(str::to_owned),
        code1: t.code.map(str::to_owned),
        ..Composite::default()
    };
    match second {
        IndexValue::Token(t2) => {
            c.system2 = t2.system.map(str::to_owned);
            c.code2 = t2.code.map(str::to_owned);
        }
        IndexValue::String(s) => c.code2 = Some(composite_string(keys, pid, &s.normalized)),
        IndexValue::Number(n) => c.num = Some(n.value),
        IndexValue::Quantity(q) => {
            c.num = Some(q.value.value);
            c.system2 = q.system.map(str::to_owned);
            c.code2 = q.code.or(q.unit).map(str::to_owned);
        }
        IndexValue::Date(d) => {
            c.low = Some(d.low.micros());
            c.high = Some(d.high.micros());
        }
        IndexValue::Reference(r) => c.code2 = r.reference.as_deref().map(str::to_owned),
        _ => return None,
    }
    Some(c)
}

fn blind_rows(
    keys: &Keyring,
    ids: &ParamIds,
    rt: &str,
    pid: Pid,
    entry: &IndexEntry<'_>,
    out: &mut Vec<Row>,
) {
    match &entry.value {
        IndexValue::String(s) => string_hashes(keys, pid, s.value, &s.normalized, out),
        // Resource.identifier is already blind-indexed per version (`resource_identifier`, which
        // conditional create uses too); searches read it there.
        IndexValue::Token(_) if entry.code == "identifier" => {}
        IndexValue::Token(t) => token_hashes(keys, pid, t, out),
        IndexValue::Date(d) => {
            for text in date_texts(d.low.micros(), d.high.micros()) {
                out.push(Row::Blind(pid, blind(keys, pid, kind::DATE, &text)));
            }
            // The year alone stays plain, so ranges at year precision can be searched.
            if let (Some(p), Some((low, high))) = (
                ids.get(rt, &format!("{}:year", entry.code)),
                year_range(d.low.micros(), d.high.micros()),
            ) {
                out.push(Row::Date(p, low, high));
            }
        }
        IndexValue::IdentifierOfType(o) => {
            if let Some(p) = ids.get(rt, &format!("{}:of-type", entry.code)) {
                let text = of_type_text(o.type_system.unwrap_or(""), o.type_code, o.value);
                out.push(Row::Blind(p, blind(keys, p, kind::OF_TYPE, &text)));
            }
        }
        // Display texts of person-identifying tokens are not indexed at all.
        IndexValue::TokenText(_) => {}
        other => {
            // No person-identifying parameter has another type in R4; index nothing rather
            // than something readable.
            tracing::debug!(code = entry.code, kind = ?std::mem::discriminant(other), "blind parameter of an unexpected type not indexed");
        }
    }
}

/// Exact, normalised and prefix hashes of a string.
pub fn string_hashes(keys: &Keyring, pid: Pid, value: &str, normalized: &str, out: &mut Vec<Row>) {
    out.push(Row::Blind(pid, blind(keys, pid, kind::EXACT, value)));
    out.push(Row::Blind(pid, blind(keys, pid, kind::NORM, normalized)));
    for (n, (i, ch)) in normalized.char_indices().enumerate() {
        if n >= MAX_BLIND_PREFIX {
            break;
        }
        let prefix = &normalized[..i + ch.len_utf8()];
        out.push(Row::Blind(pid, blind(keys, pid, kind::PREFIX, prefix)));
    }
}

/// `system|code`, `code` and `system` hashes of a token.
pub fn token_hashes(keys: &Keyring, pid: Pid, t: &TokenValue<'_>, out: &mut Vec<Row>) {
    let system = t.system.unwrap_or("");
    if let Some(code) = t.code {
        out.push(Row::Blind(
            pid,
            blind(keys, pid, kind::SYSTEM_CODE, &format!("{system}|{code}")),
        ));
        out.push(Row::Blind(pid, blind(keys, pid, kind::CODE, code)));
    }
    if t.system.is_some() {
        out.push(Row::Blind(pid, blind(keys, pid, kind::SYSTEM, system)));
    }
}

/// The text an `:of-type` hash covers.
pub fn of_type_text(type_system: &str, type_code: &str, value: &str) -> String {
    format!("{type_system}|{type_code}|{value}")
}

/// A date range as the texts of the precisions it fully states: a day gives `1970`, `1970-01`
/// and `1970-01-02`; a month its year and month; a year itself. Finer ranges count as their day.
pub fn date_texts(low: i64, high: i64) -> Vec<String> {
    let Some(start) = chrono::DateTime::from_timestamp_micros(low) else {
        return Vec::new();
    };
    let span_days = (high - low) / 86_400_000_000;
    let day = start.format("%Y-%m-%d").to_string();
    let mut out = vec![day[..4].to_owned()];
    if span_days < 32 {
        out.push(day[..7].to_owned());
    }
    if span_days < 1 {
        out.push(day);
    }
    out
}

/// The whole years a date range falls in, from the first instant of its first year to the last
/// instant of its last: what the plain birth-year index keeps of a blind-indexed date.
pub fn year_range(low: i64, high: i64) -> Option<(i64, i64)> {
    use chrono::Datelike;
    let year = |m: i64| chrono::DateTime::from_timestamp_micros(m).map(|t| t.year());
    let first = fhirgate_fhirpath::parse_date_range(&format!("{:04}", year(low)?))?;
    let last = fhirgate_fhirpath::parse_date_range(&format!("{:04}", year(high)?))?;
    Some((first.low.micros(), last.high.micros()))
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(MAX_PLAIN) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Whether parameter `code` of `rt` is stored only as keyed hashes: values that identify a
/// person (DESIGN.md), and Observation value text, which is free text about a patient.
pub fn is_blind(rt: &str, code: &str) -> bool {
    fhirgate_fhirpath::is_person_identifying(rt, code)
        || (rt == "Observation" && code == "value-string")
}
