//! `processor`: carbonflow's decision engine.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use carbonflow_processor::admin::{self, AdminState};
use carbonflow_processor::pipeline::{self, ProcessorView, Settings};
use carbonflow_schemas::bus::{KafkaArgs, RecordProducer};
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "processor", version, about = "carbonflow's decision engine")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the pipeline: restore owned partitions from the journal, then turn configs,
    /// forecasts, telemetry and ticks into decisions; serve the admin API.
    Run(RunArgs),
    /// Dry run: read one JSON document on stdin (config, forecast, ledger, policy memory,
    /// evaluation time; see the README) and print the decision the pipeline would emit.
    Decide,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// This instance's index among --instances. A StatefulSet pod name such as
    /// `processor-2` is accepted (its trailing number is used).
    #[arg(long, env = "CARBONFLOW_INSTANCE", default_value = "0", value_parser = parse_instance)]
    instance: i32,
    /// Number of processor instances; instance i owns the schedule partitions p with
    /// p mod instances = i.
    #[arg(long, env = "CARBONFLOW_INSTANCES", default_value_t = 1)]
    instances: i32,
    /// Admin API and /metrics address (loopback by default; set 0.0.0.0:PORT to expose).
    #[arg(
        long,
        env = "CARBONFLOW_ADMIN_LISTEN",
        default_value = "127.0.0.1:9400"
    )]
    admin_listen: SocketAddr,
    /// Interval between ticks written to each owned partition, milliseconds. Ticks are
    /// the processor's only clock: they close telemetry windows and re-issue decisions
    /// before they expire.
    #[arg(long, env = "CARBONFLOW_TICK_INTERVAL_MS", default_value_t = 1000)]
    tick_interval_ms: u64,
    /// Snapshot a partition after this many journal entries.
    #[arg(long, env = "CARBONFLOW_SNAPSHOT_EVERY", default_value_t = 2000)]
    snapshot_every: u64,
    /// ...or after this many seconds with any change, whichever comes first.
    #[arg(long, env = "CARBONFLOW_SNAPSHOT_INTERVAL_S", default_value_t = 60)]
    snapshot_interval_s: u64,
    /// Kafka client id (default: processor-<instance>).
    #[arg(long, env = "CARBONFLOW_CLIENT_ID")]
    client_id: Option<String>,
}

fn parse_instance(s: &str) -> Result<i32, String> {
    let digits: String = s
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits
        .parse()
        .map_err(|_| format!("expected a number or a name ending in one (processor-2), got {s:?}"))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Decide => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("reading the decide document from stdin")?;
            let out = carbonflow_processor::dry_run::run(&input)?;
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        Command::Run(args) => {
            carbonflow_schemas::service::init_logging();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?
                .block_on(run(args))
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let settings = Settings {
        instance: args.instance,
        instances: args.instances,
        tick_interval: Duration::from_millis(args.tick_interval_ms.max(10)),
        snapshot_every: args.snapshot_every.max(1),
        snapshot_interval: Duration::from_secs(args.snapshot_interval_s.max(1)),
        client_id: args
            .client_id
            .clone()
            .unwrap_or_else(|| format!("processor-{}", args.instance)),
    };
    let handle = carbonflow_processor::metrics::install().context("installing metrics")?;
    let view = Arc::new(ProcessorView::new(
        settings.clone(),
        args.kafka.schedule_partitions,
    ));
    let shutdown = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding the admin API to {}", args.admin_listen))?;
    tracing::info!(addr = %args.admin_listen, "admin API listening");
    let admin_state = AdminState {
        view: view.clone(),
        producer: RecordProducer::new(&args.kafka, &format!("{}-admin", settings.client_id))?,
        layout: args.kafka.layout(),
        metrics: handle,
    };
    let admin = tokio::spawn(admin::run(listener, admin_state, shutdown.clone()));
    carbonflow_schemas::service::cancel_on_signal(shutdown.clone());
    let outcome = pipeline::run(args.kafka, settings, view, shutdown.clone()).await;
    shutdown.cancel();
    admin
        .await
        .context("admin API task")?
        .context("admin API")?;
    outcome.context("processor pipeline")
}
