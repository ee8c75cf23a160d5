//! JSON reading helpers shared by the JSON sources.
//!
//! Decisions on malformed input (documented here because several sources share them):
//! - A UTF-8 BOM at the start is removed (several Fitbit samples start with one).
//! - Fitbit only: trailing commas before `]`/`}` and `//` line comments are removed before
//!   parsing ([`relax`]). Real Fitbit responses have neither, but hand-edited exports and the
//!   Fitbit SDK samples do, and nothing in them is ambiguous. All other sources are strict.
//! - A number too large for an `f64` makes the document unreadable (`MapError::Json`); a
//!   finite value outside [`MAX_ABS`] is a per-record error.
//! - Numbers may arrive as strings (Fitbit time series `"value": "7428"`); [`number`] accepts both.

use serde_json::Value;

use crate::{MapError, RecordError};

/// Values whose magnitude is above this are rejected per record: no wearable metric comes
/// near it, and FHIR servers store decimals with at most 18 significant digits.
pub(crate) const MAX_ABS: f64 = 1e12;

/// Removes a leading UTF-8 byte-order mark.
pub(crate) fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes)
}

/// Parses a JSON document.
pub(crate) fn parse(bytes: &[u8]) -> Result<Value, MapError> {
    serde_json::from_slice(bytes).map_err(|e| MapError::Json(e.to_string()))
}

/// Removes `//` line comments and trailing commas outside strings (see the module docs).
pub(crate) fn relax(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            out.push(b);
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                in_string = true;
                out.push(b);
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b']' | b'}' => {
                // Drop a comma that only whitespace separates from this closing bracket.
                let mut j = out.len();
                while j > 0 && out[j - 1].is_ascii_whitespace() {
                    j -= 1;
                }
                if j > 0 && out[j - 1] == b',' {
                    out.remove(j - 1);
                }
                out.push(b);
            }
            _ => out.push(b),
        }
        i += 1;
    }
    out
}

/// A per-record error at `path`.
pub(crate) fn err(path: &str, reason: impl Into<String>) -> RecordError {
    RecordError {
        location: path.to_owned(),
        reason: reason.into(),
    }
}

/// Reads a finite number (or a numeric string) within [`MAX_ABS`].
pub(crate) fn number(v: &Value, path: &str) -> Result<f64, RecordError> {
    let n = match v {
        // With serde_json's `arbitrary_precision` a huge literal parses; it is out of range here.
        Value::Number(n) => Some(n.as_f64().unwrap_or(f64::INFINITY)),
        Value::String(s) => s.trim().parse::<f64>().ok(),
        Value::Null => return Err(err(path, "value is missing (null)")),
        _ => None,
    };
    match n {
        Some(x) if x.is_finite() && x.abs() <= MAX_ABS => Ok(x),
        Some(_) => Err(err(path, "value is out of range")),
        None => Err(err(path, format!("expected a number, found {}", kind(v)))),
    }
}

/// Reads field `key` of `obj` as a number.
pub(crate) fn num_field(obj: &Value, path: &str, key: &str) -> Result<f64, RecordError> {
    match obj.get(key) {
        Some(v) => number(v, &format!("{path}.{key}")),
        None => Err(err(path, format!("field '{key}' is missing"))),
    }
}

/// Reads field `key` as a number when it is present and not null.
pub(crate) fn opt_num(obj: &Value, path: &str, key: &str) -> Result<Option<f64>, RecordError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => number(v, &format!("{path}.{key}")).map(Some),
    }
}

/// Reads field `key` of `obj` as a string.
pub(crate) fn str_field<'a>(obj: &'a Value, path: &str, key: &str) -> Result<&'a str, RecordError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(Value::Null) | None => Err(err(path, format!("field '{key}' is missing"))),
        Some(other) => Err(err(
            &format!("{path}.{key}"),
            format!("expected a string, found {}", kind(other)),
        )),
    }
}

/// Reads field `key` as an integer (number or numeric string, e.g. Google's `"1436275800000000000"`).
pub(crate) fn int_field(obj: &Value, path: &str, key: &str) -> Result<i128, RecordError> {
    let at = format!("{path}.{key}");
    match obj.get(key) {
        Some(Value::Number(n)) => n
            .as_i64()
            .map(i128::from)
            .or_else(|| n.as_u64().map(i128::from))
            .ok_or_else(|| err(&at, "expected an integer")),
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map_err(|_| err(&at, "expected an integer")),
        Some(Value::Null) | None => Err(err(path, format!("field '{key}' is missing"))),
        Some(other) => Err(err(
            &at,
            format!("expected an integer, found {}", kind(other)),
        )),
    }
}

/// A short name of the JSON type of `v`, for error messages (never the value itself).
pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The text of a scalar, for identifier keys (`logId` 15040942043 → `15040942043`).
pub(crate) fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relax_removes_trailing_commas_and_comments_but_not_inside_strings() {
        let src = br#"{"a": [1, 2, ], "b": "x, ]//", // note
        "c": {"d": 1,
        },}"#;
        let v: Value = serde_json::from_slice(&relax(src)).unwrap();
        assert_eq!(v["b"], "x, ]//");
        assert_eq!(v["a"], serde_json::json!([1, 2]));
        assert_eq!(v["c"]["d"], 1);
    }

    #[test]
    fn numbers_may_be_strings_but_must_be_in_range() {
        assert_eq!(number(&serde_json::json!("7428"), "$").unwrap(), 7428.0);
        assert!(number(&serde_json::json!(1e300), "$").is_err());
        assert!(number(&serde_json::json!("abc"), "$").is_err());
    }
}
