//! Scope enforcement on every FHIR interaction: the bearer token is verified (401 with
//! `WWW-Authenticate: Bearer` when missing or invalid), then the interaction is checked against
//! its scopes (403 `forbidden`). `/metadata` and discovery stay public.

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::access::route::{Interaction, Unrouted};
use crate::access::Policy;
use crate::auth::jwt::AccessClaims;
use crate::auth::scopes::{Context, ScopeSet};
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

/// 400 naming the parameter when a search parameter (in the URL or `If-None-Exist`) holds a
/// control character: R4 strings may not, and no stored value can match one.
fn plain_text_query(req: &Request) -> Result<(), FhirError> {
    let conditional = req
        .headers()
        .get("if-none-exist")
        .and_then(|v| v.to_str().ok());
    for query in [req.uri().query(), conditional].into_iter().flatten() {
        for (k, v) in form_urlencoded::parse(query.trim_start_matches('?').as_bytes()) {
            if fhirgate_codec::has_control_character(&k)
                || fhirgate_codec::has_control_character(&v)
            {
                let name: String = k.chars().filter(|c| !c.is_control()).take(64).collect();
                return Err(FhirError::bad_request(
                    &name,
                    "the search parameter contains a control character (only tab, CR and LF are allowed)",
                ));
            }
        }
    }
    Ok(())
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

/// The middleware: classify the request once ([`Interaction`]), authenticate, authorise the
/// interaction by type and permission, build the request's access [`Policy`], then run it;
/// every outcome, refusals included, is audited (`audit::api::audited`). The handlers find the
/// principal, the interaction and the policy in the request extensions.
pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let interaction = match Interaction::of_request(&req) {
        Ok(i) => i,
        Err(Unrouted::NotFound) => return crate::fhir::fallback().await.into_response(),
        Err(Unrouted::MethodNotAllowed) => {
            return FhirError::MethodNotAllowed("this method is not allowed on this URL".into())
                .into_response()
        }
    };
    if let Err(e) = plain_text_query(&req) {
        return e.into_response();
    }
    let principal = match bearer(&req) {
        Ok(token) => authenticate(&state, token),
        Err(NoToken::Missing)
            if state.anonymous_read
                && matches!(*req.method(), Method::GET | Method::HEAD)
                && interaction.reads_only() =>
        {
            Ok(anonymous_reader())
        }
        Err(no) => Err(Box::new(no.into_response())),
    };
    let ctx = crate::audit::api::context(principal.as_ref().ok(), &req, &interaction);
    let uri = req.uri().clone();
    let audited_as = interaction.clone();
    let auditing = state.clone();
    let work = async move {
        let principal = match principal {
            Ok(p) => p,
            Err(resp) => return *resp,
        };
        let policy = Policy::of(&principal, &interaction, &crate::search::exec::ctx(&state));
        if let Err(e) = policy.permits(&interaction) {
            return e.into_response();
        }
        req.extensions_mut().insert(std::sync::Arc::new(policy));
        req.extensions_mut().insert(interaction);
        req.extensions_mut().insert(principal);
        next.run(req).await
    };
    crate::audit::api::audited(&auditing, ctx, &audited_as, &uri, work).await
}
