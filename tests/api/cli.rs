//! The `fhirgate` binary itself: `serve` with a private PostgreSQL, graceful shutdown, `migrate`,
//! production refusal and `keys rotate` while a server keeps serving.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{admin_options, es384_key, fresh_database, observation, request_token};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_fhirgate");

/// A `fhirgate serve` child process and its base URL.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) base: String,
    pub(crate) stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

pub(crate) fn clean_env(cmd: &mut Command) -> &mut Command {
    for var in [
        "DATABASE_URL",
        "FHIRGATE_MASTER_KEY",
        "FHIRGATE_MASTER_KEY_FILE",
        "FHIRGATE_PREVIOUS_MASTER_KEY_FILES",
        "FHIRGATE_ENV",
        "FHIRGATE_DATA_DIR",
        "FHIRGATE_PUBLIC_URL",
        "FHIRGATE_LISTEN",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

pub(crate) fn start(envs: &[(&str, String)], data_dir: &Path) -> Server {
    let mut cmd = Command::new(BIN);
    clean_env(&mut cmd)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fhirgate");
    let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let err_pipe = child.stderr.take().expect("stderr");
    let sink = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err_pipe).lines().map_while(Result::ok) {
            sink.lock().expect("lock").push_str(&(line + "\n"));
        }
    });
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read stdout");
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| {
            panic!(
                "unexpected first line {line:?}; stderr: {}",
                stderr.lock().expect("l")
            )
        });
    std::thread::spawn(move || for _ in out.lines() {});
    Server {
        child,
        base: format!("{addr}/fhir"),
        stderr,
    }
}

impl Server {
    pub(crate) fn terminate(mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        self.child.wait().expect("wait")
    }
}

impl Drop for Server {
    /// A test that fails before `terminate` must not leave its server running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn db_url(name: &str) -> String {
    let o = admin_options();
    let host = o.get_host();
    if host.starts_with('/') {
        format!(
            "postgres://postgres@localhost/{name}?host={host}&port={}",
            o.get_port()
        )
    } else {
        format!("postgres://postgres@{host}:{}/{name}", o.get_port())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_runs_its_own_postgres_and_shuts_down_gracefully() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");

    let server = start(&[], &data);
    let backend = register_backend(&[], &data);
    let client = client_for(&server, &backend).await;
    assert!(
        server
            .stderr
            .lock()
            .expect("l")
            .contains("development master key"),
        "a loud warning"
    );
    assert!(data.join("master.key").exists());
    assert!(data.join("postgres/PG_VERSION").exists());
    let ready = client
        .get(server.base.replace("/fhir", "/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let resp = client
        .put(format!("{}/Patient/keepme", server.base))
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient", "id": "keepme"}).to_string())
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status(), 201);

    // A large transaction is in flight when SIGTERM arrives: it completes and is committed.
    let entries: Vec<Value> = (0..3000).map(|i| json!({"resource": observation("keepme", f64::from(i)), "request": {"method": "POST", "url": "Observation"}})).collect();
    let bundle =
        json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string();
    let url = server.base.clone();
    let sender = client.clone();
    let in_flight = tokio::spawn(async move {
        sender
            .post(url)
            .header("content-type", "application/fhir+json")
            .body(bundle)
            .send()
            .await
            .map(|r| (r.status().as_u16(), std::time::Instant::now()))
    });
    // Long enough for the request to be on the wire, far shorter than the 3,000-entry transaction.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = server.child.id();
    let term_sent = std::time::Instant::now();
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .expect("join");
    assert!(status.success(), "exit status {status:?}");
    let (code, answered) = in_flight
        .await
        .expect("join")
        .expect("the in-flight request got an answer");
    assert_eq!(code, 200);
    assert!(
        answered > term_sent,
        "the transaction was still running when SIGTERM arrived"
    );
    // The private cluster was stopped with the server.
    assert!(
        !data.join("postgres/postmaster.pid").exists(),
        "postgres still running after fhirgate {pid} exited"
    );

    // Second start reuses the cluster, the data, the signing key and the registered client.
    let server = start(&[], &data);
    let client = client_for(&server, &backend).await;
    let back = client
        .get(format!("{}/Patient/keepme", server.base))
        .send()
        .await
        .expect("get");
    assert_eq!(back.status(), 200);
    let hist: Value = client
        .get(format!("{}/Observation/_history?_count=1", server.base))
        .send()
        .await
        .expect("h")
        .json()
        .await
        .expect("json");
    assert_eq!(hist["entry"].as_array().map(Vec::len), Some(1));
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn production_refuses_a_development_key() {
    // `production` in any case is production; anything else than the two environments is
    // refused before the server does anything (no development key is written).
    for (value, expect) in [
        ("production", "FHIRGATE_ENV=production"),
        ("Production", "FHIRGATE_ENV=production"),
        ("PRODUCTION", "FHIRGATE_ENV=production"),
        ("prod", "FHIRGATE_ENV"),
        ("staging", "FHIRGATE_ENV"),
        ("", "FHIRGATE_ENV"),
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cmd = Command::new(BIN);
        let out = clean_env(&mut cmd)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--allow-anonymous-read",
                "--data-dir",
            ])
            .arg(dir.path())
            .env("FHIRGATE_ENV", value)
            .env("DATABASE_URL", db_url("fhirgate_test_never_created"))
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "FHIRGATE_ENV={value:?}: {stderr}");
        assert!(stderr.contains(expect), "FHIRGATE_ENV={value:?}: {stderr}");
        let written: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert!(
            written.is_empty(),
            "FHIRGATE_ENV={value:?} wrote {written:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_applies_migrations_to_database_url() {
    let name = format!("fhirgate_test_{}", uuid::Uuid::new_v4().simple());
    fhirgate::pg::create_database(&admin_options(), &name)
        .await
        .expect("create");
    let mut cmd = Command::new(BIN);
    let out = clean_env(&mut cmd)
        .arg("migrate")
        .env("DATABASE_URL", db_url(&name))
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = sqlx::PgPool::connect_with(admin_options().database(&name))
        .await
        .expect("connect");
    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert!(applied >= 1);
    let help = Command::new(BIN)
        .args(["keys", "rotate", "--help"])
        .output()
        .expect("help");
    assert!(String::from_utf8_lossy(&help.stdout).contains("--new-key-file"));
}

fn run_keys(args: &[&str], envs: &[(&str, String)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    clean_env(&mut cmd).arg("keys").args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run keys")
}

#[tokio::test(flavor = "multi_thread")]
async fn key_rotation_keeps_every_body_readable_while_serving() {
    let (_pool, _opts, name) = fresh_database().await;
    let url = db_url(&name);
    let dir = tempfile::tempdir().expect("tempdir");
    let key_a = dir.path().join("a.key");
    let key_b = dir.path().join("b.key");
    assert!(
        run_keys(&["generate", "--out", key_a.to_str().expect("p")], &[])
            .status
            .success()
    );
    assert!(
        run_keys(&["generate", "--out", key_b.to_str().expect("p")], &[])
            .status
            .success()
    );
    let path = |p: &Path| p.to_string_lossy().into_owned();
    let first = [
        ("DATABASE_URL", url.clone()),
        ("FHIRGATE_MASTER_KEY_FILE", path(&key_a)),
    ];
    let server = start(&first, dir.path());
    let backend = register_backend(&first, dir.path());
    let client = client_for(&server, &backend).await;
    let put = |base: String, pid: String| {
        let client = client.clone();
        async move {
            let p = json!({"resourceType": "Patient", "id": pid, "name": [{"family": "Rotate"}]});
            client
                .put(format!("{base}/Patient/{pid}"))
                .header("content-type", "application/fhir+json")
                .body(p.to_string())
                .send()
                .await
                .expect("put")
                .status()
                .as_u16()
        }
    };

    for i in 0..5 {
        assert_eq!(put(server.base.clone(), format!("before{i}")).await, 201);
    }
    // Rotate while the server (holding only key A) keeps serving reads and writes.
    let reader = {
        let base = server.base.clone();
        let c = client.clone();
        tokio::spawn(async move {
            for _ in 0..50 {
                assert_eq!(
                    c.get(format!("{base}/Patient/before0"))
                        .send()
                        .await
                        .expect("get")
                        .status(),
                    200
                );
            }
        })
    };
    let out = run_keys(
        &["rotate", "--new-key-file", &path(&key_b)],
        &[
            ("DATABASE_URL", url.clone()),
            ("FHIRGATE_MASTER_KEY_FILE", path(&key_a)),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("rewrapped"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    reader.await.expect("reads during rotation");
    // A patient created after the rotation only has a key-A wrapping so far.
    assert_eq!(put(server.base.clone(), "after".into()).await, 201);
    assert!(server.terminate().success());

    // Rolling restart onto key B with A as previous; the rotation fills the gap and retires A.
    let both = [
        ("DATABASE_URL", url.clone()),
        ("FHIRGATE_MASTER_KEY_FILE", path(&key_b)),
        ("FHIRGATE_PREVIOUS_MASTER_KEY_FILES", path(&key_a)),
    ];
    let server = start(&both, dir.path());
    let client = client_for(&server, &backend).await;
    assert_eq!(
        client
            .get(format!("{}/Patient/after", server.base))
            .send()
            .await
            .expect("get")
            .status(),
        200
    );
    let out = run_keys(
        &["rotate", "--new-key-file", &path(&key_b), "--retire-old"],
        &both,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(server.terminate().success());

    // Only key B now: everything reads. Only key A: nothing does (fail closed, 503, no plaintext).
    let server = start(
        &[
            ("DATABASE_URL", url.clone()),
            ("FHIRGATE_MASTER_KEY_FILE", path(&key_b)),
        ],
        dir.path(),
    );
    let client = client_for(&server, &backend).await;
    for id in ["before0", "before4", "after"] {
        let r = client
            .get(format!("{}/Patient/{id}", server.base))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "{id}");
    }
    assert!(server.terminate().success());
    let mut cmd = Command::new(BIN);
    let out = clean_env(&mut cmd)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env("DATABASE_URL", url)
        .env("FHIRGATE_MASTER_KEY_FILE", path(&key_a))
        .output()
        .expect("run");
    assert!(
        !out.status.success(),
        "a server holding only the retired key cannot even open its index key"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_works_from_a_directory_postgres_cannot_enter() {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !is_root {
        return; // Only root hands the cluster to the postgres user.
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let private = dir.path().join("private");
    std::fs::create_dir(&private).expect("mkdir");
    std::fs::set_permissions(
        &private,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .expect("chmod");
    let data = private.join("data");
    let server = start(&[], &data);
    let ready = reqwest::get(server.base.replace("/fhir", "/readyz"))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let location =
        std::fs::read_to_string(data.join("postgres-location.txt")).expect("location note");
    assert!(
        location.starts_with("/var/tmp/fhirgate-postgres-"),
        "{location}"
    );
    assert!(server.terminate().success());
    let _ = std::fs::remove_dir_all(location.trim());
}

/// A first-party backend registered with `fhirgate client add` (the documented flags).
struct Backend {
    id: String,
    key: crate::helpers::BackendKey,
}

fn register_backend(envs: &[(&str, String)], data_dir: &Path) -> Backend {
    let key = es384_key("cli-key");
    let jwks = tempfile::NamedTempFile::new().expect("jwks file");
    std::fs::write(jwks.path(), key.jwks.to_string()).expect("write jwks");
    let id = format!("cli-{}", uuid::Uuid::new_v4().simple());
    let mut cmd = Command::new(BIN);
    clean_env(&mut cmd)
        .args([
            "client",
            "add",
            "--kind",
            "backend",
            "--id",
            &id,
            "--scopes",
            "system/*.cruds",
            "--jwks",
        ])
        .arg(jwks.path())
        .arg("--data-dir")
        .arg(data_dir);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("client add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Backend { id, key }
}

/// An HTTP client that sends a token this server issued to `backend` (tokens name the server's
/// URL as issuer and audience, so each start on a new port needs a new one).
async fn client_for(server: &Server, backend: &Backend) -> reqwest::Client {
    let token_url = server.base.replace("/fhir", "/auth/token");
    let assertion = backend.key.assertion(&backend.id, &token_url, json!({}));
    let resp = request_token(&token_url, &assertion, "system/*.cruds").await;
    assert_eq!(resp.status(), 200);
    let token: Value = resp.json().await.expect("token json");
    let mut headers = reqwest::header::HeaderMap::new();
    let bearer = format!(
        "Bearer {}",
        token["access_token"].as_str().expect("access_token")
    );
    headers.insert(
        reqwest::header::AUTHORIZATION,
        bearer.parse().expect("header"),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("client")
}

#[tokio::test(flavor = "multi_thread")]
async fn reindex_rebuilds_the_search_index_and_consent_grants() {
    let app = crate::helpers::spawn_app().await;
    let patient = serde_json::json!({"resourceType": "Patient", "id": "ri", "name": [{"family": "Reindexed"}]});
    assert_eq!(app.put("Patient/ri", &patient).await.status(), 201);
    let obs = crate::helpers::observation("ri", 70.0);
    assert_eq!(app.post("Observation", &obs).await.status(), 201);
    let found = |q: &'static str| {
        let app = &app;
        async move {
            let b = crate::helpers::json(app.get(q).await).await;
            b["entry"].as_array().map_or(0, Vec::len)
        }
    };
    assert_eq!(found("Patient?family=reindex").await, 1);
    // Lose the index (as after a change of definitions): searches find nothing.
    for t in [
        "idx_token",
        "idx_string",
        "idx_date",
        "idx_number",
        "idx_reference",
        "idx_composite",
        "idx_blind",
        "search_index_state",
    ] {
        sqlx::query(&format!("truncate {t}"))
            .execute(&app.pool)
            .await
            .expect("truncate");
    }
    assert_eq!(found("Patient?family=reindex").await, 0);
    let mut cmd = Command::new(BIN);
    let out = clean_env(&mut cmd)
        .args(["reindex", "--batch", "1"])
        .env("DATABASE_URL", db_url(&app.db_name))
        .env("FHIRGATE_MASTER_KEY", &app.master_key)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("reindexed 2 resources"), "{stdout}");
    assert_eq!(found("Patient?family=reindex").await, 1);
    assert_eq!(
        found("Observation?subject=Patient/ri&code=8867-4&value-quantity=70").await,
        1
    );
    let state: i64 = sqlx::query_scalar("select count(*) from search_index_state")
        .fetch_one(&app.pool)
        .await
        .expect("q");
    assert_eq!(state, 1, "the rebuilt index records its definitions");
}

/// `fhirgate token` prints a working token of the development client (first-party, patient or
/// partner context), audited like any issuance, and is refused in production and with a real
/// master key.
#[tokio::test(flavor = "multi_thread")]
async fn a_development_token_works_and_is_refused_in_production() {
    let name = format!("fhirgate_test_{}", uuid::Uuid::new_v4().simple());
    fhirgate::pg::create_database(&admin_options(), &name)
        .await
        .expect("create");
    let dir = tempfile::tempdir().expect("tempdir");
    let envs = [("DATABASE_URL", db_url(&name))];
    let server = start(&envs, dir.path());
    let public = server.base.trim_end_matches("/fhir").to_owned();
    let token = |extra: &[&str], env: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        clean_env(&mut cmd)
            .arg("token")
            .args(extra)
            .args(["--public-url", &public, "--data-dir"])
            .arg(dir.path())
            .env("DATABASE_URL", db_url(&name));
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run")
    };
    let out = token(&["--scopes", "system/*.rs", "--ttl", "10m"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("{}/Patient", server.base))
        .bearer_auth(&t)
        .send()
        .await
        .expect("search");
    assert_eq!(resp.status(), 200);
    // Read-only: a write is refused by its scopes.
    let resp = client
        .post(format!("{}/Patient", server.base))
        .bearer_auth(&t)
        .header("content-type", "application/fhir+json")
        .body(r#"{"resourceType":"Patient"}"#)
        .send()
        .await
        .expect("post");
    assert_eq!(resp.status(), 403);
    // A patient context reaches only that patient.
    let out = token(&["--scopes", "patient/*.rs", "--patient", "p1"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pt = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let resp = client
        .get(format!("{}/Patient/p2/$everything", server.base))
        .bearer_auth(&pt)
        .send()
        .await
        .expect("everything");
    assert_eq!(resp.status(), 404);
    // Refused: production, a real master key, nonsense arguments.
    for (extra, env, says) in [
        (vec![], vec![("FHIRGATE_ENV", "production")], "production"),
        (
            vec![],
            vec![(
                "FHIRGATE_MASTER_KEY",
                "00000000000000000000000000000000000000000000000000000000000000ff",
            )],
            "master key",
        ),
        (vec!["--ttl", "3d"], vec![], "--ttl"),
        (vec!["--scopes", "patient/*.rs"], vec![], "--patient"),
        (vec!["--scopes", "everything please"], vec![], "--scopes"),
    ] {
        let out = token(&extra, &env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra:?} {env:?}");
        assert!(err.contains(says), "{says}: {err}");
        assert!(out.stdout.is_empty(), "no token printed");
    }
    // Every issuance is in the trail.
    let pool = sqlx::PgPool::connect_with(admin_options().database(&name))
        .await
        .expect("connect");
    let events: String = sqlx::query_scalar("select string_agg(events, '\n') from audit_log")
        .fetch_one(&pool)
        .await
        .expect("events");
    assert_eq!(events.matches("token-issue").count(), 2, "{events}");
    assert!(events.contains("fhirgate-development"));
    assert!(server.terminate().success());
}

/// `fhirgate client add --kind backend --generate-key FILE`: the private key lands in a new file
/// only the owner can read, and an assertion signed with it gets a working token.
#[tokio::test(flavor = "multi_thread")]
async fn a_backend_registered_with_a_generated_key_gets_a_token() {
    let name = format!("fhirgate_test_{}", uuid::Uuid::new_v4().simple());
    fhirgate::pg::create_database(&admin_options(), &name)
        .await
        .expect("create");
    let dir = tempfile::tempdir().expect("tempdir");
    let envs = [("DATABASE_URL", db_url(&name))];
    let key_file = dir.path().join("backend.pem");
    let add = |key: &Path| {
        let mut cmd = Command::new(BIN);
        clean_env(&mut cmd)
            .args([
                "client",
                "add",
                "--kind",
                "backend",
                "--id",
                "gen-backend",
                "--scopes",
                "system/*.rs",
                "--generate-key",
            ])
            .arg(key)
            .arg("--data-dir")
            .arg(dir.path())
            .env("DATABASE_URL", db_url(&name));
        cmd.output().expect("client add")
    };
    let out = add(&key_file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // An existing file is never overwritten.
    assert!(!add(&key_file).status.success());
    let server = start(&envs, dir.path());
    let token_url = server.base.replace("/fhir", "/auth/token");
    let pem = std::fs::read(&key_file).expect("pem");
    let now = chrono::Utc::now().timestamp();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
    header.kid = Some("gen-backend".into());
    let assertion = jsonwebtoken::encode(
        &header,
        &json!({"iss": "gen-backend", "sub": "gen-backend", "aud": token_url, "exp": now + 240,
            "jti": uuid::Uuid::new_v4().to_string()}),
        &jsonwebtoken::EncodingKey::from_ec_pem(&pem).expect("key"),
    )
    .expect("sign");
    let resp = crate::helpers::request_token(&token_url, &assertion, "system/*.rs").await;
    assert_eq!(resp.status(), 200);
    let token: Value = resp.json().await.expect("json");
    let resp = reqwest::Client::new()
        .get(format!("{}/Patient", server.base))
        .bearer_auth(token["access_token"].as_str().expect("token"))
        .send()
        .await
        .expect("search");
    assert_eq!(resp.status(), 200);
    assert!(server.terminate().success());
}
