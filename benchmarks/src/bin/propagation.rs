//! Propagation benchmark: a forecast record is produced → every router
//! has applied the decision it caused. Also measures, in the same run and with the same
//! client settings, the broker's own produce→consume latency for one hop, and splits
//! the path into forecast → decision record (processor side) and decision record →
//! applied (router side).
//!
//! Run (after `cargo build --release`, with the local broker up):
//! `target/release/propagation --routers 1 --changes 500`

use std::path::PathBuf;

use carbonflow_benchmarks::pipeline::{Pipeline, RouterSpec, held};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use carbonflow_benchmarks::stats::Summary;
use carbonflow_schemas::bus::admin::ensure_topics;
use carbonflow_schemas::bus::{KafkaArgs, RecordProducer, Topic};
use carbonflow_schemas::records::{Forecast, ScheduleDecision};
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

use carbonflow_benchmarks::now_ms;

fn forecast(g: f64, at: i64) -> Forecast {
    let slots: Vec<f64> = (0..4).map(|i| g + f64::from(i)).collect();
    carbonflow_schemas::testing::samples::forecast_from(
        "BENCH",
        "propagation-benchmark",
        at,
        1_800_000,
        &slots,
    )
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

    // The pipeline: one processor, N routers, a schedule on its own zone with a validity
    // long enough that no refresh interleaves.
    let specs: Vec<RouterSpec> = (0..cli.routers)
        .map(|i| RouterSpec {
            id: format!("bench-{i}"),
            mode: "random",
        })
        .collect();
    let pipeline = Pipeline::start(&args, &cli.bin_dir, schedule, &specs)?;
    let admins: Vec<String> = pipeline.routers.iter().map(|r| r.admin.clone()).collect();
    let producer = RecordProducer::new(&args, "propagation-bench")?;
    let mut config =
        carbonflow_core::spec::ScheduleSpec::default().to_config(schedule, now_ms(), now_ms());
    config.zone = "BENCH".into();
    config.valid_for_seconds = 3600;
    for f in &mut config.flavours {
        f.upstream_url = "http://127.0.0.1:9".into();
    }
    let mut version = pipeline.configure(&args, &producer, config).await?;

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
