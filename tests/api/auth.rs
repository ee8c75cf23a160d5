//! SMART on FHIR: discovery, Backend Services tokens and every refusal, and scope enforcement on
//! the FHIR API (security-test-plan A1–A8, A14–A17).

use base64::Engine;
use serde_json::{json, Value};

use crate::helpers::{
    assert_outcome, es384_key, json, mint, observation, request_token, rs384_key, spawn_app,
    BackendKey, TestApp,
};

pub(crate) async fn register(
    app: &TestApp,
    id: &str,
    key: &BackendKey,
    scopes: &str,
    organization: Option<&str>,
) {
    let c = fhirgate::auth::clients::Client {
        client_id: id.into(),
        kind: "backend".into(),
        scopes: scopes.into(),
        redirect_uris: vec![],
        confidential: false,
        secret_hash: None,
        jwks: Some(key.jwks.clone()),
        organization: organization.map(str::to_owned),
    };
    fhirgate::auth::clients::add(&app.state.db, &c)
        .await
        .expect("register");
}

fn token_url(app: &TestApp) -> String {
    app.state.token_url()
}

async fn oauth_error(resp: reqwest::Response, status: u16, error: &str) {
    assert_eq!(resp.status().as_u16(), status);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body = json(resp).await;
    assert_eq!(body["error"], error, "{body}");
}

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

#[tokio::test]
async fn discovery_and_metadata_are_public() {
    let app = spawn_app().await;
    let root = app.base.trim_end_matches("/fhir").to_owned();
    for url in [
        format!("{root}/.well-known/smart-configuration"),
        format!("{}/.well-known/smart-configuration", app.base),
    ] {
        let conf = json(app.anonymous.get(&url).send().await.expect("get")).await;
        assert_eq!(conf["token_endpoint"], token_url(&app));
        assert_eq!(
            conf["token_endpoint_auth_signing_alg_values_supported"],
            json!(["RS384", "ES384"])
        );
    }
    let jwks = json(
        app.anonymous
            .get(format!("{root}/auth/jwks"))
            .send()
            .await
            .expect("jwks"),
    )
    .await;
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert!(jwks["keys"][0].get("d").is_none(), "no private part");
    let cs = json(
        app.anonymous
            .get(format!("{}/metadata", app.base))
            .send()
            .await
            .expect("metadata"),
    )
    .await;
    let ext = &cs["rest"][0]["security"]["extension"][0];
    assert_eq!(
        ext["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    let uris: std::collections::HashMap<&str, &str> = ext["extension"]
        .as_array()
        .expect("uris")
        .iter()
        .filter_map(|e| Some((e["url"].as_str()?, e["valueUri"].as_str()?)))
        .collect();
    let root = app.base.trim_end_matches("/fhir");
    assert_eq!(uris["authorize"], format!("{root}/auth/authorize"));
    assert_eq!(uris["token"], format!("{root}/auth/token"));
    assert_eq!(uris["revoke"], format!("{root}/auth/revoke"));
}

#[tokio::test]
async fn a_backend_gets_a_token_with_es384_and_rs384_and_uses_it() {
    let app = spawn_app().await;
    for (id, key) in [
        ("es-backend", es384_key("k1")),
        ("rs-backend", rs384_key("r1")),
    ] {
        register(
            &app,
            id,
            &key,
            "system/Observation.rs system/Patient.rs",
            None,
        )
        .await;
        let resp = request_token(
            &token_url(&app),
            &key.assertion(id, &token_url(&app), json!({})),
            "system/Observation.rs",
        )
        .await;
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let t = json(resp).await;
        assert_eq!(t["token_type"], "Bearer");
        assert_eq!(t["expires_in"], 300);
        assert_eq!(t["scope"], "system/Observation.rs");
        let token = t["access_token"].as_str().expect("token");
        let resp = app
            .anonymous
            .get(format!("{}/Observation", app.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("search");
        assert_eq!(resp.status(), 200);
        // The scope allows reading Observations, not Patients, and never writing.
        let resp = app
            .anonymous
            .get(format!("{}/Patient/x", app.base))
            .bearer_auth(token)
            .send()
            .await
            .expect("read");
        assert_outcome(resp, 403, "forbidden").await;
        let resp = app
            .anonymous
            .post(format!("{}/Observation", app.base))
            .bearer_auth(token)
            .header("content-type", "application/fhir+json")
            .body(observation("p", 1.0).to_string())
            .send()
            .await
            .expect("create");
        assert_outcome(resp, 403, "forbidden").await;
    }
}

#[tokio::test]
async fn every_bad_assertion_is_invalid_client() {
    let app = spawn_app().await;
    let key = es384_key("k1");
    register(&app, "backend", &key, "system/*.rs", None).await;
    let url = token_url(&app);
    let now = chrono::Utc::now().timestamp();
    let cases: Vec<(&str, String)> = vec![
        (
            "exp more than five minutes ahead",
            key.assertion("backend", &url, json!({"exp": now + 400})),
        ),
        (
            "expired",
            key.assertion("backend", &url, json!({"exp": now - 100})),
        ),
        (
            "iss differs from sub",
            key.assertion("backend", &url, json!({"sub": "someone-else"})),
        ),
        (
            "aud is the FHIR base",
            key.assertion("backend", &url, json!({"aud": app.base})),
        ),
        (
            "no jti",
            key.assertion("backend", &url, json!({"jti": null})),
        ),
        ("unknown client", key.assertion("nobody", &url, json!({}))),
        (
            "signed by another key",
            es384_key("k1").assertion("backend", &url, json!({})),
        ),
        (
            "unknown kid",
            es384_key("k9").assertion("backend", &url, json!({})),
        ),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(
                    &json!({"iss": "backend", "sub": "backend", "aud": url, "exp": now + 60, "jti": "x"})
                )
            ),
        ),
        ("RS256 is not accepted", {
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
            header.kid = Some("k1".into());
            let claims = json!({"iss": "backend", "sub": "backend", "aud": url, "exp": now + 60, "jti": "y"});
            let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("rsa");
            let der = rsa::pkcs1::EncodeRsaPrivateKey::to_pkcs1_der(&key).expect("der");
            jsonwebtoken::encode(
                &header,
                &claims,
                &jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes()),
            )
            .expect("sign")
        }),
    ];
    for (what, assertion) in cases {
        let resp = request_token(&url, &assertion, "system/*.rs").await;
        assert_eq!(resp.status(), 401, "{what}");
        let body = json(resp).await;
        assert_eq!(body["error"], "invalid_client", "{what}: {body}");
    }
    // Replay: the second use of one assertion fails.
    let once = key.assertion("backend", &url, json!({}));
    assert_eq!(
        request_token(&url, &once, "system/*.rs").await.status(),
        200
    );
    oauth_error(
        request_token(&url, &once, "system/*.rs").await,
        401,
        "invalid_client",
    )
    .await;
    // Twenty concurrent submissions of one assertion: exactly one token.
    let racing = key.assertion("backend", &url, json!({}));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (u, a) = (url.clone(), racing.clone());
        tasks.push(tokio::spawn(async move {
            request_token(&u, &a, "system/*.rs").await.status().as_u16()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.expect("task") == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 1);
    // Scope escalation and wrong contexts.
    oauth_error(
        request_token(
            &url,
            &key.assertion("backend", &url, json!({})),
            "system/*.cruds",
        )
        .await,
        400,
        "invalid_scope",
    )
    .await;
    oauth_error(
        request_token(
            &url,
            &key.assertion("backend", &url, json!({})),
            "patient/*.rs",
        )
        .await,
        400,
        "invalid_scope",
    )
    .await;
    oauth_error(
        request_token(
            &url,
            &key.assertion("backend", &url, json!({})),
            "system/Bogus.rs",
        )
        .await,
        400,
        "invalid_scope",
    )
    .await;
    let resp = reqwest::Client::new()
        .post(&url)
        .form(&[("grant_type", "password")])
        .send()
        .await
        .expect("post");
    oauth_error(resp, 400, "unsupported_grant_type").await;
}

fn other_key_token(claims: &Value, kid: &str) -> String {
    use p256::pkcs8::EncodePrivateKey;
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_ec_der(secret.to_pkcs8_der().expect("der").as_bytes()),
    )
    .expect("sign")
}

#[tokio::test]
async fn the_fhir_api_refuses_bad_tokens() {
    let app = spawn_app().await;
    let url = format!("{}/Patient", app.base);
    // No token: 401 with a Bearer challenge and an OperationOutcome.
    let resp = app.anonymous.get(&url).send().await.expect("get");
    assert_eq!(
        resp.headers()["www-authenticate"],
        r#"Bearer realm="fhirgate""#
    );
    assert_outcome(resp, 401, "login").await;
    let now = chrono::Utc::now().timestamp();
    let good = json!({"iss": app.state.issuer, "aud": app.state.fhir_base, "sub": "t", "exp": now + 60, "iat": now,
        "jti": "j1", "scope": "system/*.rs", "client_id": "t"});
    let kid = app.state.signing.jwks()["keys"][0]["kid"]
        .as_str()
        .expect("kid")
        .to_owned();
    let with = |patch: Value| {
        let mut c = good.clone();
        for (k, v) in patch.as_object().expect("obj") {
            if v.is_null() {
                c.as_object_mut().expect("o").remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        app.state.signing.sign(&c).expect("sign")
    };
    let jwk = &app.state.signing.jwks()["keys"][0];
    let public_bytes = format!(
        "{}{}",
        jwk["x"].as_str().expect("x"),
        jwk["y"].as_str().expect("y")
    );
    let hs256 = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(kid.clone());
        jsonwebtoken::encode(
            &h,
            &good,
            &jsonwebtoken::EncodingKey::from_secret(public_bytes.as_bytes()),
        )
        .expect("hs")
    };
    let bad: Vec<(&str, String)> = vec![
        ("garbage", "not-a-jwt".into()),
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "kid": kid})),
                b64(&good)
            ),
        ),
        ("HS256 with the public key", hs256),
        ("expired beyond the leeway", with(json!({"exp": now - 61}))),
        (
            "wrong audience",
            with(json!({"aud": "http://elsewhere/fhir"})),
        ),
        ("no audience", with(json!({"aud": null}))),
        ("wrong issuer", with(json!({"iss": "http://evil"}))),
        ("not yet valid", with(json!({"nbf": now + 600}))),
        ("another key with our kid", other_key_token(&good, &kid)),
    ];
    for (what, token) in bad {
        let resp = app
            .anonymous
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("get");
        assert_eq!(resp.status(), 401, "{what}");
        assert_eq!(
            resp.headers()["www-authenticate"],
            r#"Bearer realm="fhirgate", error="invalid_token""#,
            "{what}"
        );
    }
    // Within the 30 s leeway is fine; the scheme is case-insensitive.
    let resp = app
        .anonymous
        .get(&url)
        .header(
            "authorization",
            format!("bearer {}", with(json!({"exp": now - 10}))),
        )
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 200);
    // Tokens in the query string are refused; two Authorization headers are a 400.
    let resp = app
        .anonymous
        .get(format!("{url}?access_token={}", with(json!({}))))
        .send()
        .await
        .expect("get");
    assert_eq!(resp.status(), 401);
    let resp = app
        .anonymous
        .get(&url)
        .header("authorization", format!("Bearer {}", with(json!({}))))
        .header("authorization", "Bearer x")
        .send()
        .await
        .expect("get");
    assert_outcome(resp, 400, "invalid").await;
}

#[tokio::test]
async fn scopes_are_enforced_per_interaction_and_per_bundle_entry() {
    let app = spawn_app().await;
    let read_obs = mint(&app.state, "system/Observation.rs", None);
    let send = |token: String, method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut r = app
            .anonymous
            .request(method, format!("{}/{path}", app.base))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r
                .header("content-type", "application/fhir+json")
                .body(b.to_string());
        }
        r.send()
    };
    assert_eq!(
        send(read_obs.clone(), reqwest::Method::GET, "Observation", None)
            .await
            .expect("s")
            .status(),
        200
    );
    assert_outcome(
        send(read_obs.clone(), reqwest::Method::GET, "Patient", None)
            .await
            .expect("s"),
        403,
        "forbidden",
    )
    .await;
    assert_outcome(
        send(read_obs.clone(), reqwest::Method::GET, "_history", None)
            .await
            .expect("s"),
        403,
        "forbidden",
    )
    .await;
    assert_outcome(
        send(
            read_obs.clone(),
            reqwest::Method::DELETE,
            "Observation/x",
            None,
        )
        .await
        .expect("s"),
        403,
        "forbidden",
    )
    .await;
    // A v1 write scope: create yes, read no.
    let write_obs = mint(&app.state, "system/Observation.write", None);
    assert_eq!(
        send(
            write_obs.clone(),
            reqwest::Method::POST,
            "Observation",
            Some(observation("p", 2.0))
        )
        .await
        .expect("s")
        .status(),
        201
    );
    assert_outcome(
        send(write_obs.clone(), reqwest::Method::GET, "Observation", None)
            .await
            .expect("s"),
        403,
        "forbidden",
    )
    .await;
    // A transaction with one entry outside the scopes: 403 and nothing written.
    let before = app.count("resource_version").await;
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation("p", 3.0), "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}]});
    let oo = assert_outcome(
        send(write_obs.clone(), reqwest::Method::POST, "", Some(tx))
            .await
            .expect("s"),
        403,
        "forbidden",
    )
    .await;
    assert!(
        oo["issue"][0]["diagnostics"]
            .as_str()
            .expect("d")
            .contains("Bundle.entry[1]"),
        "{oo}"
    );
    assert_eq!(app.count("resource_version").await, before);
    // In a batch, only that entry is refused.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": observation("p", 3.0), "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}]});
    let out = json(
        send(write_obs, reqwest::Method::POST, "", Some(batch))
            .await
            .expect("s"),
    )
    .await;
    assert_eq!(out["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(out["entry"][1]["response"]["status"], "403 Forbidden");
    // A partner backend (bound to an Organization) finds nothing until patients consent, and
    // its writes are refused.
    let partner = mint(&app.state, "system/*.rs", Some("Organization/partner"));
    let found = json(
        send(partner.clone(), reqwest::Method::GET, "Observation", None)
            .await
            .expect("s"),
    )
    .await;
    assert!(found.get("entry").is_none(), "{found}");
    assert_outcome(
        send(
            partner,
            reqwest::Method::POST,
            "Observation",
            Some(observation("p1", 70.0)),
        )
        .await
        .expect("s"),
        403,
        "forbidden",
    )
    .await;
}

#[tokio::test]
async fn a_revoked_token_stops_working_within_seconds() {
    let app = spawn_app().await;
    let token = mint(&app.state, "system/*.rs", None);
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).expect("p"))
            .expect("b64"),
    )
    .expect("json");
    let url = format!("{}/Patient", app.base);
    assert_eq!(
        app.anonymous
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
    sqlx::query(
        "insert into revoked_token (jti, expires_at) values ($1, now() + interval '1 hour')",
    )
    .bind(claims["jti"].as_str().expect("jti"))
    .execute(&app.pool)
    .await
    .expect("revoke");
    let started = std::time::Instant::now();
    loop {
        let status = app
            .anonymous
            .get(&url)
            .bearer_auth(&token)
            .send()
            .await
            .expect("get")
            .status();
        if status == 401 {
            break;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "still accepted after 3 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn introspection_and_revocation() {
    let app = spawn_app().await;
    let root = app.state.issuer.clone();
    let mine = mint(&app.state, "system/*.rs", None);
    let post = |path: &'static str, bearer: Option<String>, token: String| {
        let mut r = app
            .anonymous
            .post(format!("{root}/auth/{path}"))
            .form(&[("token", token)]);
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        r.send()
    };
    // Without authorization: 401 invalid_client.
    oauth_error(
        post("introspect", None, mine.clone()).await.expect("post"),
        401,
        "invalid_client",
    )
    .await;
    // A random string and an expired token are inactive, with nothing else said.
    let body = json(
        post("introspect", Some(mine.clone()), "random".into())
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(body, json!({"active": false}));
    let now = chrono::Utc::now().timestamp();
    let expired = app
        .state
        .signing
        .sign(&json!({"iss": app.state.issuer, "aud": app.state.fhir_base, "sub": "t", "exp": now - 120, "iat": now - 500,
            "jti": "old", "scope": "system/*.rs", "client_id": "test-backend"}))
        .expect("sign");
    assert_eq!(
        json(
            post("introspect", Some(mine.clone()), expired)
                .await
                .expect("post")
        )
        .await,
        json!({"active": false})
    );
    // A live token: active with its claims.
    let body = json(
        post("introspect", Some(mine.clone()), mine.clone())
            .await
            .expect("post"),
    )
    .await;
    assert_eq!(body["active"], true);
    assert_eq!(body["scope"], "system/*.rs");
    // A partner cannot learn about another client's tokens.
    let partner = mint(&app.state, "system/*.rs", Some("Organization/p"));
    let other = app.state.signing.sign(&json!({"iss": app.state.issuer, "aud": app.state.fhir_base, "sub": "x", "exp": now + 60,
        "iat": now, "jti": "x1", "scope": "system/*.rs", "client_id": "someone-else"})).expect("sign");
    assert_eq!(
        json(
            post("introspect", Some(partner), other)
                .await
                .expect("post")
        )
        .await,
        json!({"active": false})
    );
    // Revocation: 200, then the token is inactive and refused by the FHIR API within seconds.
    let victim = mint(&app.state, "system/*.rs", None);
    let resp = post("revoke", Some(victim.clone()), victim.clone())
        .await
        .expect("post");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    assert_eq!(
        json(
            post("introspect", Some(mine.clone()), victim.clone())
                .await
                .expect("post")
        )
        .await["active"],
        false
    );
    let started = std::time::Instant::now();
    while app
        .anonymous
        .get(format!("{}/Patient", app.base))
        .bearer_auth(&victim)
        .send()
        .await
        .expect("get")
        .status()
        != 401
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "revoked token still accepted"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let conf = json(
        app.anonymous
            .get(format!("{root}/.well-known/smart-configuration"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(conf["revocation_endpoint"], format!("{root}/auth/revoke"));
}

#[tokio::test]
async fn granular_scopes_hide_what_they_do_not_cover() {
    let app = spawn_app().await;
    let vital = observation("g1", 60.0);
    let mut lab = observation("g1", 5.4);
    lab["category"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}]);
    let vital_id = json(app.post("Observation", &vital).await).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let lab_id = json(app.post("Observation", &lab).await).await["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let token = mint(
        &app.state,
        "system/Observation.rs?category=vital-signs",
        None,
    );
    let get = |path: String| {
        app.anonymous
            .get(format!("{}/{path}", app.base))
            .bearer_auth(token.clone())
            .send()
    };
    assert_eq!(
        get(format!("Observation/{vital_id}"))
            .await
            .expect("get")
            .status(),
        200
    );
    assert_outcome(
        get(format!("Observation/{lab_id}")).await.expect("get"),
        404,
        "not-found",
    )
    .await;
    assert_outcome(
        get(format!("Observation/{lab_id}/_history/1"))
            .await
            .expect("get"),
        404,
        "not-found",
    )
    .await;
    let ids = |b: &Value| -> Vec<String> {
        b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        ids(&json(get("Observation".into()).await.expect("search")).await),
        vec![vital_id.clone()]
    );
    assert_eq!(
        ids(&json(get("Observation/_history".into()).await.expect("history")).await),
        vec![vital_id.clone()]
    );
    // The system-qualified form of the filter works too.
    let qualified = mint(&app.state, "system/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory", None);
    let r = app
        .anonymous
        .get(format!("{}/Observation/{lab_id}", app.base))
        .bearer_auth(&qualified)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    // A granular write scope cannot write outside its category, in a create or in a Bundle.
    let writer = mint(
        &app.state,
        "system/Observation.cu?category=vital-signs",
        None,
    );
    let post = |body: Value| {
        app.anonymous
            .post(format!("{}/Observation", app.base))
            .bearer_auth(writer.clone())
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
    };
    assert_eq!(post(vital.clone()).await.expect("post").status(), 201);
    assert_outcome(post(lab.clone()).await.expect("post"), 403, "forbidden").await;
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": lab, "request": {"method": "POST", "url": "Observation"}}]});
    let r = app
        .anonymous
        .post(&app.base)
        .bearer_auth(&writer)
        .header("content-type", "application/fhir+json")
        .body(tx.to_string())
        .send()
        .await
        .expect("tx");
    assert_outcome(r, 403, "forbidden").await;
    // A batch GET of a hidden resource is a 404 entry.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": format!("Observation/{lab_id}")}}]});
    let out = json(
        app.anonymous
            .post(&app.base)
            .bearer_auth(&token)
            .header("content-type", "application/fhir+json")
            .body(batch.to_string())
            .send()
            .await
            .expect("batch"),
    )
    .await;
    assert_eq!(out["entry"][0]["response"]["status"], "404 Not Found");
}
