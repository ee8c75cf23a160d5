//! Noninterference: what a caller may not see never changes what it is answered.
//!
//! For each kind of restricted caller (a patient's token, a granular-scope token, a partner
//! with class- and code-level consent rules) two servers are seeded alike, except that in the
//! second every resource the caller may not see is changed (other patients' names, identifiers,
//! birth dates, genders and values; non-consented classes and denied codes) and more invisible
//! resources are added. proptest then generates requests (searches of every parameter type,
//! modifiers, chains, `_has`, includes and totals, the operations, history, reads, conditional
//! operations, Bundles) and issues each to both servers: status, resource ids, totals, the
//! presence of paging links and the error texts must be the same. A failure is shrunk to the
//! smallest request that shows the leak.
//!
//! `FHIRGATE_NI_CASES` sets the number of requests per caller (default 700).

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

use crate::audit::token;
use crate::helpers::{spawn_app, TestApp};

/// The callers the suite speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    /// Patient `a`'s own token, `patient/*.cruds`.
    Patient,
    /// Patient `a`'s token that sees only vital signs among Observations (and the Patient).
    Granular,
    /// Partner `Organization/acme`, to which patient `p` consented vital signs but for LOINC
    /// 8480-6, for treatment.
    Partner,
}

use Caller::{Granular, Partner, Patient};

const VITAL: &str = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs";
const DATA_CLASS: &str = "https://fhirgate.org/CodeSystem/data-class";

fn patient(name: &str, ssn: &str, birth: &str, gender: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": name, "given": [format!("{name}y")]}],
        "identifier": [{"system": "urn:ssn", "value": ssn}], "birthDate": birth, "gender": gender})
}

/// An Observation of `subject` (a reference) with a category, LOINC code and value.
fn obs(subject: &str, category: &str, code: &str, value: f64, ident: &str) -> Value {
    let (cat_system, cat_code) = category.rsplit_once('|').unwrap_or(("", category));
    json!({"resourceType": "Observation", "status": "final",
        "identifier": [{"system": "urn:obs", "value": ident}],
        "category": [{"coding": [{"system": cat_system, "code": cat_code}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": subject},
        "effectiveDateTime": "2024-03-01T08:00:00Z",
        "valueQuantity": {"value": value, "unit": "u", "system": "http://unitsofmeasure.org", "code": "/min"}})
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn consent(pid: &str, org: &str, classes: &[&str], deny_code: Option<&str>) -> Value {
    let mut c = json!({
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{pid}")},
        "provision": {"type": "permit", "period": {"start": "2026-01-01", "end": "2027-12-31"},
            "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                       "reference": {"reference": format!("Organization/{org}")}}],
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
            "class": classes.iter().map(|c| json!({"system": DATA_CLASS, "code": c})).collect::<Vec<_>>()}
    });
    if let Some(code) = deny_code {
        c["provision"]["provision"] = json!([{"type": "deny",
            "code": [{"coding": [{"system": "http://loinc.org", "code": code}]}]}]);
    }
    c
}

/// One seeded resource: its body, the body it has where it is changed, and who may not see it.
struct Seed {
    rt: &'static str,
    id: &'static str,
    body: Value,
    changed: Option<Value>,
    hidden_from: &'static [Caller],
}

fn seeds(base: &str) -> Vec<Seed> {
    let sleep = format!("{DATA_CLASS}|sleep");
    let lab = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
    let s = |rt, id, body, changed: Option<Value>, hidden_from| Seed {
        rt,
        id,
        body,
        changed,
        hidden_from,
    };
    vec![
        s(
            "Organization",
            "acme",
            json!({"resourceType": "Organization", "name": "Acme Telehealth"}),
            None,
            &[Granular],
        ),
        s(
            "Organization",
            "globex",
            json!({"resourceType": "Organization", "name": "Globex"}),
            Some(json!({"resourceType": "Organization", "name": "Globex Renamed"})),
            &[Granular],
        ),
        s(
            "Patient",
            "a",
            patient("Alpha", "111", "1980-01-01", "female"),
            Some(patient("Yankee", "777", "1930-05-05", "male")),
            &[Partner],
        ),
        s(
            "Patient",
            "b",
            patient("Bravo", "222", "1990-02-02", "male"),
            Some(patient("Zulu", "999", "1950-06-06", "female")),
            &[Patient, Granular, Partner],
        ),
        s(
            "Patient",
            "p",
            patient("Papa", "333", "1970-03-03", "male"),
            Some(patient("Quebec", "888", "1940-07-07", "female")),
            &[Patient, Granular, Partner],
        ),
        s(
            "Observation",
            "a-hr",
            with(
                obs("Patient/a", VITAL, "8867-4", 70.0, "a1"),
                "focus",
                json!([{"reference": "Patient/b"}]),
            ),
            Some(with(
                obs("Patient/a", VITAL, "8867-4", 71.0, "a1x"),
                "focus",
                json!([{"reference": "Patient/b"}]),
            )),
            &[Partner],
        ),
        s(
            "Observation",
            "a-bp",
            obs("Patient/a", VITAL, "8480-6", 120.0, "a2"),
            None,
            &[Partner],
        ),
        s(
            "Observation",
            "a-lab",
            obs("Patient/a", lab, "2345-7", 5.5, "a3"),
            Some(obs("Patient/a", lab, "2345-8", 9.9, "a3x")),
            &[Granular, Partner],
        ),
        s(
            "Observation",
            "a-member",
            with(
                obs("Patient/a", VITAL, "85354-9", 100.0, "a4"),
                "hasMember",
                json!([{"reference": "Observation/b-hr"}]),
            ),
            None,
            &[Partner],
        ),
        s(
            "Observation",
            "b-hr",
            obs("Patient/b", VITAL, "8867-4", 80.0, "b1"),
            Some(obs("Patient/b", VITAL, "8480-6", 180.0, "b1x")),
            &[Patient, Granular, Partner],
        ),
        s(
            "Observation",
            "b-abs",
            obs(&format!("{base}/Patient/b"), VITAL, "29463-7", 65.0, "b2"),
            Some(obs(
                &format!("{base}/Patient/b"),
                VITAL,
                "29463-7",
                165.0,
                "b2x",
            )),
            &[Patient, Granular, Partner],
        ),
        s(
            "Observation",
            "g-obs",
            obs("Group/g1", VITAL, "8867-4", 90.0, "g1"),
            Some(obs("Group/g1", VITAL, "8867-4", 190.0, "g1x")),
            &[Patient, Granular, Partner],
        ),
        s(
            "Observation",
            "p-hr",
            obs("Patient/p", VITAL, "8867-4", 60.0, "p1"),
            Some(obs("Patient/p", VITAL, "8867-4", 61.0, "p1x")),
            &[Patient, Granular],
        ),
        s(
            "Observation",
            "p-bp",
            obs("Patient/p", VITAL, "8480-6", 130.0, "p2"),
            Some(obs("Patient/p", VITAL, "8480-6", 190.0, "p2x")),
            &[Patient, Granular, Partner],
        ),
        s(
            "Observation",
            "p-sleep",
            obs("Patient/p", &sleep, "93832-4", 7.0, "p3"),
            Some(obs("Patient/p", &sleep, "93832-4", 3.0, "p3x")),
            &[Patient, Granular, Partner],
        ),
        s(
            "Consent",
            "p-acme",
            consent("p", "acme", &["vital-signs"], Some("8480-6")),
            None,
            &[Patient, Granular],
        ),
        s(
            "Consent",
            "b-globex",
            consent("b", "globex", &["sleep"], None),
            Some(consent("b", "globex", &["vital-signs", "sleep"], None)),
            &[Patient, Granular, Partner],
        ),
        s(
            "Provenance",
            "b-prov",
            json!({"resourceType": "Provenance", "target": [{"reference": "Observation/b-hr"}],
                "recorded": "2024-03-01T09:00:00Z", "agent": [{"who": {"reference": "Patient/b"}}]}),
            Some(
                json!({"resourceType": "Provenance", "target": [{"reference": "Observation/b-hr"}, {"reference": "Observation/a-hr"}],
                "recorded": "2024-03-02T09:00:00Z", "agent": [{"who": {"reference": "Patient/b"}}]}),
            ),
            &[Patient, Granular, Partner],
        ),
    ]
}

/// Resources only the changed store has, and who may not see them.
fn extras(base: &str) -> Vec<Seed> {
    let sleep = format!("{DATA_CLASS}|sleep");
    let lab = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";
    let s = |rt, id, body, hidden_from| Seed {
        rt,
        id,
        body,
        changed: None,
        hidden_from,
    };
    vec![
        s(
            "Observation",
            "x-b",
            with(
                obs("Patient/b", VITAL, "8867-4", 300.0, "xb"),
                "focus",
                json!([{"reference": "Patient/a"}]),
            ),
            &[Patient, Granular, Partner],
        ),
        s(
            "Observation",
            "x-babs",
            obs(&format!("{base}/Patient/b"), VITAL, "8867-4", 301.0, "a1"),
            &[Patient, Granular, Partner],
        ),
        s(
            "Observation",
            "x-g",
            obs("Group/g1", VITAL, "8480-6", 302.0, "xg"),
            &[Patient, Granular, Partner],
        ),
        s(
            "Observation",
            "x-alab",
            obs("Patient/a", lab, "8867-4", 303.0, "xalab"),
            &[Granular, Partner],
        ),
        s(
            "Observation",
            "x-a",
            obs("Patient/a", VITAL, "8867-4", 304.0, "xa"),
            &[Partner],
        ),
        s(
            "Observation",
            "x-pbp",
            obs("Patient/p", VITAL, "8480-6", 305.0, "xpbp"),
            &[Patient, Granular, Partner],
        ),
        s(
            "Observation",
            "x-psleep",
            obs("Patient/p", &sleep, "93832-4", 306.0, "xps"),
            &[Patient, Granular, Partner],
        ),
        s(
            "Patient",
            "x-pat",
            patient("Brava", "111", "1980-01-01", "female"),
            &[Patient, Granular, Partner],
        ),
        s(
            "Consent",
            "x-bacme",
            consent("b", "globex", &["vital-signs"], None),
            &[Patient, Granular, Partner],
        ),
        s(
            "Provenance",
            "x-prov",
            json!({"resourceType": "Provenance", "target": [{"reference": "Observation/a-hr"}],
                "recorded": "2024-03-01T09:00:00Z", "agent": [{"who": {"reference": "Patient/b"}}]}),
            &[Patient, Granular, Partner],
        ),
    ]
}

/// Every id the seeds use (others are ids the server made during the run).
fn seeded_ids() -> Vec<&'static str> {
    let mut ids: Vec<&'static str> = seeds("").iter().map(|s| s.id).collect();
    ids.extend(extras("").iter().map(|s| s.id));
    ids
}

async fn put(app: &TestApp, rt: &str, id: &str, body: &Value) {
    let mut body = body.clone();
    body["id"] = json!(id);
    let resp = app
        .client
        .put(format!("{}/{rt}/{id}", app.base))
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .expect("seed");
    assert!(
        resp.status().is_success(),
        "seeding {rt}/{id}: {}",
        resp.text().await.unwrap_or_default()
    );
}

/// Seeds `app`; with `changed_for`, changes and adds what that caller may not see.
async fn seed(app: &TestApp, changed_for: Option<Caller>) {
    let base = app.base.clone();
    for s in seeds(&base) {
        let changed = changed_for.is_some_and(|c| s.hidden_from.contains(&c));
        let body = match (&s.changed, changed) {
            (Some(c), true) => c,
            _ => &s.body,
        };
        put(app, s.rt, s.id, body).await;
    }
    if let Some(c) = changed_for {
        for s in extras(&base)
            .into_iter()
            .filter(|s| s.hidden_from.contains(&c))
        {
            put(app, s.rt, s.id, &s.body).await;
        }
    }
}

fn bearer(app: &TestApp, caller: Caller) -> String {
    match caller {
        Patient => token(app, "ni-patient-app", "patient/*.cruds", Some("a"), None),
        Granular => token(
            app,
            "ni-granular-app",
            &format!("patient/Observation.rs?category={VITAL} patient/Patient.rs"),
            Some("a"),
            None,
        ),
        Partner => token(
            app,
            "ni-partner",
            "system/*.rs",
            None,
            Some("Organization/acme"),
        ),
    }
}

/// One generated request.
#[derive(Debug, Clone)]
struct Req {
    method: &'static str,
    /// Below the FHIR base, with the query.
    path: String,
    body: Option<Value>,
    /// A form body (`POST _search`).
    form: Option<String>,
    headers: Vec<(&'static str, String)>,
}

impl Req {
    fn get(path: String) -> Req {
        Req::new("GET", path, None)
    }

    fn new(method: &'static str, path: String, body: Option<Value>) -> Req {
        Req {
            method,
            path,
            body,
            form: None,
            headers: Vec::new(),
        }
    }

    fn header(mut self, k: &'static str, v: String) -> Req {
        self.headers.push((k, v));
        self
    }
}

/// What must not differ between the two stores.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    /// Entry or resource ids (sorted; ids the server made read `new`).
    ids: Vec<String>,
    total: Option<i64>,
    /// Relations of the Bundle's links other than `self`.
    links: Vec<String>,
    /// Entry response statuses (batch, transaction).
    statuses: Vec<String>,
    /// Error texts, and `$stats` parameters.
    text: Vec<String>,
    /// The second page, when there is a `next` link.
    next: Option<Box<Seen>>,
}

fn normal_id(id: &str, seeded: &[&str]) -> String {
    if seeded.contains(&id) {
        id.to_owned()
    } else {
        "new".to_owned()
    }
}

async fn issue(client: &reqwest::Client, app: &TestApp, bearer: &str, r: &Req) -> Seen {
    let url = format!("{}/{}", app.base, r.path);
    let method = reqwest::Method::from_bytes(r.method.as_bytes()).expect("method");
    let mut req = client
        .request(method, &url)
        .bearer_auth(bearer)
        .header("x-purpose-of-use", "TREAT");
    for (k, v) in &r.headers {
        req = req.header(*k, v);
    }
    if let Some(b) = &r.body {
        req = req
            .header("content-type", "application/fhir+json")
            .body(b.to_string());
    }
    if let Some(f) = &r.form {
        req = req
            .header("content-type", "application/x-www-form-urlencoded")
            .body(f.clone());
    }
    let resp = req.send().await.expect("request");
    let seen = observe(app, resp).await;
    match &seen.1 {
        Some(next) => {
            let resp = client
                .get(next)
                .bearer_auth(bearer)
                .header("x-purpose-of-use", "TREAT")
                .send()
                .await
                .expect("next");
            let (page2, _) = observe(app, resp).await;
            Seen {
                next: Some(Box::new(page2)),
                ..seen.0
            }
        }
        None => seen.0,
    }
}

async fn observe(app: &TestApp, resp: reqwest::Response) -> (Seen, Option<String>) {
    let seeded = seeded_ids();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let mut seen = Seen {
        status,
        ids: Vec::new(),
        total: body["total"].as_i64(),
        links: Vec::new(),
        statuses: Vec::new(),
        text: Vec::new(),
        next: None,
    };
    let mut next = None;
    let root = app.base.trim_end_matches("/fhir");
    match body["resourceType"].as_str() {
        Some("Bundle") => {
            for l in body["link"].as_array().into_iter().flatten() {
                let rel = l["relation"].as_str().unwrap_or("").to_owned();
                if rel == "next" {
                    next = l["url"].as_str().map(str::to_owned);
                }
                if rel != "self" {
                    seen.links.push(rel);
                }
            }
            for e in body["entry"].as_array().into_iter().flatten() {
                if let Some(id) = e["resource"]["id"].as_str() {
                    let rt = e["resource"]["resourceType"].as_str().unwrap_or("");
                    if rt == "OperationOutcome" {
                        seen.text
                            .push(e["resource"].to_string().replace(root, "BASE"));
                    } else {
                        seen.ids.push(format!("{rt}/{}", normal_id(id, &seeded)));
                    }
                } else if e["resource"]["resourceType"] == "OperationOutcome" {
                    seen.text
                        .push(e["resource"]["issue"].to_string().replace(root, "BASE"));
                }
                if let Some(s) = e["response"]["status"].as_str() {
                    seen.statuses.push(s.to_owned());
                    if let Some(o) = e["response"]["outcome"].as_object() {
                        seen.text
                            .push(Value::Object(o.clone()).to_string().replace(root, "BASE"));
                    }
                }
            }
            seen.ids.sort();
        }
        Some("OperationOutcome") => {
            for i in body["issue"].as_array().into_iter().flatten() {
                seen.text.push(
                    format!("{} {} {}", i["code"], i["diagnostics"], i["expression"])
                        .replace(root, "BASE"),
                );
            }
        }
        Some("Parameters") => seen.text.push(body["parameter"].to_string()),
        Some(rt) => {
            if let Some(id) = body["id"].as_str() {
                seen.ids.push(format!("{rt}/{}", normal_id(id, &seeded)));
            }
        }
        None => {}
    }
    (seen, next)
}

// ---- the request generator ----

fn one<T: Clone + std::fmt::Debug + 'static>(items: &'static [T]) -> impl Strategy<Value = T> {
    proptest::sample::select(items)
}

const IDS: &[&str] = &[
    "a", "b", "p", "x-pat", "nope", "a-hr", "a-bp", "a-lab", "a-member", "b-hr", "b-abs", "g-obs",
    "p-hr", "p-bp", "p-sleep", "x-b", "x-alab", "x-a", "x-pbp", "x-psleep", "x-g",
];
const NAMES: &[&str] = &[
    "A", "Al", "Alpha", "B", "Br", "Bra", "Z", "Zu", "P", "Pa", "Q", "Y", "Brav",
];
const SSNS: &[&str] = &[
    "111",
    "222",
    "999",
    "333",
    "888",
    "777",
    "urn:ssn|222",
    "urn:ssn|111",
    "urn:ssn|",
];
const BIRTHS: &[&str] = &[
    "1980",
    "1990",
    "1950",
    "ge1960",
    "lt1960",
    "1970-03-03",
    "le1945",
    "ge1980-01-01",
    "lt1990-01-01",
    "gt1979",
    "sa1969",
    "eb1971",
    "ne1980",
    "le1950-12-31",
    "1980,ge1990",
    "ge1980-06-15",
];
const VALUE_SETS: &[&str] = &[
    "http://hl7.org/fhir/ValueSet/observation-vitalsignresult",
    "https://fhirgate.org/ValueSet/data-class",
    "http://hl7.org/fhir/ValueSet/observation-vitalsignresult,https://fhirgate.org/ValueSet/data-class",
    "http://example.org/ValueSet/unknown",
];
const GENDERS: &[&str] = &["male", "female"];
const CODES: &[&str] = &[
    "8867-4",
    "8480-6",
    "2345-7",
    "2345-8",
    "93832-4",
    "29463-7",
    "85354-9",
    "http://loinc.org|8480-6",
    "http://loinc.org|8867-4",
    "http://loinc.org|",
];
const QUANTITIES: &[&str] = &[
    "gt100", "lt100", "gt173", "ge60", "70", "gt290", "le65", "ge180",
];
const CATEGORIES: &[&str] = &[
    "vital-signs",
    "laboratory",
    "https://fhirgate.org/CodeSystem/data-class|sleep",
];
const OBS_IDENTIFIERS: &[&str] = &[
    "urn:obs|a1",
    "urn:obs|b1",
    "urn:obs|b1x",
    "urn:obs|p2",
    "urn:obs|a3x",
    "xb",
    "a1",
];

fn obs_param() -> impl Strategy<Value = (String, String)> {
    let p = |k: &'static str, v: &'static [&'static str]| {
        one(v).prop_map(move |v| (k.to_owned(), v.to_owned()))
    };
    let r = |k: &'static str| one(IDS).prop_map(move |v| (k.to_owned(), format!("Patient/{v}")));
    prop_oneof![
        p("code", CODES),
        p("category", CATEGORIES),
        p("value-quantity", QUANTITIES),
        p("date", &["ge2024", "lt2024-03-02", "2024-03-01", "lt2020"]),
        p("identifier", OBS_IDENTIFIERS),
        r("patient"),
        r("subject"),
        r("focus"),
        p("subject:Patient.name", NAMES),
        p("subject:Patient.identifier", SSNS),
        p("subject:Patient.birthdate", BIRTHS),
        p("patient.gender", GENDERS),
        p("focus:Patient.name", NAMES),
        p("focus:Patient.identifier", SSNS),
        p("focus:Patient.birthdate", BIRTHS),
        p("has-member:Observation.value-quantity", QUANTITIES),
        p("has-member:Observation.code", CODES),
        one(IDS).prop_map(|v| (
            "_has:Provenance:target:agent".to_owned(),
            format!("Patient/{v}")
        )),
        one(IDS).prop_map(|v| ("_id".to_owned(), v.to_owned())),
        p("code:missing", &["true", "false"]),
        p("code:in", VALUE_SETS),
        p("code:not-in", VALUE_SETS),
        p("category:in", VALUE_SETS),
        p("category:not-in", VALUE_SETS),
        p("has-member:Observation.code:in", VALUE_SETS),
        p(
            "_sort",
            &["date", "-date", "_id", "value-quantity", "-code"]
        ),
    ]
}

fn patient_param() -> impl Strategy<Value = (String, String)> {
    let p = |k: &'static str, v: &'static [&'static str]| {
        one(v).prop_map(move |v| (k.to_owned(), v.to_owned()))
    };
    prop_oneof![
        p("name", NAMES),
        p("family:exact", &["Alpha", "Bravo", "Zulu", "Papa"]),
        p("identifier", SSNS),
        p("birthdate", BIRTHS),
        p("gender", GENDERS),
        one(IDS).prop_map(|v| ("_id".to_owned(), v.to_owned())),
        p("_has:Observation:patient:code", CODES),
        p("_has:Observation:patient:code:not-in", VALUE_SETS),
        p("_has:Observation:subject:value-quantity", QUANTITIES),
        p("_has:Observation:focus:code", CODES),
        p(
            "_has:Consent:patient:actor",
            &["Organization/acme", "Organization/globex"]
        ),
        p("_sort", &["name", "-birthdate", "_id"]),
    ]
}

fn other_search() -> impl Strategy<Value = String> {
    prop_oneof![
        one(IDS).prop_map(|v| format!("Organization?_has:Consent:actor:patient=Patient/{v}")),
        one(NAMES).prop_map(|v| format!("Organization?_has:Consent:actor:patient.name={v}")),
        one(&["Acme", "Glob", "Globex Ren"]).prop_map(|v| format!("Organization?name={v}")),
        one(IDS).prop_map(|v| format!("Consent?patient=Patient/{v}")),
        one(&["Organization/acme", "Organization/globex"])
            .prop_map(|v| format!("Consent?actor={v}")),
        one(IDS).prop_map(|v| format!("Provenance?agent=Patient/{v}")),
        one(IDS).prop_map(|v| format!("Provenance?target=Observation/{v}")),
        Just("Provenance?_count=5".to_owned()),
        one(&["Observation,Patient", "Patient,Organization", "Observation"])
            .prop_map(|t| format!("?_type={t}&_count=3")),
    ]
}

fn modifiers() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(
        one(&[
            "_summary=count",
            "_total=accurate",
            "_count=1",
            "_count=2",
            "_count=0",
            "_include=Observation:subject",
            "_include=Observation:has-member",
            "_include=Observation:focus",
            "_include:iterate=Observation:has-member",
            "_revinclude=Provenance:target",
            "_revinclude=Observation:subject",
            "_revinclude=Observation:focus",
            "_elements=id",
            "_summary=true",
        ])
        .prop_map(str::to_owned),
        0..3,
    )
}

fn query(pairs: &[(String, String)], mods: &[String]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    let mut out = q.finish();
    for m in mods {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(m);
    }
    out
}

fn searches() -> impl Strategy<Value = Req> {
    prop_oneof![
        (proptest::collection::vec(obs_param(), 1..3), modifiers())
            .prop_map(|(p, m)| Req::get(format!("Observation?{}", query(&p, &m)))),
        (
            proptest::collection::vec(patient_param(), 1..3),
            modifiers()
        )
            .prop_map(|(p, m)| Req::get(format!("Patient?{}", query(&p, &m)))),
        (other_search(), modifiers()).prop_map(|(s, m)| {
            let sep = if s.contains('?') { "&" } else { "?" };
            Req::get(format!("{s}{sep}{}", m.join("&")))
        }),
        (
            one(IDS),
            proptest::collection::vec(obs_param(), 0..2),
            modifiers()
        )
            .prop_map(|(id, p, m)| Req::get(format!("Patient/{id}/Observation?{}", query(&p, &m)))),
        (proptest::collection::vec(obs_param(), 1..3)).prop_map(|p| Req {
            form: Some(query(&p, &[])),
            ..Req::new("POST", "Observation/_search".into(), None)
        }),
    ]
}

fn operations() -> impl Strategy<Value = Req> {
    prop_oneof![
        (
            one(IDS),
            one(&[
                "",
                "?_count=2",
                "?_type=Observation",
                "?_count=1&_type=Observation,Provenance"
            ])
        )
            .prop_map(|(id, q)| Req::get(format!("Patient/{id}/$everything{q}"))),
        (
            one(IDS),
            one(&["1", "2"]),
            proptest::collection::vec(obs_param(), 0..2)
        )
            .prop_map(|(id, max, p)| Req::get(format!(
                "Observation/$lastn?patient=Patient/{id}&max={max}&{}",
                query(&p, &[])
            ))),
        one(CATEGORIES).prop_map(|c| Req::get(format!("Observation/$lastn?category={c}"))),
        (one(IDS), one(CODES)).prop_map(|(id, c)| Req::get(format!(
            "Observation/$stats?patient=Patient/{id}&code={c}"
        ))),
        one(CODES).prop_map(|c| Req::get(format!("Observation/$stats?code={c}"))),
        one(CATEGORIES).prop_map(|c| Req::get(format!("Observation/$stats?category={c}"))),
    ]
}

fn reads() -> impl Strategy<Value = Req> {
    let rts = &[
        "Observation",
        "Patient",
        "Provenance",
        "Consent",
        "Organization",
    ];
    prop_oneof![
        (one(rts), one(IDS)).prop_map(|(rt, id)| Req::get(format!("{rt}/{id}"))),
        (one(rts), one(IDS)).prop_map(|(rt, id)| Req::get(format!("{rt}/{id}/_history/1"))),
        (one(rts), one(IDS)).prop_map(|(rt, id)| Req::get(format!("{rt}/{id}/_history"))),
        one(&[
            "Observation/_history?_count=1",
            "Observation/_history?_count=3",
            "_history?_count=2",
            "Patient/_history",
            "Consent/_history?_count=1"
        ])
        .prop_map(|p| Req::get(p.to_owned())),
        (one(rts), one(IDS)).prop_map(|(rt, id)| Req::get(format!("{rt}?_id={id}"))),
        (one(IDS), one(IDS)).prop_map(|(a, b)| Req::new(
            "POST",
            String::new(),
            Some(json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"request": {"method": "GET", "url": format!("Observation/{a}")}},
                {"request": {"method": "GET", "url": format!("Patient/{b}")}}]}))
        )),
    ]
}

fn writes() -> impl Strategy<Value = Req> {
    let mine = || obs("Patient/a", VITAL, "8867-4", 72.0, "new1");
    prop_oneof![
        one(OBS_IDENTIFIERS).prop_map(move |i| Req::new(
            "POST",
            "Observation".into(),
            Some(mine())
        )
        .header("if-none-exist", format!("identifier={i}"))),
        one(&["urn:ssn|222", "urn:ssn|111", "urn:ssn|999", "222"]).prop_map(|s| Req::new(
            "POST",
            String::new(),
            Some(
                json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
                "fullUrl": "urn:uuid:6a3c1c8e-0d3e-4b8e-9d4b-1b2f0c6a7e11",
                "resource": obs(&format!("Patient?identifier={s}"), VITAL, "8867-4", 73.0, "new2"),
                "request": {"method": "POST", "url": "Observation"}}]})
            )
        )),
        (one(OBS_IDENTIFIERS), proptest::option::of(one(IDS))).prop_map(move |(i, id)| {
            let mut body = mine();
            if let Some(id) = id {
                body["id"] = json!(id);
            }
            Req::new("PUT", format!("Observation?identifier={i}"), Some(body))
        }),
        one(&["b-hr", "b-abs", "p-hr", "g-obs", "nope", "x-b", "x-a", "x-alab"])
            .prop_map(|id| Req::new("DELETE", format!("Observation/{id}"), None)),
        (
            one(&["b-hr", "b-abs", "nope", "x-b", "x-alab"]),
            one(&["1", "2"])
        )
            .prop_map(
                |(id, v)| Req::new("DELETE", format!("Observation/{id}"), None)
                    .header("if-match", format!("W/\"{v}\""))
            ),
        one(OBS_IDENTIFIERS).prop_map(|i| Req::new(
            "DELETE",
            format!("Observation?identifier={i}"),
            None
        )),
        one(&["b-hr", "b-abs", "p-hr", "g-obs", "nope", "x-b", "x-pbp"]).prop_map(move |id| {
            let mut body = mine();
            body["id"] = json!(id);
            Req::new("PUT", format!("Observation/{id}"), Some(body))
        }),
    ]
}

fn requests() -> impl Strategy<Value = Req> {
    prop_oneof![5 => searches(), 2 => operations(), 3 => reads(), 1 => writes()]
}

/// Runs the suite for `caller`.
fn run(caller: Caller) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (low, high) = rt.block_on(async {
        let low = spawn_app().await;
        let high = spawn_app().await;
        seed(&low, None).await;
        seed(&high, Some(caller)).await;
        (low, high)
    });
    let (bl, bh) = (bearer(&low, caller), bearer(&high, caller));
    let client = reqwest::Client::new();
    let cases = std::env::var("FHIRGATE_NI_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(700);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 200,
        ..Config::default()
    });
    let result = runner.run(&requests(), |req| {
        let (a, b) = rt.block_on(async {
            let a = issue(&client, &low, &bl, &req).await;
            let b = issue(&client, &high, &bh, &req).await;
            (a, b)
        });
        if a.status >= 500 {
            return Err(TestCaseError::fail(format!("{caller:?} {} {}: server error {a:?}", req.method, req.path)));
        }
        if a != b {
            return Err(TestCaseError::fail(format!(
                "{caller:?} {} /{} answered differently when invisible data changed:\n  store: {a:?}\n  changed: {b:?}",
                req.method, req.path
            )));
        }
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn a_patient_token_learns_nothing_of_other_patients() {
    run(Patient);
}

#[test]
fn a_granular_token_learns_nothing_beyond_its_filters() {
    run(Granular);
}

#[test]
fn a_partner_learns_nothing_beyond_the_consents() {
    run(Partner);
}
