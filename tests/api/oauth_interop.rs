//! Revocation (RFC 7009) and introspection (RFC 7662) as independent clients drive them, with the
//! client authentication each client uses at the token endpoint: the Rust `oauth2` crate and
//! Python's `authlib`, with `private_key_jwt` (backends), `client_secret_basic` and
//! `client_secret_post` (confidential apps) and `none` (public apps, revocation only). Then every
//! refusal: a failed client authentication is 401 `invalid_client`; another client's token is
//! left alone (200) or inactive; and each of them is in the audit trail.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenResponse, BasicTokenType,
};
use oauth2::{
    AccessToken, AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, ExtraTokenFields,
    IntrospectionUrl, RefreshToken, RequestTokenError, RevocationUrl, StandardRevocableToken,
    StandardTokenIntrospectionResponse, TokenIntrospectionResponse,
};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::helpers::{es384_key, json, request_token, spawn_app, BackendKey, TestApp};
use crate::smart_app::{
    approve, authorize_query, pkce, register_app, token_request, Browser, REDIRECT,
};

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const APP_SCOPES: &str = "launch/patient offline_access patient/Observation.rs";
const SECRET: &str = "s3cret-s3cret-s3cret";

/// The SMART field of an introspection response beside RFC 7662's.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SmartFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    patient: Option<String>,
}
impl ExtraTokenFields for SmartFields {}

type Introspection = StandardTokenIntrospectionResponse<SmartFields, BasicTokenType>;

/// An `oauth2` crate client with the introspection and revocation endpoints set.
type SmartClient = oauth2::Client<
    BasicErrorResponse,
    BasicTokenResponse,
    Introspection,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointSet,
    EndpointNotSet,
>;

fn root(app: &TestApp) -> String {
    app.base.trim_end_matches("/fhir").to_owned()
}

/// An `oauth2` crate client of the test server. The crate insists on an https revocation URL
/// (RFC 7009 §2) while the test server speaks plain HTTP on 127.0.0.1, so the client is given https
/// URLs and [`over_http`] sends each request as the crate built it to the same host and port.
fn oauth2_client(app: &TestApp, id: &str, secret: Option<&str>, auth: AuthType) -> SmartClient {
    let r = root(app).replacen("http://", "https://", 1);
    let mut c = oauth2::Client::new(ClientId::new(id.to_owned()))
        .set_introspection_url(
            IntrospectionUrl::new(format!("{r}/auth/introspect")).expect("introspection url"),
        )
        .set_revocation_url(RevocationUrl::new(format!("{r}/auth/revoke")).expect("revoke url"))
        .set_auth_type(auth);
    if let Some(s) = secret {
        c = c.set_client_secret(ClientSecret::new(s.to_owned()));
    }
    c
}

/// The transport of the `oauth2` crate's requests: the crate's own reqwest client, with only the
/// scheme of the URL changed to http (see [`oauth2_client`]).
async fn over_http(
    mut req: oauth2::HttpRequest,
) -> Result<oauth2::HttpResponse, oauth2::HttpClientError<reqwest::Error>> {
    let uri = req.uri().to_string().replacen("https://", "http://", 1);
    *req.uri_mut() = uri.parse().expect("uri");
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http");
    oauth2::AsyncHttpClient::call(&client, req).await
}

/// Registers a backend with a new ES384 key, under a partner Organization unless `org` is None.
async fn register_backend(app: &TestApp, id: &str, org: Option<&str>) -> BackendKey {
    let key = es384_key(&format!("{id}-key"));
    register_backend_jwks(app, id, org, key.jwks.clone()).await;
    key
}

async fn register_backend_jwks(app: &TestApp, id: &str, org: Option<&str>, jwks: Value) {
    fhirgate::auth::clients::add(
        &app.state.db,
        &fhirgate::auth::clients::Client {
            client_id: id.into(),
            kind: "backend".into(),
            scopes: "system/*.rs".into(),
            redirect_uris: vec![],
            confidential: false,
            secret_hash: None,
            jwks: Some(jwks),
            organization: org.map(str::to_owned),
        },
    )
    .await
    .expect("register backend");
}

/// A backend's access token from the token endpoint.
async fn backend_token(app: &TestApp, key: &BackendKey, id: &str) -> String {
    let token_url = app.state.token_url();
    let r = request_token(
        &token_url,
        &key.assertion(id, &token_url, json!({})),
        "system/*.rs",
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    json(r).await["access_token"]
        .as_str()
        .expect("access token")
        .to_owned()
}

/// A new patient approves `client_id`; the token response of the code exchange (with the secret
/// in the form for a confidential app).
async fn app_tokens(app: &TestApp, client_id: &str, secret: Option<&str>) -> Value {
    let mut b = Browser::new(app);
    b.sign_up(&format!("{}@example.org", uuid::Uuid::new_v4()))
        .await;
    let (verifier, challenge) = pkce();
    let got = approve(
        &mut b,
        &authorize_query(app, client_id, APP_SCOPES, &challenge, &[]),
    )
    .await;
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", got["code"].as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
        ("client_id", client_id),
    ];
    if let Some(s) = secret {
        form.push(("client_secret", s));
    }
    let (status, body) = token_request(app, &form).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}"))
}

/// Whether the FHIR API refuses `token` within three seconds (revocation reaches every server
/// within a second).
async fn refused_soon(app: &TestApp, token: &str) -> bool {
    for _ in 0..30 {
        let r = reqwest::Client::new()
            .get(format!("{}/Observation", app.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("get");
        if r.status() == StatusCode::UNAUTHORIZED {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// `(subtype, outcome, client)` of the OAuth events in the audit trail.
async fn token_events(app: &TestApp) -> Vec<(String, String, String)> {
    crate::audit::events(app)
        .await
        .iter()
        .filter(|e| e["type"]["code"] == "110114" && e["subtype"][0]["code"] != "110122")
        .map(|e| {
            let f = |v: &Value| v.as_str().unwrap_or("").to_owned();
            (
                f(&e["subtype"][0]["code"]),
                f(&e["outcome"]),
                f(&e["agent"][0]["who"]["identifier"]["value"]),
            )
        })
        .collect()
}

fn events_of(events: &[(String, String, String)], subtype: &str, outcome: &str) -> usize {
    events
        .iter()
        .filter(|(s, o, _)| s == subtype && o == outcome)
        .count()
}

fn server_error<E: std::error::Error + 'static>(
    r: Result<impl std::fmt::Debug, RequestTokenError<E, impl oauth2::ErrorResponse>>,
) -> String {
    match r {
        Err(RequestTokenError::ServerResponse(e)) => format!("{e:?}"),
        other => panic!("expected an OAuth error response, got {other:?}"),
    }
}

#[tokio::test]
async fn the_oauth2_crate_introspects_and_revokes_with_a_client_assertion() {
    let app = spawn_app().await;
    let key = register_backend(&app, "lab", Some("Organization/lab")).await;
    let token = backend_token(&app, &key, "lab").await;
    let r = root(&app);
    let client = oauth2_client(&app, "lab", None, AuthType::BasicAuth);

    // Introspection, the assertion's audience being the introspection endpoint itself.
    let assertion = key.assertion("lab", &format!("{r}/auth/introspect"), json!({}));
    let access = AccessToken::new(token.clone());
    let info = client
        .introspect(&access)
        .add_extra_param("client_assertion_type", JWT_BEARER)
        .add_extra_param("client_assertion", assertion.clone())
        .request_async(&over_http)
        .await
        .expect("the oauth2 crate introspects with private_key_jwt");
    assert!(info.active());
    assert_eq!(info.client_id().map(|c| c.as_str()), Some("lab"));
    assert_eq!(info.token_type(), Some(&BasicTokenType::Bearer));
    assert_eq!(info.sub(), Some("lab"));
    assert_eq!(info.iss(), Some(app.state.issuer.as_str()));
    assert_eq!(info.aud(), Some(&vec![app.state.fhir_base.clone()]));
    let scopes: Vec<String> = info
        .scopes()
        .expect("scope")
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(scopes, ["system/*.rs"]);
    let (iat, exp) = (info.iat().expect("iat"), info.exp().expect("exp"));
    assert!(exp > chrono::Utc::now() && iat <= chrono::Utc::now() && iat < exp);
    assert_eq!(info.extra_fields().patient, None);

    // The same assertion again: a jti is single use, here as at the token endpoint.
    let replay = client
        .introspect(&access)
        .add_extra_param("client_assertion_type", JWT_BEARER)
        .add_extra_param("client_assertion", assertion)
        .request_async(&over_http)
        .await;
    let err = server_error(replay);
    assert!(err.contains("invalid_client"), "{err}");

    // Revocation, the audience being the token endpoint (as at the token endpoint).
    client
        .revoke_token(StandardRevocableToken::AccessToken(access.clone()))
        .expect("revocation url")
        .add_extra_param("client_assertion_type", JWT_BEARER)
        .add_extra_param(
            "client_assertion",
            key.assertion("lab", &app.state.token_url(), json!({})),
        )
        .request_async(&over_http)
        .await
        .expect("the oauth2 crate revokes with private_key_jwt");
    let after = client
        .introspect(&access)
        .add_extra_param("client_assertion_type", JWT_BEARER)
        .add_extra_param(
            "client_assertion",
            key.assertion("lab", &format!("{r}/auth/introspect"), json!({})),
        )
        .request_async(&over_http)
        .await
        .expect("introspect");
    assert!(!after.active());
    assert_eq!(
        after.client_id(),
        None,
        "an inactive token says nothing else"
    );
    assert!(
        refused_soon(&app, &token).await,
        "revoked token still accepted"
    );

    let events = token_events(&app).await;
    assert_eq!(
        events,
        [
            ("token-issue", "0", "lab"),
            ("assertion-failure", "4", "lab"),
            ("token-revoke", "0", "lab"),
        ]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c.to_owned()))
    );
}

#[tokio::test]
async fn the_oauth2_crate_introspects_and_revokes_for_confidential_and_public_apps() {
    let app = spawn_app().await;
    register_app(&app, "clinic", APP_SCOPES, Some(SECRET)).await;
    register_app(&app, "diary", APP_SCOPES, None).await;

    // A confidential app: client_secret_basic for introspection.
    let tokens = app_tokens(&app, "clinic", Some(SECRET)).await;
    let (access, refresh) = (s(&tokens, "access_token"), s(&tokens, "refresh_token"));
    let basic = oauth2_client(&app, "clinic", Some(SECRET), AuthType::BasicAuth);
    let info = basic
        .introspect(&AccessToken::new(access.to_owned()))
        .request_async(&over_http)
        .await
        .expect("introspect with client_secret_basic");
    assert!(info.active());
    assert_eq!(info.client_id().map(|c| c.as_str()), Some("clinic"));
    assert_eq!(
        info.extra_fields().patient.as_deref(),
        Some(s(&tokens, "patient"))
    );
    // Its refresh token too (the hint is optional; here it is given).
    let info = basic
        .introspect(&AccessToken::new(refresh.to_owned()))
        .set_token_type_hint("refresh_token")
        .request_async(&over_http)
        .await
        .expect("introspect a refresh token");
    assert!(info.active());
    assert_eq!(
        info.extra_fields().patient.as_deref(),
        Some(s(&tokens, "patient"))
    );
    assert!(info.exp().expect("exp") > chrono::Utc::now() + chrono::Duration::days(29));

    // client_secret_post for revocation: revoking the refresh token ends the whole grant.
    let post = oauth2_client(&app, "clinic", Some(SECRET), AuthType::RequestBody);
    post.revoke_token(StandardRevocableToken::RefreshToken(RefreshToken::new(
        refresh.to_owned(),
    )))
    .expect("revocation url")
    .request_async(&over_http)
    .await
    .expect("revoke with client_secret_post");
    assert!(refused_soon(&app, access).await, "the grant's access token");
    let info = post
        .introspect(&AccessToken::new(refresh.to_owned()))
        .request_async(&over_http)
        .await
        .expect("introspect");
    assert!(!info.active());
    let (status, err) = token_request(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", "clinic"),
            ("client_secret", SECRET),
        ],
    )
    .await;
    assert_eq!(
        (status, s(&err, "error")),
        (StatusCode::BAD_REQUEST, "invalid_grant")
    );

    // A public app revokes its own access token with its client_id alone (RFC 7009 §2.1)...
    let tokens = app_tokens(&app, "diary", None).await;
    let access = s(&tokens, "access_token");
    let public = oauth2_client(&app, "diary", None, AuthType::RequestBody);
    public
        .revoke_token(StandardRevocableToken::AccessToken(AccessToken::new(
            access.to_owned(),
        )))
        .expect("revocation url")
        .request_async(&over_http)
        .await
        .expect("a public app revokes its own token");
    assert!(refused_soon(&app, access).await);
    // ...but cannot introspect: that needs a real client authentication.
    let err = server_error(
        public
            .introspect(&AccessToken::new(access.to_owned()))
            .request_async(&over_http)
            .await,
    );
    assert!(err.contains("invalid_client"), "{err}");

    let events = token_events(&app).await;
    assert_eq!(events_of(&events, "token-revoke", "0"), 2, "{events:?}");
    assert_eq!(events_of(&events, "token-introspect", "4"), 1, "{events:?}");
}

/// A P-384 key as Python gets it (a private JWK) and as the server registers it (a JWKS).
fn python_key(kid: &str) -> (Value, Value) {
    use p384::elliptic_curve::sec1::ToEncodedPoint;
    let secret = p384::SecretKey::random(&mut rand::rngs::OsRng);
    let point = secret.public_key().to_encoded_point(false);
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let public = json!({"kty": "EC", "crv": "P-384", "kid": kid, "alg": "ES384",
        "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y"))});
    let mut private = public.clone();
    private["d"] = json!(b64(&secret.to_bytes()));
    (private, json!({"keys": [public]}))
}

/// Drives both endpoints with authlib's `OAuth2Session`: a backend with `PrivateKeyJWT` (ES384;
/// authlib's default audience is the URL of each request, so the token endpoint at issuance and
/// the introspection endpoint at introspection; revocation names the token endpoint), a
/// confidential app with `client_secret_basic` and `client_secret_post`, a public app with
/// `none`. Prints one JSON object of `[status, body]` pairs.
const AUTHLIB_SCRIPT: &str = r#"
import json, os, sys, time
os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc.jwk import ECKey

cfg = json.load(sys.stdin)
root = cfg["root"]
token_url = root + "/auth/token"
revoke_url = root + "/auth/revoke"
introspect_url = root + "/auth/introspect"
out = {}

def answer(r):
    try:
        body = r.json()
    except ValueError:
        body = r.text
    return [r.status_code, body, r.headers.get("cache-control")]

def assertion(session, audience):
    # A new method object per request: authlib keeps its claims between calls, and the server
    # refuses a reused jti. The server accepts at most five minutes to exp.
    session.register_client_auth_method(
        PrivateKeyJWT(audience, alg="ES384", claims={"exp": int(time.time()) + 240}))

key = ECKey.import_key(cfg["backend_jwk"])
backend = OAuth2Session(cfg["backend_id"], key, scope="system/*.rs",
    token_endpoint_auth_method="private_key_jwt", revocation_endpoint_auth_method="private_key_jwt")
assertion(backend, None)
token = backend.fetch_token(token_url, grant_type="client_credentials")["access_token"]
assertion(backend, None)
out["backend_introspect"] = answer(backend.introspect_token(introspect_url, token=token))
assertion(backend, token_url)
out["backend_revoke"] = answer(backend.revoke_token(revoke_url, token=token, token_type_hint="access_token"))
assertion(backend, None)
out["backend_after"] = answer(backend.introspect_token(introspect_url, token=token))
# An assertion for another audience is refused.
assertion(backend, root + "/fhir")
out["backend_wrong_aud"] = answer(backend.revoke_token(revoke_url, token=token))

app = OAuth2Session(cfg["app_id"], cfg["app_secret"],
    token_endpoint_auth_method="client_secret_basic", revocation_endpoint_auth_method="client_secret_post")
out["app_introspect"] = answer(app.introspect_token(introspect_url, token=cfg["app_access"]))
out["app_introspect_refresh"] = answer(app.introspect_token(introspect_url, token=cfg["app_refresh"], token_type_hint="refresh_token"))
out["app_revoke"] = answer(app.revoke_token(revoke_url, token=cfg["app_refresh"], token_type_hint="refresh_token"))
out["app_after"] = answer(app.introspect_token(introspect_url, token=cfg["app_access"]))
wrong = OAuth2Session(cfg["app_id"], "not-the-secret", revocation_endpoint_auth_method="client_secret_basic")
out["app_wrong_secret"] = answer(wrong.revoke_token(revoke_url, token=cfg["app_access"]))

public = OAuth2Session(cfg["public_id"], token_endpoint_auth_method="none", revocation_endpoint_auth_method="none")
out["public_introspect"] = answer(public.introspect_token(introspect_url, token=cfg["public_access"]))
out["public_revoke"] = answer(public.revoke_token(revoke_url, token=cfg["public_access"]))
print(json.dumps(out))
"#;

#[tokio::test]
async fn authlib_revokes_and_introspects_with_each_client_authentication() {
    let present = std::process::Command::new("python3")
        .args(["-c", "import authlib, joserfc, requests"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        present,
        "Python authlib is missing: install it with `python3 -m pip install authlib`"
    );
    let app = spawn_app().await;
    let (private_jwk, jwks) = python_key("py-1");
    register_backend_jwks(&app, "py-backend", Some("Organization/py"), jwks).await;
    register_app(&app, "py-clinic", APP_SCOPES, Some(SECRET)).await;
    register_app(&app, "py-diary", APP_SCOPES, None).await;
    let confidential = app_tokens(&app, "py-clinic", Some(SECRET)).await;
    let public = app_tokens(&app, "py-diary", None).await;
    let cfg = json!({
        "root": root(&app),
        "backend_id": "py-backend", "backend_jwk": private_jwk,
        "app_id": "py-clinic", "app_secret": SECRET,
        "app_access": s(&confidential, "access_token"), "app_refresh": s(&confidential, "refresh_token"),
        "public_id": "py-diary", "public_access": s(&public, "access_token"),
    });
    // The server runs on this test's runtime: the script runs on a blocking thread beside it.
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new("python3")
            .args(["-c", AUTHLIB_SCRIPT])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("python3 runs");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(cfg.to_string().as_bytes())
            .expect("write config");
        child.wait_with_output().expect("python3 output")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "authlib script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("script JSON");

    let b = &r["backend_introspect"];
    assert_eq!(b[0], 200, "{r}");
    assert_eq!(b[2], "no-store");
    for (k, v) in [
        ("active", json!(true)),
        ("client_id", json!("py-backend")),
        ("scope", json!("system/*.rs")),
        ("token_type", json!("Bearer")),
        ("sub", json!("py-backend")),
        ("iss", json!(app.state.issuer)),
        ("aud", json!(app.state.fhir_base)),
    ] {
        assert_eq!(b[1][k], v, "{k} in {b}");
    }
    assert!(b[1]["exp"].as_i64() > b[1]["iat"].as_i64(), "{b}");
    assert_eq!(r["backend_revoke"][0], 200, "{r}");
    assert_eq!(r["backend_revoke"][2], "no-store");
    assert_eq!(r["backend_after"][1], json!({"active": false}), "{r}");
    assert_eq!(r["backend_wrong_aud"][0], 401, "{r}");
    assert_eq!(r["backend_wrong_aud"][1]["error"], "invalid_client");

    let a = &r["app_introspect"];
    assert_eq!(a[1]["active"], true, "{r}");
    assert_eq!(a[1]["client_id"], "py-clinic");
    assert_eq!(a[1]["patient"], confidential["patient"]);
    let a = &r["app_introspect_refresh"];
    assert_eq!(a[1]["active"], true, "{r}");
    let mut scopes: Vec<&str> = s(&a[1], "scope").split(' ').collect();
    scopes.sort_unstable();
    assert_eq!(
        scopes,
        ["launch/patient", "offline_access", "patient/Observation.rs"]
    );
    assert_eq!(a[1]["patient"], confidential["patient"]);
    assert_eq!(r["app_revoke"][0], 200, "{r}");
    assert_eq!(
        r["app_after"][1],
        json!({"active": false}),
        "revoking the refresh token ended the grant's access token: {r}"
    );
    assert_eq!(r["app_wrong_secret"][0], 401, "{r}");
    assert_eq!(r["app_wrong_secret"][1]["error"], "invalid_client");
    assert_eq!(r["app_wrong_secret"][2], "no-store");

    assert_eq!(r["public_introspect"][0], 401, "{r}");
    assert_eq!(r["public_introspect"][1]["error"], "invalid_client");
    assert_eq!(r["public_revoke"][0], 200, "{r}");
    assert!(refused_soon(&app, s(&public, "access_token")).await);

    let events = token_events(&app).await;
    assert_eq!(events_of(&events, "token-revoke", "0"), 3, "{events:?}");
    assert_eq!(
        events_of(&events, "assertion-failure", "4"),
        1,
        "{events:?}"
    );
    assert_eq!(events_of(&events, "token-revoke", "4"), 1, "{events:?}");
    assert_eq!(events_of(&events, "token-introspect", "4"), 1, "{events:?}");
}

/// `POST /auth/{path}` with `form` and, optionally, Basic credentials or a bearer token.
async fn post(
    app: &TestApp,
    path: &str,
    form: &[(&str, &str)],
    auth: Auth<'_>,
) -> (StatusCode, Option<String>, Value) {
    let mut r = reqwest::Client::new()
        .post(format!("{}/auth/{path}", root(app)))
        .form(form);
    match auth {
        Auth::None => {}
        Auth::Basic(id, secret) => r = r.basic_auth(id, Some(secret)),
        Auth::Bearer(t) => r = r.bearer_auth(t),
        Auth::Raw(v) => r = r.header("authorization", v),
    }
    let resp = r.send().await.expect("post");
    let status = resp.status();
    let cache = resp
        .headers()
        .get("cache-control")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let text = resp.text().await.expect("body");
    (
        status,
        cache,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

/// A refused request: what it shows, its form, its `Authorization`, and whether it is an
/// assertion failure (audited as `assertion-failure`, as at the token endpoint).
type Case<'a> = (&'a str, Vec<(String, String)>, Auth<'a>, bool);

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Basic(&'a str, &'a str),
    Bearer(&'a str),
    Raw(&'a str),
}

#[tokio::test]
async fn a_client_neither_revokes_nor_learns_about_another_clients_tokens() {
    let app = spawn_app().await;
    let a = register_backend(&app, "partner-a", Some("Organization/a")).await;
    let b = register_backend(&app, "partner-b", Some("Organization/b")).await;
    let first = register_backend(&app, "internal", None).await;
    register_app(&app, "clinic", APP_SCOPES, Some(SECRET)).await;
    register_app(&app, "other", APP_SCOPES, Some("other-secret-other")).await;
    let a_token = backend_token(&app, &a, "partner-a").await;
    let r = root(&app);
    let with = |key: &BackendKey, id: &str, aud: &str, token: &str| {
        vec![
            ("token".to_owned(), token.to_owned()),
            ("client_assertion_type".to_owned(), JWT_BEARER.to_owned()),
            (
                "client_assertion".to_owned(),
                key.assertion(id, &format!("{r}{aud}"), json!({})),
            ),
        ]
    };
    let send = |path: &'static str, form: Vec<(String, String)>| {
        let url = format!("{r}/auth/{path}");
        async move {
            let resp = reqwest::Client::new()
                .post(url)
                .form(&form)
                .send()
                .await
                .expect("post");
            (resp.status(), resp.text().await.expect("body"))
        }
    };

    // Partner B revokes partner A's token: 200, and nothing happens.
    let (status, _) = send("revoke", with(&b, "partner-b", "/auth/revoke", &a_token)).await;
    assert_eq!(status, StatusCode::OK);
    // Partner B introspects it: inactive, and nothing more.
    let (status, body) = send(
        "introspect",
        with(&b, "partner-b", "/auth/introspect", &a_token),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json"),
        json!({"active": false})
    );
    // A first-party backend may introspect any token (the existing rule)...
    let (_, body) = send(
        "introspect",
        with(&first, "internal", "/auth/introspect", &a_token),
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["active"],
        true
    );
    // ...but revokes only its own (RFC 7009 §2.1).
    let (status, _) = send("revoke", with(&first, "internal", "/auth/revoke", &a_token)).await;
    assert_eq!(status, StatusCode::OK);
    // A's token is still live: A sees it active.
    let (_, body) = send(
        "introspect",
        with(&a, "partner-a", "/auth/introspect", &a_token),
    )
    .await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).expect("json")["active"],
        true
    );

    // An app revokes another app's refresh token: 200, and that app can still refresh.
    let theirs = app_tokens(&app, "other", Some("other-secret-other")).await;
    let (status, cache, _) = post(
        &app,
        "revoke",
        &[("token", s(&theirs, "refresh_token"))],
        Auth::Basic("clinic", SECRET),
    )
    .await;
    assert_eq!(
        (status, cache.as_deref()),
        (StatusCode::OK, Some("no-store"))
    );
    let (_, _, body) = post(
        &app,
        "introspect",
        &[("token", s(&theirs, "access_token"))],
        Auth::Basic("clinic", SECRET),
    )
    .await;
    assert_eq!(body, json!({"active": false}));
    let (status, body) = token_request(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", s(&theirs, "refresh_token")),
            ("client_id", "other"),
            ("client_secret", "other-secret-other"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Each silent refusal is in the audit trail, under the client that asked.
    let events = token_events(&app).await;
    let refused: Vec<(&str, &str)> = events
        .iter()
        .filter(|(_, o, _)| o == "4")
        .map(|(s, _, c)| (s.as_str(), c.as_str()))
        .collect();
    assert_eq!(
        refused,
        [
            ("token-revoke", "partner-b"),
            ("token-introspect", "partner-b"),
            ("token-revoke", "internal"),
            ("token-revoke", "clinic"),
            ("token-introspect", "clinic"),
        ]
    );
}

#[tokio::test]
async fn every_failed_client_authentication_is_401_invalid_client_and_audited() {
    let app = spawn_app().await;
    let key = register_backend(&app, "lab", Some("Organization/lab")).await;
    register_app(&app, "clinic", APP_SCOPES, Some(SECRET)).await;
    register_app(&app, "diary", APP_SCOPES, None).await;
    let token = backend_token(&app, &key, "lab").await;
    let r = root(&app);
    let revoke_url = format!("{r}/auth/revoke");
    let now = chrono::Utc::now().timestamp();
    let stranger = es384_key("lab-key");
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"iss": "lab", "sub": "lab", "aud": revoke_url, "exp": now + 60,
            "jti": uuid::Uuid::new_v4().to_string()}),
        &jsonwebtoken::EncodingKey::from_secret(b"guessable"),
    )
    .expect("hs256");
    let assertion = |a: String| {
        vec![
            ("client_assertion_type".to_owned(), JWT_BEARER.to_owned()),
            ("client_assertion".to_owned(), a),
        ]
    };
    let good = || key.assertion("lab", &revoke_url, json!({}));
    let pairs = |p: &[(&str, &str)]| -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    };
    let replayed = good();
    let (status, _, _) = post(
        &app,
        "revoke",
        &[
            ("token", "unknown"),
            ("client_assertion_type", JWT_BEARER),
            ("client_assertion", &replayed),
        ],
        Auth::None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the first use of the assertion");
    let basic_lab = base64::engine::general_purpose::STANDARD.encode("lab:anything");
    let malformed = "Basic %%%".to_owned();
    let basic_lab = format!("Basic {basic_lab}");
    let cases: Vec<Case<'_>> = vec![
        ("no client authentication", vec![], Auth::None, false),
        (
            "wrong Basic secret",
            vec![],
            Auth::Basic("clinic", "wrong"),
            false,
        ),
        (
            "wrong posted secret",
            pairs(&[("client_id", "clinic"), ("client_secret", "wrong")]),
            Auth::None,
            false,
        ),
        (
            "confidential app without its secret",
            pairs(&[("client_id", "clinic")]),
            Auth::None,
            false,
        ),
        (
            "public app sending a secret",
            pairs(&[("client_id", "diary"), ("client_secret", "x")]),
            Auth::None,
            false,
        ),
        (
            "unknown client",
            pairs(&[("client_id", "nobody")]),
            Auth::None,
            false,
        ),
        (
            "a backend with a secret",
            vec![],
            Auth::Raw(&basic_lab),
            false,
        ),
        ("malformed Basic", vec![], Auth::Raw(&malformed), false),
        (
            "invalid bearer token",
            vec![],
            Auth::Bearer("not-a-token"),
            false,
        ),
        (
            "assertion for another audience",
            assertion(key.assertion("lab", &app.base, json!({}))),
            Auth::None,
            true,
        ),
        (
            "assertion valid for an hour",
            assertion(key.assertion("lab", &revoke_url, json!({"exp": now + 3600}))),
            Auth::None,
            true,
        ),
        (
            "expired assertion",
            assertion(key.assertion("lab", &revoke_url, json!({"exp": now - 120}))),
            Auth::None,
            true,
        ),
        (
            "assertion without jti",
            assertion(key.assertion("lab", &revoke_url, json!({"jti": null}))),
            Auth::None,
            true,
        ),
        (
            "replayed assertion",
            assertion(replayed.clone()),
            Auth::None,
            true,
        ),
        (
            "assertion signed with an unregistered key",
            assertion(stranger.assertion("lab", &revoke_url, json!({}))),
            Auth::None,
            true,
        ),
        ("HS256 assertion", assertion(hs256), Auth::None, true),
        (
            "assertion of an unknown client",
            assertion(key.assertion("nobody", &revoke_url, json!({}))),
            Auth::None,
            true,
        ),
        (
            "client_id differing from the assertion issuer",
            [pairs(&[("client_id", "clinic")]), assertion(good())].concat(),
            Auth::None,
            true,
        ),
        (
            "assertion and Basic at once",
            assertion(good()),
            Auth::Basic("clinic", SECRET),
            true,
        ),
        (
            "wrong client_assertion_type",
            vec![
                (
                    "client_assertion_type".to_owned(),
                    "urn:example:saml".to_owned(),
                ),
                ("client_assertion".to_owned(), good()),
            ],
            Auth::None,
            true,
        ),
    ];
    // Each case is sent once to each endpoint (the same assertion twice where it was refused
    // before its jti was spent, which does not change its refusal).
    for path in ["revoke", "introspect"] {
        for (what, form, auth, _) in &cases {
            let mut form = form.clone();
            form.push(("token".to_owned(), token.clone()));
            let borrowed: Vec<(&str, &str)> =
                form.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let (status, cache, body) = post(&app, path, &borrowed, *auth).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {what}: {body}");
            assert_eq!(body["error"], "invalid_client", "{path}: {what}");
            assert_eq!(cache.as_deref(), Some("no-store"), "{path}: {what}");
        }
    }
    let assertion_cases = cases.iter().filter(|c| c.3).count();
    let other_cases = cases.len() - assertion_cases;
    // The token is untouched by all of it.
    let (_, _, body) = post(
        &app,
        "introspect",
        &[
            ("token", &token),
            ("client_assertion_type", JWT_BEARER),
            (
                "client_assertion",
                &key.assertion("lab", &format!("{r}/auth/introspect"), json!({})),
            ),
        ],
        Auth::None,
    )
    .await;
    assert_eq!(body["active"], true);

    let events = token_events(&app).await;
    assert_eq!(
        events_of(&events, "assertion-failure", "4"),
        2 * assertion_cases,
        "{events:?}"
    );
    // The revocation of an unknown token that spent the replayed assertion is audited too.
    assert_eq!(
        events_of(&events, "token-revoke", "4"),
        other_cases + 1,
        "{events:?}"
    );
    assert_eq!(
        events_of(&events, "token-introspect", "4"),
        other_cases,
        "{events:?}"
    );
}

#[tokio::test]
async fn unknown_tokens_answer_200_or_inactive_and_the_hint_is_optional() {
    let app = spawn_app().await;
    register_app(&app, "clinic", APP_SCOPES, Some(SECRET)).await;
    let tokens = app_tokens(&app, "clinic", Some(SECRET)).await;
    let access = s(&tokens, "access_token");
    let me = Auth::Basic("clinic", SECRET);
    // Unknown, for each hint or none.
    for hint in [
        None,
        Some("access_token"),
        Some("refresh_token"),
        Some("id_token"),
    ] {
        let mut form = vec![("token", "no-such-token")];
        if let Some(h) = hint {
            form.push(("token_type_hint", h));
        }
        let (status, cache, body) = post(&app, "revoke", &form, me).await;
        assert_eq!(
            (status, cache.as_deref()),
            (StatusCode::OK, Some("no-store")),
            "{hint:?}"
        );
        assert_eq!(body, Value::Null, "an empty body");
        let (status, cache, body) = post(&app, "introspect", &form, me).await;
        assert_eq!(
            (status, cache.as_deref()),
            (StatusCode::OK, Some("no-store"))
        );
        assert_eq!(body, json!({"active": false}));
    }
    // A wrong hint does not stop the revocation of an access token.
    let (status, _, _) = post(
        &app,
        "revoke",
        &[("token", access), ("token_type_hint", "refresh_token")],
        me,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(refused_soon(&app, access).await);
    // Revoking it again: still 200.
    let (status, _, _) = post(&app, "revoke", &[("token", access)], me).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, body) = post(&app, "introspect", &[("token", access)], me).await;
    assert_eq!(body, json!({"active": false}));
    // A missing token is the client's mistake: 400 invalid_request, audited.
    for path in ["revoke", "introspect"] {
        let (status, cache, body) = post(&app, path, &[], me).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(body["error"], "invalid_request");
        assert_eq!(cache.as_deref(), Some("no-store"));
    }
    let events = token_events(&app).await;
    assert_eq!(events_of(&events, "token-revoke", "0"), 1, "{events:?}");
    // Four unknown tokens, one already revoked, one missing token.
    assert_eq!(events_of(&events, "token-revoke", "4"), 6, "{events:?}");
    assert_eq!(events_of(&events, "token-introspect", "4"), 1, "{events:?}");
}

#[tokio::test]
async fn failed_authentications_at_revocation_count_toward_the_token_rate_limit() {
    let app = spawn_app().await;
    register_app(&app, "clinic", APP_SCOPES, Some(SECRET)).await;
    let mut statuses = Vec::new();
    for _ in 0..62 {
        let (status, _, _) = post(
            &app,
            "revoke",
            &[("token", "x")],
            Auth::Basic("clinic", "guess"),
        )
        .await;
        statuses.push(status);
    }
    assert!(statuses[..60]
        .iter()
        .all(|s| *s == StatusCode::UNAUTHORIZED));
    assert!(
        statuses[60..]
            .iter()
            .all(|s| *s == StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
    // The token endpoint shares the count.
    let (status, _) = token_request(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", "x"),
            ("client_id", "clinic"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn discovery_names_both_endpoints_and_their_client_authentication_methods() {
    let app = spawn_app().await;
    let r = root(&app);
    let conf = json(
        reqwest::get(format!("{r}/.well-known/smart-configuration"))
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(conf["revocation_endpoint"], format!("{r}/auth/revoke"));
    assert_eq!(
        conf["introspection_endpoint"],
        format!("{r}/auth/introspect")
    );
    assert_eq!(
        conf["revocation_endpoint_auth_methods_supported"],
        json!([
            "private_key_jwt",
            "client_secret_basic",
            "client_secret_post",
            "none"
        ])
    );
    assert_eq!(
        conf["introspection_endpoint_auth_methods_supported"],
        json!([
            "private_key_jwt",
            "client_secret_basic",
            "client_secret_post"
        ])
    );
    for k in [
        "revocation_endpoint_auth_signing_alg_values_supported",
        "introspection_endpoint_auth_signing_alg_values_supported",
    ] {
        assert_eq!(conf[k], json!(["RS384", "ES384"]), "{k}");
    }
}
