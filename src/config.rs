//! Command line and environment configuration (`fhirgate --help`).
//!
//! Every setting is a flag with an environment variable of the same meaning. Secrets (the master
//! keys, the database URL, which may hold a password) are never printed: their `Debug` is redacted
//! and clap hides their environment values in `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// fhirgate: a FHIR R4 server for personal health data, with consent and audit built in.
#[derive(Debug, Parser)]
#[command(name = "fhirgate", version, about)]
pub struct Cli {
    /// Database and key settings shared by every subcommand.
    #[command(flatten)]
    pub db: DbArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Settings every subcommand takes.
#[derive(Clone, Args)]
pub struct DbArgs {
    /// PostgreSQL URL. When unset, fhirgate runs a private PostgreSQL in --data-dir.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// Directory for the private PostgreSQL and the development master key.
    #[arg(
        long,
        env = "FHIRGATE_DATA_DIR",
        default_value = "./fhirgate-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Master key (base64 or hex of 32 bytes). Prefer FHIRGATE_MASTER_KEY_FILE.
    #[arg(
        long = "master-key",
        env = "FHIRGATE_MASTER_KEY",
        hide_env_values = true,
        hide = true,
        global = true
    )]
    pub master_key: Option<String>,
    /// File holding the master key.
    #[arg(long, env = "FHIRGATE_MASTER_KEY_FILE", global = true)]
    pub master_key_file: Option<PathBuf>,
    /// The key that signs audit checkpoints (made on first use); keep it away from the
    /// database. Default: `<data-dir>/audit-checkpoint.key`.
    #[arg(long, env = "FHIRGATE_CHECKPOINT_KEY_FILE", global = true)]
    pub checkpoint_key_file: Option<PathBuf>,
    /// Where signed audit checkpoints are appended. Default:
    /// `<data-dir>/audit-checkpoints.jsonl`.
    #[arg(long, env = "FHIRGATE_CHECKPOINT_FILE", global = true)]
    pub checkpoint_file: Option<PathBuf>,
    /// Files of previous master keys still accepted while a rotation is under way (comma-separated).
    #[arg(
        long,
        env = "FHIRGATE_PREVIOUS_MASTER_KEY_FILES",
        value_delimiter = ',',
        global = true
    )]
    pub previous_master_key_files: Vec<PathBuf>,
    /// `production` refuses to start without a real master key (`development` or
    /// `production`, in any case; anything else is refused).
    #[arg(
        long = "env",
        env = "FHIRGATE_ENV",
        value_name = "FHIRGATE_ENV",
        value_enum,
        ignore_case = true,
        default_value = "development",
        global = true
    )]
    pub environment: Environment,
    /// Maximum database connections in the pool.
    #[arg(
        long,
        env = "FHIRGATE_DB_POOL_SIZE",
        default_value_t = 16,
        global = true
    )]
    pub db_pool_size: u32,
}

impl std::fmt::Debug for DbArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbArgs")
            .field(
                "database_url",
                &self.database_url.as_ref().map(|_| "[redacted]"),
            )
            .field("data_dir", &self.data_dir)
            .field(
                "master_key",
                &self.master_key.as_ref().map(|_| "[redacted]"),
            )
            .field("master_key_file", &self.master_key_file)
            .field("environment", &self.environment)
            .finish_non_exhaustive()
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the FHIR server.
    Serve(ServeArgs),
    /// Apply database migrations to DATABASE_URL (or the private database) and exit.
    Migrate,
    /// Print an access token of the built-in development client, for trying the API at once.
    /// Refused with FHIRGATE_ENV=production or when a real master key is configured; every
    /// token it prints is audited like any issuance.
    Token {
        /// SMART scopes (`system/*.rs`, `patient/*.rs`, `system/*.cruds`, …).
        #[arg(long, default_value = "system/*.rs")]
        scopes: String,
        /// A patient context: the token reaches this patient's compartment only.
        #[arg(long)]
        patient: Option<String>,
        /// A partner context (`Organization/ID`): the token sees what patients consented to.
        #[arg(long)]
        organization: Option<String>,
        /// Lifetime: seconds, or with a unit (`90s`, `30m`, `1h`; at most 24h).
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// The server's public base URL, which the token is issued for.
        #[arg(
            long,
            env = "FHIRGATE_PUBLIC_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        public_url: String,
    },
    /// Load the demo dataset (three Synthea patients, Apple Health and Withings data for one of
    /// them, a partner with a Consent, a sign-in account) and print what to try next. Idempotent.
    /// Refused with FHIRGATE_ENV=production or when a real master key is configured.
    Demo {
        /// The server's public base URL, which the printed tokens and commands use.
        #[arg(
            long,
            env = "FHIRGATE_PUBLIC_URL",
            default_value = "http://127.0.0.1:8080"
        )]
        public_url: String,
    },
    /// Check this machine and configuration (PostgreSQL, migrations, keys, URLs, clock, disk,
    /// ports) and explain how to fix what is wrong. Exits 1 when a check fails.
    Doctor {
        /// The address `serve` would listen on.
        #[arg(long, env = "FHIRGATE_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        /// The public base URL `serve` would use.
        #[arg(long, env = "FHIRGATE_PUBLIC_URL")]
        public_url: Option<String>,
    },
    /// Rebuild every search index row and consent grant from the stored resources (after the
    /// SearchParameter definitions change; the server also does it by itself at start-up).
    Reindex {
        /// Resources per transaction.
        #[arg(long, default_value_t = 1000)]
        batch: i64,
    },
    /// Import provider payloads for a patient (the same path as POST /ingest/{source}).
    Import {
        /// apple-health, healthkit, fitbit, google-fit, oura or withings.
        #[arg(long)]
        source: String,
        /// The Patient id the data belongs to.
        #[arg(long)]
        patient: String,
        /// Files to import.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Register, list and remove OAuth clients (apps and partner backends).
    Client {
        /// Client operation.
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Manage user accounts.
    User {
        /// User operation.
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Check the audit trail.
    Audit {
        /// Audit operation.
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Manage the master key.
    Keys {
        /// Key operation.
        #[command(subcommand)]
        command: KeysCommand,
    },
}

/// `fhirgate serve` settings.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free port.
    #[arg(long, env = "FHIRGATE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Public base URL (scheme://host[:port]) used in Location headers and fullUrls; defaults to the bound address.
    #[arg(long, env = "FHIRGATE_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Largest accepted request body in bytes (413 above).
    #[arg(long, env = "FHIRGATE_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds a request may take before it is answered with 503.
    #[arg(long, env = "FHIRGATE_REQUEST_TIMEOUT_SECS", default_value_t = 120)]
    pub request_timeout_secs: u64,
    /// Seconds a client has to send a request's headers (slower connections are closed).
    #[arg(long, env = "FHIRGATE_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Seconds between signed audit checkpoints (0: none but those `fhirgate audit checkpoint`
    /// takes).
    #[arg(long, env = "FHIRGATE_CHECKPOINT_INTERVAL_SECS", default_value_t = 300)]
    pub checkpoint_interval_secs: u64,
    /// Connections one client address may hold open at once; more are closed on arrival.
    #[arg(
        long,
        env = "FHIRGATE_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 256
    )]
    pub max_connections_per_address: usize,
    /// Answer FHIR reads and searches that come without a token, as a `system/*.rs` caller.
    /// Off by default; for benchmarks (the cost of token verification) and public demo data only.
    /// Refused with FHIRGATE_ENV=production.
    #[arg(long, env = "FHIRGATE_ALLOW_ANONYMOUS_READ")]
    pub allow_anonymous_read: bool,
    /// Do not audit successful reads and searches (writes, denials and failures still are).
    /// For measuring the cost of auditing only; refused with FHIRGATE_ENV=production.
    #[arg(long, env = "FHIRGATE_NO_READ_AUDIT")]
    pub no_read_audit: bool,
}

/// `fhirgate client` subcommands.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Register a client.
    ///
    /// A backend (SMART Backend Services) authenticates with an assertion signed by a key of its
    /// public JWKS: `--kind backend --id ID --jwks FILE --scopes "system/*.rs" [--organization Organization/ID]`.
    /// Without --organization it is first-party; with one it is a partner and consent filters it.
    /// An app: `--kind app --id ID --redirect-uri URI [--redirect-uri URI2] --scopes "..." [--confidential]`.
    Add {
        /// `app` or `backend`.
        #[arg(long)]
        kind: String,
        /// The client_id.
        #[arg(long)]
        id: String,
        /// Space-separated scopes the client may be granted.
        #[arg(long)]
        scopes: String,
        /// A backend's public JWKS (JSON file).
        #[arg(long)]
        jwks: Option<PathBuf>,
        /// For a backend: make a fresh ES384 key pair, write the private key (PKCS#8 PEM, mode
        /// 0600) to this file, and register its public half (kid = the client id).
        #[arg(long, conflicts_with = "jwks")]
        generate_key: Option<PathBuf>,
        /// A partner backend's Organization, as `Organization/<id>`.
        #[arg(long)]
        organization: Option<String>,
        /// An app's redirect URI (repeatable; matched exactly).
        #[arg(long = "redirect-uri")]
        redirect_uri: Vec<String>,
        /// An app that can keep a secret (one is generated and printed once).
        #[arg(long)]
        confidential: bool,
    },
    /// List registered clients.
    List,
    /// Remove a client.
    Remove {
        /// The client_id.
        #[arg(long)]
        id: String,
    },
}

/// `fhirgate user` subcommands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Give the account with this email address the auditor role (the /audit page), or take it
    /// away with --remove.
    Auditor {
        /// The account's email address.
        #[arg(long)]
        email: String,
        /// Withdraw the role instead.
        #[arg(long)]
        remove: bool,
    },
}

/// `fhirgate audit` subcommands.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Walk the hash chain of the audit trail: prints `OK <count> events` and exits 0, or the
    /// first broken link (sequence number, expected and found) and exits 1. With
    /// `--checkpoints`, also proves every signed checkpoint's events are still there, unchanged.
    Verify {
        /// A file of signed checkpoints (`audit checkpoint`, and the server's periodic ones).
        #[arg(long)]
        checkpoints: Option<PathBuf>,
    },
    /// Signs the trail's current head and appends the checkpoint to the checkpoint file.
    Checkpoint,
}

/// `fhirgate keys` subcommands.
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Write a new random master key to a file (mode 0600).
    Generate {
        /// Where to write the key.
        #[arg(long)]
        out: PathBuf,
    },
    /// Wrap every data key under a new master key while servers keep serving.
    ///
    /// Run with the current key configured. Then restart servers with the new key as
    /// FHIRGATE_MASTER_KEY_FILE and the old one in FHIRGATE_PREVIOUS_MASTER_KEY_FILES, run rotate
    /// again, and finally run it with --retire-old to delete the wrappings under the old key.
    Rotate {
        /// File holding the new master key.
        #[arg(long)]
        new_key_file: PathBuf,
        /// Delete every wrapping not under the new key (only once all data keys have one).
        #[arg(long)]
        retire_old: bool,
    },
    /// Create a new token-signing key; servers sign with it after their next start.
    RotateSigning {
        /// Also retire the older signing keys (tokens they signed stop verifying).
        #[arg(long)]
        retire_old: bool,
    },
}

/// Where the server runs: `FHIRGATE_ENV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Environment {
    /// A developer's machine: a development key is written when none is configured.
    Development,
    /// Real data: a real master key is required, and development conveniences are refused.
    Production,
}

impl Environment {
    /// Whether this is production.
    pub fn is_production(self) -> bool {
        self == Environment::Production
    }
}

impl DbArgs {
    /// The audit checkpoint signing key's file.
    pub fn checkpoint_key_path(&self) -> PathBuf {
        self.checkpoint_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit-checkpoint.key"))
    }

    /// The audit checkpoint file.
    pub fn checkpoint_path(&self) -> PathBuf {
        self.checkpoint_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("audit-checkpoints.jsonl"))
    }
}
