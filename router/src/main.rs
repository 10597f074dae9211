//! `router`: carbonflow's data plane. Parses the command line and runs the decisions
//! follower, the telemetry flusher, the expiry watcher, the admin endpoints and the proxy
//! until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context;
use carbonflow_router::admin::{self, AdminState};
use carbonflow_router::listener::{self, ListenerLimits};
use carbonflow_router::proxy::{Proxy, ProxySettings};
use carbonflow_router::select::Mode;
use carbonflow_router::served::Served;
use carbonflow_router::table::DecisionTable;
use carbonflow_router::telemetry::{self, Telemetry};
use carbonflow_router::{follow, now_ms};
use carbonflow_schemas::bus::{KafkaArgs, LagMetrics, RecordProducer};
use carbonflow_schemas::upstream::AllowList;
use carbonflow_schemas::vocabulary::ScheduleId;
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "router",
    version,
    about = "carbonflow's data plane: routes each request to a flavour by the latest decision"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Address the proxy listens on.
    #[arg(
        long,
        env = "CARBONFLOW_ROUTER_LISTEN",
        default_value = "127.0.0.1:8080"
    )]
    listen: SocketAddr,
    /// Address of /healthz, /readyz, /decisions and /metrics.
    #[arg(
        long,
        env = "CARBONFLOW_ROUTER_ADMIN_LISTEN",
        default_value = "127.0.0.1:9401"
    )]
    admin_listen: SocketAddr,
    /// Schedules (namespace/name) this router serves: repeat the flag or separate with
    /// commas. Requests for any other schedule get 404, and the router reads only the
    /// decisions partitions of these. With one schedule, requests without an
    /// x-carbonflow-schedule header are for it.
    #[arg(
        long = "schedule",
        env = "CARBONFLOW_SCHEDULE",
        value_delimiter = ',',
        required_unless_present = "all_schedules"
    )]
    schedules: Vec<ScheduleId>,
    /// Serve every schedule on the decisions topic instead of a list (the
    /// x-carbonflow-schedule header of each request picks one).
    #[arg(long, env = "CARBONFLOW_ALL_SCHEDULES", conflicts_with = "schedules")]
    all_schedules: bool,
    /// Where upstreams may be: host names, suffixes (*.svc.cluster.local) and networks
    /// (10.0.0.0/8), repeatable or comma-separated. Empty allows any host; link-local and
    /// cloud metadata addresses are always refused (502 upstream_not_allowed).
    #[arg(long, env = "CARBONFLOW_ALLOW_UPSTREAM", value_delimiter = ',')]
    allow_upstream: Vec<String>,
    /// Connections the proxy serves at once; further ones are closed on accept (and
    /// counted) instead of waiting.
    #[arg(long, env = "CARBONFLOW_MAX_CONNECTIONS", default_value_t = 4096)]
    max_connections: usize,
    /// Time a client has to send a request's headers, milliseconds, from the
    /// connection's opening or the end of its previous response: it also closes idle
    /// keep-alive connections.
    #[arg(
        long,
        env = "CARBONFLOW_HEADER_READ_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    header_read_timeout_ms: u64,
    /// On SIGTERM, how long the router stays up unready before it stops accepting
    /// connections, milliseconds: time for load balancers to notice.
    #[arg(long, env = "CARBONFLOW_DRAIN_DELAY_MS", default_value_t = 0)]
    drain_delay_ms: u64,
    /// Time a client has to send a request's body that is buffered (a fallback rule
    /// could resend it), milliseconds (408 beyond). A streamed body is bounded by
    /// --request-timeout-ms instead.
    #[arg(
        long,
        env = "CARBONFLOW_BODY_READ_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    body_read_timeout_ms: u64,
    /// Let clients force a flavour with the x-carbonrouter request header. Off by default:
    /// with it, anyone who can reach the router picks the flavour that serves them.
    #[arg(long, env = "CARBONFLOW_ALLOW_FORCED_FLAVOUR")]
    allow_forced_flavour: bool,
    /// How requests are spread: random (independent weighted draws) or smooth (smooth
    /// weighted round-robin, delivered shares within one request of the weights).
    #[arg(
        long,
        env = "CARBONFLOW_ROUTER_MODE",
        value_enum,
        default_value = "random"
    )]
    mode: Mode,
    /// Router id written into telemetry (default: router-<pid>).
    #[arg(long, env = "CARBONFLOW_ROUTER_ID")]
    router_id: Option<String>,
    /// Threads serving requests, each with its own upstream connections (default: one
    /// per CPU core).
    #[arg(long, env = "CARBONFLOW_WORKER_THREADS")]
    worker_threads: Option<usize>,
    /// PEM file of CA certificates trusted for `https://` upstreams besides the system's
    /// roots (upstreams signed by a private CA).
    #[arg(long, env = "CARBONFLOW_UPSTREAM_CA_FILE")]
    upstream_ca_file: Option<std::path::PathBuf>,
    /// Upstream connect timeout, milliseconds.
    #[arg(long, env = "CARBONFLOW_CONNECT_TIMEOUT_MS", default_value_t = 1000)]
    connect_timeout_ms: u64,
    /// Time allowed for an upstream's response headers, milliseconds.
    #[arg(long, env = "CARBONFLOW_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    request_timeout_ms: u64,
    /// Largest request body accepted, bytes; larger requests get 413. A body is
    /// buffered when a fallback rule could resend the request, and streamed to the
    /// upstream as it arrives otherwise.
    #[arg(long, env = "CARBONFLOW_MAX_BODY_BYTES", default_value_t = 1 << 20)]
    max_body_bytes: usize,
    /// Milliseconds past a decision's validUntil before the expiry behaviour applies
    /// (the processor re-issues slot-bound decisions right at the boundary).
    #[arg(long, env = "CARBONFLOW_EXPIRY_GRACE_MS", default_value_t = 2000)]
    expiry_grace_ms: i64,
    /// Also retry non-idempotent requests (POST, PATCH) on a fallback flavour.
    #[arg(long, env = "CARBONFLOW_RETRY_NON_IDEMPOTENT")]
    retry_non_idempotent: bool,
    /// Seed of the flavour-selection RNG (default: derived from the router id).
    #[arg(long, env = "CARBONFLOW_ROUTER_SEED")]
    seed: Option<u64>,
}

/// Sets the flag it holds to false when dropped.
struct StillFollowing(Arc<AtomicBool>);

impl Drop for StillFollowing {
    fn drop(&mut self) {
        self.0.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// mimalloc: the proxy allocates per request (headers, bodies, futures), and glibc's
/// allocator cost about a tenth of its CPU under load (benchmarks/RESULTS.md §3b).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    carbonflow_schemas::service::init_logging();
    // The proxy's workers have threads of their own (listener::Workers); this runtime
    // runs the decisions follower, telemetry, expiry and the admin endpoints.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the tokio runtime")?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let router_id = cli
        .router_id
        .clone()
        .unwrap_or_else(|| format!("router-{}", std::process::id()));
    let seed = cli.seed.unwrap_or_else(|| {
        router_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        })
    });
    let handle = carbonflow_schemas::service::install_metrics().context("installing metrics")?;
    carbonflow_router::metrics::describe();
    let shutdown = CancellationToken::new();
    let upstreams = AllowList::new(&cli.allow_upstream).context("--allow-upstream")?;
    let table = Arc::new(DecisionTable::new(upstreams.clone()));
    let ready = Arc::new(AtomicBool::new(false));
    let lag = LagMetrics::new();
    let telemetry_log = Arc::new(Telemetry::new(router_id.clone()));
    let producer = RecordProducer::new(&cli.kafka, &format!("{router_id}-telemetry"))?;

    let served = if cli.all_schedules {
        Served::All
    } else {
        Served::Only(cli.schedules.iter().map(|s| s.to_string()).collect())
    };
    let following = Arc::new(AtomicBool::new(true));
    let follower = {
        let follow = follow::follow(
            cli.kafka.clone(),
            served.clone(),
            format!("carbonflow-router-{router_id}"),
            table.clone(),
            ready.clone(),
            lag.clone(),
            shutdown.clone(),
        );
        // Cleared however the task ends, a panic included.
        let alive = StillFollowing(following.clone());
        tokio::spawn(async move {
            let _alive = alive;
            follow.await
        })
    };
    // Telemetry is flushed last, after the proxy has drained its in-flight requests, so
    // that every request answered during a stop is reported.
    let telemetry_stop = CancellationToken::new();
    let flusher = tokio::spawn(telemetry::flush_loop(
        telemetry_log.clone(),
        producer,
        cli.kafka.layout(),
        telemetry_stop.clone(),
    ));
    // On a stop signal, turn unready at once, keep accepting for the drain delay (load
    // balancers stop sending meanwhile), then stop accepting and finish what is in flight.
    // The follower, the expiry watcher and the admin endpoints run on until the proxy has
    // drained (`shutdown`), so decisions keep applying and metrics keep answering.
    let signal = CancellationToken::new();
    let stop_listening = CancellationToken::new();
    {
        let (ready, stop, listening) = (ready.clone(), signal.clone(), stop_listening.clone());
        let delay = Duration::from_millis(cli.drain_delay_ms);
        tokio::spawn(async move {
            stop.cancelled().await;
            ready.store(false, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            listening.cancel();
        });
    }
    tokio::spawn(admin::watch_expiry(
        table.clone(),
        cli.expiry_grace_ms,
        shutdown.clone(),
    ));

    let admin_listener = tokio::net::TcpListener::bind(cli.admin_listen)
        .await
        .with_context(|| format!("binding the admin endpoints to {}", cli.admin_listen))?;
    let admin_app = admin::router(AdminState {
        ready,
        table: table.clone(),
        lag,
        metrics: handle,
        expiry_grace_ms: cli.expiry_grace_ms,
        following,
    });
    let stop = shutdown.clone();
    let admin_server = tokio::spawn(async move {
        axum::serve(admin_listener, admin_app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });

    let settings = ProxySettings {
        mode: cli.mode,
        served,
        allow_forced_flavour: cli.allow_forced_flavour,
        upstreams,
        request_timeout: Duration::from_millis(cli.request_timeout_ms),
        max_body_bytes: cli.max_body_bytes,
        expiry_grace_ms: cli.expiry_grace_ms,
        retry_non_idempotent: cli.retry_non_idempotent,
        body_read_timeout: Duration::from_millis(cli.body_read_timeout_ms.max(1)),
    };
    let tls = carbonflow_router::tls::upstream_tls(cli.upstream_ca_file.as_deref())?;
    let connect_timeout = Duration::from_millis(cli.connect_timeout_ms);
    let limits = ListenerLimits {
        max_connections: cli.max_connections,
        header_read_timeout: Duration::from_millis(cli.header_read_timeout_ms.max(1)),
    };
    // Each worker has a proxy of its own (its upstream connections live on its thread, its
    // generator is seeded from `seed` and the worker index); decisions and telemetry are
    // shared.
    let make_proxy = move |worker: usize| {
        Arc::new(Proxy::new(
            table.clone(),
            telemetry_log.clone(),
            settings.clone(),
            connect_timeout,
            tls.clone(),
            seed ^ (worker as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ))
    };
    let threads = cli
        .worker_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let socket = std::net::TcpListener::bind(cli.listen)
        .with_context(|| format!("binding the proxy to {}", cli.listen))?;
    let local_addr = socket.local_addr()?;
    let workers = listener::Workers::start(socket, threads, limits, make_proxy, stop_listening)
        .context("starting the proxy's worker threads")?;
    tracing::info!(proxy = %local_addr, admin = %cli.admin_listen, %router_id, mode = ?cli.mode, workers = threads, schedules = ?cli.schedules.iter().map(ToString::to_string).collect::<Vec<_>>(), all_schedules = cli.all_schedules, started_ms = now_ms(), "router listening");
    carbonflow_schemas::service::cancel_on_signal(signal);
    // A proxy thread that fails stops the proxy: the router then stops and exits with
    // that error.
    let served = workers.finished().await;
    shutdown.cancel();
    tracing::info!("in-flight requests done; flushing telemetry");
    telemetry_stop.cancel();
    let followed = follower.await.context("decisions follower task")?;
    flusher.await.context("telemetry flusher task")?;
    admin_server
        .await
        .context("admin task")?
        .context("admin server")?;
    served.context("serving the proxy")?;
    followed.context("following decisions")
}
