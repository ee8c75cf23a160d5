//! Sign-up, sign-in and sign-out pages.
//!
//! A failed sign-in shows one message whether the address is unknown or the password wrong, and
//! costs the same time either way (`users::authenticate`). Five failures for one account, or
//! thirty from one address, in fifteen minutes block further attempts (429) until the window ends.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Form;
use serde::Deserialize;

use crate::audit::event::Kind;
use crate::auth::limit::ClientAddr;
use crate::auth::users::{self, SignUp, SignUpError, SESSION_SECS};
use crate::state::AppState;
use crate::ui::{
    cookie, csrf, csrf_ok, csrf_refused, current_user, esc, failure_page, page, read_cookie,
    see_other, SESSION_COOKIE,
};

/// Where to go after signing in: only back into an authorization request, else the account page
/// (never an arbitrary URL: no open redirect).
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/auth/authorize?") && !n.contains(['\\', '\r', '\n']) => {
            n.to_owned()
        }
        _ => "/auth/account".to_owned(),
    }
}

/// `?next=` of the pages.
#[derive(Debug, Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

fn login_body(token: &str, next: &str, email: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    let signup = format!(
        "/auth/signup?{}",
        form_urlencoded::Serializer::new(String::new())
            .append_pair("next", next)
            .finish()
    );
    format!(
        r#"<h1>Sign in to fhirgate</h1>{error}
<form method="post" action="/auth/login">
<input type="hidden" name="csrf" value="{token}"><input type="hidden" name="next" value="{next}">
<label for="email">Email address</label><input id="email" name="email" type="email" autocomplete="username" required value="{email}">
<label for="password">Password</label><input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit" id="sign-in">Sign in</button></form>
<p class="muted">No account yet? <a href="{signup}">Create one</a>.</p>"#,
        token = esc(token),
        next = esc(next),
        email = esc(email),
        signup = esc(&signup),
    )
}

fn signup_body(token: &str, next: &str, f: &SignUpForm, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!("<p class=\"error\" role=\"alert\">{}</p>", esc(e)))
        .unwrap_or_default();
    format!(
        r#"<h1>Create your fhirgate account</h1>{error}
<p class="muted">Your account holds your health record. Apps you connect see only what you approve.</p>
<form method="post" action="/auth/signup">
<input type="hidden" name="csrf" value="{token}"><input type="hidden" name="next" value="{next}">
<label for="given">Given name</label><input id="given" name="given" type="text" autocomplete="given-name" required value="{given}">
<label for="family">Family name</label><input id="family" name="family" type="text" autocomplete="family-name" required value="{family}">
<label for="email">Email address</label><input id="email" name="email" type="email" autocomplete="username" required value="{email}">
<label for="password">Password (at least {min} characters)</label><input id="password" name="password" type="password" autocomplete="new-password" required minlength="{min}">
<button type="submit" id="sign-up">Create account</button></form>
<p class="muted">Already have an account? <a href="/auth/login?next={next_q}">Sign in</a>.</p>"#,
        token = esc(token),
        next = esc(next),
        given = esc(f.given.as_deref().unwrap_or_default()),
        family = esc(f.family.as_deref().unwrap_or_default()),
        email = esc(f.email.as_deref().unwrap_or_default()),
        min = users::MIN_PASSWORD,
        next_q = esc(&form_urlencoded::byte_serialize(next.as_bytes()).collect::<String>()),
    )
}

fn with_csrf_cookie(set: Option<String>) -> Vec<String> {
    set.into_iter().collect()
}

/// `GET /auth/login`.
pub async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let c = csrf(&state, &headers);
    let next = safe_next(q.next.as_deref());
    page(
        StatusCode::OK,
        "Sign in",
        &login_body(&c.token, &next, "", None),
        &with_csrf_cookie(c.set_cookie),
    )
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    email: Option<String>,
    password: Option<String>,
    csrf: Option<String>,
    next: Option<String>,
}

/// `POST /auth/login`.
pub async fn login(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> Response {
    if !csrf_ok(&state, &headers, f.csrf.as_deref()) {
        return csrf_refused();
    }
    let next = safe_next(f.next.as_deref());
    let email = f.email.unwrap_or_default();
    let c = csrf(&state, &headers);
    let account = users::account_key(&state, &email);
    let address = addr.key();
    let limits = &state.limits;
    if let Some(wait) = limits
        .login_account
        .blocked(&account)
        .or_else(|| limits.login_address.blocked(&address))
    {
        let minutes = wait.as_secs().div_ceil(60);
        return page(
            StatusCode::TOO_MANY_REQUESTS,
            "Sign in",
            &login_body(
                &c.token,
                &next,
                &email,
                Some(&format!(
                    "Too many failed sign-ins. Try again in {minutes} minute(s)."
                )),
            ),
            &[],
        );
    }
    let user = match users::authenticate(&state, &email, &f.password.unwrap_or_default()).await {
        Ok(u) => u,
        Err(e) => {
            tracing::error!(error = %e, "sign-in failed");
            return failure_page();
        }
    };
    let Some(user) = user else {
        limits.login_account.fail(&account);
        limits.login_address.fail(&address);
        tracing::info!("sign-in refused");
        // The typed address is not recorded: it may name a person who has no account.
        let ctx = crate::audit::api::auth_context(addr.0, &headers, None, None);
        let outcome = crate::audit::Outcome::Minor("wrong email address or password".into());
        crate::audit::api::record_auth(&state, Kind::Login, outcome, &ctx).await;
        return page(
            StatusCode::UNAUTHORIZED,
            "Sign in",
            &login_body(
                &c.token,
                &next,
                &email,
                Some("The email address or password is incorrect."),
            ),
            &[],
        );
    };
    limits.login_account.reset(&account);
    signed_in(&state, &addr, &headers, &user, &next).await
}

/// Audits the sign-in of `user`, starts their session and sends the browser on to `next`.
async fn signed_in(
    state: &AppState,
    addr: &ClientAddr,
    headers: &HeaderMap,
    user: &users::User,
    next: &str,
) -> Response {
    let ctx = crate::audit::api::auth_context(
        addr.0,
        headers,
        None,
        Some(format!("Patient/{}", user.patient_id)),
    );
    let success = crate::audit::Outcome::Success;
    if !crate::audit::api::record_auth(state, Kind::Login, success, &ctx).await {
        return failure_page();
    }
    match users::start_session(state, user).await {
        Ok(session) => {
            tracing::info!(user = %user.user_id, "signed in");
            see_other(next, &[cookie(SESSION_COOKIE, &session, SESSION_SECS)])
        }
        Err(e) => {
            tracing::error!(error = %e, "could not start a session");
            failure_page()
        }
    }
}

/// The sign-up form.
#[derive(Debug, Default, Deserialize)]
pub struct SignUpForm {
    given: Option<String>,
    family: Option<String>,
    email: Option<String>,
    password: Option<String>,
    csrf: Option<String>,
    next: Option<String>,
}

/// `GET /auth/signup`.
pub async fn signup_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let c = csrf(&state, &headers);
    let next = safe_next(q.next.as_deref());
    page(
        StatusCode::OK,
        "Create account",
        &signup_body(&c.token, &next, &SignUpForm::default(), None),
        &with_csrf_cookie(c.set_cookie),
    )
}

/// `POST /auth/signup`: creates the account and its Patient, then signs in.
pub async fn signup(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Form(mut f): Form<SignUpForm>,
) -> Response {
    if !csrf_ok(&state, &headers, f.csrf.as_deref()) {
        return csrf_refused();
    }
    let next = safe_next(f.next.as_deref());
    let form = SignUp {
        email: f.email.clone().unwrap_or_default(),
        password: f.password.take().unwrap_or_default(),
        given: f.given.clone().unwrap_or_default(),
        family: f.family.clone().unwrap_or_default(),
    };
    let refused = |msg: String| {
        let c = csrf(&state, &headers);
        page(
            StatusCode::BAD_REQUEST,
            "Create account",
            &signup_body(&c.token, &next, &f, Some(&msg)),
            &[],
        )
    };
    let user = match users::sign_up(&state, form).await {
        Ok(u) => u,
        Err(e @ (SignUpError::Invalid(_) | SignUpError::Taken)) => return refused(e.to_string()),
        Err(SignUpError::Fhir(e)) => {
            tracing::error!(error = %e, "sign-up failed");
            return failure_page();
        }
    };
    // A new account is signed in at once.
    signed_in(&state, &addr, &headers, &user, &next).await
}

/// The sign-out form.
#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    csrf: Option<String>,
}

/// `POST /auth/logout`.
pub async fn logout(
    State(state): State<AppState>,
    addr: ClientAddr,
    headers: HeaderMap,
    Form(f): Form<LogoutForm>,
) -> Response {
    if !csrf_ok(&state, &headers, f.csrf.as_deref()) {
        return csrf_refused();
    }
    if let Some(v) = read_cookie(&headers, SESSION_COOKIE) {
        let user = users::session_user(&state, &v)
            .await
            .ok()
            .flatten()
            .map(|u| format!("Patient/{}", u.patient_id));
        let ctx = crate::audit::api::auth_context(addr.0, &headers, None, user);
        let success = crate::audit::Outcome::Success;
        crate::audit::api::record_auth(&state, Kind::Logout, success, &ctx).await;
        if let Err(e) = users::end_session(&state, &v).await {
            tracing::warn!(error = %e, "could not end a session");
        }
    }
    see_other("/auth/login", &[cookie(SESSION_COOKIE, "", 0)])
}

/// `GET /auth/account`: who is signed in.
pub async fn account(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(user) = current_user(&state, &headers).await else {
        return see_other("/auth/login", &[]);
    };
    let c = csrf(&state, &headers);
    let summary = match record_summary(&state, &user.patient_id).await {
        Ok(rows) if rows.is_empty() => {
            "<p id=\"record-empty\">Your record is empty so far. Import data from a health app, or connect one.</p>".to_owned()
        }
        Ok(rows) => {
            let items: String = rows
                .iter()
                .map(|(rt, n)| format!("<li><strong>{n}</strong> {}</li>", esc(&type_words(rt, *n))))
                .collect();
            format!("<h2>Your record</h2><ul id=\"record\">{items}</ul>")
        }
        Err(e) => {
            tracing::error!(error = %e, "reading the record summary");
            "<p class=\"error\">Your record cannot be summarised right now.</p>".to_owned()
        }
    };
    let body = format!(
        r#"<h1>You are signed in</h1><p>Your health record is <code>Patient/{pid}</code>.</p>
{summary}
<p><a id="sharing" href="/account/sharing">Sharing with partners</a> · <a id="access" href="/account/access">Who accessed my data</a></p>
<form method="post" action="/auth/logout"><input type="hidden" name="csrf" value="{token}"><button type="submit" id="sign-out">Sign out</button></form>"#,
        pid = esc(&user.patient_id),
        token = esc(&c.token),
    );
    page(
        StatusCode::OK,
        "Your account",
        &body,
        &with_csrf_cookie(c.set_cookie),
    )
}

/// How many resources of each type the patient's record holds, most first; the patient's own
/// access policy decides what counts.
async fn record_summary(state: &AppState, patient: &str) -> sqlx::Result<Vec<(String, i64)>> {
    let policy = crate::access::Policy::patient_self(patient);
    let mut qb = sqlx::QueryBuilder::new(
        "select r.resource_type, count(*) from resource r where not r.deleted and r.compartment = ",
    );
    qb.push_bind(patient.to_owned());
    policy.restrict(
        &mut qb,
        "r",
        crate::auth::scopes::Permission::Search,
        Some(patient),
        None,
    );
    qb.push(" group by r.resource_type order by 2 desc, 1");
    qb.build_query_as().fetch_all(&state.db).await
}

/// A resource type in words, for the record summary.
fn type_words(rt: &str, n: i64) -> String {
    let (one, many) = match rt {
        "Observation" => ("measurement or result", "measurements and results"),
        "Patient" => ("patient record", "patient records"),
        "Encounter" => ("visit", "visits"),
        "Condition" => ("condition", "conditions"),
        "Procedure" => ("procedure", "procedures"),
        "Immunization" => ("immunization", "immunizations"),
        "AllergyIntolerance" => ("allergy", "allergies"),
        "MedicationRequest" => ("prescription", "prescriptions"),
        "DiagnosticReport" => ("report", "reports"),
        "DocumentReference" => ("document", "documents"),
        "CarePlan" => ("care plan", "care plans"),
        "CareTeam" => ("care team", "care teams"),
        "Claim" => ("claim", "claims"),
        "ExplanationOfBenefit" => ("explanation of benefit", "explanations of benefit"),
        "Consent" => ("sharing consent", "sharing consents"),
        "Device" => ("device", "devices"),
        "Provenance" => ("import record", "import records"),
        _ => return rt.to_owned(),
    };
    if n == 1 { one } else { many }.to_owned()
}

#[cfg(test)]
mod tests {
    use super::safe_next;

    #[test]
    fn next_only_returns_into_an_authorization_request() {
        assert_eq!(
            safe_next(Some("/auth/authorize?client_id=a")),
            "/auth/authorize?client_id=a"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example/auth/authorize?",
            "/auth/account\r\nSet-Cookie: x",
            "/fhir/Patient",
        ] {
            assert_eq!(safe_next(Some(bad)), "/auth/account", "{bad}");
        }
        assert_eq!(safe_next(None), "/auth/account");
    }
}
