//! Apple Health `export.xml` (export versions 3 to 14), read as a stream.
//!
//! quick-xml's pull parser reads one element at a time from a `BufRead`, so memory stays
//! constant however large the export is: only the current top-level element (a `Record`,
//! `Correlation`, `Workout` or `ActivitySummary` with its children) and the set of Device ids
//! already emitted are held. Errors name the line where the element's start tag ends.
//!
//! Mapping rules (docs/wearable-mapping.md): dates carry the exporting phone's offset, and the
//! `HKTimeZone` metadata entry, when present, gives the zone the sample was recorded in, so the
//! instant is shown in that zone; fractions (`OxygenSaturation`, `BodyFatPercentage`) become %;
//! records that are children of a correlation also appear at top level, so top-level systolic and
//! diastolic records are skipped and the blood-pressure correlation becomes one 85354-9 panel.
//! Records have no id in the export; the identifier is `patient|device|type|start|end`.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;

use chrono::{DateTime, FixedOffset};
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;
use serde_json::Value;

use crate::fhir::{DeviceInfo, Obs, ObsValue};
use crate::metrics::{self, Metric, Stage, SLEEP_STAGE_SYSTEM};
use crate::output::Out;
use crate::time::{self, Effective};
use crate::units::{normalise, tidy, Dimension};
use crate::workout::{self, Workout};
use crate::{MapContext, MapError, MapOutput, RecordError, Source};

const SOURCE: Source = Source::AppleHealth;

/// One item produced by [`map_apple_health_stream`].
#[derive(Debug, Clone, PartialEq)]
pub enum MappedRecord {
    /// An Observation or Device (a Device always comes before the Observations that use it).
    Resource(Value),
    /// A record that could not be mapped.
    Error(RecordError),
}

/// Totals of one streaming run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamSummary {
    /// Top-level elements read (`Record`, `Correlation`, `Workout`, `ActivitySummary`, …).
    pub elements: u64,
    /// Resources passed to the sink.
    pub resources: u64,
    /// Errors passed to the sink.
    pub errors: u64,
    /// Records deliberately not mapped, counted per reason.
    pub skipped: BTreeMap<String, u64>,
}

/// Maps an Apple Health `export.xml` read from `reader`, passing each resource and each
/// per-record error to `sink` as soon as its element has been read.
///
/// Memory use does not grow with the file. If the document turns out to be malformed or
/// truncated, everything before the fault has already reached the sink and the call returns
/// [`MapError::Xml`].
pub fn map_apple_health_stream<R: BufRead>(
    reader: R,
    ctx: &MapContext,
    mut sink: impl FnMut(MappedRecord),
) -> Result<StreamSummary, MapError> {
    // One thread: on two cores (or two hyperthreads) a pool of mapping threads measured slower,
    // because freeing resources on another thread than the one that built them costs more than
    // the mapping it spreads.
    let mut out = Out::streaming(ctx, SOURCE);
    let mut summary = StreamSummary::default();
    let result = run(reader, &mut |el| {
        map_top(&mut out, &el);
        summary.elements += 1;
        for r in out.resources.drain(..) {
            summary.resources += 1;
            sink(MappedRecord::Resource(r));
        }
        for e in out.errors.drain(..) {
            summary.errors += 1;
            sink(MappedRecord::Error(e));
        }
    });
    summary.skipped = std::mem::take(&mut out.skipped);
    result.map(|()| summary)
}

/// Maps an export held in memory (the whole document must be well-formed).
pub(crate) fn map_bytes(bytes: &[u8], ctx: &MapContext) -> Result<MapOutput, MapError> {
    let mut out = Out::streaming(ctx, SOURCE);
    run(bytes, &mut |el| map_top(&mut out, &el))?;
    Ok(out.finish())
}

/// A `BufRead` that counts the newlines the parser has consumed.
struct LineCounter<R> {
    inner: R,
    newlines: u64,
}

impl<R: std::io::Read> std::io::Read for LineCounter<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.newlines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for LineCounter<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        if let Ok(buf) = self.inner.fill_buf() {
            let n = amt.min(buf.len());
            self.newlines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
        }
        self.inner.consume(amt);
    }
}

/// One element with its attributes, metadata entries and child elements.
#[derive(Debug, Default)]
struct Element {
    name: String,
    line: u64,
    attrs: Pairs,
    meta: Pairs,
    children: Vec<Element>,
}

/// The attributes or metadata entries of an element. There are few, so a list searched from the
/// end (a later duplicate wins, as with an insert into a map) is cheaper than hashing each key.
#[derive(Debug, Default)]
struct Pairs(Vec<(String, String)>);

impl Pairs {
    fn get(&self, k: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    }

    fn insert(&mut self, k: String, v: String) {
        self.0.push((k, v));
    }
}

impl Element {
    fn get(&self, k: &str) -> Option<&str> {
        self.attrs.get(k)
    }

    fn at(&self) -> String {
        format!("line {}", self.line)
    }
}

fn xml_err(e: impl std::fmt::Display, line: u64) -> MapError {
    MapError::Xml(format!("{e} (near line {line})"))
}

fn element(
    reader: &Reader<LineCounter<impl BufRead>>,
    e: &BytesStart<'_>,
) -> Result<Element, MapError> {
    let line = reader.get_ref().newlines + 1;
    let mut el = Element {
        name: String::from_utf8_lossy(e.name().as_ref()).into_owned(),
        line,
        ..Element::default()
    };
    for a in e.attributes() {
        let a = a.map_err(|e| xml_err(e, line))?;
        let key = String::from_utf8_lossy(a.key.as_ref()).into_owned();
        let value = a
            .decode_and_unescape_value(reader.decoder())
            .map_err(|e| xml_err(e, line))?;
        el.attrs.insert(key, value.into_owned());
    }
    Ok(el)
}

/// Reads the document, passing each finished top-level element to `top`.
fn run<R: BufRead>(reader: R, top: &mut dyn FnMut(Element)) -> Result<(), MapError> {
    let mut reader = Reader::from_reader(LineCounter {
        inner: reader,
        newlines: 0,
    });
    let mut buf = Vec::new();
    // Open elements below <HealthData>: the top-level element being built and its descendants.
    let mut stack: Vec<Element> = Vec::new();
    let mut in_root = false;
    let mut seen_root = false;
    loop {
        let line = reader.get_ref().newlines + 1;
        let ev = reader
            .read_event_into(&mut buf)
            .map_err(|e| xml_err(e, line))?;
        let is_start = matches!(ev, Event::Start(_));
        match ev {
            Event::Start(e) | Event::Empty(e) if !in_root => {
                if e.name().as_ref() != b"HealthData" {
                    return Err(MapError::Xml(format!(
                        "the root element is not <HealthData> (line {line})"
                    )));
                }
                // `<HealthData/>` is an empty export; `<HealthData>` opens one.
                in_root = is_start;
                seen_root = true;
                if !in_root {
                    break;
                }
            }
            Event::Start(e) => stack.push(element(&reader, &e)?),
            Event::Empty(e) => {
                let el = element(&reader, &e)?;
                close(top, &mut stack, el);
            }
            Event::End(e) => {
                if stack.is_empty() {
                    if e.name().as_ref() == b"HealthData" {
                        in_root = false;
                        break;
                    }
                    return Err(MapError::Xml(format!("unexpected end tag (line {line})")));
                }
                if let Some(el) = stack.pop() {
                    close(top, &mut stack, el);
                }
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !seen_root {
        return Err(MapError::Xml(
            "no <HealthData> element: not an Apple Health export".to_owned(),
        ));
    }
    if in_root {
        return Err(MapError::Xml(
            "the document ends before </HealthData> (truncated export)".to_owned(),
        ));
    }
    Ok(())
}

/// Attaches a finished element to its parent, or hands it to `top` when it is top-level.
fn close(top: &mut dyn FnMut(Element), stack: &mut [Element], el: Element) {
    if let Some(parent) = stack.last_mut() {
        if el.name == "MetadataEntry" {
            if let (Some(k), Some(v)) = (el.get("key"), el.get("value")) {
                parent.meta.insert(k.to_owned(), v.to_owned());
            }
        } else if matches!(el.name.as_str(), "Record" | "WorkoutStatistics") {
            parent.children.push(el);
        }
        return;
    }
    top(el);
}

/// Maps one top-level element into `out`.
fn map_top(out: &mut Out<'_>, el: &Element) {
    let r = match el.name.as_str() {
        "Record" => record(out, el),
        "Correlation" => correlation(out, el),
        "Workout" => workout_el(out, el),
        "ActivitySummary" => activity_summary(out, el),
        "ExportDate" | "Me" => Ok(()),
        other => {
            out.skip(format!("apple-health: <{other}> elements are not mapped"));
            Ok(())
        }
    };
    if let Err(e) = r {
        out.error(e);
    }
}

fn err(el: &Element, reason: impl Into<String>) -> RecordError {
    RecordError {
        location: el.at(),
        reason: reason.into(),
    }
}

fn attr<'a>(el: &'a Element, k: &str) -> Result<&'a str, RecordError> {
    el.get(k)
        .ok_or_else(|| err(el, format!("attribute '{k}' is missing")))
}

/// Parses `2024-01-01 01:01:36 +0200`, shown in the `HKTimeZone` zone when one is given.
fn date(
    el: &Element,
    k: &str,
    tz: Option<chrono_tz::Tz>,
) -> Result<DateTime<FixedOffset>, RecordError> {
    let s = attr(el, k)?;
    let t = time::parse_apple(s.trim())
        .map(Ok)
        .unwrap_or_else(|| DateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S %z"))
        .or_else(|_| DateTime::parse_from_rfc3339(s.trim()))
        .map_err(|_| {
            err(
                el,
                format!("attribute '{k}' is not a date like 2024-01-01 01:01:36 +0200"),
            )
        })?;
    Ok(match tz {
        Some(tz) => t.with_timezone(&tz).fixed_offset(),
        None => t,
    })
}

fn period(el: &Element, meta: &Pairs) -> Result<Effective, RecordError> {
    let tz = meta.get("HKTimeZone").and_then(time::zone);
    let start = date(el, "startDate", tz)?;
    let end = date(el, "endDate", tz)?;
    if end < start {
        return Err(err(el, "endDate is before startDate"));
    }
    Ok(Effective::between(start, end))
}

fn number(el: &Element, k: &str) -> Result<f64, RecordError> {
    let s = attr(el, k)?;
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v.abs() <= crate::json::MAX_ABS => Ok(v),
        Ok(_) => Err(err(el, format!("attribute '{k}' is out of range"))),
        Err(_) => Err(err(el, format!("attribute '{k}' is not a number"))),
    }
}

/// Reads `<<HKDevice: 0x…>, name:Apple Watch, manufacturer:Apple Inc., model:Watch, hardware:Watch6,7, software:10.2>`.
fn hk_device_fields(s: &str) -> HashMap<&str, &str> {
    s.trim_start_matches('<')
        .trim_end_matches('>')
        .split(", ")
        .filter_map(|part| part.split_once(':'))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

/// The Device of a record: the physical device when the export names one, else the app.
pub(crate) fn device(
    out: &mut Out<'_>,
    source_name: Option<&str>,
    hk_device: Option<&str>,
) -> Option<String> {
    // Exports repeat a handful of devices over millions of records: remember each one's id.
    let memo_key = format!(
        "{}\u{0}{}",
        source_name.unwrap_or("\u{1}"),
        hk_device.unwrap_or("\u{1}")
    );
    if let Some(id) = out.memo.get(&memo_key) {
        return id.clone();
    }
    let id = device_uncached(out, source_name, hk_device);
    out.memo.insert(memo_key, id.clone());
    id
}

fn device_uncached(
    out: &mut Out<'_>,
    source_name: Option<&str>,
    hk_device: Option<&str>,
) -> Option<String> {
    let source_name = source_name.filter(|s| !s.is_empty());
    let info = match hk_device {
        Some(d) => {
            let f = hk_device_fields(d);
            let hardware = f
                .get("hardware")
                .or_else(|| f.get("model"))
                .copied()
                .unwrap_or("unknown");
            DeviceInfo {
                key: format!("{}|{hardware}", source_name.unwrap_or("unknown")),
                name: source_name
                    .map(str::to_owned)
                    .or_else(|| f.get("name").map(|s| (*s).to_owned())),
                manufacturer: f.get("manufacturer").map(|s| (*s).to_owned()),
                model: f
                    .get("hardware")
                    .or_else(|| f.get("model"))
                    .map(|s| (*s).to_owned()),
                kind: f.get("name").map(|s| (*s).to_owned()),
            }
        }
        None => DeviceInfo {
            key: format!("source|{}", source_name?),
            name: source_name.map(str::to_owned),
            manufacturer: None,
            model: None,
            kind: Some("app".to_owned()),
        },
    };
    Some(out.device(&info))
}

/// Quantity types we map: metric, dimension of the unit, whether values are 0–1 fractions.
pub(crate) fn quantity_type(t: &str) -> Option<(&'static Metric, Dimension, bool)> {
    let suffix = t.strip_prefix("HKQuantityTypeIdentifier")?;
    Some(match suffix {
        "HeartRate" => (&metrics::HEART_RATE, Dimension::PerMinute, false),
        "RestingHeartRate" => (&metrics::RESTING_HEART_RATE, Dimension::PerMinute, false),
        "HeartRateVariabilitySDNN" => (&metrics::HRV_SDNN, Dimension::Millis, false),
        "OxygenSaturation" => (&metrics::SPO2, Dimension::Percent, true),
        "RespiratoryRate" => (&metrics::RESPIRATORY_RATE, Dimension::PerMinute, false),
        "BodyTemperature" => (&metrics::BODY_TEMPERATURE, Dimension::Temperature, false),
        "AppleSleepingWristTemperature" => {
            (&metrics::SKIN_TEMPERATURE, Dimension::Temperature, false)
        }
        "BodyMass" => (&metrics::BODY_WEIGHT, Dimension::Mass, false),
        "Height" => (&metrics::BODY_HEIGHT, Dimension::Height, false),
        "BodyMassIndex" => (&metrics::BMI, Dimension::Count, false),
        "BodyFatPercentage" => (&metrics::BODY_FAT, Dimension::Percent, true),
        "LeanBodyMass" => (&metrics::FAT_FREE_MASS, Dimension::Mass, false),
        "StepCount" => (&metrics::STEPS_INTERVAL, Dimension::Count, false),
        "DistanceWalkingRunning"
        | "DistanceCycling"
        | "DistanceSwimming"
        | "DistanceWheelchair" => (&metrics::DISTANCE, Dimension::Distance, false),
        "ActiveEnergyBurned" => (&metrics::ACTIVE_ENERGY, Dimension::Energy, false),
        "BasalEnergyBurned" => (&metrics::BASAL_ENERGY, Dimension::Energy, false),
        "AppleExerciseTime" => (&metrics::EXERCISE_TIME, Dimension::Minutes, false),
        "VO2Max" => (&metrics::VO2MAX, Dimension::Vo2, false),
        "BloodGlucose" => (&metrics::BLOOD_GLUCOSE, Dimension::Glucose, false),
        _ => return None,
    })
}

/// Normalises a HealthKit value to the metric's unit.
pub(crate) fn convert(value: f64, unit: &str, dim: Dimension, fraction: bool) -> Option<f64> {
    let v = normalise(dim, value, unit)?;
    // Apple writes SpO2 and body fat as 0–1 with unit "%"; a value above 1 is already a percentage.
    let v = if fraction && v <= 1.0 { v * 100.0 } else { v };
    Some(tidy(v, 4))
}

/// The sleep stage of a `HKCategoryValueSleepAnalysis…` value.
pub(crate) fn sleep_stage(value: &str) -> Option<Stage> {
    Some(match value.strip_prefix("HKCategoryValueSleepAnalysis")? {
        "InBed" => Stage::InBed,
        "Asleep" | "AsleepUnspecified" => Stage::Asleep,
        "Awake" => Stage::Awake,
        "AsleepCore" => Stage::Light,
        "AsleepDeep" => Stage::Deep,
        "AsleepREM" => Stage::Rem,
        _ => return None,
    })
}

fn record(out: &mut Out<'_>, el: &Element) -> Result<(), RecordError> {
    let t = attr(el, "type")?;
    if matches!(
        t,
        "HKQuantityTypeIdentifierBloodPressureSystolic"
            | "HKQuantityTypeIdentifierBloodPressureDiastolic"
    ) {
        out.skip("apple-health: blood pressure component (mapped from its correlation)");
        return Ok(());
    }
    let eff = period(el, &el.meta)?;
    if t == "HKCategoryTypeIdentifierSleepAnalysis" {
        let v = attr(el, "value")?;
        let stage =
            sleep_stage(v).ok_or_else(|| err(el, format!("unknown sleep analysis value '{v}'")))?;
        let device = device(out, el.get("sourceName"), el.get("device"));
        let key = out.composite_key(el.get("sourceName").unwrap_or(""), t, &eff);
        let (code, display) = stage.coding();
        let mut obs = Obs::quantity(&metrics::SLEEP_STAGE, t, key, eff, 0.0).with_device(device);
        obs.value = ObsValue::Concept(
            SLEEP_STAGE_SYSTEM.to_owned(),
            code.to_owned(),
            display.to_owned(),
        );
        out.observation(&el.at(), &obs);
        return Ok(());
    }
    let Some((metric, dim, fraction)) = quantity_type(t) else {
        out.skip(format!("apple-health: unsupported type {t}"));
        return Ok(());
    };
    let value = number(el, "value")?;
    let unit = el.get("unit").unwrap_or("");
    let v = convert(value, unit, dim, fraction).ok_or_else(|| {
        err(
            el,
            format!("unit '{unit}' is not a unit of {}", metric.display),
        )
    })?;
    let device = device(out, el.get("sourceName"), el.get("device"));
    let key = out.composite_key(el.get("sourceName").unwrap_or(""), t, &eff);
    out.observation(
        &el.at(),
        &Obs::quantity(metric, t, key, eff, v).with_device(device),
    );
    Ok(())
}

fn correlation(out: &mut Out<'_>, el: &Element) -> Result<(), RecordError> {
    let t = attr(el, "type")?;
    if t != "HKCorrelationTypeIdentifierBloodPressure" {
        out.skip(format!("apple-health: unsupported correlation {t}"));
        return Ok(());
    }
    let eff = period(el, &el.meta)?;
    let mut parts = Vec::new();
    for c in &el.children {
        let metric = match c.get("type") {
            Some("HKQuantityTypeIdentifierBloodPressureSystolic") => &metrics::SYSTOLIC,
            Some("HKQuantityTypeIdentifierBloodPressureDiastolic") => &metrics::DIASTOLIC,
            _ => continue,
        };
        let v = number(c, "value")?;
        let unit = c.get("unit").unwrap_or("mmHg");
        let v = normalise(Dimension::Pressure, v, unit)
            .ok_or_else(|| err(c, format!("unit '{unit}' is not a pressure")))?;
        parts.push((metric, v));
    }
    if parts.is_empty() {
        return Err(err(
            el,
            "blood pressure correlation without systolic or diastolic records",
        ));
    }
    let device = device(out, el.get("sourceName"), el.get("device"));
    let key = out.composite_key(el.get("sourceName").unwrap_or(""), t, &eff);
    let mut obs = Obs::quantity(&metrics::BLOOD_PRESSURE, t, key, eff, 0.0).with_device(device);
    obs.value = ObsValue::Components(parts);
    out.observation(&el.at(), &obs);
    Ok(())
}

fn workout_el(out: &mut Out<'_>, el: &Element) -> Result<(), RecordError> {
    let t = attr(el, "workoutActivityType")?;
    let eff = period(el, &el.meta)?;
    let display = t
        .strip_prefix("HKWorkoutActivityType")
        .unwrap_or(t)
        .to_owned();
    let device = device(out, el.get("sourceName"), el.get("device"));
    let key = out.composite_key(el.get("sourceName").unwrap_or(""), "HKWorkout", &eff);
    let mut w = Workout::new(key, "HKWorkout", (t.to_owned(), display), eff);
    w.device = device;
    let opt = |k: &str, unit_k: &str, dim: Dimension| -> Result<Option<f64>, RecordError> {
        if el.get(k).is_none() {
            return Ok(None);
        }
        let v = number(el, k)?;
        let unit = el.get(unit_k).unwrap_or("");
        normalise(dim, v, unit)
            .map(|v| Some(tidy(v, 3)))
            .ok_or_else(|| err(el, format!("attribute '{unit_k}' is not a known unit")))
    };
    w.duration_min = opt("duration", "durationUnit", Dimension::Minutes)?;
    w.distance_m = opt("totalDistance", "totalDistanceUnit", Dimension::Distance)?;
    w.energy_kcal = opt(
        "totalEnergyBurned",
        "totalEnergyBurnedUnit",
        Dimension::Energy,
    )?;
    // Export version 12+ moved the totals into <WorkoutStatistics>.
    for s in el.children.iter().filter(|c| c.name == "WorkoutStatistics") {
        let unit = s.get("unit").unwrap_or("");
        let read = |k: &str, dim: Dimension| -> Option<f64> {
            let v = s
                .get(k)?
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())?;
            normalise(dim, v, unit).map(|v| tidy(v, 3))
        };
        match s.get("type").unwrap_or("") {
            "HKQuantityTypeIdentifierActiveEnergyBurned" => {
                w.energy_kcal = read("sum", Dimension::Energy).or(w.energy_kcal)
            }
            "HKQuantityTypeIdentifierDistanceWalkingRunning"
            | "HKQuantityTypeIdentifierDistanceCycling"
            | "HKQuantityTypeIdentifierDistanceSwimming" => {
                w.distance_m = read("sum", Dimension::Distance).or(w.distance_m)
            }
            "HKQuantityTypeIdentifierStepCount" => w.steps = read("sum", Dimension::Count),
            "HKQuantityTypeIdentifierHeartRate" => {
                w.hr_mean = read("average", Dimension::PerMinute);
                w.hr_max = read("maximum", Dimension::PerMinute);
            }
            _ => {}
        }
    }
    workout::emit(out, &el.at(), w);
    Ok(())
}

fn activity_summary(out: &mut Out<'_>, el: &Element) -> Result<(), RecordError> {
    let day = attr(el, "dateComponents")?;
    let date = time::parse_date(day)
        .ok_or_else(|| err(el, "attribute 'dateComponents' is not a YYYY-MM-DD date"))?;
    // The summary is per local day of the phone, whose zone the export does not record.
    let eff = Effective::day(date, out.ctx.default_time_zone);
    let fields: [(&str, Option<&str>, &'static Metric, Dimension); 3] = [
        (
            "activeEnergyBurned",
            Some("activeEnergyBurnedUnit"),
            &metrics::ACTIVE_ENERGY,
            Dimension::Energy,
        ),
        (
            "appleExerciseTime",
            None,
            &metrics::EXERCISE_TIME,
            Dimension::Minutes,
        ),
        (
            "appleStandHours",
            None,
            &metrics::STAND_HOURS,
            Dimension::Count,
        ),
    ];
    for (k, unit_k, metric, dim) in fields {
        if el.get(k).is_none() {
            continue;
        }
        let v = number(el, k)?;
        let unit = unit_k.and_then(|u| el.get(u)).unwrap_or(match dim {
            Dimension::Energy => "kcal",
            Dimension::Minutes => "min",
            _ => "count",
        });
        let v = normalise(dim, v, unit)
            .ok_or_else(|| err(el, format!("unit '{unit}' is not a known unit")))?;
        let native = format!("ActivitySummary.{k}");
        let key = out.composite_key("activity-summary", &native, &eff);
        out.observation(
            &el.at(),
            &Obs::quantity(metric, native, key, eff.clone(), tidy(v, 3)),
        );
    }
    Ok(())
}
