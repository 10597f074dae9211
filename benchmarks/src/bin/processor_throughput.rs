//! Processor throughput.
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
use carbonflow_benchmarks::stats::Summary;
use carbonflow_schemas::bus::admin::ensure_topics;
use carbonflow_schemas::bus::{KafkaArgs, RecordProducer, Topic};
use carbonflow_schemas::records::TelemetryBucket;
use carbonflow_schemas::testing::Children;
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

/// One telemetry run: (bare read, bare read+write, processor) in buckets/s.
async fn telemetry_run(cli: &Cli, run: usize) -> anyhow::Result<(f64, f64, f64)> {
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
    let pipe_rate = bare_pipe(&args, &producer, &topic, cli.buckets).await?;

    let mut procs = Children::default();
    let (child, admin) = spawn_processor(&args, &cli.bin_dir, &[])?;
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
    eprintln!(
        "telemetry run {run}: bare {bare_rate:.0}/s, bare read+write {pipe_rate:.0}/s, processor {proc_rate:.0}/s"
    );
    Ok((bare_rate, pipe_rate, proc_rate))
}

/// A second yardstick: read each bucket and write one record per bucket (what a journal
/// costs at least), acknowledgements checked as they complete, as the processor does.
async fn bare_pipe(
    args: &KafkaArgs,
    producer: &RecordProducer,
    topic: &str,
    n: usize,
) -> anyhow::Result<f64> {
    let consumer: BaseConsumer = args
        .consumer_config("throughput-pipe", &format!("throughput-pipe-{}", now_ms()))?
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let out = args.layout().name(Topic::DeadLetters);
    let (mut seen, mut first) = (0usize, None);
    let mut pending = std::collections::VecDeque::new();
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen < n {
        match consumer.poll(Duration::ZERO) {
            Some(Ok(m)) => {
                first.get_or_insert_with(Instant::now);
                let payload = m.payload().unwrap_or_default();
                let _: TelemetryBucket = carbonflow_schemas::decode(payload)?;
                pending.push_back(
                    producer
                        .enqueue(&out, b"pipe", Some(0), Some(payload), None)
                        .await?,
                );
                seen += 1;
                // Keep a bounded window of unacknowledged writes, like the processor.
                while pending.len() > 10_000 {
                    if let Some(p) = pending.pop_front() {
                        p.await?;
                    }
                }
            }
            Some(Err(e)) => bail!("pipe consumer: {e}"),
            None if Instant::now() > deadline => bail!("pipe read {seen} of {n}"),
            None => tokio::task::yield_now().await,
        }
    }
    for p in pending {
        p.await?;
    }
    Ok((n - 1) as f64 / first.map_or(f64::NAN, |t| t.elapsed().as_secs_f64()))
}

/// Read `n` more records from `consumer`; returns when the last one arrived.
fn count_records(consumer: &BaseConsumer, n: usize, limit: Duration) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + limit;
    let mut seen = 0;
    while seen < n {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => seen += 1,
            Some(Err(e)) => bail!("reading decisions: {e}"),
            None if Instant::now() > deadline => {
                bail!("read {seen} of {n} decisions within {limit:?}")
            }
            None => {}
        }
    }
    Ok(Instant::now())
}

/// One decisions run: (configs → decisions /s, forecast → decisions /s, RSS MiB).
async fn decisions_run(cli: &Cli, run: usize) -> anyhow::Result<(f64, f64, f64)> {
    let args = fresh(cli, &format!("decisions{run}")).await?;
    let producer = RecordProducer::new(&args, "throughput-bench")?;
    let mut procs = Children::default();
    let (child, admin) = spawn_processor(&args, &cli.bin_dir, &[])?;
    let pid = child.id();
    procs.0.push(child);
    wait_ready(&admin, Duration::from_secs(60)).await?;
    let n = cli.schedules as f64;
    let publishing = tokio::spawn({
        let (args, producer, count) = (args.clone(), producer.clone(), cli.schedules);
        async move { publish_configs(&args, &producer, count).await }
    });
    // Decisions are counted on their topic, not by polling /metrics: with 10,000 schedules
    // the exposition is large enough that rendering it often would slow the processor.
    let decisions: BaseConsumer = args
        .consumer_config(
            "throughput-decisions",
            &format!("throughput-decisions-{}", now_ms()),
        )?
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&args.layout().name(Topic::Decisions), 0, Offset::Beginning)?;
    decisions.assign(&tpl)?;
    let first = count_records(&decisions, 1, Duration::from_secs(120))?;
    let nth = count_records(&decisions, cli.schedules - 1, Duration::from_secs(600))?;
    let took_configs = nth.duration_since(first);
    let counted = n - 1.0;
    publishing.await??;
    let forecast = carbonflow_schemas::testing::samples::forecast_from(
        ZONE,
        "throughput-bench",
        now_ms(),
        1_800_000,
        &[300.0, 250.0, 200.0, 150.0],
    );
    let sent = Instant::now();
    producer
        .send(&args.layout().name(Topic::Forecasts), ZONE, None, &forecast)
        .await?;
    let done = count_records(&decisions, cli.schedules, Duration::from_secs(600))?;
    let forecast_s = done.duration_since(sent).as_secs_f64();
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
    let (mut bare, mut pipe, mut processor) = (vec![], vec![], vec![]);
    for run in 0..cli.runs {
        let (b, w, p) = telemetry_run(&cli, run).await?;
        bare.push(b);
        pipe.push(w);
        processor.push(p);
    }
    let ratio: Vec<f64> = processor.iter().zip(&bare).map(|(p, b)| p / b).collect();
    let ratio_pipe: Vec<f64> = processor.iter().zip(&pipe).map(|(p, w)| p / w).collect();
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
    let rows: [(String, &[f64], &str, usize); 8] = [
        (
            format!("Bare consumer, read + decode ({} buckets)", cli.buckets),
            &bare,
            "buckets/s",
            0,
        ),
        (
            "Bare consumer, read + decode + write one record each".into(),
            &pipe,
            "buckets/s",
            0,
        ),
        (
            format!(
                "Processor, applied + journaled ({} schedules)",
                cli.telemetry_schedules
            ),
            &processor,
            "buckets/s",
            0,
        ),
        (
            "Ratio processor / bare read (target ≥ 0.8)".into(),
            &ratio,
            "",
            2,
        ),
        (
            "Ratio processor / bare read + write".into(),
            &ratio_pipe,
            "",
            2,
        ),
        (
            format!("{} configs → first decisions", cli.schedules),
            &configs,
            "decisions/s",
            0,
        ),
        (
            format!("One forecast → {} decisions", cli.schedules),
            &fanout,
            "decisions/s",
            0,
        ),
        (
            format!("Processor RSS with {} schedules", cli.schedules),
            &rss,
            "MiB",
            0,
        ),
    ];
    for (label, values, unit, decimals) in rows {
        let s = Summary::of(values);
        println!(
            "| {label} | {:.decimals$} {unit} | {:.decimals$} |",
            s.p50,
            s.spread()
        );
    }
    Ok(())
}
