//! The processor's clock on the log: ticks written to every owned partition of
//! `schedule.ticks` at a fixed interval (DESIGN invariant 2: deciding reads time only from
//! records, so replaying the log replays the clock).

use std::time::Duration;

use carbonflow_schemas::bus::{KafkaArgs, RecordProducer, Topic, TopicLayout};
use carbonflow_schemas::records::Tick;
use carbonflow_schemas::service::now_ms;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Consecutive failed ticks after which the tick producer is built anew: an idempotent
/// producer whose broker lost its producer state (a restarted local broker) fails every
/// write until replaced.
const FAILURES_BEFORE_NEW_PRODUCER: u32 = 10;

/// Write the wall clock as one tick per partition `owned` holds (it follows ownership
/// as it changes) every `every`, until
/// `shutdown`. A tick that cannot be written is logged and the next interval tries again:
/// a missed tick only delays time-driven decisions by one interval.
pub(crate) async fn write_ticks(
    args: KafkaArgs,
    mut producer: RecordProducer,
    layout: TopicLayout,
    owned: watch::Receiver<Vec<i32>>,
    every: Duration,
    source: String,
    shutdown: CancellationToken,
) {
    let topic = layout.name(Topic::Ticks);
    let mut failures = 0_u32;
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let tick = Tick {
            at_ms: now_ms(),
            source: source.clone(),
        };
        let partitions = owned.borrow().clone();
        for p in partitions {
            match producer.send(&topic, "tick", Some(p), &tick).await {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(partition = p, error = %e, "could not write a tick; retrying next interval");
                }
            }
        }
        if failures >= FAILURES_BEFORE_NEW_PRODUCER {
            match RecordProducer::new(&args, &source) {
                Ok(fresh) => {
                    tracing::warn!(
                        failures,
                        "ticks keep failing; writing them with a new producer"
                    );
                    producer = fresh;
                    failures = 0;
                }
                Err(e) => tracing::warn!(error = %e, "could not build a new tick producer"),
            }
        }
    }
}
