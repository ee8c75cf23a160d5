//! Search modifiers partners use (issue 16, item 13): token `:in` / `:not-in` over the ValueSets
//! the server ships, `:above` / `:below` (uri prefixes; no token hierarchies), and `_text` /
//! `_content` refused; and birth-date ranges at year precision (item 14), checked against an
//! oracle over the full dates.

use chrono::{Datelike, NaiveDate};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::{json, Value};

use crate::helpers::{assert_outcome, expressions, json, spawn_app, TestApp};

const VITALS: &str = "http://hl7.org/fhir/ValueSet/observation-vitalsignresult";
const DATA_CLASSES: &str = "https://fhirgate.org/ValueSet/data-class";
const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const DATA_CLASS: &str = "https://fhirgate.org/CodeSystem/data-class";

fn obs(id: &str, patient: &str, category: (&str, &str), system: &str, code: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": category.0, "code": category.1}]}],
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": "2024-03-01T08:00:00Z",
        "valueQuantity": {"value": 1, "unit": "u", "system": "http://unitsofmeasure.org", "code": "1"}})
}

async fn put_all(app: &TestApp, resources: &[Value]) {
    for r in resources {
        let path = format!(
            "{}/{}",
            r["resourceType"].as_str().expect("type"),
            r["id"].as_str().expect("id")
        );
        let resp = app.put(&path, r).await;
        assert!(
            resp.status().is_success(),
            "{path}: {}",
            resp.text().await.unwrap_or_default()
        );
    }
}

/// The sorted ids of a search's matches (a 200 is required).
async fn ids(app: &TestApp, query: &str) -> Vec<String> {
    let resp = app.get(query).await;
    let status = resp.status();
    let b = json(resp).await;
    assert_eq!(status, 200, "{query}: {b}");
    let mut out: Vec<String> = b["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect();
    out.sort();
    out
}

/// A 400 OperationOutcome whose expression names `param` and whose text contains each of `says`.
async fn refused(app: &TestApp, query: &str, param: &str, says: &[&str]) -> Value {
    let oo = assert_outcome(app.get(query).await, 400, "not-supported").await;
    assert!(
        expressions(&oo).iter().any(|e| e == param),
        "{query}: the outcome names {param}: {oo}"
    );
    let text = oo.to_string();
    for s in says {
        assert!(text.contains(s), "{query}: the outcome says '{s}': {oo}");
    }
    oo
}

async fn seed_codes(app: &TestApp) {
    let loinc = "http://loinc.org";
    let vital = (CATEGORY, "vital-signs");
    put_all(
        app,
        &[
            json!({"resourceType": "Patient", "id": "p1"}),
            json!({"resourceType": "Patient", "id": "p2"}),
            obs("hr", "p1", vital, loinc, "8867-4"),
            obs("weight", "p1", vital, loinc, "29463-7"),
            obs("bp", "p2", vital, loinc, "85354-9"),
            obs("steps", "p1", (CATEGORY, "activity"), loinc, "55423-8"),
            // A vital-sign code in another system is not in the LOINC ValueSet.
            obs("not-loinc", "p1", vital, "urn:local", "8867-4"),
            obs("sleep", "p1", (DATA_CLASS, "sleep"), loinc, "93832-4"),
            obs(
                "body",
                "p2",
                (DATA_CLASS, "body-measurement"),
                loinc,
                "29463-7",
            ),
            obs("lab", "p2", (CATEGORY, "laboratory"), loinc, "2345-7"),
        ],
    )
    .await;
}

/// `:in` and `:not-in` resolve the vital-signs and data-class ValueSets locally, on the general
/// path, the one-patient path (`obs_code_date`), counts and OR lists; other ValueSets are refused
/// naming the parameter and listing the two supported.
#[tokio::test]
async fn token_in_and_not_in_resolve_the_shipped_value_sets() {
    let app = spawn_app().await;
    seed_codes(&app).await;
    let all = [
        "body",
        "bp",
        "hr",
        "lab",
        "not-loinc",
        "sleep",
        "steps",
        "weight",
    ];
    let vitals = ["body", "bp", "hr", "weight"];
    let classed = ["body", "sleep"];
    let not = |set: &[&str]| -> Vec<String> {
        all.iter()
            .filter(|i| !set.contains(i))
            .map(|i| (*i).to_owned())
            .collect()
    };
    assert_eq!(
        ids(&app, &format!("Observation?code:in={VITALS}")).await,
        vitals
    );
    assert_eq!(
        ids(&app, &format!("Observation?code:not-in={VITALS}")).await,
        not(&vitals)
    );
    assert_eq!(
        ids(&app, &format!("Observation?category:in={DATA_CLASSES}")).await,
        classed
    );
    assert_eq!(
        ids(&app, &format!("Observation?category:not-in={DATA_CLASSES}")).await,
        not(&classed)
    );
    // OR of two ValueSets, AND with another parameter, one patient's rows.
    assert_eq!(
        ids(
            &app,
            &format!("Observation?code:in={VITALS},{DATA_CLASSES}&patient=Patient/p1")
        )
        .await,
        ["hr", "weight"]
    );
    assert_eq!(
        ids(
            &app,
            &format!("Observation?category:in={VITALS},{DATA_CLASSES}&code:not-in={VITALS}")
        )
        .await,
        ["sleep"]
    );
    assert_eq!(
        ids(
            &app,
            &format!("Patient/p2/Observation?code:in={VITALS}&date=ge2024")
        )
        .await,
        ["body", "bp"]
    );
    let count = json(
        app.get(&format!("Observation?code:in={VITALS}&_summary=count"))
            .await,
    )
    .await;
    assert_eq!(count["total"], 4, "{count}");
    // Any other ValueSet is refused, in strict and lenient handling alike.
    for prefer in ["handling=strict", "handling=lenient"] {
        let resp = app
            .client
            .get(format!(
                "{}/Observation?code:in=http://example.org/ValueSet/mine",
                app.base
            ))
            .header("prefer", prefer)
            .send()
            .await
            .expect("request");
        let oo = assert_outcome(resp, 400, "not-supported").await;
        assert_eq!(expressions(&oo), ["code:in"], "{oo}");
        for s in ["http://example.org/ValueSet/mine", VITALS, DATA_CLASSES] {
            assert!(oo.to_string().contains(s), "{s}: {oo}");
        }
    }
    refused(
        &app,
        &format!("Observation?code:not-in={VITALS}|4.0.1"),
        "code:not-in",
        &[VITALS, DATA_CLASSES],
    )
    .await;
    // Blind-indexed tokens hold no ValueSet codes.
    refused(
        &app,
        &format!("Patient?identifier:in={VITALS}"),
        "identifier:in",
        &["blind"],
    )
    .await;
    refused(
        &app,
        &format!("Patient?telecom:not-in={VITALS}"),
        "telecom:not-in",
        &["blind"],
    )
    .await;
    // `:in` on a parameter that is not a token.
    refused(
        &app,
        &format!("Observation?date:in={VITALS}"),
        "date:in",
        &[":in"],
    )
    .await;
}

/// Token `:above` / `:below` are refused saying no hierarchy is available for the system; uri
/// `:above` / `:below` are the spec's URL-prefix matches.
#[tokio::test]
async fn above_and_below_are_uri_prefixes_and_refused_on_tokens() {
    let app = spawn_app().await;
    seed_codes(&app).await;
    refused(
        &app,
        "Observation?code:below=http://loinc.org|8867-4",
        "code:below",
        &["hierarchy", "http://loinc.org"],
    )
    .await;
    refused(
        &app,
        &format!("Observation?category:above={DATA_CLASS}|sleep"),
        "category:above",
        &["hierarchy", DATA_CLASS],
    )
    .await;
    refused(
        &app,
        "Observation?code:above=8867-4",
        "code:above",
        &["hierarchy", "no system"],
    )
    .await;
    let vs = |id: &str, url: &str| json!({"resourceType": "ValueSet", "id": id, "url": url, "status": "active"});
    put_all(
        &app,
        &[
            vs("root", "http://example.org/fhir"),
            vs("a", "http://example.org/fhir/ValueSet/a"),
            vs("ab", "http://example.org/fhir/ValueSet/a/b"),
            vs("other", "http://other.org/fhir/ValueSet/a"),
            vs("pct", "http://example.org/f%r_x"),
        ],
    )
    .await;
    assert_eq!(
        ids(
            &app,
            "ValueSet?url:below=http://example.org/fhir/ValueSet/a"
        )
        .await,
        ["a", "ab"]
    );
    assert_eq!(
        ids(&app, "ValueSet?url:below=http://example.org/fhir").await,
        ["a", "ab", "root"]
    );
    assert_eq!(
        ids(
            &app,
            "ValueSet?url:above=http://example.org/fhir/ValueSet/a/b/c"
        )
        .await,
        ["a", "ab", "root"]
    );
    assert_eq!(
        ids(
            &app,
            "ValueSet?url:above=http://example.org/fhir/ValueSet/a"
        )
        .await,
        ["a", "root"]
    );
    // LIKE metacharacters in the value or the stored URL are literal.
    assert_eq!(
        ids(&app, "ValueSet?url:below=http://example.org/f%25").await,
        ["pct"]
    );
    assert!(ids(&app, "ValueSet?url:below=http://example.org/f_")
        .await
        .is_empty());
    assert_eq!(
        ids(&app, "ValueSet?url:above=http://example.org/f%25r_x/y").await,
        ["pct"]
    );
    assert!(ids(&app, "ValueSet?url:above=http://example.org/fXrYx/y")
        .await
        .is_empty());
}

/// `_text` and `_content` are refused naming the parameter, whatever `Prefer: handling` says,
/// and also inside chains and `_has`.
#[tokio::test]
async fn text_and_content_are_refused_even_when_lenient() {
    let app = spawn_app().await;
    for (query, param) in [
        ("Patient?_text=fever", "_text"),
        ("Observation?_content=fever", "_content"),
        ("Observation?_text:exact=fever", "_text:exact"),
        ("Observation?subject:Patient._content=x", "_content"),
        ("Patient?_has:Observation:patient:_text=x", "_text"),
    ] {
        for prefer in [None, Some("handling=lenient"), Some("handling=strict")] {
            let mut req = app.client.get(format!("{}/{query}", app.base));
            if let Some(p) = prefer {
                req = req.header("prefer", p);
            }
            let oo = assert_outcome(req.send().await.expect("request"), 400, "not-supported").await;
            let text = oo.to_string();
            assert!(text.contains(param), "{query} {prefer:?}: {oo}");
            assert!(
                text.contains("narrative or full text"),
                "{query} {prefer:?}: {oo}"
            );
        }
    }
}

// ---- birth-date ranges at year precision ----

const PREFIXES: [&str; 10] = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];

/// The first and last day a FHIR date (`1983`, `1983-04`, `1983-04-05`) covers.
fn days(text: &str) -> (NaiveDate, NaiveDate) {
    let parts: Vec<i32> = text
        .split('-')
        .map(|p| p.parse().expect("digits"))
        .collect();
    let ymd = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).expect("date");
    match parts.as_slice() {
        [y] => (ymd(*y, 1, 1), ymd(*y, 12, 31)),
        [y, m] => {
            let first = ymd(*y, *m as u32, 1);
            let next = if *m == 12 {
                ymd(y + 1, 1, 1)
            } else {
                ymd(*y, *m as u32 + 1, 1)
            };
            (first, next.pred_opt().expect("day"))
        }
        [y, m, d] => (ymd(*y, *m as u32, *d as u32), ymd(*y, *m as u32, *d as u32)),
        _ => panic!("{text}"),
    }
}

/// What the server must answer for `birthdate=<prefix><value>`, from the full dates: `None`
/// when it must refuse (a range finer than a year, or `ap`), else whether `birth` matches.
fn oracle(prefix: &str, value: &str, birth: Option<&str>) -> Option<bool> {
    let (sl, sh) = days(value);
    let year_start = sl.ordinal() == 1;
    let year_end = sh.succ_opt().is_some_and(|d| d.ordinal() == 1);
    let answerable = match prefix {
        "" | "eq" => true,
        "ne" => year_start && year_end && sl.year() == sh.year(),
        "ge" | "lt" | "eb" => year_start,
        "gt" | "le" | "sa" => year_end,
        _ => false,
    };
    if !answerable {
        return None;
    }
    let Some(birth) = birth else {
        return Some(false);
    };
    let (rl, rh) = days(birth);
    Some(match prefix {
        "" | "eq" => rl >= sl && rh <= sh,
        "ne" => !(rl >= sl && rh <= sh),
        "gt" => rh > sh,
        "lt" => rl < sl,
        "ge" => rh >= sl,
        "le" => rl <= sh,
        "sa" => rl > sh,
        "eb" => rh < sl,
        _ => unreachable!(),
    })
}

/// A birth date or search value: a year, a year-month or a day, biased to the days around year
/// boundaries.
fn date_text() -> impl Strategy<Value = String> {
    let year = 1978..1992i32;
    prop_oneof![
        year.clone().prop_map(|y| format!("{y}")),
        (year.clone(), prop::sample::select(vec![1u32, 6, 12]))
            .prop_map(|(y, m)| format!("{y}-{m:02}")),
        (
            year.clone(),
            prop::sample::select(vec![(1u32, 1u32), (12, 31), (1, 2), (12, 30)])
        )
            .prop_map(|(y, (m, d))| format!("{y}-{m:02}-{d:02}")),
        (year, 1u32..13, 1u32..29).prop_map(|(y, m, d)| format!("{y}-{m:02}-{d:02}")),
    ]
}

/// Patients with random birth dates (some none); random `birthdate` searches, one or two ANDed,
/// each answered exactly as the oracle over the full dates says, or refused when the oracle says
/// the year cannot decide it.
#[test]
fn birth_year_ranges_match_an_oracle_over_the_full_dates() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut births: Vec<Option<String>> = Vec::new();
    let mut runner = TestRunner::new(Config {
        failure_persistence: None,
        ..Config::default()
    });
    let people = proptest::collection::vec(prop::option::weighted(0.9, date_text()), 30);
    births.extend(people.new_tree(&mut runner).expect("tree").current());
    let app = rt.block_on(async {
        let app = spawn_app().await;
        let patients: Vec<Value> = births
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let mut p = json!({"resourceType": "Patient", "id": format!("p{i}")});
                if let Some(b) = b {
                    p["birthDate"] = json!(b);
                }
                p
            })
            .collect();
        put_all(&app, &patients).await;
        app
    });
    // How many cases were refused, answered empty and answered with matches.
    let tally = std::cell::Cell::new((0u32, 0u32, 0u32));
    let search = (prop::sample::select(PREFIXES.to_vec()), date_text());
    let mut runner = TestRunner::new(Config {
        cases: 160,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(
        &proptest::collection::vec(search, 1..3),
        |terms: Vec<(&str, String)>| {
            let query: String = terms
                .iter()
                .map(|(p, v)| format!("birthdate={p}{v}"))
                .collect::<Vec<_>>()
                .join("&");
            let answers: Vec<Option<Vec<bool>>> = terms
                .iter()
                .map(|(p, v)| births.iter().map(|b| oracle(p, v, b.as_deref())).collect())
                .collect();
            let (status, body) = rt.block_on(async {
                let resp = app.get(&format!("Patient?{query}&_count=100")).await;
                (resp.status().as_u16(), json(resp).await)
            });
            if answers.iter().any(Option::is_none) {
                prop_assert_eq!(status, 400, "{} must be refused: {}", query, body);
                let text = body.to_string();
                prop_assert!(
                    text.contains("birthdate") && text.contains("year"),
                    "{}: the refusal names the parameter and says why: {}",
                    query,
                    body
                );
                let (r, e, m) = tally.get();
                tally.set((r + 1, e, m));
                return Ok(());
            }
            prop_assert_eq!(status, 200, "{}: {}", query, body);
            let mut expected: Vec<String> = (0..births.len())
                .filter(|&i| answers.iter().all(|a| a.as_ref().is_some_and(|a| a[i])))
                .map(|i| format!("p{i}"))
                .collect();
            expected.sort();
            let mut got: Vec<String> = body["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
                .collect();
            got.sort();
            let (r, e, m) = tally.get();
            tally.set(if got.is_empty() {
                (r, e + 1, m)
            } else {
                (r, e, m + 1)
            });
            if got != expected {
                return Err(TestCaseError::fail(format!(
                    "{query}: got {got:?}, expected {expected:?}; births {births:?}"
                )));
            }
            Ok(())
        },
    );
    if let Err(e) = result {
        panic!("{e}");
    }
    let (refused, empty, matched) = tally.get();
    assert!(
        refused >= 10 && empty >= 5 && matched >= 20,
        "the generator covers refusals, empty and non-empty answers: {:?}",
        tally.get()
    );
}

/// The named cases of the issue, a RelatedPerson's birthdate on the same path, exact dates still
/// through the blind index, and what the index keeps: the year, never the day.
#[tokio::test]
async fn birthdate_ranges_work_at_year_precision_only() {
    let app = spawn_app().await;
    put_all(
        &app,
        &[
            json!({"resourceType": "Patient", "id": "a", "birthDate": "1979-12-31"}),
            json!({"resourceType": "Patient", "id": "b", "birthDate": "1980-06-15"}),
            json!({"resourceType": "Patient", "id": "c", "birthDate": "1989-12-31"}),
            json!({"resourceType": "Patient", "id": "d", "birthDate": "1990-01-01"}),
            json!({"resourceType": "Patient", "id": "e"}),
            json!({"resourceType": "RelatedPerson", "id": "r", "patient": {"reference": "Patient/a"},
                "birthDate": "1985-03-04"}),
        ],
    )
    .await;
    for (q, want) in [
        ("birthdate=ge1980", &["b", "c", "d"][..]),
        ("birthdate=lt1990", &["a", "b", "c"]),
        ("birthdate=ge1980-01-01&birthdate=lt1990-01-01", &["b", "c"]),
        ("birthdate=gt1979", &["b", "c", "d"]),
        ("birthdate=le1979-12-31", &["a"]),
        ("birthdate=sa1989", &["d"]),
        ("birthdate=eb1980", &["a"]),
        ("birthdate=ne1980", &["a", "c", "d"]),
        ("birthdate=1980,ge1990", &["b", "d"]),
        ("birthdate=1980-06-15", &["b"]),
        ("birthdate=1989", &["c"]),
    ] {
        assert_eq!(ids(&app, &format!("Patient?{q}")).await, want, "{q}");
    }
    assert_eq!(
        ids(&app, "RelatedPerson?birthdate=ge1985&birthdate=lt1986").await,
        ["r"]
    );
    let oo = refused(
        &app,
        "Patient?birthdate=ge1980-06-15",
        "birthdate",
        &["only the birth year is searchable by range"],
    )
    .await;
    assert!(oo.to_string().contains("private"), "{oo}");
    refused(&app, "Patient?birthdate=ap1980", "birthdate", &["ap"]).await;
    refused(
        &app,
        "Patient?birthdate=gt1980-01-01",
        "birthdate",
        &["year"],
    )
    .await;
    refused(
        &app,
        "Patient?birthdate=1980-06-15,ge1990",
        "birthdate",
        &["exact date"],
    )
    .await;
    refused(&app, "Patient?birthdate=ne1980-06", "birthdate", &["year"]).await;
    // The plain index holds whole years only.
    let rows: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "select d.low, d.high from idx_date d join search_param p using (pid) where p.code = 'birthdate:year'",
    )
    .fetch_all(&app.pool)
    .await
    .expect("rows");
    assert_eq!(rows.len(), 5, "one year row per resource with a birth date");
    for (low, high) in rows {
        assert_eq!(
            (low.ordinal(), low.time()),
            (1, chrono::NaiveTime::MIN),
            "{low}"
        );
        assert_eq!((high.month(), high.day()), (12, 31), "{high}");
        assert_eq!(low.year(), high.year());
    }
}

/// An index built before birth years were kept is stale: the fingerprint differs, and a
/// rebuild (what start-up runs) gives existing patients their year rows.
#[tokio::test]
async fn reindex_gives_existing_patients_their_birth_year() {
    let app = spawn_app().await;
    put_all(
        &app,
        &[
            json!({"resourceType": "Patient", "id": "old", "birthDate": "1984-05-06"}),
            json!({"resourceType": "Patient", "id": "young", "birthDate": "2001-02-03"}),
        ],
    )
    .await;
    // As an older server left it: no year rows, and another fingerprint.
    sqlx::query(
        "delete from idx_date where pid in (select pid from search_param where code = 'birthdate:year')",
    )
    .execute(&app.pool)
    .await
    .expect("delete");
    sqlx::query("update search_index_state set fingerprint = 'before-birth-years' where id = 1")
        .execute(&app.pool)
        .await
        .expect("update");
    assert!(ids(&app, "Patient?birthdate=lt1990").await.is_empty());
    assert!(!fhirgate::search::reindex::is_current(&app.state)
        .await
        .expect("state"));
    fhirgate::search::reindex::run(&app.state, 1)
        .await
        .expect("reindex");
    assert!(fhirgate::search::reindex::is_current(&app.state)
        .await
        .expect("state"));
    assert_eq!(ids(&app, "Patient?birthdate=lt1990").await, ["old"]);
    assert_eq!(ids(&app, "Patient?birthdate=ge2001").await, ["young"]);
    assert_eq!(ids(&app, "Patient?birthdate=1984-05-06").await, ["old"]);
}
