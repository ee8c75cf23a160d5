//! FHIR search (<https://hl7.org/fhir/R4/search.html>) driven by the official R4 SearchParameter
//! definitions: index rows written with every version ([`index`]), request parsing ([`query`]),
//! and SQL over the typed index tables ([`sql`]).

pub mod exec;
pub mod index;
pub mod params;
pub mod query;
pub mod reindex;

pub use params::{ParamIds, Pid};
