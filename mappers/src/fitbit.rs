//! Fitbit Web API JSON (legacy v1/v1.2 endpoints).
//!
//! Reference: <https://dev.fitbit.com/build/reference/web-api/>. What the responses make hard:
//! - Local times carry no offset (intraday, sleep, weight logs). They are resolved in
//!   `MapContext::default_time_zone` (the profile `timezone`); without one the record is an
//!   error, never silently UTC (Shimmer's known defect, docs/wearable-mapping.md §4).
//! - Time-series values are strings (`"value": "7428"`), VO2max is a range string (`"42-46"`)
//!   and breathing rate uses `-1` for "not available" (counted as skipped).
//! - Units follow the request's `Accept-Language` ([`crate::UnitSystem`]); activity logs that
//!   name a `distanceUnit` use it.
//! - Trailing commas and `//` comments are tolerated (see `json::relax`), a BOM is stripped.
//! - Intraday step minutes with 0 steps are skipped (counted) to keep 1,440 empty Observations a
//!   day out of the store.

use chrono::{Duration, NaiveDate};
use serde_json::Value;

use crate::fhir::{DeviceInfo, Obs, ObsValue};
use crate::json::{self, err, num_field, opt_num, str_field};
use crate::metrics::{self, Metric, Stage, SLEEP_STAGE_SYSTEM};
use crate::output::Out;
use crate::time::{self, Effective};
use crate::units::{normalise, tidy, Dimension};
use crate::workout::{self, Workout};
use crate::{MapContext, MapError, MapOutput, RecordError, Source, UnitSystem};

const SOURCE: Source = Source::Fitbit;
/// Device key for values Fitbit reports per account, not per tracker.
const ACCOUNT: &str = "fitbit-account";

/// Maps one Fitbit response.
pub(crate) fn map(bytes: &[u8], ctx: &MapContext) -> Result<MapOutput, MapError> {
    let doc = json::parse(&json::relax(bytes))?;
    let mut out = Out::new(ctx, SOURCE);
    let known = match &doc {
        Value::Array(items) => array(&mut out, items),
        Value::Object(_) => object(&mut out, &doc),
        _ => false,
    };
    if !known {
        return Err(MapError::Unrecognised {
            provider: SOURCE,
            reason: "no known Fitbit data key (activities-*, hrv, br, cardioScore, weight, fat, bp, sleep, activities, spo2, devices)".to_owned(),
        });
    }
    Ok(out.finish())
}

/// `$.key` or `$["key"]` for keys that are not identifiers.
fn path(key: &str) -> String {
    if key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        format!("$.{key}")
    } else {
        format!("$[\"{key}\"]")
    }
}

fn report(out: &mut Out<'_>, r: Result<(), RecordError>) {
    if let Err(e) = r {
        out.error(e);
    }
}

fn array(out: &mut Out<'_>, items: &[Value]) -> bool {
    let first = items.first();
    if first.is_some_and(|f| f.get("deviceVersion").is_some()) {
        for (i, d) in items.iter().enumerate() {
            let r = device(out, &format!("$[{i}]"), d);
            report(out, r);
        }
        return true;
    }
    if first.is_some_and(|f| {
        f.get("dateTime").is_some() && f.get("value").is_some_and(|v| v.get("avg").is_some())
    }) {
        for (i, d) in items.iter().enumerate() {
            let r = spo2_day(out, &format!("$[{i}]"), d);
            report(out, r);
        }
        return true;
    }
    false
}

/// Maps one item of a top-level list.
type RecordFn = fn(&mut Out<'_>, &str, &Value) -> Result<(), RecordError>;

fn object(out: &mut Out<'_>, doc: &Value) -> bool {
    let mut known = false;
    for series in [
        "activities-steps",
        "activities-distance",
        "activities-calories",
    ] {
        if let Some(days) = doc.get(series).and_then(Value::as_array) {
            known = true;
            for (i, d) in days.iter().enumerate() {
                let r = activity_day(out, &format!("{}[{i}]", path(series)), series, d);
                report(out, r);
            }
            let intraday = format!("{series}-intraday");
            if let Some(set) = doc.get(&intraday) {
                let date = days
                    .first()
                    .and_then(|d| d.get("dateTime"))
                    .and_then(Value::as_str);
                let r = intraday_set(out, &intraday, series, date, set);
                report(out, r);
            }
        }
    }
    if let Some(days) = doc.get("activities-heart").and_then(Value::as_array) {
        known = true;
        for (i, d) in days.iter().enumerate() {
            let r = heart_day(out, &format!("{}[{i}]", path("activities-heart")), d);
            report(out, r);
        }
        if let Some(set) = doc.get("activities-heart-intraday") {
            let date = days
                .first()
                .and_then(|d| d.get("dateTime"))
                .and_then(Value::as_str);
            let r = intraday_set(
                out,
                "activities-heart-intraday",
                "activities-heart",
                date,
                set,
            );
            report(out, r);
        }
    }
    let lists: [(&str, RecordFn); 8] = [
        ("hrv", hrv),
        ("br", breathing),
        ("cardioScore", cardio),
        ("weight", weight),
        ("fat", fat),
        ("bp", blood_pressure),
        ("sleep", sleep),
        ("activities", activity_log),
    ];
    for (key, f) in lists {
        if let Some(items) = doc.get(key).and_then(Value::as_array) {
            known = true;
            for (i, item) in items.iter().enumerate() {
                let r = f(out, &format!("{}[{i}]", path(key)), item);
                report(out, r);
            }
        }
    }
    if doc.get("activities").is_some() && doc.get("summary").is_some() {
        out.skip("fitbit: daily activity summary (its date is only in the request URL)");
    }
    if doc.get("dateTime").is_some() {
        if doc.get("value").is_some_and(|v| v.get("avg").is_some()) {
            known = true;
            let r = spo2_day(out, "$", doc);
            report(out, r);
        }
        if let Some(minutes) = doc.get("minutes").and_then(Value::as_array) {
            known = true;
            for (i, m) in minutes.iter().enumerate() {
                let r = spo2_minute(out, &format!("$.minutes[{i}]"), m);
                report(out, r);
            }
        }
    }
    known
}

fn date_of(item: &Value, at: &str, key: &str) -> Result<NaiveDate, RecordError> {
    let s = str_field(item, at, key)?;
    time::parse_date(s).ok_or_else(|| err(&format!("{at}.{key}"), "not a YYYY-MM-DD date"))
}

/// Emits a day-level quantity keyed by account, native code and day.
fn daily(
    out: &mut Out<'_>,
    at: &str,
    metric: &'static Metric,
    native: &str,
    date: NaiveDate,
    v: f64,
) {
    let eff = Effective::day(date, out.ctx.default_time_zone);
    let key = out.composite_key(ACCOUNT, native, &eff);
    out.observation(at, &Obs::quantity(metric, native, key, eff, v));
}

fn local(
    out: &Out<'_>,
    at: &str,
    t: chrono::NaiveDateTime,
) -> Result<chrono::DateTime<chrono::FixedOffset>, RecordError> {
    time::local_in(t, out.ctx.default_time_zone).map_err(|reason| err(at, reason))
}

fn distance_to_m(out: &Out<'_>, v: f64, unit: Option<&str>) -> f64 {
    let unit = match unit {
        Some("Mile") | Some("mi") => "mi",
        Some("Kilometer") | Some("km") => "km",
        Some("Meter") | Some("m") => "m",
        _ if out.ctx.fitbit_units == UnitSystem::UnitedStates => "mi",
        _ => "km",
    };
    tidy(normalise(Dimension::Distance, v, unit).unwrap_or(v), 2)
}

fn weight_to_kg(out: &Out<'_>, v: f64) -> f64 {
    let unit = match out.ctx.fitbit_units {
        UnitSystem::Metric => "kg",
        UnitSystem::UnitedStates => "lb",
        UnitSystem::UnitedKingdom => "st",
    };
    tidy(normalise(Dimension::Mass, v, unit).unwrap_or(v), 3)
}

fn activity_day(out: &mut Out<'_>, at: &str, series: &str, d: &Value) -> Result<(), RecordError> {
    let date = date_of(d, at, "dateTime")?;
    let v = num_field(d, at, "value")?;
    let (metric, v) = match series {
        "activities-steps" => (&metrics::STEPS_DAILY, v),
        "activities-distance" => (&metrics::DISTANCE, distance_to_m(out, v, None)),
        _ => (&metrics::TOTAL_ENERGY_DAILY, v),
    };
    daily(out, at, metric, series, date, v);
    Ok(())
}

fn heart_day(out: &mut Out<'_>, at: &str, d: &Value) -> Result<(), RecordError> {
    let date = date_of(d, at, "dateTime")?;
    let value = d.get("value");
    match value.and_then(|v| v.get("restingHeartRate")) {
        Some(rhr) => {
            let v = json::number(rhr, &format!("{at}.value.restingHeartRate"))?;
            daily(
                out,
                at,
                &metrics::RESTING_HEART_RATE,
                "activities-heart.restingHeartRate",
                date,
                v,
            );
        }
        None => out.skip("fitbit: daily heart entry without restingHeartRate"),
    }
    Ok(())
}

fn intraday_set(
    out: &mut Out<'_>,
    name: &str,
    series: &str,
    date: Option<&str>,
    set: &Value,
) -> Result<(), RecordError> {
    let at = path(name);
    let date = date
        .and_then(time::parse_date)
        .ok_or_else(|| err(&at, "intraday data without the day's dateTime"))?;
    let items = set
        .get("dataset")
        .and_then(Value::as_array)
        .ok_or_else(|| err(&at, "field 'dataset' is missing"))?;
    let step = set
        .get("datasetInterval")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let step = match set.get("datasetType").and_then(Value::as_str) {
        Some("second") => Duration::seconds(step),
        Some("hour") => Duration::hours(step),
        _ => Duration::minutes(step),
    };
    let (metric, heart) = match series {
        "activities-heart" => (&metrics::HEART_RATE, true),
        "activities-steps" => (&metrics::STEPS_INTERVAL, false),
        "activities-distance" => (&metrics::DISTANCE, false),
        _ => (&metrics::ACTIVE_ENERGY, false),
    };
    for (i, item) in items.iter().enumerate() {
        let iat = format!("{at}.dataset[{i}]");
        let r = (|| {
            let t = str_field(item, &iat, "time")?;
            let local_t = time::on_date(date, t)
                .ok_or_else(|| err(&format!("{iat}.time"), "not a HH:MM:SS time"))?;
            let start = local(out, &iat, local_t)?;
            let mut v = num_field(item, &iat, "value")?;
            if series == "activities-steps" && v == 0.0 {
                out.skip("fitbit: intraday interval with 0 steps");
                return Ok(());
            }
            if series == "activities-distance" {
                v = distance_to_m(out, v, None);
            }
            let eff = if heart {
                Effective::Instant(start)
            } else {
                Effective::between(start, start + step)
            };
            let key = out.composite_key(ACCOUNT, name, &eff);
            out.observation(&iat, &Obs::quantity(metric, name, key, eff, v));
            Ok(())
        })();
        report(out, r);
    }
    Ok(())
}

fn hrv(out: &mut Out<'_>, at: &str, item: &Value) -> Result<(), RecordError> {
    let date = date_of(item, at, "dateTime")?;
    if let Some(value) = item.get("value") {
        let vat = format!("{at}.value");
        for field in ["dailyRmssd", "deepRmssd"] {
            if let Some(v) = opt_num(value, &vat, field)? {
                daily(
                    out,
                    at,
                    &metrics::HRV_RMSSD,
                    &format!("hrv.{field}"),
                    date,
                    v,
                );
            }
        }
    }
    if let Some(minutes) = item.get("minutes").and_then(Value::as_array) {
        for (i, m) in minutes.iter().enumerate() {
            let mat = format!("{at}.minutes[{i}]");
            let r = (|| {
                let t = str_field(m, &mat, "minute")?;
                let t = time::parse_local(t)
                    .ok_or_else(|| err(&format!("{mat}.minute"), "not a local date-time"))?;
                let t = local(out, &mat, t)?;
                let value = m
                    .get("value")
                    .ok_or_else(|| err(&mat, "field 'value' is missing"))?;
                let v = num_field(value, &format!("{mat}.value"), "rmssd")?;
                let eff = Effective::Instant(t);
                let key = out.composite_key(ACCOUNT, "hrv.minutes.rmssd", &eff);
                out.observation(
                    &mat,
                    &Obs::quantity(&metrics::HRV_RMSSD, "hrv.minutes.rmssd", key, eff, v),
                );
                Ok(())
            })();
            report(out, r);
        }
    }
    Ok(())
}

fn breathing(out: &mut Out<'_>, at: &str, item: &Value) -> Result<(), RecordError> {
    let date = date_of(item, at, "dateTime")?;
    let value = item
        .get("value")
        .ok_or_else(|| err(at, "field 'value' is missing"))?;
    let vat = format!("{at}.value");
    let (v, native) = if value.get("breathingRate").is_some() {
        (num_field(value, &vat, "breathingRate")?, "br.breathingRate")
    } else if let Some(full) = value.get("fullSleepSummary") {
        for stage in ["deepSleepSummary", "remSleepSummary", "lightSleepSummary"] {
            if value.get(stage).is_some() {
                out.skip("fitbit: per-sleep-stage breathing rate (the full-sleep value is mapped)");
            }
        }
        (
            num_field(full, &format!("{vat}.fullSleepSummary"), "breathingRate")?,
            "br.fullSleepSummary.breathingRate",
        )
    } else {
        return Err(err(&vat, "no breathingRate"));
    };
    if v < 0.0 {
        out.skip("fitbit: breathing rate not available (-1)");
        return Ok(());
    }
    daily(out, at, &metrics::RESPIRATORY_RATE, native, date, v);
    Ok(())
}

fn cardio(out: &mut Out<'_>, at: &str, item: &Value) -> Result<(), RecordError> {
    let date = date_of(item, at, "dateTime")?;
    let vat = format!("{at}.value.vo2Max");
    let raw = item
        .get("value")
        .and_then(|v| v.get("vo2Max"))
        .ok_or_else(|| err(at, "field 'value.vo2Max' is missing"))?;
    let value = match raw {
        Value::String(s) if s.contains('-') => {
            let (lo, hi) = s.split_once('-').unwrap_or((s, s));
            let lo = json::number(&Value::String(lo.to_owned()), &vat)?;
            let hi = json::number(&Value::String(hi.to_owned()), &vat)?;
            if lo > hi {
                return Err(err(&vat, "range low is above high"));
            }
            ObsValue::Range(lo, hi)
        }
        other => ObsValue::Quantity(json::number(other, &vat)?),
    };
    let eff = Effective::day(date, out.ctx.default_time_zone);
    let key = out.composite_key(ACCOUNT, "cardioScore.vo2Max", &eff);
    let mut obs = Obs::quantity(&metrics::VO2MAX, "cardioScore.vo2Max", key, eff, 0.0);
    obs.value = value;
    out.observation(at, &obs);
    Ok(())
}

/// The instant of a body log (`date` + `time`, local).
fn log_time(out: &Out<'_>, at: &str, item: &Value) -> Result<Effective, RecordError> {
    let date = date_of(item, at, "date")?;
    let t = str_field(item, at, "time")?;
    let t =
        time::on_date(date, t).ok_or_else(|| err(&format!("{at}.time"), "not a HH:MM:SS time"))?;
    Ok(Effective::Instant(local(out, at, t)?))
}

fn log_id(item: &Value, at: &str) -> Result<String, RecordError> {
    item.get("logId")
        .and_then(json::scalar_text)
        .ok_or_else(|| err(at, "field 'logId' is missing"))
}

fn weight(out: &mut Out<'_>, at: &str, item: &Value) -> Result<(), RecordError> {
    let id = log_id(item, at)?;
    let eff = log_time(out, at, item)?;
    let w = weight_to_kg(out, num_field(item, at, "weight")?);
    out.observation(
        at,
        &Obs::quantity(
            &metrics::BODY_WEIGHT,
            "weight.weight",
            format!("{id}/weight"),
            eff.clone(),
            w,
        ),
    );
    if let Some(bmi) = opt_num(item, at, "bmi")? {
        out.observation(
            at,
            &Obs::quantity(
                &metrics::BMI,
                "weight.bmi",
                format!("{id}/bmi"),
                eff.clone(),
                bmi,
            ),
        );
    }
    if let Some(f) = opt_num(item, at, "fat")? {
        out.observation(
            at,
            &Obs::quantity(
                &metrics::BODY_FAT,
                "weight.fat",
                format!("{id}/fat"),
                eff,
                f,
            ),
        );
    }
    Ok(())
}

fn fat(out: &mut Out<'_>, at: &str, item: &Value) -> Result<(), RecordError> {
    let id = log_id(item, at)?;
    let eff = log_time(out, at, item)?;
    let f = num_field(item, at, "fat")?;
    out.observation(
        at,
        &Obs::quantity(&metrics::BODY_FAT, "fat.fat", format!("{id}/fat"), eff, f),
    );
    Ok(())
}

fn blood_pressure(out: &mut Out<'_>, at: &str, item: &Value) -> Result<(), RecordError> {
    let id = log_id(item, at)?;
    if item.get("date").is_none() {
        return Err(err(
            at,
            "blood pressure log has no date (the legacy endpoint gives it only in the request URL)",
        ));
    }
    let date = date_of(item, at, "date")?;
    let eff = match item.get("time").and_then(Value::as_str) {
        Some(t) => {
            let t = time::on_date(date, t)
                .ok_or_else(|| err(&format!("{at}.time"), "not a HH:MM time"))?;
            Effective::Instant(local(out, at, t)?)
        }
        None => Effective::day(date, out.ctx.default_time_zone),
    };
    let sys = num_field(item, at, "systolic")?;
    let dia = num_field(item, at, "diastolic")?;
    let mut obs = Obs::quantity(
        &metrics::BLOOD_PRESSURE,
        "bp",
        format!("{id}/blood-pressure"),
        eff,
        0.0,
    );
    obs.value = ObsValue::Components(vec![(&metrics::SYSTOLIC, sys), (&metrics::DIASTOLIC, dia)]);
    out.observation(at, &obs);
    Ok(())
}

fn sleep(out: &mut Out<'_>, at: &str, item: &Value) -> Result<(), RecordError> {
    let id = log_id(item, at)?;
    let start_text = str_field(item, at, "startTime")?;
    let start_local = time::parse_local(start_text)
        .ok_or_else(|| err(&format!("{at}.startTime"), "not a local date-time"))?;
    let start = local(out, at, start_local)?;
    let end = match item.get("endTime").and_then(Value::as_str) {
        Some(e) => {
            let e = time::parse_local(e)
                .ok_or_else(|| err(&format!("{at}.endTime"), "not a local date-time"))?;
            local(out, at, e)?
        }
        None => start + Duration::milliseconds(num_field(item, at, "duration")? as i64),
    };
    if end < start {
        return Err(err(at, "endTime is before startTime"));
    }
    let eff = Effective::between(start, end);
    let totals: [(&str, &'static Metric); 4] = [
        ("minutesAsleep", &metrics::SLEEP_DURATION),
        ("timeInBed", &metrics::TIME_IN_BED),
        ("minutesAwake", &metrics::AWAKE_DURATION),
        ("minutesToFallAsleep", &metrics::SLEEP_LATENCY),
    ];
    for (field, metric) in totals {
        if let Some(v) = opt_num(item, at, field)? {
            let obs = Obs::quantity(
                metric,
                format!("sleep.{field}"),
                format!("{id}/{field}"),
                eff.clone(),
                v,
            );
            out.observation(at, &obs);
        }
    }
    let levels = item.get("levels");
    if item.get("type").and_then(Value::as_str) == Some("stages") {
        let summary = levels.and_then(|l| l.get("summary"));
        for (stage, metric) in [
            ("deep", &metrics::DEEP_SLEEP),
            ("light", &metrics::LIGHT_SLEEP),
            ("rem", &metrics::REM_SLEEP),
        ] {
            let sat = format!("{at}.levels.summary.{stage}");
            if let Some(v) = summary
                .and_then(|s| s.get(stage))
                .map(|s| opt_num(s, &sat, "minutes"))
                .transpose()?
                .flatten()
            {
                let obs = Obs::quantity(
                    metric,
                    format!("sleep.levels.summary.{stage}"),
                    format!("{id}/{stage}"),
                    eff.clone(),
                    v,
                );
                out.observation(&sat, &obs);
            }
        }
    }
    for list in ["data", "shortData"] {
        let Some(items) = levels.and_then(|l| l.get(list)).and_then(Value::as_array) else {
            continue;
        };
        for (i, s) in items.iter().enumerate() {
            let sat = format!("{at}.levels.{list}[{i}]");
            let r = sleep_level(out, &sat, &id, list, s);
            report(out, r);
        }
    }
    if let Some(minutes) = item.get("minuteData").and_then(Value::as_array) {
        for (i, m) in minutes.iter().enumerate() {
            let mat = format!("{at}.minuteData[{i}]");
            let r = sleep_minute(out, &mat, &id, start_local, m);
            report(out, r);
        }
    }
    Ok(())
}

fn stage_obs(out: &mut Out<'_>, at: &str, key: String, native: &str, stage: Stage, eff: Effective) {
    let (code, display) = stage.coding();
    let mut obs = Obs::quantity(&metrics::SLEEP_STAGE, native, key, eff, 0.0);
    obs.value = ObsValue::Concept(
        SLEEP_STAGE_SYSTEM.to_owned(),
        code.to_owned(),
        display.to_owned(),
    );
    out.observation(at, &obs);
}

fn sleep_level(
    out: &mut Out<'_>,
    at: &str,
    id: &str,
    list: &str,
    s: &Value,
) -> Result<(), RecordError> {
    // Fitbit's own samples spell the field both `dateTime` and `datetime`.
    let t = s
        .get("dateTime")
        .or_else(|| s.get("datetime"))
        .and_then(Value::as_str)
        .ok_or_else(|| err(at, "field 'dateTime' is missing"))?;
    let t = time::parse_local(t).ok_or_else(|| err(at, "dateTime is not a local date-time"))?;
    let start = local(out, at, t)?;
    let secs = num_field(s, at, "seconds")?;
    let level = str_field(s, at, "level")?;
    let stage = match level {
        "wake" | "awake" => Stage::Awake,
        "light" => Stage::Light,
        "deep" => Stage::Deep,
        "rem" => Stage::Rem,
        "asleep" => Stage::Asleep,
        "restless" => Stage::Restless,
        other => {
            return Err(err(
                &format!("{at}.level"),
                format!("unknown sleep level '{other}'"),
            ))
        }
    };
    let eff = Effective::between(
        start,
        start + Duration::milliseconds((secs * 1000.0) as i64),
    );
    let key = format!("{id}/{list}/{}", eff.key());
    stage_obs(out, at, key, &format!("sleep.levels.{level}"), stage, eff);
    Ok(())
}

fn sleep_minute(
    out: &mut Out<'_>,
    at: &str,
    id: &str,
    start: chrono::NaiveDateTime,
    m: &Value,
) -> Result<(), RecordError> {
    let t = str_field(m, at, "dateTime")?;
    let mut local_t =
        time::on_date(start.date(), t).ok_or_else(|| err(at, "dateTime is not a HH:MM:SS time"))?;
    if local_t < start {
        local_t += Duration::days(1); // the night crossed midnight
    }
    let begin = local(out, at, local_t)?;
    let code = m
        .get("value")
        .and_then(json::scalar_text)
        .unwrap_or_default();
    let stage = match code.as_str() {
        "1" => Stage::Asleep,
        "2" => Stage::Restless,
        "3" => Stage::Awake,
        _ => {
            return Err(err(
                &format!("{at}.value"),
                "unknown classic sleep value (expected 1, 2 or 3)",
            ))
        }
    };
    let eff = Effective::between(begin, begin + Duration::minutes(1));
    let key = format!("{id}/minuteData/{}", eff.key());
    stage_obs(
        out,
        at,
        key,
        &format!("sleep.minuteData.{code}"),
        stage,
        eff,
    );
    Ok(())
}

fn spo2_day(out: &mut Out<'_>, at: &str, d: &Value) -> Result<(), RecordError> {
    let date = date_of(d, at, "dateTime")?;
    let value = d
        .get("value")
        .ok_or_else(|| err(at, "field 'value' is missing"))?;
    let v = num_field(value, &format!("{at}.value"), "avg")?;
    daily(out, at, &metrics::SPO2, "spo2.avg", date, v);
    Ok(())
}

fn spo2_minute(out: &mut Out<'_>, at: &str, m: &Value) -> Result<(), RecordError> {
    let t = str_field(m, at, "minute")?;
    let t = time::parse_local(t)
        .ok_or_else(|| err(&format!("{at}.minute"), "not a local date-time"))?;
    let eff = Effective::Instant(local(out, at, t)?);
    let v = num_field(m, at, "value")?;
    let key = out.composite_key(ACCOUNT, "spo2.minutes", &eff);
    out.observation(
        at,
        &Obs::quantity(&metrics::SPO2, "spo2.minutes", key, eff, v),
    );
    Ok(())
}

fn device(out: &mut Out<'_>, at: &str, d: &Value) -> Result<(), RecordError> {
    let id = d
        .get("id")
        .and_then(json::scalar_text)
        .ok_or_else(|| err(at, "field 'id' is missing"))?;
    let version = d
        .get("deviceVersion")
        .and_then(Value::as_str)
        .map(str::to_owned);
    out.device(&DeviceInfo {
        key: id,
        name: version.clone(),
        manufacturer: Some("Fitbit".to_owned()),
        model: version,
        kind: d.get("type").and_then(Value::as_str).map(str::to_lowercase),
    });
    Ok(())
}

fn activity_log(out: &mut Out<'_>, at: &str, a: &Value) -> Result<(), RecordError> {
    let id = log_id(a, at)?;
    let duration_ms = opt_num(a, at, "duration")?;
    let start = if let Some(st) = a
        .get("startTime")
        .and_then(Value::as_str)
        .and_then(time::parse_offset)
    {
        st
    } else {
        // Daily activity log: `startDate` + local `startTime` ("11:55").
        let date = date_of(a, at, "startDate")?;
        let t = str_field(a, at, "startTime")?;
        let t = time::on_date(date, t)
            .ok_or_else(|| err(&format!("{at}.startTime"), "not a HH:MM time"))?;
        local(out, at, t)?
    };
    let end = start + Duration::milliseconds(duration_ms.unwrap_or(0.0) as i64);
    let eff = Effective::between(start, end);
    let name = a
        .get("activityName")
        .or_else(|| a.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("Activity")
        .to_owned();
    let type_id = a
        .get("activityTypeId")
        .or_else(|| a.get("activityId"))
        .and_then(json::scalar_text)
        .unwrap_or_else(|| "unknown".to_owned());
    let device = a.get("source").filter(|s| s.get("id").is_some()).map(|s| {
        let name = s.get("name").and_then(Value::as_str).map(str::to_owned);
        out.device(&DeviceInfo {
            key: s.get("id").and_then(json::scalar_text).unwrap_or_default(),
            name: name.clone(),
            manufacturer: Some("Fitbit".to_owned()),
            model: name,
            kind: s.get("type").and_then(Value::as_str).map(str::to_owned),
        })
    });
    let mut w = Workout::new(
        id,
        "activities",
        (format!("activity-type-{type_id}"), name),
        eff,
    );
    w.device = device;
    let active = opt_num(a, at, "activeDuration")?.or(duration_ms);
    w.duration_min = active.map(|ms| tidy(ms / 60_000.0, 2));
    w.energy_kcal = opt_num(a, at, "calories")?;
    let unit = a.get("distanceUnit").and_then(Value::as_str);
    w.distance_m = opt_num(a, at, "distance")?.map(|d| distance_to_m(out, d, unit));
    w.steps = opt_num(a, at, "steps")?;
    w.hr_mean = opt_num(a, at, "averageHeartRate")?;
    workout::emit(out, at, w);
    Ok(())
}
