//! The code flow as real clients run it: the `oauth2` crate (as a Rust app would use it) and a
//! headless Chromium going through the sign-up and approval pages.

use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, CsrfToken, PkceCodeChallenge, RedirectUrl, RefreshToken,
    Scope, TokenResponse, TokenUrl,
};
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::spawn_app;
use crate::smart_app::{hidden_fields, query_of, register_app, Browser, PASSWORD, REDIRECT};

const SCOPES: [&str; 5] = [
    "launch/patient",
    "openid",
    "fhirUser",
    "offline_access",
    "patient/Observation.rs",
];

#[tokio::test]
async fn the_oauth2_crate_runs_the_code_flow_with_pkce_and_refresh() {
    let app = spawn_app().await;
    register_app(&app, "rust-app", &SCOPES.join(" "), None).await;
    let root = app.base.trim_end_matches("/fhir").to_owned();
    let client = BasicClient::new(ClientId::new("rust-app".into()))
        .set_auth_uri(AuthUrl::new(format!("{root}/auth/authorize")).expect("auth url"))
        .set_token_uri(TokenUrl::new(format!("{root}/auth/token")).expect("token url"))
        .set_redirect_uri(RedirectUrl::new(REDIRECT.into()).expect("redirect"));
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (url, state) = client
        .authorize_url(CsrfToken::new_random)
        .add_scopes(SCOPES.iter().map(|s| Scope::new((*s).to_owned())))
        .add_extra_param("aud", &app.base)
        .set_pkce_challenge(challenge)
        .url();

    // The user's part, in the pages: sign up, then approve what the app asked for.
    let mut b = Browser::new(&app);
    b.sign_up("oauth2-crate@example.org").await;
    let page = b.get(url.as_str()).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.body);
    let mut form = hidden_fields(&page.body);
    form.push(("decision".into(), "allow".into()));
    let back = query_of(
        &b.post("/auth/authorize", &form)
            .await
            .location
            .expect("redirect"),
    );
    assert_eq!(&back["state"], state.secret());

    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http");
    let token = client
        .exchange_code(AuthorizationCode::new(back["code"].clone()))
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .expect("the oauth2 crate exchanges the code");
    let scopes: Vec<String> = token
        .scopes()
        .expect("scope")
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert!(scopes.contains(&"patient/Observation.rs".to_owned()));
    let r = reqwest::Client::new()
        .get(format!("{}/Observation", app.base))
        .bearer_auth(token.access_token().secret())
        .send()
        .await
        .expect("search");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.expect("json")["type"], "searchset");

    let refresh = token
        .refresh_token()
        .expect("offline_access gives a refresh token");
    let renewed = client
        .exchange_refresh_token(refresh)
        .request_async(&http)
        .await
        .expect("refresh");
    assert_ne!(
        renewed.refresh_token().expect("rotated").secret(),
        refresh.secret()
    );
    // The old refresh token is spent: the crate sees the server's invalid_grant.
    let reused = client
        .exchange_refresh_token(&RefreshToken::new(refresh.secret().clone()))
        .request_async(&http)
        .await;
    let err = format!("{:?}", reused.expect_err("reuse is refused"));
    assert!(err.contains("invalid_grant"), "{err}");

    // The audit trail has each token event of the app, the refused reuse included.
    let tokens: Vec<(String, String)> = crate::audit::events(&app)
        .await
        .iter()
        .filter(|e| e["type"]["code"] == "110114" && e["subtype"][0]["code"] != "110122")
        .map(|e| {
            assert_eq!(e["agent"][0]["who"]["identifier"]["value"], "rust-app");
            (
                e["subtype"][0]["code"].as_str().unwrap_or("").to_owned(),
                e["outcome"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    let expected = [
        ("token-issue", "0"),
        ("token-refresh", "0"),
        ("token-refresh", "4"),
    ];
    assert_eq!(tokens, expected.map(|(s, o)| (s.to_owned(), o.to_owned())));
}

#[tokio::test]
async fn headless_chromium_signs_up_approves_and_lands_on_the_app_with_a_code() {
    let app = spawn_app().await;
    // A stub of the app: its redirect URI answers, so the browser really lands there.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let redirect = format!("http://{}/callback", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let stub = axum::Router::new().fallback(|| async { "app callback" });
        axum::serve(listener, stub).await.expect("stub app");
    });
    fhirgate::auth::clients::add(
        &app.state.db,
        &fhirgate::auth::clients::Client {
            client_id: "browser-app".into(),
            kind: "app".into(),
            scopes: SCOPES.join(" "),
            redirect_uris: vec![redirect.clone()],
            confidential: false,
            secret_hash: None,
            jwks: None,
            organization: None,
        },
    )
    .await
    .expect("register");
    let (verifier, challenge) = crate::smart_app::pkce();
    let query = crate::smart_app::authorize_query(
        &app,
        "browser-app",
        &SCOPES.join(" "),
        &challenge,
        &[
            ("state", Some("chromium-state")),
            ("redirect_uri", Some(&redirect)),
        ],
    );
    let authorize = format!(
        "{}/auth/authorize?{query}",
        app.base.trim_end_matches("/fhir")
    );
    let report = crate::helpers::browser_script(
        "smart_login.mjs",
        &[&authorize, &redirect, "chromium@example.org", PASSWORD],
    )
    .await;
    assert!(report["approvalTitle"]
        .as_str()
        .expect("title")
        .contains("browser-app"));
    let scopes = report["scopes"].to_string();
    assert!(
        scopes.contains("Read and search your observations"),
        "{scopes}"
    );
    let back = query_of(report["callback"].as_str().expect("callback"));
    assert_eq!(back["state"], "chromium-state");
    let (status, body) = crate::smart_app::token_request(
        &app,
        &[
            ("grant_type", "authorization_code"),
            ("code", &back["code"]),
            ("redirect_uri", &redirect),
            ("code_verifier", &verifier),
            ("client_id", "browser-app"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let patient = body["patient"]
        .as_str()
        .expect("patient in the token response");
    let r = reqwest::Client::new()
        .get(format!("{}/Patient/{patient}", app.base))
        .bearer_auth(body["access_token"].as_str().expect("token"))
        .send()
        .await
        .expect("read");
    // The token is for Observations only; the patient's record itself is out of scope.
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}
