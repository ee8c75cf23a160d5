//! `fhirgate-consent`: pure consent decisions (no I/O).
//!
//! Input: a patient's FHIR R4 `Consent` resources and the context of one access (the partner
//! organisation, purpose of use, resource type, its data classes and codes, the time). Output:
//! permit or deny with the reason, and, for searches, the data classes a partner may see.
//!
//! The rules, all failing closed:
//! - Only `Consent`s with `status` `active` and scope `patient-privacy` count. Draft, proposed,
//!   rejected, inactive, entered-in-error and unknown statuses count as nothing, so they deny.
//! - A provision applies when every criterion it states matches: `period` covers the time,
//!   `actor` (role IRCP) names the organisation, `purpose` lists the purpose, `class` lists one of
//!   the resource's data classes (or `everything`), `code` lists one of its codes. Nested
//!   provisions are exceptions, looked at only when their parent applies.
//! - A permit must be explicit: a permit without an actor, or stating a purpose when the request
//!   has none, or with a period that cannot be read, does not apply. A deny with such gaps does.
//! - Deny overrides permit: one applicable deny anywhere refuses the access.
//! - Nothing applicable means deny.

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::Value;

mod grants;
pub use grants::{grants, Grant, CLASSLESS, COMPUTED, NO_PURPOSE, OTHER_PURPOSE};

/// The data classes patients grant per partner (the `code`s of the ValueSet in `fhir-profiles/`).
pub const DATA_CLASSES: [&str; 4] = ["vital-signs", "activity", "sleep", "body-measurement"];
/// The class that stands for all of them.
pub const EVERYTHING: &str = "everything";
/// The CodeSystem of the data classes.
pub const DATA_CLASS_SYSTEM: &str = "https://fhirgate.org/CodeSystem/data-class";
/// The CodeSystem of FHIR resource types: a `provision.class` in it (R4's own usage) applies to
/// every resource of that type.
pub const RESOURCE_TYPE_SYSTEM: &str = "http://hl7.org/fhir/resource-types";

/// Whether `code` could name a resource type (the server checks it against the R4 list).
fn looks_like_resource_type(code: &str) -> bool {
    code.len() <= 64
        && code.starts_with(|c: char| c.is_ascii_uppercase())
        && code.chars().all(|c| c.is_ascii_alphabetic())
}
const IRCP: &str = "IRCP";

/// The context of one access request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessContext {
    /// The partner `Organization/<id>` the request is made for.
    pub organization: String,
    /// Purpose of use code (e.g. `TREAT`).
    pub purpose: Option<String>,
    /// FHIR resource type asked for.
    pub resource_type: String,
    /// Data classes of the resource (see [`DATA_CLASSES`]).
    pub classes: Vec<String>,
    /// Codes of the resource, as `system|code`.
    pub codes: Vec<String>,
    /// The time of the request, as an R4 instant.
    pub at: String,
}

/// The outcome of a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Access allowed by the Consent with this id.
    Permit {
        /// Id of the Consent that allows it.
        consent_id: String,
    },
    /// Access refused, and why (for the audit trail; never shown to the partner).
    Deny {
        /// The reason.
        reason: String,
    },
}

impl Decision {
    /// Whether access is allowed.
    pub fn permits(&self) -> bool {
        matches!(self, Decision::Permit { .. })
    }
}

/// Decides an access. Deny is the default: with no applicable permit there is no access.
pub fn decide(consents: &[Value], ctx: &AccessContext) -> Decision {
    let Some(at) = instant(&ctx.at) else {
        return deny(format!(
            "the time of the request ({}) is not an instant",
            ctx.at
        ));
    };
    let mut permit: Option<String> = None;
    for c in consents {
        if !counts(c) {
            continue;
        }
        let id = c.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
        let Some(root) = c.get("provision") else {
            continue;
        };
        let mut effects = Vec::new();
        collect(root, ctx, at, &mut effects);
        for effect in effects {
            match effect {
                Effect::Deny => {
                    return deny(format!(
                        "Consent/{id} denies {} access to this {}",
                        ctx.organization, ctx.resource_type
                    ))
                }
                Effect::Permit => {
                    permit.get_or_insert_with(|| id.clone());
                }
            }
        }
    }
    match permit {
        Some(consent_id) => Decision::Permit { consent_id },
        None => deny(format!(
            "no active Consent permits {} to read this {}",
            ctx.organization, ctx.resource_type
        )),
    }
}

/// The data classes `ctx.organization` may see now for `ctx.purpose` (its `classes` and `codes`
/// are ignored): the filter a search applies per patient.
pub fn permitted_classes(consents: &[Value], ctx: &AccessContext) -> Vec<&'static str> {
    DATA_CLASSES
        .into_iter()
        .filter(|class| {
            let one = AccessContext {
                classes: vec![(*class).to_owned()],
                codes: Vec::new(),
                ..ctx.clone()
            };
            decide(consents, &one).permits()
        })
        .collect()
}

fn deny(reason: String) -> Decision {
    Decision::Deny { reason }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Permit,
    Deny,
}

/// Whether a resource is a Consent that takes part in decisions at all.
fn counts(c: &Value) -> bool {
    c.get("resourceType").and_then(Value::as_str) == Some("Consent")
        && c.get("status").and_then(Value::as_str) == Some("active")
        && codes_of(c.get("scope")).any(|(_, code)| code == "patient-privacy")
}

/// The effects of `p` and its nested provisions that apply to `ctx`.
fn collect(p: &Value, ctx: &AccessContext, at: DateTime<Utc>, out: &mut Vec<Effect>) {
    let effect = match p.get("type").and_then(Value::as_str) {
        Some("permit") => Effect::Permit,
        // A provision of unknown type can only take away.
        _ => Effect::Deny,
    };
    if !applies(p, effect, ctx, at) {
        return;
    }
    out.push(effect);
    for child in p
        .get("provision")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        collect(child, ctx, at, out);
    }
}

/// Whether every criterion `p` states matches `ctx`. Where a criterion cannot be evaluated, a
/// permit does not apply and a deny does.
fn applies(p: &Value, effect: Effect, ctx: &AccessContext, at: DateTime<Utc>) -> bool {
    let unknown = effect == Effect::Deny;
    if let Some(period) = p.get("period") {
        let start = period.get("start").map(|s| s.as_str().and_then(start_of));
        let end = period.get("end").map(|s| s.as_str().and_then(end_of));
        match (start, end) {
            (Some(None), _) | (_, Some(None)) => return unknown,
            (start, end) => {
                if start.flatten().is_some_and(|s| at < s) || end.flatten().is_some_and(|e| at >= e)
                {
                    return false;
                }
            }
        }
    }
    match p.get("actor").and_then(Value::as_array) {
        Some(actors) => {
            let named = actors.iter().any(|a| {
                codes_of(a.get("role")).any(|(_, code)| code == IRCP)
                    && same_reference(
                        a["reference"]["reference"].as_str().unwrap_or(""),
                        &ctx.organization,
                    )
            });
            if !named {
                return false;
            }
        }
        None if effect == Effect::Permit => return false,
        None => {}
    }
    if let Some(purposes) = p.get("purpose").and_then(Value::as_array) {
        match &ctx.purpose {
            Some(asked) => {
                if !purposes.iter().any(|c| c["code"].as_str() == Some(asked)) {
                    return false;
                }
            }
            None => return unknown,
        }
    }
    if let Some(classes) = p.get("class").and_then(Value::as_array) {
        // A data class covers the resources of that class; a resource type (R4's usage of
        // `class`) covers every resource of that type.
        let covered = classes.iter().any(|c| {
            let code = c["code"].as_str().unwrap_or("");
            match c["system"].as_str() {
                Some(RESOURCE_TYPE_SYSTEM) => code == ctx.resource_type,
                _ => code == EVERYTHING || ctx.classes.iter().any(|x| x == code),
            }
        });
        if !covered {
            return false;
        }
    }
    if let Some(codes) = p.get("code").and_then(Value::as_array) {
        let covered = codes.iter().any(|cc| {
            codes_of(Some(cc)).any(|(system, code)| {
                ctx.codes
                    .iter()
                    .any(|c| *c == format!("{}|{code}", system.unwrap_or("")))
            })
        });
        if !covered {
            return false;
        }
    }
    true
}

/// `(system, code)` of every coding of a CodeableConcept (or a list of them).
fn codes_of(cc: Option<&Value>) -> impl Iterator<Item = (Option<&str>, &str)> {
    let concepts: Vec<&Value> = match cc {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(v) => vec![v],
        None => Vec::new(),
    };
    concepts
        .into_iter()
        .flat_map(|c| {
            c.get("coding")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default()
        })
        .filter_map(|c| {
            let code = c.get("code")?.as_str()?;
            Some((c.get("system").and_then(Value::as_str), code))
        })
}

/// `Organization/x` matches `Organization/x` and an absolute URL ending in it.
fn same_reference(given: &str, organization: &str) -> bool {
    !organization.is_empty()
        && (given == organization
            || given
                .strip_suffix(organization)
                .is_some_and(|base| base.ends_with('/') && base.contains("://")))
}

fn instant(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The first instant a FHIR date or dateTime of any precision covers.
fn start_of(s: &str) -> Option<DateTime<Utc>> {
    bounds(s).map(|(lo, _)| lo)
}

/// The instant right after the last one a FHIR date or dateTime covers.
fn end_of(s: &str) -> Option<DateTime<Utc>> {
    bounds(s).map(|(_, hi)| hi)
}

fn bounds(s: &str) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    if s.contains('T') {
        let t = instant(s)?;
        return Some((t, t + chrono::Duration::seconds(1)));
    }
    let midnight = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    let parts: Vec<&str> = s.split('-').collect();
    let num = |p: &str, len: usize| {
        (p.len() == len && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u32>().ok())
            .flatten()
    };
    let (lo, hi) = match parts.as_slice() {
        [y] => {
            let y = num(y, 4)? as i32;
            (
                NaiveDate::from_ymd_opt(y, 1, 1)?,
                NaiveDate::from_ymd_opt(y + 1, 1, 1)?,
            )
        }
        [y, m] => {
            let (y, m) = (num(y, 4)? as i32, num(m, 2)?);
            let lo = NaiveDate::from_ymd_opt(y, m, 1)?;
            let hi = if m == 12 {
                NaiveDate::from_ymd_opt(y + 1, 1, 1)?
            } else {
                NaiveDate::from_ymd_opt(y, m + 1, 1)?
            };
            (lo, hi)
        }
        [y, m, d] => {
            let day = NaiveDate::from_ymd_opt(num(y, 4)? as i32, num(m, 2)?, num(d, 2)?)?;
            (day, day.succ_opt()?)
        }
        _ => return None,
    };
    Some((midnight(lo)?, midnight(hi)?))
}

/// The data classes of a resource, from its categories: `observation-category` `vital-signs` and
/// `activity`, and any code of [`DATA_CLASS_SYSTEM`] (the mappers add `sleep` and
/// `body-measurement` there).
pub fn classes_of(resource: &Value) -> Vec<String> {
    const OBSERVATION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
    let mut out: Vec<String> = Vec::new();
    for (system, code) in codes_of(resource.get("category")) {
        let class = match system {
            Some(OBSERVATION_CATEGORY) if matches!(code, "vital-signs" | "activity") => code,
            Some(DATA_CLASS_SYSTEM) if DATA_CLASSES.contains(&code) => code,
            _ => continue,
        };
        if !out.iter().any(|c| c == class) {
            out.push(class.to_owned());
        }
    }
    out
}

/// The organisations a Consent names as actors, at any level of its provisions, as
/// `Organization/<id>`.
pub fn organizations_named(consent: &Value) -> Vec<String> {
    fn walk(p: &Value, out: &mut Vec<String>) {
        for a in p
            .get("actor")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let r = a["reference"]["reference"].as_str().unwrap_or("");
            let mut parts = r.rsplit('/');
            if let (Some(id), Some("Organization")) = (parts.next(), parts.next()) {
                let org = format!("Organization/{id}");
                if !out.contains(&org) {
                    out.push(org);
                }
            }
        }
        for child in p
            .get("provision")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            walk(child, out);
        }
    }
    let mut out = Vec::new();
    if let Some(p) = consent.get("provision") {
        walk(p, &mut out);
    }
    out
}

/// The codes of a resource's `code`, as `system|code`.
pub fn codes_of_resource(resource: &Value) -> Vec<String> {
    codes_of(resource.get("code"))
        .map(|(system, code)| format!("{}|{code}", system.unwrap_or("")))
        .collect()
}

/// The canonical URL of fhirgate's Consent profile (`fhir-profiles/fhirgate-consent.json`).
pub const PROFILE: &str = "https://fhirgate.org/StructureDefinition/patient-consent";
const CONSENT_SCOPE: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";

/// One way a Consent does not conform to the profile: the element (FHIRPath) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Where, e.g. `Consent.provision.class[0]`.
    pub path: String,
    /// Why.
    pub message: String,
}

/// Checks a Consent against fhirgate's profile: scope `patient-privacy`, a `Patient` patient, a
/// root provision of type permit or deny, actors in role IRCP that are Organizations (and at
/// least one on a permit), data classes from the ValueSet, and periods that start before they
/// end. An empty list means it conforms.
pub fn check(consent: &Value) -> Vec<Problem> {
    let mut out = Vec::new();
    let mut problem = |path: &str, message: &str| {
        out.push(Problem {
            path: path.to_owned(),
            message: message.to_owned(),
        })
    };
    if !codes_of(consent.get("scope"))
        .any(|(s, c)| s == Some(CONSENT_SCOPE) && c == "patient-privacy")
    {
        problem(
            "Consent.scope",
            &format!("the scope must be {CONSENT_SCOPE}#patient-privacy"),
        );
    }
    let patient = consent["patient"]["reference"].as_str().unwrap_or("");
    if !patient.starts_with("Patient/") {
        problem(
            "Consent.patient",
            "the patient must be a reference to a Patient (Patient/id)",
        );
    }
    match consent.get("provision") {
        None => problem(
            "Consent.provision",
            "a provision saying what is permitted or denied is required",
        ),
        Some(p) => check_provision(p, "Consent.provision", true, &mut out),
    }
    out
}

fn check_provision(p: &Value, path: &str, root: bool, out: &mut Vec<Problem>) {
    let mut problem = |at: String, message: String| out.push(Problem { path: at, message });
    let kind = p.get("type").and_then(Value::as_str);
    if !matches!(kind, Some("permit" | "deny")) && (root || kind.is_some()) {
        problem(
            format!("{path}.type"),
            "the type must be permit or deny".into(),
        );
    }
    let actors = p.get("actor").and_then(Value::as_array);
    if root && kind == Some("permit") && actors.is_none_or(|a| a.is_empty()) {
        problem(
            format!("{path}.actor"),
            "a permit must name the partner Organization (role IRCP)".into(),
        );
    }
    for (i, a) in actors.into_iter().flatten().enumerate() {
        if !codes_of(a.get("role")).any(|(s, c)| s == Some(PARTICIPATION) && c == IRCP) {
            problem(
                format!("{path}.actor[{i}].role"),
                format!("the role must be {PARTICIPATION}#{IRCP} (information recipient)"),
            );
        }
        let r = a["reference"]["reference"].as_str().unwrap_or("");
        if r.split('/').rev().nth(1) != Some("Organization") {
            problem(
                format!("{path}.actor[{i}].reference"),
                "the actor must be a reference to an Organization".into(),
            );
        }
    }
    for (i, c) in p
        .get("class")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let code = c.get("code").and_then(Value::as_str).unwrap_or("");
        let ok = match c.get("system").and_then(Value::as_str) {
            Some(DATA_CLASS_SYSTEM) => code == EVERYTHING || DATA_CLASSES.contains(&code),
            Some(RESOURCE_TYPE_SYSTEM) => looks_like_resource_type(code),
            _ => false,
        };
        if !ok {
            problem(
                format!("{path}.class[{i}]"),
                format!(
                    "the class must be a code of {DATA_CLASS_SYSTEM} ({}, {EVERYTHING}) or a resource type of {RESOURCE_TYPE_SYSTEM}",
                    DATA_CLASSES.join(", ")
                ),
            );
        }
    }
    if let Some(period) = p.get("period") {
        let start = period.get("start").map(|v| v.as_str().and_then(start_of));
        let end = period.get("end").map(|v| v.as_str().and_then(end_of));
        match (start, end) {
            (Some(None), _) => {
                problem(format!("{path}.period.start"), "not a FHIR dateTime".into())
            }
            (_, Some(None)) => problem(format!("{path}.period.end"), "not a FHIR dateTime".into()),
            (Some(Some(s)), Some(Some(e))) if e <= s => problem(
                format!("{path}.period"),
                "the period ends before it starts".into(),
            ),
            _ => {}
        }
    }
    for (i, child) in p
        .get("provision")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        check_provision(child, &format!("{path}.provision[{i}]"), false, out);
    }
}

#[cfg(test)]
mod tests;
