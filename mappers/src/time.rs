//! Times and time zones (docs/wearable-mapping.md §3 "Time zones").
//!
//! Instants keep the offset the source gave them. Provider times without an offset are
//! resolved in a named zone (the provider's per-record zone or [`crate::MapContext`]'s default);
//! without one they are a per-record error, never silently UTC. Daily values use the local day
//! as a Period when the zone is known and a date-only `dateTime` when it is not.

use chrono::{
    DateTime, Duration, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, SecondsFormat,
    TimeZone, Utc,
};
use chrono_tz::Tz;
use serde_json::{json, Value};

/// `Observation.effective[x]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effective {
    /// A single instant → `effectiveDateTime`.
    Instant(DateTime<FixedOffset>),
    /// An interval → `effectivePeriod` (an instant when start equals end).
    Period(DateTime<FixedOffset>, DateTime<FixedOffset>),
    /// A calendar day whose time zone is unknown → date-only `effectiveDateTime`.
    Day(NaiveDate),
}

impl Effective {
    /// An interval, or an instant when both ends are equal (HealthKitOnFHIR rule).
    pub(crate) fn between(start: DateTime<FixedOffset>, end: DateTime<FixedOffset>) -> Self {
        if start == end {
            Effective::Instant(start)
        } else {
            Effective::Period(start, end)
        }
    }

    /// The whole local day `date` in `tz`, or a date-only value when `tz` is unknown.
    pub(crate) fn day(date: NaiveDate, tz: Option<Tz>) -> Self {
        let Some(tz) = tz else {
            return Effective::Day(date);
        };
        let start = local_midnight(date, tz);
        let end = date.succ_opt().and_then(|d| local_midnight(d, tz));
        match (start, end) {
            (Some(s), Some(e)) => Effective::Period(s, e),
            _ => Effective::Day(date),
        }
    }

    /// The whole local day `date` at a fixed UTC offset.
    pub(crate) fn day_at_offset(date: NaiveDate, offset: FixedOffset) -> Self {
        let start = date
            .and_hms_opt(0, 0, 0)
            .and_then(|n| offset.from_local_datetime(&n).single());
        match start {
            Some(s) => Effective::Period(s, s + Duration::days(1)),
            None => Effective::Day(date),
        }
    }

    /// Start and end as text, for identifier keys.
    pub(crate) fn key(&self) -> String {
        match self {
            Effective::Instant(t) => format!("{}|{}", fmt(t), fmt(t)),
            Effective::Period(s, e) => format!("{}|{}", fmt(s), fmt(e)),
            Effective::Day(d) => format!("{d}|{d}"),
        }
    }

    /// Adds `effectiveDateTime` or `effectivePeriod` to an Observation.
    pub(crate) fn write(&self, obs: &mut serde_json::Map<String, Value>) {
        match self {
            Effective::Instant(t) => {
                obs.insert("effectiveDateTime".to_owned(), json!(fmt(t)));
            }
            Effective::Period(s, e) => {
                obs.insert(
                    "effectivePeriod".to_owned(),
                    json!({"start": fmt(s), "end": fmt(e)}),
                );
            }
            Effective::Day(d) => {
                obs.insert(
                    "effectiveDateTime".to_owned(),
                    json!(d.format("%Y-%m-%d").to_string()),
                );
            }
        }
    }
}

fn local_midnight(date: NaiveDate, tz: Tz) -> Option<DateTime<FixedOffset>> {
    in_zone(date.and_hms_opt(0, 0, 0)?, tz)
}

/// Parses the Apple export form `2024-01-01 01:01:36 +0200` without a format string (the common
/// case, millions of times per export); `None` for anything else, which callers then hand to
/// chrono's general parser.
pub(crate) fn parse_apple(s: &str) -> Option<DateTime<FixedOffset>> {
    let b = s.as_bytes();
    if b.len() != 25
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b' '
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b' '
    {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u32> {
        b[from..to].iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    let sign = match b[20] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (oh, om) = (num(21, 23)?, num(23, 25)?);
    if om >= 60 {
        return None;
    }
    let offset = FixedOffset::east_opt(sign * (oh * 3600 + om * 60) as i32)?;
    let date = NaiveDate::from_ymd_opt(num(0, 4)? as i32, num(5, 7)?, num(8, 10)?)?;
    let local = date.and_hms_opt(num(11, 13)?, num(14, 16)?, num(17, 19)?)?;
    local.and_local_timezone(offset).single()
}

/// FHIR `dateTime`/`instant` text with the offset kept and fractional seconds only when present.
///
/// Whole seconds in years 0–9999 (every wearable record) are written digit by digit; chrono's
/// general formatter, used for the rest, costs several times more and runs millions of times
/// per export.
pub(crate) fn fmt(t: &DateTime<FixedOffset>) -> String {
    use chrono::{Datelike, Timelike};
    let local = t.naive_local();
    let year = local.year();
    let offset = t.offset().local_minus_utc();
    if local.nanosecond() != 0 || !(0..=9999).contains(&year) || offset % 60 != 0 {
        return t.to_rfc3339_opts(SecondsFormat::AutoSi, false);
    }
    let (sign, offset) = if offset < 0 {
        (b'-', -offset)
    } else {
        (b'+', offset)
    };
    let mut b = *b"0000-00-00T00:00:00+00:00";
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            b[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year as u32);
    put(5, 2, local.month());
    put(8, 2, local.day());
    put(11, 2, local.hour());
    put(14, 2, local.minute());
    put(17, 2, local.second());
    put(20, 2, (offset / 3600) as u32);
    put(23, 2, (offset / 60 % 60) as u32);
    b[19] = sign;
    // Only ASCII was written.
    String::from_utf8(b.to_vec()).unwrap_or_default()
}

/// Resolves a local wall-clock time in `tz`. In a DST fall-back hour the earlier instant is
/// used; a time inside a spring-forward gap does not exist and gives `None`.
pub(crate) fn in_zone(local: NaiveDateTime, tz: Tz) -> Option<DateTime<FixedOffset>> {
    match tz.from_local_datetime(&local) {
        LocalResult::Single(t) => Some(t.fixed_offset()),
        LocalResult::Ambiguous(a, _) => Some(a.fixed_offset()),
        LocalResult::None => None,
    }
}

/// Resolves a local time in the zone, with a reason when that is impossible.
pub(crate) fn local_in(
    local: NaiveDateTime,
    tz: Option<Tz>,
) -> Result<DateTime<FixedOffset>, String> {
    let tz = tz.ok_or_else(|| {
        "local time without a UTC offset and no time zone is known (set MapContext.default_time_zone)"
            .to_owned()
    })?;
    in_zone(local, tz)
        .ok_or_else(|| format!("{local} does not exist in {tz} (daylight-saving gap)"))
}

/// An epoch second as an instant, shown in `tz` when known and in UTC otherwise (an epoch is
/// an instant, so UTC is exact, not a guess).
pub(crate) fn from_epoch(secs: i64, tz: Option<Tz>) -> Option<DateTime<FixedOffset>> {
    let utc = DateTime::<Utc>::from_timestamp(secs, 0)?;
    Some(match tz {
        Some(tz) => utc.with_timezone(&tz).fixed_offset(),
        None => utc.fixed_offset(),
    })
}

/// Nanoseconds since the epoch (Google Fit) as a UTC instant.
pub(crate) fn from_epoch_nanos(nanos: i128) -> Option<DateTime<FixedOffset>> {
    let secs = i64::try_from(nanos.div_euclid(1_000_000_000)).ok()?;
    let sub = u32::try_from(nanos.rem_euclid(1_000_000_000)).ok()?;
    Some(DateTime::<Utc>::from_timestamp(secs, sub)?.fixed_offset())
}

/// Parses an ISO 8601 / RFC 3339 date-time with an offset (`2026-06-10T01:00:00-04:00`).
pub(crate) fn parse_offset(s: &str) -> Option<DateTime<FixedOffset>> {
    DateTime::parse_from_rfc3339(s.trim()).ok()
}

/// Parses a local date-time without offset (`2017-04-01T00:00:00.000`, `2017-04-01T00:00`).
pub(crate) fn parse_local(s: &str) -> Option<NaiveDateTime> {
    let s = s.trim();
    [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
    ]
    .iter()
    .find_map(|f| NaiveDateTime::parse_from_str(s, f).ok())
}

/// Parses `YYYY-MM-DD`.
pub(crate) fn parse_date(s: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()
}

/// Parses a time of day (`12:20`, `00:01:00`) on `date`.
pub(crate) fn on_date(date: NaiveDate, time: &str) -> Option<NaiveDateTime> {
    let t = chrono::NaiveTime::parse_from_str(time.trim(), "%H:%M:%S")
        .or_else(|_| chrono::NaiveTime::parse_from_str(time.trim(), "%H:%M"))
        .ok()?;
    Some(date.and_time(t))
}

/// Parses an IANA zone name.
pub(crate) fn zone(name: &str) -> Option<Tz> {
    name.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_in_a_zone_is_a_period_with_local_offsets() {
        let d = parse_date("2015-06-18").unwrap();
        let e = Effective::day(d, zone("America/Los_Angeles"));
        assert_eq!(
            e.key(),
            "2015-06-18T00:00:00-07:00|2015-06-19T00:00:00-07:00"
        );
        assert_eq!(Effective::day(d, None), Effective::Day(d));
    }

    #[test]
    fn the_apple_date_form_parses_like_chrono() {
        for s in [
            "2024-01-01 01:01:36 +0200",
            "2023-12-31 23:59:59 -0530",
            "2024-02-29 00:00:00 +0000",
        ] {
            assert_eq!(
                parse_apple(s),
                DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S %z").ok(),
                "{s}"
            );
        }
        for s in [
            "2023-02-29 00:00:00 +0000",
            "2024-01-01T01:01:36+02:00",
            "2024-01-01 01:01:36 +02:00",
            "2024-01-01 25:01:36 +0200",
            "2024-01-01 01:01:36 +0275",
        ] {
            assert_eq!(parse_apple(s), None, "{s}");
        }
    }

    #[test]
    fn the_fast_formatter_writes_what_chrono_writes() {
        let samples = [
            "2024-01-01T01:01:36+02:00",
            "2023-12-31T23:59:59-05:30",
            "0001-02-03T04:05:06+00:00",
            "2024-06-01T00:00:00.250+09:45",
            "2024-06-01T00:00:00.000001-00:30",
            "9999-12-31T23:59:59+14:00",
        ];
        for s in samples {
            let t = DateTime::parse_from_rfc3339(s).unwrap();
            assert_eq!(
                fmt(&t),
                t.to_rfc3339_opts(SecondsFormat::AutoSi, false),
                "{s}"
            );
        }
        let odd = FixedOffset::east_opt(-(5 * 3600 + 30 * 60 + 15)).unwrap();
        let t = odd.with_ymd_and_hms(2020, 1, 2, 3, 4, 5).unwrap();
        assert_eq!(fmt(&t), t.to_rfc3339_opts(SecondsFormat::AutoSi, false));
    }

    #[test]
    fn local_times_need_a_zone_and_must_exist() {
        let t = parse_local("2021-03-14T02:30:00").unwrap();
        assert!(local_in(t, None).is_err());
        assert!(local_in(t, zone("America/New_York")).is_err());
        let ok = local_in(
            parse_local("2021-03-14T04:30:00").unwrap(),
            zone("America/New_York"),
        );
        assert_eq!(fmt(&ok.unwrap()), "2021-03-14T04:30:00-04:00");
    }
}
