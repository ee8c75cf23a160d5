//! Format checks for the FHIR R4 primitive datatypes
//! (<https://hl7.org/fhir/R4/datatypes.html#primitive>), written out by hand rather than as
//! regular expressions so that calendar validity (`2024-02-30`) and the time-zone rules are exact.
//!
//! Every check returns `None` when the JSON value is acceptable and otherwise a short reason that
//! never repeats the value itself (it may identify a person).

use serde_json::Value;

/// Checks one JSON value against primitive type `ty`. Unknown types are not checked.
pub(crate) fn check(ty: &str, v: &Value) -> Option<&'static str> {
    match ty {
        "boolean" => (!v.is_boolean()).then_some("must be a JSON boolean"),
        "integer" => {
            int_in(v, i64::from(i32::MIN)).then_some("must be a JSON integer in the 32-bit range")
        }
        "unsignedInt" => int_in(v, 0).then_some("must be a JSON integer ≥ 0 in the 32-bit range"),
        "positiveInt" => int_in(v, 1).then_some("must be a JSON integer ≥ 1 in the 32-bit range"),
        "decimal" => decimal(v),
        _ => {
            let Some(s) = v.as_str() else {
                return Some("must be a JSON string");
            };
            string_check(ty, s)
        }
    }
}

fn int_in(v: &Value, min: i64) -> bool {
    !matches!(v.as_i64(), Some(n) if n >= min && n <= i64::from(i32::MAX))
}

fn decimal(v: &Value) -> Option<&'static str> {
    let Value::Number(n) = v else {
        return Some("must be a JSON number, not a string");
    };
    // With serde_json's arbitrary_precision the number keeps its source text.
    let text = n.to_string();
    let mantissa = text.split(['e', 'E']).next().unwrap_or("");
    let digits = mantissa.chars().filter(char::is_ascii_digit).count();
    if digits > 32 {
        return Some("has more than 32 significant digits");
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => None,
        _ => Some("is out of range for a decimal"),
    }
}

/// The R4 limit on a string's size (<https://hl7.org/fhir/R4/datatypes.html#string>).
pub const MAX_STRING_BYTES: usize = 1024 * 1024;

/// Whether `s` holds a character R4 strings may not: below U+0020 other than tab, CR and LF.
pub fn has_control_character(s: &str) -> bool {
    s.bytes()
        .any(|b| b < 0x20 && b != b'\t' && b != b'\r' && b != b'\n')
}

fn string_check(ty: &str, s: &str) -> Option<&'static str> {
    if s.is_empty() {
        return Some("must not be an empty string");
    }
    if has_control_character(s) {
        return Some("contains a control character (only tab, CR and LF are allowed)");
    }
    if s.len() > MAX_STRING_BYTES && ty != "base64Binary" {
        return Some("is longer than the R4 limit of 1 MB for a string");
    }
    let ok = match ty {
        "id" => is_valid_id(s),
        "code" => {
            !s.starts_with(char::is_whitespace)
                && !s.ends_with(char::is_whitespace)
                && !s.contains("  ")
        }
        "uri" | "url" | "canonical" => !s.chars().any(char::is_whitespace),
        "oid" => is_oid(s),
        "uuid" => s.strip_prefix("urn:uuid:").is_some_and(is_uuid),
        "date" => parse_date(s) == Some(s.len()),
        "dateTime" => is_valid_date_time(s),
        "instant" => is_valid_instant(s),
        "time" => time_len(s) == Some(s.len()),
        "base64Binary" => is_base64(s),
        _ => true,
    };
    (!ok).then_some(match ty {
        "id" => "is not a valid id ([A-Za-z0-9-.]{1,64})",
        "code" => "is not a valid code (no leading, trailing or double whitespace)",
        "uri" | "url" | "canonical" => "is not a valid URI (it contains whitespace)",
        "oid" => "is not a valid OID (urn:oid:…)",
        "uuid" => "is not a valid UUID (urn:uuid:…)",
        "date" => "is not a valid date (YYYY, YYYY-MM or YYYY-MM-DD)",
        "dateTime" => "is not a valid dateTime (a time needs seconds and a time zone)",
        "instant" => "is not a valid instant (YYYY-MM-DDThh:mm:ss with a time zone)",
        "time" => "is not a valid time (hh:mm:ss)",
        "base64Binary" => "is not valid base64",
        _ => "is not valid",
    })
}

/// `[A-Za-z0-9\-\.]{1,64}`, the R4 `id` type and every logical id in a URL.
pub fn is_valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

fn is_oid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:oid:") else {
        return false;
    };
    let mut parts = rest.split('.');
    matches!(parts.next(), Some("0" | "1" | "2"))
        && rest.contains('.')
        && parts.all(|p| {
            !p.is_empty()
                && p.bytes().all(|b| b.is_ascii_digit())
                && (p == "0" || !p.starts_with('0'))
        })
}

fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_base64(s: &str) -> bool {
    let compact: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    compact.len().is_multiple_of(4)
        && compact
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
        && compact
            .iter()
            .skip_while(|b| **b != b'=')
            .all(|b| *b == b'=')
}

fn digits(s: &str, n: usize) -> Option<u32> {
    let part = s.get(..n)?;
    if part.bytes().all(|b| b.is_ascii_digit()) {
        part.parse().ok()
    } else {
        None
    }
}

/// Parses the date part of a date or dateTime; returns how many bytes it used.
fn parse_date(s: &str) -> Option<usize> {
    let year = digits(s, 4)?;
    if year == 0 {
        return None;
    }
    if s.len() == 4 {
        return Some(4);
    }
    if s.as_bytes().get(4) != Some(&b'-') {
        return None;
    }
    let month = digits(&s[5..], 2)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    if s.len() == 7 {
        return Some(7);
    }
    if s.as_bytes().get(7) != Some(&b'-') {
        return None;
    }
    let day = digits(&s[8..], 2)?;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let max = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    (1..=max).contains(&day).then_some(10)
}

/// Length of a valid `hh:mm:ss(.fff)` prefix of `s`, if there is one.
fn time_len(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (h, m, sec) = (digits(s, 2)?, digits(&s[3..], 2)?, digits(&s[6..], 2)?);
    // Leap seconds (:60) are refused: PostgreSQL and most clients cannot represent them.
    if h > 23 || m > 59 || sec > 59 {
        return None;
    }
    let mut len = 8;
    if b.get(8) == Some(&b'.') {
        let frac = b[9..].iter().take_while(|c| c.is_ascii_digit()).count();
        if frac == 0 {
            return None;
        }
        len += 1 + frac;
    }
    Some(len)
}

fn is_zone(s: &str) -> bool {
    if s == "Z" {
        return true;
    }
    let b = s.as_bytes();
    if b.len() != 6 || !matches!(b[0], b'+' | b'-') || b[3] != b':' {
        return false;
    }
    match (digits(&s[1..], 2), digits(&s[4..], 2)) {
        (Some(h), Some(m)) => (h < 14 && m < 60) || (h == 14 && m == 0),
        _ => false,
    }
}

fn date_then_time(s: &str, time_required: bool) -> bool {
    let Some(d) = parse_date(s) else {
        return false;
    };
    if d == s.len() {
        return !time_required;
    }
    if d != 10 || s.as_bytes()[10] != b'T' {
        return false;
    }
    let rest = &s[11..];
    match time_len(rest) {
        Some(t) => is_zone(&rest[t..]),
        None => false,
    }
}

/// An R4 `dateTime`: a year, year-month, date, or a full date-time with seconds and a time zone.
pub fn is_valid_date_time(s: &str) -> bool {
    date_then_time(s, false)
}

/// An R4 `instant`: a full date-time with seconds and a time zone.
pub fn is_valid_instant(s: &str) -> bool {
    date_then_time(s, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dates_follow_the_calendar() {
        for ok in ["2024", "2024-02", "2024-02-29", "2000-02-29"] {
            assert!(parse_date(ok).is_some_and(|n| n == ok.len()), "{ok}");
        }
        for bad in [
            "2024-13-45",
            "2024-02-30",
            "1900-02-29",
            "0000",
            "24",
            "2024-1-01",
            "2024-01-01x",
        ] {
            assert!(check("date", &json!(bad)).is_some(), "{bad}");
        }
    }

    #[test]
    fn date_times_need_a_zone_with_a_time() {
        assert!(is_valid_date_time("2024-01-01T10:00:00Z"));
        assert!(is_valid_date_time("2024-01-01T10:00:00.123+14:00"));
        assert!(is_valid_date_time("2024-01"));
        for bad in [
            "2024-01-01T00:00:00",
            "2024-01-01T24:00:00Z",
            "2024-01-01T23:59:60Z",
            "2024-01-01T10:00:00+25:00",
            "+275760-09-13",
            "2024-01-01T10:00Z",
        ] {
            assert!(!is_valid_date_time(bad), "{bad}");
        }
        assert!(!is_valid_instant("2024-01-01"));
    }

    #[test]
    fn numbers_keep_their_json_types() {
        assert!(check("decimal", &json!("80")).is_some());
        assert!(check("decimal", &json!(80.5)).is_none());
        assert!(check("integer", &json!(2_147_483_648_i64)).is_some());
        assert!(check("integer", &json!(1.5)).is_some());
        assert!(check("positiveInt", &json!(0)).is_some());
        let huge: Value = serde_json::from_str("1e400").expect("arbitrary precision keeps it");
        assert!(check("decimal", &huge).is_some());
    }

    #[test]
    fn ids_and_codes() {
        assert!(is_valid_id("abc-1.2"));
        assert!(!is_valid_id("../etc"));
        assert!(!is_valid_id(&"a".repeat(65)));
        assert!(check("code", &json!(" final")).is_some());
        assert!(check("oid", &json!("urn:oid:1.2.3")).is_none());
        assert!(check("base64Binary", &json!("aGVsbG8=")).is_none());
        assert!(check("base64Binary", &json!("a=b")).is_some());
    }
}
