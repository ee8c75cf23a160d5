//! Building FHIR R4 Observations and Devices as JSON.
//!
//! Observations follow the R4 vital-signs profile for vital signs
//! (<https://hl7.org/fhir/R4/observation-vitalsigns.html>: category, LOINC code, UCUM units,
//! subject, effective[x], status `final`) and the HL7 Physical Activity IG for activity
//! (category `activity` plus `PhysicalActivity`, workouts as groups with `hasMember`).
//! `code.coding` always holds the LOINC coding (when one exists), our metric coding and the
//! source's native coding (docs/wearable-mapping.md §0.1).

use std::collections::HashMap;

use serde_json::{json, Map, Value};

use crate::metrics::{DataClass, Metric, Unit, METRIC_SYSTEM};
use crate::time::Effective;
use crate::units::tidy;
use crate::Source;

const LOINC: &str = "http://loinc.org";
const UCUM: &str = "http://unitsofmeasure.org";
const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const DATA_CLASS: &str = "https://fhirgate.org/CodeSystem/data-class";
const PA_CODES: &str = "http://hl7.org/fhir/us/physical-activity/CodeSystem/pa-temporary-codes";
/// The system HealthKit type identifiers are written in (as HealthKitOnFHIR does).
const HEALTHKIT: &str = "http://developer.apple.com/documentation/healthkit";

/// The CodeSystem of a source's own metric names.
pub(crate) fn native_system(source: Source) -> String {
    match source {
        Source::AppleHealth | Source::HealthKit => HEALTHKIT.to_owned(),
        other => format!("https://fhirgate.org/CodeSystem/{}", other.as_str()),
    }
}

/// The value of an Observation.
#[derive(Debug, Clone)]
pub(crate) enum ObsValue {
    /// `valueQuantity` in the metric's unit.
    Quantity(f64),
    /// `valueRange` in the metric's unit (Fitbit VO2max "42-46").
    Range(f64, f64),
    /// `valueCodeableConcept` with one coding (system, code, display).
    Concept(String, String, String),
    /// `component`s, each with its own metric and value (blood pressure); no top-level value.
    Components(Vec<(&'static Metric, f64)>),
}

/// Everything needed to build one Observation.
#[derive(Debug, Clone)]
pub(crate) struct Obs {
    pub(crate) metric: &'static Metric,
    /// The source's own code for the metric (e.g. `HKQuantityTypeIdentifierHeartRate`).
    pub(crate) native_code: String,
    /// Identifier value: provider record id (+ metric) or `patient|device|metric|start|end`.
    pub(crate) key: String,
    pub(crate) effective: Effective,
    pub(crate) value: ObsValue,
    /// Logical id of the Device that measured it.
    pub(crate) device: Option<String>,
    /// Logical ids of member Observations (workouts).
    pub(crate) members: Vec<String>,
    /// Free-text note (e.g. the workout label the user gave it).
    pub(crate) note: Option<String>,
}

impl Obs {
    /// An Observation with a quantity value and no device.
    pub(crate) fn quantity(
        metric: &'static Metric,
        native_code: impl Into<String>,
        key: String,
        effective: Effective,
        value: f64,
    ) -> Self {
        Obs {
            metric,
            native_code: native_code.into(),
            key,
            effective,
            value: ObsValue::Quantity(value),
            device: None,
            members: Vec::new(),
            note: None,
        }
    }

    /// Sets the device.
    pub(crate) fn with_device(mut self, device: Option<String>) -> Self {
        self.device = device;
        self
    }
}

/// A number as FHIR `decimal` JSON: integral values are written without a fraction.
pub(crate) fn decimal(x: f64) -> Value {
    let x = tidy(x, 6);
    if x.fract() == 0.0 && x.abs() < 9.0e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

fn quantity(x: f64, unit: Unit) -> Value {
    json!({"value": decimal(x), "unit": unit.display, "system": UCUM, "code": unit.code})
}

/// `category` for `class`. Building the same JSON for every Observation costs more than cloning
/// it: a clone copies the maps without hashing their keys again.
fn category(class: DataClass) -> Value {
    thread_local! {
        static CATEGORIES: std::cell::RefCell<Vec<(DataClass, Value)>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    CATEGORIES.with(|c| {
        let mut c = c.borrow_mut();
        if let Some((_, v)) = c.iter().find(|(k, _)| *k == class) {
            return v.clone();
        }
        let v = build_category(class);
        c.push((class, v.clone()));
        v
    })
}

fn build_category(class: DataClass) -> Value {
    let obs = |code: &str, display: &str| json!({"coding": [{"system": OBS_CATEGORY, "code": code, "display": display}]});
    let ours = |code: &str, display: &str| json!({"coding": [{"system": DATA_CLASS, "code": code, "display": display}]});
    match class {
        DataClass::VitalSigns => json!([obs("vital-signs", "Vital Signs")]),
        DataClass::VitalBody => json!([
            obs("vital-signs", "Vital Signs"),
            ours("body-measurement", "Body measurement")
        ]),
        DataClass::Body => json!([ours("body-measurement", "Body measurement")]),
        DataClass::Activity => json!([
            obs("activity", "Activity"),
            {"coding": [{"system": PA_CODES, "code": "PhysicalActivity", "display": "Physical Activity"}]}
        ]),
        DataClass::Sleep => json!([ours("sleep", "Sleep")]),
        DataClass::Laboratory => json!([obs("laboratory", "Laboratory")]),
    }
}

/// Most distinct (metric, native code) pairs whose `code` JSON is remembered per thread.
const CODE_CACHE: usize = 256;

/// `code` for `metric`, with the native coding of `source` when given (cloned from a per-thread
/// cache, as for [`category`]).
fn code(metric: &'static Metric, source: Source, native: Option<&str>) -> Value {
    type Key = (&'static str, Source, Option<String>);
    thread_local! {
        static CODES: std::cell::RefCell<HashMap<&'static str, Vec<(Key, Value)>>> =
            std::cell::RefCell::new(HashMap::new());
    }
    CODES.with(|c| {
        let mut c = c.borrow_mut();
        let same = |k: &Key| k.1 == source && k.2.as_deref() == native;
        if let Some((_, v)) = c
            .get(metric.key)
            .and_then(|l| l.iter().find(|(k, _)| same(k)))
        {
            return v.clone();
        }
        let v = build_code(metric, source, native);
        if c.values().map(Vec::len).sum::<usize>() < CODE_CACHE {
            let key = (metric.key, source, native.map(str::to_owned));
            c.entry(metric.key).or_default().push((key, v.clone()));
        }
        v
    })
}

fn build_code(metric: &Metric, source: Source, native: Option<&str>) -> Value {
    let mut codings: Vec<Value> = metric
        .loinc
        .iter()
        .map(|(c, d)| json!({"system": LOINC, "code": c, "display": d}))
        .collect();
    codings.push(json!({"system": METRIC_SYSTEM, "code": metric.key, "display": metric.display}));
    if let Some(n) = native {
        codings.push(json!({"system": native_system(source), "code": n}));
    }
    json!({"coding": codings, "text": metric.display})
}

/// Builds the Observation JSON for `obs` with logical id `id`.
pub(crate) fn observation(
    source: Source,
    patient_id: &str,
    id: &str,
    system: &str,
    obs: &Obs,
) -> Value {
    let mut o = Map::new();
    o.insert("resourceType".to_owned(), json!("Observation"));
    o.insert("id".to_owned(), json!(id));
    o.insert(
        "identifier".to_owned(),
        json!([{"system": system, "value": obs.key}]),
    );
    o.insert("status".to_owned(), json!("final"));
    o.insert("category".to_owned(), category(obs.metric.class));
    o.insert(
        "code".to_owned(),
        code(obs.metric, source, Some(&obs.native_code)),
    );
    o.insert(
        "subject".to_owned(),
        json!({"reference": format!("Patient/{patient_id}")}),
    );
    obs.effective.write(&mut o);
    match &obs.value {
        ObsValue::Quantity(x) => {
            o.insert("valueQuantity".to_owned(), quantity(*x, obs.metric.unit));
        }
        ObsValue::Range(lo, hi) => {
            o.insert(
                "valueRange".to_owned(),
                json!({"low": quantity(*lo, obs.metric.unit), "high": quantity(*hi, obs.metric.unit)}),
            );
        }
        ObsValue::Concept(system, c, display) => {
            o.insert(
                "valueCodeableConcept".to_owned(),
                json!({"coding": [{"system": system, "code": c, "display": display}], "text": display}),
            );
        }
        ObsValue::Components(parts) => {
            let comps: Vec<Value> = parts
                .iter()
                .map(|(m, x)| json!({"code": code(m, source, None), "valueQuantity": quantity(*x, m.unit)}))
                .collect();
            o.insert("component".to_owned(), json!(comps));
        }
    }
    if let Some(note) = &obs.note {
        o.insert("note".to_owned(), json!([{"text": note}]));
    }
    if let Some(d) = &obs.device {
        o.insert(
            "device".to_owned(),
            json!({"reference": format!("Device/{d}")}),
        );
    }
    if !obs.members.is_empty() {
        let members: Vec<Value> = obs
            .members
            .iter()
            .map(|m| json!({"reference": format!("Observation/{m}")}))
            .collect();
        o.insert("hasMember".to_owned(), json!(members));
    }
    Value::Object(o)
}

/// What is known about a physical (or software) source of data.
#[derive(Debug, Clone, Default)]
pub(crate) struct DeviceInfo {
    /// Stable key within the source (provider device id, or name + model).
    pub(crate) key: String,
    pub(crate) name: Option<String>,
    pub(crate) manufacturer: Option<String>,
    pub(crate) model: Option<String>,
    /// Device kind as text ("watch", "scale", "ring", "app").
    pub(crate) kind: Option<String>,
}

/// Builds the Device JSON for `info` with logical id `id`.
pub(crate) fn device(patient_id: &str, id: &str, system: &str, info: &DeviceInfo) -> Value {
    let mut d = Map::new();
    d.insert("resourceType".to_owned(), json!("Device"));
    d.insert("id".to_owned(), json!(id));
    d.insert(
        "identifier".to_owned(),
        json!([{"system": system, "value": info.key}]),
    );
    d.insert("status".to_owned(), json!("active"));
    if let Some(m) = &info.manufacturer {
        d.insert("manufacturer".to_owned(), json!(m));
    }
    if let Some(n) = &info.name {
        d.insert(
            "deviceName".to_owned(),
            json!([{"name": n, "type": "user-friendly-name"}]),
        );
    }
    if let Some(m) = &info.model {
        d.insert("modelNumber".to_owned(), json!(m));
    }
    if let Some(k) = &info.kind {
        d.insert("type".to_owned(), json!({"text": k}));
    }
    d.insert(
        "patient".to_owned(),
        json!({"reference": format!("Patient/{patient_id}")}),
    );
    Value::Object(d)
}
