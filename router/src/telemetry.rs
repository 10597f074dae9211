//! Per-schedule, per-second buckets of requests by flavour and outcome, with a latency
//! histogram, produced to `request.telemetry` for the processor's ledger.
//!
//! Telemetry never blocks or fails a request: recording is a short critical section, the
//! flusher hands closed buckets to the producer without waiting (`try_enqueue`), and while
//! the broker is unreachable records wait in librdkafka's bounded queue; what does not fit,
//! or times out there, is dropped and counted (`carbonflow_router_telemetry_dropped_total`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use carbonflow_schemas::bus::{RecordProducer, Topic, TopicLayout};
use carbonflow_schemas::encode;
use carbonflow_schemas::records::{LatencyHistogram, Outcome, OutcomeCount, TelemetryBucket};
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, DropReason};

/// Bucket length, ms.
const BUCKET_MS: i64 = 1000;

/// Upper bounds of the latency histogram's buckets, ms; one more bucket counts the
/// requests slower than the last bound.
const LATENCY_BOUNDS_MS: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
];

#[derive(Debug, Default)]
struct Pending {
    version: Option<i64>,
    /// `(flavour, outcome, count)`: a handful per bucket, found without allocating.
    counts: Vec<(String, Outcome, i64)>,
    latency: [i64; LATENCY_BOUNDS_MS.len() + 1],
    sum_ms: f64,
}

/// Buckets being filled, by schedule then bucket start, until the flusher takes them.
#[derive(Debug)]
pub struct Telemetry {
    router_id: String,
    pending: Mutex<HashMap<String, BTreeMap<i64, Pending>, foldhash::fast::RandomState>>,
}

impl Telemetry {
    /// Telemetry written as `router_id`.
    pub fn new(router_id: impl Into<String>) -> Self {
        Self {
            router_id: router_id.into(),
            pending: Mutex::default(),
        }
    }

    /// Count one request at `now_ms` (epoch ms) that took `latency_ms`. A bucket keeps
    /// the decision version of its first request. Allocates only for a schedule, bucket
    /// or (flavour, outcome) not seen before.
    pub(crate) fn record(
        &self,
        schedule: &str,
        version: i64,
        flavour: &str,
        outcome: Outcome,
        latency_ms: f64,
        now_ms: i64,
    ) {
        let start = now_ms - now_ms.rem_euclid(BUCKET_MS);
        let slot = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| latency_ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        // One lookup for a schedule already pending: its name is copied only when new.
        let seconds = match pending.get_mut(schedule) {
            Some(seconds) => seconds,
            None => pending.entry(schedule.to_string()).or_default(),
        };
        let p = seconds.entry(start).or_default();
        p.version.get_or_insert(version);
        match p
            .counts
            .iter_mut()
            .find(|(f, o, _)| f == flavour && *o == outcome)
        {
            Some((_, _, n)) => *n += 1,
            None => p.counts.push((flavour.to_string(), outcome, 1)),
        }
        p.latency[slot] += 1;
        p.sum_ms += latency_ms;
    }

    /// Remove and return every bucket that ended at or before `now_ms`.
    pub(crate) fn take_closed(&self, now_ms: i64) -> Vec<TelemetryBucket> {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (schedule, seconds) in pending.iter_mut() {
            // A bucket starting at `s` is closed once `s + BUCKET_MS <= now_ms`.
            let open = seconds.split_off(&(now_ms - BUCKET_MS).saturating_add(1));
            let closed = std::mem::replace(seconds, open);
            out.extend(
                closed
                    .into_iter()
                    .map(|(start, p)| self.bucket(schedule, start, p)),
            );
        }
        pending.retain(|_, seconds| !seconds.is_empty());
        out.sort_by(|a, b| (a.bucket_start_ms, &a.schedule).cmp(&(b.bucket_start_ms, &b.schedule)));
        out
    }

    fn bucket(&self, schedule: &str, start: i64, p: Pending) -> TelemetryBucket {
        let mut counts: Vec<OutcomeCount> = p
            .counts
            .into_iter()
            .map(|(flavour, outcome, count)| OutcomeCount {
                flavour,
                outcome,
                count,
            })
            .collect();
        counts.sort_by(|a, b| (&a.flavour, a.outcome).cmp(&(&b.flavour, b.outcome)));
        TelemetryBucket {
            router_id: self.router_id.clone(),
            schedule: schedule.to_string(),
            bucket_start_ms: start,
            bucket_length_ms: BUCKET_MS as i32,
            decision_version: p.version,
            counts,
            latency: LatencyHistogram {
                upper_bounds_ms: LATENCY_BOUNDS_MS.to_vec(),
                counts: p.latency.to_vec(),
                sum_ms: p.sum_ms,
            },
        }
    }
}

/// Every second (the bucket length), hand closed buckets to the producer without
/// waiting; at shutdown, flush what is left.
pub async fn flush_loop(
    telemetry: std::sync::Arc<Telemetry>,
    producer: RecordProducer,
    layout: TopicLayout,
    shutdown: CancellationToken,
) {
    let topic = layout.name(Topic::Telemetry);
    metrics::telemetry_drops_start();
    let mut every = tokio::time::interval(Duration::from_millis(BUCKET_MS as u64));
    loop {
        let stopping = tokio::select! {
            _ = shutdown.cancelled() => true,
            _ = every.tick() => false,
        };
        let now = if stopping { i64::MAX } else { crate::now_ms() };
        for b in telemetry.take_closed(now) {
            let Ok(bytes) = encode(&b) else {
                metrics::telemetry_dropped(DropReason::Encode);
                continue;
            };
            match producer
                .try_enqueue(&topic, b.schedule.as_bytes(), None, Some(&bytes))
                .await
            {
                Ok(delivery) => {
                    tokio::spawn(async move {
                        if let Err(e) = delivery.await {
                            tracing::warn!(error = %e, "telemetry bucket not delivered; dropped");
                            metrics::telemetry_dropped(DropReason::Delivery);
                        }
                    });
                }
                Err(e) if e.is_queue_full() => metrics::telemetry_dropped(DropReason::QueueFull),
                Err(e) => {
                    tracing::warn!(error = %e, "telemetry bucket refused by the producer; dropped");
                    metrics::telemetry_dropped(DropReason::Refused);
                }
            }
        }
        if stopping {
            let _ = producer.flush(Duration::from_secs(5));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recorded() -> Telemetry {
        let t = Telemetry::new("r1");
        t.record("a/b", 3, "full", Outcome::Success, 4.0, 10_100);
        t.record("a/b", 3, "full", Outcome::Success, 40.0, 10_900);
        t.record("a/b", 4, "lite", Outcome::Timeout, 9000.0, 10_950);
        t.record("a/b", 4, "lite", Outcome::Success, 1.0, 11_000);
        t
    }

    #[test]
    fn buckets_close_once_their_second_is_over() {
        let t = recorded();
        assert!(t.take_closed(10_999).is_empty());
        let closed = t.take_closed(11_000);
        assert_eq!(closed.len(), 1);
        assert_eq!(
            (closed[0].bucket_start_ms, closed[0].decision_version),
            (10_000, Some(3))
        );
        assert_eq!(t.take_closed(12_000).len(), 1, "the next second's bucket");
    }

    #[test]
    fn a_bucket_counts_by_flavour_and_outcome_with_latencies() {
        let closed = recorded().take_closed(11_000);
        let b = &closed[0];
        assert_eq!(b.counts.len(), 2);
        assert_eq!(b.counts[0].count, 2);
        assert_eq!(b.latency.counts.iter().sum::<i64>(), 3);
        assert_eq!(*b.latency.counts.last().expect("inf"), 1);
    }
}
