//! The `fhirgate` binary: parses the command line and runs the subcommand.

use anyhow::Context;
use clap::Parser;
use fhirgate::config::{AuditCommand, Cli, ClientCommand, Command, KeysCommand, UserCommand};
use fhirgate::startup::{self, Application, Database};

// The write path allocates many small JSON nodes; mimalloc handles that far better than glibc's
// malloc under concurrency (measured with fhirgate-load, see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // Bodies are bounded in depth before anything recurses into them (codec), and the workers get
    // a stack well above what those bounds need, so a hostile body cannot abort the process.
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(8 * 1024 * 1024)
        .build()?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    fhirgate::telemetry::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            if args.allow_anonymous_read && cli.db.environment.is_production() {
                anyhow::bail!("--allow-anonymous-read is refused with FHIRGATE_ENV=production");
            }
            if args.no_read_audit && cli.db.environment.is_production() {
                anyhow::bail!("--no-read-audit is refused with FHIRGATE_ENV=production");
            }
            // Keys first: a missing production key must fail before anything touches the database.
            let started = async {
                let keys = startup::master_keys(&cli.db)?;
                let db = Database::connect(&cli.db).await?;
                match Application::build(&args, Box::new(keys), db.pool.clone()).await {
                    Ok(app) => Ok((db, app)),
                    Err(e) => {
                        db.close().await;
                        Err(e)
                    }
                }
            }
            .await;
            let (db, app) = match started {
                Ok(started) => started,
                Err(e) => {
                    let listen = args.listen.to_string();
                    let found = fhirgate::doctor::run(&cli.db, &listen, args.public_url.as_deref())
                        .await
                        .problems();
                    if !found.checks.is_empty() {
                        eprintln!("fhirgate cannot start. `fhirgate doctor` finds:\n{found}");
                    }
                    return Err(e);
                }
            };
            println!("listening on http://{}", app.addr());
            if args.checkpoint_interval_secs > 0 {
                let key = fhirgate::audit::checkpoint::signing_key(&cli.db.checkpoint_key_path())?;
                let sink = fhirgate::audit::checkpoint::FileSink(cli.db.checkpoint_path());
                let pool = db.pool.clone();
                let every = std::time::Duration::from_secs(args.checkpoint_interval_secs);
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        if let Err(e) = fhirgate::audit::checkpoint::take(&pool, &key, &sink).await
                        {
                            tracing::error!(error = %format!("{e:#}"), "audit checkpoint failed");
                        }
                    }
                });
            }
            let served = app.run(startup::shutdown_signal()).await;
            db.close().await;
            served.context("serving")?;
            tracing::info!("stopped");
        }
        Command::Token {
            scopes,
            patient,
            organization,
            ttl,
            public_url,
        } => {
            development_only(&cli.db, "fhirgate token")?;
            let ttl = fhirgate::auth::token::parse_ttl(&ttl)?;
            let keys = startup::master_keys(&cli.db)?;
            let db = Database::connect(&cli.db).await?;
            let issued = fhirgate::auth::token::development_token(
                db.pool.clone(),
                Box::new(keys),
                &public_url,
                &scopes,
                patient,
                organization,
                ttl,
            )
            .await;
            db.close().await;
            println!("{}", issued?);
        }
        Command::Demo { public_url } => {
            development_only(&cli.db, "fhirgate demo")?;
            let keys = startup::master_keys(&cli.db)?;
            let db = Database::connect(&cli.db).await?;
            let loaded = async {
                let state = startup::open_state(
                    db.pool.clone(),
                    Box::new(keys),
                    &public_url,
                    usize::MAX,
                    false,
                    true,
                )
                .await?;
                fhirgate::demo::load(&state, &cli.db.data_dir).await
            }
            .await;
            db.close().await;
            print!("{}", fhirgate::demo::next_steps(&loaded?, &public_url));
        }
        Command::Doctor { listen, public_url } => {
            let report = fhirgate::doctor::run(&cli.db, &listen, public_url.as_deref()).await;
            print!("{report}");
            if report.failed() {
                std::process::exit(1);
            }
        }
        Command::Reindex { batch } => {
            let keys = startup::master_keys(&cli.db)?;
            let db = Database::connect(&cli.db).await?;
            let state = startup::command_line_state(db.pool.clone(), Box::new(keys)).await?;
            let started = std::time::Instant::now();
            let report = fhirgate::search::reindex::run(&state, batch.max(1)).await;
            db.close().await;
            let report = report.map_err(|e| anyhow::anyhow!("reindex failed: {e}"))?;
            println!(
                "reindexed {} resources ({} index rows, consent grants of {} patients) in {:.1} s",
                report.resources,
                report.rows,
                report.patients,
                started.elapsed().as_secs_f64()
            );
        }
        Command::Migrate => {
            let db = Database::connect(&cli.db).await?;
            println!("migrations applied");
            db.close().await;
        }
        Command::Import {
            source,
            patient,
            files,
        } => {
            let source: fhirgate_mappers::Source = source
                .parse()
                .map_err(|_| anyhow::anyhow!("unknown source {source}: apple-health, healthkit, fitbit, google-fit, oura or withings"))?;
            if !fhirgate_codec::is_valid_id(&patient) {
                anyhow::bail!("--patient must be a FHIR id");
            }
            let keys = startup::master_keys(&cli.db)?;
            let db = Database::connect(&cli.db).await?;
            let operator = std::sync::Arc::new(fhirgate::audit::RequestContext::command_line());
            let result = fhirgate::audit::REQUEST
                .scope(
                    operator,
                    import(&db.pool, Box::new(keys), source, &patient, &files),
                )
                .await;
            db.close().await;
            result?;
        }
        Command::User {
            command: UserCommand::Auditor { email, remove },
        } => {
            let keys = startup::master_keys(&cli.db)?;
            let db = Database::connect(&cli.db).await?;
            let result = async {
                let state = startup::command_line_state(db.pool.clone(), Box::new(keys)).await?;
                fhirgate::auth::users::set_auditor(&state, &email, !remove)
                    .await
                    .map_err(anyhow::Error::from)
            }
            .await;
            db.close().await;
            if !result? {
                anyhow::bail!("no account has this email address");
            }
            println!(
                "{}",
                if remove {
                    "auditor role removed"
                } else {
                    "auditor role granted"
                }
            );
        }
        Command::Audit {
            command: AuditCommand::Verify { checkpoints },
        } => {
            let db = Database::connect(&cli.db).await?;
            let report = fhirgate::audit::verify(&db.pool).await;
            let checked = match (&checkpoints, &report) {
                (Some(path), Ok(fhirgate::audit::VerifyReport::Ok { .. })) => {
                    let key =
                        fhirgate::audit::checkpoint::signing_key(&cli.db.checkpoint_key_path())?;
                    Some(
                        fhirgate::audit::checkpoint::check(&db.pool, path, key.verifying_key())
                            .await,
                    )
                }
                _ => None,
            };
            db.close().await;
            match report? {
                fhirgate::audit::VerifyReport::Ok { count } => {
                    println!("OK: {count} events, every link verified");
                }
                fhirgate::audit::VerifyReport::Broken {
                    seq,
                    expected,
                    found,
                } => {
                    println!("BROKEN at row {seq}: expected {expected}, found {found}");
                    std::process::exit(1);
                }
            }
            match checked.transpose()? {
                None => {}
                Some(fhirgate::audit::checkpoint::CheckpointReport::Ok {
                    checkpoints,
                    covered,
                }) => {
                    println!("OK: {checkpoints} signed checkpoints hold (events 1 to {covered} are all there, unchanged)");
                }
                Some(fhirgate::audit::checkpoint::CheckpointReport::Failed { line, reason }) => {
                    println!("CHECKPOINT FAILED at line {line}: {reason}");
                    std::process::exit(1);
                }
            }
        }
        Command::Audit {
            command: AuditCommand::Checkpoint,
        } => {
            let key = fhirgate::audit::checkpoint::signing_key(&cli.db.checkpoint_key_path())?;
            let sink = fhirgate::audit::checkpoint::FileSink(cli.db.checkpoint_path());
            let db = Database::connect(&cli.db).await?;
            let taken = fhirgate::audit::checkpoint::take(&db.pool, &key, &sink).await;
            db.close().await;
            match taken? {
                Some(c) => println!(
                    "checkpoint: row {}, {} events, head {} (appended to {})",
                    c.seq,
                    c.count,
                    c.head,
                    sink.0.display()
                ),
                None => println!("the audit trail is empty: no checkpoint"),
            }
        }
        Command::Client { command } => {
            let db = Database::connect(&cli.db).await?;
            let result = client_command(&db.pool, command).await;
            db.close().await;
            result?;
        }
        Command::Keys {
            command: KeysCommand::RotateSigning { retire_old },
        } => {
            let keys = startup::master_keys(&cli.db)?;
            let db = Database::connect(&cli.db).await?;
            let result = async {
                let ring = fhirgate::crypto::Keyring::open(&db.pool, Box::new(keys)).await?;
                let kid = fhirgate::auth::keys::SigningKeys::create(&db.pool, &ring, true).await?;
                let retired = if retire_old {
                    fhirgate::auth::keys::SigningKeys::retire_old(&db.pool).await?
                } else {
                    0
                };
                anyhow::Ok((kid, retired))
            }
            .await;
            db.close().await;
            let (kid, retired) = result?;
            println!("new signing key {kid}; {retired} older keys retired; restart servers to sign with it");
        }
        Command::Keys {
            command: KeysCommand::Generate { out },
        } => {
            let key = fhirgate::crypto::MasterKey::generate_file(&out)?;
            println!(
                "wrote a new master key to {} (id {})",
                out.display(),
                key.id()
            );
        }
        Command::Keys {
            command:
                KeysCommand::Rotate {
                    new_key_file,
                    retire_old,
                },
        } => {
            let new = fhirgate::crypto::MasterKey::from_file(&new_key_file)?;
            let current = startup::master_keys(&cli.db)?;
            let db = Database::connect(&cli.db).await?;
            let result = fhirgate::crypto::rotate(&db.pool, &current, &new, retire_old).await;
            db.close().await;
            let report = result?;
            println!(
                "rewrapped {} data keys under master key {}; {} unreadable; {} old wrappings retired",
                report.rewrapped,
                new.id(),
                report.unreadable,
                report.retired
            );
            if report.unreadable > 0 {
                anyhow::bail!("some data keys could not be unwrapped with the configured keys");
            }
        }
    }
    Ok(())
}

/// Refuses the development conveniences (`token`, `demo`) in production and when a real master
/// key is configured: there, tokens come only from registered clients.
fn development_only(db: &fhirgate::config::DbArgs, what: &str) -> anyhow::Result<()> {
    if db.environment.is_production() {
        anyhow::bail!("{what} is refused with FHIRGATE_ENV=production: use a registered client (Backend Services) instead");
    }
    if db.master_key.is_some() || db.master_key_file.is_some() {
        anyhow::bail!("{what} is refused when a real master key is configured: use a registered client (Backend Services) instead");
    }
    Ok(())
}

async fn client_command(db: &sqlx::PgPool, command: ClientCommand) -> anyhow::Result<()> {
    use fhirgate::auth::clients::{self, Client};
    match command {
        ClientCommand::Add {
            kind,
            id,
            scopes,
            jwks,
            generate_key,
            organization,
            redirect_uri,
            confidential,
        } => {
            if generate_key.is_some() && kind != "backend" {
                anyhow::bail!("--generate-key is for --kind backend");
            }
            let generated = match &generate_key {
                Some(path) => Some(clients::generate_key_file(path, &id)?),
                None => None,
            };
            let jwks = match jwks {
                Some(path) => Some(
                    serde_json::from_str(
                        &std::fs::read_to_string(&path)
                            .with_context(|| format!("reading {}", path.display()))?,
                    )
                    .with_context(|| format!("{} is not JSON", path.display()))?,
                ),
                None => generated,
            };
            let secret =
                (kind == "app" && confidential).then(|| hex::encode(rand::random::<[u8; 32]>()));
            let client = Client {
                client_id: id.clone(),
                kind,
                scopes,
                redirect_uris: redirect_uri,
                confidential,
                secret_hash: secret.as_deref().map(clients::hash_secret),
                jwks,
                organization,
            };
            clients::add(db, &client).await?;
            println!("registered client {id}");
            if let Some(path) = &generate_key {
                println!(
                    "private key written to {} (ES384, kid {id}); sign client assertions with it",
                    path.display()
                );
            }
            if let Some(s) = secret {
                println!("client secret (shown once): {s}");
            }
        }
        ClientCommand::List => {
            for c in clients::list(db).await? {
                println!(
                    "{}\t{}\t{}\t{}",
                    c.client_id,
                    c.kind,
                    c.organization.as_deref().unwrap_or("-"),
                    c.scopes
                );
            }
        }
        ClientCommand::Remove { id } => {
            if !clients::remove(db, &id).await? {
                anyhow::bail!("no client {id}");
            }
            println!("removed client {id}");
        }
    }
    Ok(())
}

async fn import(
    pool: &sqlx::PgPool,
    keys: Box<dyn fhirgate::crypto::KeyProvider>,
    source: fhirgate_mappers::Source,
    patient: &str,
    files: &[std::path::PathBuf],
) -> anyhow::Result<()> {
    let state = startup::command_line_state(pool.clone(), keys).await?;
    let mut total = fhirgate::ingest::IngestSummary::default();
    for (n, path) in files.iter().enumerate() {
        eprint!("[{}/{}] {} … ", n + 1, files.len(), path.display());
        let s = if source == fhirgate_mappers::Source::AppleHealth {
            // Exports can be gigabytes: streamed, mapped and stored in chunks in constant memory.
            let started = std::time::Instant::now();
            let progress = |p: fhirgate::ingest::Progress| {
                eprint!(
                    "\r{}",
                    progress_line(n + 1, files.len(), p, started.elapsed())
                );
            };
            fhirgate::ingest::import_apple_stream(&state, patient, path.clone(), progress).await
        } else {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            match fhirgate::ingest::map(source, patient, bytes).await {
                Ok(mapped) => fhirgate::ingest::store(&state, patient, mapped).await,
                Err(e) => Err(e),
            }
        }
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        eprintln!(
            "\n{} created, {} updated, {} unchanged, {} rejected",
            s.created,
            s.updated,
            s.unchanged,
            s.rejected.len()
        );
        total.created += s.created;
        total.updated += s.updated;
        total.unchanged += s.unchanged;
        total.rejected.extend(s.rejected);
        for (k, v) in s.skipped {
            *total.skipped.entry(k).or_default() += v;
        }
    }
    println!("{}", serde_json::to_string_pretty(&total)?);
    Ok(())
}

/// One line of the import progress bar: `[1/1] [#########...........] 45% 1.2/2.7 GB 1,234,567
/// records 98,765/s`, redrawn in place with a carriage return.
fn progress_line(
    file: usize,
    files: usize,
    p: fhirgate::ingest::Progress,
    elapsed: std::time::Duration,
) -> String {
    const WIDTH: u64 = 30;
    let percent = p.percent();
    let filled = (percent * WIDTH / 100) as usize;
    let bar = format!(
        "{}{}",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled)
    );
    let gb = |b: u64| b as f64 / 1e9;
    let rate = p.records as f64 / elapsed.as_secs_f64().max(1e-3);
    format!(
        "[{file}/{files}] [{bar}] {percent:>3}% {:.2}/{:.2} GB {} records {}/s ",
        gb(p.bytes_read),
        gb(p.bytes_total),
        p.records,
        rate as u64
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_progress_bar_fills_with_the_bytes_read() {
        let p = fhirgate::ingest::Progress {
            records: 5000,
            bytes_read: 500_000_000,
            bytes_total: 1_000_000_000,
        };
        let line = super::progress_line(1, 2, p, std::time::Duration::from_secs(2));
        assert!(
            line.starts_with(
                "[1/2] [###############...............]  50% 0.50/1.00 GB 5000 records 2500/s"
            ),
            "{line}"
        );
    }
}
