//! SMART App Launch over real HTTP: the sign-up, sign-in and approval pages, the authorization
//! code flow with PKCE, refresh-token rotation, the id_token, patient-compartment enforcement,
//! the admin API, and every refusal with its exact error.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::{es384_key, request_token, spawn_app, TestApp};

pub(crate) const REDIRECT: &str = "http://127.0.0.1:48123/callback";
pub(crate) const PASSWORD: &str = "correct horse battery";

/// Registers an app client.
pub(crate) async fn register_app(app: &TestApp, id: &str, scopes: &str, secret: Option<&str>) {
    let c = fhirgate::auth::clients::Client {
        client_id: id.into(),
        kind: "app".into(),
        scopes: scopes.into(),
        redirect_uris: vec![REDIRECT.into(), "https://app.example/cb?x=1".into()],
        confidential: secret.is_some(),
        secret_hash: secret.map(fhirgate::auth::clients::hash_secret),
        jwks: None,
        organization: None,
    };
    fhirgate::auth::clients::add(&app.state.db, &c)
        .await
        .expect("register app");
}

/// A browser without redirects and with a cookie jar of its own (so the test sees every
/// `Set-Cookie` the pages send).
pub(crate) struct Browser {
    http: reqwest::Client,
    root: String,
    cookies: HashMap<String, String>,
    /// Every `Set-Cookie` received, as sent.
    pub(crate) set_cookies: Vec<String>,
}

pub(crate) struct Page {
    pub(crate) status: StatusCode,
    pub(crate) location: Option<String>,
    pub(crate) body: String,
}

impl Browser {
    pub(crate) fn new(app: &TestApp) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            root: app.base.trim_end_matches("/fhir").to_owned(),
            cookies: HashMap::new(),
            set_cookies: Vec::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.root)
        }
    }

    async fn finish(&mut self, r: reqwest::Response) -> Page {
        for v in r.headers().get_all("set-cookie") {
            let v = v.to_str().expect("ascii").to_owned();
            let (pair, _) = v.split_once(';').unwrap_or((&v, ""));
            let (k, val) = pair.split_once('=').expect("cookie pair");
            if val.is_empty() {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_owned(), val.to_owned());
            }
            self.set_cookies.push(v);
        }
        Page {
            status: r.status(),
            location: r
                .headers()
                .get("location")
                .map(|l| l.to_str().expect("ascii").to_owned()),
            body: r.text().await.expect("body"),
        }
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub(crate) async fn get(&mut self, path: &str) -> Page {
        let r = self
            .http
            .get(self.url(path))
            .header("cookie", self.cookie_header())
            .send()
            .await
            .expect("get");
        self.finish(r).await
    }

    pub(crate) async fn post(&mut self, path: &str, form: &[(String, String)]) -> Page {
        let r = self
            .http
            .post(self.url(path))
            .header("cookie", self.cookie_header())
            .form(form)
            .send()
            .await
            .expect("post");
        self.finish(r).await
    }

    /// Signs up through the pages (which also signs in).
    pub(crate) async fn sign_up(&mut self, email: &str) {
        let p = self.get("/auth/signup").await;
        assert_eq!(p.status, StatusCode::OK);
        let csrf = field(&p.body, "csrf").expect("csrf field");
        let p = self
            .post(
                "/auth/signup",
                &pairs(&[
                    ("csrf", &csrf),
                    ("given", "Ada"),
                    ("family", "Lovelace"),
                    ("email", email),
                    ("password", PASSWORD),
                    ("next", ""),
                ]),
            )
            .await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
        assert_eq!(p.location.as_deref(), Some("/auth/account"));
    }

    /// The patient id shown on the account page.
    pub(crate) async fn patient_id(&mut self) -> String {
        let p = self.get("/auth/account").await;
        let start = p.body.find("Patient/").expect("patient on the page") + 8;
        p.body[start..].split('<').next().expect("id").to_owned()
    }
}

pub(crate) fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
    p.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The value of the hidden input `name` in a page.
pub(crate) fn field(html: &str, name: &str) -> Option<String> {
    hidden_fields(html)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

/// Every hidden input of a page.
pub(crate) fn hidden_fields(html: &str) -> Vec<(String, String)> {
    html.split("<input type=\"hidden\" ")
        .skip(1)
        .filter_map(|rest| {
            let name = rest.strip_prefix("name=\"")?.split('"').next()?;
            let value = rest.split("value=\"").nth(1)?.split('"').next()?;
            Some((name.to_owned(), unescape(value)))
        })
        .collect()
}

/// A PKCE pair (verifier, S256 challenge).
pub(crate) fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// The query of an authorization request, with `overrides` (a null value removes a parameter).
pub(crate) fn authorize_query(
    app: &TestApp,
    client_id: &str,
    scope: &str,
    challenge: &str,
    overrides: &[(&str, Option<&str>)],
) -> String {
    let mut params: Vec<(String, String)> = pairs(&[
        ("response_type", "code"),
        ("client_id", client_id),
        ("redirect_uri", REDIRECT),
        ("scope", scope),
        ("state", "st-123"),
        ("code_challenge", challenge),
        ("code_challenge_method", "S256"),
        ("aud", &app.base),
        ("nonce", "n-0S6_WzA2Mj"),
    ]);
    for (k, v) in overrides {
        params.retain(|(pk, _)| pk != k);
        if let Some(v) = v {
            params.push(((*k).to_owned(), (*v).to_owned()));
        }
    }
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&params)
        .finish()
}

/// The query parameters of a redirect.
pub(crate) fn query_of(location: &str) -> HashMap<String, String> {
    let q = location.split_once('?').map(|x| x.1).unwrap_or_default();
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

/// Approves an authorization request as the signed-in browser; returns the redirect's parameters.
pub(crate) async fn approve(b: &mut Browser, query: &str) -> HashMap<String, String> {
    let p = b.get(&format!("/auth/authorize?{query}")).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    let mut form = hidden_fields(&p.body);
    form.push(("decision".into(), "allow".into()));
    let p = b.post("/auth/authorize", &form).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    let loc = p.location.expect("redirect");
    assert!(loc.starts_with(REDIRECT), "{loc}");
    query_of(&loc)
}

pub(crate) async fn token_request(app: &TestApp, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/auth/token", app.base.trim_end_matches("/fhir")))
        .form(form)
        .send()
        .await
        .expect("token");
    assert_eq!(
        r.headers()
            .get("cache-control")
            .map(|v| v.to_str().unwrap_or("")),
        Some("no-store")
    );
    (r.status(), r.json().await.expect("json"))
}

/// Signs up a new patient and runs the code flow to a token response.
pub(crate) async fn patient_token(app: &TestApp, client_id: &str, scope: &str) -> (Browser, Value) {
    let mut b = Browser::new(app);
    b.sign_up(&format!("{}@example.org", uuid::Uuid::new_v4()))
        .await;
    let (verifier, challenge) = pkce();
    let got = approve(
        &mut b,
        &authorize_query(app, client_id, scope, &challenge, &[]),
    )
    .await;
    let (status, body) = token_request(
        app,
        &[
            ("grant_type", "authorization_code"),
            ("code", &got["code"]),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &verifier),
            ("client_id", client_id),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    (b, body)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn fhir_get(app: &TestApp, token: &str, path: &str) -> (StatusCode, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}/{path}", app.base))
        .header("authorization", bearer(token))
        .send()
        .await
        .expect("get");
    (r.status(), r.json().await.unwrap_or(Value::Null))
}

/// Polls until `token` is refused (revocation reaches the verifier within seconds).
async fn refused_soon(app: &TestApp, token: &str, path: &str) -> bool {
    for _ in 0..30 {
        if fhir_get(app, token, path).await.0 == StatusCode::UNAUTHORIZED {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

fn claims_of(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("b64")).expect("json")
}

const FULL: &str = "launch/patient openid fhirUser offline_access patient/Observation.rs patient/Patient.r patient/Observation.c";

#[tokio::test]
async fn the_code_flow_gives_patient_id_token_and_rotating_refresh_tokens() {
    let app = spawn_app().await;
    register_app(&app, "diary", FULL, None).await;
    let (mut b, body) = patient_token(&app, "diary", FULL).await;
    let pid = b.patient_id().await;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["patient"], json!(pid));
    let mut granted: Vec<&str> = body["scope"].as_str().expect("scope").split(' ').collect();
    let mut asked: Vec<&str> = FULL.split(' ').collect();
    granted.sort_unstable();
    asked.sort_unstable();
    assert_eq!(granted, asked);
    let access = body["access_token"].as_str().expect("access");

    // The id_token: ES256, from this issuer, for this client, with the nonce and fhirUser.
    let id = body["id_token"].as_str().expect("id_token");
    let header = jsonwebtoken::decode_header(id).expect("header");
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    let c = claims_of(id);
    assert_eq!(c["aud"], "diary");
    assert_eq!(c["iss"], app.base.trim_end_matches("/fhir"));
    assert_eq!(c["nonce"], "n-0S6_WzA2Mj");
    assert_eq!(c["fhirUser"], format!("{}/Patient/{pid}", app.base));
    let jwks: Value = reqwest::get(format!("{}/auth/jwks", app.base.trim_end_matches("/fhir")))
        .await
        .expect("jwks")
        .json()
        .await
        .expect("json");
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(jwks["keys"][0].clone()).expect("jwk");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    v.set_audience(&["diary"]);
    jsonwebtoken::decode::<Value>(
        id,
        &jsonwebtoken::DecodingKey::from_jwk(&jwk).expect("key"),
        &v,
    )
    .expect("the id_token verifies against the JWKS");

    // The access token reads the patient's own record and writes into it.
    let (status, patient) = fhir_get(&app, access, &format!("Patient/{pid}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patient["name"][0]["family"], "Lovelace");
    let obs = json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{pid}")}, "effectiveDateTime": "2026-11-01T08:00:00Z",
        "valueQuantity": {"value": 61, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}});
    let r = reqwest::Client::new()
        .post(format!("{}/Observation", app.base))
        .header("authorization", bearer(access))
        .header("content-type", "application/fhir+json")
        .json(&obs)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::CREATED);

    // Refresh: a new pair; the used refresh token is spent.
    let first = body["refresh_token"].as_str().expect("refresh");
    let (status, second) = token_request(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", first),
            ("client_id", "diary"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    let second_refresh = second["refresh_token"].as_str().expect("rotated");
    assert_ne!(second_refresh, first);
    let second_access = second["access_token"].as_str().expect("access");
    assert_eq!(
        fhir_get(&app, second_access, &format!("Patient/{pid}"))
            .await
            .0,
        StatusCode::OK
    );

    // A narrower scope is allowed, a broader one is not.
    let (status, narrow) = token_request(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", second_refresh),
            ("client_id", "diary"),
            ("scope", "patient/Observation.rs"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{narrow}");
    assert_eq!(narrow["scope"], "patient/Observation.rs");
    let third_refresh = narrow["refresh_token"].as_str().expect("rotated");
    let (status, err) = token_request(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", third_refresh),
            ("client_id", "diary"),
            ("scope", "patient/*.cruds"),
        ],
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );

    // Reusing a rotated refresh token revokes the family: every token of the grant stops working.
    let (status, err) = token_request(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", first),
            ("client_id", "diary"),
        ],
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert!(refused_soon(&app, second_access, &format!("Patient/{pid}")).await);
    let (status, err) = token_request(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", third_refresh),
            ("client_id", "diary"),
        ],
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
}

#[tokio::test]
async fn signing_in_returns_to_the_request_and_the_page_names_the_data_in_plain_words() {
    let app = spawn_app().await;
    register_app(
        &app,
        "coach",
        "patient/Observation.rs?category=vital-signs offline_access openid",
        None,
    )
    .await;
    let mut b = Browser::new(&app);
    b.sign_up("grace@example.org").await;
    let csrf = field(&b.get("/auth/account").await.body, "csrf").expect("csrf");
    b.post("/auth/logout", &pairs(&[("csrf", &csrf)])).await;
    assert_eq!(b.get("/auth/account").await.status, StatusCode::SEE_OTHER);

    let (_, challenge) = pkce();
    let q = authorize_query(
        &app,
        "coach",
        "patient/Observation.rs?category=vital-signs patient/*.cruds offline_access openid",
        &challenge,
        &[],
    );
    let p = b.get(&format!("/auth/authorize?{q}")).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER);
    let login = p.location.expect("to sign-in");
    assert!(login.starts_with("/auth/login?next="), "{login}");
    let page = b.get(&login).await;
    let mut form = hidden_fields(&page.body);
    form.extend(pairs(&[
        ("email", "Grace@Example.org "),
        ("password", PASSWORD),
    ]));
    let p = b.post("/auth/login", &form).await;
    assert_eq!(p.status, StatusCode::SEE_OTHER, "{}", p.body);
    assert_eq!(
        p.location.as_deref(),
        Some(format!("/auth/authorize?{q}").as_str())
    );

    let p = b.get(&format!("/auth/authorize?{q}")).await;
    assert_eq!(p.status, StatusCode::OK);
    assert!(
        p.body.contains("Allow <strong id=\"app\">coach</strong>"),
        "{}",
        p.body
    );
    assert!(
        p.body.contains("Read and search your observations"),
        "{}",
        p.body
    );
    assert!(p.body.contains("(only category vital signs)"));
    assert!(p
        .body
        .contains("Keep this access when you are not using the app"));
    // patient/*.cruds was asked for but not registered: it is neither shown nor granted.
    assert!(!p.body.contains("all of your health records"));

    // Cookies: __Host- names, Secure, HttpOnly, SameSite.
    assert!(!b.set_cookies.is_empty());
    for c in &b.set_cookies {
        assert!(c.starts_with("__Host-"), "{c}");
        for attr in ["Secure", "HttpOnly", "SameSite=Lax", "Path=/"] {
            assert!(c.contains(attr), "{c} lacks {attr}");
        }
    }

    // Deny: back to the app with access_denied and the state exactly as sent.
    let odd_state = "a b&c=d/é~%";
    let q = authorize_query(
        &app,
        "coach",
        "openid",
        &challenge,
        &[("state", Some(odd_state))],
    );
    let p = b.get(&format!("/auth/authorize?{q}")).await;
    let mut form = hidden_fields(&p.body);
    form.push(("decision".into(), "deny".into()));
    let p = b.post("/auth/authorize", &form).await;
    let back = query_of(&p.location.expect("redirect"));
    assert_eq!(back["error"], "access_denied");
    assert_eq!(back["state"], odd_state);
    assert!(!back.contains_key("code"));

    // Allow: the state comes back exactly too.
    let got = approve(
        &mut b,
        &authorize_query(
            &app,
            "coach",
            "openid",
            &challenge,
            &[("state", Some(odd_state))],
        ),
    )
    .await;
    assert_eq!(got["state"], odd_state);
    assert!(got.contains_key("code"));
}

#[tokio::test]
async fn an_unregistered_redirect_uri_gets_an_error_page_never_a_redirect() {
    let app = spawn_app().await;
    register_app(&app, "diary", FULL, None).await;
    let mut b = Browser::new(&app);
    b.sign_up("redirects@example.org").await;
    let (_, challenge) = pkce();
    for uri in [
        "http://evil.example/callback",
        "http://127.0.0.1:48123/callback/extra",
        "http://127.0.0.1:48123/callback?x=1",
        "https://127.0.0.1:48123/callback",
        "HTTP://127.0.0.1:48123/callback",
        "https://APP.example/cb?x=1",
    ] {
        let q = authorize_query(
            &app,
            "diary",
            FULL,
            &challenge,
            &[("redirect_uri", Some(uri))],
        );
        let p = b.get(&format!("/auth/authorize?{q}")).await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST, "{uri}");
        assert_eq!(p.location, None, "{uri}");
        assert!(p.body.contains("not registered"), "{uri}");
    }
    // An unknown client and a missing redirect_uri: also a page.
    let q = authorize_query(&app, "nobody", FULL, &challenge, &[]);
    let p = b.get(&format!("/auth/authorize?{q}")).await;
    assert_eq!((p.status, p.location), (StatusCode::BAD_REQUEST, None));
    let q = authorize_query(&app, "diary", FULL, &challenge, &[("redirect_uri", None)]);
    assert_eq!(
        b.get(&format!("/auth/authorize?{q}")).await.status,
        StatusCode::BAD_REQUEST
    );
    // A registered URI that already has a query keeps it.
    let got = approve(
        &mut b,
        &authorize_query(&app, "diary", FULL, &challenge, &[]),
    )
    .await;
    assert!(got.contains_key("code"));
}

#[tokio::test]
async fn bad_authorization_requests_go_back_to_the_app_with_the_error() {
    let app = spawn_app().await;
    register_app(&app, "diary", FULL, None).await;
    let mut b = Browser::new(&app);
    b.sign_up("errors@example.org").await;
    let (_, challenge) = pkce();
    // (parameters changed, expected error, whether the state comes back)
    type Case<'a> = (Vec<(&'a str, Option<&'a str>)>, &'a str, bool);
    let cases: Vec<Case<'_>> = vec![
        (vec![("state", None)], "invalid_request", false),
        (
            vec![("code_challenge_method", Some("plain"))],
            "invalid_request",
            true,
        ),
        (
            vec![("code_challenge_method", None)],
            "invalid_request",
            true,
        ),
        (vec![("code_challenge", None)], "invalid_request", true),
        (
            vec![("code_challenge", Some("too-short"))],
            "invalid_request",
            true,
        ),
        (
            vec![("aud", Some("http://other.example/fhir"))],
            "invalid_request",
            true,
        ),
        (vec![("aud", None)], "invalid_request", true),
        (
            vec![("response_type", Some("token"))],
            "unsupported_response_type",
            true,
        ),
        (
            vec![("scope", Some("system/*.rs patient/Encounter.rs"))],
            "invalid_scope",
            true,
        ),
        (
            vec![("scope", Some("patient/Bogus.rs"))],
            "invalid_scope",
            true,
        ),
    ];
    for (overrides, error, has_state) in cases {
        let q = authorize_query(&app, "diary", FULL, &challenge, &overrides);
        let p = b.get(&format!("/auth/authorize?{q}")).await;
        assert_eq!(p.status, StatusCode::SEE_OTHER, "{overrides:?}: {}", p.body);
        let loc = p.location.expect("redirect");
        assert!(loc.starts_with(REDIRECT));
        let back = query_of(&loc);
        assert_eq!(back["error"], error, "{overrides:?}");
        assert_eq!(
            back.get("state").map(String::as_str),
            has_state.then_some("st-123"),
            "{overrides:?}"
        );
        assert!(!back.contains_key("code"));
    }
    // Discovery offers S256 only, and the authorization code grant.
    let conf: Value = reqwest::get(format!("{}/.well-known/smart-configuration", app.base))
        .await
        .expect("conf")
        .json()
        .await
        .expect("json");
    assert_eq!(conf["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(
        conf["authorization_endpoint"],
        format!("{}/auth/authorize", app.base.trim_end_matches("/fhir"))
    );
    assert!(conf["grant_types_supported"]
        .as_array()
        .expect("list")
        .contains(&json!("authorization_code")));
}

#[tokio::test]
async fn pkce_redirect_and_client_mismatches_are_invalid_grant_and_a_reused_code_revokes() {
    let app = spawn_app().await;
    register_app(&app, "diary", FULL, None).await;
    register_app(&app, "other", FULL, None).await;
    let mut b = Browser::new(&app);
    b.sign_up("pkce@example.org").await;
    let pid = b.patient_id().await;
    let (verifier, challenge) = pkce();
    let code = approve(
        &mut b,
        &authorize_query(&app, "diary", FULL, &challenge, &[]),
    )
    .await["code"]
        .clone();
    let exchange = |verifier: Option<String>, redirect: &'static str, client: &'static str| {
        let code = code.clone();
        let app = &app;
        async move {
            let mut form = vec![
                ("grant_type", "authorization_code".to_owned()),
                ("code", code),
                ("redirect_uri", redirect.to_owned()),
                ("client_id", client.to_owned()),
            ];
            if let Some(v) = verifier {
                form.push(("code_verifier", v));
            }
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            token_request(app, &form).await
        }
    };
    let wrong = pkce().0;
    for (v, why) in [
        (None, "no verifier"),
        (Some(String::new()), "blank"),
        (Some(wrong), "wrong"),
        (Some(challenge.clone()), "the challenge itself (plain)"),
    ] {
        let (status, err) = exchange(v, REDIRECT, "diary").await;
        assert_eq!(
            (status, err["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_grant")),
            "{why}"
        );
    }
    let (status, err) = exchange(
        Some(verifier.clone()),
        "https://app.example/cb?x=1",
        "diary",
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "redirect mismatch"
    );
    let (status, err) = exchange(Some(verifier.clone()), REDIRECT, "other").await;
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant")),
        "another client"
    );

    // The right verifier still works (failed attempts do not burn the code for its owner).
    let (status, body) = exchange(Some(verifier.clone()), REDIRECT, "diary").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let access = body["access_token"].as_str().expect("token").to_owned();
    assert_eq!(
        fhir_get(&app, &access, &format!("Patient/{pid}")).await.0,
        StatusCode::OK
    );

    // Second exchange: refused, and the token of the first is revoked.
    let (status, err) = exchange(Some(verifier), REDIRECT, "diary").await;
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );
    assert!(err["error_description"]
        .as_str()
        .expect("text")
        .contains("already used"));
    assert!(refused_soon(&app, &access, &format!("Patient/{pid}")).await);
    let refresh = body["refresh_token"].as_str().expect("refresh");
    let (_, err) = token_request(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", "diary"),
        ],
    )
    .await;
    assert_eq!(err["error"], "invalid_grant");

    // An expired code (older than 60 s).
    let (verifier, challenge) = pkce();
    let code = approve(
        &mut b,
        &authorize_query(&app, "diary", FULL, &challenge, &[]),
    )
    .await["code"]
        .clone();
    sqlx::query("update authorization_code set expires_at = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .expect("age codes");
    let (_, err) = token_request(
        &app,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("client_id", "diary"),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(err["error"], "invalid_grant");
    let (_, err) = token_request(
        &app,
        &[
            ("grant_type", "authorization_code"),
            ("code", "made-up"),
            ("redirect_uri", REDIRECT),
            ("client_id", "diary"),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    assert_eq!(err["error"], "invalid_grant");
}

#[tokio::test]
async fn confidential_apps_must_authenticate_and_refresh_tokens_are_bound_to_their_client() {
    let app = spawn_app().await;
    register_app(&app, "clinic", FULL, Some("s3cret-s3cret")).await;
    register_app(&app, "other", FULL, None).await;
    let mut b = Browser::new(&app);
    b.sign_up("conf@example.org").await;
    let (verifier, challenge) = pkce();
    let code = approve(
        &mut b,
        &authorize_query(&app, "clinic", FULL, &challenge, &[]),
    )
    .await["code"]
        .clone();
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", verifier.as_str()),
        ("client_id", "clinic"),
    ];
    let (status, err) = token_request(&app, &form).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let mut wrong = form.to_vec();
    wrong.push(("client_secret", "guess"));
    assert_eq!(
        token_request(&app, &wrong).await.1["error"],
        "invalid_client"
    );
    // client_secret_basic.
    let r = reqwest::Client::new()
        .post(format!("{}/auth/token", app.base.trim_end_matches("/fhir")))
        .basic_auth("clinic", Some("s3cret-s3cret"))
        .form(&form[..4])
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    let refresh = body["refresh_token"].as_str().expect("refresh");
    // Another client presenting it: invalid_grant (a public client cannot pose as the owner).
    let (_, err) = token_request(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh),
            ("client_id", "other"),
        ],
    )
    .await;
    assert_eq!(err["error"], "invalid_grant");
    // The owner revokes it (RFC 7009); it is then refused.
    let r = reqwest::Client::new()
        .post(format!(
            "{}/auth/revoke",
            app.base.trim_end_matches("/fhir")
        ))
        .basic_auth("clinic", Some("s3cret-s3cret"))
        .form(&[("token", refresh)])
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), StatusCode::OK);
    let r = reqwest::Client::new()
        .post(format!("{}/auth/token", app.base.trim_end_matches("/fhir")))
        .basic_auth("clinic", Some("s3cret-s3cret"))
        .form(&[("grant_type", "refresh_token"), ("refresh_token", refresh)])
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"],
        "invalid_grant"
    );
    let revoked: Vec<Value> = crate::audit::events(&app)
        .await
        .into_iter()
        .filter(|e| e["subtype"][0]["code"] == "token-revoke")
        .collect();
    assert_eq!(revoked.len(), 1);
    assert_eq!(revoked[0]["outcome"], "0");
    assert_eq!(
        revoked[0]["agent"][0]["who"]["identifier"]["value"],
        "clinic"
    );
}

#[tokio::test]
async fn forms_without_the_csrf_token_are_refused() {
    let app = spawn_app().await;
    register_app(&app, "diary", FULL, None).await;
    let mut b = Browser::new(&app);
    b.sign_up("csrf@example.org").await;
    let login = pairs(&[("email", "csrf@example.org"), ("password", PASSWORD)]);
    assert_eq!(
        b.post("/auth/login", &login).await.status,
        StatusCode::FORBIDDEN
    );
    let mut forged = login.clone();
    forged.push(("csrf".into(), "00".repeat(16)));
    assert_eq!(
        b.post("/auth/login", &forged).await.status,
        StatusCode::FORBIDDEN
    );
    // A token from another browser does not fit this browser's cookie.
    let mut other = Browser::new(&app);
    let theirs = field(&other.get("/auth/login").await.body, "csrf").expect("csrf");
    let mut cross = login.clone();
    cross.push(("csrf".into(), theirs));
    assert_eq!(
        b.post("/auth/login", &cross).await.status,
        StatusCode::FORBIDDEN
    );
    // The approval: a forged decision without the token issues nothing.
    let (_, challenge) = pkce();
    let q = authorize_query(&app, "diary", FULL, &challenge, &[]);
    let page = b.get(&format!("/auth/authorize?{q}")).await;
    let mut form: Vec<(String, String)> = hidden_fields(&page.body)
        .into_iter()
        .filter(|(k, _)| k != "csrf")
        .collect();
    form.push(("decision".into(), "allow".into()));
    let p = b.post("/auth/authorize", &form).await;
    assert_eq!((p.status, p.location), (StatusCode::FORBIDDEN, None));
    // The page cannot be framed or cached.
    let r = reqwest::get(format!("{}/auth/login", app.base.trim_end_matches("/fhir")))
        .await
        .expect("page");
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .contains("frame-ancestors 'none'"));
}

#[tokio::test]
async fn a_failed_sign_in_reveals_nothing_and_repeated_failures_are_rate_limited() {
    let app = spawn_app().await;
    let mut b = Browser::new(&app);
    b.sign_up("known@example.org").await;
    async fn attempt(b: &mut Browser, email: &str, password: &str) -> Page {
        let page = b.get("/auth/login").await;
        let mut form = hidden_fields(&page.body);
        form.extend(pairs(&[("email", email), ("password", password)]));
        b.post("/auth/login", &form).await
    }
    let unknown = attempt(&mut b, "nobody@example.org", "wrong password").await;
    let wrong = attempt(&mut b, "known@example.org", "wrong password").await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        unknown.body.replace("nobody@example.org", "EMAIL"),
        wrong.body.replace("known@example.org", "EMAIL"),
        "the two failures must read the same"
    );
    for _ in 0..4 {
        assert_eq!(
            attempt(&mut b, "known@example.org", "wrong again")
                .await
                .status,
            StatusCode::UNAUTHORIZED
        );
    }
    // Five failures for the account: now even the right password waits.
    let blocked = attempt(&mut b, "known@example.org", PASSWORD).await;
    assert_eq!(blocked.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(blocked.body.contains("Too many failed sign-ins"));
    // Another account from the same address is not blocked yet.
    let mut other = Browser::new(&app);
    other.sign_up("second@example.org").await;
    let page = other.get("/auth/login").await;
    let mut form = hidden_fields(&page.body);
    form.extend(pairs(&[
        ("email", "second@example.org"),
        ("password", PASSWORD),
    ]));
    assert_eq!(
        other.post("/auth/login", &form).await.status,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn sign_up_refuses_bad_input_and_a_taken_address() {
    let app = spawn_app().await;
    let mut b = Browser::new(&app);
    b.sign_up("taken@example.org").await;
    let csrf = field(&b.get("/auth/signup").await.body, "csrf").expect("csrf");
    for (email, password, given, needle) in [
        ("not-an-email", PASSWORD, "Ada", "valid email"),
        ("short@example.org", "short", "Ada", "at least 10"),
        ("noname@example.org", PASSWORD, "", "names"),
        ("TAKEN@example.org", PASSWORD, "Ada", "already exist"),
    ] {
        let p = b
            .post(
                "/auth/signup",
                &pairs(&[
                    ("csrf", &csrf),
                    ("email", email),
                    ("password", password),
                    ("given", given),
                    ("family", "L"),
                ]),
            )
            .await;
        assert_eq!(p.status, StatusCode::BAD_REQUEST, "{email}");
        assert!(p.body.contains(needle), "{email}: {}", p.body);
    }
    // Markup typed into a field comes back escaped.
    let p = b
        .post(
            "/auth/signup",
            &pairs(&[
                ("csrf", &csrf),
                ("email", "x"),
                ("password", PASSWORD),
                ("given", "<script>alert(1)</script>"),
                ("family", "L"),
            ]),
        )
        .await;
    assert!(!p.body.contains("<script>alert(1)"));
    assert!(p.body.contains("&lt;script&gt;"));
}

/// Creates an Observation for `patient` as the first-party backend; returns its id.
async fn observation_for(app: &TestApp, patient: &str, category: &str) -> String {
    let obs = json!({"resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient}")}, "effectiveDateTime": "2026-11-01T08:00:00Z"});
    let r = app
        .client
        .post(format!("{}/Observation", app.base))
        .header("content-type", "application/fhir+json")
        .json(&obs)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("id")
        .to_owned()
}

#[tokio::test]
async fn a_patient_token_sees_and_writes_only_its_own_compartment() {
    let app = spawn_app().await;
    let scope = "launch/patient patient/Observation.rs?category=vital-signs patient/Observation.cu patient/Patient.rs";
    register_app(&app, "diary", scope, None).await;
    let (mut a, token_a) = patient_token(&app, "diary", scope).await;
    let (mut b, _) = patient_token(&app, "diary", scope).await;
    let (pa, pb) = (a.patient_id().await, b.patient_id().await);
    let ta = token_a["access_token"].as_str().expect("token");
    let mine = observation_for(&app, &pa, "vital-signs").await;
    let my_lab = observation_for(&app, &pa, "laboratory").await;
    let theirs = observation_for(&app, &pb, "vital-signs").await;

    assert_eq!(
        fhir_get(&app, ta, &format!("Observation/{mine}")).await.0,
        StatusCode::OK
    );
    // Another patient's resources read exactly like resources that do not exist.
    let (s1, b1) = fhir_get(&app, ta, &format!("Observation/{theirs}")).await;
    let (s2, b2) = fhir_get(&app, ta, "Observation/does-not-exist").await;
    assert_eq!((s1, s2), (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND));
    assert_eq!(b1["issue"][0]["code"], b2["issue"][0]["code"]);
    assert_eq!(
        fhir_get(&app, ta, &format!("Patient/{pb}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        fhir_get(&app, ta, &format!("Observation/{theirs}/_history/1"))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    // A category outside the granular scope: not found.
    assert_eq!(
        fhir_get(&app, ta, &format!("Observation/{my_lab}")).await.0,
        StatusCode::NOT_FOUND
    );

    // Search and history hold only the patient's own, visible resources.
    let (_, bundle) = fhir_get(&app, ta, "Observation?_count=100").await;
    let ids: Vec<&str> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert_eq!(ids, vec![mine.as_str()]);
    let (_, bundle) = fhir_get(&app, ta, "Patient").await;
    let ids: Vec<&str> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str())
        .collect();
    assert_eq!(ids, vec![pa.as_str()]);
    let (status, _) = fhir_get(&app, ta, "Observation/_history").await;
    assert_eq!(status, StatusCode::OK);
    let (_, hist) = fhir_get(&app, ta, "Observation/_history").await;
    for e in hist["entry"].as_array().into_iter().flatten() {
        assert_eq!(
            e["resource"]["subject"]["reference"],
            format!("Patient/{pa}")
        );
    }

    // Writes: into another compartment or moving a resource across is 403; B's resource is not found.
    let put = |id: String, subject: String| {
        let body = json!({"resourceType": "Observation", "id": id, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": format!("Patient/{subject}")}});
        let url = format!("{}/Observation/{id}", app.base);
        async move {
            reqwest::Client::new()
                .put(url)
                .header("authorization", bearer(ta))
                .header("content-type", "application/fhir+json")
                .json(&body)
                .send()
                .await
                .expect("put")
                .status()
        }
    };
    assert_eq!(
        put(theirs.clone(), pa.clone()).await,
        StatusCode::NOT_FOUND,
        "taking B's resource"
    );
    assert_eq!(
        put(mine.clone(), pb.clone()).await,
        StatusCode::FORBIDDEN,
        "moving A's resource to B"
    );
    assert_eq!(
        put(mine.clone(), pa.clone()).await,
        StatusCode::OK,
        "updating its own"
    );
    let r = reqwest::Client::new().post(format!("{}/Observation", app.base)).header("authorization", bearer(ta))
        .header("content-type", "application/fhir+json")
        .json(&json!({"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"text": "x"}, "subject": {"reference": format!("Patient/{pb}")}}))
        .send().await.expect("post");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // B's resource is unchanged.
    let still: Value = app
        .get(&format!("Observation/{theirs}"))
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(still["meta"]["versionId"], "1");
    // A transaction with one entry outside the compartment writes nothing.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"text": "ok"}, "subject": {"reference": format!("Patient/{pa}")}},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"text": "not ok"}, "subject": {"reference": format!("Patient/{pb}")}},
         "request": {"method": "POST", "url": "Observation"}}]});
    let r = reqwest::Client::new()
        .post(&app.base)
        .header("authorization", bearer(ta))
        .header("content-type", "application/fhir+json")
        .json(&tx)
        .send()
        .await
        .expect("tx");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let count: i64 =
        sqlx::query_scalar("select count(*) from resource where resource_type = 'Observation'")
            .fetch_one(&app.pool)
            .await
            .expect("count");
    assert_eq!(count, 3);
}

#[tokio::test]
async fn the_admin_api_registers_apps_and_partner_backends() {
    let app = spawn_app().await;
    let key = es384_key("admin-key");
    fhirgate::auth::clients::add(
        &app.state.db,
        &fhirgate::auth::clients::Client {
            client_id: "ops".into(),
            kind: "backend".into(),
            scopes: "fhirgate/admin".into(),
            redirect_uris: vec![],
            confidential: false,
            secret_hash: None,
            jwks: Some(key.jwks.clone()),
            organization: None,
        },
    )
    .await
    .expect("register ops");
    let root = app.base.trim_end_matches("/fhir").to_owned();
    let token_url = format!("{root}/auth/token");
    let r = request_token(
        &token_url,
        &key.assertion("ops", &token_url, json!({})),
        "fhirgate/admin",
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let admin = r.json::<Value>().await.expect("json")["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let http = reqwest::Client::new();
    let post = |body: Value, token: Option<String>| {
        let mut req = http.post(format!("{root}/admin/clients")).json(&body);
        if let Some(t) = token {
            req = req.header("authorization", bearer(&t));
        }
        req.send()
    };

    let r = post(
        json!({"kind": "app", "client_id": "new-app", "scopes": "patient/*.rs openid",
        "redirect_uris": ["https://app.example/cb"], "confidential": true}),
        Some(admin.clone()),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), StatusCode::CREATED);
    let made: Value = r.json().await.expect("json");
    assert_eq!(made["client_secret"].as_str().expect("secret").len(), 64);
    let partner = es384_key("partner-key");
    let r = post(
        json!({"kind": "backend", "client_id": "partner", "scopes": "system/Observation.rs",
        "jwks": partner.jwks, "organization": "Organization/acme"}),
        Some(admin.clone()),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), StatusCode::CREATED);
    // The partner can now get a token, and its Organization exists as a resource.
    let r = request_token(
        &token_url,
        &partner.assertion("partner", &token_url, json!({})),
        "system/Observation.rs",
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let org: Value = app
        .get("Organization/acme")
        .await
        .json()
        .await
        .expect("json");
    assert_eq!(org["resourceType"], "Organization");
    assert_eq!(org["active"], true);
    // A partner registered on the command line (no keys there) gets its Organization when it
    // first asks for a token.
    let beta = es384_key("beta-key");
    fhirgate::auth::clients::add(
        &app.state.db,
        &fhirgate::auth::clients::Client {
            client_id: "beta".into(),
            kind: "backend".into(),
            scopes: "system/Observation.rs".into(),
            redirect_uris: vec![],
            confidential: false,
            secret_hash: None,
            jwks: Some(beta.jwks.clone()),
            organization: Some("Organization/beta".into()),
        },
    )
    .await
    .expect("register beta");
    assert_eq!(
        app.get("Organization/beta").await.status(),
        StatusCode::NOT_FOUND
    );
    let r = request_token(
        &token_url,
        &beta.assertion("beta", &token_url, json!({})),
        "system/Observation.rs",
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(app.get("Organization/beta").await.status(), StatusCode::OK);

    // Refusals: duplicate 409, malformed 400, bad redirect 400, each an OperationOutcome.
    let r = post(json!({"kind": "app", "client_id": "new-app", "scopes": "openid", "redirect_uris": ["https://a.example/"]}), Some(admin.clone())).await.expect("post");
    assert_eq!(r.status(), StatusCode::CONFLICT);
    for bad in [
        json!({"kind": "app"}),
        json!({"kind": "app", "client_id": "x", "scopes": "openid", "redirect_uris": ["javascript:alert(1)"]}),
        json!({"kind": "backend", "client_id": "y", "scopes": "system/*.rs", "jwks": {"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}}),
        json!({"kind": "app", "client_id": "z", "scopes": "patient/Nope.rs", "redirect_uris": ["https://a.example/"]}),
    ] {
        let r = post(bad.clone(), Some(admin.clone())).await.expect("post");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(
            r.json::<Value>().await.expect("json")["resourceType"],
            "OperationOutcome"
        );
    }
    // No token: 401; a token without the admin scope (even with every FHIR scope): 403.
    let r = post(json!({}), None).await.expect("post");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().contains_key("www-authenticate"));
    let fhir_token = crate::helpers::mint(&app.state, "system/*.cruds", None);
    assert_eq!(
        post(json!({}), Some(fhir_token))
            .await
            .expect("post")
            .status(),
        StatusCode::FORBIDDEN
    );
    // And the admin token reads no health data.
    assert_eq!(
        fhir_get(&app, &admin, "Observation").await.0,
        StatusCode::FORBIDDEN
    );

    let list: Value = http
        .get(format!("{root}/admin/clients"))
        .header("authorization", bearer(&admin))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let ids: Vec<&str> = list["clients"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|c| c["client_id"].as_str())
        .collect();
    assert_eq!(ids, vec!["beta", "new-app", "ops", "partner"]);
    assert!(list.to_string().find("secret_hash").is_none());
    let r = http
        .delete(format!("{root}/admin/clients/new-app"))
        .header("authorization", bearer(&admin))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = http
        .get(format!("{root}/admin/clients/new-app"))
        .header("authorization", bearer(&admin))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn repeated_failed_client_authentications_are_rate_limited() {
    let app = spawn_app().await;
    register_app(&app, "diary", FULL, Some("right-secret")).await;
    let form = [
        ("grant_type", "authorization_code"),
        ("code", "x"),
        ("redirect_uri", REDIRECT),
        ("client_id", "diary"),
        ("client_secret", "wrong"),
        ("code_verifier", "v"),
    ];
    let mut statuses = Vec::new();
    for _ in 0..65 {
        let r = reqwest::Client::new()
            .post(format!("{}/auth/token", app.base.trim_end_matches("/fhir")))
            .form(&form)
            .send()
            .await
            .expect("token");
        statuses.push(r.status());
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
}

#[tokio::test]
async fn anonymous_reads_are_off_by_default_and_when_on_cover_reads_only() {
    let off = spawn_app().await;
    let r = off
        .anonymous
        .get(format!("{}/Observation", off.base))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    let app = crate::helpers::spawn_app_with(|a| a.allow_anonymous_read = true).await;
    let id = observation_for(&app, "p1", "vital-signs").await;
    let r = app
        .anonymous
        .get(format!("{}/Observation/{id}", app.base))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    let r = app
        .anonymous
        .post(format!("{}/Observation", app.base))
        .header("content-type", "application/fhir+json")
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app
        .anonymous
        .get(format!(
            "{}/admin/clients",
            app.base.trim_end_matches("/fhir")
        ))
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A token that is present is still verified.
    let r = app
        .anonymous
        .get(format!("{}/Observation/{id}", app.base))
        .bearer_auth("not-a-token")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn user_scopes_of_a_patient_are_bounded_by_the_compartment_too() {
    let app = spawn_app().await;
    register_app(&app, "portal", "user/Observation.rs user/Patient.r", None).await;
    let (mut a, token) = patient_token(&app, "portal", "user/Observation.rs user/Patient.r").await;
    let (_, other) = patient_token(&app, "portal", "user/Patient.r").await;
    let pa = a.patient_id().await;
    let ta = token["access_token"].as_str().expect("token");
    // No launch/patient: no patient in the response, but the token still acts for this patient.
    assert!(token.get("patient").is_none());
    let mine = observation_for(&app, &pa, "activity").await;
    let pb = claims_of(other["access_token"].as_str().expect("token"))["patient"]
        .as_str()
        .expect("patient claim")
        .to_owned();
    let theirs = observation_for(&app, &pb, "activity").await;
    assert_eq!(
        fhir_get(&app, ta, &format!("Observation/{mine}")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        fhir_get(&app, ta, &format!("Observation/{theirs}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        fhir_get(&app, ta, &format!("Patient/{pb}")).await.0,
        StatusCode::NOT_FOUND
    );
    // Read-only scopes: a write is 403.
    let r = reqwest::Client::new()
        .delete(format!("{}/Observation/{mine}", app.base))
        .header("authorization", bearer(ta))
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}
