//! `fhirgate doctor`: checks what `serve` needs and says how to fix what is wrong. It changes
//! nothing: it does not start the private cluster, apply migrations or write a key. `serve`
//! prints the problems of the same report when it cannot start.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

use crate::config::DbArgs;

/// How one check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Fine.
    Ok,
    /// Worth knowing; nothing to fix now.
    Note,
    /// Works, but not as it should for real data.
    Warn,
    /// `serve` will fail, or should not run like this.
    Fail,
}

/// One check: what, how it came out, and the fix.
#[derive(Debug, Clone)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// The verdict.
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it.
    pub fix: Option<String>,
}

/// Every check, in order.
#[derive(Debug, Default)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, name: &'static str, status: Status, detail: String, fix: Option<String>) {
        self.checks.push(Check {
            name,
            status,
            detail,
            fix,
        });
    }

    /// Whether any check failed.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Fail)
    }

    /// The warnings and failures only, as `serve` prints them when it cannot start.
    pub fn problems(&self) -> Report {
        Report {
            checks: self
                .checks
                .iter()
                .filter(|c| matches!(c.status, Status::Warn | Status::Fail))
                .cloned()
                .collect(),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            let tag = match c.status {
                Status::Ok => "ok  ",
                Status::Note => "note",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
            };
            writeln!(f, "[{tag}] {:<11} {}", c.name, c.detail)?;
            if let Some(fix) = &c.fix {
                writeln!(f, "       {:<11} fix: {fix}", "")?;
            }
        }
        Ok(())
    }
}

/// Runs every check for the configuration `db`, a server listening on `listen` and announcing
/// `public_url`.
pub async fn run(db: &DbArgs, listen: &str, public_url: Option<&str>) -> Report {
    let mut report = Report::default();
    let mut conn = postgres(db, &mut report).await;
    migrations(conn.as_mut(), &mut report).await;
    master_key(db, &mut report);
    let addr = addresses(db, listen, public_url, &mut report);
    clock(conn.as_mut(), &mut report).await;
    disk(&db.data_dir, &mut report);
    if let Some(addr) = addr {
        port(addr, &mut report).await;
    }
    if let Some(c) = conn {
        let _ = c.close().await;
    }
    report
}

async fn connect(options: PgConnectOptions) -> Result<PgConnection, String> {
    match tokio::time::timeout(Duration::from_secs(5), options.connect()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 5 s".into()),
    }
}

async fn server_version(conn: &mut PgConnection) -> String {
    sqlx::query_scalar::<_, String>("show server_version")
        .fetch_one(conn)
        .await
        .unwrap_or_else(|_| "?".into())
}

/// PostgreSQL: `DATABASE_URL` reachable, or the binaries for the private cluster found (and the
/// cluster's state). Returns a connection when there is a database to look into.
async fn postgres(db: &DbArgs, report: &mut Report) -> Option<PgConnection> {
    const NAME: &str = "postgresql";
    if let Some(url) = &db.database_url {
        let options = match url.parse::<PgConnectOptions>() {
            Ok(o) => o,
            Err(e) => {
                report.add(
                    NAME,
                    Status::Fail,
                    format!("DATABASE_URL is not a PostgreSQL URL: {e}"),
                    Some("write it as postgres://USER[:PASSWORD]@HOST:PORT/DATABASE".into()),
                );
                return None;
            }
        };
        // Never the password: host, port and database only.
        let place = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("(default)")
        );
        return match connect(options).await {
            Ok(mut c) => {
                let v = server_version(&mut c).await;
                report.add(
                    NAME,
                    Status::Ok,
                    format!("DATABASE_URL answers ({place}, PostgreSQL {v})"),
                    None,
                );
                Some(c)
            }
            Err(e) => {
                report.add(
                    NAME,
                    Status::Fail,
                    format!("DATABASE_URL ({place}) does not answer: {e}"),
                    Some("start that PostgreSQL server or correct DATABASE_URL; or unset it to let fhirgate run a private cluster".into()),
                );
                None
            }
        };
    }
    let Ok(bindir) = crate::pg::find_bindir() else {
        report.add(
            NAME,
            Status::Fail,
            "DATABASE_URL is not set and no PostgreSQL binaries were found".into(),
            Some(
                crate::pg::NO_BINARIES
                    .trim_start_matches("no PostgreSQL server binaries (initdb, pg_ctl) found. ")
                    .into(),
            ),
        );
        return None;
    };
    match crate::pg::existing(&db.data_dir) {
        None => {
            report.add(
                NAME,
                Status::Ok,
                format!(
                    "binaries in {}; serve creates a private cluster in {}",
                    bindir.display(),
                    db.data_dir.join("postgres").display()
                ),
                None,
            );
            None
        }
        Some((pgdata, _, false)) => {
            report.add(
                NAME,
                Status::Ok,
                format!(
                    "binaries in {}; the private cluster in {} is stopped (serve starts it)",
                    bindir.display(),
                    pgdata.display()
                ),
                None,
            );
            None
        }
        Some((pgdata, socket, true)) => {
            match connect(crate::pg::socket_options(&socket, "fhirgate")).await {
                Ok(mut c) => {
                    let v = server_version(&mut c).await;
                    report.add(
                        NAME,
                        Status::Ok,
                        format!(
                            "the private cluster in {} runs (PostgreSQL {v})",
                            pgdata.display()
                        ),
                        None,
                    );
                    Some(c)
                }
                Err(e) => {
                    report.add(
                        NAME,
                        Status::Warn,
                        format!(
                            "the private cluster in {} runs but does not answer: {e}",
                            pgdata.display()
                        ),
                        Some(format!("see {}", pgdata.join("server.log").display())),
                    );
                    None
                }
            }
        }
    }
}

/// Migrations: the database's against the binary's.
async fn migrations(conn: Option<&mut PgConnection>, report: &mut Report) {
    const NAME: &str = "migrations";
    let known: Vec<i64> = sqlx::migrate!().iter().map(|m| m.version).collect();
    let Some(conn) = conn else {
        report.add(
            NAME,
            Status::Note,
            format!(
                "not checked (no database to look into); serve applies all {} at start",
                known.len()
            ),
            None,
        );
        return;
    };
    let applied: Vec<i64> = match sqlx::query_scalar(
        "select version from _sqlx_migrations where success order by version",
    )
    .fetch_all(&mut *conn)
    .await
    {
        Ok(v) => v,
        Err(_) => {
            report.add(
                NAME,
                Status::Note,
                "none applied yet (a new database)".into(),
                Some("serve applies them at start, or run `fhirgate migrate`".into()),
            );
            return;
        }
    };
    let pending = known.iter().filter(|v| !applied.contains(v)).count();
    let unknown: Vec<i64> = applied
        .iter()
        .filter(|v| !known.contains(v))
        .copied()
        .collect();
    if !unknown.is_empty() {
        report.add(
            NAME,
            Status::Fail,
            format!(
                "the database has {} migration(s) this binary does not know (latest {}): a newer fhirgate used it",
                unknown.len(),
                unknown.iter().max().copied().unwrap_or_default()
            ),
            Some("run the newer fhirgate, or restore a backup made before it ran".into()),
        );
    } else if pending > 0 {
        report.add(
            NAME,
            Status::Note,
            format!("{pending} of {} not applied yet", known.len()),
            Some("serve applies them at start, or run `fhirgate migrate`".into()),
        );
    } else {
        report.add(
            NAME,
            Status::Ok,
            format!("current ({} applied)", applied.len()),
            None,
        );
    }
}

/// Whether a key file can be read by anyone but its owner.
fn too_open(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

fn key_file(path: &Path, what: &str, report: &mut Report) -> bool {
    const NAME: &str = "master key";
    if let Err(e) = crate::crypto::MasterKey::from_file(path) {
        report.add(
            NAME,
            Status::Fail,
            format!("{what} {} cannot be used: {e:#}", path.display()),
            Some(
                "write 32 random bytes as base64 or hex with `fhirgate keys generate --out FILE`"
                    .into(),
            ),
        );
        return false;
    }
    if let Some(mode) = too_open(path) {
        report.add(
            NAME,
            Status::Fail,
            format!(
                "{what} {} can be read by other users (mode {mode:o})",
                path.display()
            ),
            Some(format!("chmod 600 {}", path.display())),
        );
        return false;
    }
    true
}

/// The master key: real (and private), or the development key (and only in development).
fn master_key(db: &DbArgs, report: &mut Report) {
    const NAME: &str = "master key";
    let production = db.environment.is_production();
    let real_fix = "make one with `fhirgate keys generate --out /etc/fhirgate/master.key` and set FHIRGATE_MASTER_KEY_FILE to it";
    if let Some(text) = &db.master_key {
        match crate::crypto::MasterKey::parse(&secrecy::SecretBox::from(
            text.clone().into_boxed_str(),
        )) {
            Ok(_) => report.add(
                NAME,
                Status::Ok,
                "a real key from FHIRGATE_MASTER_KEY".into(),
                None,
            ),
            Err(e) => report.add(
                NAME,
                Status::Fail,
                format!("FHIRGATE_MASTER_KEY cannot be used: {e:#}"),
                Some(real_fix.into()),
            ),
        }
    } else if let Some(path) = &db.master_key_file {
        if key_file(path, "the key file", report) {
            report.add(
                NAME,
                Status::Ok,
                format!("a real key in {} (mode 600)", path.display()),
                None,
            );
        }
    } else if production {
        report.add(
            NAME,
            Status::Fail,
            "FHIRGATE_ENV=production and no master key is configured: serve refuses to start"
                .into(),
            Some(real_fix.into()),
        );
    } else {
        let path = db.data_dir.join("master.key");
        if !path.exists() {
            report.add(
                NAME,
                Status::Note,
                format!(
                    "development mode: serve writes a development key to {}",
                    path.display()
                ),
                Some(format!(
                    "for real data, {real_fix}, and set FHIRGATE_ENV=production"
                )),
            );
        } else if key_file(&path, "the development key", report) {
            report.add(
                NAME,
                Status::Warn,
                format!(
                    "the development key {} lies beside the data: fine for trying, not for real data",
                    path.display()
                ),
                Some(format!("for real data, {real_fix}, and set FHIRGATE_ENV=production")),
            );
        }
    }
}

fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The listen address parses, and the public URL is one clients can reach (HTTPS in
/// production).
fn addresses(
    db: &DbArgs,
    listen: &str,
    public_url: Option<&str>,
    report: &mut Report,
) -> Option<SocketAddr> {
    const NAME: &str = "public URL";
    let Ok(addr) = listen.parse::<SocketAddr>() else {
        report.add(
            "listen",
            Status::Fail,
            format!("FHIRGATE_LISTEN={listen} is not an address:port"),
            Some("write it as 127.0.0.1:8080, or 0.0.0.0:8080 for every interface".into()),
        );
        return None;
    };
    let production = db.environment.is_production();
    match public_url {
        None if addr.ip().is_unspecified() => report.add(
            NAME,
            Status::Warn,
            format!(
                "not set, so links and tokens would name http://{addr}, which no client can reach"
            ),
            Some(
                "set FHIRGATE_PUBLIC_URL to the URL clients use, e.g. https://fhir.example.org"
                    .into(),
            ),
        ),
        None if production => report.add(
            NAME,
            Status::Warn,
            format!(
                "not set: links and tokens name http://{addr}, so only this machine can use them"
            ),
            Some(
                "in production, put a TLS proxy in front and set FHIRGATE_PUBLIC_URL=https://…"
                    .into(),
            ),
        ),
        None => report.add(
            NAME,
            Status::Ok,
            format!("not set: clients on this machine use http://{addr}"),
            None,
        ),
        Some(url) => {
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            let host_port = rest.split('/').next().unwrap_or("");
            let host = host_port
                .rsplit_once(':')
                .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
                .map_or(host_port, |(h, _)| h);
            if !matches!(scheme, "http" | "https") || host.is_empty() {
                report.add(
                    NAME,
                    Status::Fail,
                    format!("FHIRGATE_PUBLIC_URL={url} is not an http(s) URL"),
                    Some("write it as https://fhir.example.org (scheme and host, no /fhir)".into()),
                );
            } else if production && scheme == "http" && !is_loopback_host(host) {
                report.add(
                    NAME,
                    Status::Fail,
                    format!("{url} is plain HTTP: tokens and health data would cross the network unencrypted"),
                    Some("terminate TLS in a proxy and set FHIRGATE_PUBLIC_URL=https://…".into()),
                );
            } else if rest.trim_end_matches('/').ends_with("/fhir") {
                report.add(
                    NAME,
                    Status::Warn,
                    format!("{url} ends in /fhir, so the FHIR base would be …/fhir/fhir"),
                    Some("give the server's root URL; the FHIR base is that plus /fhir".into()),
                );
            } else if !is_loopback_host(host) && addr.ip().is_loopback() {
                report.add(
                    NAME,
                    Status::Note,
                    format!("{url}, while serve listens on {addr} only: a proxy on this machine must forward to it"),
                    None,
                );
            } else {
                report.add(
                    NAME,
                    Status::Ok,
                    format!("{url} (listening on {addr})"),
                    None,
                );
            }
        }
    }
    Some(addr)
}

/// The clock: against PostgreSQL's when there is a database (tokens expire in minutes, and the
/// audit trail is ordered by time), else only whether it is plausible.
async fn clock(conn: Option<&mut PgConnection>, report: &mut Report) {
    const NAME: &str = "clock";
    let now = chrono::Utc::now();
    let fix = "synchronise the clock (timedatectl set-ntp true, or chrony/ntpd)";
    if now.timestamp() < 1_700_000_000 {
        report.add(
            NAME,
            Status::Fail,
            format!("the clock says {now}, which is in the past"),
            Some(fix.into()),
        );
        return;
    }
    let Some(conn) = conn else {
        report.add(
            NAME,
            Status::Ok,
            format!("{}", now.format("%Y-%m-%d %H:%M:%S UTC")),
            None,
        );
        return;
    };
    let db: Option<f64> =
        sqlx::query_scalar("select extract(epoch from clock_timestamp())::float8")
            .fetch_one(conn)
            .await
            .ok();
    let local = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    match db {
        Some(db) if (db - local).abs() > 5.0 => report.add(
            NAME,
            Status::Warn,
            format!(
                "this machine's clock and PostgreSQL's differ by {:.0} s: token lifetimes and audit times would disagree",
                (db - local).abs()
            ),
            Some(fix.into()),
        ),
        _ => report.add(
            NAME,
            Status::Ok,
            format!("{} (agrees with PostgreSQL)", now.format("%Y-%m-%d %H:%M:%S UTC")),
            None,
        ),
    }
}

/// The nearest existing directory at or above `dir`.
fn existing_ancestor(dir: &Path) -> PathBuf {
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    absolute
        .ancestors()
        .find(|p| p.is_dir())
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// Free space where the data directory is (or will be), from `df`.
fn disk(data_dir: &Path, report: &mut Report) {
    const NAME: &str = "disk";
    let dir = existing_ancestor(data_dir);
    let free_kib = std::process::Command::new("df")
        .arg("-Pk")
        .arg(&dir)
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines()
                .nth(1)?
                .split_whitespace()
                .nth(3)?
                .parse::<u64>()
                .ok()
        });
    let Some(kib) = free_kib else {
        report.add(
            NAME,
            Status::Note,
            format!("could not measure the free space of {}", dir.display()),
            None,
        );
        return;
    };
    let gib = kib as f64 / (1024.0 * 1024.0);
    let detail = format!("{gib:.1} GiB free in {}", dir.display());
    let fix = Some(
        "free space there, or point --data-dir (FHIRGATE_DATA_DIR) at a larger disk".to_owned(),
    );
    if gib < 1.0 {
        report.add(NAME, Status::Fail, detail, fix);
    } else if gib < 5.0 {
        report.add(NAME, Status::Warn, detail, fix);
    } else {
        report.add(NAME, Status::Ok, detail, None);
    }
}

/// The listen port: free, or taken by a fhirgate that already runs, or by something else.
async fn port(addr: SocketAddr, report: &mut Report) {
    const NAME: &str = "port";
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            drop(l);
            report.add(NAME, Status::Ok, format!("{addr} is free"), None);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            let probe = if addr.ip().is_unspecified() {
                SocketAddr::from(([127, 0, 0, 1], addr.port()))
            } else {
                addr
            };
            let ours = reqwest::Client::new()
                .get(format!("http://{probe}/healthz"))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ours {
                report.add(
                    NAME,
                    Status::Note,
                    format!(
                        "{addr} is taken by a server that answers /healthz: fhirgate already runs"
                    ),
                    None,
                );
            } else {
                report.add(
                    NAME,
                    Status::Fail,
                    format!("another program listens on {addr}"),
                    Some(format!(
                        "stop it (find it with `ss -ltnp 'sport = :{}'`), or serve on another port: --listen 127.0.0.1:{}",
                        addr.port(),
                        addr.port().wrapping_add(1)
                    )),
                );
            }
        }
        Err(e) => report.add(
            NAME,
            Status::Fail,
            format!("cannot listen on {addr}: {e}"),
            Some(
                "ports below 1024 need privileges: listen on 8080 and put a proxy in front".into(),
            ),
        ),
    }
}
