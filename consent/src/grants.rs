//! What a patient's Consents grant, as rows a database can join on without reading the Consents:
//! for each partner they name, each purpose key and each stretch of time between the instants at
//! which a period starts or ends, the data classes permitted. Decisions are constant between
//! those instants, so evaluating [`crate::decide`] once per stretch is exact.

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;

use crate::{decide, organizations_named, permitted_classes, AccessContext, DATA_CLASSES};

/// Purpose key for requests that state no purpose of use.
pub const NO_PURPOSE: &str = "";
/// Purpose key for a purpose none of the Consents mention.
pub const OTHER_PURPOSE: &str = "*";
/// Class of a grant row that permits resources without any data class (an `everything` permit).
pub const CLASSLESS: &str = "#none";
/// Class of the row present for every (partner, purpose key) computed, so a request can tell a
/// purpose the Consents mention (use its rows) from one they do not (use [`OTHER_PURPOSE`]).
pub const COMPUTED: &str = "#computed";

/// `[from, to)` and an instant inside it.
type Stretch = (Option<DateTime<Utc>>, Option<DateTime<Utc>>, DateTime<Utc>);

/// One grant: `organization` may see `class` for `purpose` over `[from, to)` (`None` = open).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `Organization/<id>`.
    pub organization: String,
    /// Purpose key: a purpose code, [`NO_PURPOSE`] or [`OTHER_PURPOSE`].
    pub purpose: String,
    /// A data class, [`CLASSLESS`] or [`COMPUTED`].
    pub class: String,
    /// First instant covered.
    pub from: Option<DateTime<Utc>>,
    /// First instant no longer covered.
    pub to: Option<DateTime<Utc>>,
}

/// The grants of one patient's Consents, and whether any provision names single codes or
/// resource types (then a class grant is not the whole answer and results must be checked one
/// by one by [`crate::decide`]).
///
/// With resource-type rules, a class is granted when some type could be permitted it: the
/// grants only pre-select, and the exact decision per resource takes away the rest.
pub fn grants(consents: &[Value]) -> (Vec<Grant>, bool) {
    let mut organizations: Vec<String> = Vec::new();
    let mut purposes: Vec<String> = vec![NO_PURPOSE.to_owned(), OTHER_PURPOSE.to_owned()];
    let mut instants: Vec<DateTime<Utc>> = Vec::new();
    let mut code_rules = false;
    // The resource types provisions name, and "" for a resource of no named type.
    let mut types: Vec<String> = vec![String::new()];
    for c in consents {
        for o in organizations_named(c) {
            if !organizations.contains(&o) {
                organizations.push(o);
            }
        }
        if let Some(p) = c.get("provision") {
            walk(p, &mut purposes, &mut instants, &mut code_rules, &mut types);
        }
    }
    if types.len() > 1 {
        code_rules = true;
    }
    instants.sort();
    instants.dedup();
    // Stretches [None, i0), [i0, i1), …, [in, None), each evaluated at an instant inside it.
    let mut stretches: Vec<Stretch> = Vec::new();
    match instants.first() {
        None => stretches.push((None, None, Utc::now())),
        Some(&first) => {
            stretches.push((None, Some(first), first - Duration::microseconds(1)));
            for (i, &at) in instants.iter().enumerate() {
                stretches.push((Some(at), instants.get(i + 1).copied(), at));
            }
        }
    }
    let mut out = Vec::new();
    for organization in &organizations {
        for purpose in &purposes {
            out.push(Grant {
                organization: organization.clone(),
                purpose: purpose.clone(),
                class: COMPUTED.to_owned(),
                from: None,
                to: None,
            });
            let asked = match purpose.as_str() {
                NO_PURPOSE => None,
                // No purpose code contains a NUL, so this matches none a Consent lists.
                OTHER_PURPOSE => Some("\0other".to_owned()),
                p => Some(p.to_owned()),
            };
            for &(from, to, at) in &stretches {
                let mut classes: Vec<&str> = Vec::new();
                for rt in &types {
                    let ctx = AccessContext {
                        organization: organization.clone(),
                        purpose: asked.clone(),
                        resource_type: rt.clone(),
                        at: at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                        ..AccessContext::default()
                    };
                    for class in permitted_classes(consents, &ctx) {
                        if !classes.contains(&class) {
                            classes.push(class);
                        }
                    }
                    if !classes.contains(&CLASSLESS) && decide(consents, &ctx).permits() {
                        classes.push(CLASSLESS);
                    }
                }
                for class in classes {
                    out.push(Grant {
                        organization: organization.clone(),
                        purpose: purpose.clone(),
                        class: class.to_owned(),
                        from,
                        to,
                    });
                }
            }
        }
    }
    debug_assert!(DATA_CLASSES.iter().all(|c| *c != CLASSLESS));
    (out, code_rules)
}

fn walk(
    p: &Value,
    purposes: &mut Vec<String>,
    instants: &mut Vec<DateTime<Utc>>,
    code_rules: &mut bool,
    types: &mut Vec<String>,
) {
    for c in p
        .get("class")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c["system"] == crate::RESOURCE_TYPE_SYSTEM)
    {
        let code = c["code"].as_str().unwrap_or("").to_owned();
        if !types.contains(&code) {
            types.push(code);
        }
    }
    if let Some(period) = p.get("period") {
        if let Some(s) = period
            .get("start")
            .and_then(Value::as_str)
            .and_then(crate::start_of)
        {
            instants.push(s);
        }
        if let Some(e) = period
            .get("end")
            .and_then(Value::as_str)
            .and_then(crate::end_of)
        {
            instants.push(e);
        }
    }
    for code in p
        .get("purpose")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| c["code"].as_str())
    {
        if !purposes.iter().any(|x| x == code) {
            purposes.push(code.to_owned());
        }
    }
    if p.get("code").is_some() {
        *code_rules = true;
    }
    for child in p
        .get("provision")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        walk(child, purposes, instants, code_rules, types);
    }
}
