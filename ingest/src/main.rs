//! `ingest`: publish carbonflow's inputs and manage its topics.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use carbonflow_ingest::forecasts::{Replay, from_csv, replay};
use carbonflow_ingest::scenario::Scenario;
use carbonflow_ingest::{now_ms, schedule};
use carbonflow_schemas::bus::{KafkaArgs, RecordProducer, Topic};
use carbonflow_schemas::records::ConfigCommand;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "ingest",
    version,
    about = "Publish carbonflow inputs and manage its topics"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage carbonflow's topics.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Publish carbon-intensity forecasts.
    Forecasts {
        #[command(subcommand)]
        source: ForecastSource,
    },
    /// Publish or delete schedule configs.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Set a schedule's weights by hand for a time to live.
    Override {
        /// Schedule, namespace/name.
        #[arg(long, env = "CARBONFLOW_SCHEDULE")]
        schedule: String,
        /// flavour=weight, repeatable (weights are proportional).
        #[arg(
            long = "weight",
            required_unless_present = "cancel",
            conflicts_with = "cancel",
            env = "CARBONFLOW_OVERRIDE_WEIGHTS",
            value_delimiter = ','
        )]
        weights: Vec<String>,
        /// End the schedule's override now instead of setting one (the next decision
        /// comes from its policy again).
        #[arg(long)]
        cancel: bool,
        /// How long the override lives, e.g. 90s or 10m.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration, env = "CARBONFLOW_OVERRIDE_TTL")]
        ttl: Duration,
        /// Why (kept in the record for audit).
        #[arg(long, env = "CARBONFLOW_OVERRIDE_REASON")]
        reason: Option<String>,
    },
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Create every topic that does not exist yet (idempotent) and check partition counts.
    Create {
        /// Replication factor of new topics (1 for a single local broker).
        #[arg(long, env = "CARBONFLOW_REPLICATION", default_value_t = 1)]
        replication: i32,
    },
    /// Print the topic names this configuration uses.
    Names,
}

#[derive(Subcommand)]
enum ForecastSource {
    /// Replay a scenario file (bare array, pattern object, 24-point profile, or
    /// time/intensity list): forecast k is issued at the start of slot k.
    Scenario {
        /// Scenario file (JSON).
        #[arg(env = "CARBONFLOW_SCENARIO_FILE")]
        file: PathBuf,
        /// Zone the forecasts are for.
        #[arg(long, default_value = "GB", env = "CARBONFLOW_ZONE")]
        zone: String,
        /// Length of one scenario slot, e.g. 30m (default: the file's own interval, else 30m).
        #[arg(long, value_parser = humantime::parse_duration, env = "CARBONFLOW_SLOT")]
        slot: Option<Duration>,
        /// Speed-up: a slot lasts slot/speed on the replay's clock (e.g. 120 turns 30 min
        /// slots into 15 s).
        #[arg(long, default_value_t = 1.0, env = "CARBONFLOW_SCENARIO_SPEED")]
        speed: f64,
        /// Start of slot 0, RFC 3339 UTC (default: now). The same start gives identical records.
        #[arg(long, env = "CARBONFLOW_SCENARIO_START")]
        start: Option<String>,
        /// Slots per forecast.
        #[arg(long, default_value_t = 48, env = "CARBONFLOW_FORECAST_HORIZON")]
        horizon: usize,
        /// Forecasts to publish (default: until Ctrl-C, or the end of a non-repeating scenario).
        #[arg(long, env = "CARBONFLOW_SCENARIO_STEPS")]
        steps: Option<usize>,
        /// Publish every forecast at once instead of each at its slot's start.
        #[arg(long, env = "CARBONFLOW_SCENARIO_NO_WAIT")]
        no_wait: bool,
    },
    /// Poll a forecast API and publish its forecast whenever it changes. Credentials come
    /// from ELECTRICITYMAPS_API_KEY, WATTTIME_TOKEN or CARBON_AWARE_SDK_API_KEY.
    Poll {
        /// Which API.
        #[arg(long, value_enum, env = "CARBONFLOW_PROVIDER")]
        provider: carbonflow_ingest::providers::Provider,
        /// Provider-side area: UK region id (1-17), Electricity Maps zone, WattTime
        /// region, or Carbon Aware SDK location.
        #[arg(long, default_value = "", env = "CARBONFLOW_PROVIDER_AREA")]
        area: String,
        /// carbonflow zone to publish the forecasts for.
        #[arg(long, default_value = "GB", env = "CARBONFLOW_ZONE")]
        zone: String,
        /// Base URL (default: the provider's public API).
        #[arg(long, env = "CARBONFLOW_PROVIDER_URL")]
        base_url: Option<String>,
        /// Time between polls, e.g. 5m.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, env = "CARBONFLOW_POLL_INTERVAL")]
        interval: Duration,
        /// Time allowed for one request.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration, env = "CARBONFLOW_POLL_TIMEOUT")]
        timeout: Duration,
        /// Largest retry delay after failures (retries start at 1 s and double).
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration, env = "CARBONFLOW_POLL_BACKOFF_MAX")]
        backoff_max: Duration,
    },
    /// Publish forecasts from a CSV file `timestamp,zone,g_per_kwh[,index]` (one per zone).
    Csv {
        /// CSV file.
        #[arg(env = "CARBONFLOW_FORECAST_CSV")]
        file: PathBuf,
        /// Length of the last slot of each zone.
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration, env = "CARBONFLOW_SLOT")]
        slot: Duration,
    },
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate a schedule file (YAML) with the processor's rules and publish it; an
    /// invalid file publishes nothing.
    Apply {
        /// Schedule file.
        #[arg(short = 'f', long, env = "CARBONFLOW_SCHEDULE_FILE")]
        file: PathBuf,
        /// Config version (default: now in epoch ms, so later applies win).
        #[arg(long, env = "CARBONFLOW_CONFIG_VERSION")]
        config_version: Option<i64>,
        /// Validate only.
        #[arg(long, env = "CARBONFLOW_DRY_RUN")]
        dry_run: bool,
    },
    /// Delete a schedule.
    Delete {
        /// Schedule, namespace/name.
        #[arg(long, env = "CARBONFLOW_SCHEDULE")]
        schedule: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    carbonflow_schemas::service::init_logging();
    let cli = Cli::parse();
    let kafka = &cli.kafka;
    let producer = || RecordProducer::new(kafka, "carbonflow-ingest");
    match cli.command {
        Command::Topics {
            action: TopicsAction::Create { replication },
        } => {
            let lines = carbonflow_ingest::topics::create(kafka, replication)
                .await
                .with_context(|| format!("creating topics on {}", kafka.brokers))?;
            for l in lines {
                println!("{l}");
            }
        }
        Command::Topics {
            action: TopicsAction::Names,
        } => {
            for n in carbonflow_ingest::topics::names(kafka) {
                println!("{n}");
            }
        }
        Command::Forecasts {
            source:
                ForecastSource::Scenario {
                    file,
                    zone,
                    slot,
                    speed,
                    start,
                    horizon,
                    steps,
                    no_wait,
                },
        } => {
            let scenario = Scenario::load(&file)?;
            anyhow::ensure!(
                speed.is_finite() && speed > 0.0,
                "--speed must be a positive number, got {speed}"
            );
            let slot = slot.or(scenario.slot).unwrap_or(Duration::from_secs(1800));
            let slot_ms = ((slot.as_millis() as f64 / speed).round() as i64).max(1);
            let start_ms = match start {
                Some(s) => carbonflow_schemas::time::parse_rfc3339_ms(&s)
                    .with_context(|| format!("--start {s:?}"))?,
                None => now_ms(),
            };
            let shutdown = CancellationToken::new();
            carbonflow_schemas::service::cancel_on_signal(shutdown.clone());
            eprintln!(
                "replaying {} ({} slots, {}) for zone {zone}: one slot every {} ms to {}",
                scenario.name,
                scenario.values.len(),
                if scenario.repeat { "repeating" } else { "once" },
                slot_ms,
                kafka.layout().name(Topic::Forecasts)
            );
            let r = Replay {
                zone,
                start_ms,
                slot_ms,
                horizon,
                steps,
                wait: !no_wait,
            };
            let n = replay(kafka, &producer()?, &scenario, &r, &shutdown).await?;
            eprintln!("published {n} forecast(s)");
        }
        Command::Forecasts {
            source:
                ForecastSource::Poll {
                    provider,
                    area,
                    zone,
                    base_url,
                    interval,
                    timeout,
                    backoff_max,
                },
        } => {
            use carbonflow_ingest::providers::{credential_env, default_base};
            let secret = credential_env(&provider).and_then(|v| std::env::var(v).ok());
            if let (Some(var), None) = (credential_env(&provider), &secret) {
                tracing::warn!("{var} is not set; the provider may refuse the requests");
            }
            let settings = carbonflow_ingest::poll::PollSettings {
                base: base_url.unwrap_or_else(|| default_base(&provider).to_string()),
                provider,
                area,
                zone,
                interval,
                timeout,
                backoff_initial: Duration::from_secs(1),
                backoff_max,
                secret,
            };
            let shutdown = CancellationToken::new();
            carbonflow_schemas::service::cancel_on_signal(shutdown.clone());
            let stats =
                carbonflow_ingest::poll::poll(kafka, &producer()?, &settings, &shutdown).await?;
            eprintln!("stopped: {stats:?}");
        }
        Command::Forecasts {
            source: ForecastSource::Csv { file, slot },
        } => {
            let p = producer()?;
            let topic = kafka.layout().name(Topic::Forecasts);
            for f in from_csv(&file, now_ms(), slot)? {
                p.send(&topic, &f.zone, None, &f).await?;
                println!("published {} point(s) for zone {}", f.points.len(), f.zone);
            }
        }
        Command::Config {
            action:
                ConfigAction::Apply {
                    file,
                    config_version,
                    dry_run,
                },
        } => {
            let now = now_ms();
            let config = schedule::load(&file, config_version.unwrap_or(now), now)?;
            if dry_run {
                println!(
                    "{}: valid schedule {} (nothing published)",
                    file.display(),
                    config.schedule
                );
                return Ok(());
            }
            let (id, version) = (config.schedule.clone(), config.config_version);
            producer()?
                .publish_config(&kafka.layout(), &ConfigCommand::Config(Box::new(config)))
                .await?;
            println!("published {id} config version {version}");
        }
        Command::Config {
            action: ConfigAction::Delete { schedule: id },
        } => {
            let deletion = schedule::deletion(&id, now_ms())?;
            producer()?
                .publish_config(&kafka.layout(), &deletion)
                .await?;
            println!("published the deletion of {id}");
        }
        Command::Override {
            schedule: id,
            cancel: true,
            reason,
            ..
        } => {
            let c = schedule::cancellation(&id, reason, now_ms())?;
            producer()?.publish_config(&kafka.layout(), &c).await?;
            println!("published the end of {id}'s override");
        }
        Command::Override {
            schedule: id,
            weights,
            ttl,
            reason,
            ..
        } => {
            let o =
                schedule::manual_override(&id, &weights, ttl.as_secs() as i64, reason, now_ms())?;
            producer()?.publish_config(&kafka.layout(), &o).await?;
            println!("published an override of {id} for {} s", ttl.as_secs());
        }
    }
    Ok(())
}
