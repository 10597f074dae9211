//! Decisions by push: read the latest decision of every schedule from
//! `schedule.decisions`, become ready once caught up with the end offsets seen at start,
//! then apply every decision the moment it is consumed (no poll interval anywhere).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use carbonflow_schemas::bus::consumer::add_offset;
use carbonflow_schemas::bus::{
    BusError, KafkaArgs, LagMetrics, RangeReader, Topic, assigned_consumer,
};
use carbonflow_schemas::decode;
use carbonflow_schemas::records::ScheduleDecision;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::now_ms;
use crate::served::Served;
use crate::table::{Applied, DecisionTable};

/// Why following decisions stopped.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// Kafka client plumbing failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A blocking metadata call panicked.
    #[error("metadata worker failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// End offsets (next offset to be written) of every partition of `topic`.
fn end_offsets(args: &KafkaArgs, topic: &str) -> Result<BTreeMap<i32, i64>, FollowError> {
    let reader = RangeReader::new(args, "carbonflow-router-bootstrap")?;
    (0..reader.partitions(topic)?)
        .map(|p| Ok((p, reader.watermarks(topic, p)?.1)))
        .collect()
}

/// Longest wait between two attempts to start following.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Follow the decisions of the `served` schedules on `schedule.decisions` into `table`
/// until `shutdown`; sets `ready` once caught up. Starting (metadata, end offsets,
/// assignment) is retried with exponential backoff while the broker cannot be reached,
/// each failure logged and counted, so a router started before its broker becomes ready
/// once the broker is up.
pub async fn follow(
    args: KafkaArgs,
    served: Served,
    group: String,
    table: Arc<DecisionTable>,
    ready: Arc<AtomicBool>,
    lag: LagMetrics,
    shutdown: CancellationToken,
) -> Result<(), FollowError> {
    let mut backoff = Duration::from_millis(500);
    loop {
        let attempt = follow_once(&args, &served, &group, &table, &ready, &lag, &shutdown).await;
        let Err(e) = attempt else {
            return Ok(());
        };
        crate::metrics::follow_failed();
        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot follow the decisions topic yet; retrying");
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn follow_once(
    args: &KafkaArgs,
    served: &Served,
    group: &str,
    table: &DecisionTable,
    ready: &AtomicBool,
    lag: &LagMetrics,
    shutdown: &CancellationToken,
) -> Result<(), FollowError> {
    let started = Instant::now();
    let topic = args.layout().name(Topic::Decisions);
    let ends = {
        let (a, t) = (args.clone(), topic.clone());
        tokio::task::spawn_blocking(move || end_offsets(&a, &t)).await??
    };
    // Only the partitions that hold the served schedules' decisions: less to read at
    // start, and fewer partitions per fetch.
    let ends: BTreeMap<i32, i64> = match served.partitions(ends.len() as i32) {
        Some(wanted) => ends
            .into_iter()
            .filter(|(p, _)| wanted.contains(p))
            .collect(),
        None => ends,
    };
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        add_offset(&mut tpl, &topic, *p, Offset::Beginning)?;
    }
    let consumer = assigned_consumer(args, group, group, lag.clone(), &tpl)?;
    // Partitions still to catch up with: those that had records when we started.
    let mut behind: BTreeMap<i32, i64> = ends.into_iter().filter(|(_, end)| *end > 0).collect();
    let mark_ready = |ready: &AtomicBool| {
        // A stop that has begun keeps the router unready.
        if shutdown.is_cancelled() {
            return;
        }
        ready.store(true, Ordering::SeqCst);
        crate::metrics::bootstrapped(started.elapsed().as_secs_f64());
        tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            schedules = table.all().len(),
            "caught up with the decisions topic; ready"
        );
    };
    if behind.is_empty() {
        mark_ready(ready);
    }
    loop {
        let m = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = consumer.recv() => m,
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "decisions consumer error (librdkafka retries)");
                continue;
            }
        };
        let now = now_ms();
        let bootstrapping = behind.contains_key(&m.partition());
        match m.payload() {
            None => {
                if let Some(key) = m.key().and_then(|k| std::str::from_utf8(k).ok()) {
                    table.remove(key);
                    tracing::info!(schedule = key, "schedule deleted");
                }
            }
            Some(bytes) => match decode::<ScheduleDecision>(bytes) {
                Ok(d) => apply(table, d, now, bootstrapping, m.timestamp().to_millis()),
                Err(e) => {
                    crate::metrics::undecodable_decision(e.kind());
                    tracing::warn!(partition = m.partition(), offset = m.offset(), error = %e, "undecodable decision skipped");
                }
            },
        }
        if let Some(l) = consumer
            .context()
            .metrics()
            .get(group, &topic, m.partition())
        {
            l.processed(m.timestamp().to_millis().unwrap_or(now));
        }
        if let Some(end) = behind.get(&m.partition()).copied() {
            // end is the next offset to be written at start: caught up after end - 1.
            if m.offset() + 1 >= end {
                behind.remove(&m.partition());
                if behind.is_empty() {
                    mark_ready(ready);
                }
            }
        }
    }
    consumer.context().revoked(&tpl);
    Ok(())
}

fn apply(
    table: &DecisionTable,
    d: ScheduleDecision,
    now: i64,
    bootstrapping: bool,
    ts: Option<i64>,
) {
    let (schedule, version) = (d.schedule.clone(), d.version);
    match table.apply(d, now) {
        Applied::Applied { previous } => {
            // Propagation is measured for live decisions only, not for history replayed
            // at start.
            if let (false, Some(ts)) = (bootstrapping, ts) {
                crate::metrics::decision_propagated(now - ts);
            }
            tracing::debug!(%schedule, version, ?previous, "decision applied");
        }
        Applied::Ignored { held } => {
            crate::metrics::decision_ignored();
            tracing::debug!(%schedule, version, ?held, "older or duplicate decision ignored");
        }
    }
}
