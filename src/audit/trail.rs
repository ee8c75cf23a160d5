//! Reading the audit trail: one search of its events, as the FHIR API and the auditor's pages
//! ask it, with what a patient reader may see of each event.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::Value;

use super::event::{columns, Columns};
use crate::error::{FhirError, Result};
use crate::fhir::history::{parse_count, DEFAULT_COUNT};
use crate::state::AppState;

/// One search of the trail, parsed.
#[derive(Debug, Default)]
pub(crate) struct Query {
    /// `(sql, binds)` fragments joined with `and`.
    clauses: Vec<Clause>,
    pub(crate) ascending: bool,
    pub(crate) count: i64,
    pub(crate) after: Option<i64>,
    pub(crate) total: bool,
    pub(crate) used: Vec<(String, String)>,
    pub(crate) ignored: Vec<String>,
}

#[derive(Debug)]
enum Clause {
    /// `recorded <op> $`.
    Recorded(&'static str, DateTime<Utc>),
    /// `not (recorded >= $ and recorded < $)`.
    RecordedNot(DateTime<Utc>, DateTime<Utc>),
    /// `terms && $`: any of these search terms.
    Terms(Vec<String>),
}

/// The range `[start, end)` a FHIR date of any precision covers.
fn date_range(name: &str, v: &str) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let bad = || {
        FhirError::bad_request(
            name,
            format!("'{v}' is not a FHIR date or dateTime (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss+zz:zz)"),
        )
    };
    if v.contains('T') {
        let t = DateTime::parse_from_rfc3339(v).map_err(|_| bad())?;
        let t = t.with_timezone(&Utc);
        let step = if v.contains('.') {
            Duration::milliseconds(1)
        } else {
            Duration::seconds(1)
        };
        return Ok((t, t + step));
    }
    let parts: Vec<&str> = v.split('-').collect();
    let num = |s: &str, len: usize| -> Result<u32> {
        if s.len() == len && s.bytes().all(|b| b.is_ascii_digit()) {
            s.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let (start, end) = match parts.as_slice() {
        [y] => {
            let y = num(y, 4)? as i32;
            (
                NaiveDate::from_ymd_opt(y, 1, 1),
                NaiveDate::from_ymd_opt(y + 1, 1, 1),
            )
        }
        [y, m] => {
            let (y, m) = (num(y, 4)? as i32, num(m, 2)?);
            let next = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            (
                NaiveDate::from_ymd_opt(y, m, 1),
                NaiveDate::from_ymd_opt(next.0, next.1, 1),
            )
        }
        [y, m, d] => {
            let day = NaiveDate::from_ymd_opt(num(y, 4)? as i32, num(m, 2)?, num(d, 2)?);
            (day, day.and_then(|d| d.succ_opt()))
        }
        _ => return Err(bad()),
    };
    let midnight = |d: Option<NaiveDate>| -> Result<DateTime<Utc>> {
        Ok(d.ok_or_else(bad)?
            .and_hms_opt(0, 0, 0)
            .ok_or_else(bad)?
            .and_utc())
    };
    Ok((midnight(start)?, midnight(end)?))
}

fn terms(prefix: &str, references: Vec<String>) -> Vec<String> {
    references
        .into_iter()
        .map(|r| format!("{prefix}{r}"))
        .collect()
}

fn tokens(v: &str) -> Vec<String> {
    v.split(',')
        .map(|t| t.rsplit('|').next().unwrap_or(t).to_owned())
        .collect()
}

fn references(v: &str, rt: Option<&str>, base: &str) -> Vec<String> {
    let mut out = Vec::new();
    for r in v.split(',') {
        let r = r
            .strip_prefix(base)
            .map(|r| r.trim_start_matches('/'))
            .unwrap_or(r);
        match (r.contains('/') || r.starts_with("client:"), rt) {
            (true, _) => out.push(r.to_owned()),
            (false, Some(rt)) => out.push(format!("{rt}/{r}")),
            (false, None) => out.push(format!("client:{r}")),
        }
    }
    out
}

impl Query {
    pub(crate) fn parse(pairs: &[(String, String)], strict: bool, base: &str) -> Result<Self> {
        let mut q = Query {
            count: DEFAULT_COUNT,
            ..Query::default()
        };
        for (k, v) in pairs {
            let (name, modifier) = k.split_once(':').unwrap_or((k.as_str(), ""));
            if !modifier.is_empty() && name != "_sort" {
                return Err(FhirError::bad_request(
                    k,
                    format!("modifier ':{modifier}' is not supported on AuditEvent.{name}"),
                ));
            }
            match name {
                "_count" => q.count = parse_count(v)?,
                "_cursor" => {
                    q.after = Some(v.parse().map_err(|_| {
                        FhirError::bad_request("_cursor", "the paging cursor is not valid")
                    })?);
                    continue;
                }
                "_format" => {}
                "_total" => match v.as_str() {
                    "accurate" => q.total = true,
                    "none" | "estimate" => {}
                    _ => {
                        return Err(FhirError::bad_request(
                            "_total",
                            "_total must be none, estimate or accurate",
                        ))
                    }
                },
                "_sort" => match v.as_str() {
                    "-date" => q.ascending = false,
                    "date" => q.ascending = true,
                    _ => {
                        return Err(FhirError::bad_request(
                            "_sort",
                            "AuditEvent sorts by date or -date",
                        ))
                    }
                },
                "date" => {
                    let (prefix, value) = match v.get(..2) {
                        Some(p) if p.bytes().all(|b| b.is_ascii_lowercase()) => (p, &v[2..]),
                        _ => ("eq", v.as_str()),
                    };
                    let (lo, hi) = date_range("date", value)?;
                    match prefix {
                        "eq" => {
                            q.clauses.push(Clause::Recorded(">=", lo));
                            q.clauses.push(Clause::Recorded("<", hi));
                        }
                        "ne" => q.clauses.push(Clause::RecordedNot(lo, hi)),
                        "ge" => q.clauses.push(Clause::Recorded(">=", lo)),
                        "gt" | "sa" => q.clauses.push(Clause::Recorded(">=", hi)),
                        "le" => q.clauses.push(Clause::Recorded("<", hi)),
                        "lt" | "eb" => q.clauses.push(Clause::Recorded("<", lo)),
                        other => {
                            return Err(FhirError::bad_request(
                                "date",
                                format!(
                                "unknown date prefix '{other}' (eq, ne, gt, lt, ge, le, sa, eb)"
                            ),
                            ))
                        }
                    }
                }
                "agent" => q
                    .clauses
                    .push(Clause::Terms(terms("a|", references(v, None, base)))),
                "entity" => q
                    .clauses
                    .push(Clause::Terms(terms("e|", references(v, None, base)))),
                "patient" => q.clauses.push(Clause::Terms(terms(
                    "p|",
                    references(v, Some("Patient"), base),
                ))),
                "type" => q.clauses.push(Clause::Terms(terms("t|", tokens(v)))),
                "subtype" => q.clauses.push(Clause::Terms(terms("s|", tokens(v)))),
                "outcome" => q.clauses.push(Clause::Terms(terms("o|", tokens(v)))),
                "action" => q.clauses.push(Clause::Terms(terms("x|", tokens(v)))),
                _ if strict => {
                    return Err(FhirError::bad_request(
                        k,
                        format!("search parameter '{k}' is not supported for AuditEvent"),
                    ))
                }
                _ => {
                    q.ignored.push(k.clone());
                    continue;
                }
            }
            q.used.push((k.clone(), v.clone()));
        }
        Ok(q)
    }

    /// `where …` over the rows of `audit_log` that may hold matching events (restricted to
    /// `patient` when given), with the binds in order; `after` is the paging cursor (an event id).
    fn push_where<'a>(
        &'a self,
        b: &mut sqlx::QueryBuilder<'a, sqlx::Postgres>,
        patient: Option<&'a String>,
        after: Option<i64>,
    ) {
        b.push(" where true");
        if let Some(p) = patient {
            b.push(" and terms @> array['p|' || ")
                .push_bind(p)
                .push("]::text[]");
        }
        for c in &self.clauses {
            match c {
                Clause::Recorded(">=", t) => {
                    b.push(" and recorded_max >= ").push_bind(*t);
                }
                Clause::Recorded(_, t) => {
                    b.push(" and recorded_min < ").push_bind(*t);
                }
                // A row can hold events on both sides of the excluded range.
                Clause::RecordedNot(..) => {}
                Clause::Terms(values) => {
                    b.push(" and terms && ").push_bind(values).push("::text[]");
                }
            }
        }
        if let Some(after) = after {
            if self.ascending {
                b.push(" and first_id + count > ").push_bind(after + 1);
            } else {
                b.push(" and first_id < ").push_bind(after);
            }
        }
    }

    /// Whether one event (its columns) matches every criterion.
    fn matches(&self, c: &Columns, patient: Option<&String>) -> bool {
        let terms = c.terms();
        if let Some(p) = patient {
            if !terms.contains(&format!("p|{p}")) {
                return false;
            }
        }
        self.clauses.iter().all(|clause| match clause {
            Clause::Recorded(">=", t) => c.recorded >= *t,
            Clause::Recorded(_, t) => c.recorded < *t,
            Clause::RecordedNot(lo, hi) => !(c.recorded >= *lo && c.recorded < *hi),
            Clause::Terms(values) => values.iter().any(|v| terms.contains(v)),
        })
    }
}

/// Rows fetched per round of a search.
const ROWS_PER_ROUND: i64 = 64;

/// The matching events as `(id, text)`, in the query's order, after its cursor when `paged`, at
/// most `limit` of them.
pub(crate) async fn run_query(
    state: &AppState,
    q: &Query,
    patient: Option<&String>,
    limit: Option<i64>,
) -> Result<Vec<(i64, String)>> {
    let paged = limit.is_some();
    let limit = limit.map_or(usize::MAX, |l| l.max(0) as usize);
    let mut out = Vec::new();
    let mut cursor = if paged { q.after } else { None };
    while out.len() < limit {
        let mut b = sqlx::QueryBuilder::new("select first_id, events from audit_log");
        q.push_where(&mut b, patient, cursor);
        b.push(if q.ascending {
            " order by seq limit "
        } else {
            " order by seq desc limit "
        });
        b.push_bind(ROWS_PER_ROUND);
        let rows: Vec<(i64, String)> = b.build_query_as().fetch_all(&state.db).await?;
        let last_round = (rows.len() as i64) < ROWS_PER_ROUND;
        for (first_id, events) in &rows {
            let mut found: Vec<(i64, &str)> = events
                .split('\n')
                .enumerate()
                .map(|(i, line)| (first_id + i as i64, line))
                .filter(|(id, _)| match cursor {
                    Some(c) if q.ascending => *id > c,
                    Some(c) => *id < c,
                    None => true,
                })
                .collect();
            if !q.ascending {
                found.reverse();
            }
            for (id, line) in found {
                let Some(shown) = shown_to(line, patient) else {
                    continue;
                };
                let matched = serde_json::from_str::<Value>(&shown)
                    .ok()
                    .and_then(|v| columns(&v))
                    .is_some_and(|c| q.matches(&c, patient));
                if matched {
                    out.push((id, shown));
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        if last_round {
            break;
        }
        // The next round starts after the last row read.
        cursor = rows.last().map(|(first_id, events)| {
            if q.ascending {
                first_id + events.split('\n').count() as i64 - 1
            } else {
                *first_id
            }
        });
    }
    Ok(out)
}

/// An event as `reader` (a patient's `Patient/{id}`, or `None` for an auditor) may see it. A
/// patient sees the other patients an event names only as far as they are themselves named: an
/// attempt of theirs on a resource they may not see names its patient for that patient and the
/// auditors, and must read exactly like an attempt on a missing id to the requester.
pub(crate) fn shown_to(line: &str, reader: Option<&String>) -> Option<String> {
    let Some(reader) = reader else {
        return Some(line.to_owned());
    };
    let mut event: Value = serde_json::from_str(line).ok()?;
    let other_patient = |e: &Value| {
        e["type"]["code"] == "1"
            && e["what"]["reference"]
                .as_str()
                .is_some_and(|r| r.starts_with("Patient/") && r != reader)
    };
    if let Some(entities) = event.get_mut("entity").and_then(Value::as_array_mut) {
        if !entities.iter().any(other_patient) {
            return Some(line.to_owned());
        }
        entities.retain(|e| !other_patient(e));
    }
    Some(event.to_string())
}

/// The text of event `id`, if it exists.
pub(crate) async fn event_by_id(state: &AppState, id: i64) -> Result<Option<String>> {
    // language=PostgreSQL
    let row: Option<(i64, String)> = sqlx::query_as(
        "select first_id, events from audit_log where first_id <= $1 order by first_id desc limit 1",
    )
    .bind(id)
    .fetch_optional(&state.db)
    .await?;
    Ok(row.and_then(|(first_id, events)| {
        let line = events
            .split('\n')
            .nth(usize::try_from(id - first_id).ok()?)?;
        Some(line.to_owned())
    }))
}

/// One CSV line per event: the columns an auditor filters on.
pub fn to_csv(rows: &[(i64, String)]) -> Result<String> {
    let mut out = String::from("id,recorded,type,subtype,action,outcome,outcome_description,agents,patients,entities,purpose\n");
    for (seq, text) in rows {
        let e: Value = serde_json::from_str(text).map_err(anyhow::Error::from)?;
        let c = super::event::columns(&e).unwrap_or_else(|| super::event::Columns {
            recorded: DateTime::<Utc>::MIN_UTC,
            type_code: String::new(),
            subtype: None,
            action: String::new(),
            outcome: String::new(),
            agents: vec![],
            patients: vec![],
            entities: vec![],
        });
        let fields = [
            seq.to_string(),
            e["recorded"].as_str().unwrap_or("").to_owned(),
            c.type_code,
            c.subtype.unwrap_or_default(),
            c.action,
            c.outcome,
            e["outcomeDesc"].as_str().unwrap_or("").to_owned(),
            c.agents.join(" "),
            c.patients.join(" "),
            c.entities.join(" "),
            e["purposeOfEvent"][0]["coding"][0]["code"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    Ok(out)
}

/// RFC 4180 quoting; a leading `=`, `+`, `-` or `@` is prefixed with `'` so that a spreadsheet
/// does not run it as a formula.
fn csv_field(f: &str) -> String {
    let f = if f.starts_with(['=', '+', '-', '@']) {
        format!("'{f}")
    } else {
        f.to_owned()
    };
    if f.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_of_every_precision_are_ranges() {
        let (lo, hi) = date_range("date", "2026-02").unwrap();
        assert_eq!(lo.to_rfc3339(), "2026-02-01T00:00:00+00:00");
        assert_eq!(hi.to_rfc3339(), "2026-03-01T00:00:00+00:00");
        let (lo, hi) = date_range("date", "2026-12-31").unwrap();
        assert_eq!((hi - lo).num_hours(), 24);
        assert!(date_range("date", "2026-13").is_err());
        assert!(date_range("date", "26-01-01").is_err());
        let (lo, hi) = date_range("date", "2026-01-01T10:00:00+02:00").unwrap();
        assert_eq!(lo.to_rfc3339(), "2026-01-01T08:00:00+00:00");
        assert_eq!((hi - lo).num_seconds(), 1);
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("=1+1"), "'=1+1");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
