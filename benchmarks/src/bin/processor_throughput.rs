//! Processor throughput (issue #7, item 4).
//!
//! 1. Telemetry buckets per second through the broker: N buckets (over S schedules) are
//!    written to `request.telemetry`; then, in the same run, a bare rdkafka consumer with
//!    the processor's client settings reads and decodes them all, and the processor
//!    applies them all (journal entry per input, decisions when windows close). Ratio =
//!    processor rate / bare rate.
//! 2. Decisions per second with 10,000 schedules: 10,000 configs, then one forecast for
//!    their zone, which re-decides every schedule; and the processor's resident memory.
//!
//! Run (after `cargo build --release`, with the local broker up):
//! `target/release/processor_throughput [--buckets 100000] [--schedules 10000] [--runs 3]`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use carbonflow_benchmarks::history::{ZONE, publish_configs, write_buckets};
use carbonflow_benchmarks::now_ms;
use carbonflow_benchmarks::pipeline::{metric_reaches, spawn_processor, wait_ready};
use carbonflow_benchmarks::procs::Children;
use carbonflow_benchmarks::stats::Summary;
use carbonflow_schemas::bus::admin::ensure_topics;
use carbonflow_schemas::bus::{KafkaArgs, RecordProducer, Topic};
use carbonflow_schemas::records::{Forecast, ForecastPoint, TelemetryBucket};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

#[derive(Parser)]
#[command(
    name = "processor_throughput",
    about = "Telemetry buckets/s through the processor vs a bare consumer; decisions/s and memory with 10,000 schedules"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Telemetry buckets per run.
    #[arg(long, default_value_t = 100_000)]
    buckets: usize,
    /// Schedules the buckets are spread over.
    #[arg(long, default_value_t = 100)]
    telemetry_schedules: usize,
    /// Schedules of the decisions measurement.
    #[arg(long, default_value_t = 10_000)]
    schedules: usize,
    /// Runs of each measurement (figures are medians).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Directory with the release binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
}

async fn fresh(cli: &Cli, tag: &str) -> anyhow::Result<KafkaArgs> {
    let mut args = cli.kafka.clone();
    args.topic_prefix = format!("bench.throughput.{tag}.{}.", now_ms());
    args.schedule_partitions = 1;
    ensure_topics(&args, &args.layout(), 1)
        .await
        .context("creating topics")?;
    Ok(args)
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// One telemetry run: (bare buckets/s, processor buckets/s).
async fn telemetry_run(cli: &Cli, run: usize) -> anyhow::Result<(f64, f64)> {
    let args = fresh(cli, &format!("telemetry{run}")).await?;
    let producer = RecordProducer::new(&args, "throughput-bench")?;
    publish_configs(&args, &producer, cli.telemetry_schedules).await?;
    write_buckets(&args, &producer, cli.buckets, cli.telemetry_schedules).await?;
    let topic = args.layout().name(Topic::Telemetry);

    // The yardstick: a bare consumer, same client settings, reading and decoding.
    let bare: BaseConsumer = args
        .consumer_config("throughput-bare", &format!("throughput-bare-{}", now_ms()))?
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)?;
    bare.assign(&tpl)?;
    let (mut seen, mut first) = (0usize, None);
    let deadline = Instant::now() + Duration::from_secs(300);
    while seen < cli.buckets {
        match bare.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                let _: TelemetryBucket =
                    carbonflow_schemas::decode(m.payload().unwrap_or_default())?;
                seen += 1;
            }
            Some(Err(e)) => bail!("bare consumer: {e}"),
            None if Instant::now() > deadline => {
                bail!("bare consumer read {seen} of {}", cli.buckets)
            }
            None => {}
        }
    }
    let bare_s = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    drop(bare);

    let mut procs = Children::default();
    let (child, admin) = spawn_processor(&args, &cli.bin_dir)?;
    procs.0.push(child);
    let (took, counted) = metric_reaches(
        &admin,
        "carbonflow_inputs_total{topic=\"request.telemetry\"",
        0.0,
        cli.buckets as f64,
        Duration::from_secs(600),
    )
    .await?;
    let bare_rate = (cli.buckets - 1) as f64 / bare_s;
    let proc_rate = counted / took.as_secs_f64();
    eprintln!("telemetry run {run}: bare {bare_rate:.0}/s, processor {proc_rate:.0}/s");
    Ok((bare_rate, proc_rate))
}

/// One decisions run: (configs → decisions /s, forecast → decisions /s, RSS MiB).
async fn decisions_run(cli: &Cli, run: usize) -> anyhow::Result<(f64, f64, f64)> {
    let args = fresh(cli, &format!("decisions{run}")).await?;
    let producer = RecordProducer::new(&args, "throughput-bench")?;
    let mut procs = Children::default();
    let (child, admin) = spawn_processor(&args, &cli.bin_dir)?;
    let pid = child.id();
    procs.0.push(child);
    wait_ready(&admin, Duration::from_secs(60)).await?;
    let n = cli.schedules as f64;
    let publishing = tokio::spawn({
        let (args, producer, count) = (args.clone(), producer.clone(), cli.schedules);
        async move { publish_configs(&args, &producer, count).await }
    });
    let (took_configs, counted) = metric_reaches(
        &admin,
        "carbonflow_decisions_total",
        0.0,
        n,
        Duration::from_secs(600),
    )
    .await?;
    publishing.await??;
    let now = now_ms();
    let slot = 1_800_000;
    let start = now - now.rem_euclid(slot);
    let forecast = Forecast {
        zone: ZONE.into(),
        issuer: "throughput-bench".into(),
        issued_at_ms: now,
        points: (0..4)
            .map(|i| ForecastPoint {
                start_ms: start + i * slot,
                end_ms: start + (i + 1) * slot,
                g_per_kwh: 300.0 - 50.0 * i as f64,
                index: None,
            })
            .collect(),
        demand: None,
    };
    let sent = Instant::now();
    producer
        .send(&args.layout().name(Topic::Forecasts), ZONE, None, &forecast)
        .await?;
    let (_, _) = metric_reaches(
        &admin,
        "carbonflow_decisions_total",
        n,
        2.0 * n,
        Duration::from_secs(600),
    )
    .await?;
    let forecast_s = sent.elapsed().as_secs_f64();
    let rss = rss_mib(pid).unwrap_or(f64::NAN);
    eprintln!(
        "decisions run {run}: configs {:.0}/s, forecast fan-out {:.0}/s, RSS {rss:.0} MiB",
        counted / took_configs.as_secs_f64(),
        n / forecast_s
    );
    Ok((counted / took_configs.as_secs_f64(), n / forecast_s, rss))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let (mut bare, mut processor, mut ratio) = (vec![], vec![], vec![]);
    for run in 0..cli.runs {
        let (b, p) = telemetry_run(&cli, run).await?;
        bare.push(b);
        processor.push(p);
        ratio.push(p / b);
    }
    let (mut configs, mut fanout, mut rss) = (vec![], vec![], vec![]);
    for run in 0..cli.runs {
        let (c, f, r) = decisions_run(&cli, run).await?;
        configs.push(c);
        fanout.push(f);
        rss.push(r);
    }
    println!(
        "\n## Processor throughput ({} runs, medians; spread = max - min)\n",
        cli.runs
    );
    println!("| Measure | Median | Spread |");
    println!("|---|---|---|");
    println!(
        "| Bare consumer, read + decode ({} buckets) | {:.0} buckets/s | {:.0} |",
        cli.buckets,
        Summary::of(&bare).p50,
        Summary::of(&bare).spread()
    );
    println!(
        "| Processor, applied + journaled ({} schedules) | {:.0} buckets/s | {:.0} |",
        cli.telemetry_schedules,
        Summary::of(&processor).p50,
        Summary::of(&processor).spread()
    );
    println!(
        "| Ratio processor / bare (target ≥ 0.8) | {:.2} | {:.2} |",
        Summary::of(&ratio).p50,
        Summary::of(&ratio).spread()
    );
    println!(
        "| {} configs → first decisions | {:.0} decisions/s | {:.0} |",
        cli.schedules,
        Summary::of(&configs).p50,
        Summary::of(&configs).spread()
    );
    println!(
        "| One forecast → {} decisions | {:.0} decisions/s | {:.0} |",
        cli.schedules,
        Summary::of(&fanout).p50,
        Summary::of(&fanout).spread()
    );
    println!(
        "| Processor RSS with {} schedules | {:.0} MiB | {:.0} |",
        cli.schedules,
        Summary::of(&rss).p50,
        Summary::of(&rss).spread()
    );
    Ok(())
}
