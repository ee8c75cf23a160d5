//! HealthKit samples as JSON, the way an iOS app sends them.
//!
//! Accepted shape: an array of sample objects, or `{"samples": [...]}` / `{"data": [...]}`.
//! Each sample has `type` (a HealthKit identifier), `uuid`, `start`/`startDate` and
//! `end`/`endDate` (ISO 8601 with offset), `value` (a number, or the category value name),
//! `unit`, optional `device` (object with `name`, `manufacturer`, `model`, `hardwareVersion`,
//! or the `HKDevice` description string), optional `source` (object with `name` or a string) and
//! optional `metadata` (e.g. `HKTimeZone`). A blood-pressure correlation
//! (`HKCorrelationTypeIdentifierBloodPressure`) lists its samples in `objects`; a workout
//! (`HKWorkoutTypeIdentifier`) has `workoutActivityType`, `duration` (s), `totalEnergyBurned`
//! (kcal) and `totalDistance` (m). The identifier is the HealthKit UUID (docs/wearable-mapping.md
//! §0.5); types, units and fractions are handled exactly as for `export.xml`.

use chrono::{DateTime, FixedOffset};
use serde_json::Value;

use crate::apple_xml::{convert, quantity_type, sleep_stage};
use crate::fhir::{DeviceInfo, Obs, ObsValue};
use crate::json::{self, err, num_field, opt_num, str_field};
use crate::metrics::{self, SLEEP_STAGE_SYSTEM};
use crate::output::Out;
use crate::time::{self, Effective};
use crate::units::{normalise, tidy, Dimension};
use crate::workout::{self, Workout};
use crate::{MapContext, MapError, MapOutput, RecordError, Source};

const SOURCE: Source = Source::HealthKit;

/// Maps a batch of HealthKit samples.
pub(crate) fn map(bytes: &[u8], ctx: &MapContext) -> Result<MapOutput, MapError> {
    let doc = json::parse(bytes)?;
    let (items, base) = match &doc {
        Value::Array(a) => (a, "$"),
        Value::Object(o) => match (o.get("samples"), o.get("data")) {
            (Some(Value::Array(a)), _) => (a, "$.samples"),
            (_, Some(Value::Array(a))) => (a, "$.data"),
            _ => {
                return Err(MapError::Unrecognised {
                    provider: SOURCE,
                    reason: "expected an array of samples or {\"samples\": [...]}".to_owned(),
                })
            }
        },
        _ => {
            return Err(MapError::Unrecognised {
                provider: SOURCE,
                reason: "expected an array of samples".to_owned(),
            })
        }
    };
    let mut out = Out::new(ctx, SOURCE);
    for (i, s) in items.iter().enumerate() {
        let at = format!("{base}[{i}]");
        if let Err(e) = sample(&mut out, &at, s) {
            out.error(e);
        }
    }
    Ok(out.finish())
}

fn when(s: &Value, at: &str, keys: [&str; 2]) -> Result<DateTime<FixedOffset>, RecordError> {
    let tz = s
        .get("metadata")
        .and_then(|m| m.get("HKTimeZone"))
        .and_then(Value::as_str)
        .and_then(time::zone);
    let text = keys
        .iter()
        .find_map(|k| s.get(*k).and_then(Value::as_str))
        .ok_or_else(|| err(at, format!("field '{}' is missing", keys[0])))?;
    let t = time::parse_offset(text).ok_or_else(|| {
        err(
            &format!("{at}.{}", keys[0]),
            "not an ISO 8601 date-time with offset",
        )
    })?;
    Ok(match tz {
        Some(tz) => t.with_timezone(&tz).fixed_offset(),
        None => t,
    })
}

fn device(out: &mut Out<'_>, s: &Value) -> Option<String> {
    let source = match s.get("source") {
        Some(Value::String(n)) => Some(n.clone()),
        Some(o) => o.get("name").and_then(Value::as_str).map(str::to_owned),
        None => None,
    };
    match s.get("device") {
        Some(Value::String(d)) => crate::apple_xml::device(out, source.as_deref(), Some(d)),
        Some(d @ Value::Object(_)) => {
            let get = |k: &str| d.get(k).and_then(Value::as_str).map(str::to_owned);
            let hardware = get("hardwareVersion").or_else(|| get("model"));
            let key = get("localIdentifier")
                .or_else(|| get("udiDeviceIdentifier"))
                .unwrap_or_else(|| {
                    format!(
                        "{}|{}",
                        source.as_deref().unwrap_or("unknown"),
                        hardware.as_deref().unwrap_or("unknown")
                    )
                });
            Some(out.device(&DeviceInfo {
                key,
                name: source.or_else(|| get("name")),
                manufacturer: get("manufacturer"),
                model: hardware,
                kind: get("name"),
            }))
        }
        _ => crate::apple_xml::device(out, source.as_deref(), None),
    }
}

fn sample(out: &mut Out<'_>, at: &str, s: &Value) -> Result<(), RecordError> {
    let t = str_field(s, at, "type")?;
    let uuid = s
        .get("uuid")
        .or_else(|| s.get("UUID"))
        .and_then(Value::as_str)
        .ok_or_else(|| err(at, "field 'uuid' is missing"))?
        .to_owned();
    let start = when(s, at, ["start", "startDate"])?;
    let end = when(s, at, ["end", "endDate"])?;
    if end < start {
        return Err(err(at, "end is before start"));
    }
    let eff = Effective::between(start, end);
    if t == "HKCorrelationTypeIdentifierBloodPressure" {
        let objects = s
            .get("objects")
            .and_then(Value::as_array)
            .ok_or_else(|| err(at, "field 'objects' is missing"))?;
        let mut parts = Vec::new();
        for (j, o) in objects.iter().enumerate() {
            let oat = format!("{at}.objects[{j}]");
            let metric = match o.get("type").and_then(Value::as_str) {
                Some("HKQuantityTypeIdentifierBloodPressureSystolic") => &metrics::SYSTOLIC,
                Some("HKQuantityTypeIdentifierBloodPressureDiastolic") => &metrics::DIASTOLIC,
                _ => continue,
            };
            let v = num_field(o, &oat, "value")?;
            let unit = o.get("unit").and_then(Value::as_str).unwrap_or("mmHg");
            let v = normalise(Dimension::Pressure, v, unit)
                .ok_or_else(|| err(&oat, format!("unit '{unit}' is not a pressure")))?;
            parts.push((metric, v));
        }
        if parts.is_empty() {
            return Err(err(
                at,
                "blood pressure correlation without systolic or diastolic samples",
            ));
        }
        let dev = device(out, s);
        let mut obs = Obs::quantity(&metrics::BLOOD_PRESSURE, t, uuid, eff, 0.0).with_device(dev);
        obs.value = ObsValue::Components(parts);
        out.observation(at, &obs);
        return Ok(());
    }
    if t == "HKWorkoutTypeIdentifier" {
        let activity = str_field(s, at, "workoutActivityType")?;
        let display = activity
            .strip_prefix("HKWorkoutActivityType")
            .unwrap_or(activity)
            .to_owned();
        let mut w = Workout::new(uuid, "HKWorkout", (activity.to_owned(), display), eff);
        w.device = device(out, s);
        w.duration_min = opt_num(s, at, "duration")?.map(|d| tidy(d / 60.0, 2));
        w.energy_kcal = opt_num(s, at, "totalEnergyBurned")?;
        w.distance_m = opt_num(s, at, "totalDistance")?;
        workout::emit(out, at, w);
        return Ok(());
    }
    if t == "HKCategoryTypeIdentifierSleepAnalysis" {
        let v = str_field(s, at, "value")?;
        let stage = sleep_stage(v).ok_or_else(|| {
            err(
                &format!("{at}.value"),
                format!("unknown sleep analysis value '{v}'"),
            )
        })?;
        let (code, display) = stage.coding();
        let dev = device(out, s);
        let mut obs = Obs::quantity(&metrics::SLEEP_STAGE, t, uuid, eff, 0.0).with_device(dev);
        obs.value = ObsValue::Concept(
            SLEEP_STAGE_SYSTEM.to_owned(),
            code.to_owned(),
            display.to_owned(),
        );
        out.observation(at, &obs);
        return Ok(());
    }
    let Some((metric, dim, fraction)) = quantity_type(t) else {
        return Err(err(
            &format!("{at}.type"),
            format!("unsupported HealthKit type '{t}'"),
        ));
    };
    let value = num_field(s, at, "value")?;
    let unit = s.get("unit").and_then(Value::as_str).unwrap_or("");
    let v = convert(value, unit, dim, fraction).ok_or_else(|| {
        err(
            &format!("{at}.unit"),
            format!("unit '{unit}' is not a unit of {}", metric.display),
        )
    })?;
    let dev = device(out, s);
    out.observation(at, &Obs::quantity(metric, t, uuid, eff, v).with_device(dev));
    Ok(())
}
