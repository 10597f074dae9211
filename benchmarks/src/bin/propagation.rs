//! Propagation benchmark (issue #7, item 1): a forecast record is produced → every router
//! has applied the decision it caused. Also measures, in the same run and with the same
//! client settings, the broker's own produce→consume latency for one hop, and splits
//! the path into forecast → decision record (processor side) and decision record →
//! applied (router side).
//!
//! Run (after `cargo build --release`, with the local broker up):
//! `target/release/propagation --routers 1 --changes 500`

use std::path::PathBuf;
use std::process::{Command, Stdio};

use carbonflow_benchmarks::procs::{Children, free_port};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use carbonflow_benchmarks::stats::Summary;
use carbonflow_schemas::bus::admin::ensure_topics;
use carbonflow_schemas::bus::{KafkaArgs, RecordProducer, Topic};
use carbonflow_schemas::records::{ConfigCommand, Forecast, ForecastPoint, ScheduleDecision};
use clap::Parser;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

#[derive(Parser)]
#[command(
    name = "propagation",
    about = "Forecast produced → decision applied by every router, against the broker's one-hop latency"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Routers to run.
    #[arg(long, default_value_t = 1)]
    routers: usize,
    /// Forecast changes to measure.
    #[arg(long, default_value_t = 500)]
    changes: usize,
    /// Directory with the release binaries (processor, router).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Pause between changes, ms (each change is measured alone).
    #[arg(long, default_value_t = 20)]
    pause_ms: u64,
}

use carbonflow_benchmarks::http::get_json;
use carbonflow_benchmarks::now_ms;

/// Version and apply time (epoch ms) a router holds for `schedule`.
async fn held(admin: &str, schedule: &str) -> Option<(i64, i64)> {
    let v = get_json(&format!("{admin}/decisions")).await?;
    let d = v["decisions"]
        .as_array()?
        .iter()
        .find(|d| d["schedule"] == schedule)?
        .clone();
    Some((d["version"].as_i64()?, d["appliedAtMs"].as_i64()?))
}

fn forecast(g: f64, at: i64) -> Forecast {
    let slot = 1_800_000;
    let start = at - at.rem_euclid(slot);
    Forecast {
        zone: "BENCH".into(),
        issuer: "propagation-benchmark".into(),
        issued_at_ms: at,
        points: (0..4)
            .map(|i| ForecastPoint {
                start_ms: start + i * slot,
                end_ms: start + (i + 1) * slot,
                g_per_kwh: g + i as f64,
                index: None,
            })
            .collect(),
        demand: None,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    cli.kafka.topic_prefix = format!("bench.propagation.{}.", now_ms());
    let args = cli.kafka.clone();
    let layout = args.layout();
    ensure_topics(&args, &layout, 1)
        .await
        .context("creating topics")?;
    let schedule = "bench/propagation";

    // The pipeline: one processor, N routers.
    let mut procs = Children::default();
    let common = |c: &mut Command| {
        c.args(args.to_flags())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    };
    let padmin = free_port()?;
    let mut p = Command::new(cli.bin_dir.join("processor"));
    p.args(["run", "--admin-listen", &format!("127.0.0.1:{padmin}")]);
    common(&mut p);
    procs.0.push(
        p.spawn()
            .context("starting the processor (build with cargo build --release)")?,
    );
    let mut admins = vec![];
    for i in 0..cli.routers {
        let (port, admin) = (free_port()?, free_port()?);
        let mut r = Command::new(cli.bin_dir.join("router"));
        r.args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args(["--router-id", &format!("bench-{i}"), "--schedule", schedule]);
        common(&mut r);
        procs.0.push(r.spawn().context("starting a router")?);
        admins.push(format!("http://127.0.0.1:{admin}"));
    }

    // A schedule on its own zone; validity long enough that no refresh interleaves.
    let producer = RecordProducer::new(&args, "propagation-bench")?;
    let mut config =
        carbonflow_processor::spec::ScheduleSpec::default().to_config(schedule, now_ms(), now_ms());
    config.zone = "BENCH".into();
    config.valid_for_seconds = 3600;
    for f in &mut config.flavours {
        f.upstream_url = "http://127.0.0.1:9".into();
    }
    let bytes = ConfigCommand::Config(Box::new(config)).encode()?;
    producer
        .send_bytes(
            &layout.name(Topic::Config),
            schedule.as_bytes(),
            None,
            &bytes,
            None,
        )
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut version = 0;
    for admin in &admins {
        loop {
            if let Some((v, _)) = held(admin, schedule).await {
                version = v;
                break;
            }
            if Instant::now() > deadline {
                bail!("router {admin} never received the first decision");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Decision record timestamps, read by our own consumer.
    let decisions: StreamConsumer = args
        .consumer_config("propagation-observer", "propagation-observer")?
        .create()?;
    let mut tpl = TopicPartitionList::new();
    let decisions_topic = layout.name(Topic::Decisions);
    for part in 0..layout.schedule_partitions {
        // An explicit offset: `Offset::End` would be resolved only at the first fetch,
        // after which the first decisions may already be written.
        let (_, high) =
            decisions.fetch_watermarks(&decisions_topic, part, Duration::from_secs(10))?;
        tpl.add_partition_offset(&decisions_topic, part, Offset::Offset(high))?;
    }
    decisions.assign(&tpl)?;

    let (mut e2e, mut processor_side, mut router_side) = (vec![], vec![], vec![]);
    let started = Instant::now();
    for k in 0..cli.changes {
        let t0 = now_ms();
        let f = forecast(if k % 2 == 0 { 120.0 } else { 380.0 }, t0);
        let payload = carbonflow_schemas::encode(&f)?;
        producer
            .send_bytes(
                &layout.name(Topic::Forecasts),
                b"BENCH",
                None,
                &payload,
                Some(t0),
            )
            .await?;
        version += 1;
        let mut applied = vec![];
        for admin in &admins {
            let give_up = Instant::now() + Duration::from_secs(10);
            loop {
                match held(admin, schedule).await {
                    Some((v, at)) if v >= version => {
                        applied.push(at);
                        break;
                    }
                    _ if Instant::now() > give_up => {
                        bail!("change {k}: {admin} did not apply version {version}")
                    }
                    _ => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        }
        let decision_ts = loop {
            let m = tokio::time::timeout(Duration::from_secs(10), decisions.recv())
                .await
                .context("waiting for the decision record")??;
            let Some(d) = m
                .payload()
                .and_then(|p| carbonflow_schemas::decode::<ScheduleDecision>(p).ok())
            else {
                continue;
            };
            if d.schedule == schedule && d.version >= version {
                break m.timestamp().to_millis().unwrap_or(t0);
            }
        };
        let last = applied.iter().copied().max().unwrap_or(t0);
        e2e.push((last - t0) as f64);
        processor_side.push((decision_ts - t0) as f64);
        router_side.push((last - decision_ts) as f64);
        tokio::time::sleep(Duration::from_millis(cli.pause_ms)).await;
    }
    let took = started.elapsed();

    // The broker's own hop, same client settings, same run.
    let samples = cli.changes.min(500);
    let hop1 =
        carbonflow_benchmarks::hop::one_hop_ms(&args, &producer, Topic::DeadLetters, samples)
            .await?;
    let hop_n =
        carbonflow_benchmarks::hop::one_hop_ms(&args, &producer, Topic::Rejections, samples)
            .await?;

    let e2e = Summary::of(&e2e);
    let (hop1, hop) = (Summary::of(&hop1), Summary::of(&hop_n));
    println!(
        "propagation: {} changes, {} router(s), {:.1} s, broker {}",
        cli.changes,
        cli.routers,
        took.as_secs_f64(),
        args.brokers
    );
    println!("  forecast → applied by every router  {e2e}");
    println!(
        "  forecast → decision record          {}",
        Summary::of(&processor_side)
    );
    println!(
        "  decision record → applied           {}",
        Summary::of(&router_side)
    );
    println!("  broker one hop, 1 partition         {hop1}");
    println!(
        "  broker one hop, {} partitions        {hop}   (the consumers' topology)",
        layout.schedule_partitions
    );
    println!(
        "  target p99 ≤ 2 × hop p99 + 5 ms = {:.1} ms: {}",
        2.0 * hop.p99 + 5.0,
        if e2e.p99 <= 2.0 * hop.p99 + 5.0 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(())
}
