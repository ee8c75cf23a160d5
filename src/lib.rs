//! fhirgate: a FHIR R4 server for personal health data, with envelope encryption, consent and
//! audit built in. See `README.md` and `../shared/docs/DESIGN.md` for the architecture.

pub mod access;
pub mod audit;
pub mod auth;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod doctor;
pub mod error;
pub mod fhir;
pub mod fuzz;
pub mod health;
pub mod ingest;
pub mod pg;
pub mod search;
pub mod serve;
pub mod startup;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod ui;

pub use startup::app;
