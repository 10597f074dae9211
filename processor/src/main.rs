//! `processor`: carbonflow's decision engine.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use carbonflow_core::gate::{Limits, MAX_TIME_MS};
use carbonflow_processor::access::AdminToken;
use carbonflow_processor::admin::{self, AdminState};
use carbonflow_processor::pipeline::{self, Ownership, Settings};
use carbonflow_processor::view::{ProcessorView, ScheduleSeries};
use carbonflow_schemas::bus::{GroupMember, KafkaArgs, RecordProducer};
use carbonflow_schemas::upstream::AllowList;
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
    /// Replay the topics to verify, explain, export and what-if decisions.
    Audit(AuditArgs),
    /// Dry run: read one JSON document on stdin (config, forecast, ledger, policy memory,
    /// evaluation time; see the README) and print the decision the pipeline would emit.
    Decide,
}

/// Who decides which schedule partitions an instance owns (see README, "Several
/// instances").
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OwnershipMode {
    /// Instance i of N owns the partitions p with p mod N = i (--instance, --instances).
    Explicit,
    /// Kafka's consumer-group protocol assigns them (--group-id); a dead instance's
    /// partitions move to the others once the broker evicts it.
    Group,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// How partitions are owned: explicit (instance i of N; for brokers that never evict
    /// a dead member, like the local one) or group (the consumer group assigns them).
    #[arg(
        long,
        env = "CARBONFLOW_OWNERSHIP",
        value_enum,
        default_value = "explicit"
    )]
    ownership: OwnershipMode,
    /// Explicit ownership: this instance's index among --instances. A StatefulSet pod
    /// name such as `processor-2` is accepted (its trailing number is used).
    #[arg(long, env = "CARBONFLOW_INSTANCE", default_value = "0", value_parser = parse_instance)]
    instance: i32,
    /// Explicit ownership: number of processor instances; instance i owns the schedule
    /// partitions p with p mod instances = i.
    #[arg(long, env = "CARBONFLOW_INSTANCES", default_value_t = 1)]
    instances: i32,
    /// Group ownership: the consumer group the processors share (default: the topic
    /// prefix followed by carbonflow-processor).
    #[arg(long, env = "CARBONFLOW_GROUP_ID")]
    group_id: Option<String>,
    /// Group ownership: static membership id (group.instance.id), e.g. the pod name. A
    /// static member restarted within the session timeout gets its partitions back
    /// without a rebalance; one that stops for good hands them over only when its
    /// session ends. Unset: a dynamic member, which hands over at once when it stops.
    #[arg(long, env = "CARBONFLOW_GROUP_INSTANCE_ID")]
    group_instance_id: Option<String>,
    /// Group ownership: how long the broker waits for a silent member before moving its
    /// partitions to the others, milliseconds (the bound on a crash takeover). Brokers
    /// refuse values outside their group.min/max.session.timeout.ms (Kafka: 6000–1800000).
    #[arg(long, env = "CARBONFLOW_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    session_timeout_ms: u64,
    /// Group ownership: above 0, keep every partition this instance does not own warm
    /// (fold its journal as its owner writes it), so a takeover folds only the entries
    /// since. The group picks who takes a partition over, so a standby keeps all of them;
    /// it costs the CPU and memory of folding every other instance's partitions.
    #[arg(long, env = "CARBONFLOW_STANDBY_REPLICAS", default_value_t = 0)]
    standby_replicas: u32,
    /// Schedules that get series of their own in /metrics (weights, ledger, emissions,
    /// version per schedule), besides the --schedule-series-for ones: the first this
    /// many the instance shows. Each schedule adds about 25 series; at tens of
    /// thousands of schedules they would cost more memory than the schedules and load
    /// Prometheus with millions of series. Aggregates over every schedule
    /// (carbonflow_schedules, carbonflow_schedules_undecided, ...) are exported always.
    #[arg(long, env = "CARBONFLOW_SCHEDULE_SERIES_LIMIT", default_value_t = 1000)]
    schedule_series_limit: usize,
    /// Schedules (namespace/name, comma-separated) that always get series of their own,
    /// whatever --schedule-series-limit says.
    #[arg(long, env = "CARBONFLOW_SCHEDULE_SERIES_FOR", value_delimiter = ',', value_parser = parse_schedule_id)]
    schedule_series_for: Vec<String>,
    /// File holding the bearer token that requests publishing commands (PUT /config,
    /// POST and DELETE .../manual) must carry as `Authorization: Bearer <token>`. Required
    /// when --admin-listen is not a loopback address.
    #[arg(long, env = "CARBONFLOW_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<std::path::PathBuf>,
    /// The admin token itself, instead of a file (prefer the environment variable or the
    /// file: flags show up in `ps`).
    #[arg(
        long,
        env = "CARBONFLOW_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with = "admin_token_file"
    )]
    admin_token: Option<String>,
    /// Admin API and /metrics address (loopback by default; another address needs an
    /// admin token).
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
    /// Snapshot a partition after this many journal entries, or after as many as the
    /// partition has schedules if that is more (a snapshot writes every schedule).
    #[arg(long, env = "CARBONFLOW_SNAPSHOT_EVERY", default_value_t = 2000)]
    snapshot_every: u64,
    /// ...or after this many seconds with any change, whichever comes first.
    #[arg(long, env = "CARBONFLOW_SNAPSHOT_INTERVAL_S", default_value_t = 60)]
    snapshot_interval_s: u64,
    /// Kafka client id (default: processor-<instance>; in group mode processor- followed
    /// by the static membership id, the host name or the process id).
    #[arg(long, env = "CARBONFLOW_CLIENT_ID")]
    client_id: Option<String>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Restore a partition whose journal lost entries the state needs (deleted by
    /// retention, or a gap) by folding what is left. Without it such a restore fails and
    /// names the missing offsets: the state would lack their inputs.
    #[arg(long, env = "CARBONFLOW_ACCEPT_JOURNAL_GAP")]
    accept_journal_gap: bool,
    /// On SIGTERM, how long the processor stays up unready, still consuming, before it
    /// stops, writes its final snapshots and exits, milliseconds (time for whatever
    /// routes to its admin API to notice).
    #[arg(long, env = "CARBONFLOW_DRAIN_DELAY_MS", default_value_t = 0)]
    drain_delay_ms: u64,
}

/// What an input may hold (see README, "What the processor refuses"). Inputs outside
/// these bounds go to the dead-letter topic (configs and overrides to
/// schedule.rejections) and change no state.
#[derive(Args)]
struct LimitArgs {
    /// Highest plausible carbon intensity of a forecast slot, gCO2/kWh.
    #[arg(long, env = "CARBONFLOW_MAX_INTENSITY", default_value_t = 2000.0)]
    max_intensity: f64,
    /// How far an input's event time may be ahead of the partition clock (the last
    /// tick), e.g. 5m, 30s.
    #[arg(long, env = "CARBONFLOW_MAX_FUTURE_SKEW", default_value = "5m", value_parser = humantime::parse_duration)]
    max_future_skew: Duration,
    /// Longest manual override (ttlSeconds), e.g. 24h.
    #[arg(long, env = "CARBONFLOW_MAX_OVERRIDE_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
    max_override_ttl: Duration,
    /// Where flavour upstreams may be: host names, suffixes (*.svc.cluster.local) and
    /// networks (10.0.0.0/8), comma-separated. Empty allows any host; link-local and
    /// cloud metadata addresses are always refused.
    #[arg(long, env = "CARBONFLOW_ALLOWED_UPSTREAMS", value_delimiter = ',')]
    allowed_upstreams: Vec<String>,
    /// Longest decision validity a config may ask for (validFor), e.g. 1h.
    #[arg(long, env = "CARBONFLOW_MAX_VALID_FOR", default_value = "1h", value_parser = humantime::parse_duration)]
    max_valid_for: Duration,
}

impl LimitArgs {
    fn limits(&self) -> anyhow::Result<Limits> {
        anyhow::ensure!(
            self.max_intensity.is_finite() && self.max_intensity > 0.0,
            "--max-intensity must be a positive number of gCO2/kWh, got {}",
            self.max_intensity
        );
        let seconds = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        Ok(Limits {
            upstreams: AllowList::new(&self.allowed_upstreams)?,
            max_intensity: self.max_intensity,
            max_future_skew_ms: i64::try_from(self.max_future_skew.as_millis())
                .unwrap_or(i64::MAX)
                .min(MAX_TIME_MS),
            max_override_ttl_s: seconds(self.max_override_ttl).clamp(1, MAX_TIME_MS / 1000),
            max_valid_for_s: seconds(self.max_valid_for).clamp(1, MAX_TIME_MS / 1000),
            ..Limits::default()
        })
    }
}

#[derive(Args)]
struct AuditArgs {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(subcommand)]
    action: AuditAction,
}

#[derive(Subcommand)]
enum AuditAction {
    /// Re-derive every decision from the journal with the processor's code and compare
    /// with schedule.decisions; exits 1 on any mismatch.
    Verify {
        /// Only this schedule (namespace/name).
        #[arg(long)]
        schedule: Option<String>,
        /// Only decisions at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Only decisions at or before this time (RFC 3339).
        #[arg(long)]
        to: Option<String>,
    },
    /// A readable account of one decision: inputs, ledger, window, diagnostics, weights.
    Explain {
        /// Schedule (namespace/name).
        #[arg(long)]
        schedule: String,
        /// The decision in force at this time (RFC 3339).
        #[arg(long, conflicts_with = "version")]
        at: Option<String>,
        /// The decision with this version.
        #[arg(long)]
        version: Option<i64>,
    },
    /// The decision history with, per telemetry window, commanded weights vs delivered
    /// shares, mean precision and carbon accounting.
    Export {
        /// Schedule (namespace/name).
        #[arg(long)]
        schedule: String,
        /// csv or jsonl.
        #[arg(long, default_value = "csv")]
        format: String,
        /// Only decisions at or after this time (RFC 3339).
        #[arg(long)]
        from: Option<String>,
        /// Only decisions at or before this time (RFC 3339).
        #[arg(long)]
        to: Option<String>,
    },
    /// Replay the recorded inputs with another policy or config for one schedule and
    /// compare carbon and mean precision with what happened.
    WhatIf {
        /// Schedule (namespace/name).
        #[arg(long)]
        schedule: String,
        /// Policy to try.
        #[arg(long)]
        policy: Option<String>,
        /// Spec settings to try, key=value (e.g. targetError=0.1), repeatable.
        #[arg(long = "set")]
        sets: Vec<String>,
    },
}

fn time_arg(name: &str, value: Option<&str>, default: i64) -> anyhow::Result<i64> {
    match value {
        None => Ok(default),
        Some(v) => {
            carbonflow_schemas::time::parse_rfc3339_ms(v).with_context(|| format!("--{name}"))
        }
    }
}

fn audit(args: AuditArgs) -> anyhow::Result<std::process::ExitCode> {
    use carbonflow_core::audit::{self as a, ReplayOptions};
    use carbonflow_processor::audit::{emitted, replay};
    let kafka = &args.kafka;
    let opts = |schedule| ReplayOptions {
        schedule,
        rewrite: None,
    };
    let history = |r: &a::Replay, s: &str| -> anyhow::Result<Vec<a::Derived>> {
        r.decisions
            .get(s)
            .cloned()
            .with_context(|| format!("schedule {s} has no decision in the journal"))
    };
    let report_gaps = |gaps: &[String]| {
        for g in gaps {
            eprintln!("audit: gap: {g}");
        }
    };
    match args.action {
        AuditAction::Verify { schedule, from, to } => {
            let (from, to) = (
                time_arg("from", from.as_deref(), i64::MIN)?,
                time_arg("to", to.as_deref(), i64::MAX)?,
            );
            let replay = replay(kafka, opts(schedule.as_deref()))?;
            let (emitted, gaps) = emitted(kafka)?;
            report_gaps(&replay.gaps);
            report_gaps(&gaps);
            let v = a::verify(&replay, &emitted, schedule.as_deref(), from, to);
            println!(
                "audit verify: {} journal entries folded ({} more of superseded owners not folded, {} ownership claims); {} decisions checked, {} matched, {} mismatched, {} not on the topic, {} not in the journal",
                replay.entries,
                replay.fenced,
                replay.claims,
                v.checked,
                v.matched,
                v.mismatched.len(),
                v.missing.len(),
                v.unexplained.len()
            );
            for (s, epoch, version, fields) in &v.mismatched {
                println!(
                    "mismatch: {s} epoch {epoch} version {version}: {}",
                    fields.join(", ")
                );
            }
            for (s, epoch, version) in &v.missing {
                println!(
                    "not on the topic (compacted, or never delivered): {s} epoch {epoch} version {version}"
                );
            }
            for (s, epoch, version) in &v.unexplained {
                println!(
                    "not in the journal (a superseded owner's after a newer claim, adopted after a crash, or older than the journal): {s} epoch {epoch} version {version}"
                );
            }
            Ok(if v.mismatched.is_empty() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            })
        }
        AuditAction::Explain {
            schedule,
            at,
            version,
        } => {
            let replay = replay(kafka, opts(Some(&schedule)))?;
            report_gaps(&replay.gaps);
            let ds = history(&replay, &schedule)?;
            let index = match (version, at) {
                (Some(v), _) => ds.iter().position(|d| d.decision.version == v),
                (None, Some(t)) => {
                    let t = time_arg("at", Some(&t), 0)?;
                    ds.iter().rposition(|d| d.decision.decided_at_ms <= t)
                }
                (None, None) => anyhow::bail!("give --at TIME or --version V"),
            }
            .with_context(|| format!("no such decision of {schedule} in the journal"))?;
            print!("{}", a::explain(&ds, index));
            Ok(std::process::ExitCode::SUCCESS)
        }
        AuditAction::Export {
            schedule,
            format,
            from,
            to,
        } => {
            let (from, to) = (
                time_arg("from", from.as_deref(), i64::MIN)?,
                time_arg("to", to.as_deref(), i64::MAX)?,
            );
            let replay = replay(kafka, opts(Some(&schedule)))?;
            report_gaps(&replay.gaps);
            let ds = history(&replay, &schedule)?;
            let rows: Vec<serde_json::Value> = a::export_rows(&ds)
                .into_iter()
                .zip(&ds)
                .filter(|(_, d)| (from..=to).contains(&d.decision.decided_at_ms))
                .map(|(r, _)| r)
                .collect();
            match format.as_str() {
                "csv" => print!("{}", a::to_csv(&rows)),
                "jsonl" => {
                    for r in rows {
                        println!("{r}");
                    }
                }
                other => anyhow::bail!("--format {other:?}: expected csv or jsonl"),
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        AuditAction::WhatIf {
            schedule,
            policy,
            sets,
        } => {
            let rewrite = a::rewrite_for(policy.clone(), &sets)?;
            let actual = replay(kafka, opts(Some(&schedule)))?;
            report_gaps(&actual.gaps);
            let what_if = replay(
                kafka,
                ReplayOptions {
                    schedule: Some(&schedule),
                    rewrite: Some(rewrite.as_ref()),
                },
            )?;
            let line = |name: &str, acc: &a::Accounting| {
                println!(
                    "{name:<8} requests {:>10}  mean commanded precision {:.6}  emissions {:.3}  baseline {:.3}  reduction vs full precision {:.3} %",
                    acc.requests,
                    acc.mean_commanded_precision(),
                    acc.emissions.delivered,
                    acc.emissions.full_precision,
                    100.0 * acc.reduction()
                )
            };
            let (a_acc, _) = a::account(&history(&actual, &schedule)?);
            let (w_acc, _) = a::account(&history(&what_if, &schedule)?);
            println!(
                "what-if for {schedule}: policy {}, settings {:?} (telemetry replayed as recorded)",
                policy.as_deref().unwrap_or("as recorded"),
                sets
            );
            line("actual", &a_acc);
            line("what-if", &w_acc);
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

fn parse_schedule_id(s: &str) -> Result<String, String> {
    s.parse::<carbonflow_schemas::vocabulary::ScheduleId>()
        .map(|_| s.to_string())
        .map_err(|e| format!("expected a schedule id namespace/name: {e}"))
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

/// mimalloc: 100,000 schedules are millions of small strings and boxes, which it packs
/// tighter than glibc's allocator (883 instead of 994 MiB, benchmarks/RESULTS.md §4).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Audit(args) => audit(args),
        Command::Decide => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("reading the decide document from stdin")?;
            let out = carbonflow_core::dry_run::run(&input)?;
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Run(args) => {
            carbonflow_schemas::service::init_logging();
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?
                .block_on(run(args))
                .map(|()| std::process::ExitCode::SUCCESS)
        }
    }
}

/// The admin token from --admin-token-file or CARBONFLOW_ADMIN_TOKEN; none is an error
/// when the admin API would listen beyond loopback.
fn admin_token(args: &RunArgs) -> anyhow::Result<Option<AdminToken>> {
    let text = match (&args.admin_token_file, &args.admin_token) {
        (Some(file), _) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("reading the admin token file {}", file.display()))?,
        ),
        (None, Some(token)) => Some(token.clone()),
        (None, None) => None,
    };
    let token = text.map(|t| AdminToken::new(&t)).transpose()?;
    let addr = args.admin_listen;
    anyhow::ensure!(
        token.is_some() || addr.ip().is_loopback(),
        "the admin API would listen on {addr}, which is not a loopback address, without a token: anyone who can reach it could steer every schedule. Set CARBONFLOW_ADMIN_TOKEN_FILE (--admin-token-file) to a file holding a long random token (e.g. `openssl rand -hex 32`), or listen on 127.0.0.1"
    );
    Ok(token)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let ownership = match args.ownership {
        OwnershipMode::Explicit => Ownership::Explicit {
            instance: args.instance,
            instances: args.instances,
        },
        OwnershipMode::Group => Ownership::Group {
            group: args
                .group_id
                .clone()
                .unwrap_or_else(|| format!("{}carbonflow-processor", args.kafka.topic_prefix)),
            member: GroupMember {
                instance_id: args.group_instance_id.clone(),
                session_timeout_ms: args.session_timeout_ms,
            },
        },
    };
    let client_id = args
        .client_id
        .clone()
        .unwrap_or_else(|| match args.ownership {
            OwnershipMode::Explicit => format!("processor-{}", args.instance),
            OwnershipMode::Group => format!(
                "processor-{}",
                args.group_instance_id
                    .clone()
                    .or_else(|| std::env::var("HOSTNAME").ok())
                    .unwrap_or_else(|| std::process::id().to_string())
            ),
        });
    let settings = Settings {
        ownership,
        standby_replicas: args.standby_replicas,
        tick_interval: Duration::from_millis(args.tick_interval_ms.max(10)),
        snapshot_every: args.snapshot_every.max(1),
        snapshot_interval: Duration::from_secs(args.snapshot_interval_s.max(1)),
        client_id,
        limits: args.limits.limits()?,
        accept_journal_gap: args.accept_journal_gap,
        drain_delay: Duration::from_millis(args.drain_delay_ms),
    };
    let token = admin_token(&args)?;
    let handle = carbonflow_schemas::service::install_metrics().context("installing metrics")?;
    carbonflow_processor::metrics::describe();
    let series = ScheduleSeries {
        limit: args.schedule_series_limit,
        opted_in: args.schedule_series_for.iter().cloned().collect(),
    };
    let view = Arc::new(ProcessorView::new(settings.ownership.describe(), series));
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
        token,
        upstreams: settings.limits.upstreams.clone(),
    };
    // The admin API outlives the pipeline: it answers (unready) while the pipeline drains
    // and writes its final snapshots, and stops last.
    let admin_stop = CancellationToken::new();
    let admin = tokio::spawn(admin::run(listener, admin_state, admin_stop.clone()));
    carbonflow_schemas::service::cancel_on_signal(shutdown.clone());
    let outcome = pipeline::run(args.kafka, settings, view, shutdown.clone()).await;
    admin_stop.cancel();
    admin
        .await
        .context("admin API task")?
        .context("admin API")?;
    outcome.context("processor pipeline")
}
