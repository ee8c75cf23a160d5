//! The FHIR side of writes: the statuses of [`Written`] outcomes and `If-Match` ETags. The
//! write service itself is [`crate::storage::write`].

use axum::http::StatusCode;

pub use crate::storage::write::{
    apply, check_resource, instant, new_id, now, WriteKind, WriteOp, WriteResult, Written,
};

/// The HTTP status of a write's outcome: 201 created, 200 updated, 204 deleted (or nothing to
/// delete).
pub fn status(written: Written) -> StatusCode {
    match written {
        Written::Created => StatusCode::CREATED,
        Written::Updated => StatusCode::OK,
        Written::Deleted | Written::NothingDeleted => StatusCode::NO_CONTENT,
    }
}

/// `W/"n"` → n. Also accepts a bare `"n"` and `n`, as some clients send.
pub fn parse_etag(v: &str) -> Option<i32> {
    v.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .ok()
}
