//! `fhirgate-fuzz`: runs the mutation fuzzer of `fhirgate::fuzz` on one target or all of them,
//! for a number of inputs or a time, and writes what made a target panic to a findings
//! directory. See `docs/fuzzing.md`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "fhirgate-fuzz", about = "Fuzz fhirgate's parsers and mappers")]
struct Args {
    /// Target name, or `all` (`--list` prints them).
    #[arg(long, default_value = "all")]
    target: String,
    /// Print the targets and exit.
    #[arg(long)]
    list: bool,
    /// Seconds per target.
    #[arg(long, default_value_t = 60)]
    secs: u64,
    /// Most inputs per target.
    #[arg(long, default_value_t = u64::MAX)]
    runs: u64,
    /// Random seed (runs are repeatable).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The repository (for the seed corpora).
    #[arg(long, default_value = ".")]
    root: PathBuf,
    /// Where inputs that made a target panic are written.
    #[arg(long, default_value = "fuzz-findings")]
    findings: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // A panic is a finding, reported once per target below, not a backtrace per input.
    std::panic::set_hook(Box::new(|_| {}));
    let targets = fhirgate::fuzz::targets();
    if args.list {
        for t in &targets {
            println!("{}", t.name);
        }
        return Ok(());
    }
    let mut found = 0;
    for t in targets
        .iter()
        .filter(|t| args.target == "all" || t.name == args.target)
    {
        let seeds = fhirgate::fuzz::seeds(&args.root, t.name, 256 * 1024);
        let report = fhirgate::fuzz::run(
            t,
            &seeds,
            args.runs,
            Duration::from_secs(args.secs),
            args.seed,
        );
        println!(
            "{}: {} inputs from {} seeds, {} findings, slowest input {:.1} ms",
            t.name,
            report.runs,
            seeds.len(),
            report.findings.len(),
            report.slowest.as_secs_f64() * 1000.0
        );
        for (i, input) in report.findings.iter().enumerate() {
            std::fs::create_dir_all(&args.findings)?;
            let path = args.findings.join(format!("{}-{i}.bin", t.name));
            std::fs::write(&path, input)?;
            println!("  finding written to {}", path.display());
        }
        found += report.findings.len();
    }
    if found > 0 {
        std::process::exit(1);
    }
    Ok(())
}
