//! A newcomer's first ten minutes: the README's quick start run as written, `fhirgate demo`
//! (idempotent, refused in production, and every command it prints works), the demo patient's
//! pages in Chromium, and `fhirgate doctor` with the advice `serve` prints when it cannot start.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::cli::{clean_env, db_url, start, BIN};
use crate::helpers::{admin_options, browser_script};

async fn fresh_db() -> String {
    let name = format!("fhirgate_test_{}", uuid::Uuid::new_v4().simple());
    fhirgate::pg::create_database(&admin_options(), &name)
        .await
        .expect("create");
    name
}

fn fhirgate(args: &[&str], envs: &[(&str, &str)], dir: &Path) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    clean_env(&mut cmd).args(args).current_dir(dir);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run fhirgate")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Rows of every table that `demo` writes to, to compare two runs.
async fn footprint(pool: &sqlx::PgPool) -> Vec<i64> {
    let mut out = Vec::new();
    for table in [
        "resource",
        "resource_version",
        "consent_grant",
        "client",
        "app_user",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("select count(*) from {table}"))
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("{table}: {e}"));
        out.push(n);
    }
    out
}

/// The `export NAME=value` lines and the `curl` commands of the demo's output.
fn exports_and_curls(out: &str) -> (Vec<(String, String)>, Vec<String>) {
    let exports = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let curls = out
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("curl "))
        .map(str::to_owned)
        .collect();
    (exports, curls)
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_loads_once_prints_commands_that_work_and_is_refused_in_production() {
    let name = fresh_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db_url(&name);
    let server = start(&[("DATABASE_URL", url.clone())], dir.path());
    let public = server.base.trim_end_matches("/fhir").to_owned();
    let envs = [
        ("DATABASE_URL", url.as_str()),
        ("FHIRGATE_PUBLIC_URL", public.as_str()),
    ];
    // The server's data directory: the development key is there.
    let data = dir.path().to_string_lossy().into_owned();
    let demo = || fhirgate(&["demo", "--data-dir", &data], &envs, dir.path());
    let pool = sqlx::PgPool::connect_with(admin_options().database(&name))
        .await
        .expect("connect");

    let first = demo();
    let out = text(&first.stdout);
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(out.matches("(loaded").count(), 3, "{out}");
    assert!(out.contains("Sign in as Maximo817 Bartell116"), "{out}");
    assert!(out.contains(fhirgate::demo::EMAIL) && out.contains(fhirgate::demo::PASSWORD));
    let key = dir.path().join("demo-acme-telehealth.pem");
    assert!(key.exists(), "the partner's private key is written");
    let after_first = footprint(&pool).await;

    // Idempotent: a second run changes nothing and says so.
    let second = demo();
    let again = text(&second.stdout);
    assert!(second.status.success(), "{}", text(&second.stderr));
    assert_eq!(again.matches("(already there").count(), 3, "{again}");
    assert!(again.contains("wrote 0 provider resources"), "{again}");
    assert!(
        again.contains("and 0 resources from the wearable data"),
        "{again}"
    );
    assert!(again.contains("was registered before"), "{again}");
    assert_eq!(footprint(&pool).await, after_first);

    // Every command it prints works against the running server.
    let (exports, curls) = exports_and_curls(&again);
    assert_eq!(exports.len(), 2, "{again}");
    assert_eq!(curls.len(), 5, "{again}");
    let patient = again
        .split("Patient/")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .expect("the demo patient's id")
        .to_owned();
    for curl in &curls {
        let mut cmd = Command::new("bash");
        cmd.args(["-c", curl]);
        for (k, v) in &exports {
            cmd.env(k, v);
        }
        let answer = cmd.output().expect("curl");
        assert!(answer.status.success(), "{curl}");
        let body: Value = serde_json::from_slice(&answer.stdout)
            .unwrap_or_else(|_| panic!("{curl}: {}", text(&answer.stdout)));
        assert_eq!(body["resourceType"], "Bundle", "{curl}: {body}");
        let entries = body["entry"].as_array().cloned().unwrap_or_default();
        assert!(!entries.is_empty(), "{curl}: nothing found");
        if curl.contains("PARTNER_TOKEN") {
            // The partner sees vital signs of the consenting patient only.
            for e in &entries {
                let r = &e["resource"];
                assert_eq!(r["category"][0]["coding"][0]["code"], "vital-signs", "{r}");
                assert_eq!(
                    r["subject"]["reference"],
                    format!("Patient/{patient}"),
                    "{r}"
                );
            }
        }
    }

    // The demo patient's pages show the record, the partner and the accesses.
    let report = browser_script(
        "demo_pages.mjs",
        &[&public, fhirgate::demo::EMAIL, fhirgate::demo::PASSWORD],
    )
    .await;
    let record: Vec<String> = serde_json::from_value(report["record"].clone()).expect("record");
    assert!(
        record
            .iter()
            .any(|r| r.ends_with("measurements and results")),
        "{report}"
    );
    assert!(record.len() >= 5, "{report}");
    assert!(
        report["sharing"]
            .as_str()
            .unwrap_or("")
            .contains("Acme Telehealth"),
        "{report}"
    );
    assert!(report["access_rows"].as_i64().unwrap_or(0) > 0, "{report}");

    // Refused in production and with a real master key: nothing printed, nothing written.
    let before = footprint(&pool).await;
    for (k, v, says) in [
        ("FHIRGATE_ENV", "production", "production"),
        (
            "FHIRGATE_MASTER_KEY",
            "00000000000000000000000000000000000000000000000000000000000000ff",
            "master key",
        ),
    ] {
        let refused = fhirgate(
            &["demo", "--data-dir", &data],
            &[envs[0], envs[1], (k, v)],
            dir.path(),
        );
        assert!(!refused.status.success(), "{k}");
        assert!(
            text(&refused.stderr).contains(says),
            "{}",
            text(&refused.stderr)
        );
        assert!(text(&refused.stderr).contains("refused"));
        assert!(refused.stdout.is_empty());
    }
    assert_eq!(footprint(&pool).await, before);
    assert!(server.terminate().success());
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_explains_each_problem_and_serve_prints_the_advice() {
    let name = fresh_db().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let url = db_url(&name);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let free = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let doctor = |extra: &[&str], envs: &[(&str, &str)]| {
        let mut args = vec!["doctor", "--data-dir", "data"];
        args.extend_from_slice(extra);
        let out = fhirgate(&args, envs, dir.path());
        (out.status.code(), text(&out.stdout))
    };

    // A healthy development setup: no failure, the development key is a warning.
    let (code, out) = doctor(&["--listen", &free], &[("DATABASE_URL", &url)]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("[ok  ] postgresql  DATABASE_URL answers"),
        "{out}"
    );
    assert!(out.contains("migrations"), "{out}");
    assert!(
        out.contains(&format!("[ok  ] port        {free} is free")),
        "{out}"
    );
    assert!(!out.contains("[FAIL]"), "{out}");
    assert!(!out.contains(&url), "the URL is not echoed: {out}");

    // Each failure names the problem and the fix.
    let key = dir.path().join("open.key");
    std::fs::write(
        &key,
        "00000000000000000000000000000000000000000000000000000000000000ff",
    )
    .expect("key");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let key_path = key.to_string_lossy().into_owned();
    for (extra, envs, finds, fix) in [
        (
            vec!["--listen", free.as_str()],
            vec![("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nothing")],
            "[FAIL] postgresql  DATABASE_URL (127.0.0.1:1/nothing) does not answer",
            "start that PostgreSQL server",
        ),
        (
            vec!["--listen", taken_addr.as_str()],
            vec![("DATABASE_URL", url.as_str())],
            "another program listens on",
            "--listen 127.0.0.1:",
        ),
        (
            vec!["--listen", free.as_str()],
            vec![
                ("DATABASE_URL", url.as_str()),
                ("FHIRGATE_MASTER_KEY_FILE", key_path.as_str()),
            ],
            "can be read by other users (mode 644)",
            "chmod 600",
        ),
        (
            vec!["--listen", free.as_str()],
            vec![
                ("DATABASE_URL", url.as_str()),
                ("FHIRGATE_ENV", "production"),
            ],
            "no master key is configured",
            "fhirgate keys generate",
        ),
        (
            vec![
                "--listen",
                free.as_str(),
                "--public-url",
                "http://fhir.example.org",
            ],
            vec![
                ("DATABASE_URL", url.as_str()),
                ("FHIRGATE_ENV", "production"),
            ],
            "is plain HTTP",
            "terminate TLS",
        ),
        (
            vec!["--listen", "nonsense"],
            vec![("DATABASE_URL", url.as_str())],
            "is not an address:port",
            "127.0.0.1:8080",
        ),
    ] {
        let (code, out) = doctor(&extra, &envs);
        assert_eq!(code, Some(1), "{finds}: {out}");
        assert!(out.contains(finds), "{finds}: {out}");
        assert!(
            out.contains(&format!("fix: {fix}")) || out.contains(fix),
            "{fix}: {out}"
        );
    }

    // `serve` that cannot start prints the same advice.
    let out = fhirgate(
        &["serve", "--listen", &taken_addr, "--data-dir", "data"],
        &[("DATABASE_URL", &url)],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("`fhirgate doctor` finds"), "{err}");
    assert!(err.contains("another program listens on"), "{err}");
    let out = fhirgate(
        &["serve", "--listen", &free, "--data-dir", "data"],
        &[("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nothing")],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("does not answer"), "{err}");
    drop(taken);
}

/// The README's quick start, block by block, in one shell on a fresh directory: the only
/// stand-ins are `cargo run --release --`, which runs the binary this test suite built, `git
/// clone`, which clones this checkout, and the port, which is a free one instead of 8080.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_quick_start_runs_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let section = readme
        .split("\n## Quick start\n")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("a Quick start section");
    let blocks: Vec<&str> = section
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().expect("closed block"))
        .collect();
    assert!(blocks.len() >= 5, "{blocks:?}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let work = tempfile::tempdir().expect("tempdir");
    {
        // The postgres system user runs the private cluster when we are root: let it in.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    let shims = work.path().join("shims");
    std::fs::create_dir(&shims).expect("mkdir");
    let real_git = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v git"])
            .output()
            .expect("git")
            .stdout,
    )
    .expect("utf8");
    let shim = |name: &str, body: String| {
        use std::os::unix::fs::PermissionsExt;
        let path = shims.join(name);
        std::fs::write(&path, body).expect("shim");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    };
    shim(
        "cargo",
        format!(
            "#!/bin/sh\n[ \"$1\" = run ] || {{ echo \"unexpected: cargo $*\" >&2; exit 2; }}\nwhile [ \"$1\" != -- ]; do shift; done; shift\n[ \"$1\" = serve ] && echo $$ > \"{work}/serve.pid\"\nexec {BIN} \"$@\"\n",
            work = work.path().display()
        ),
    );
    shim(
        "git",
        format!(
            "#!/bin/sh\n[ \"$1\" = clone ] && exec {} clone -q {} \"$(basename \"$2\" .git)\"\nexec {} \"$@\"\n",
            real_git.trim(),
            env!("CARGO_MANIFEST_DIR"),
            real_git.trim()
        ),
    );
    let mut script = String::from(
        "set -eo pipefail\n\
         trap 'if [ -f \"$WORK/serve.pid\" ]; then kill -TERM $(cat \"$WORK/serve.pid\"); wait; fi' EXIT\n",
    );
    for (n, block) in blocks.iter().enumerate() {
        let block = block.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"));
        script.push_str(&format!("echo '@@block {n}'\n"));
        if block.trim().ends_with("-- serve") {
            script.push_str(&format!(
                "date +%s.%N > \"$WORK/serve.start\"\n( {} ) > \"$WORK/serve.log\" 2>&1 &\n\
                 for i in $(seq 1 240); do curl -sf http://127.0.0.1:{port}/healthz >/dev/null && break; sleep 0.5; done\n\
                 curl -sf http://127.0.0.1:{port}/healthz >/dev/null || {{ cat \"$WORK/serve.log\"; exit 1; }}\n",
                block.trim()
            ));
        } else {
            script.push_str(&block);
            script.push_str(&format!("\ndate +%s.%N > \"$WORK/block{n}.done\"\n"));
        }
    }
    let path = format!(
        "{}:{}",
        shims.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("timeout");
    clean_env(&mut cmd)
        .args(["600", "bash", "-c", &script])
        .current_dir(work.path())
        .env("PATH", path)
        .env("WORK", work.path())
        .env("FHIRGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("FHIRGATE_PUBLIC_URL", format!("http://127.0.0.1:{port}"));
    let out = cmd.output().expect("bash");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "a quick-start block failed:\n{stdout}\n{}\nserve.log:\n{}",
        text(&out.stderr),
        std::fs::read_to_string(work.path().join("serve.log")).unwrap_or_default()
    );
    let outputs: Vec<&str> = stdout.split("@@block ").skip(1).collect();
    assert_eq!(outputs.len(), blocks.len());
    let output_of = |needle: &str| {
        blocks
            .iter()
            .position(|b| b.contains(needle))
            .map(|i| outputs[i])
            .unwrap_or_else(|| panic!("no block runs {needle}"))
    };
    assert!(output_of("-- demo").contains("Sign in as Maximo817 Bartell116"));
    let search_block = blocks
        .iter()
        .position(|b| b.contains("fhir/Patient?name=Maximo"))
        .expect("the first search");
    let search = outputs[search_block];
    assert!(search.contains("\"resourceType\":\"Bundle\""), "{search}");
    assert!(search.contains("Maximo817"), "{search}");
    assert!(!search.contains("OperationOutcome"), "{search}");
    assert!(!output_of("-- doctor").contains("[FAIL]"));
    let time = |f: &str| -> f64 {
        std::fs::read_to_string(work.path().join(f))
            .expect(f)
            .trim()
            .parse()
            .expect("seconds")
    };
    eprintln!(
        "quick start: {:.1} s from `serve` to the first search's answer, demo loaded (private cluster created)",
        time(&format!("block{search_block}.done")) - time("serve.start")
    );
}
