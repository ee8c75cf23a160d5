//! Google Fit JSON: REST `datasets` responses (`point[]`), REST `aggregate` responses
//! (`bucket[].dataset[].point[]`) and Google Takeout "All Data" files (`"Data Points"[]` with
//! `fitValue[].value`).
//!
//! Reference: <https://developers.google.com/fit/rest/v1/reference/users/dataset>. Times are
//! nanoseconds since the epoch (UTC). `com.google.calories.expended` is *total* energy
//! (including BMR), height is in metres (mapped to cm), glucose in mmol/L (mapped to mg/dL).
//! The identifier is `originDataSourceId|dataTypeName|startTimeNanos|endTimeNanos`, the stable
//! key Google itself uses; the origin data source also names the app or device.

use serde_json::Value;

use crate::fhir::{DeviceInfo, Obs, ObsValue};
use crate::json::{self, err, int_field, str_field};
use crate::metrics::{self, Metric, Stage, SLEEP_STAGE_SYSTEM};
use crate::output::Out;
use crate::time::{self, Effective};
use crate::units::tidy;
use crate::workout::{self, Workout};
use crate::{MapContext, MapError, MapOutput, RecordError, Source};

const SOURCE: Source = Source::GoogleFit;

/// Maps one Google Fit response or Takeout file.
pub(crate) fn map(bytes: &[u8], ctx: &MapContext) -> Result<MapOutput, MapError> {
    let doc = json::parse(bytes)?;
    let mut out = Out::new(ctx, SOURCE);
    let mut known = false;
    for key in ["point", "Data Points"] {
        if let Some(points) = doc.get(key).and_then(Value::as_array) {
            known = true;
            let base = if key == "point" {
                "$.point".to_owned()
            } else {
                "$[\"Data Points\"]".to_owned()
            };
            points_of(&mut out, &base, points);
        }
    }
    if let Some(buckets) = doc.get("bucket").and_then(Value::as_array) {
        known = true;
        for (b, bucket) in buckets.iter().enumerate() {
            let sets = bucket
                .get("dataset")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            for (s, set) in sets.iter().enumerate() {
                if let Some(points) = set.get("point").and_then(Value::as_array) {
                    points_of(
                        &mut out,
                        &format!("$.bucket[{b}].dataset[{s}].point"),
                        points,
                    );
                }
            }
        }
    }
    if !known {
        return Err(MapError::Unrecognised {
            provider: SOURCE,
            reason: "expected a datasets response (point), an aggregate response (bucket) or a Takeout file (Data Points)".to_owned(),
        });
    }
    Ok(out.finish())
}

fn points_of(out: &mut Out<'_>, base: &str, points: &[Value]) {
    for (i, p) in points.iter().enumerate() {
        let at = format!("{base}[{i}]");
        if let Err(e) = point(out, &at, p) {
            out.error(e);
        }
    }
}

/// The values of a point: REST `value[]` or Takeout `fitValue[].value`.
fn values(p: &Value, at: &str) -> Result<Vec<f64>, RecordError> {
    let (list, takeout) = match (p.get("value"), p.get("fitValue")) {
        (Some(Value::Array(v)), _) => (v, false),
        (_, Some(Value::Array(v))) => (v, true),
        _ => return Err(err(at, "field 'value' is missing")),
    };
    list.iter()
        .enumerate()
        .map(|(j, v)| {
            let v = if takeout {
                v.get("value").unwrap_or(&Value::Null)
            } else {
                v
            };
            let vat = format!("{at}.value[{j}]");
            match (v.get("intVal"), v.get("fpVal")) {
                (Some(x), _) | (None, Some(x)) => json::number(x, &vat),
                _ => Err(err(&vat, "neither intVal nor fpVal")),
            }
        })
        .collect()
}

/// The app or device behind `originDataSourceId`
/// (`type:dataType:app[:manufacturer:model:uid]:stream`).
fn device_of(out: &mut Out<'_>, origin: &str) -> Option<String> {
    let parts: Vec<&str> = origin.split(':').collect();
    let app = parts.get(2).filter(|a| !a.is_empty())?;
    let info = if parts.len() >= 7 {
        DeviceInfo {
            key: format!("{}:{}:{}", parts[3], parts[4], parts[5]),
            name: Some(parts[4].to_owned()),
            manufacturer: Some(parts[3].to_owned()),
            model: Some(parts[4].to_owned()),
            kind: Some("phone".to_owned()),
        }
    } else {
        DeviceInfo {
            key: format!("app:{app}"),
            name: Some((*app).to_owned()),
            manufacturer: None,
            model: None,
            kind: Some("app".to_owned()),
        }
    };
    Some(out.device(&info))
}

fn point(out: &mut Out<'_>, at: &str, p: &Value) -> Result<(), RecordError> {
    let data_type = str_field(p, at, "dataTypeName")?;
    let start_ns = int_field(p, at, "startTimeNanos")?;
    let end_ns = int_field(p, at, "endTimeNanos")?;
    let start = time::from_epoch_nanos(start_ns)
        .ok_or_else(|| err(&format!("{at}.startTimeNanos"), "out of range"))?;
    let end = time::from_epoch_nanos(end_ns)
        .ok_or_else(|| err(&format!("{at}.endTimeNanos"), "out of range"))?;
    if end < start {
        return Err(err(at, "endTimeNanos is before startTimeNanos"));
    }
    let origin = p
        .get("originDataSourceId")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("unknown");
    let key = format!("{origin}|{data_type}|{start_ns}|{end_ns}");
    let eff = Effective::between(start, end);
    let simple: Option<(&'static Metric, f64)> = match data_type {
        "com.google.step_count.delta" => Some((&metrics::STEPS_INTERVAL, 1.0)),
        "com.google.heart_rate.bpm" => Some((&metrics::HEART_RATE, 1.0)),
        "com.google.weight" => Some((&metrics::BODY_WEIGHT, 1.0)),
        "com.google.height" => Some((&metrics::BODY_HEIGHT, 100.0)),
        "com.google.calories.expended" => Some((&metrics::TOTAL_ENERGY, 1.0)),
        "com.google.distance.delta" => Some((&metrics::DISTANCE, 1.0)),
        "com.google.body.fat.percentage" => Some((&metrics::BODY_FAT, 1.0)),
        "com.google.oxygen_saturation" => Some((&metrics::SPO2, 1.0)),
        "com.google.respiratory_rate" => Some((&metrics::RESPIRATORY_RATE, 1.0)),
        "com.google.body.temperature" => Some((&metrics::BODY_TEMPERATURE, 1.0)),
        "com.google.blood_glucose" => Some((&metrics::BLOOD_GLUCOSE, 18.016)),
        _ => None,
    };
    let known = simple.is_some()
        || matches!(
            data_type,
            "com.google.blood_pressure"
                | "com.google.activity.segment"
                | "com.google.sleep.segment"
        );
    if !known {
        out.skip(format!("google-fit: unsupported data type {data_type}"));
        return Ok(());
    }
    let vals = values(p, at)?;
    let first = *vals
        .first()
        .ok_or_else(|| err(at, "the point has no value"))?;
    let device = device_of(out, origin);
    if let Some((metric, factor)) = simple {
        let decimals = if factor == 1.0 { 6 } else { 2 };
        let obs = Obs::quantity(metric, data_type, key, eff, tidy(first * factor, decimals))
            .with_device(device);
        out.observation(at, &obs);
        return Ok(());
    }
    match data_type {
        "com.google.blood_pressure" => {
            let dia = *vals
                .get(1)
                .ok_or_else(|| err(at, "blood pressure point without a diastolic value"))?;
            let mut obs = Obs::quantity(&metrics::BLOOD_PRESSURE, data_type, key, eff, 0.0)
                .with_device(device);
            obs.value = ObsValue::Components(vec![
                (&metrics::SYSTOLIC, first),
                (&metrics::DIASTOLIC, dia),
            ]);
            out.observation(at, &obs);
        }
        "com.google.sleep.segment" => {
            let stage = match first as i64 {
                1 => Stage::Awake,
                2 => Stage::Asleep,
                3 => Stage::OutOfBed,
                4 => Stage::Light,
                5 => Stage::Deep,
                6 => Stage::Rem,
                other => return Err(err(at, format!("unknown sleep segment type {other}"))),
            };
            stage_obs(out, at, data_type, key, eff, stage, device);
        }
        _ => activity_segment(out, at, first as i64, key, eff, device),
    }
    Ok(())
}

fn stage_obs(
    out: &mut Out<'_>,
    at: &str,
    native: &str,
    key: String,
    eff: Effective,
    stage: Stage,
    device: Option<String>,
) {
    let (code, display) = stage.coding();
    let mut obs = Obs::quantity(&metrics::SLEEP_STAGE, native, key, eff, 0.0).with_device(device);
    obs.value = ObsValue::Concept(
        SLEEP_STAGE_SYSTEM.to_owned(),
        code.to_owned(),
        display.to_owned(),
    );
    out.observation(at, &obs);
}

/// Activity segments: sleep codes become sleep stages, still/vehicle/unknown are skipped and
/// everything else is a workout.
fn activity_segment(
    out: &mut Out<'_>,
    at: &str,
    activity: i64,
    key: String,
    eff: Effective,
    device: Option<String>,
) {
    let native = "com.google.activity.segment";
    let stage = match activity {
        72 => Some(Stage::Asleep),
        109 => Some(Stage::Light),
        110 => Some(Stage::Deep),
        111 => Some(Stage::Rem),
        112 => Some(Stage::Awake),
        _ => None,
    };
    if let Some(stage) = stage {
        stage_obs(out, at, native, key, eff, stage, device);
        return;
    }
    if matches!(activity, 0 | 3 | 4 | 5) {
        out.skip(
            "google-fit: activity segment that is not exercise (vehicle, still, unknown, tilting)",
        );
        return;
    }
    let name = match activity {
        1 => "Biking",
        7 => "Walking",
        8 => "Running",
        9 => "Aerobics",
        80 => "Strength training",
        82 => "Swimming (pool)",
        _ => "Other activity",
    };
    let mut w = Workout::new(
        key,
        native,
        (format!("activity-{activity}"), name.to_owned()),
        eff.clone(),
    );
    if let Effective::Period(s, e) = &eff {
        w.duration_min = Some(tidy((*e - *s).num_milliseconds() as f64 / 60_000.0, 2));
    }
    w.device = device;
    workout::emit(out, at, w);
}
