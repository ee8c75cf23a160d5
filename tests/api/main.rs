//! API integration tests against a real PostgreSQL and the real server over HTTP.

mod access;
mod audit;
mod auth;
mod bundles;
mod cli;
mod clients;
mod concurrency;
mod conformance;
mod consent;
mod crud;
mod encryption;
mod hardening;
mod helpers;
mod independent;
mod ingest;
mod narrative;
mod newcomer;
mod noninterference;
mod oauth_interop;
mod search;
mod search_modifiers;
mod smart_app;
mod smart_clients;
mod spec_examples;
mod validation;
