//! `fhirgate-load`: a load generator for any FHIR R4 base URL, with the PostgreSQL ceiling
//! measured in the same run.
//!
//! Workloads:
//! - `ingest`: transaction Bundles of N Observations spread over P synthetic patients;
//! - `read`: read by id over C connections for D seconds;
//! - `mixed`: reads and single-resource creates, with a write ratio.
//!
//! With `--database-url`, it also measures what PostgreSQL alone does with the same work: `COPY`
//! of as many rows of similar size (for ingest) and primary-key selects over the same number of
//! connections (for reads), and prints our figures as a fraction of that ceiling.

// The same allocator as the server, so that the in-process mapping figure of `apple` is what the
// server's import path does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};

/// Load generator for a FHIR R4 server.
#[derive(Debug, Parser)]
#[command(name = "fhirgate-load", version, about)]
struct Cli {
    /// FHIR base URL, e.g. http://127.0.0.1:8080/fhir
    #[arg(long, env = "FHIR_BASE", default_value = "http://127.0.0.1:8080/fhir")]
    base: String,
    /// PostgreSQL URL for the ceiling measurement (the server's database or any other).
    #[arg(long, env = "LOAD_DATABASE_URL")]
    database_url: Option<String>,
    /// Bearer token to send.
    #[arg(long, env = "FHIR_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Register a first-party backend (system/*.cruds) in the server's database given by
    /// --database-url, and get a token from the server's token endpoint (SMART Backend Services).
    #[arg(long)]
    register_client: bool,
    /// With --register-client: bind the client to this partner organisation
    /// (`Organization/<id>`), so its tokens are partner tokens.
    #[arg(long)]
    organization: Option<String>,
    /// Workload.
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// Transaction Bundles of Observations.
    Ingest(IngestArgs),
    /// Read by id.
    Read(ReadArgs),
    /// Reads mixed with creates.
    Mixed(MixedArgs),
    /// An Apple Health export scaled from the real samples: mapping throughput in this process,
    /// then the end-to-end import through `POST /ingest/apple-health`.
    Apple(AppleArgs),
    /// Build the search benchmark store: patients with wearable Observations (10 M by default).
    Store(StoreArgs),
    /// The search benchmarks over that store.
    Search(SearchArgs),
    /// Consent enforcement cost: partner searches against unfiltered ones.
    Consent(ConsentArgs),
}

#[derive(Debug, Clone, Args)]
struct AppleArgs {
    /// Size of the generated export in MB.
    #[arg(long, default_value_t = 100)]
    size_mb: u64,
    /// Also import it through the server (needs a token with Observation/Device write scopes).
    #[arg(long)]
    import: bool,
    /// The server's process id: its peak resident memory (VmHWM) is reported after the import.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also run this `healthkit-to-sqlite` executable (PyPI) on the same file and report how
    /// much faster fhirgate was.
    #[arg(long)]
    healthkit_to_sqlite: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Args)]
struct StoreArgs {
    /// Patients.
    #[arg(long, default_value_t = 1000)]
    patients: usize,
    /// Observations per patient, spread over heart rate, steps, SpO2, weight, sleep and blood
    /// pressure (1,000 × 10,000 = 10 M).
    #[arg(long, default_value_t = 10_000)]
    per_patient: usize,
    /// Observations per transaction Bundle.
    #[arg(long, default_value_t = 1000)]
    bundle_size: usize,
    /// Bundles in flight at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Skip this many Observations per patient (to resume an interrupted load).
    #[arg(long, default_value_t = 0)]
    skip: usize,
}

#[derive(Debug, Clone, Args)]
struct SearchArgs {
    /// Patients of the store (`store --patients`).
    #[arg(long, default_value_t = 1000)]
    patients: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Runs of the `_summary=count` query over all patients.
    #[arg(long, default_value_t = 10)]
    count_runs: usize,
    /// Run only these measurements (`hot`, `count`, `lastn`, `chain`; default all), e.g. to
    /// profile one of them.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Debug, Clone, Args)]
struct ConsentArgs {
    /// Patients in the store.
    #[arg(long, default_value_t = 10_000)]
    patients: usize,
    /// Of which this many consent to the partner (vital signs, for treatment).
    #[arg(long, default_value_t = 1000)]
    consented: usize,
    /// Heart-rate Observations per patient.
    #[arg(long, default_value_t = 50)]
    per_patient: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Seconds per run; runs alternate partner / unfiltered in --rounds pairs.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Pairs of runs.
    #[arg(long, default_value_t = 6)]
    rounds: u32,
    /// Concurrent connections of the read by id (DESIGN.md's read target is at 32).
    #[arg(long, default_value_t = 32)]
    read_connections: usize,
    /// Skip loading (the store is already there).
    #[arg(long)]
    no_load: bool,
}

/// The metrics of the benchmark store, in the share of Observations each gets.
const METRICS: [(&str, &str, &str, &str, &str, f64, f64); 6] = [
    // (LOINC, display, category, UCUM code, unit, low, span)
    (
        "8867-4",
        "Heart rate",
        "vital-signs",
        "/min",
        "beats/minute",
        50.0,
        80.0,
    ),
    (
        "55423-8",
        "Number of steps",
        "activity",
        "{steps}",
        "steps",
        0.0,
        2000.0,
    ),
    (
        "59408-5",
        "Oxygen saturation in Arterial blood by Pulse oximetry",
        "vital-signs",
        "%",
        "%",
        90.0,
        10.0,
    ),
    (
        "29463-7",
        "Body weight",
        "vital-signs",
        "kg",
        "kg",
        50.0,
        60.0,
    ),
    ("93832-4", "Sleep duration", "sleep", "h", "h", 4.0, 6.0),
    (
        "85354-9",
        "Blood pressure panel",
        "vital-signs",
        "mm[Hg]",
        "mmHg",
        100.0,
        40.0,
    ),
];

/// Observation `i` of store patient `p`: metrics in turn, one every 5 minutes from 2024-01-01.
fn store_observation(p: usize, i: usize) -> Value {
    let (code, display, category, ucum, unit, low, span) = METRICS[i % METRICS.len()];
    let minutes = (i as i64) * 5;
    let at = chrono::DateTime::from_timestamp(1_704_067_200 + minutes * 60, 0).unwrap_or_default();
    let value = low + ((i * 7919 + p * 104_729) % 1000) as f64 * span / 1000.0;
    let category = if category == "sleep" {
        json!([{"coding": [{"system": "https://fhirgate.org/CodeSystem/data-class", "code": "sleep"}]}])
    } else {
        json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}])
    };
    let mut o = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": category,
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "subject": {"reference": format!("Patient/bench-{p}")},
        "effectiveDateTime": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    if code == "85354-9" {
        o["component"] = json!([
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": (value * 10.0).round() / 10.0, "unit": unit, "system": "http://unitsofmeasure.org", "code": ucum}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
             "valueQuantity": {"value": (value * 6.5).round() / 10.0, "unit": unit, "system": "http://unitsofmeasure.org", "code": ucum}}]);
    } else {
        o["valueQuantity"] = json!({"value": (value * 10.0).round() / 10.0, "unit": unit, "system": "http://unitsofmeasure.org", "code": ucum});
    }
    o
}

fn store_patient(p: usize) -> Value {
    json!({"resourceType": "Patient", "id": format!("bench-{p}"),
        "identifier": [{"system": "urn:fhirgate:bench", "value": format!("P{p}")}],
        "name": [{"family": format!("Bench{p}"), "given": ["Load"]}],
        "gender": if p.is_multiple_of(2) { "female" } else { "male" }, "birthDate": format!("{}-01-01", 1940 + p % 60)})
}

/// Sends transaction Bundles from `make` (called with the Bundle number) over `concurrency`
/// connections, refreshing the token every few minutes; returns resources/s.
async fn send_bundles(
    cli: &Cli,
    bundles: usize,
    per_bundle: usize,
    concurrency: usize,
    make: Arc<dyn Fn(usize) -> String + Send + Sync>,
) -> anyhow::Result<f64> {
    let next = Arc::new(AtomicU64::new(0));
    let token = Arc::new(std::sync::RwLock::new(cli.token.clone()));
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (next, token, make, done) = (next.clone(), token.clone(), make.clone(), done.clone());
        let url = cli.base.clone();
        let client = reqwest::Client::new();
        tasks.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed) as usize;
                if b >= bundles {
                    break;
                }
                let body = make(b);
                let bearer = token
                    .read()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .clone();
                let mut req = client
                    .post(&url)
                    .header("content-type", "application/fhir+json")
                    .header("prefer", "return=minimal")
                    .body(body);
                if let Some(t) = bearer {
                    req = req.bearer_auth(t);
                }
                let resp = req.send().await?;
                let status = resp.status();
                let text = resp.text().await?;
                if status != 200 {
                    bail!(
                        "bundle {b} failed with {status}: {}",
                        &text[..text.len().min(400)]
                    );
                }
                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                if n % 200 == 0 {
                    let secs = started.elapsed().as_secs_f64();
                    println!(
                        "  {n}/{bundles} bundles, {:.0} resources/s",
                        n as f64 * per_bundle as f64 / secs
                    );
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    // Tokens last five minutes: get a fresh one every four while loading.
    let refresher = if cli.register_client {
        let (token, cli2) = (
            token.clone(),
            Cli {
                workload: Workload::Ingest(IngestArgs {
                    bundles: 0,
                    bundle_size: 0,
                    patients: 0,
                    concurrency: 0,
                }),
                token: None,
                base: cli.base.clone(),
                database_url: cli.database_url.clone(),
                register_client: true,
                organization: None,
            },
        );
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(240)).await;
                match register_and_get_token(&cli2).await {
                    Ok(t) => {
                        if let Ok(mut w) = token.write() {
                            *w = Some(t);
                        }
                    }
                    Err(e) => eprintln!("token refresh failed: {e}"),
                }
            }
        }))
    } else {
        None
    };
    for t in tasks {
        t.await??;
    }
    if let Some(r) = refresher {
        r.abort();
    }
    Ok((bundles * per_bundle) as f64 / started.elapsed().as_secs_f64())
}

async fn store(cli: &Cli, a: &StoreArgs) -> anyhow::Result<()> {
    println!(
        "store: {} patients × {} Observations = {} in Bundles of {}",
        a.patients,
        a.per_patient,
        a.patients * a.per_patient,
        a.bundle_size
    );
    let patients = a.patients;
    if a.skip == 0 {
        let rate = send_bundles(cli, patients.div_ceil(500), 500, 1, Arc::new(move |b| {
            let entries: Vec<Value> = (b * 500..((b + 1) * 500).min(patients))
                .map(|p| json!({"resource": store_patient(p), "request": {"method": "PUT", "url": format!("Patient/bench-{p}")}}))
                .collect();
            json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string()
        }))
        .await?;
        println!("store: {patients} Patients at {rate:.0}/s");
    }
    // Bundles interleave patients: Bundle b holds `size` consecutive Observations of one patient.
    let per_bundle = a.bundle_size;
    let per_patient_bundles = (a.per_patient - a.skip).div_ceil(per_bundle);
    let total_bundles = patients * per_patient_bundles;
    let (skip, per_patient) = (a.skip, a.per_patient);
    let started = Instant::now();
    let rate = send_bundles(cli, total_bundles, per_bundle, a.concurrency, Arc::new(move |b| {
        let p = b % patients;
        let chunk = b / patients;
        let first = skip + chunk * per_bundle;
        let entries: Vec<Value> = (first..(first + per_bundle).min(per_patient))
            .map(|i| json!({"resource": store_observation(p, i), "request": {"method": "POST", "url": "Observation"}}))
            .collect();
        json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string()
    }))
    .await?;
    println!(
        "store: {} Observations in {:.0} s = {rate:.0} resources/s",
        total_bundles * per_bundle,
        started.elapsed().as_secs_f64()
    );
    analyze(cli).await?;
    Ok(())
}

/// `VACUUM ANALYZE` of the server's database after a bulk load, so the planner knows the tables'
/// sizes and index-only scans work (autovacuum would get there, later).
async fn analyze(cli: &Cli) -> anyhow::Result<()> {
    let Some(url) = &cli.database_url else {
        return Ok(());
    };
    let started = Instant::now();
    let mut conn = PgConnection::connect(url).await?;
    sqlx::raw_sql("vacuum analyze").execute(&mut conn).await?;
    println!("vacuum analyze in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Runs `make(k)` GETs over `connections` for `secs` and prints throughput and latencies.
async fn measure(
    client: &reqwest::Client,
    label: &str,
    connections: usize,
    secs: u64,
    make: Arc<dyn Fn(u64) -> String + Send + Sync>,
) -> anyhow::Result<Latencies> {
    let client = client.clone();
    let (rps, mut lat, errors) = timed_loop(connections, Duration::from_secs(secs), move |k| {
        let (client, url) = (client.clone(), make(k));
        Box::pin(async move {
            let resp = client.get(&url).send().await?;
            if resp.status() != 200 {
                bail!("status {} for {url}", resp.status());
            }
            resp.bytes().await?;
            Ok(())
        })
    })
    .await?;
    println!("{label}: {rps:.0} requests/s, {errors} errors");
    lat.report(label);
    if errors > 0 {
        bail!("{label}: {errors} requests failed");
    }
    Ok(lat)
}

async fn search(cli: &Cli, a: &SearchArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .default_headers(auth_headers(cli))
        .pool_max_idle_per_host(a.connections)
        .build()?;
    let (base, patients) = (cli.base.clone(), a.patients as u64);
    let patient = move |k: u64| (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % patients;
    let runs = |name: &str| a.only.is_empty() || a.only.iter().any(|o| o == name);
    // 1. The hot query: one patient, heart rate, a date range, 50 per page.
    let b = base.clone();
    if runs("hot") {
        measure(&client, "Observation?patient&code=8867-4&date=ge&_count=50", a.connections, a.duration, Arc::new(move |k| {
        let day = 1 + k % 28;
        format!("{b}/Observation?patient=bench-{}&code=http://loinc.org|8867-4&date=ge2024-01-{day:02}&_count=50", patient(k))
    }))
    .await?;
    }
    // 2. Count one code over every patient.
    let mut lat = Latencies::default();
    for _ in 0..if runs("count") { a.count_runs } else { 0 } {
        let t = Instant::now();
        let b: Value = client
            .get(format!(
                "{base}/Observation?code=http://loinc.org|8867-4&_summary=count"
            ))
            .send()
            .await?
            .json()
            .await?;
        lat.0.push(t.elapsed().as_micros() as u64);
        if b["total"].as_u64().is_none() {
            bail!("no total: {b}");
        }
        println!("  total {}", b["total"]);
    }
    if runs("count") {
        lat.report("Observation?code=8867-4&_summary=count (sequential)");
    }
    // 3. $lastn for one patient.
    let b = base.clone();
    if runs("lastn") {
        measure(
            &client,
            "Observation/$lastn?patient",
            a.connections,
            a.duration,
            Arc::new(move |k| format!("{b}/Observation/$lastn?patient=bench-{}", patient(k))),
        )
        .await?;
    }
    // 4. Chained search by the patient's (blind-indexed) identifier.
    let b = base.clone();
    if runs("chain") {
        measure(
            &client,
            "Observation?subject:Patient.identifier",
            a.connections,
            a.duration,
            Arc::new(move |k| {
                format!(
                    "{b}/Observation?subject:Patient.identifier=urn:fhirgate:bench|P{}&_count=50",
                    patient(k)
                )
            }),
        )
        .await?;
    }
    Ok(())
}

/// The consent benchmark: a partner's search over a store of `patients` of whom `consented`
/// permit it, against the same search with an unrestricted token, in alternating runs.
/// A partner client (`Organization/bench-partner`, purpose TREAT) and a first-party one, each
/// with a fresh token (tokens last 5 minutes; a long benchmark takes new ones per measurement).
async fn consent_clients(
    cli: &Cli,
    connections: usize,
) -> anyhow::Result<(reqwest::Client, reqwest::Client)> {
    let with = |organization: Option<&str>| Cli {
        organization: organization.map(str::to_owned),
        token: None,
        register_client: true,
        base: cli.base.clone(),
        database_url: cli.database_url.clone(),
        workload: Workload::Ingest(IngestArgs {
            bundles: 0,
            bundle_size: 0,
            patients: 0,
            concurrency: 0,
        }),
    };
    let mut clients = Vec::new();
    for organization in [Some("Organization/bench-partner"), None] {
        let token = register_and_get_token(&with(organization)).await?;
        let mut h = reqwest::header::HeaderMap::new();
        h.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
        h.insert("x-purpose-of-use", "TREAT".parse()?);
        clients.push(
            reqwest::Client::builder()
                .default_headers(h)
                .pool_max_idle_per_host(connections)
                .build()?,
        );
    }
    let system = clients.pop().context("system client")?;
    let partner = clients.pop().context("partner client")?;
    Ok((partner, system))
}

async fn consent_bench(cli: &Cli, a: &ConsentArgs) -> anyhow::Result<()> {
    let patients = a.patients;
    if !a.no_load {
        send_bundles(cli, patients.div_ceil(500), 500, 2, Arc::new(move |b| {
            let entries: Vec<Value> = (b * 500..((b + 1) * 500).min(patients))
                .map(|p| {
                    let mut pt = store_patient(p);
                    pt["id"] = json!(format!("cb-{p}"));
                    json!({"resource": pt, "request": {"method": "PUT", "url": format!("Patient/cb-{p}")}})
                })
                .collect();
            json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string()
        }))
        .await?;
        let per = a.per_patient;
        let per_bundle = (1000 / per).max(1);
        let rate = send_bundles(
            cli,
            patients.div_ceil(per_bundle),
            per_bundle * per,
            2,
            Arc::new(move |b| {
                let entries: Vec<Value> = (b * per_bundle..((b + 1) * per_bundle).min(patients))
                    .flat_map(|p| {
                        (0..per).map(move |i| {
                    let mut o = store_observation(p, i * METRICS.len());
                    o["subject"] = json!({"reference": format!("Patient/cb-{p}")});
                    json!({"resource": o, "request": {"method": "POST", "url": "Observation"}})
                })
                    })
                    .collect();
                json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
                    .to_string()
            }),
        )
        .await?;
        println!(
            "consent: {} heart rates loaded at {rate:.0}/s",
            patients * per
        );
        // Every tenth patient consents.
        let step = (patients / a.consented.max(1)).max(1);
        let consented = a.consented;
        send_bundles(cli, consented.div_ceil(500), 500, 1, Arc::new(move |b| {
            let entries: Vec<Value> = (b * 500..((b + 1) * 500).min(consented))
                .map(|c| {
                    let p = c * step;
                    json!({"resource": {"resourceType": "Consent", "status": "active",
                        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
                        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                        "patient": {"reference": format!("Patient/cb-{p}")},
                        "provision": {"type": "permit",
                            "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                                       "reference": {"reference": "Organization/bench-partner"}}],
                            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
                            "class": [{"system": "https://fhirgate.org/CodeSystem/data-class", "code": "vital-signs"}]}},
                        "request": {"method": "POST", "url": "Consent"}})
                })
                .collect();
            json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string()
        }))
        .await?;
        println!(
            "consent: {consented} of {patients} patients consent to Organization/bench-partner"
        );
        analyze(cli).await?;
    }
    let step = (patients / a.consented.max(1)).max(1) as u64;
    let consented = a.consented as u64;
    // Reads by id: heart rates of consenting patients, which both callers may read.
    let url = cli
        .database_url
        .as_deref()
        .context("the read by id needs --database-url (to pick the ids)")?;
    let mut conn = PgConnection::connect(url).await?;
    let consenting: Vec<String> = (0..consented).map(|c| format!("cb-{}", c * step)).collect();
    let ids: Arc<Vec<String>> = Arc::new(
        sqlx::query_scalar(
            "select id from resource where resource_type = 'Observation' and compartment = any($1) and not deleted limit 50000",
        )
        .bind(&consenting)
        .fetch_all(&mut conn)
        .await?,
    );
    if ids.is_empty() {
        bail!("no Observations of consenting patients in the store");
    }
    for (label, query) in [
        ("read by id", "read"),
        ("one consented patient's heart rates", "patient"),
        ("heart rates of all patients, first page", "all"),
    ] {
        let connections = if query == "read" {
            a.read_connections
        } else {
            a.connections
        };
        let (partner, system) = consent_clients(cli, connections).await?;
        let mut partner_p95 = Vec::new();
        let mut plain_p95 = Vec::new();
        let mut partner_rps = Vec::new();
        let mut plain_rps = Vec::new();
        for _ in 0..a.rounds {
            for (who, client) in [("partner", &partner), ("unfiltered", &system)] {
                let b = cli.base.clone();
                let q = query.to_owned();
                let ids = ids.clone();
                let make: Arc<dyn Fn(u64) -> String + Send + Sync> = Arc::new(move |k| {
                    let spread = k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
                    let p = (spread % consented) * step;
                    if q == "read" {
                        format!(
                            "{b}/Observation/{}",
                            ids[(spread % ids.len() as u64) as usize]
                        )
                    } else if q == "patient" {
                        format!(
                            "{b}/Observation?patient=cb-{p}&code=http://loinc.org|8867-4&_count=50"
                        )
                    } else {
                        format!("{b}/Observation?code=http://loinc.org|8867-4&_count=50")
                    }
                });
                let client = client.clone();
                let (rps, mut lat, errors) =
                    timed_loop(connections, Duration::from_secs(a.duration), move |k| {
                        let (client, url) = (client.clone(), make(k));
                        Box::pin(async move {
                            let resp = client.get(&url).send().await?;
                            if resp.status() != 200 {
                                bail!("status {}", resp.status());
                            }
                            let body: Value = resp.json().await?;
                            if body["resourceType"] == "Bundle"
                                && body["entry"].as_array().is_none_or(Vec::is_empty)
                            {
                                bail!("empty result");
                            }
                            Ok(())
                        })
                    })
                    .await?;
                if errors > 0 {
                    bail!("{who}: {errors} requests failed");
                }
                lat.0.sort_unstable();
                if who == "partner" {
                    partner_p95.push(lat.percentile(0.95));
                    partner_rps.push(rps);
                } else {
                    plain_p95.push(lat.percentile(0.95));
                    plain_rps.push(rps);
                }
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (pr, ur) = (median(&mut partner_rps), median(&mut plain_rps));
        let (pp, up) = (median(&mut partner_p95), median(&mut plain_p95));
        println!("consent, {label} ({connections} connections): partner {pr:.0} req/s (p95 {pp:.2} ms), unfiltered {ur:.0} req/s (p95 {up:.2} ms); enforcement costs {:.1} % of throughput (median of {} paired runs)", 100.0 * (ur - pr) / ur, a.rounds);
    }
    Ok(())
}

#[derive(Debug, Clone, Args)]
struct IngestArgs {
    /// Number of Bundles to send.
    #[arg(long, default_value_t = 40)]
    bundles: usize,
    /// Observations per Bundle.
    #[arg(long, default_value_t = 1000)]
    bundle_size: usize,
    /// Synthetic patients the Observations are spread over.
    #[arg(long, default_value_t = 100)]
    patients: usize,
    /// Bundles in flight at once.
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
}

#[derive(Debug, Clone, Args)]
struct ReadArgs {
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Observations created first and then read at random.
    #[arg(long, default_value_t = 2000)]
    seed: usize,
    /// Also read without a token and report the cost of token verification. The server must run
    /// with `--allow-anonymous-read`. Runs alternate (with, without, with, …) in --rounds pairs
    /// that share --duration; the cost is the median over pairs, which the machine's drift
    /// affects least.
    #[arg(long)]
    compare_without_token: bool,
    /// Pairs of runs for --compare-without-token.
    #[arg(long, default_value_t = 6)]
    rounds: u32,
    /// The server's process id: with it, --compare-without-token also reports the server's CPU
    /// time per request (from /proc), which the machine's drift does not skew.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also read, with the same token, from a second server on the same database that runs with
    /// `--no-read-audit` (and `--public-url` of the first, so the token fits), and report the
    /// cost of auditing reads. Runs alternate like --compare-without-token.
    #[arg(long)]
    compare_unaudited_base: Option<String>,
    /// The second server's process id, for its CPU time per request.
    #[arg(long)]
    unaudited_pid: Option<u32>,
    /// Keep this many slowloris connections open during the run (each sends one header byte
    /// every 5 s and reconnects when the server closes it), from 127.0.0.2 and up, 250 per
    /// address, so that they are not refused by the per-address cap of the readers' address.
    #[arg(long, default_value_t = 0)]
    slow_connections: usize,
}

/// One side of a paired comparison: who reads from where.
struct Side<'a> {
    label: &'a str,
    client: &'a reqwest::Client,
    base: &'a str,
    pid: Option<u32>,
}

/// Alternates read runs on `a` and `b` (`rounds` pairs sharing `duration`) and reports the cost
/// of what `a` does more than `b`: in server CPU per request (when the pids are known) and in
/// throughput, as the median over pairs, which the machine's drift affects least.
async fn paired(
    a: Side<'_>,
    b: Side<'_>,
    what: &str,
    ids: &Arc<Vec<String>>,
    args: &ReadArgs,
) -> anyhow::Result<()> {
    let rounds = args.rounds.max(1);
    let each = Duration::from_millis((args.duration * 1000 / (2 * u64::from(rounds))).max(500));
    let mut runs: [Vec<(f64, Latencies, u64)>; 2] = [Vec::new(), Vec::new()];
    // Server CPU ticks and requests served on each side.
    let mut cpu = [(0u64, 0f64); 2];
    for _ in 0..rounds {
        for (k, side) in [&a, &b].into_iter().enumerate() {
            let t0 = side.pid.and_then(cpu_ticks);
            let r = read_loop(side.client, side.base, ids, args.connections, each).await?;
            if let (Some(t0), Some(t1)) = (t0, side.pid.and_then(cpu_ticks)) {
                cpu[k].0 += t1 - t0;
                cpu[k].1 += r.0 * each.as_secs_f64();
            }
            runs[k].push(r);
        }
    }
    if cpu.iter().all(|c| c.1 > 0.0 && c.0 > 0) {
        // Linux reports process CPU time in clock ticks of 1/100 s.
        let per = |(ticks, n): (u64, f64)| ticks as f64 * 10_000.0 / n;
        let (w, wo) = (per(cpu[0]), per(cpu[1]));
        println!(
            "server CPU per request: {w:.1} µs {}, {wo:.1} µs {} → {what} costs {:.1} % of the server's CPU per request",
            a.label,
            b.label,
            100.0 * (w - wo) / wo
        );
    }
    let rates = |runs: &[(f64, Latencies, u64)]| {
        runs.iter()
            .map(|r| format!("{:.0}", r.0))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mean =
        |runs: &[(f64, Latencies, u64)]| runs.iter().map(|r| r.0).sum::<f64>() / runs.len() as f64;
    let mut costs: Vec<f64> = runs[0]
        .iter()
        .zip(&runs[1])
        .map(|(w, wo)| 100.0 * (wo.0 - w.0) / wo.0)
        .collect();
    costs.sort_by(f64::total_cmp);
    let median = (costs[(costs.len() - 1) / 2] + costs[costs.len() / 2]) / 2.0;
    let errors: u64 = runs.iter().flatten().map(|r| r.2).sum();
    for (k, side) in [&a, &b].into_iter().enumerate() {
        println!(
            "read {}: mean {:.0} requests/s (runs: {})",
            side.label,
            mean(&runs[k]),
            rates(&runs[k])
        );
    }
    println!(
        "cost of {what}: median over {} pairs {median:.1} % of throughput (pairs: {}); {errors} errors",
        costs.len(),
        costs.iter().map(|c| format!("{c:.1}")).collect::<Vec<_>>().join(", ")
    );
    for (k, side) in [&a, &b].into_iter().enumerate() {
        if let Some(r) = runs[k].last_mut() {
            r.1.report(&format!("read {} (last run)", side.label));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Args)]
struct MixedArgs {
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Fraction of requests that create an Observation.
    #[arg(long, default_value_t = 0.2)]
    write_ratio: f64,
    /// Observations created first.
    #[arg(long, default_value_t = 1000)]
    seed: usize,
}

/// Latency samples in microseconds.
#[derive(Default)]
struct Latencies(Vec<u64>);

impl Latencies {
    fn percentile(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        let i = ((self.0.len() as f64 - 1.0) * p).round() as usize;
        self.0[i] as f64 / 1000.0
    }

    fn report(&mut self, label: &str) {
        self.0.sort_unstable();
        println!(
            "{label} latency ms: p50 {:.2}  p90 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}  (n = {})",
            self.percentile(0.5),
            self.percentile(0.9),
            self.percentile(0.95),
            self.percentile(0.99),
            self.percentile(1.0),
            self.0.len()
        );
    }
}

fn observation(patient: usize, i: usize, run: &str) -> Value {
    let minute = i % 1440;
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "identifier": [{"system": "https://fhirgate.org/identifier/load", "value": format!("{run}-{patient}-{i}")}],
        "subject": {"reference": format!("Patient/load-{run}-{patient}")},
        "effectiveDateTime": format!("2024-03-{:02}T{:02}:{:02}:00+01:00", 1 + (i / 1440) % 28, minute / 60, minute % 60),
        "valueQuantity": {"value": 50 + (i * 7919) % 80, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}
    })
}

fn bundle(run: &str, b: usize, size: usize, patients: usize) -> String {
    let entries: Vec<Value> = (0..size)
        .map(|k| {
            let i = b * size + k;
            json!({"resource": observation(i % patients, i, run), "request": {"method": "POST", "url": "Observation"}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}).to_string()
}

fn run_id() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    )
}

async fn ingest(cli: &Cli, a: &IngestArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .default_headers(auth_headers(cli))
        .pool_max_idle_per_host(a.concurrency)
        .build()?;
    let run = run_id();
    println!(
        "ingest: {} bundles × {} Observations over {} patients, {} in flight, against {}",
        a.bundles, a.bundle_size, a.patients, a.concurrency, cli.base
    );
    // Bodies are built before the clock starts: we measure the server, not JSON generation.
    let bodies: Vec<String> = (0..a.bundles)
        .map(|b| bundle(&run, b, a.bundle_size, a.patients))
        .collect();
    let avg_bytes =
        bodies.iter().map(String::len).sum::<usize>() / bodies.len().max(1) / a.bundle_size.max(1);
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.concurrency {
        let client = client.clone();
        let queue = queue.clone();
        let url = cli.base.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let next = queue.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.pop();
                let Some(body) = next else { break };
                let t = Instant::now();
                let resp = client
                    .post(&url)
                    .header("content-type", "application/fhir+json")
                    .header("prefer", "return=minimal")
                    .body(body)
                    .send()
                    .await?;
                let status = resp.status();
                let text = resp.text().await?;
                if status != 200 {
                    bail!(
                        "bundle failed with {status}: {}",
                        &text[..text.len().min(400)]
                    );
                }
                lat.push(t.elapsed().as_micros() as u64);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut lat = Latencies::default();
    for t in tasks {
        lat.0.extend(t.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    let total = (a.bundles * a.bundle_size) as f64;
    let rate = total / secs;
    println!("ingest: {total} Observations in {secs:.2} s = {rate:.0} resources/s (≈{avg_bytes} bytes of JSON each)");
    lat.report("bundle");
    if let Some(url) = &cli.database_url {
        let ceiling = copy_ceiling(url, a.bundles * a.bundle_size, avg_bytes).await?;
        println!("ceiling: PostgreSQL COPY of {} rows of {} bytes = {ceiling:.0} rows/s; fhirgate ingest = {:.1} % of the ceiling", a.bundles * a.bundle_size, avg_bytes, 100.0 * rate / ceiling);
    }
    Ok(())
}

/// COPY of `rows` rows shaped like ours (type, id, version, compartment, time, key, body of
/// `body_bytes` random bytes) into an unlogged-free temporary table.
async fn copy_ceiling(url: &str, rows: usize, body_bytes: usize) -> anyhow::Result<f64> {
    let mut conn = PgConnection::connect(url)
        .await
        .context("connecting for the ceiling")?;
    // language=PostgreSQL
    sqlx::query(
        "create temporary table load_ceiling (resource_type text, id text, version_id int, compartment text, last_updated timestamptz, key_id bigint, body bytea, primary key (resource_type, id, version_id))",
    )
    .execute(&mut conn)
    .await?;
    let mut data = Vec::with_capacity(rows * (body_bytes * 2 + 120));
    let body_hex: String = (0..body_bytes)
        .map(|i| format!("{:02x}", (i * 31 + 7) % 251))
        .collect();
    for i in 0..rows {
        use std::io::Write;
        writeln!(
            data,
            "Observation\t{:032x}\t1\tload-{}\t2024-03-01 10:00:00+00\t1\t\\\\x{body_hex}",
            i,
            i % 100
        )?;
    }
    let started = Instant::now();
    let mut copy = conn.copy_in_raw("copy load_ceiling from stdin").await?;
    for chunk in data.chunks(1 << 20) {
        copy.send(chunk).await?;
    }
    copy.finish().await?;
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

async fn seed(client: &reqwest::Client, base: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let run = run_id();
    let mut ids = Vec::with_capacity(n);
    let per = 500;
    for b in 0..n.div_ceil(per) {
        let size = per.min(n - b * per);
        let resp = client
            .post(base)
            .header("content-type", "application/fhir+json")
            .body(bundle(&run, b, size, 50))
            .send()
            .await?;
        let out: Value = resp.json().await?;
        for e in out["entry"].as_array().context("seed bundle failed")? {
            let loc = e["response"]["location"].as_str().context("location")?;
            ids.push(loc.split("/_history").next().unwrap_or(loc).to_owned());
        }
    }
    Ok(ids)
}

async fn timed_loop(
    connections: usize,
    duration: Duration,
    work: impl Fn(u64) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>
        + Send
        + Sync
        + 'static,
) -> anyhow::Result<(f64, Latencies, u64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(AtomicU64::new(0));
    let work = Arc::new(work);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..connections {
        let stop = stop.clone();
        let errors = errors.clone();
        let work = work.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut k = c as u64 * 1_000_003;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                if work(k).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                lat.push(t.elapsed().as_micros() as u64);
                k += 1;
            }
            lat
        }));
    }
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Latencies::default();
    for t in tasks {
        all.0.extend(t.await?);
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((
        all.0.len() as f64 / secs,
        all,
        errors.load(Ordering::Relaxed),
    ))
}

fn pick(ids: &[String], k: u64) -> &str {
    // A multiplicative hash spreads consecutive k over the ids.
    &ids[(k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as usize % ids.len()]
}

/// Open slowloris connections: how many are open now, and how many the server closed.
struct Slow {
    open: Arc<std::sync::atomic::AtomicUsize>,
    closed: Arc<std::sync::atomic::AtomicUsize>,
}

/// Starts `n` slowloris clients against the server of `base` (see `--slow-connections`) and
/// waits until they are connected.
async fn slowloris(base: &str, n: usize) -> anyhow::Result<Slow> {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncWriteExt;
    let url = reqwest::Url::parse(base)?;
    let host = url.host_str().context("host")?.to_owned();
    let port = url.port_or_known_default().context("port")?;
    let server: std::net::SocketAddr = format!("{host}:{port}").parse()?;
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let closed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for i in 0..n {
        let local: std::net::IpAddr = format!("127.0.0.{}", 2 + i / 250).parse()?;
        let (open, closed) = (open.clone(), closed.clone());
        tokio::spawn(async move {
            loop {
                let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                    return;
                };
                if socket.bind(std::net::SocketAddr::new(local, 0)).is_err() {
                    return;
                }
                let Ok(mut stream) = socket.connect(server).await else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                open.fetch_add(1, Ordering::Relaxed);
                let mut ok = stream
                    .write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .is_ok();
                while ok {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    ok = stream.write_all(b"X").await.is_ok();
                }
                open.fetch_sub(1, Ordering::Relaxed);
                closed.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "slowloris: {} of {n} slow connections open",
        open.load(Ordering::Relaxed)
    );
    Ok(Slow { open, closed })
}

async fn read(cli: &Cli, a: &ReadArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .default_headers(auth_headers(cli))
        .pool_max_idle_per_host(a.connections)
        .build()?;
    let ids = Arc::new(seed(&client, &cli.base, a.seed).await?);
    println!(
        "read: {} Observations seeded; {} connections for {} s against {}",
        ids.len(),
        a.connections,
        a.duration,
        cli.base
    );
    let slow = if a.slow_connections > 0 {
        Some(slowloris(&cli.base, a.slow_connections).await?)
    } else {
        None
    };
    if a.compare_without_token {
        let anonymous = reqwest::Client::builder()
            .pool_max_idle_per_host(a.connections)
            .build()?;
        let with = Side {
            label: "with token verification",
            client: &client,
            base: &cli.base,
            pid: a.server_pid,
        };
        let without = Side {
            label: "without a token",
            client: &anonymous,
            base: &cli.base,
            pid: a.server_pid,
        };
        return paired(with, without, "token verification", &ids, a).await;
    }
    if let Some(unaudited) = &a.compare_unaudited_base {
        let audited = Side {
            label: "with read auditing",
            client: &client,
            base: &cli.base,
            pid: a.server_pid,
        };
        let plain = Side {
            label: "without read auditing",
            client: &client,
            base: unaudited,
            pid: a.unaudited_pid,
        };
        return paired(audited, plain, "read auditing", &ids, a).await;
    }
    let (rps, mut lat, errors) = read_loop(
        &client,
        &cli.base,
        &ids,
        a.connections,
        Duration::from_secs(a.duration),
    )
    .await?;
    println!("read: {rps:.0} requests/s, {errors} errors");
    lat.report("read");
    if let Some(slow) = &slow {
        use std::sync::atomic::Ordering;
        println!(
            "slowloris: {} slow connections open at the end; the server closed {} of them during the run (header timeout)",
            slow.open.load(Ordering::Relaxed),
            slow.closed.load(Ordering::Relaxed)
        );
    }
    if let Some(url) = &cli.database_url {
        let ceiling =
            select_ceiling(url, a.connections, Duration::from_secs(a.duration.min(10))).await?;
        println!("ceiling: PostgreSQL primary-key selects over {} connections = {ceiling:.0} queries/s; fhirgate reads = {:.1} % of the ceiling", a.connections, 100.0 * rps / ceiling);
    }
    Ok(())
}

/// User + system CPU time of process `pid` so far, in clock ticks (fields 14 and 15 of
/// /proc/PID/stat, counted after the command name).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Reads random seeded Observations by id over `connections` for `duration`.
async fn read_loop(
    client: &reqwest::Client,
    base: &str,
    ids: &Arc<Vec<String>>,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<(f64, Latencies, u64)> {
    let (client, base, ids) = (client.clone(), base.to_owned(), ids.clone());
    timed_loop(connections, duration, move |k| {
        let url = format!("{base}/{}", pick(&ids, k));
        let client = client.clone();
        Box::pin(async move {
            let resp = client.get(url).send().await?;
            if resp.status() != 200 {
                bail!("status {}", resp.status());
            }
            resp.bytes().await?;
            Ok(())
        })
    })
    .await
}

/// pgbench-style primary-key selects of resource bodies, from the server's own tables.
async fn select_ceiling(url: &str, connections: usize, duration: Duration) -> anyhow::Result<f64> {
    let pool = PgPoolOptions::new()
        .max_connections(connections as u32)
        .connect(url)
        .await?;
    // language=PostgreSQL
    let keys: Vec<(String, i32)> = sqlx::query_as(
        "select id, version_id from resource where resource_type = 'Observation' limit 5000",
    )
    .fetch_all(&pool)
    .await?;
    if keys.is_empty() {
        bail!("no Observations in that database to select");
    }
    let keys = Arc::new(keys);
    let (qps, _, errors) = timed_loop(connections, duration, move |k| {
        let pool = pool.clone();
        let keys = keys.clone();
        Box::pin(async move {
            let (id, v) = &keys[(k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) as usize % keys.len()];
            // language=PostgreSQL
            sqlx::query("select body from resource_version where resource_type = 'Observation' and id = $1 and version_id = $2")
                .bind(id)
                .bind(v)
                .fetch_one(&pool)
                .await?;
            Ok(())
        })
    })
    .await?;
    if errors > 0 {
        bail!("{errors} ceiling queries failed");
    }
    Ok(qps)
}

async fn mixed(cli: &Cli, a: &MixedArgs) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .default_headers(auth_headers(cli))
        .pool_max_idle_per_host(a.connections)
        .build()?;
    let ids = Arc::new(seed(&client, &cli.base, a.seed).await?);
    println!(
        "mixed: {} connections for {} s, {:.0} % writes, against {}",
        a.connections,
        a.duration,
        a.write_ratio * 100.0,
        cli.base
    );
    let base = cli.base.clone();
    let run = run_id();
    let every = if a.write_ratio <= 0.0 {
        u64::MAX
    } else {
        (1.0 / a.write_ratio).round().max(1.0) as u64
    };
    let (rps, mut lat, errors) =
        timed_loop(a.connections, Duration::from_secs(a.duration), move |k| {
            let client = client.clone();
            let write = k % every == 0;
            let (url, body) = if write {
                (
                    format!("{base}/Observation"),
                    Some(observation((k % 50) as usize, k as usize, &run).to_string()),
                )
            } else {
                (format!("{base}/{}", pick(&ids, k)), None)
            };
            Box::pin(async move {
                let resp = match body {
                    Some(b) => {
                        client
                            .post(url)
                            .header("content-type", "application/fhir+json")
                            .header("prefer", "return=minimal")
                            .body(b)
                            .send()
                            .await?
                    }
                    None => client.get(url).send().await?,
                };
                if !resp.status().is_success() {
                    bail!("status {}", resp.status());
                }
                resp.bytes().await?;
                Ok(())
            })
        })
        .await?;
    println!("mixed: {rps:.0} requests/s, {errors} errors");
    lat.report("mixed");
    Ok(())
}

fn auth_headers(cli: &Cli) -> reqwest::header::HeaderMap {
    let mut h = reqwest::header::HeaderMap::new();
    if let Some(t) = &cli.token {
        if let Ok(v) = format!("Bearer {t}").parse() {
            h.insert(reqwest::header::AUTHORIZATION, v);
        }
    }
    h
}

/// Registers a backend with a fresh ES384 key and asks the server for a token, as a partner's
/// backend would (the key never leaves this process).
async fn register_and_get_token(cli: &Cli) -> anyhow::Result<String> {
    use base64::Engine;
    use p384::elliptic_curve::sec1::ToEncodedPoint;
    use p384::pkcs8::EncodePrivateKey;
    let url = cli
        .database_url
        .as_deref()
        .context("--register-client needs --database-url")?;
    let pool = sqlx::PgPool::connect(url).await?;
    let secret = p384::SecretKey::random(&mut rand::rngs::OsRng);
    let point = secret.public_key().to_encoded_point(false);
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-384", "kid": "load", "alg": "ES384",
        "x": b64(point.x().context("x")?), "y": b64(point.y().context("y")?)}]});
    let client_id = format!("load-{}", run_id());
    let client = fhirgate::auth::clients::Client {
        client_id: client_id.clone(),
        kind: "backend".into(),
        scopes: "system/*.cruds".into(),
        redirect_uris: vec![],
        confidential: false,
        secret_hash: None,
        jwks: Some(jwks),
        organization: cli.organization.clone(),
    };
    fhirgate::auth::clients::add(&pool, &client).await?;
    let token_url = format!(
        "{}/auth/token",
        cli.base.trim_end_matches('/').trim_end_matches("/fhir")
    );
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"iss": client_id, "sub": client_id, "aud": token_url, "exp": now + 240, "jti": uuid::Uuid::new_v4().to_string()});
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
    header.kid = Some("load".into());
    let assertion = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_der(secret.to_pkcs8_der()?.as_bytes()),
    )?;
    let resp: Value = reqwest::Client::new()
        .post(&token_url)
        .form(&[
            ("grant_type", "client_credentials"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion.as_str()),
            ("scope", "system/*.cruds"),
        ])
        .send()
        .await?
        .json()
        .await?;
    resp["access_token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no token: {resp}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    if cli.register_client {
        cli.token = Some(register_and_get_token(&cli).await?);
        println!(
            "registered a backend client and obtained a system/*.cruds token (ES384 assertion, 5-minute token)"
        );
    }
    match &cli.workload {
        Workload::Ingest(a) => ingest(&cli, a).await,
        Workload::Read(a) => read(&cli, a).await,
        Workload::Mixed(a) => mixed(&cli, a).await,
        Workload::Apple(a) => apple(&cli, a).await,
        Workload::Store(a) => store(&cli, a).await,
        Workload::Search(a) => search(&cli, a).await,
        Workload::Consent(a) => consent_bench(&cli, a).await,
    }
}

async fn apple(cli: &Cli, a: &AppleArgs) -> anyhow::Result<()> {
    let file = tempfile::NamedTempFile::new()?;
    let started = Instant::now();
    {
        let mut w = std::io::BufWriter::new(std::fs::File::create(file.path())?);
        fhirgate_mappers::generate_apple_export(a.size_mb * 1_000_000, &mut w)?;
        std::io::Write::flush(&mut w)?;
    }
    let bytes = std::fs::metadata(file.path())?.len();
    println!(
        "apple: generated a {:.0} MB export in {:.1} s",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let path = file.path().to_owned();
    let (summary, map_secs) = tokio::task::spawn_blocking(move || {
        let ctx = fhirgate_mappers::MapContext::new("load-apple");
        let t = Instant::now();
        let reader = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(path)?);
        let s = fhirgate_mappers::map_apple_health_stream(reader, &ctx, |_| {})?;
        anyhow::Ok((s, t.elapsed().as_secs_f64()))
    })
    .await??;
    println!(
        "apple: mapped {} records into {} resources in {map_secs:.2} s = {:.0} records/s (one core, streaming)",
        summary.elements,
        summary.resources,
        summary.elements as f64 / map_secs
    );
    let mut import_secs = None;
    if a.import {
        let client = reqwest::Client::builder()
            .default_headers(auth_headers(cli))
            .build()?;
        let url = format!(
            "{}/ingest/apple-health?patient=load-apple-{}",
            cli.base.trim_end_matches("/fhir"),
            run_id()
        );
        let t = Instant::now();
        let body = reqwest::Body::wrap_stream(tokio_util_stream(file.path()).await?);
        let resp = client.post(&url).body(body).send().await?;
        if resp.status() != 202 {
            bail!("import refused: {} {}", resp.status(), resp.text().await?);
        }
        let status_url = resp
            .headers()
            .get("content-location")
            .and_then(|v| v.to_str().ok())
            .context("no status URL")?
            .to_owned();
        // A 1 GB import outlives the 5-minute token, so a registered backend asks for a new
        // one when the status URL answers 401, as a real backend would.
        let mut fresh: Option<String> = None;
        let done: Value = loop {
            let mut req = client.get(&status_url);
            if let Some(t) = &fresh {
                req = req.bearer_auth(t);
            }
            let r = req.send().await?;
            match r.status().as_u16() {
                200 => break r.json().await?,
                202 => {}
                401 if cli.register_client => fresh = Some(register_and_get_token(cli).await?),
                code => bail!("import status {code}: {}", r.text().await?),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let secs = t.elapsed().as_secs_f64();
        let created = done["summary"]["created"].as_u64().unwrap_or(0);
        println!("apple: end-to-end import {} in {secs:.1} s: {created} resources created = {:.0} resources/s", done["status"], created as f64 / secs);
        import_secs = Some(secs);
        if let Some(kb) = a.server_pid.and_then(peak_rss_kb) {
            println!(
                "apple: server peak RSS (VmHWM) {:.0} MB",
                kb as f64 / 1024.0
            );
        }
    }
    if let Some(tool) = &a.healthkit_to_sqlite {
        let db = tempfile::NamedTempFile::new()?;
        std::fs::remove_file(db.path())?;
        let t = Instant::now();
        let status = tokio::process::Command::new(tool)
            .arg("--xml")
            .arg("--silent")
            .arg(file.path())
            .arg(db.path())
            .status()
            .await
            .with_context(|| format!("running {}", tool.display()))?;
        if !status.success() {
            bail!("{} failed: {status}", tool.display());
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "apple: healthkit-to-sqlite took {secs:.1} s = {:.0} records/s; fhirgate mapping is {:.1}x faster",
            summary.elements as f64 / secs,
            secs / map_secs
        );
        if let Some(import) = import_secs {
            let ratio = secs / import;
            let verdict = if ratio >= 1.0 {
                format!("{ratio:.1}x faster than")
            } else {
                format!("{:.1}x as long as", 1.0 / ratio)
            };
            println!(
                "apple: fhirgate's end-to-end import (map, validate, compare, encrypt, store in PostgreSQL with audit) takes {verdict} healthkit-to-sqlite's load into SQLite"
            );
        }
    }
    Ok(())
}

/// Peak resident set size of a process in kB (`VmHWM` in /proc/PID/status).
fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The file as a stream of 1 MB chunks, so the generator never holds the export in memory.
async fn tokio_util_stream(
    path: &std::path::Path,
) -> anyhow::Result<impl futures::Stream<Item = std::io::Result<Vec<u8>>>> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await?;
    Ok(futures::stream::unfold(file, |mut f| async move {
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    }))
}
