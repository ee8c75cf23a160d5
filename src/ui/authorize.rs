//! The authorization endpoint (RFC 6749 §4.1.1, SMART App Launch "standalone launch") and the
//! approval page.
//!
//! Before anything is redirected, the client and its `redirect_uri` are checked: an unknown
//! client or a URI that is not exactly one of its registered ones gets an error page, never a
//! redirect. After that, errors go back to the app as `error=…&state=…`: a response type other
//! than `code`, a missing `state`, PKCE other than S256 (or none), an `aud` that is not this FHIR
//! server, and scopes of which nothing can be granted.
//!
//! The granted scopes are what was asked for and registered both, minus `system/` scopes (an app
//! acts for a person). The page names them in plain sentences; Allow issues a one-minute,
//! single-use code, Deny sends `access_denied`.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use crate::auth::clients::{self, Client};
use crate::auth::grants::{self, Approval};
use crate::auth::scopes::{Context, Permission, ResourceScope, ScopeSet};
use crate::state::AppState;
use crate::ui::{csrf, csrf_ok, csrf_refused, current_user, esc, failure_page, page, see_other};

/// Scopes other than resource scopes that an app may be granted.
const APP_SCOPES: [&str; 6] = [
    "openid",
    "fhirUser",
    "profile",
    "launch/patient",
    "offline_access",
    "online_access",
];

/// The parameters of an authorization request (query on GET, form on POST with the decision).
#[derive(Debug, Default, Deserialize)]
pub struct AuthorizeParams {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    aud: Option<String>,
    nonce: Option<String>,
    launch: Option<String>,
    csrf: Option<String>,
    decision: Option<String>,
}

/// A checked request.
struct Checked {
    client: Client,
    redirect_uri: String,
    state: String,
    challenge: String,
    granted: ScopeSet,
    nonce: Option<String>,
}

/// How a request is refused.
enum Refusal {
    /// Shown on a page: the redirect URI cannot be trusted.
    Page(String),
    /// Sent back to the app.
    Redirect {
        uri: String,
        state: Option<String>,
        error: &'static str,
        description: String,
    },
}

impl Refusal {
    fn into_response(self) -> Response {
        match self {
            Self::Page(msg) => page(
                StatusCode::BAD_REQUEST,
                "Cannot continue",
                &format!(
                    "<h1>This sign-in request cannot continue</h1><p class=\"error\">{}</p>\
<p class=\"muted\">The app that sent you here is misconfigured. You have not been redirected.</p>",
                    esc(&msg)
                ),
                &[],
            ),
            Self::Redirect {
                uri,
                state,
                error,
                description,
            } => {
                let mut pairs = vec![
                    ("error", error.to_owned()),
                    ("error_description", description),
                ];
                if let Some(s) = state {
                    pairs.push(("state", s));
                }
                see_other(&with_query(&uri, &pairs), &[])
            }
        }
    }
}

/// `uri` with `pairs` appended to its query.
fn with_query(uri: &str, pairs: &[(&str, String)]) -> String {
    let q = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{q}")
}

async fn check(state: &AppState, p: &AuthorizeParams) -> Result<Checked, Refusal> {
    let client_id = p
        .client_id
        .as_deref()
        .ok_or_else(|| Refusal::Page("client_id is missing".into()))?;
    let client = match clients::get(&state.db, client_id).await {
        Ok(Some(c)) if c.kind == "app" => c,
        Ok(_) => return Err(Refusal::Page("the app is not registered".into())),
        Err(e) => {
            tracing::error!(error = %e, "client lookup failed");
            return Err(Refusal::Page("try again in a moment".into()));
        }
    };
    let redirect_uri = p
        .redirect_uri
        .clone()
        .ok_or_else(|| Refusal::Page("redirect_uri is missing".into()))?;
    if !client.redirect_uris.contains(&redirect_uri) {
        return Err(Refusal::Page(
            "the redirect_uri is not registered for this app".into(),
        ));
    }
    let st = p.state.clone().filter(|s| !s.is_empty());
    let refuse = |error: &'static str, description: &str| Refusal::Redirect {
        uri: redirect_uri.clone(),
        state: st.clone(),
        error,
        description: description.to_owned(),
    };
    if p.response_type.as_deref() != Some("code") {
        return Err(refuse(
            "unsupported_response_type",
            "response_type must be code",
        ));
    }
    let Some(st_value) = st.clone() else {
        return Err(refuse("invalid_request", "state is required"));
    };
    if p.code_challenge_method.as_deref() != Some("S256") {
        return Err(refuse(
            "invalid_request",
            "PKCE is required with code_challenge_method=S256",
        ));
    }
    let challenge = p
        .code_challenge
        .clone()
        .filter(|c| grants::valid_challenge(c))
        .ok_or_else(|| refuse("invalid_request", "code_challenge is missing or malformed"))?;
    let aud_ok = p
        .aud
        .as_deref()
        .is_some_and(|a| a.trim_end_matches('/') == state.fhir_base);
    if !aud_ok {
        return Err(refuse(
            "invalid_request",
            "aud must be the base URL of this FHIR server",
        ));
    }
    if p.launch.is_some() {
        return Err(refuse(
            "invalid_request",
            "EHR launch is not supported; use a standalone launch",
        ));
    }
    let requested = ScopeSet::parse(p.scope.as_deref().unwrap_or_default())
        .map_err(|e| refuse("invalid_scope", &e.to_string()))?;
    let registered = ScopeSet::parse(&client.scopes).unwrap_or_default();
    let mut granted = requested.intersect(&registered);
    granted.resources.retain(|r| r.context != Context::System);
    granted.other.retain(|o| APP_SCOPES.contains(&o.as_str()));
    if granted.resources.is_empty() && granted.other.is_empty() {
        return Err(refuse(
            "invalid_scope",
            "none of the requested scopes can be granted to this app",
        ));
    }
    let nonce = p.nonce.clone().filter(|n| !n.is_empty() && n.len() <= 512);
    Ok(Checked {
        client,
        redirect_uri,
        state: st_value,
        challenge,
        granted,
        nonce,
    })
}

fn type_words(rt: &str) -> String {
    match rt {
        "*" => "all of your health records".to_owned(),
        "Observation" => {
            "your observations (measurements such as heart rate, steps, sleep and weight)"
                .to_owned()
        }
        "Patient" => "your profile (name, birth date and contact details)".to_owned(),
        "Consent" => "your sharing consents".to_owned(),
        "Device" => "your devices".to_owned(),
        "Provenance" => "where your records came from".to_owned(),
        other => {
            let mut words = String::new();
            for (i, ch) in other.chars().enumerate() {
                if ch.is_uppercase() && i > 0 {
                    words.push(' ');
                }
                words.extend(ch.to_lowercase());
            }
            format!("your {words} records")
        }
    }
}

fn permission_words(perms: &[Permission]) -> String {
    let mut verbs: Vec<&str> = Vec::new();
    if perms.contains(&Permission::Read) && perms.contains(&Permission::Search) {
        verbs.push("read and search");
    } else if perms.contains(&Permission::Read) {
        verbs.push("read");
    } else if perms.contains(&Permission::Search) {
        verbs.push("search");
    }
    if perms.contains(&Permission::Create) {
        verbs.push("add to");
    }
    if perms.contains(&Permission::Update) {
        verbs.push("change");
    }
    if perms.contains(&Permission::Delete) {
        verbs.push("delete");
    }
    match verbs.as_slice() {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// One scope as a plain sentence for the approval page.
pub fn describe(scope: &ResourceScope) -> String {
    let mut s = format!(
        "{} {}",
        permission_words(&scope.permissions),
        type_words(&scope.resource_type)
    );
    let only: Vec<String> = scope
        .filters
        .iter()
        .map(|(k, v)| {
            let v = v.rsplit('|').next().unwrap_or(v);
            format!("{} {}", k.replace('-', " "), v.replace('-', " "))
        })
        .collect();
    if !only.is_empty() {
        s.push_str(&format!(" (only {})", only.join(", ")));
    }
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => s,
    }
}

fn describe_other(scope: &str) -> Option<&'static str> {
    Some(match scope {
        "openid" | "profile" => "Confirm who you are",
        "fhirUser" => "Know which health record is yours",
        "launch/patient" => "Open your health record when it starts",
        "offline_access" => "Keep this access when you are not using the app, until you revoke it",
        "online_access" => "Keep this access while you are using the app",
        _ => return None,
    })
}

/// `GET /auth/authorize`.
pub async fn authorize(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let raw = raw.unwrap_or_default();
    let p: AuthorizeParams = serde_urlencoded_pairs(&raw);
    let checked = match check(&state, &p).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let Some(user) = current_user(&state, &headers).await else {
        let next = format!("/auth/authorize?{raw}");
        let login = format!(
            "/auth/login?{}",
            form_urlencoded::Serializer::new(String::new())
                .append_pair("next", &next)
                .finish()
        );
        return see_other(&login, &[]);
    };
    approval_page(&state, &headers, &p, &checked, &user.patient_id)
}

/// Parses a query into the parameters; a parameter given twice is refused by taking neither
/// (RFC 6749 §3.1: parameters must not be repeated).
fn serde_urlencoded_pairs(raw: &str) -> AuthorizeParams {
    let mut seen = std::collections::HashMap::<String, Option<String>>::new();
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        seen.entry(k.into_owned())
            .and_modify(|e| *e = None)
            .or_insert(Some(v.into_owned()));
    }
    let mut take = |k: &str| seen.remove(k).flatten();
    AuthorizeParams {
        response_type: take("response_type"),
        client_id: take("client_id"),
        redirect_uri: take("redirect_uri"),
        scope: take("scope"),
        state: take("state"),
        code_challenge: take("code_challenge"),
        code_challenge_method: take("code_challenge_method"),
        aud: take("aud"),
        nonce: take("nonce"),
        launch: take("launch"),
        csrf: None,
        decision: None,
    }
}

fn approval_page(
    state: &AppState,
    headers: &HeaderMap,
    p: &AuthorizeParams,
    c: &Checked,
    patient_id: &str,
) -> Response {
    let token = csrf(state, headers);
    let mut items = String::new();
    for r in &c.granted.resources {
        items.push_str(&format!("<li>{}</li>", esc(&describe(r))));
    }
    let mut seen = Vec::new();
    for o in &c.granted.other {
        if let Some(d) = describe_other(o) {
            if !seen.contains(&d) {
                seen.push(d);
                items.push_str(&format!("<li>{}</li>", esc(d)));
            }
        }
    }
    let hidden: String = [
        ("response_type", p.response_type.as_deref()),
        ("client_id", p.client_id.as_deref()),
        ("redirect_uri", p.redirect_uri.as_deref()),
        ("scope", p.scope.as_deref()),
        ("state", p.state.as_deref()),
        ("code_challenge", p.code_challenge.as_deref()),
        ("code_challenge_method", p.code_challenge_method.as_deref()),
        ("aud", p.aud.as_deref()),
        ("nonce", p.nonce.as_deref()),
        ("csrf", Some(token.token.as_str())),
    ]
    .iter()
    .filter_map(|(k, v)| {
        v.map(|v| format!("<input type=\"hidden\" name=\"{k}\" value=\"{}\">", esc(v)))
    })
    .collect();
    let body = format!(
        r#"<h1>Allow <strong id="app">{app}</strong> to use your health record?</h1>
<p>If you allow it, <strong>{app}</strong> will be able to:</p>
<ul class="scopes" id="scopes">{items}</ul>
<p class="muted">Record: Patient/{pid}. You can revoke this access at any time. After you choose, you go back to {dest}.</p>
<form method="post" action="/auth/authorize">{hidden}
<button type="submit" name="decision" value="allow" id="allow">Allow</button>
<button type="submit" name="decision" value="deny" id="deny">Deny</button></form>"#,
        app = esc(&c.client.client_id),
        pid = esc(patient_id),
        dest = esc(&c.redirect_uri),
    );
    page(
        StatusCode::OK,
        "Allow access",
        &body,
        &token.set_cookie.into_iter().collect::<Vec<_>>(),
    )
}

/// `POST /auth/authorize`: the patient's decision.
pub async fn decide(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(p): Form<AuthorizeParams>,
) -> Response {
    if !csrf_ok(&state, &headers, p.csrf.as_deref()) {
        return csrf_refused();
    }
    let c = match check(&state, &p).await {
        Ok(c) => c,
        Err(r) => return r.into_response(),
    };
    let Some(user) = current_user(&state, &headers).await else {
        return see_other("/auth/login", &[]);
    };
    if p.decision.as_deref() != Some("allow") {
        tracing::info!(client = %c.client.client_id, "access denied by the patient");
        let pairs = [
            ("error", "access_denied".to_owned()),
            (
                "error_description",
                "the patient did not allow access".to_owned(),
            ),
            ("state", c.state),
        ];
        return see_other(&with_query(&c.redirect_uri, &pairs), &[]);
    }
    let approval = Approval {
        client_id: c.client.client_id.clone(),
        user,
        scope: c.granted.to_string(),
        redirect_uri: c.redirect_uri.clone(),
        code_challenge: c.challenge,
        nonce: c.nonce,
    };
    match grants::issue_code(&state, &approval).await {
        Ok(code) => {
            tracing::info!(client = %approval.client_id, "authorization code issued");
            see_other(
                &with_query(&c.redirect_uri, &[("code", code), ("state", c.state)]),
                &[],
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "could not issue a code");
            failure_page()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> String {
        describe(&ResourceScope::parse(s).expect("parse").expect("resource"))
    }

    #[test]
    fn scopes_read_as_sentences() {
        assert_eq!(
            one("patient/Observation.rs?category=vital-signs"),
            "Read and search your observations (measurements such as heart rate, steps, sleep and weight) (only category vital signs)"
        );
        assert_eq!(
            one("patient/*.read"),
            "Read and search all of your health records"
        );
        assert_eq!(
            one("user/AllergyIntolerance.cud"),
            "Add to, change and delete your allergy intolerance records"
        );
    }

    #[test]
    fn repeated_parameters_count_as_missing() {
        let p = serde_urlencoded_pairs("state=a&state=b&client_id=x");
        assert_eq!(p.state, None);
        assert_eq!(p.client_id.as_deref(), Some("x"));
    }

    #[test]
    fn redirects_keep_an_existing_query() {
        assert_eq!(
            with_query("https://app.example/cb?x=1", &[("code", "a b".into())]),
            "https://app.example/cb?x=1&code=a+b"
        );
    }
}
