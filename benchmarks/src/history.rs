//! Synthetic inputs written straight to a pipeline's topics: schedule configs and router
//! telemetry, in volumes no live load on this machine would reach quickly.

use carbonflow_schemas::bus::{KafkaArgs, RecordProducer, Topic};
use carbonflow_schemas::records::ConfigCommand;
use carbonflow_schemas::testing::samples;

use crate::now_ms;

/// Zone of the synthetic schedules (forecasts for it re-decide all of them).
pub const ZONE: &str = "BENCH";

/// Id of synthetic schedule `i`.
pub fn schedule_id(i: usize) -> String {
    format!("bench/s{i}")
}

/// Publish configs of `n` schedules (default spec, zone [`ZONE`], long validity).
pub async fn publish_configs(
    args: &KafkaArgs,
    producer: &RecordProducer,
    n: usize,
) -> anyhow::Result<()> {
    let topic = args.layout().name(Topic::Config);
    let mut pending = Vec::with_capacity(n);
    for i in 0..n {
        let id = schedule_id(i);
        let bytes = config_command(&id, 1).encode()?;
        pending.push(
            producer
                .enqueue(&topic, id.as_bytes(), None, Some(&bytes), None)
                .await?,
        );
    }
    for p in pending {
        p.await?;
    }
    Ok(())
}

/// Publish version `version` of synthetic schedule `id`'s config and wait for the write.
pub async fn publish_config(
    args: &KafkaArgs,
    producer: &RecordProducer,
    id: &str,
    version: i64,
) -> anyhow::Result<()> {
    producer
        .publish_config(&args.layout(), &config_command(id, version))
        .await?;
    Ok(())
}

/// The config command of synthetic schedule `id` at `version` (default spec, zone
/// [`ZONE`], long validity, an upstream nothing listens on).
fn config_command(id: &str, version: i64) -> ConfigCommand {
    let mut c = carbonflow_core::spec::ScheduleSpec::default().to_config(id, version, now_ms());
    c.zone = ZONE.into();
    c.valid_for_seconds = 3600;
    for f in &mut c.flavours {
        f.upstream_url = "http://127.0.0.1:9".into();
    }
    ConfigCommand::Config(Box::new(c))
}

/// Write `n` telemetry buckets spread round-robin over `schedules` schedules, one bucket per
/// schedule and second (so a 5 s window closes every 5 buckets of a schedule), the last
/// ones ending now. They lie in the past because the processor's plausibility gate refuses
/// buckets more than a few minutes ahead of its partition clock, which ticks keep near now.
pub async fn write_buckets(
    args: &KafkaArgs,
    producer: &RecordProducer,
    n: usize,
    schedules: usize,
) -> anyhow::Result<()> {
    let topic = args.layout().name(Topic::Telemetry);
    let seconds = n.div_ceil(schedules.max(1)) as i64;
    let base = now_ms() - now_ms().rem_euclid(1000) - seconds * 1000;
    let mut pending = Vec::with_capacity(10_000);
    for i in 0..n {
        let mut b = samples::telemetry_bucket();
        b.schedule = schedule_id(i % schedules);
        b.router_id = "bench-router".into();
        b.bucket_start_ms = base + (i / schedules) as i64 * 1000;
        let bytes = carbonflow_schemas::encode(&b)?;
        pending.push(
            producer
                .enqueue(&topic, b.schedule.as_bytes(), None, Some(&bytes), None)
                .await?,
        );
        // Bounded in flight: await acknowledgements every 10,000 records.
        if pending.len() == 10_000 {
            for p in pending.drain(..) {
                p.await?;
            }
        }
    }
    for p in pending {
        p.await?;
    }
    Ok(())
}
