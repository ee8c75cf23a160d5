//! FHIR `date`, `dateTime` and `instant` values as ranges of instants.
//!
//! A value covers everything its precision leaves open: `2024` is
//! `2024-01-01T00:00:00Z ..= 2024-12-31T23:59:59.999999Z`, `2024-03-05T10:00:00+01:00`
//! is the whole second `09:00:00Z ..= 09:00:00.999999Z`. Instants are kept in microseconds
//! (PostgreSQL's `timestamptz` resolution).
//!
//! Values without a time zone (dates, partial dates, and the rare dateTime written
//! without one) are taken as UTC: FHIR leaves their zone unknown, and UTC is the choice
//! that does not depend on the server's locale.

use std::fmt;

const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// An instant: microseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// 0001-01-01T00:00:00Z, the low end of an open range (FHIR years start at 0001).
    pub const MIN: Timestamp = Timestamp(-719_162 * SECONDS_PER_DAY * MICROS_PER_SECOND);
    /// 9999-12-31T23:59:59.999999Z, the high end of an open range.
    pub const MAX: Timestamp = Timestamp((2_932_897 * SECONDS_PER_DAY) * MICROS_PER_SECOND - 1);

    /// From microseconds since the Unix epoch.
    pub const fn from_micros(micros: i64) -> Timestamp {
        Timestamp(micros)
    }

    /// Microseconds since the Unix epoch.
    pub const fn micros(self) -> i64 {
        self.0
    }

    /// RFC 3339 in UTC, with microseconds only when they are not zero
    /// (`2024-12-31T23:59:59.999999Z`).
    pub fn to_rfc3339(self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(MICROS_PER_SECOND);
        let micros = self.0.rem_euclid(MICROS_PER_SECOND);
        let days = secs.div_euclid(SECONDS_PER_DAY);
        let sod = secs.rem_euclid(SECONDS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
            sod / 3600,
            sod / 60 % 60,
            sod % 60
        )?;
        if micros != 0 {
            write!(f, ".{micros:06}")?;
        }
        f.write_str("Z")
    }
}

/// An inclusive range of instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DateRange {
    /// First instant covered ([`Timestamp::MIN`] when open).
    pub low: Timestamp,
    /// Last instant covered ([`Timestamp::MAX`] when open).
    pub high: Timestamp,
}

impl DateRange {
    /// The smallest range covering both.
    pub fn union(self, other: DateRange) -> DateRange {
        DateRange {
            low: self.low.min(other.low),
            high: self.high.max(other.high),
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = if m > 2 { m - 3 } else { m + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let d = day_of_year - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = year_of_era + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        _ => 31,
    }
}

/// Reads exactly `n` ASCII digits at the start of `s`.
fn digits(s: &str, n: usize) -> Option<(i64, &str)> {
    let head = s.get(..n)?;
    if !head.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((head.parse().ok()?, &s[n..]))
}

/// The range a FHIR `date`, `dateTime` or `instant` (or a partial date/time search value
/// such as `2024-03`) covers; `None` when the text is not one.
pub fn parse_date_range(text: &str) -> Option<DateRange> {
    let text = text.trim();
    let (y, rest) = digits(text, 4)?;
    if y == 0 {
        return None;
    }
    if rest.is_empty() {
        return whole(days_from_civil(y, 1, 1), days_from_civil(y + 1, 1, 1));
    }
    let (m, rest) = digits(rest.strip_prefix('-')?, 2)?;
    if !(1..=12).contains(&m) {
        return None;
    }
    if rest.is_empty() {
        let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
        return whole(days_from_civil(y, m, 1), days_from_civil(ny, nm, 1));
    }
    let (d, rest) = digits(rest.strip_prefix('-')?, 2)?;
    if d < 1 || d > days_in_month(y, m) {
        return None;
    }
    let day = days_from_civil(y, m, d);
    if rest.is_empty() {
        return whole(day, day + 1);
    }
    let rest = rest.strip_prefix('T')?;
    let (hh, rest) = digits(rest, 2)?;
    let (mm, mut rest) = digits(rest.strip_prefix(':')?, 2)?;
    if hh > 23 || mm > 59 {
        return None;
    }
    // Precision of the written time, in microseconds.
    let mut width = 60 * MICROS_PER_SECOND;
    let mut micros = (hh * 3600 + mm * 60) * MICROS_PER_SECOND;
    if let Some(r) = rest.strip_prefix(':') {
        let (ss, r) = digits(r, 2)?;
        if ss > 60 {
            return None;
        }
        // A leap second counts as the last second of its minute.
        micros += ss.min(59) * MICROS_PER_SECOND;
        width = MICROS_PER_SECOND;
        rest = r;
        if let Some(r) = rest.strip_prefix('.') {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            if n == 0 {
                return None;
            }
            let kept = n.min(6);
            let (frac, _) = digits(r, kept)?;
            let scale = 10_i64.pow(u32::try_from(6 - kept).ok()?);
            micros += frac * scale;
            width = scale;
            rest = &r[n..];
        }
    }
    let offset_seconds = match rest {
        "" | "Z" => 0,
        _ => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (oh, r) = digits(&rest[1..], 2)?;
            let (om, r) = digits(r.strip_prefix(':')?, 2)?;
            if !r.is_empty() || oh > 14 || om > 59 {
                return None;
            }
            sign * (oh * 3600 + om * 60)
        }
    };
    let low = (day * SECONDS_PER_DAY - offset_seconds) * MICROS_PER_SECOND + micros;
    Some(DateRange {
        low: Timestamp(low),
        high: Timestamp(low + width - 1),
    })
}

/// The range of whole days `[from, until)`.
fn whole(from: i64, until: i64) -> Option<DateRange> {
    Some(DateRange {
        low: Timestamp(from * SECONDS_PER_DAY * MICROS_PER_SECOND),
        high: Timestamp(until * SECONDS_PER_DAY * MICROS_PER_SECOND - 1),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> (String, String) {
        let r = parse_date_range(s).unwrap_or_else(|| panic!("{s} should parse"));
        (r.low.to_string(), r.high.to_string())
    }

    #[test]
    fn precisions() {
        assert_eq!(
            range("2024"),
            (
                "2024-01-01T00:00:00Z".into(),
                "2024-12-31T23:59:59.999999Z".into()
            )
        );
        assert_eq!(
            range("2024-02"),
            (
                "2024-02-01T00:00:00Z".into(),
                "2024-02-29T23:59:59.999999Z".into()
            )
        );
        assert_eq!(
            range("2023-12-31"),
            (
                "2023-12-31T00:00:00Z".into(),
                "2023-12-31T23:59:59.999999Z".into()
            )
        );
        assert_eq!(
            range("2024-03-05T10:00:00+01:00"),
            (
                "2024-03-05T09:00:00Z".into(),
                "2024-03-05T09:00:00.999999Z".into()
            )
        );
        assert_eq!(
            range("2024-03-05T23:30:00.5-02:00"),
            (
                "2024-03-06T01:30:00.500000Z".into(),
                "2024-03-06T01:30:00.599999Z".into()
            )
        );
        assert_eq!(
            range("2015-02-07T13:28:17.239+02:00"),
            (
                "2015-02-07T11:28:17.239000Z".into(),
                "2015-02-07T11:28:17.239999Z".into()
            )
        );
        assert_eq!(
            range("2024-03-05T10:15Z"),
            (
                "2024-03-05T10:15:00Z".into(),
                "2024-03-05T10:15:59.999999Z".into()
            )
        );
        assert_eq!(
            range("1969-12-31T23:59:59.1234567Z"),
            (
                "1969-12-31T23:59:59.123456Z".into(),
                "1969-12-31T23:59:59.123456Z".into()
            )
        );
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "24",
            "2024-13",
            "2024-02-30",
            "2023-02-29",
            "2024-01-01T25:00:00Z",
            "2024-1-1",
            "2024-01-01T10:00:00+1",
            "0000",
            "abc",
            "2024-01-01 10:00",
        ] {
            assert!(parse_date_range(bad).is_none(), "{bad} should not parse");
        }
    }

    #[test]
    fn bounds() {
        assert_eq!(Timestamp::MIN.to_string(), "0001-01-01T00:00:00Z");
        assert_eq!(Timestamp::MAX.to_string(), "9999-12-31T23:59:59.999999Z");
        assert_eq!(
            Timestamp::from_micros(0).to_string(),
            "1970-01-01T00:00:00Z"
        );
        for days in [-800_000, -1, 0, 1, 59, 365, 11_016, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }
}
