//! Scope enforcement on every FHIR interaction: the bearer token is verified (401 with
//! `WWW-Authenticate: Bearer` when missing or invalid), then the interaction is checked against
//! its scopes (403 `forbidden`). `/metadata` and discovery stay public.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::jwt::AccessClaims;
use crate::auth::scopes::{Context, Permission, ScopeSet};
use crate::error::FhirError;
use crate::state::AppState;

/// The verified caller of a request, put in the request extensions.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's claims.
    pub claims: std::sync::Arc<AccessClaims>,
    /// Its scopes, parsed.
    pub scopes: std::sync::Arc<ScopeSet>,
}

impl Principal {
    /// The contexts whose scopes apply to this token. A patient's own token (an app acting for
    /// a signed-in patient) uses its `patient/` and `user/` scopes alike, both bounded by the
    /// patient's compartment.
    pub fn contexts(&self) -> &'static [Context] {
        if self.claims.patient.is_some() {
            &[Context::Patient, Context::User]
        } else if self.scopes.has_context(Context::System) {
            &[Context::System]
        } else {
            &[Context::User]
        }
    }

    /// The patient whose compartment bounds this token, for patient tokens.
    pub fn owner(&self) -> Option<&str> {
        self.claims.patient.as_deref()
    }

    /// Whether a resource in `compartment` (the patient it belongs to, if any) is within this
    /// token's reach: a patient token reaches its own compartment and resources of no patient
    /// (an Organization, a Device without a patient); other tokens reach everything.
    pub fn reaches(&self, compartment: Option<&str>) -> bool {
        match (self.owner(), compartment) {
            (Some(me), Some(c)) => me == c,
            _ => true,
        }
    }

    /// 403 unless the scopes allow `p` on `rt`.
    pub fn require(&self, rt: &str, p: Permission) -> Result<(), FhirError> {
        if self.scopes.allows(self.contexts(), rt, p) {
            Ok(())
        } else {
            Err(FhirError::Forbidden(format!(
                "the token's scopes do not allow '{p}' on {rt}"
            )))
        }
    }
}

fn unauthorized(reason: &str, invalid: bool) -> Response {
    tracing::debug!(reason, "request refused: authentication");
    let mut resp = FhirError::Unauthorized(if invalid {
        "the access token is invalid or expired".to_owned()
    } else {
        "an access token is required (Authorization: Bearer)".to_owned()
    })
    .into_response();
    let challenge = if invalid {
        r#"Bearer realm="fhirgate", error="invalid_token""#
    } else {
        r#"Bearer realm="fhirgate""#
    };
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    resp
}

/// Why no usable bearer token came with a request.
enum NoToken {
    /// No Authorization header.
    Missing,
    /// A token in the wrong place or of the wrong kind.
    Invalid(&'static str),
    /// More than one Authorization header.
    Several,
}

impl NoToken {
    fn into_response(self) -> Response {
        match self {
            Self::Missing => unauthorized("no Authorization header", false),
            Self::Invalid(reason) => unauthorized(reason, true),
            Self::Several => {
                FhirError::bad_request("Authorization", "send exactly one Authorization header")
                    .into_response()
            }
        }
    }
}

/// Reads the one bearer token of a request; tokens in the query string are refused.
fn bearer(req: &Request) -> Result<&str, NoToken> {
    if req
        .uri()
        .query()
        .is_some_and(|q| form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "access_token"))
    {
        return Err(NoToken::Invalid("token in the query string"));
    }
    let mut values = req.headers().get_all(header::AUTHORIZATION).iter();
    let value = match (values.next(), values.next()) {
        (Some(v), None) => v,
        (None, _) => return Err(NoToken::Missing),
        (Some(_), Some(_)) => return Err(NoToken::Several),
    };
    let value = value
        .to_str()
        .map_err(|_| NoToken::Invalid("Authorization is not ASCII"))?;
    match value.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(NoToken::Invalid("not a bearer token")),
    }
}

/// What an HTTP request asks to do, from its method and path below `/fhir`: the resource type
/// and the SMART permission. `None` for the base (Bundles check each entry themselves).
pub fn interaction(method: &Method, path: &str) -> Option<(String, Permission)> {
    let rest = path.strip_prefix("/fhir/")?;
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let rt = (*segs.first()?).to_owned();
    let rt = if rt == "_history" { "*".to_owned() } else { rt };
    // Compartment searches check the searched type; `$everything` checks each type it returns.
    if let (&Method::GET | &Method::HEAD, [_, _, op]) = (method, segs.as_slice()) {
        if *op == "$everything" {
            return None;
        }
        if *op != "_history" {
            return Some(((*op).to_owned(), Permission::Search));
        }
    }
    let p = match (method, segs.as_slice()) {
        (&Method::GET | &Method::HEAD, [_]) => Permission::Search,
        (&Method::GET | &Method::HEAD, [_, op]) if op.starts_with('$') => Permission::Search,
        (&Method::GET | &Method::HEAD, [_, "_history"]) => Permission::Search,
        (&Method::GET | &Method::HEAD, _) => Permission::Read,
        (&Method::POST, [_, "_search"]) => Permission::Search,
        (&Method::POST, [_]) => Permission::Create,
        (&Method::PUT, _) => Permission::Update,
        (&Method::DELETE, _) => Permission::Delete,
        _ => return None,
    };
    Some((rt, p))
}

/// A search or search-based operation, all of which filter by consent in their SQL:
/// `GET [base]/{type}?…`, `POST [base]/{type}/_search`, `GET [base]?_type=…`,
/// `GET [base]/Patient/{id}/{type}`, `GET [base]/Patient/{id}/$everything`,
/// `GET [base]/Observation/$lastn` and `GET [base]/Observation/$stats`.
fn is_type_search(method: &Method, path: &str) -> bool {
    if matches!(*method, Method::GET | Method::HEAD) && (path == "/fhir" || path == "/fhir/") {
        return true;
    }
    let Some(rest) = path.strip_prefix("/fhir/") else {
        return false;
    };
    let segs: Vec<&str> = rest.split('/').collect();
    match (method, segs.as_slice()) {
        (&Method::GET | &Method::HEAD, [rt]) => !rt.is_empty() && !rt.starts_with('_'),
        (&Method::GET | &Method::HEAD, ["Observation", "$lastn" | "$stats"]) => true,
        (&Method::GET | &Method::HEAD, ["Patient", id, op]) => {
            !id.starts_with('_') && (*op == "$everything" || fhirgate_codec::is_resource_type(op))
        }
        (&Method::POST, [rt, "_search"]) => !rt.starts_with('_'),
        _ => false,
    }
}

/// `GET [base]/{type}/{id}` or `GET [base]/{type}/{id}/_history/{vid}`.
fn is_instance_read(method: &Method, path: &str) -> bool {
    let Some(rest) = path.strip_prefix("/fhir/") else {
        return false;
    };
    let segs: Vec<&str> = rest.split('/').collect();
    matches!(*method, Method::GET | Method::HEAD)
        && match segs.as_slice() {
            [rt, id] => !rt.starts_with('_') && !id.starts_with('_') && !id.starts_with('$'),
            [rt, id, "_history", vid] => {
                !rt.starts_with('_') && !id.starts_with('_') && !vid.is_empty()
            }
            _ => false,
        }
}

/// Verifies a bearer token (signature, claims, revocation) into the caller.
fn authenticate(state: &AppState, token: &str) -> Result<Principal, Box<Response>> {
    let (claims, scopes) =
        match state
            .verified
            .verify(&state.signing, token, &state.issuer, &state.fhir_base)
        {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "token refused");
                return Err(Box::new(unauthorized("invalid token", true)));
            }
        };
    if state.revoked.contains(&claims.jti)
        || state.revoked.client_revoked(&claims.client_id, claims.iat)
    {
        return Err(Box::new(unauthorized("revoked token", true)));
    }
    Ok(Principal { claims, scopes })
}

/// The caller of a tokenless read when `--allow-anonymous-read` is on: `system/*.rs`.
fn anonymous_reader() -> Principal {
    static ANON: std::sync::OnceLock<Principal> = std::sync::OnceLock::new();
    ANON.get_or_init(|| Principal {
        claims: std::sync::Arc::new(AccessClaims {
            iss: String::new(),
            aud: String::new(),
            sub: "anonymous".into(),
            exp: i64::MAX,
            iat: 0,
            jti: String::new(),
            scope: "system/*.rs".into(),
            client_id: "anonymous".into(),
            patient: None,
            organization: None,
        }),
        scopes: std::sync::Arc::new(ScopeSet::parse("system/*.rs").unwrap_or_default()),
    })
    .clone()
}

/// The middleware: authenticate, then authorise the interaction by type and permission, then
/// run it; every outcome, refusals included, is audited (`audit::api::audited`).
pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let principal = match bearer(&req) {
        Ok(token) => authenticate(&state, token),
        Err(NoToken::Missing)
            if state.anonymous_read
                && matches!(*req.method(), Method::GET | Method::HEAD)
                && req.uri().path().starts_with("/fhir/") =>
        {
            Ok(anonymous_reader())
        }
        Err(no) => Err(Box::new(no.into_response())),
    };
    let ctx = crate::audit::api::context(principal.as_ref().ok(), &req);
    let (method, uri) = (req.method().clone(), req.uri().clone());
    let work = async move {
        let principal = match principal {
            Ok(p) => p,
            Err(resp) => return *resp,
        };
        if let Err(e) = authorise(&principal, &req) {
            return e.into_response();
        }
        req.extensions_mut().insert(principal);
        next.run(req).await
    };
    crate::audit::api::audited(&state, ctx, &method, &uri, work).await
}

/// 403 unless the token may do what the request asks.
fn authorise(principal: &Principal, req: &Request) -> Result<(), FhirError> {
    // Partner tokens see only what patients consented to. Reads by id and type searches are
    // checked against the patients' Consents by the handlers (`fhir::consent`); everything else a
    // partner could ask for (history, Bundles, operations, writes) stays refused until it is
    // filtered by consent too.
    let (method, path) = (req.method(), req.uri().path());
    if principal.claims.organization.is_some()
        && !is_instance_read(method, path)
        && !is_type_search(method, path)
    {
        return Err(crate::fhir::consent::refused());
    }
    if let Some((rt, p)) = interaction(req.method(), req.uri().path()) {
        principal.require(&rt, p)?;
    }
    Ok(())
}
