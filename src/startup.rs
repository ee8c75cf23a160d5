//! Start-up: database (external or private), migrations, keys, router and listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::http::{HeaderName, StatusCode};
use axum::Router;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::keys::SigningKeys;
use crate::auth::revoked::RevokedSet;
use crate::config::{DbArgs, ServeArgs};
use crate::crypto::{KeyProvider, Keyring, LocalKeyProvider, MasterKey};
use crate::pg::{self, PrivatePostgres};
use crate::state::{AppInner, AppState};

/// The database fhirgate uses, and the private cluster behind it if there is one.
pub struct Database {
    /// Connection pool.
    pub pool: PgPool,
    /// The private cluster, stopped by [`Database::close`].
    pub private: Option<PrivatePostgres>,
}

impl Database {
    /// Connects to `DATABASE_URL`, or runs the private cluster in `--data-dir`, creating the
    /// `fhirgate` database there. Applies migrations.
    pub async fn connect(args: &DbArgs) -> anyhow::Result<Self> {
        let (options, private) = match &args.database_url {
            Some(url) => (
                url.parse::<PgConnectOptions>()
                    .context("DATABASE_URL is not a valid PostgreSQL URL")?,
                None,
            ),
            None => {
                let dir = args.data_dir.clone();
                let private =
                    tokio::task::spawn_blocking(move || PrivatePostgres::ensure(&dir)).await??;
                let opts = private.connect_options("fhirgate");
                pg::create_database(&opts, "fhirgate").await?;
                (opts, Some(private))
            }
        };
        // JIT compilation costs PostgreSQL hundreds of milliseconds on queries whose estimated
        // cost is high but which stop after a page of rows (a search with LIMIT): off.
        let options = options.options([("jit", "off")]);
        // No ping before each acquire: it doubles the round trips of a read. A dead connection
        // fails its query instead, which maps to 503 and is retried by the client.
        let pool = PgPoolOptions::new()
            .max_connections(args.db_pool_size)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options)
            .await
            .context("connecting to PostgreSQL")?;
        sqlx::migrate!()
            .run(&pool)
            .await
            .context("applying migrations")?;
        Ok(Self { pool, private })
    }

    /// Closes the pool and stops the private cluster if we started it.
    pub async fn close(self) {
        self.pool.close().await;
        if let Some(p) = self.private {
            let _ = tokio::task::spawn_blocking(move || p.stop()).await;
        }
    }
}

/// Loads the master key (and previous ones) as configured; in development, creates a key file in
/// the data directory with a loud warning.
pub fn master_keys(args: &DbArgs) -> anyhow::Result<LocalKeyProvider> {
    let primary = if let Some(text) = &args.master_key {
        MasterKey::parse(&secrecy::SecretBox::from(text.clone().into_boxed_str()))?
    } else if let Some(path) = &args.master_key_file {
        MasterKey::from_file(path)?
    } else if args.environment.is_production() {
        anyhow::bail!("FHIRGATE_ENV=production needs FHIRGATE_MASTER_KEY or FHIRGATE_MASTER_KEY_FILE; refusing to use a development key");
    } else {
        std::fs::create_dir_all(&args.data_dir)?;
        let path = args.data_dir.join("master.key");
        let key = if path.exists() {
            MasterKey::from_file(&path)?
        } else {
            MasterKey::generate_file(&path)?
        };
        tracing::warn!(
            path = %path.display(),
            "!!! USING A DEVELOPMENT MASTER KEY stored beside the data. Anyone with this directory can decrypt everything. \
             Set FHIRGATE_MASTER_KEY_FILE (and FHIRGATE_ENV=production) for real data. !!!"
        );
        eprintln!(
            "WARNING: using the development master key {} — not for real patient data",
            path.display()
        );
        key
    };
    let previous = args
        .previous_master_key_files
        .iter()
        .map(|p| MasterKey::from_file(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(LocalKeyProvider::new(primary, previous))
}

/// Opens the key ring and the signing keys and builds the state; `public` is the base URL
/// (scheme://host[:port]). Used by the server and by the command-line tools that write data.
pub async fn open_state(
    pool: PgPool,
    keys: Box<dyn KeyProvider>,
    public: &str,
    max_body_bytes: usize,
    anonymous_read: bool,
    audit_reads: bool,
) -> anyhow::Result<AppState> {
    let keys = Keyring::open(&pool, keys).await?;
    let signing = SigningKeys::load(&pool, &keys).await?;
    let issuer = public.trim_end_matches('/').to_owned();
    let auditor = crate::audit::Auditor::start(pool.clone(), audit_reads);
    let search_params = crate::search::ParamIds::load(&pool).await?;
    // The per-patient search paths run statements whose plan is an index order whatever the
    // values; on these connections they are planned once (a generic plan) rather than on every
    // run, which cost as much as running them. Every other statement, searches above all, is
    // planned with its values on the main pool.
    let generic_options = (*pool.connect_options())
        .clone()
        .options([("plan_cache_mode", "force_generic_plan")]);
    let db_generic = sqlx::postgres::PgPoolOptions::new()
        .max_connections(pool.options().get_max_connections())
        .test_before_acquire(false)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .idle_timeout(std::time::Duration::from_secs(60))
        .connect_lazy_with(generic_options);
    Ok(AppState(Arc::new(AppInner {
        db: pool,
        db_generic,
        keys,
        fhir_base: format!("{issuer}/fhir"),
        max_body_bytes,
        issuer,
        signing,
        revoked: Arc::new(RevokedSet::default()),
        verified: Default::default(),
        limits: Default::default(),
        anonymous_read,
        auditor,
        search_params,
    })))
}

/// The state of a command-line tool that writes data (`fhirgate import`, `fhirgate user`): no
/// listener, no body limit, auditing on.
pub async fn command_line_state(
    pool: PgPool,
    keys: Box<dyn KeyProvider>,
) -> anyhow::Result<AppState> {
    open_state(pool, keys, "http://localhost", usize::MAX, false, true).await
}

/// A built server, bound and ready to run.
pub struct Application {
    state: AppState,
    listener: TcpListener,
    router: Router,
    addr: SocketAddr,
    limits: crate::serve::Limits,
}

impl Application {
    /// Opens the key ring with `keys`, builds the router and binds the listener.
    pub async fn build(
        args: &ServeArgs,
        keys: Box<dyn KeyProvider>,
        pool: PgPool,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        let public = args
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{addr}"));
        if args.allow_anonymous_read {
            tracing::warn!("!!! --allow-anonymous-read: FHIR reads without a token are answered (system/*.rs). Benchmarks and demo data only. !!!");
        }
        if args.no_read_audit {
            tracing::warn!(
                "!!! --no-read-audit: successful reads are not audited. Benchmarks only. !!!"
            );
        }
        let state = open_state(
            pool,
            keys,
            &public,
            args.max_body_bytes,
            args.allow_anonymous_read,
            !args.no_read_audit,
        )
        .await?;
        let revoked = state.revoked.clone();
        let db = state.db.clone();
        tokio::spawn(async move { revoked.follow(db).await });
        crate::search::reindex::spawn_if_stale(state.clone());
        let router = app(
            state.clone(),
            Duration::from_secs(args.request_timeout_secs),
        );
        Ok(Self {
            state,
            listener,
            router,
            addr,
            limits: crate::serve::Limits {
                header_timeout: Duration::from_secs(args.header_timeout_secs.max(1)),
                per_address: args.max_connections_per_address.max(1),
            },
        })
    }

    /// The application state (tests use it to mint tokens).
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        crate::serve::serve(self.listener, self.router, self.limits, shutdown).await
    }
}

/// The whole HTTP application with its middleware. Layers wrap from the inside out, so the list
/// below reads from the outermost: request id → trace → error format → timeout → panic catcher
/// → routes.
pub fn app(state: AppState, timeout: Duration) -> Router {
    let request_id = HeaderName::from_static("x-request-id");
    crate::fhir::router(&state)
        .merge(crate::auth::router())
        .merge(crate::auth::admin::router(&state))
        .merge(crate::ui::router())
        .merge(crate::ingest::router(&state))
        .merge(crate::health::router())
        .fallback(crate::fhir::fallback)
        .with_state(state)
        .layer(CatchPanicLayer::custom(crate::fhir::panic_response))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(axum::middleware::from_fn(crate::fhir::outcomes))
        .layer(TraceLayer::new_for_http().make_span_with(crate::health::request_span))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}
