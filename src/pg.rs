//! A private PostgreSQL cluster run from the machine's own PostgreSQL binaries, for
//! `fhirgate serve` without `DATABASE_URL` and for the test harness when no server answers.
//!
//! The cluster lives in `<data-dir>/postgres` and listens only on a Unix socket in
//! `<data-dir>/run`. PostgreSQL refuses to run as root, so when we are root the cluster is created
//! and started as the `postgres` system user, which then owns those two directories.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use sqlx::postgres::PgConnectOptions;

/// A running private cluster; [`PrivatePostgres::stop`] stops it if we started it.
#[derive(Debug)]
pub struct PrivatePostgres {
    bindir: PathBuf,
    pgdata: PathBuf,
    socket_dir: PathBuf,
    as_postgres: bool,
    started_here: bool,
}

/// Whether this process runs as root.
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Whether the `postgres` system user can enter `dir` (every parent must be searchable).
fn postgres_can_enter(dir: &Path) -> bool {
    Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-x"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

/// Finds `initdb`/`pg_ctl`: `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`.
pub fn find_bindir() -> anyhow::Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p).context(NO_BINARIES)
}

/// What to do when `initdb` cannot be found (serve and doctor both say it).
pub const NO_BINARIES: &str = "no PostgreSQL server binaries (initdb, pg_ctl) found. Install them \
(Debian/Ubuntu: apt-get install postgresql; Fedora/RHEL: dnf install postgresql-server; macOS: \
brew install postgresql@16), or set DATABASE_URL to a PostgreSQL server you run";

/// The private cluster of `data_dir` as a previous `serve` left it, without creating or
/// starting anything: its data directory, its socket directory and whether it runs. `None` when
/// there is none yet.
pub fn existing(data_dir: &Path) -> Option<(PathBuf, PathBuf, bool)> {
    let data_dir = data_dir.canonicalize().ok()?;
    let root = std::fs::read_to_string(data_dir.join("postgres-location.txt"))
        .map(|s| PathBuf::from(s.trim()))
        .unwrap_or_else(|_| data_dir.clone());
    let pgdata = root.join("postgres");
    if !pgdata.join("PG_VERSION").exists() {
        return None;
    }
    let socket_dir = socket_dir(&root, &data_dir);
    // The postmaster writes its pid file while it runs and removes it on a clean stop; a
    // process of that pid must still exist.
    let running = std::fs::read_to_string(pgdata.join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().map(str::trim).map(str::to_owned))
        .is_some_and(|pid| Path::new("/proc").join(pid).exists());
    Some((pgdata, socket_dir, running))
}

/// Unix socket paths are limited to 107 bytes; a long data directory gets a short private one.
fn socket_dir(root: &Path, data_dir: &Path) -> PathBuf {
    let dir = root.join("run");
    if dir.as_os_str().len() > 80 {
        std::env::temp_dir().join(format!("fhirgate-{}", short_hash(data_dir)))
    } else {
        dir
    }
}

/// Connection options for database `db` of a private cluster listening in `socket_dir`.
pub fn socket_options(socket_dir: &Path, db: &str) -> PgConnectOptions {
    PgConnectOptions::new()
        .socket(socket_dir)
        .port(5432)
        .username("postgres")
        .database(db)
}

impl PrivatePostgres {
    /// Creates the cluster on first use, starts it unless it already runs, and returns it.
    pub fn ensure(data_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("creating {}", data_dir.display()))?;
        let data_dir = data_dir.canonicalize()?;
        let as_postgres = is_root();
        let bindir = find_bindir()?;
        // As root, the cluster runs as `postgres`, which must be able to enter the directory. A
        // data directory under /root (mode 0700) is not: then the cluster lives in a directory of
        // its own under /var/tmp, named after the data directory so the next start finds it again.
        let root = if as_postgres && !postgres_can_enter(&data_dir) {
            let elsewhere = PathBuf::from("/var/tmp")
                .join(format!("fhirgate-postgres-{}", short_hash(&data_dir)));
            std::fs::create_dir_all(&elsewhere)?;
            tracing::warn!(
                cluster = %elsewhere.display(),
                "the postgres system user cannot enter the data directory; the private cluster lives elsewhere"
            );
            std::fs::write(
                data_dir.join("postgres-location.txt"),
                format!("{}\n", elsewhere.display()),
            )?;
            elsewhere
        } else {
            data_dir.clone()
        };
        let pgdata = root.join("postgres");
        let socket_dir = socket_dir(&root, &data_dir);
        std::fs::create_dir_all(&socket_dir)?;
        let pg = Self {
            bindir,
            pgdata,
            socket_dir,
            as_postgres,
            started_here: false,
        };
        if !pg.pgdata.join("PG_VERSION").exists() {
            std::fs::create_dir_all(&pg.pgdata)?;
            pg.chown(&pg.pgdata)?;
            pg.run(
                "initdb",
                &[
                    "-D",
                    path_str(&pg.pgdata)?,
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ],
            )
            .context("initdb failed")?;
        }
        pg.chown(&pg.socket_dir)?;
        let started = pg.start()?;
        Ok(Self {
            started_here: started,
            ..pg
        })
    }

    fn chown(&self, dir: &Path) -> anyhow::Result<()> {
        if self.as_postgres {
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir)
                .status()?;
            if !st.success() {
                bail!("chown of {} to postgres failed", dir.display());
            }
        }
        Ok(())
    }

    fn command(&self, tool: &str) -> Command {
        let bin = self.bindir.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .with_context(|| format!("running {tool}"))?;
        if !out.status.success() {
            bail!(
                "{tool} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn is_running(&self) -> bool {
        self.command("pg_ctl")
            .args(["status", "-D"])
            .arg(&self.pgdata)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Starts the cluster; `false` if it was already running (then we leave it running on exit).
    fn start(&self) -> anyhow::Result<bool> {
        if self.is_running() {
            return Ok(false);
        }
        let log = self.pgdata.join("server.log");
        let opts = format!(
            "-c listen_addresses='' -k {} -c port=5432 -c max_connections=200",
            path_str(&self.socket_dir)?
        );
        self.run(
            "pg_ctl",
            &[
                "start",
                "-w",
                "-t",
                "60",
                "-D",
                path_str(&self.pgdata)?,
                "-l",
                path_str(&log)?,
                "-o",
                &opts,
            ],
        )
        .context("starting the private PostgreSQL")?;
        Ok(true)
    }

    /// Connection options for database `db` on this cluster.
    pub fn connect_options(&self, db: &str) -> PgConnectOptions {
        socket_options(&self.socket_dir, db)
    }

    /// Stops the cluster if this process started it.
    pub fn stop(&self) {
        if self.started_here {
            let _ = self.run(
                "pg_ctl",
                &[
                    "stop",
                    "-m",
                    "fast",
                    "-w",
                    "-D",
                    &self.pgdata.to_string_lossy(),
                ],
            );
        }
    }
}

fn path_str(p: &Path) -> anyhow::Result<&str> {
    p.to_str().context("data directory path is not valid UTF-8")
}

fn short_hash(p: &Path) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(p.as_os_str().as_encoded_bytes())[..6])
}

/// Creates database `name` through `admin` (a connection to an existing database) unless it exists.
pub async fn create_database(admin: &PgConnectOptions, name: &str) -> anyhow::Result<()> {
    use sqlx::{ConnectOptions, Connection};
    let mut conn = admin
        .clone()
        .database("postgres")
        .connect()
        .await
        .context("connecting to PostgreSQL")?;
    // language=PostgreSQL
    let exists: Option<(i32,)> = sqlx::query_as("select 1 from pg_database where datname = $1")
        .bind(name)
        .fetch_optional(&mut conn)
        .await?;
    if exists.is_none() {
        // Identifiers cannot be bound as parameters; `name` is quoted and comes from configuration.
        let stmt = format!("create database \"{}\"", name.replace('"', "\"\""));
        if let Err(e) = sqlx::raw_sql(&stmt).execute(&mut conn).await {
            // A concurrent creator may have won; anything else is real.
            if e.as_database_error()
                .is_none_or(|d| d.code().as_deref() != Some("42P04"))
            {
                return Err(e.into());
            }
        }
    }
    conn.close().await?;
    Ok(())
}
