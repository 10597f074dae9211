//! Propagation benchmark: a forecast record is produced → every router
//! has applied the decision it caused. Also measures, in the same run and with the same
//! client settings, the broker's own produce→consume latency for one hop, and splits
//! the path into forecast → decision record (processor side) and decision record →
//! applied (router side).
//!
//! With `--fanout 1000,10000`: for each count, that many schedules of one zone, and one
//! forecast for the zone, which re-decides them all; the time until every router has
//! applied every schedule's new decision (p50 / p99 over schedules, and the last one),
//! against the fan-out time (forecast → the processor's last decision record) plus two
//! broker hops, and against a bare consumer with the routers' client settings reading
//! the same decisions as they are written.
//!
//! Run (after `cargo build --release`, with the local broker up):
//! `target/release/propagation --routers 1 --changes 500`
//! `target/release/propagation --routers 2 --fanout 1000,10000`

use std::path::PathBuf;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use carbonflow_benchmarks::history::publish_configs;
use carbonflow_benchmarks::http::get_json;
use carbonflow_benchmarks::pipeline::{Pipeline, RouterSpec, held};

use anyhow::{Context, bail};
use carbonflow_benchmarks::stats::Summary;
use carbonflow_schemas::bus::admin::ensure_topics;
use carbonflow_schemas::bus::{KafkaArgs, RangeReader, RecordProducer, Topic, TopicLayout};
use carbonflow_schemas::records::{Forecast, ScheduleDecision};
use clap::Parser;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
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
    /// Instead of the single-schedule changes: schedule counts (comma-separated) for the
    /// fan-out case, one forecast re-deciding them all.
    #[arg(long, value_delimiter = ',')]
    fanout: Vec<usize>,
}

use carbonflow_benchmarks::now_ms;

/// Publish a forecast of `g` gCO2/kWh for zone BENCH, stamped now; returns that time
/// (epoch ms), from which propagation is measured.
async fn publish_forecast(
    producer: &RecordProducer,
    layout: &TopicLayout,
    g: f64,
) -> anyhow::Result<i64> {
    let t0 = now_ms();
    let payload = carbonflow_schemas::encode(&forecast(g, t0))?;
    producer
        .send_bytes(
            &layout.name(Topic::Forecasts),
            b"BENCH",
            None,
            &payload,
            Some(t0),
        )
        .await?;
    Ok(t0)
}

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
    if !cli.fanout.is_empty() {
        return fanout(&cli).await;
    }
    cli.kafka.topic_prefix = format!("bench.propagation.{}.", now_ms());
    let args = cli.kafka.clone();
    let layout = args.layout();
    ensure_topics(&args, &layout, 1)
        .await
        .context("creating topics")?;
    let schedule = "bench/propagation";

    // The pipeline: one processor, N routers, a schedule on its own zone with a validity
    // long enough that no refresh interleaves.
    let specs = router_specs(cli.routers);
    let pipeline = Pipeline::start(&args, &cli.bin_dir, Some(schedule), &specs)?;
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
        let t0 =
            publish_forecast(&producer, &layout, if k % 2 == 0 { 120.0 } else { 380.0 }).await?;
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

/// The routers of a run.
fn router_specs(n: usize) -> Vec<RouterSpec> {
    (0..n)
        .map(|i| RouterSpec {
            id: format!("bench-{i}"),
            mode: "random",
        })
        .collect()
}

/// Version and apply time (epoch ms) of every schedule a router holds.
async fn held_all(admin: &str) -> Option<HashMap<String, (i64, i64)>> {
    let v = get_json(&format!("{admin}/decisions")).await?;
    v["decisions"]
        .as_array()?
        .iter()
        .map(|d| {
            Some((
                d["schedule"].as_str()?.to_string(),
                (d["version"].as_i64()?, d["appliedAtMs"].as_i64()?),
            ))
        })
        .collect()
}

/// Poll every router until each holds, for all `n` schedules, a version above `above`
/// (none when empty); returns what each holds then.
async fn every_router_holds(
    admins: &[String],
    n: usize,
    above: &HashMap<String, i64>,
) -> anyhow::Result<Vec<HashMap<String, (i64, i64)>>> {
    let give_up = Instant::now() + Duration::from_secs(300);
    let mut held = Vec::new();
    for admin in admins {
        loop {
            if let Some(h) = held_all(admin).await
                && h.len() >= n
                && h.iter()
                    .all(|(s, (v, _))| above.get(s).is_none_or(|old| v > old))
            {
                held.push(h);
                break;
            }
            if Instant::now() > give_up {
                bail!("{admin} did not apply every schedule's decision within 300 s");
            }
            // Seldom: each answer lists every schedule, and the routers' apply times are
            // their own, so polling faster would only take CPU from what is measured.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(held)
}

/// The fan-out case: for each count, one forecast re-decides that many schedules.
/// When each of the next `n` records `consumer` reads was read, epoch ms.
fn read_times(consumer: &BaseConsumer, n: usize) -> anyhow::Result<Vec<i64>> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut at = Vec::with_capacity(n);
    while at.len() < n {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(_)) => at.push(now_ms()),
            Some(Err(e)) => bail!("bare consumer: {e}"),
            None if Instant::now() > deadline => {
                bail!("the bare consumer read {} of {n} decisions", at.len())
            }
            None => {}
        }
    }
    Ok(at)
}

async fn fanout(cli: &Cli) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    let mut hop_p99: f64 = 0.0;
    for &n in &cli.fanout {
        let mut args = cli.kafka.clone();
        args.topic_prefix = format!("bench.fanout.{n}.{}.", now_ms());
        let layout = args.layout();
        ensure_topics(&args, &layout, 1)
            .await
            .context("creating topics")?;
        let pipeline = Pipeline::start(&args, &cli.bin_dir, None, &router_specs(cli.routers))?;
        let admins: Vec<String> = pipeline.routers.iter().map(|r| r.admin.clone()).collect();
        let producer = RecordProducer::new(&args, "propagation-bench")?;
        publish_configs(&args, &producer, n).await?;
        let before: HashMap<String, i64> = every_router_holds(&admins, n, &HashMap::new())
            .await?
            .remove(0)
            .into_iter()
            .map(|(s, (v, _))| (s, v))
            .collect();
        let decisions = layout.name(Topic::Decisions);
        let reader = RangeReader::new(&args, "propagation-observer")?;
        let from: Vec<i64> = (0..layout.schedule_partitions)
            .map(|p| reader.watermarks(&decisions, p).map(|w| w.1))
            .collect::<Result<_, _>>()?;

        // The yardstick: a bare consumer with the routers' client settings reading the
        // same decisions as they are written. Its time to read them bounds what any
        // router on this broker can reach.
        let bare: BaseConsumer = args
            .consumer_config(
                "propagation-bare",
                &format!("propagation-bare-{}", now_ms()),
            )?
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for (p, &offset) in (0..layout.schedule_partitions).zip(&from) {
            tpl.add_partition_offset(&decisions, p, Offset::Offset(offset))?;
        }
        bare.assign(&tpl)?;
        let bare_reads = tokio::task::spawn_blocking(move || read_times(&bare, n));

        let t0 = publish_forecast(&producer, &layout, 420.0).await?;
        let held = every_router_holds(&admins, n, &before).await?;
        let bare_read: Vec<f64> = bare_reads
            .await??
            .into_iter()
            .map(|at| (at - t0) as f64)
            .collect();
        // Per schedule: when the last router applied it, and when its record was written.
        let applied: Vec<f64> = before
            .keys()
            .map(|s| {
                let last = held.iter().map(|h| h[s].1).max().unwrap_or(t0);
                (last - t0) as f64
            })
            .collect();
        let mut written_last = t0;
        for (p, &from) in (0..layout.schedule_partitions).zip(&from) {
            let (_, end) = reader.watermarks(&decisions, p)?;
            reader.read(&decisions, p, from, end, |r| {
                written_last = written_last.max(r.timestamp_ms.unwrap_or(t0));
                Ok::<(), carbonflow_schemas::bus::BusError>(())
            })?;
        }
        let fanout_ms = (written_last - t0) as f64;
        let hop = carbonflow_benchmarks::hop::one_hop_ms(&args, &producer, Topic::Rejections, 200)
            .await?;
        hop_p99 = Summary::of(&hop).p99;
        let applied = Summary::of(&applied);
        let bare_read = Summary::of(&bare_read);
        eprintln!(
            "fan-out {n}: last decision written {fanout_ms:.0} ms after the forecast; applied by every router {applied}; read by a bare consumer {bare_read}"
        );
        rows.push((n, fanout_ms, applied, hop_p99, bare_read));
        drop(pipeline);
    }
    println!(
        "\n## Fan-out propagation: one forecast re-decides every schedule of its zone ({} router(s), {} schedule partitions)\n",
        cli.routers, cli.kafka.schedule_partitions
    );
    println!(
        "| Schedules | Fan-out (forecast → last decision record) | Applied by every router, p50 | p99 | last | Read by a bare consumer, p99 | Target p99 ≤ fan-out + 2 × hop p99 |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (n, fanout_ms, a, hop, bare) in &rows {
        let target = fanout_ms + 2.0 * hop;
        println!(
            "| {n} | {fanout_ms:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {target:.0} ms: {} |",
            a.p50,
            a.p99,
            a.max,
            bare.p99,
            if a.p99 <= target { "met" } else { "not met" }
        );
    }
    println!("\nbroker one hop p99 (schedule partitions): {hop_p99:.1} ms");
    Ok(())
}
