//! `FhirError`: every failure of the API, and the only place where one becomes an
//! OperationOutcome (<https://hl7.org/fhir/R4/operationoutcome.html>) with its HTTP status.
//!
//! Server-side failures (database, internal) are logged with their cause and answered with a
//! generic message: no SQL, no resource content and no stack detail ever reaches a client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// The OperationOutcome `issue.code` values we emit (<https://hl7.org/fhir/R4/valueset-issue-type.html>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    /// `invalid`: content invalid against the specification or a profile.
    Invalid,
    /// `structure`: a structural issue (not well formed).
    Structure,
    /// `value`: a value does not match its datatype.
    Value,
    /// `code-invalid`: a code is not in its value set.
    CodeInvalid,
    /// `not-found`.
    NotFound,
    /// `deleted`.
    Deleted,
    /// `conflict`: a version or uniqueness conflict.
    Conflict,
    /// `duplicate`: more than one match where one was needed.
    Duplicate,
    /// `not-supported`.
    NotSupported,
    /// `too-costly`: the request is too large.
    TooCostly,
    /// `processing`.
    Processing,
    /// `exception`: an unexpected server failure.
    Exception,
    /// `transient`: try again later.
    Transient,
    /// `informational`.
    Informational,
    /// `security`.
    Security,
    /// `login`.
    Login,
    /// `forbidden`.
    Forbidden,
    /// `timeout`.
    Timeout,
}

impl IssueType {
    /// The FHIR code.
    pub fn code(self) -> &'static str {
        match self {
            Self::Invalid => "invalid",
            Self::Structure => "structure",
            Self::Value => "value",
            Self::CodeInvalid => "code-invalid",
            Self::NotFound => "not-found",
            Self::Deleted => "deleted",
            Self::Conflict => "conflict",
            Self::Duplicate => "duplicate",
            Self::NotSupported => "not-supported",
            Self::TooCostly => "too-costly",
            Self::Processing => "processing",
            Self::Exception => "exception",
            Self::Transient => "transient",
            Self::Informational => "informational",
            Self::Security => "security",
            Self::Login => "login",
            Self::Forbidden => "forbidden",
            Self::Timeout => "timeout",
        }
    }
}

/// One issue of an outcome: its type, the message and the elements (`expression`) concerned.
#[derive(Debug, Clone)]
pub struct OutcomeIssue {
    /// Issue type.
    pub code: IssueType,
    /// Text for a person.
    pub message: String,
    /// FHIRPath expressions of the elements or the names of the parameters at fault.
    pub expression: Vec<String>,
}

impl OutcomeIssue {
    /// An issue with a message and no location.
    pub fn new(code: IssueType, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            expression: Vec::new(),
        }
    }

    /// An issue that names the element or parameter at fault.
    pub fn at(code: IssueType, expression: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            expression: vec![expression.into()],
        }
    }
}

/// API error. Every variant renders as a FHIR OperationOutcome (see [`FhirError::client_response`]).
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    /// 404: the resource, version or route does not exist.
    #[error("{0}")]
    NotFound(String),
    /// 410: the resource was deleted.
    #[error("{resource_type}/{id} has been deleted")]
    Gone {
        /// Type of the deleted resource.
        resource_type: String,
        /// Its id.
        id: String,
        /// Version of the tombstone, sent back as the ETag.
        version: i32,
    },
    /// 400: the request itself is malformed (bad parameter, bad header, bad URL).
    #[error("{}", .0.message)]
    BadRequest(OutcomeIssue),
    /// 400/422: the body is not an acceptable resource; `status` is 400 or 422.
    #[error("invalid resource")]
    InvalidResource {
        /// 400 for syntax and structure, 422 for values and codes.
        status: StatusCode,
        /// What is wrong, element by element.
        issues: Vec<OutcomeIssue>,
    },
    /// 409: a concurrent change won.
    #[error("{0}")]
    Conflict(String),
    /// 412: `If-Match` did not match, or a conditional operation matched more than one resource.
    #[error("{0}")]
    PreconditionFailed(String),
    /// 413: the body is larger than the configured limit.
    #[error("request body is larger than {0} bytes")]
    PayloadTooLarge(usize),
    /// 408: the client stopped sending the request (a body shorter than its length, or a pause
    /// longer than the body timeout).
    #[error("{0}")]
    RequestTimeout(String),
    /// 414: the request target is longer than the server reads.
    #[error("the URL is longer than {0} bytes; send long searches as POST [type]/_search")]
    UriTooLong(usize),
    /// An error status made outside the FHIR handlers, with its reason.
    #[error("{1}")]
    Status(StatusCode, String),
    /// 413: a Bundle has more entries than the server takes in one request.
    #[error("the Bundle has more than {0} entries; split it into Bundles of at most {0}")]
    TooManyEntries(usize),
    /// 415: a content type we do not read.
    #[error("unsupported content type {0}")]
    UnsupportedMediaType(String),
    /// 401: no valid access token. The guard adds `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: the token's scopes (or the patient's consent) do not allow this. Reveals no data.
    #[error("{0}")]
    Forbidden(String),
    /// 405: the method is not allowed on this URL.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 501: the interaction is not implemented.
    #[error("{0} is not supported")]
    NotSupported(String),
    /// 503: a dependency (database, key provider) is unavailable; retry later.
    #[error("service unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// 500: database failure. Details are logged, never sent.
    #[error("database error")]
    Database(#[from] sqlx::Error),
    /// 500: anything else unexpected. Details are logged, never sent.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// Result type of the API.
pub type Result<T, E = FhirError> = std::result::Result<T, E>;

impl FhirError {
    /// A 400 that names the parameter or header at fault.
    pub fn bad_request(expression: &str, message: impl Into<String>) -> Self {
        Self::BadRequest(OutcomeIssue::at(IssueType::Invalid, expression, message))
    }

    /// 404 for `type/id`.
    pub fn not_found(rt: &str, id: &str) -> Self {
        Self::NotFound(format!("{rt}/{id} is not known"))
    }

    /// The HTTP status and the issues this error is reported with. The single mapping table.
    pub fn client_response(&self) -> (StatusCode, Vec<OutcomeIssue>) {
        use IssueType as T;
        let one = |code, msg: String| vec![OutcomeIssue::new(code, msg)];
        match self {
            Self::NotFound(m) => (StatusCode::NOT_FOUND, one(T::NotFound, m.clone())),
            Self::Gone { .. } => (StatusCode::GONE, one(T::Deleted, self.to_string())),
            Self::BadRequest(issue) => (StatusCode::BAD_REQUEST, vec![issue.clone()]),
            Self::InvalidResource { status, issues } => (*status, issues.clone()),
            Self::Conflict(m) => (StatusCode::CONFLICT, one(T::Conflict, m.clone())),
            Self::PreconditionFailed(m) => {
                (StatusCode::PRECONDITION_FAILED, one(T::Conflict, m.clone()))
            }
            Self::PayloadTooLarge(_) | Self::TooManyEntries(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                one(T::TooCostly, self.to_string()),
            ),
            Self::UriTooLong(_) => (
                StatusCode::URI_TOO_LONG,
                one(T::TooCostly, self.to_string()),
            ),
            Self::Status(status, m) => (
                *status,
                one(
                    match status.as_u16() {
                        404 => T::NotFound,
                        405 | 501 => T::NotSupported,
                        408 => T::Timeout,
                        413 | 414 | 431 => T::TooCostly,
                        401 => T::Login,
                        403 => T::Forbidden,
                        406 | 415 => T::NotSupported,
                        s if s >= 500 => T::Exception,
                        _ => T::Invalid,
                    },
                    m.clone(),
                ),
            ),
            Self::RequestTimeout(m) => (StatusCode::REQUEST_TIMEOUT, one(T::Timeout, m.clone())),
            Self::UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                one(T::NotSupported, self.to_string()),
            ),
            Self::Unauthorized(m) => (StatusCode::UNAUTHORIZED, one(T::Login, m.clone())),
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, one(T::Forbidden, m.clone())),
            Self::MethodNotAllowed(m) => (
                StatusCode::METHOD_NOT_ALLOWED,
                one(T::NotSupported, m.clone()),
            ),
            Self::NotSupported(_) => (
                StatusCode::NOT_IMPLEMENTED,
                one(T::NotSupported, self.to_string()),
            ),
            Self::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                one(
                    T::Transient,
                    "the service is temporarily unavailable; retry later".into(),
                ),
            ),
            Self::Database(e) if is_unavailable(e) => (
                StatusCode::SERVICE_UNAVAILABLE,
                one(
                    T::Transient,
                    "the database is temporarily unavailable; retry later".into(),
                ),
            ),
            Self::Database(_) | Self::Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                one(T::Exception, "internal server error".into()),
            ),
        }
    }
}

/// Connection-level failures mean "try again", not "we have a bug".
fn is_unavailable(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    ) || e
        .as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c.starts_with("08") || c == "57P01" || c == "25006")
}

/// Builds an OperationOutcome resource from issues.
pub fn outcome(issues: &[OutcomeIssue], severity: &str) -> Value {
    let issue: Vec<Value> = issues
        .iter()
        .map(|i| {
            let mut v =
                json!({"severity": severity, "code": i.code.code(), "diagnostics": i.message});
            if !i.expression.is_empty() {
                v["expression"] = json!(i.expression);
            }
            v
        })
        .collect();
    json!({"resourceType": "OperationOutcome", "issue": issue})
}

/// Why a request failed, in words safe for the audit trail: the issue type and the elements or
/// parameters at fault for bad input (whose messages may quote the input), the message otherwise.
/// Put in the response extensions of every error.
#[derive(Debug, Clone)]
pub struct Diagnostics(pub String);

impl Diagnostics {
    /// The description of `error`, reported with `issues`.
    pub fn of(error: &FhirError, issues: &[OutcomeIssue]) -> Self {
        let Some(first) = issues.first() else {
            return Diagnostics(error.to_string());
        };
        let text = match error {
            FhirError::BadRequest(_) | FhirError::InvalidResource { .. } => {
                let at: Vec<&str> = issues
                    .iter()
                    .flat_map(|i| i.expression.iter().map(String::as_str))
                    .collect();
                if at.is_empty() {
                    format!("{} input", first.code.code())
                } else {
                    format!("{} input at {}", first.code.code(), at.join(", "))
                }
            }
            _ => first.message.clone(),
        };
        Diagnostics(text.chars().take(300).collect())
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let (status, issues) = self.client_response();
        let diagnostics = Diagnostics::of(&self, &issues);
        if status.is_server_error() {
            // `{:#}` prints the anyhow context chain; sqlx errors carry no bound values.
            match &self {
                Self::Unavailable(e) | Self::Internal(e) => {
                    tracing::error!(error = %format!("{e:#}"), "request failed")
                }
                Self::Database(e) => tracing::error!(error = %e, "database error"),
                _ => tracing::error!(error = %self, "request failed"),
            }
        }
        let body = serde_json::to_vec(&outcome(&issues, "error")).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.extensions_mut().insert(diagnostics);
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/fhir+json; charset=utf-8"),
        );
        if let Self::Gone { version, .. } = self {
            if let Ok(v) = HeaderValue::from_str(&format!("W/\"{version}\"")) {
                h.insert(header::ETAG, v);
            }
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

impl From<fhirgate_codec::CodecError> for FhirError {
    fn from(e: fhirgate_codec::CodecError) -> Self {
        match e {
            fhirgate_codec::CodecError::Syntax {
                message,
                line,
                column,
            } => Self::InvalidResource {
                status: StatusCode::BAD_REQUEST,
                issues: vec![OutcomeIssue::new(
                    IssueType::Structure,
                    if line > 0 {
                        format!("the body is not valid: {message} at line {line} column {column}")
                    } else {
                        format!("the body is not valid: {message}")
                    },
                )],
            },
            fhirgate_codec::CodecError::Invalid(issues) => Self::from_codec_issues(issues),
        }
    }
}

impl FhirError {
    /// Turns validation issues into a 400 (structure) or 422 (values and codes).
    pub fn from_codec_issues(issues: Vec<fhirgate_codec::Issue>) -> Self {
        use fhirgate_codec::IssueKind;
        let all_structure = issues.iter().all(|i| i.kind == IssueKind::Structure);
        let issues = issues
            .into_iter()
            .map(|i| {
                let code = match i.kind {
                    IssueKind::Structure => IssueType::Structure,
                    IssueKind::Value => IssueType::Value,
                    IssueKind::CodeInvalid => IssueType::CodeInvalid,
                };
                OutcomeIssue {
                    code,
                    message: i.message,
                    expression: if i.expression.is_empty() {
                        vec![]
                    } else {
                        vec![i.expression]
                    },
                }
            })
            .collect();
        let status = if all_structure {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::UNPROCESSABLE_ENTITY
        };
        Self::InvalidResource { status, issues }
    }
}
