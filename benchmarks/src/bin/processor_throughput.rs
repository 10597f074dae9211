//! Processor throughput.
//!
//! 1. Telemetry buckets per second through the broker: N buckets (over S schedules) are
//!    written to `request.telemetry`; then, in the same run, a bare rdkafka consumer with
//!    the processor's client settings reads and decodes them all, and the processor
//!    applies them all (journal entry per input, decisions when windows close). Ratio =
//!    processor rate / bare rate.
//! 2. Decisions per second with 10,000 and 100,000 schedules (one partition): the configs,
//!    then one forecast for their zone, which re-decides every schedule, against a bare
//!    producer writing the same decision records with the processor's producer settings;
//!    the processor's resident memory per schedule; the size of the partition's snapshot
//!    and the time from SIGTERM until a restarted processor is ready again.
//!
//! Run (after `cargo build --release`, with the local broker up):
//! `target/release/processor_throughput [--buckets 100000] [--schedules 10000,100000] [--runs 3] [--no-telemetry]`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use carbonflow_benchmarks::history::{ZONE, publish_configs, write_buckets};
use carbonflow_benchmarks::now_ms;
use carbonflow_benchmarks::pipeline::{metric_reaches, spawn_processor, wait_ready};
use carbonflow_benchmarks::stats::Summary;
use carbonflow_schemas::bus::admin::ensure_topics;
use carbonflow_schemas::bus::{KafkaArgs, RecordProducer, Topic};
use carbonflow_schemas::records::{PartitionSnapshot, TelemetryBucket};
use carbonflow_schemas::testing::{Children, read_all};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

#[derive(Parser)]
#[command(
    name = "processor_throughput",
    about = "Telemetry buckets/s through the processor vs a bare consumer; forecast fan-out decisions/s against a bare producer, memory, snapshot and restart at 10,000 and 100,000 schedules"
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
    /// Schedule counts of the decisions measurement, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    schedules: Vec<usize>,
    /// Skip the telemetry measurement (decisions only).
    #[arg(long)]
    no_telemetry: bool,
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

/// Field `field` of `/proc/<pid>/status` (`VmRSS`, `VmHWM`), MiB.
fn status_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| {
            l.strip_prefix(field)
                .is_some_and(|rest| rest.starts_with(':'))
        })?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn rss_mib(pid: u32) -> f64 {
    status_mib(pid, "VmRSS").unwrap_or(f64::NAN)
}

/// A consumer with the processor's client settings, named `name`, reading partition 0 of
/// `topic` from its start.
fn reader_from_start(args: &KafkaArgs, name: &str, topic: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = args
        .consumer_config(name, &format!("{name}-{}", now_ms()))?
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// One telemetry run: (bare read, bare read+write, processor) in buckets/s.
async fn telemetry_run(cli: &Cli, run: usize) -> anyhow::Result<(f64, f64, f64)> {
    let args = fresh(cli, &format!("telemetry{run}")).await?;
    let producer = RecordProducer::new(&args, "throughput-bench")?;
    publish_configs(&args, &producer, cli.telemetry_schedules).await?;
    write_buckets(&args, &producer, cli.buckets, cli.telemetry_schedules).await?;
    let topic = args.layout().name(Topic::Telemetry);

    // The yardstick: a bare consumer, same client settings, reading and decoding.
    let bare = reader_from_start(&args, "throughput-bare", &topic)?;
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
    let consumer = reader_from_start(args, "throughput-pipe", topic)?;
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
/// A record's key and payload.
type KeyedRecord = (Vec<u8>, Vec<u8>);

/// Read `n` records from `consumer`; returns when the last was read and, with `keep`, the
/// records' keys and payloads.
fn count_records(
    consumer: &BaseConsumer,
    n: usize,
    limit: Duration,
    keep: bool,
) -> anyhow::Result<(Instant, Vec<KeyedRecord>)> {
    let deadline = Instant::now() + limit;
    let (mut seen, mut kept) = (0, Vec::new());
    while seen < n {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                seen += 1;
                if keep {
                    let key = m.key().unwrap_or_default().to_vec();
                    kept.push((key, m.payload().unwrap_or_default().to_vec()));
                }
            }
            Some(Err(e)) => bail!("reading decisions: {e}"),
            None if Instant::now() > deadline => {
                bail!("read {seen} of {n} decisions within {limit:?}")
            }
            None => {}
        }
    }
    Ok((Instant::now(), kept))
}

/// The fan-out's yardstick: a bare producer with the processor's journal-and-decisions
/// producer settings (idempotent, gapless) writes `records` (the decisions the processor
/// wrote) to an empty topic, while a consumer reads them as the fan-out's were read;
/// records/s from the first queued to the last read, as the fan-out is timed from the
/// forecast sent to the last decision read.
async fn bare_producer(args: &KafkaArgs, records: &[KeyedRecord]) -> anyhow::Result<f64> {
    let producer = RecordProducer::gapless(args, "throughput-yardstick")?;
    let topic = args.layout().name(Topic::DeadLetters);
    let reader = reader_from_start(args, "throughput-yardstick", &topic)?;
    // The first record warms the reader up (its fetch started, as the fan-out's reader
    // was, having read the configs' decisions); the clock starts after it.
    let Some(((key, payload), rest)) = records.split_first() else {
        bail!("no decision records to write");
    };
    producer
        .send_bytes(&topic, key, Some(0), payload, None)
        .await?;
    count_records(&reader, 1, Duration::from_secs(60), false)?;
    let n = rest.len();
    let reading = tokio::task::spawn_blocking(move || {
        count_records(&reader, n, Duration::from_secs(600), true).map(|(done, _)| done)
    });
    let started = Instant::now();
    let mut pending = std::collections::VecDeque::new();
    for (key, payload) in rest {
        pending.push_back(
            producer
                .enqueue(&topic, key, Some(0), Some(payload), None)
                .await?,
        );
        while pending.len() > 10_000 {
            if let Some(p) = pending.pop_front() {
                p.await?;
            }
        }
    }
    for p in pending {
        p.await?;
    }
    let done = reading.await??;
    Ok(n as f64 / done.duration_since(started).as_secs_f64())
}

/// Bytes of partition 0's latest snapshot (the state of its chunks, compressed).
fn latest_snapshot_bytes(args: &KafkaArgs) -> usize {
    let chunks: Vec<PartitionSnapshot> = read_all(args, Topic::Snapshots, 0)
        .into_iter()
        .filter_map(|(_, _, payload)| carbonflow_schemas::decode(&payload?).ok())
        .collect();
    let latest = chunks.iter().map(|c| c.journal_next_offset).max();
    chunks
        .iter()
        .filter(|c| Some(c.journal_next_offset) == latest)
        .map(|c| c.state.len())
        .sum()
}

/// What one decisions run measured.
struct DecisionsRun {
    /// Configs → first decisions, decisions/s.
    configs: f64,
    /// One forecast → every schedule's decision, decisions/s.
    fanout: f64,
    /// The bare producer writing the same decision records, records/s.
    bare: f64,
    /// Processor RSS once every schedule has its first decision, before the fan-out, MiB.
    before_fanout: f64,
    /// Processor RSS right after the fan-out, MiB.
    rss: f64,
    /// Processor RSS 2 s later (the yardstick ran meanwhile), MiB.
    settled: f64,
    /// The most RSS the processor held (VmHWM), MiB.
    peak: f64,
    /// Settled RSS minus RSS once ready with no schedule, KiB per schedule.
    per_schedule_kib: f64,
    /// Size of the partition's last snapshot, MiB.
    snapshot_mib: f64,
    /// SIGTERM → a restarted processor is ready again, s.
    restart_s: f64,
}

/// One decisions run with `n` schedules.
async fn decisions_run(cli: &Cli, n: usize, run: usize) -> anyhow::Result<DecisionsRun> {
    let args = fresh(cli, &format!("decisions{n}x{run}")).await?;
    let producer = RecordProducer::new(&args, "throughput-bench")?;
    let mut procs = Children::default();
    let (child, admin) = spawn_processor(&args, &cli.bin_dir, &[])?;
    let pid = child.id();
    procs.0.push(child);
    wait_ready(&admin, Duration::from_secs(60)).await?;
    let idle_mib = rss_mib(pid);
    let publishing = tokio::spawn({
        let (args, producer) = (args.clone(), producer.clone());
        async move { publish_configs(&args, &producer, n).await }
    });
    // Decisions are counted on their topic, not by polling /metrics: with 10,000 schedules
    // the exposition is large enough that rendering it often would slow the processor.
    let decisions = reader_from_start(
        &args,
        "throughput-decisions",
        &args.layout().name(Topic::Decisions),
    )?;
    let (first, _) = count_records(&decisions, 1, Duration::from_secs(120), false)?;
    let (nth, _) = count_records(&decisions, n - 1, Duration::from_secs(600), false)?;
    let configs = (n - 1) as f64 / nth.duration_since(first).as_secs_f64();
    publishing.await??;
    let forecast = carbonflow_schemas::testing::samples::forecast_from(
        ZONE,
        "throughput-bench",
        now_ms(),
        1_800_000,
        &[300.0, 250.0, 200.0, 150.0],
    );
    let before_fanout = rss_mib(pid);
    let sent = Instant::now();
    producer
        .send(&args.layout().name(Topic::Forecasts), ZONE, None, &forecast)
        .await?;
    // The first decision read apart: how long the fold takes before the fan-out's writes
    // begin.
    let (first, mut written) = count_records(&decisions, 1, Duration::from_secs(120), true)?;
    let (done, rest) = count_records(&decisions, n - 1, Duration::from_secs(600), true)?;
    written.extend(rest);
    let first_ms = first.duration_since(sent).as_secs_f64() * 1000.0;
    let fanout = n as f64 / done.duration_since(sent).as_secs_f64();
    let rss = rss_mib(pid);
    let bare = bare_producer(&args, &written).await?;
    // What it holds once the fan-out's buffers are freed, and the most it ever held.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let settled = rss_mib(pid);
    let peak = status_mib(pid, "VmHWM").unwrap_or(f64::NAN);

    // Restart: the stop writes a final snapshot; the new instance restores from it.
    let stopped = Instant::now();
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    if let Some(mut c) = procs.0.pop() {
        c.wait()?;
    }
    let (child, admin) = spawn_processor(&args, &cli.bin_dir, &[])?;
    procs.0.push(child);
    wait_ready(&admin, Duration::from_secs(300)).await?;
    let restart_s = stopped.elapsed().as_secs_f64();
    let metrics = carbonflow_benchmarks::http::get_text(
        &carbonflow_benchmarks::http::client(),
        &format!("{admin}/metrics"),
    )
    .await;
    let divergent =
        carbonflow_benchmarks::prom::sum(&metrics, "carbonflow_restore_divergent_entries_total");
    if divergent > 0.0 {
        bail!("the restart found {divergent} divergent journal entries");
    }
    let snapshot_mib = latest_snapshot_bytes(&args) as f64 / 1_048_576.0;
    let r = DecisionsRun {
        configs,
        fanout,
        bare,
        before_fanout,
        rss,
        settled,
        peak,
        per_schedule_kib: (settled - idle_mib) * 1024.0 / n as f64,
        snapshot_mib,
        restart_s,
    };
    eprintln!(
        "decisions run {run}, {n} schedules: configs {:.0}/s, forecast fan-out {:.0}/s (first decision read after {first_ms:.0} ms), bare producer {:.0}/s, RSS {:.0} MiB before the fan-out, {:.0} MiB after, {:.0} MiB settled ({:.1} KiB per schedule over {idle_mib:.0} MiB idle), peak {:.0} MiB, snapshot {:.1} MiB, restart {:.2} s",
        r.configs,
        r.fanout,
        r.bare,
        r.before_fanout,
        r.rss,
        r.settled,
        r.per_schedule_kib,
        r.peak,
        r.snapshot_mib,
        r.restart_s
    );
    Ok(r)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    println!(
        "\n## Processor throughput ({} runs, medians; spread = max - min)\n",
        cli.runs
    );
    println!("| Measure | Median | Spread |");
    println!("|---|---|---|");
    if !cli.no_telemetry {
        let (mut bare, mut pipe, mut processor) = (vec![], vec![], vec![]);
        for run in 0..cli.runs {
            let (b, w, p) = telemetry_run(&cli, run).await?;
            bare.push(b);
            pipe.push(w);
            processor.push(p);
        }
        let ratio: Vec<f64> = processor.iter().zip(&bare).map(|(p, b)| p / b).collect();
        let ratio_pipe: Vec<f64> = processor.iter().zip(&pipe).map(|(p, w)| p / w).collect();
        row(
            &format!("Bare consumer, read + decode ({} buckets)", cli.buckets),
            &bare,
            "buckets/s",
            0,
        );
        row(
            "Bare consumer, read + decode + write one record each",
            &pipe,
            "buckets/s",
            0,
        );
        row(
            &format!(
                "Processor, applied + journaled ({} schedules)",
                cli.telemetry_schedules
            ),
            &processor,
            "buckets/s",
            0,
        );
        row("Ratio processor / bare read (target ≥ 0.8)", &ratio, "", 2);
        row("Ratio processor / bare read + write", &ratio_pipe, "", 2);
    }
    for &n in &cli.schedules {
        let mut runs = vec![];
        for run in 0..cli.runs {
            runs.push(decisions_run(&cli, n, run).await?);
        }
        let of = |f: fn(&DecisionsRun) -> f64| runs.iter().map(f).collect::<Vec<f64>>();
        let ratio: Vec<f64> = runs.iter().map(|r| r.fanout / r.bare).collect();
        row(
            &format!("{n} configs → first decisions"),
            &of(|r| r.configs),
            "decisions/s",
            0,
        );
        row(
            &format!("One forecast → {n} decisions"),
            &of(|r| r.fanout),
            "decisions/s",
            0,
        );
        row(
            &format!("Bare producer, the same {n} decision records"),
            &of(|r| r.bare),
            "records/s",
            0,
        );
        row(
            "Ratio fan-out / bare producer (target ≥ 0.8)",
            &ratio,
            "",
            2,
        );
        row(
            &format!("Processor RSS with {n} schedules, right after the fan-out"),
            &of(|r| r.rss),
            "MiB",
            0,
        );
        row("... 2 s later", &of(|r| r.settled), "MiB", 0);
        row(
            "... before the fan-out (first decisions only)",
            &of(|r| r.before_fanout),
            "MiB",
            0,
        );
        row("... at most (VmHWM)", &of(|r| r.peak), "MiB", 0);
        row(
            "RSS per schedule 2 s later, over the idle processor's (target ≤ 4 KiB)",
            &of(|r| r.per_schedule_kib),
            "KiB",
            1,
        );
        row(
            "Snapshot of the partition",
            &of(|r| r.snapshot_mib),
            "MiB",
            1,
        );
        row(
            "SIGTERM → restarted processor ready",
            &of(|r| r.restart_s),
            "s",
            2,
        );
    }
    Ok(())
}

/// One row of the results table: the median and spread of `values`.
fn row(label: &str, values: &[f64], unit: &str, decimals: usize) {
    let s = Summary::of(values);
    println!(
        "| {label} | {:.decimals$} {unit} | {:.decimals$} |",
        s.p50,
        s.spread()
    );
}
