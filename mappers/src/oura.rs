//! Oura API v2 JSON (`/v2/usercollection/*`).
//!
//! Reference: <https://cloud.ouraring.com/v2/docs>. Accepts a list response (`{"data": [...]}`),
//! a bare array or a single document; each document's kind is recognised by its fields
//! (sleep, daily_activity, daily_sleep, daily_readiness, heartrate, daily_spo2, workout,
//! vO2_max). Rules from docs/wearable-mapping.md §4: HRV is RMSSD (never 80404-7);
//! `temperature_deviation` is relative (a local code, not 8310-5); contributors are 0–100
//! scores and are not mapped; `equivalent_walking_distance` is not a measured distance (skipped);
//! `day` values are local days, bounded with the offset of the document's timestamp; sleep
//! documents of `type` `deleted` and periods still in progress are skipped.

use chrono::{DateTime, Duration, FixedOffset};
use serde_json::Value;

use crate::fhir::{DeviceInfo, Obs, ObsValue};
use crate::json::{self, err, opt_num, str_field};
use crate::metrics::{self, Metric, Stage, SLEEP_STAGE_SYSTEM};
use crate::output::Out;
use crate::time::{self, Effective};
use crate::units::tidy;
use crate::workout::{self, Workout};
use crate::{MapContext, MapError, MapOutput, RecordError, Source};

const SOURCE: Source = Source::Oura;

/// Maps one Oura response.
pub(crate) fn map(bytes: &[u8], ctx: &MapContext) -> Result<MapOutput, MapError> {
    let doc = json::parse(bytes)?;
    let (items, base): (Vec<&Value>, &str) = match &doc {
        Value::Array(a) => (a.iter().collect(), "$"),
        Value::Object(o) => match o.get("data") {
            Some(Value::Array(a)) => (a.iter().collect(), "$.data"),
            _ if o.contains_key("id") => (vec![&doc], ""),
            _ => (Vec::new(), ""),
        },
        _ => (Vec::new(), ""),
    };
    if items.is_empty() && !matches!(&doc, Value::Array(_)) && doc.get("data").is_none() {
        return Err(MapError::Unrecognised {
            provider: SOURCE,
            reason: "expected {\"data\": [...]}, an array of documents or one document".to_owned(),
        });
    }
    let mut out = Out::new(ctx, SOURCE);
    for (i, item) in items.into_iter().enumerate() {
        let at = if base.is_empty() {
            "$".to_owned()
        } else {
            format!("{base}[{i}]")
        };
        if let Err(e) = document(&mut out, &at, item) {
            out.error(e);
        }
    }
    Ok(out.finish())
}

fn ring(out: &mut Out<'_>) -> String {
    // Oura documents do not name the ring; one ring per account is assumed.
    out.device(&DeviceInfo {
        key: "oura-ring".to_owned(),
        name: Some("Oura Ring".to_owned()),
        manufacturer: Some("Oura".to_owned()),
        model: None,
        kind: Some("ring".to_owned()),
    })
}

fn document(out: &mut Out<'_>, at: &str, d: &Value) -> Result<(), RecordError> {
    if !d.is_object() {
        return Err(err(
            at,
            format!("expected an object, found {}", json::kind(d)),
        ));
    }
    let has = |k: &str| d.get(k).is_some();
    if has("bedtime_start") {
        sleep(out, at, d)
    } else if has("activity") && (has("start_datetime") || has("end_datetime")) {
        workout_doc(out, at, d)
    } else if has("bpm") {
        heart_rate(out, at, d)
    } else if has("spo2_percentage") {
        let avg = d
            .get("spo2_percentage")
            .map(|s| opt_num(s, &format!("{at}.spo2_percentage"), "average"));
        let v = avg.transpose()?.flatten();
        daily_values(
            out,
            at,
            d,
            "daily_spo2",
            &[("spo2_percentage.average", &metrics::SPO2, v)],
        )
    } else if has("vo2_max") {
        let v = opt_num(d, at, "vo2_max")?;
        daily_values(out, at, d, "vo2_max", &[("vo2_max", &metrics::VO2MAX, v)])
    } else if has("temperature_deviation")
        || (has("contributors") && has("temperature_trend_deviation"))
    {
        let fields = [
            ("score", &metrics::READINESS_SCORE, opt_num(d, at, "score")?),
            (
                "temperature_deviation",
                &metrics::TEMPERATURE_DEVIATION,
                opt_num(d, at, "temperature_deviation")?,
            ),
            (
                "temperature_trend_deviation",
                &metrics::TEMPERATURE_DEVIATION,
                opt_num(d, at, "temperature_trend_deviation")?,
            ),
        ];
        daily_values(out, at, d, "daily_readiness", &fields)
    } else if has("steps") || has("active_calories") {
        let min = |k: &str| opt_num(d, at, k).map(|v| v.map(|s| tidy(s / 60.0, 2)));
        if d.get("equivalent_walking_distance")
            .is_some_and(|v| !v.is_null())
        {
            out.skip("oura: equivalent_walking_distance (an estimate, not a measured distance)");
        }
        let fields = [
            ("score", &metrics::ACTIVITY_SCORE, opt_num(d, at, "score")?),
            ("steps", &metrics::STEPS_DAILY, opt_num(d, at, "steps")?),
            (
                "active_calories",
                &metrics::ACTIVE_ENERGY,
                opt_num(d, at, "active_calories")?,
            ),
            (
                "total_calories",
                &metrics::TOTAL_ENERGY_DAILY,
                opt_num(d, at, "total_calories")?,
            ),
            (
                "low_activity_time",
                &metrics::LIGHT_MINUTES,
                min("low_activity_time")?,
            ),
            (
                "medium_activity_time",
                &metrics::MODERATE_MINUTES,
                min("medium_activity_time")?,
            ),
            (
                "high_activity_time",
                &metrics::VIGOROUS_MINUTES,
                min("high_activity_time")?,
            ),
        ];
        daily_values(out, at, d, "daily_activity", &fields)
    } else if has("contributors") {
        let fields = [("score", &metrics::SLEEP_SCORE, opt_num(d, at, "score")?)];
        daily_values(out, at, d, "daily_sleep", &fields)
    } else {
        Err(err(
            at,
            "unknown Oura document (not sleep, daily_*, heartrate, workout or vO2_max)",
        ))
    }
}

fn record_id(d: &Value, at: &str) -> Result<String, RecordError> {
    d.get("id")
        .and_then(json::scalar_text)
        .ok_or_else(|| err(at, "field 'id' is missing"))
}

fn daily_values(
    out: &mut Out<'_>,
    at: &str,
    d: &Value,
    kind: &str,
    fields: &[(&str, &'static Metric, Option<f64>)],
) -> Result<(), RecordError> {
    let id = record_id(d, at)?;
    let date = time::parse_date(str_field(d, at, "day")?)
        .ok_or_else(|| err(&format!("{at}.day"), "not a YYYY-MM-DD date"))?;
    let offset = d
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(time::parse_offset)
        .map(|t| *t.offset());
    let eff = match offset {
        Some(o) => Effective::day_at_offset(date, o),
        None => Effective::day(date, out.ctx.default_time_zone),
    };
    let device = ring(out);
    for (field, metric, value) in fields {
        let Some(v) = value else { continue };
        let native = format!("{kind}.{field}");
        let obs = Obs::quantity(metric, native, format!("{id}/{field}"), eff.clone(), *v)
            .with_device(Some(device.clone()));
        out.observation(at, &obs);
    }
    Ok(())
}

fn instant(d: &Value, at: &str, key: &str) -> Result<Option<DateTime<FixedOffset>>, RecordError> {
    match d.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => time::parse_offset(s).map(Some).ok_or_else(|| {
            err(
                &format!("{at}.{key}"),
                "not an ISO 8601 date-time with offset",
            )
        }),
        Some(other) => Err(err(
            &format!("{at}.{key}"),
            format!("expected a string, found {}", json::kind(other)),
        )),
    }
}

fn sleep(out: &mut Out<'_>, at: &str, d: &Value) -> Result<(), RecordError> {
    let id = record_id(d, at)?;
    if d.get("type").and_then(Value::as_str) == Some("deleted") {
        out.skip("oura: sleep period deleted by the user");
        return Ok(());
    }
    let start = instant(d, at, "bedtime_start")?
        .ok_or_else(|| err(at, "field 'bedtime_start' is missing"))?;
    let Some(end) = instant(d, at, "bedtime_end")? else {
        out.skip("oura: sleep period still in progress (no bedtime_end)");
        return Ok(());
    };
    if end < start {
        return Err(err(at, "bedtime_end is before bedtime_start"));
    }
    let eff = Effective::between(start, end);
    let device = Some(ring(out));
    let min = 1.0 / 60.0;
    let fields: [(&str, &'static Metric, f64); 10] = [
        ("total_sleep_duration", &metrics::SLEEP_DURATION, min),
        ("deep_sleep_duration", &metrics::DEEP_SLEEP, min),
        ("light_sleep_duration", &metrics::LIGHT_SLEEP, min),
        ("rem_sleep_duration", &metrics::REM_SLEEP, min),
        ("awake_time", &metrics::AWAKE_DURATION, min),
        ("time_in_bed", &metrics::TIME_IN_BED, min),
        ("latency", &metrics::SLEEP_LATENCY, min),
        ("average_hrv", &metrics::HRV_RMSSD, 1.0),
        ("average_heart_rate", &metrics::HEART_RATE, 1.0),
        ("average_breath", &metrics::RESPIRATORY_RATE, 1.0),
    ];
    for (field, metric, factor) in fields {
        if let Some(v) = opt_num(d, at, field)? {
            let obs = Obs::quantity(
                metric,
                format!("sleep.{field}"),
                format!("{id}/{field}"),
                eff.clone(),
                tidy(v * factor, 2),
            )
            .with_device(device.clone());
            out.observation(at, &obs);
        }
    }
    if let Some(phases) = d.get("sleep_phase_5_min").and_then(Value::as_str) {
        sleep_phases(
            out,
            &format!("{at}.sleep_phase_5_min"),
            &id,
            start,
            phases,
            device,
        )?;
    }
    Ok(())
}

/// One stage Observation per run of equal 5-minute phases ('1' deep, '2' light, '3' REM, '4' awake).
fn sleep_phases(
    out: &mut Out<'_>,
    at: &str,
    id: &str,
    start: DateTime<FixedOffset>,
    phases: &str,
    device: Option<String>,
) -> Result<(), RecordError> {
    let bytes = phases.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let mut j = i;
        while j < bytes.len() && bytes[j] == c {
            j += 1;
        }
        let stage = match c {
            b'1' => Stage::Deep,
            b'2' => Stage::Light,
            b'3' => Stage::Rem,
            b'4' => Stage::Awake,
            _ => {
                return Err(err(
                    at,
                    format!("unknown phase '{}' at position {i}", c as char),
                ))
            }
        };
        let s = start + Duration::minutes(5 * i as i64);
        let e = start + Duration::minutes(5 * j as i64);
        let eff = Effective::between(s, e);
        let (code, display) = stage.coding();
        let mut obs = Obs::quantity(
            &metrics::SLEEP_STAGE,
            "sleep.sleep_phase_5_min",
            format!("{id}/phase/{i}"),
            eff,
            0.0,
        )
        .with_device(device.clone());
        obs.value = ObsValue::Concept(
            SLEEP_STAGE_SYSTEM.to_owned(),
            code.to_owned(),
            display.to_owned(),
        );
        out.observation(at, &obs);
        i = j;
    }
    Ok(())
}

fn heart_rate(out: &mut Out<'_>, at: &str, d: &Value) -> Result<(), RecordError> {
    let t = instant(d, at, "timestamp")?.ok_or_else(|| err(at, "field 'timestamp' is missing"))?;
    let bpm = json::num_field(d, at, "bpm")?;
    let eff = Effective::Instant(t);
    let device = ring(out);
    let key = out.composite_key("oura-ring", "heartrate.bpm", &eff);
    out.observation(
        at,
        &Obs::quantity(&metrics::HEART_RATE, "heartrate.bpm", key, eff, bpm)
            .with_device(Some(device)),
    );
    Ok(())
}

fn workout_doc(out: &mut Out<'_>, at: &str, d: &Value) -> Result<(), RecordError> {
    let id = record_id(d, at)?;
    let start = instant(d, at, "start_datetime")?
        .ok_or_else(|| err(at, "field 'start_datetime' is missing"))?;
    let end = instant(d, at, "end_datetime")?
        .ok_or_else(|| err(at, "field 'end_datetime' is missing"))?;
    if end < start {
        return Err(err(at, "end_datetime is before start_datetime"));
    }
    let activity = str_field(d, at, "activity")?;
    let display = activity.replace('_', " ");
    let mut w = Workout::new(
        format!("workout/{id}"),
        "workout",
        (activity.to_owned(), display),
        Effective::between(start, end),
    );
    if d.get("source").and_then(Value::as_str) != Some("manual") {
        w.device = Some(ring(out));
    }
    w.duration_min = Some(tidy((end - start).num_seconds() as f64 / 60.0, 2));
    w.energy_kcal = opt_num(d, at, "calories")?;
    w.distance_m = opt_num(d, at, "distance")?;
    w.note = d.get("label").and_then(Value::as_str).map(str::to_owned);
    workout::emit(out, at, w);
    Ok(())
}
