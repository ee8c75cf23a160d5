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
    /// An HTTP client.
    pub(crate) client: reqwest::Client,
}

/// Settings of a test server.
pub(crate) fn db_args(master_key: &str) -> DbArgs {
    DbArgs {
        database_url: None,
        data_dir: std::env::temp_dir(),
        master_key: Some(master_key.to_owned()),
        master_key_file: None,
        previous_master_key_files: Vec::new(),
        environment: "test".into(),
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
    tokio::spawn(app.run(std::future::pending()));
    TestApp {
        base,
        pool,
        options,
        db_name,
        client: reqwest::Client::new(),
    }
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
