//! Pure mappers from wearable and health-app payloads to FHIR R4 resources.
//!
//! Bytes go in; `Observation` and `Device` resources (as `serde_json::Value`) and per-record
//! errors come out. There is no I/O, no database and no async here (STYLE.md §1).
//!
//! The mapping rules (LOINC and UCUM codes, time zones, de-duplication) follow
//! `docs/wearable-mapping.md`; every Observation carries the data-class category codings that
//! consent decisions use (DESIGN.md, "Consent").
//!
//! Entry points:
//! - [`map`] maps a whole payload held in memory;
//! - [`map_apple_health_stream`] maps an Apple Health `export.xml` of any size in constant memory;
//! - [`generate_apple_export`] writes a synthetic `export.xml` of a given size for benchmarks.

mod apple_xml;
mod fhir;
mod fitbit;
mod generate;
mod googlefit;
mod healthkit;
mod ids;
mod json;
mod metrics;
mod oura;
mod output;
mod time;
mod units;
mod withings;
mod workout;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

pub use apple_xml::{map_apple_health_stream, MappedRecord, StreamSummary};
pub use generate::generate_apple_export;

/// The provider or app a payload comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    /// Apple Health `export.xml` (export versions 3 to 14).
    AppleHealth,
    /// HealthKit samples as JSON, as an iOS app sends them.
    HealthKit,
    /// Fitbit Web API responses (legacy v1/v1.2 JSON).
    Fitbit,
    /// Google Fit REST `datasets` responses or Takeout "All Data" JSON.
    GoogleFit,
    /// Oura API v2 JSON.
    Oura,
    /// Withings API JSON (`getmeas`, activity, intraday activity, workouts, sleep).
    Withings,
}

impl Source {
    /// Every source, in a stable order.
    pub const ALL: [Source; 6] = [
        Source::AppleHealth,
        Source::HealthKit,
        Source::Fitbit,
        Source::GoogleFit,
        Source::Oura,
        Source::Withings,
    ];

    /// The command-line name of the source (`apple-health`, `healthkit`, `fitbit`, …); it is
    /// also the last segment of the identifier system and local CodeSystem URLs.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::AppleHealth => "apple-health",
            Source::HealthKit => "healthkit",
            Source::Fitbit => "fitbit",
            Source::GoogleFit => "google-fit",
            Source::Oura => "oura",
            Source::Withings => "withings",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The name given to [`Source::from_str`] is not a known source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown source '{0}' (expected apple-health, healthkit, fitbit, google-fit, oura or withings)"
)]
pub struct UnknownSource(pub String);

impl FromStr for Source {
    type Err = UnknownSource;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Source::ALL
            .into_iter()
            .find(|src| src.as_str() == s)
            .ok_or_else(|| UnknownSource(s.to_owned()))
    }
}

/// The unit system a Fitbit response was requested in (Fitbit picks units from the
/// `Accept-Language` header, not from anything in the body).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnitSystem {
    /// Metric units (kg, km, cm): no `Accept-Language`, or any locale other than en_US/en_GB.
    #[default]
    Metric,
    /// `en_US`: pounds, miles, inches.
    UnitedStates,
    /// `en_GB`: stone for weight (sent as pounds by the API), kilometres for distance.
    UnitedKingdom,
}

/// What the mapper needs to know besides the payload.
#[derive(Debug, Clone)]
pub struct MapContext {
    /// Logical id of the Patient the data belongs to; becomes `subject` = `Patient/<id>`.
    pub patient_id: String,
    /// The user's time zone (e.g. the Fitbit profile `timezone`). Used for provider times that
    /// carry no offset; when it is `None` such records become [`RecordError`]s, never UTC.
    pub default_time_zone: Option<chrono_tz::Tz>,
    /// Units of Fitbit responses (from the `Accept-Language` the request used).
    pub fitbit_units: UnitSystem,
}

impl MapContext {
    /// A context for `patient_id` with no default time zone and metric Fitbit units.
    pub fn new(patient_id: impl Into<String>) -> Self {
        MapContext {
            patient_id: patient_id.into(),
            default_time_zone: None,
            fitbit_units: UnitSystem::Metric,
        }
    }
}

/// The result of mapping one payload.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MapOutput {
    /// Observations and Devices, each with a deterministic `id`. Devices come before the
    /// first Observation that references them.
    pub resources: Vec<serde_json::Value>,
    /// Records that could not be mapped; the rest of the payload still mapped.
    pub errors: Vec<RecordError>,
    /// Records deliberately not mapped (goals, deleted records, unsupported metrics, …),
    /// counted per reason.
    pub skipped: BTreeMap<String, u64>,
}

/// One record that could not be mapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// Where the record is: `line N` for XML, a JSON path such as `$.body.measuregrps[2]` for JSON.
    pub location: String,
    /// Why it could not be mapped.
    pub reason: String,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.reason)
    }
}

/// The whole input cannot be read as a payload of the given source.
#[derive(Debug, thiserror::Error)]
pub enum MapError {
    /// The bytes are not well-formed JSON (after removing a UTF-8 BOM).
    #[error("not valid JSON: {0}")]
    Json(String),
    /// The bytes are not well-formed XML, or the document ends early.
    #[error("not a readable XML document: {0}")]
    Xml(String),
    /// Well-formed, but not a payload shape this source produces.
    #[error("not a recognised {provider} payload: {reason}")]
    Unrecognised {
        /// The source the caller named.
        provider: Source,
        /// What was expected.
        reason: String,
    },
    /// The provider reported an error instead of data (e.g. Withings `status` ≠ 0).
    #[error("the {provider} response reports an error: {reason}")]
    ProviderError {
        /// The source the caller named.
        provider: Source,
        /// The provider's status or message.
        reason: String,
    },
    /// Reading the input failed (streaming API only).
    #[error("reading the input failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Maps one payload of `source` held in memory.
///
/// A UTF-8 BOM at the start is ignored. Records that cannot be mapped become
/// [`MapOutput::errors`]; only a payload that cannot be read at all is a [`MapError`].
pub fn map(source: Source, bytes: &[u8], ctx: &MapContext) -> Result<MapOutput, MapError> {
    let bytes = json::strip_bom(bytes);
    match source {
        Source::AppleHealth => apple_xml::map_bytes(bytes, ctx),
        Source::HealthKit => healthkit::map(bytes, ctx),
        Source::Fitbit => fitbit::map(bytes, ctx),
        Source::GoogleFit => googlefit::map(bytes, ctx),
        Source::Oura => oura::map(bytes, ctx),
        Source::Withings => withings::map(bytes, ctx),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_names_round_trip() {
        for s in Source::ALL {
            assert_eq!(s.as_str().parse::<Source>(), Ok(s));
        }
        assert!("garmin".parse::<Source>().is_err());
    }
}
