//! Test harness: a real PostgreSQL (DATABASE_URL, else 127.0.0.1:5432, else a private cluster
//! started from the local binaries), a fresh database per test, and the real server on a free port.

use std::net::{SocketAddr, TcpStream};
use std::sync::{LazyLock, OnceLock};
use std::time::Duration;

use fhirgate::config::{DbArgs, ServeArgs};
use fhirgate::pg::PrivatePostgres;
use fhirgate::startup::Application;
use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

static TRACING: LazyLock<()> = LazyLock::new(|| {
    if std::env::var("TEST_LOG").is_ok() {
        fhirgate::telemetry::init();
    }
});

/// Connection options of the server the tests use, found once per test binary.
pub(crate) fn admin_options() -> PgConnectOptions {
    static ADMIN: OnceLock<PgConnectOptions> = OnceLock::new();
    ADMIN
        .get_or_init(|| {
            if let Ok(url) = std::env::var("DATABASE_URL") {
                return url.parse().expect("DATABASE_URL");
            }
            let local: SocketAddr = "127.0.0.1:5432".parse().expect("addr");
            if TcpStream::connect_timeout(&local, Duration::from_secs(1)).is_ok() {
                return PgConnectOptions::new()
                    .host("127.0.0.1")
                    .port(5432)
                    .username("postgres")
                    .database("postgres");
            }
            // No server answers: run our own from the local binaries, kept for later test binaries.
            let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("test-postgres");
            let pg =
                PrivatePostgres::ensure(&dir).expect("starting a private PostgreSQL for the tests");
            let opts = pg.connect_options("postgres");
            std::mem::forget(pg);
            opts
        })
        .clone()
        .log_statements(log::LevelFilter::Off)
}

/// A fresh, migrated database.
pub(crate) async fn fresh_database() -> (PgPool, PgConnectOptions, String) {
    let name = format!("fhirgate_test_{}", uuid::Uuid::new_v4().simple());
    fhirgate::pg::create_database(&admin_options(), &name)
        .await
        .expect("create database");
    let opts = admin_options().database(&name);
    let pool = PgPoolOptions::new()
        .max_connections(40)
        .connect_with(opts.clone())
        .await
        .expect("connect");
    sqlx::migrate!().run(&pool).await.expect("migrate");
    (pool, opts, name)
}

/// A running server on a free port with its own database.
pub(crate) struct TestApp {
    /// `http://127.0.0.1:PORT/fhir`.
    pub(crate) base: String,
    /// Pool on the test database.
    pub(crate) pool: PgPool,
    /// Its connection options (for pg_dump).
    pub(crate) options: PgConnectOptions,
    /// Its name.
    pub(crate) db_name: String,
    /// An HTTP client that sends a first-party `system/*.cruds` token.
    pub(crate) client: reqwest::Client,
    /// An HTTP client without any token.
    pub(crate) anonymous: reqwest::Client,
    /// The server's state (to mint tokens, register clients).
    pub(crate) state: fhirgate::state::AppState,
    /// The server's master key (hex), for command-line tools that must read its data.
    pub(crate) master_key: String,
}

/// Settings of a test server.
pub(crate) fn db_args(master_key: &str) -> DbArgs {
    DbArgs {
        database_url: None,
        data_dir: std::env::temp_dir(),
        master_key: Some(master_key.to_owned()),
        master_key_file: None,
        checkpoint_key_file: None,
        checkpoint_file: None,
        previous_master_key_files: Vec::new(),
        environment: fhirgate::config::Environment::Development,
        db_pool_size: 40,
    }
}

/// Starts a server with the default limits.
pub(crate) async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a server after letting `tune` change its settings.
pub(crate) async fn spawn_app_with(tune: impl FnOnce(&mut ServeArgs)) -> TestApp {
    LazyLock::force(&TRACING);
    let (pool, options, db_name) = fresh_database().await;
    let master_key = hex::encode(rand::random::<[u8; 32]>());
    let mut args = ServeArgs {
        listen: "127.0.0.1:0".parse().expect("addr"),
        public_url: None,
        max_body_bytes: 16 * 1024 * 1024,
        request_timeout_secs: 120,
        header_timeout_secs: 10,
        max_connections_per_address: 64,
        checkpoint_interval_secs: 0,
        allow_anonymous_read: false,
        no_read_audit: false,
    };
    tune(&mut args);
    let app = Application::build(
        &args,
        Box::new(fhirgate::startup::master_keys(&db_args(&master_key)).expect("keys")),
        pool.clone(),
    )
    .await
    .expect("build app");
    let base = format!("http://{}/fhir", app.addr());
    let state = app.state();
    tokio::spawn(app.run(std::future::pending()));
    // The issue-2 tests act as a first-party backend with every system scope; the auth tests
    // build their own clients and tokens.
    let token = mint(&state, "system/*.cruds", None);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("header"),
    );
    TestApp {
        base,
        pool,
        options,
        db_name,
        client: reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .expect("client"),
        anonymous: reqwest::Client::new(),
        state,
        master_key,
    }
}

/// Signs an access token with the server's own key, as its token endpoint would.
pub(crate) fn mint(
    state: &fhirgate::state::AppState,
    scope: &str,
    organization: Option<&str>,
) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = fhirgate::auth::jwt::AccessClaims {
        iss: state.issuer.clone(),
        aud: state.fhir_base.clone(),
        sub: "test-backend".into(),
        exp: now + 3600,
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
        scope: scope.into(),
        client_id: "test-backend".into(),
        patient: None,
        organization: organization.map(str::to_owned),
    };
    state.signing.sign(&claims).expect("sign")
}

/// A backend's key pair: its public JWKS and a signer for client assertions.
pub(crate) struct BackendKey {
    /// The public JWKS to register.
    pub(crate) jwks: Value,
    kid: String,
    alg: jsonwebtoken::Algorithm,
    encoding: jsonwebtoken::EncodingKey,
}

/// A new ES384 key.
pub(crate) fn es384_key(kid: &str) -> BackendKey {
    use base64::Engine;
    use p384::elliptic_curve::sec1::ToEncodedPoint;
    use p384::pkcs8::EncodePrivateKey;
    let secret = p384::SecretKey::random(&mut rand::rngs::OsRng);
    let point = secret.public_key().to_encoded_point(false);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-384", "kid": kid, "alg": "ES384",
        "x": b64(point.x().expect("x")), "y": b64(point.y().expect("y"))});
    BackendKey {
        jwks: serde_json::json!({"keys": [jwk]}),
        kid: kid.to_owned(),
        alg: jsonwebtoken::Algorithm::ES384,
        encoding: jsonwebtoken::EncodingKey::from_ec_der(
            secret.to_pkcs8_der().expect("der").as_bytes(),
        ),
    }
}

/// A new RS384 key (2048-bit RSA).
pub(crate) fn rs384_key(kid: &str) -> BackendKey {
    use base64::Engine;
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;
    let private = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("rsa");
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = serde_json::json!({"kty": "RSA", "kid": kid, "alg": "RS384",
        "n": b64(&private.n().to_bytes_be()), "e": b64(&private.e().to_bytes_be())});
    BackendKey {
        jwks: serde_json::json!({"keys": [jwk]}),
        kid: kid.to_owned(),
        alg: jsonwebtoken::Algorithm::RS384,
        encoding: jsonwebtoken::EncodingKey::from_rsa_der(
            private.to_pkcs1_der().expect("der").as_bytes(),
        ),
    }
}

impl BackendKey {
    /// A client assertion for `client_id` at `token_url`, with these claims overridden.
    pub(crate) fn assertion(&self, client_id: &str, token_url: &str, overrides: Value) -> String {
        let now = chrono::Utc::now().timestamp();
        let mut claims = serde_json::json!({"iss": client_id, "sub": client_id, "aud": token_url,
            "exp": now + 240, "iat": now, "jti": uuid::Uuid::new_v4().to_string()});
        for (k, v) in overrides.as_object().into_iter().flatten() {
            if v.is_null() {
                claims.as_object_mut().expect("obj").remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        let mut header = jsonwebtoken::Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding).expect("sign assertion")
    }
}

/// `POST token_url` with a client_credentials grant.
pub(crate) async fn request_token(
    token_url: &str,
    assertion: &str,
    scope: &str,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
            ("scope", scope),
        ])
        .send()
        .await
        .expect("token request")
}

impl TestApp {
    /// `GET base/path`.
    pub(crate) async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/{path}", self.base))
            .send()
            .await
            .expect("request")
    }

    /// `POST base/path` with a JSON body.
    pub(crate) async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}/{path}", self.base))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }

    /// `PUT base/path` with a JSON body.
    pub(crate) async fn put(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .put(format!("{}/{path}", self.base))
            .header("content-type", "application/fhir+json")
            .body(body.to_string())
            .send()
            .await
            .expect("request")
    }

    /// `DELETE base/path`.
    pub(crate) async fn delete(&self, path: &str) -> reqwest::Response {
        self.client
            .delete(format!("{}/{path}", self.base))
            .send()
            .await
            .expect("request")
    }

    /// Counts rows of a table (for "nothing was written" checks).
    pub(crate) async fn count(&self, table: &str) -> i64 {
        let sql = format!("select count(*) from {table}");
        sqlx::query_scalar(&sql)
            .fetch_one(&self.pool)
            .await
            .expect("count")
    }
}

/// Reads a JSON body.
pub(crate) async fn json(resp: reqwest::Response) -> Value {
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Asserts an OperationOutcome with `status` and issue `code`; returns it.
#[track_caller]
pub(crate) fn assert_outcome_parts(
    status: reqwest::StatusCode,
    expected: u16,
    body: &Value,
    code: &str,
) {
    assert_eq!(status.as_u16(), expected, "status; body: {body}");
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    let codes: Vec<&str> = body["issue"]
        .as_array()
        .expect("issues")
        .iter()
        .filter_map(|i| i["code"].as_str())
        .collect();
    assert!(
        codes.contains(&code),
        "expected issue code {code} in {body}"
    );
}

/// Awaits a response and asserts it is an OperationOutcome with `status` and issue `code`.
pub(crate) async fn assert_outcome(resp: reqwest::Response, status: u16, code: &str) -> Value {
    let st = resp.status();
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = json(resp).await;
    assert_outcome_parts(st, status, &body, code);
    assert!(ct.starts_with("application/fhir+json"), "content type {ct}");
    body
}

/// The `expression` values of an outcome's issues.
pub(crate) fn expressions(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|i| i["expression"].as_array().cloned().unwrap_or_default())
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect()
}

/// A minimal valid Observation for patient `pid`.
pub(crate) fn observation(pid: &str, value: f64) -> Value {
    serde_json::json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": format!("Patient/{pid}")},
        "effectiveDateTime": "2024-03-01T08:00:00+01:00",
        "valueQuantity": {"value": value, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}
    })
}

/// Runs a headless Chromium script of `tests/browser` with `args` and returns the JSON report it
/// prints as its last line.
pub(crate) async fn browser_script(script: &str, args: &[&str]) -> Value {
    let path = format!("{}/tests/browser/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::process::Command::new("node")
        .arg(path)
        .args(args)
        .output()
        .await
        .expect("node runs (tests/browser: npm ci; Debian chromium)");
    assert!(
        out.status.success(),
        "browser script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(
        out.stdout
            .split(|b| *b == b'\n')
            .rfind(|l| l.starts_with(b"{"))
            .expect("a JSON line"),
    )
    .expect("report JSON")
}
