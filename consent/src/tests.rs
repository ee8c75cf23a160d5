//! Table tests for every rule, and property tests for the invariants: revoking never widens
//! access, and adding a deny never widens access.

use proptest::prelude::*;
use serde_json::{json, Value};

use super::*;

const NOW: &str = "2026-11-23T10:00:00Z";

fn ctx(org: &str, class: &str) -> AccessContext {
    AccessContext {
        organization: format!("Organization/{org}"),
        purpose: Some("TREAT".into()),
        resource_type: "Observation".into(),
        classes: vec![class.into()],
        codes: vec!["http://loinc.org|8867-4".into()],
        at: NOW.into(),
    }
}

fn actor(org: &str) -> Value {
    json!([{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
            "reference": {"reference": format!("Organization/{org}")}}])
}

fn classes(list: &[&str]) -> Value {
    Value::Array(
        list.iter()
            .map(|c| json!({"system": DATA_CLASS_SYSTEM, "code": c}))
            .collect(),
    )
}

/// An active patient-privacy Consent with `provision`.
fn consent(id: &str, provision: Value) -> Value {
    json!({"resourceType": "Consent", "id": id, "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p1"},
        "provision": provision})
}

fn permit(org: &str, list: &[&str]) -> Value {
    json!({"type": "permit", "actor": actor(org), "class": classes(list),
           "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
           "period": {"start": "2026-01-01", "end": "2026-12-31"}})
}

fn allowed(consents: &[Value], c: &AccessContext) -> bool {
    decide(consents, c).permits()
}

#[test]
fn no_consent_denies() {
    assert!(!allowed(&[], &ctx("acme", "vital-signs")));
}

#[test]
fn a_permit_for_vital_signs_covers_vital_signs_only() {
    let c = [consent("c1", permit("acme", &["vital-signs"]))];
    assert_eq!(
        decide(&c, &ctx("acme", "vital-signs")),
        Decision::Permit {
            consent_id: "c1".into()
        }
    );
    assert!(!allowed(&c, &ctx("acme", "sleep")));
    assert_eq!(permitted_classes(&c, &ctx("acme", "")), ["vital-signs"]);
}

#[test]
fn everything_covers_every_class() {
    let c = [consent("c1", permit("acme", &[EVERYTHING]))];
    for class in DATA_CLASSES {
        assert!(allowed(&c, &ctx("acme", class)), "{class}");
    }
}

#[test]
fn another_partner_gets_nothing() {
    let c = [consent("c1", permit("acme", &["vital-signs"]))];
    assert!(!allowed(&c, &ctx("globex", "vital-signs")));
    // Nor does a partner whose id merely ends the same way.
    assert!(!allowed(&c, &ctx("cme", "vital-signs")));
    // An absolute reference to the same organisation counts.
    let mut p = permit("acme", &["vital-signs"]);
    p["actor"][0]["reference"]["reference"] = json!("https://fhir.example/Organization/acme");
    assert!(allowed(&[consent("c1", p)], &ctx("acme", "vital-signs")));
}

#[test]
fn expired_future_and_unreadable_periods_deny() {
    for (start, end) in [
        ("2025-01-01", "2026-11-22"),
        ("2026-11-24", "2027-01-01"),
        ("2026-11-23T10:00:01Z", "2027-01-01"),
        ("not a date", "2027-01-01"),
    ] {
        let mut p = permit("acme", &["vital-signs"]);
        p["period"] = json!({"start": start, "end": end});
        assert!(
            !allowed(&[consent("c1", p)], &ctx("acme", "vital-signs")),
            "{start}..{end}"
        );
    }
    // A period that ends today still covers today (date precision).
    let mut p = permit("acme", &["vital-signs"]);
    p["period"] = json!({"start": "2026-11-23", "end": "2026-11-23"});
    assert!(allowed(&[consent("c1", p)], &ctx("acme", "vital-signs")));
}

#[test]
fn only_active_patient_privacy_consents_count() {
    for status in [
        "draft",
        "proposed",
        "inactive",
        "rejected",
        "entered-in-error",
        "unknown-status",
    ] {
        let mut c = consent("c1", permit("acme", &["vital-signs"]));
        c["status"] = json!(status);
        assert!(!allowed(&[c], &ctx("acme", "vital-signs")), "{status}");
    }
    let mut c = consent("c1", permit("acme", &["vital-signs"]));
    c["scope"]["coding"][0]["code"] = json!("research");
    assert!(!allowed(&[c], &ctx("acme", "vital-signs")));
    let mut c = consent("c1", permit("acme", &["vital-signs"]));
    c["resourceType"] = json!("Contract");
    assert!(!allowed(&[c], &ctx("acme", "vital-signs")));
}

#[test]
fn a_permit_must_name_the_partner_and_match_the_purpose() {
    let mut p = permit("acme", &["vital-signs"]);
    p.as_object_mut().expect("object").remove("actor");
    assert!(!allowed(&[consent("c1", p)], &ctx("acme", "vital-signs")));
    let c = [consent("c1", permit("acme", &["vital-signs"]))];
    let mut other_purpose = ctx("acme", "vital-signs");
    other_purpose.purpose = Some("HMARKT".into());
    assert!(!allowed(&c, &other_purpose));
    let mut no_purpose = ctx("acme", "vital-signs");
    no_purpose.purpose = None;
    assert!(!allowed(&c, &no_purpose));
}

#[test]
fn a_deny_inside_a_permit_wins() {
    let mut p = permit("acme", &[EVERYTHING]);
    p["provision"] = json!([{"type": "deny", "class": classes(&["sleep"])}]);
    let c = [consent("c1", p)];
    assert!(allowed(&c, &ctx("acme", "vital-signs")));
    assert!(!allowed(&c, &ctx("acme", "sleep")));
    assert_eq!(
        permitted_classes(&c, &ctx("acme", "")),
        ["vital-signs", "activity", "body-measurement"]
    );
}

#[test]
fn a_deny_by_code_inside_a_permit_wins_for_that_code() {
    let mut p = permit("acme", &[EVERYTHING]);
    p["provision"] = json!([{"type": "deny",
        "code": [{"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}]}]);
    let c = [consent("c1", p)];
    assert!(!allowed(&c, &ctx("acme", "vital-signs")));
    let mut other = ctx("acme", "vital-signs");
    other.codes = vec!["http://loinc.org|59408-5".into()];
    assert!(allowed(&c, &other));
}

#[test]
fn a_deny_in_another_consent_overrides_a_permit() {
    let deny = json!({"type": "deny", "actor": actor("acme")});
    let c = [
        consent("c1", permit("acme", &["vital-signs"])),
        consent("c2", deny),
    ];
    assert!(!allowed(&c, &ctx("acme", "vital-signs")));
    // A deny for another partner leaves this one alone.
    let c = [
        consent("c1", permit("acme", &["vital-signs"])),
        consent("c2", json!({"type": "deny", "actor": actor("globex")})),
    ];
    assert!(allowed(&c, &ctx("acme", "vital-signs")));
}

#[test]
fn two_partners_with_different_consents() {
    let c = [
        consent("c1", permit("acme", &["vital-signs"])),
        consent("c2", permit("globex", &["sleep", "activity"])),
    ];
    assert_eq!(permitted_classes(&c, &ctx("acme", "")), ["vital-signs"]);
    assert_eq!(
        permitted_classes(&c, &ctx("globex", "")),
        ["activity", "sleep"]
    );
}

#[test]
fn a_provision_of_unknown_type_only_takes_away() {
    let mut p = permit("acme", &["vital-signs"]);
    p["type"] = json!("maybe");
    assert!(!allowed(&[consent("c1", p)], &ctx("acme", "vital-signs")));
}

#[test]
fn a_request_time_that_is_not_an_instant_denies() {
    let c = [consent("c1", permit("acme", &["vital-signs"]))];
    let mut bad = ctx("acme", "vital-signs");
    bad.at = "yesterday".into();
    assert!(!allowed(&c, &bad));
}

#[test]
fn a_consent_of_the_profile_passes_the_check() {
    let mut p = permit("acme", &["vital-signs", EVERYTHING]);
    p["provision"] = json!([{"type": "deny", "class": classes(&["sleep"])}]);
    assert_eq!(check(&consent("c1", p)), []);
}

#[test]
fn the_check_names_each_problem() {
    let mut p = permit("acme", &["vital-signs"]);
    p["class"] = json!([{"system": DATA_CLASS_SYSTEM, "code": "genome"}]);
    p["actor"][0]["reference"]["reference"] = json!("Practitioner/x");
    p["period"] = json!({"start": "2026-12-31", "end": "2026-01-01"});
    p["provision"] = json!([{"type": "maybe"}]);
    let mut c = consent("c1", p);
    c["scope"]["coding"][0]["code"] = json!("research");
    c["patient"] = json!({"reference": "Group/g"});
    let paths: Vec<String> = check(&c).into_iter().map(|p| p.path).collect();
    assert_eq!(
        paths,
        [
            "Consent.scope",
            "Consent.patient",
            "Consent.provision.actor[0].reference",
            "Consent.provision.class[0]",
            "Consent.provision.period",
            "Consent.provision.provision[0].type",
        ]
    );
    let mut bare = permit("acme", &["vital-signs"]);
    bare.as_object_mut().expect("object").remove("actor");
    let paths: Vec<String> = check(&consent("c1", bare))
        .into_iter()
        .map(|p| p.path)
        .collect();
    assert_eq!(paths, ["Consent.provision.actor"]);
    let mut none = consent("c1", json!({}));
    none.as_object_mut().expect("object").remove("provision");
    assert_eq!(check(&none)[0].path, "Consent.provision");
}

#[test]
fn classes_come_from_the_categories() {
    let weight = json!({"resourceType": "Observation",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]},
                     {"coding": [{"system": DATA_CLASS_SYSTEM, "code": "body-measurement"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]}});
    assert_eq!(classes_of(&weight), ["vital-signs", "body-measurement"]);
    assert_eq!(codes_of_resource(&weight), ["http://loinc.org|29463-7"]);
    let lab = json!({"resourceType": "Observation",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}]});
    assert!(classes_of(&lab).is_empty());
}

/// A small world of Consents: two partners, the classes, two purposes, a few periods, nested
/// denies, and statuses.
fn arb_consent() -> impl Strategy<Value = Value> {
    let org = prop::sample::select(vec!["acme", "globex"]);
    let class_set = prop::sample::subsequence(
        vec![
            "vital-signs",
            "activity",
            "sleep",
            "body-measurement",
            EVERYTHING,
        ],
        0..=3,
    );
    let purpose = prop::option::of(prop::sample::select(vec!["TREAT", "HMARKT"]));
    let period = prop::sample::select(vec![
        ("2026-01-01", "2026-12-31"),
        ("2025-01-01", "2026-11-22"),
        ("2026-11-24", "2027-12-31"),
    ]);
    let kind = prop::sample::select(vec!["permit", "deny"]);
    let status = prop::sample::select(vec!["active", "active", "inactive", "draft"]);
    let nested = prop::option::of(prop::sample::subsequence(
        vec!["vital-signs", "activity", "sleep", "body-measurement"],
        1..=2,
    ));
    (
        org,
        class_set,
        purpose,
        period,
        kind,
        status,
        nested,
        0u32..1000,
    )
        .prop_map(
            |(org, cls, purpose, (start, end), kind, status, nested, n)| {
                let mut p = json!({"type": kind, "actor": actor(org),
                "period": {"start": start, "end": end}});
                if !cls.is_empty() {
                    p["class"] = classes(&cls);
                }
                if let Some(purpose) = purpose {
                    p["purpose"] = json!([{"code": purpose}]);
                }
                if let Some(n) = nested {
                    let opposite = if kind == "permit" { "deny" } else { "permit" };
                    p["provision"] = json!([{"type": opposite, "class": classes(&n)}]);
                }
                let mut c = consent(&format!("c{n}"), p);
                c["status"] = json!(status);
                c
            },
        )
}

fn arb_ctx() -> impl Strategy<Value = AccessContext> {
    (
        prop::sample::select(vec!["acme", "globex"]),
        prop::sample::select(DATA_CLASSES.to_vec()),
        prop::option::of(prop::sample::select(vec!["TREAT", "HMARKT"])),
    )
        .prop_map(|(org, class, purpose)| AccessContext {
            purpose: purpose.map(str::to_owned),
            ..ctx(org, class)
        })
}

proptest! {
    #[test]
    fn revoking_a_consent_never_widens_access(
        consents in prop::collection::vec(arb_consent(), 0..5),
        which in 0usize..5,
        c in arb_ctx(),
    ) {
        let which = which % consents.len().max(1);
        // Revoking is withdrawing a permit (withdrawing a refusal is not a revocation).
        let is_permit = consents
            .get(which)
            .is_some_and(|c| c["provision"]["type"] == "permit");
        if !is_permit {
            return Ok(());
        }
        let mut revoked = consents.clone();
        if let Some(r) = revoked.get_mut(which) {
            r["status"] = json!("inactive");
        }
        if allowed(&revoked, &c) {
            prop_assert!(allowed(&consents, &c));
        }
        let mut removed = consents.clone();
        if which < removed.len() {
            removed.remove(which);
        }
        if allowed(&removed, &c) {
            prop_assert!(allowed(&consents, &c));
        }
    }

    #[test]
    fn adding_a_deny_never_widens_access(
        consents in prop::collection::vec(arb_consent(), 0..5),
        extra in arb_consent(),
        c in arb_ctx(),
    ) {
        let mut deny = extra;
        deny["provision"]["type"] = json!("deny");
        deny["status"] = json!("active");
        let mut more = consents.clone();
        more.push(deny);
        if allowed(&more, &c) {
            prop_assert!(allowed(&consents, &c));
        }
        // A deny nested inside an existing provision narrows it too.
        let mut nested = consents.clone();
        if let Some(first) = nested.first_mut() {
            first["provision"]["provision"] = json!([{"type": "deny", "class": classes(&[&c.classes[0]])}]);
        }
        if allowed(&nested, &c) {
            prop_assert!(allowed(&consents, &c));
        }
    }

    #[test]
    fn permitted_classes_agree_with_decisions(
        consents in prop::collection::vec(arb_consent(), 0..5),
        c in arb_ctx(),
    ) {
        let classes = permitted_classes(&consents, &c);
        for class in DATA_CLASSES {
            let one = AccessContext { classes: vec![class.to_owned()], codes: Vec::new(), ..c.clone() };
            prop_assert_eq!(classes.contains(&class), allowed(&consents, &one));
        }
    }

    #[test]
    fn grant_rows_agree_with_decisions_at_any_time(
        consents in prop::collection::vec(arb_consent(), 0..5),
        c in arb_ctx(),
        day in 0i64..800,
    ) {
        let at = chrono::DateTime::parse_from_rfc3339("2025-06-01T00:00:00Z").unwrap().with_timezone(&chrono::Utc)
            + chrono::Duration::hours(day * 13);
        let c = AccessContext { at: at.to_rfc3339(), ..c };
        let (rows, _) = grants(&consents);
        // The purpose key a request uses: its own when the rows were computed for it.
        let asked = c.purpose.clone().unwrap_or_default();
        let key = if rows.iter().any(|g| g.organization == c.organization && g.purpose == asked && g.class == COMPUTED) {
            asked
        } else {
            OTHER_PURPOSE.to_owned()
        };
        let granted: Vec<&str> = rows
            .iter()
            .filter(|g| g.organization == c.organization && g.purpose == key)
            .filter(|g| g.from.is_none_or(|f| f <= at) && g.to.is_none_or(|t| at < t))
            .map(|g| g.class.as_str())
            .collect();
        for class in permitted_classes(&consents, &c) {
            prop_assert!(granted.contains(&class), "{} missing", class);
        }
        for class in DATA_CLASSES {
            if granted.contains(&class) {
                prop_assert!(permitted_classes(&consents, &c).contains(&class));
            }
        }
    }
}

fn types(list: &[&str]) -> Value {
    Value::Array(
        list.iter()
            .map(|t| json!({"system": RESOURCE_TYPE_SYSTEM, "code": t}))
            .collect(),
    )
}

fn of_type(rt: &str, class: &str) -> AccessContext {
    AccessContext {
        resource_type: rt.into(),
        classes: if class.is_empty() {
            Vec::new()
        } else {
            vec![class.into()]
        },
        ..ctx("acme", class)
    }
}

#[test]
fn a_resource_type_class_covers_every_resource_of_that_type() {
    let mut p = permit("acme", &[]);
    p["class"] = types(&["Observation"]);
    let c = [consent("c1", p)];
    assert!(check(&c[0]).is_empty(), "{:?}", check(&c[0]));
    assert!(allowed(&c, &of_type("Observation", "vital-signs")));
    assert!(allowed(&c, &of_type("Observation", "sleep")));
    assert!(allowed(&c, &of_type("Observation", "")));
    assert!(!allowed(&c, &of_type("Condition", "")));
    assert!(!allowed(&c, &of_type("Condition", "vital-signs")));
    // The grants pre-select every class an Observation could have, and say that resources
    // must be decided one by one.
    let (g, one_by_one) = grants(&c);
    assert!(one_by_one);
    for class in DATA_CLASSES.iter().chain([&CLASSLESS]) {
        assert!(g.iter().any(|x| x.class == *class), "{class}");
    }
}

#[test]
fn a_resource_type_deny_takes_away_what_a_class_permits() {
    let mut p = permit("acme", &["vital-signs"]);
    p["provision"] = json!([{"type": "deny", "class": types(&["Observation"])}]);
    let c = [consent("c1", p)];
    assert!(check(&c[0]).is_empty(), "{:?}", check(&c[0]));
    assert!(!allowed(&c, &of_type("Observation", "vital-signs")));
    assert!(allowed(&c, &of_type("DiagnosticReport", "vital-signs")));
    let (_, one_by_one) = grants(&c);
    assert!(
        one_by_one,
        "a class grant alone would show the denied Observations"
    );
}

#[test]
fn classes_of_other_systems_are_refused_by_the_profile() {
    for bad in [
        json!({"system": "http://example.org/x", "code": "Observation"}),
        json!({"system": RESOURCE_TYPE_SYSTEM, "code": "not a type"}),
        json!({"system": DATA_CLASS_SYSTEM, "code": "Observation"}),
        json!({"code": "vital-signs"}),
    ] {
        let mut p = permit("acme", &[]);
        p["class"] = json!([bad.clone()]);
        let problems = check(&consent("c1", p));
        assert!(
            problems.iter().any(|x| x.path.ends_with(".class[0]")),
            "{bad}: {problems:?}"
        );
    }
}
