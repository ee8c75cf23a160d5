//! Withings API JSON: `getmeas`, `getactivity`, `getintradayactivity`, `getworkouts` and sleep.
//!
//! Reference: <https://developer.withings.com/api-reference> (meastype, attrib and sleep state
//! tables). Rules from docs/wearable-mapping.md: values are `value × 10^unit`; `category=2`
//! groups are goals and `attrib=1` groups are ambiguous (another user may have stepped on the
//! scale), so both are skipped; `date`s are epoch seconds shown in the response's `timezone`;
//! `grpid`/`id` are the provider record ids.

use chrono_tz::Tz;
use serde_json::Value;

use crate::fhir::{DeviceInfo, Obs, ObsValue};
use crate::json::{self, err, int_field, num_field, opt_num, str_field};
use crate::metrics::{self, Metric, Stage, SLEEP_STAGE_SYSTEM};
use crate::output::Out;
use crate::time::{self, Effective};
use crate::units::tidy;
use crate::workout::{self, Workout};
use crate::{MapContext, MapError, MapOutput, RecordError, Source};

const SOURCE: Source = Source::Withings;

/// Maps one Withings response (with or without the `{status, body}` envelope).
pub(crate) fn map(bytes: &[u8], ctx: &MapContext) -> Result<MapOutput, MapError> {
    let doc = json::parse(bytes)?;
    let (body, base) = match doc.get("body") {
        Some(b) => {
            match doc.get("status").and_then(Value::as_i64) {
                Some(0) | None => {}
                Some(s) => {
                    return Err(MapError::ProviderError {
                        provider: SOURCE,
                        reason: format!("status {s}"),
                    })
                }
            }
            (b, "$.body")
        }
        None => (&doc, "$"),
    };
    let unrecognised = || MapError::Unrecognised {
        provider: SOURCE,
        reason: "expected a body with measuregrps, activities or series".to_owned(),
    };
    if !body.is_object() {
        return Err(unrecognised());
    }
    let tz = body
        .get("timezone")
        .and_then(Value::as_str)
        .and_then(time::zone)
        .or(ctx.default_time_zone);
    let mut out = Out::new(ctx, SOURCE);
    let mut known = false;
    if let Some(groups) = body.get("measuregrps").and_then(Value::as_array) {
        known = true;
        for (i, g) in groups.iter().enumerate() {
            let at = format!("{base}.measuregrps[{i}]");
            if let Err(e) = measure_group(&mut out, &at, g, tz) {
                out.error(e);
            }
        }
    }
    if let Some(days) = body.get("activities").and_then(Value::as_array) {
        known = true;
        for (i, d) in days.iter().enumerate() {
            let at = format!("{base}.activities[{i}]");
            if let Err(e) = activity_day(&mut out, &at, d, tz) {
                out.error(e);
            }
        }
    }
    match body.get("series") {
        Some(Value::Object(entries)) => {
            known = true;
            for (epoch, entry) in entries {
                let at = format!("{base}.series[\"{epoch}\"]");
                if let Err(e) = intraday(&mut out, &at, epoch, entry, tz) {
                    out.error(e);
                }
            }
        }
        Some(Value::Array(items)) => {
            known = true;
            let model = body.get("model").and_then(json::scalar_text);
            for (i, item) in items.iter().enumerate() {
                let at = format!("{base}.series[{i}]");
                let r = if item.get("state").is_some() {
                    sleep_state(&mut out, &at, item, tz, model.as_deref())
                } else if item.get("category").is_some() {
                    workout_item(&mut out, &at, item, tz)
                } else if item.get("data").is_some() {
                    sleep_summary(&mut out, &at, item, tz)
                } else {
                    Err(err(
                        &at,
                        "unknown series item (expected sleep, sleep summary or workout)",
                    ))
                };
                if let Err(e) = r {
                    out.error(e);
                }
            }
        }
        _ => {}
    }
    if !known {
        return Err(unrecognised());
    }
    Ok(out.finish())
}

/// What a `meastype` maps to: metric, and the factor from Withings' unit to the metric's unit.
fn meastype(t: i64) -> Option<(&'static Metric, f64)> {
    Some(match t {
        1 => (&metrics::BODY_WEIGHT, 1.0),
        4 => (&metrics::BODY_HEIGHT, 100.0), // metres → cm
        5 => (&metrics::FAT_FREE_MASS, 1.0),
        6 => (&metrics::BODY_FAT, 1.0),
        8 => (&metrics::FAT_MASS, 1.0),
        9 => (&metrics::DIASTOLIC, 1.0),
        10 => (&metrics::SYSTOLIC, 1.0),
        11 => (&metrics::HEART_RATE, 1.0),
        12 | 71 => (&metrics::BODY_TEMPERATURE, 1.0),
        54 => (&metrics::SPO2, 1.0),
        73 => (&metrics::SKIN_TEMPERATURE, 1.0),
        76 => (&metrics::MUSCLE_MASS, 1.0),
        77 => (&metrics::HYDRATION, 1.0),
        88 => (&metrics::BONE_MASS, 1.0),
        91 => (&metrics::PULSE_WAVE_VELOCITY, 1.0),
        123 => (&metrics::VO2MAX, 1.0),
        _ => return None,
    })
}

/// `value × 10^unit`, exactly as many decimals as the exponent gives.
fn scaled(m: &Value, at: &str) -> Result<f64, RecordError> {
    let value = num_field(m, at, "value")?;
    let unit = int_field(m, at, "unit")?;
    if !(-20..=20).contains(&unit) {
        return Err(err(&format!("{at}.unit"), "unit exponent is out of range"));
    }
    let unit = unit as i32;
    let x = value * 10f64.powi(unit);
    if !x.is_finite() || x.abs() > json::MAX_ABS {
        return Err(err(at, "value is out of range"));
    }
    Ok(tidy(x, (-unit).max(0)))
}

fn device_of(out: &mut Out<'_>, item: &Value) -> Option<String> {
    let key = item
        .get("hash_deviceid")
        .or_else(|| item.get("deviceid"))
        .and_then(json::scalar_text)?;
    let model = item.get("model").and_then(json::scalar_text);
    Some(out.device(&DeviceInfo {
        key,
        name: model.clone(),
        manufacturer: Some("Withings".to_owned()),
        model,
        kind: None,
    }))
}

fn measure_group(
    out: &mut Out<'_>,
    at: &str,
    g: &Value,
    tz: Option<Tz>,
) -> Result<(), RecordError> {
    if g.get("category").and_then(Value::as_i64) == Some(2) {
        out.skip("withings: objective (category 2) measure group");
        return Ok(());
    }
    if g.get("attrib").and_then(Value::as_i64) == Some(1) {
        out.skip("withings: measure group with ambiguous user attribution (attrib 1)");
        return Ok(());
    }
    let grpid = g
        .get("grpid")
        .and_then(json::scalar_text)
        .ok_or_else(|| err(at, "field 'grpid' is missing"))?;
    let date = int_field(g, at, "date")?;
    let tz = g
        .get("timezone")
        .and_then(Value::as_str)
        .and_then(time::zone)
        .or(tz);
    let when = i64::try_from(date)
        .ok()
        .and_then(|d| time::from_epoch(d, tz))
        .ok_or_else(|| err(&format!("{at}.date"), "date is out of range"))?;
    let measures = g
        .get("measures")
        .and_then(Value::as_array)
        .ok_or_else(|| err(at, "field 'measures' is missing"))?;
    let device = device_of(out, g);
    let eff = Effective::Instant(when);
    let (mut sys, mut dia) = (None, None);
    for (j, m) in measures.iter().enumerate() {
        let mat = format!("{at}.measures[{j}]");
        let t = match int_field(m, &mat, "type").map(i64::try_from) {
            Ok(Ok(t)) => t,
            Ok(Err(_)) => {
                out.error(err(&mat, "type is out of range"));
                continue;
            }
            Err(e) => {
                out.error(e);
                continue;
            }
        };
        let Some((metric, factor)) = meastype(t) else {
            out.skip(format!("withings: unsupported meastype {t}"));
            continue;
        };
        let v = match scaled(m, &mat) {
            Ok(v) => tidy(v * factor, 6),
            Err(e) => {
                out.error(e);
                continue;
            }
        };
        if std::ptr::eq(metric, &metrics::SYSTOLIC) {
            sys = Some(v);
            continue;
        }
        if std::ptr::eq(metric, &metrics::DIASTOLIC) {
            dia = Some(v);
            continue;
        }
        let obs = Obs::quantity(
            metric,
            format!("meastype-{t}"),
            format!("{grpid}/meastype-{t}"),
            eff.clone(),
            v,
        )
        .with_device(device.clone());
        out.observation(&mat, &obs);
    }
    if sys.is_some() || dia.is_some() {
        let mut parts = Vec::new();
        if let Some(s) = sys {
            parts.push((&metrics::SYSTOLIC, s));
        }
        if let Some(d) = dia {
            parts.push((&metrics::DIASTOLIC, d));
        }
        let obs = Obs {
            metric: &metrics::BLOOD_PRESSURE,
            native_code: "meastype-9-10".to_owned(),
            key: format!("{grpid}/blood-pressure"),
            effective: eff,
            value: ObsValue::Components(parts),
            device,
            members: Vec::new(),
            note: None,
        };
        out.observation(at, &obs);
    }
    Ok(())
}

fn activity_day(out: &mut Out<'_>, at: &str, d: &Value, tz: Option<Tz>) -> Result<(), RecordError> {
    let date_text = str_field(d, at, "date")?;
    let date = time::parse_date(date_text)
        .ok_or_else(|| err(&format!("{at}.date"), "not a YYYY-MM-DD date"))?;
    let tz = d
        .get("timezone")
        .and_then(Value::as_str)
        .and_then(time::zone)
        .or(tz);
    let eff = Effective::day(date, tz);
    let device = device_of(out, d);
    let dkey = device
        .clone()
        .unwrap_or_else(|| "withings-account".to_owned());
    let fields: [(&str, &'static Metric, f64); 7] = [
        ("steps", &metrics::STEPS_DAILY, 1.0),
        ("distance", &metrics::DISTANCE, 1.0),
        ("calories", &metrics::ACTIVE_ENERGY, 1.0),
        ("totalcalories", &metrics::TOTAL_ENERGY_DAILY, 1.0),
        ("soft", &metrics::LIGHT_MINUTES, 1.0 / 60.0),
        ("moderate", &metrics::MODERATE_MINUTES, 1.0 / 60.0),
        ("intense", &metrics::VIGOROUS_MINUTES, 1.0 / 60.0),
    ];
    for (field, metric, factor) in fields {
        match opt_num(d, at, field) {
            Ok(Some(v)) => {
                let key = out.composite_key(&dkey, metric.key, &eff);
                let obs = Obs::quantity(
                    metric,
                    format!("activity.{field}"),
                    key,
                    eff.clone(),
                    tidy(v * factor, 2),
                )
                .with_device(device.clone());
                out.observation(at, &obs);
            }
            Ok(None) => {}
            Err(e) => out.error(e),
        }
    }
    Ok(())
}

fn intraday(
    out: &mut Out<'_>,
    at: &str,
    epoch: &str,
    e: &Value,
    tz: Option<Tz>,
) -> Result<(), RecordError> {
    let start_secs: i64 = epoch
        .parse()
        .map_err(|_| err(at, "series key is not an epoch second"))?;
    let start = time::from_epoch(start_secs, tz).ok_or_else(|| err(at, "epoch is out of range"))?;
    let duration = opt_num(e, at, "duration")?.unwrap_or(0.0);
    let end = time::from_epoch(start_secs.saturating_add(duration as i64), tz)
        .ok_or_else(|| err(at, "duration is out of range"))?;
    let device = device_of(out, e);
    let dkey = device
        .clone()
        .unwrap_or_else(|| "withings-account".to_owned());
    let fields: [(&str, &'static Metric); 4] = [
        ("steps", &metrics::STEPS_INTERVAL),
        ("distance", &metrics::DISTANCE),
        ("calories", &metrics::ACTIVE_ENERGY),
        ("heart_rate", &metrics::HEART_RATE),
    ];
    let mut any = false;
    for (field, metric) in fields {
        let Some(v) = opt_num(e, at, field)? else {
            continue;
        };
        any = true;
        let eff = if field == "heart_rate" {
            Effective::Instant(start)
        } else {
            Effective::between(start, end)
        };
        let key = out.composite_key(&dkey, metric.key, &eff);
        let obs = Obs::quantity(metric, format!("intraday.{field}"), key, eff, v)
            .with_device(device.clone());
        out.observation(at, &obs);
    }
    if !any {
        out.skip("withings: intraday entry with a duration only");
    }
    Ok(())
}

fn period(item: &Value, at: &str, tz: Option<Tz>) -> Result<Effective, RecordError> {
    let tz = item
        .get("timezone")
        .and_then(Value::as_str)
        .and_then(time::zone)
        .or(tz);
    let s = int_field(item, at, "startdate")?;
    let e = int_field(item, at, "enddate")?;
    let conv = |x: i128, f: &str| {
        i64::try_from(x)
            .ok()
            .and_then(|x| time::from_epoch(x, tz))
            .ok_or_else(|| err(&format!("{at}.{f}"), "date is out of range"))
    };
    let (s, e) = (conv(s, "startdate")?, conv(e, "enddate")?);
    if e < s {
        return Err(err(at, "enddate is before startdate"));
    }
    Ok(Effective::between(s, e))
}

fn sleep_summary(
    out: &mut Out<'_>,
    at: &str,
    item: &Value,
    tz: Option<Tz>,
) -> Result<(), RecordError> {
    let eff = period(item, at, tz)?;
    let id = item.get("id").and_then(json::scalar_text);
    let device = device_of(out, item);
    let data = item
        .get("data")
        .filter(|d| d.is_object())
        .ok_or_else(|| err(at, "field 'data' is not an object"))?;
    let dat = format!("{at}.data");
    let fields: [(&str, &'static Metric, f64); 9] = [
        ("total_sleep_time", &metrics::SLEEP_DURATION, 1.0 / 60.0),
        ("deepsleepduration", &metrics::DEEP_SLEEP, 1.0 / 60.0),
        ("lightsleepduration", &metrics::LIGHT_SLEEP, 1.0 / 60.0),
        ("remsleepduration", &metrics::REM_SLEEP, 1.0 / 60.0),
        ("wakeupduration", &metrics::AWAKE_DURATION, 1.0 / 60.0),
        ("durationtosleep", &metrics::SLEEP_LATENCY, 1.0 / 60.0),
        ("total_timeinbed", &metrics::TIME_IN_BED, 1.0 / 60.0),
        ("hr_average", &metrics::HEART_RATE, 1.0),
        ("rr_average", &metrics::RESPIRATORY_RATE, 1.0),
    ];
    for (field, metric, factor) in fields {
        match opt_num(data, &dat, field) {
            Ok(Some(v)) => {
                let key = match &id {
                    Some(id) => format!("sleep/{id}/{}", metric.key),
                    None => out.composite_key("withings-sleep", metric.key, &eff),
                };
                let obs = Obs::quantity(
                    metric,
                    format!("sleep.{field}"),
                    key,
                    eff.clone(),
                    tidy(v * factor, 2),
                )
                .with_device(device.clone());
                out.observation(&dat, &obs);
            }
            Ok(None) => {}
            Err(e) => out.error(e),
        }
    }
    Ok(())
}

fn sleep_state(
    out: &mut Out<'_>,
    at: &str,
    item: &Value,
    tz: Option<Tz>,
    model: Option<&str>,
) -> Result<(), RecordError> {
    let eff = period(item, at, tz)?;
    let state = int_field(item, at, "state")?;
    let stage = match state {
        0 => Stage::Awake,
        1 => Stage::Light,
        2 => Stage::Deep,
        3 => Stage::Rem,
        4 => Stage::InBed,
        5 => Stage::Asleep,
        other => {
            return Err(err(
                &format!("{at}.state"),
                format!("unknown sleep state {other}"),
            ))
        }
    };
    let (code, display) = stage.coding();
    let dkey = model.map_or_else(|| "withings-sleep".to_owned(), |m| format!("model-{m}"));
    let key = out.composite_key(&dkey, metrics::SLEEP_STAGE.key, &eff);
    let obs = Obs {
        metric: &metrics::SLEEP_STAGE,
        native_code: format!("sleep.state-{state}"),
        key,
        effective: eff,
        value: ObsValue::Concept(
            SLEEP_STAGE_SYSTEM.to_owned(),
            code.to_owned(),
            display.to_owned(),
        ),
        device: None,
        members: Vec::new(),
        note: None,
    };
    out.observation(at, &obs);
    Ok(())
}

fn category_name(c: i128) -> &'static str {
    match c {
        1 => "Walk",
        2 => "Run",
        3 => "Hiking",
        6 => "Bicycling",
        7 => "Swimming",
        12 => "Tennis",
        16 => "Lift weights",
        18 => "Elliptical",
        19 => "Pilates",
        28 => "Yoga",
        29 => "Dancing",
        34 => "Skiing",
        187 => "Rowing",
        306 => "Indoor walk",
        307 => "Indoor running",
        308 => "Indoor cycling",
        _ => "Other",
    }
}

fn workout_item(
    out: &mut Out<'_>,
    at: &str,
    item: &Value,
    tz: Option<Tz>,
) -> Result<(), RecordError> {
    let eff = period(item, at, tz)?;
    let category = int_field(item, at, "category")?;
    let device = device_of(out, item);
    let key = match item.get("id").and_then(json::scalar_text) {
        Some(id) => format!("workout/{id}"),
        None => out.composite_key(
            device.as_deref().unwrap_or("withings-account"),
            "workout",
            &eff,
        ),
    };
    let mut w = Workout::new(
        key,
        "workout",
        (
            format!("workout-category-{category}"),
            category_name(category).to_owned(),
        ),
        eff.clone(),
    );
    w.device = device;
    if let Effective::Period(s, e) = &eff {
        w.duration_min = Some(tidy((*e - *s).num_seconds() as f64 / 60.0, 2));
    }
    if let Some(data) = item.get("data").filter(|d| d.is_object()) {
        let dat = format!("{at}.data");
        w.energy_kcal = opt_num(data, &dat, "calories")?;
        w.distance_m = opt_num(data, &dat, "distance")?;
        w.steps = opt_num(data, &dat, "steps")?;
        w.hr_mean = opt_num(data, &dat, "hr_average")?;
        w.hr_max = opt_num(data, &dat, "hr_max")?;
    }
    workout::emit(out, at, w);
    Ok(())
}
