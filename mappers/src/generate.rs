//! A generator of large Apple Health exports for benchmarks and streaming tests.
//!
//! It scales a real export (the `tdda_export6s3sample.xml` fixture, MIT, see
//! `tests/fixtures/SOURCES.md`): the sample's top-level elements are written again and again,
//! each copy shifted by one more day, until the output reaches the requested size.

use std::io::{self, Write};

use chrono::{DateTime, Duration, NaiveDate};

const SAMPLE: &str = include_str!("../tests/fixtures/apple_health/tdda_export6s3sample.xml");

/// Writes a well-formed `export.xml` of at least `target_bytes` bytes (a little more: whole
/// elements are written) to `writer` and returns the number of bytes written.
pub fn generate_apple_export<W: Write>(target_bytes: u64, mut writer: W) -> io::Result<u64> {
    let body: Vec<&str> = SAMPLE
        .lines()
        .map(str::trim)
        .filter(|l| {
            l.starts_with("<Record")
                || l.starts_with("<Workout")
                || l.starts_with("<ActivitySummary")
        })
        .collect();
    let header = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<HealthData locale=\"en_GB\">\n \
                  <ExportDate value=\"2016-04-15 07:27:26 +0100\"/>\n";
    let footer = "</HealthData>\n";
    let mut written = 0u64;
    writer.write_all(header.as_bytes())?;
    written += header.len() as u64;
    let mut day = 0i64;
    while written + (footer.len() as u64) < target_bytes {
        for line in &body {
            let shifted = shift_dates(line, Duration::days(day));
            writer.write_all(b" ")?;
            writer.write_all(shifted.as_bytes())?;
            writer.write_all(b"\n")?;
            written += shifted.len() as u64 + 2;
        }
        day += 1;
    }
    writer.write_all(footer.as_bytes())?;
    written += footer.len() as u64;
    writer.flush()?;
    Ok(written)
}

/// Shifts every `…Date="YYYY-MM-DD HH:MM:SS +ZZZZ"` and `dateComponents="YYYY-MM-DD"` value.
fn shift_dates(line: &str, by: Duration) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(q) = rest.find("=\"") {
        out.push_str(&rest[..q + 2]);
        rest = &rest[q + 2..];
        let end = rest.find('"').unwrap_or(rest.len());
        let value = &rest[..end];
        if let Ok(t) = DateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S %z") {
            out.push_str(&(t + by).format("%Y-%m-%d %H:%M:%S %z").to_string());
        } else if let Ok(d) = NaiveDate::parse_from_str(value, "%Y-%m-%d") {
            out.push_str(&(d + by).format("%Y-%m-%d").to_string());
        } else {
            out.push_str(value);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}
