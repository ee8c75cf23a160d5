//! The `fhirgate` binary: parses the command line and runs the subcommand.

use anyhow::Context;
use clap::Parser;
use fhirgate::config::{Cli, Command, KeysCommand};
use fhirgate::startup::{self, Application, Database};

// The write path allocates many small JSON nodes; mimalloc handles that far better than glibc's
// malloc under concurrency (measured with fhirgate-load, see docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    fhirgate::telemetry::init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            // Keys first: a missing production key must fail before anything touches the database.
            let keys = startup::master_keys(&cli.db)?;
            let db = Database::connect(&cli.db).await?;
            let app = match Application::build(&args, Box::new(keys), db.pool.clone()).await {
                Ok(app) => app,
                Err(e) => {
                    db.close().await;
                    return Err(e);
                }
            };
            println!("listening on http://{}", app.addr());
            let served = app.run(startup::shutdown_signal()).await;
            db.close().await;
            served.context("serving")?;
            tracing::info!("stopped");
        }
        Command::Migrate => {
            let db = Database::connect(&cli.db).await?;
            println!("migrations applied");
            db.close().await;
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
