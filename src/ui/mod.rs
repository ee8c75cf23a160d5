//! Server-rendered pages: sign-up, sign-in and the app approval page of the SMART authorization
//! code flow. Plain HTML forms, no script.
//!
//! Every form carries a CSRF token tied to a random cookie (`__Host-fhirgate-csrf`) by a keyed
//! HMAC, and a sign-in sets a fresh session cookie (`__Host-fhirgate-session`). Both cookies are
//! `Secure; HttpOnly; SameSite=Lax; Path=/`. Browsers accept `Secure` cookies from
//! `http://localhost` and `127.0.0.1` for development; anywhere else the pages need HTTPS.
//! Pages forbid framing and caching.

pub mod audit;
pub mod authorize;
pub mod login;
pub mod sharing;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use crate::auth::grants::constant_eq;
use crate::auth::users::{self, User};
use crate::state::AppState;

/// The CSRF cookie.
pub const CSRF_COOKIE: &str = "__Host-fhirgate-csrf";
/// The session cookie.
pub const SESSION_COOKIE: &str = "__Host-fhirgate-session";

/// The page routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(landing))
        .route("/auth/signup", get(login::signup_page).post(login::signup))
        .route("/auth/login", get(login::login_page).post(login::login))
        .route("/auth/logout", axum::routing::post(login::logout))
        .route("/auth/account", get(login::account))
        .route("/account/access", get(audit::my_access_page))
        .route(
            "/account/sharing",
            get(sharing::sharing_page).post(sharing::save),
        )
        .route("/audit", get(audit::auditor_page))
        .route("/audit/events/{seq}", get(audit::event_page))
        .route("/audit/export.csv", get(audit::export_csv))
        .route(
            "/auth/authorize",
            get(authorize::authorize).post(authorize::decide),
        )
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:34rem;margin:3rem auto;padding:0 1rem;color:#1b1f23}\
h1{font-size:1.4rem}label{display:block;margin:.8rem 0 .2rem}input[type=email],input[type=password],input[type=text]{width:100%;padding:.5rem;box-sizing:border-box}\
button{margin:1rem .5rem 0 0;padding:.5rem 1.2rem}.error{color:#b00020}ul.scopes li{margin:.3rem 0}.muted{color:#57606a}";

/// Extra style of the pages that show tables (the audit pages): the whole width, compact rows.
const TABLE_STYLE: &str = "body{max-width:72rem}table{border-collapse:collapse;width:100%;font-size:.9rem}\
td,th{border-bottom:1px solid #d0d7de;padding:.3rem;text-align:left;vertical-align:top;word-break:break-word}\
.outcome-4 td,.outcome-8 td{background:#fff5f5}pre{white-space:pre-wrap;word-break:break-word}";

/// `GET /`: what this server is, whether its database answers, and where to go next. No data,
/// no token needed.
async fn landing(State(state): State<AppState>) -> Response {
    let ready = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        sqlx::query("select 1").execute(&state.db),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let status = if ready {
        "<strong>ready</strong>: the database answers"
    } else {
        "<strong class=\"error\">not ready</strong>: the database does not answer"
    };
    let base = esc(&state.fhir_base);
    let body = format!(
        "<h1>fhirgate</h1><p class=\"muted\">FHIR R4 server for personal health data, version {v}</p>\
<p>Status: {status}.</p>\
<h2>For FHIR clients</h2><ul>\
<li>FHIR base: <code>{base}</code></li>\
<li><a href=\"/fhir/metadata\">CapabilityStatement</a> (<code>/fhir/metadata</code>)</li>\
<li><a href=\"/.well-known/smart-configuration\">SMART configuration</a></li>\
<li><a href=\"/.well-known/openid-configuration\">OpenID configuration</a></li></ul>\
<h2>For patients and auditors</h2><ul>\
<li><a href=\"/auth/login\">Sign in</a> or <a href=\"/auth/signup\">create an account</a></li>\
<li><a href=\"/account/access\">Who accessed my data</a></li>\
<li><a href=\"/account/sharing\">Sharing with partners</a></li>\
<li><a href=\"/audit\">Audit trail</a> (auditors)</li></ul>\
<h2>Documentation</h2><p>The README of the source repository: quick start, authorization, access policy, \
security model and benchmarks.</p>",
        v = env!("CARGO_PKG_VERSION"),
    );
    page(StatusCode::OK, "fhirgate", &body, &[])
}

/// An HTML page with the security headers every page carries, and any cookies to set.
pub fn page(status: StatusCode, title: &str, body: &str, cookies: &[String]) -> Response {
    styled_page(status, title, body, cookies, "")
}

/// A page with tables, as wide as the screen.
pub fn table_page(status: StatusCode, title: &str, body: &str) -> Response {
    styled_page(status, title, body, &[], TABLE_STYLE)
}

fn styled_page(
    status: StatusCode,
    title: &str,
    body: &str,
    cookies: &[String],
    extra_style: &str,
) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{t} · fhirgate</title><style>{STYLE}{extra_style}</style></head><body>{body}</body></html>",
        t = esc(title)
    );
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// A 303 redirect (after a form post, or to the app), with cookies and no caching.
pub fn see_other(location: &str, cookies: &[String]) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    resp
}

/// A `Set-Cookie` value with the attributes of every cookie of these pages.
pub fn cookie(name: &str, value: &str, max_age: i64) -> String {
    format!("{name}={value}; Path=/; Max-Age={max_age}; HttpOnly; Secure; SameSite=Lax")
}

/// The value of cookie `name` in the request.
pub fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// The CSRF state of a request: the token to put in forms, and the cookie to set when the browser
/// had none yet.
pub struct Csrf {
    /// The form token.
    pub token: String,
    /// `Set-Cookie` for a new CSRF cookie.
    pub set_cookie: Option<String>,
}

fn csrf_for(state: &AppState, seed: &str) -> String {
    hex::encode(state.keys.blind(&[b"ui.csrf", seed.as_bytes()]))
}

/// The CSRF token of this browser (made on first sight).
pub fn csrf(state: &AppState, headers: &HeaderMap) -> Csrf {
    match read_cookie(headers, CSRF_COOKIE).filter(|s| s.len() >= 32) {
        Some(seed) => Csrf {
            token: csrf_for(state, &seed),
            set_cookie: None,
        },
        None => {
            let seed = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
            Csrf {
                token: csrf_for(state, &seed),
                set_cookie: Some(cookie(CSRF_COOKIE, &seed, 24 * 60 * 60)),
            }
        }
    }
}

/// Whether a posted form's token belongs to this browser's CSRF cookie.
pub fn csrf_ok(state: &AppState, headers: &HeaderMap, token: Option<&str>) -> bool {
    match (read_cookie(headers, CSRF_COOKIE), token) {
        (Some(seed), Some(t)) if seed.len() >= 32 => {
            constant_eq(csrf_for(state, &seed).as_bytes(), t.as_bytes())
        }
        _ => false,
    }
}

/// The page shown for a refused form (a missing or wrong CSRF token).
pub fn csrf_refused() -> Response {
    page(
        StatusCode::FORBIDDEN,
        "Form expired",
        "<h1>This form has expired</h1><p>Go back, reload the page and try again.</p>",
        &[],
    )
}

/// The signed-in user of this browser, if any.
pub async fn current_user(state: &AppState, headers: &HeaderMap) -> Option<User> {
    let value = read_cookie(headers, SESSION_COOKIE)?;
    match users::session_user(state, &value).await {
        Ok(u) => u,
        Err(e) => {
            tracing::warn!(error = %e, "session lookup failed");
            None
        }
    }
}

/// A page for an unexpected failure (never with details).
pub fn failure_page() -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again",
        "<h1>Something went wrong</h1><p>Please try again in a moment.</p>",
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn reads_one_cookie_among_several() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        assert_eq!(read_cookie(&h, "b").as_deref(), Some("2"));
        assert_eq!(read_cookie(&h, "c").as_deref(), Some("3"));
        assert_eq!(read_cookie(&h, "d"), None);
    }
}
