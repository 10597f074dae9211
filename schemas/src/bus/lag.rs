//! Consumer-lag gauges, in messages and seconds, per group/topic/partition.
//!
//! Why not plain `metrics` gauges: a partition that is revoked must stop reporting (a
//! stale lag series pages someone for a partition this process no longer reads), and the
//! `metrics` facade cannot delete a series. So the lag series live here, are removed the
//! moment a partition is revoked or unassigned, and are rendered in Prometheus text format
//! next to the exporter's output on each component's `/metrics`.
//!
//! Sources: librdkafka statistics (every `statistics.interval.ms`) give the end of each
//! partition; the consumer loop stamps the timestamp of each record it finishes through a
//! [`PartitionLag`] handle (an atomic store, no allocation on the hot path).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use dashmap::DashMap;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::TopicPartitionList;

const UNKNOWN: i64 = i64::MIN;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct SeriesKey {
    group: String,
    topic: String,
    partition: i32,
}

impl SeriesKey {
    fn of(group: &str, topic: &str, partition: i32) -> Self {
        Self {
            group: group.to_string(),
            topic: topic.to_string(),
            partition,
        }
    }
}

/// Live lag figures of one assigned partition.
#[derive(Debug)]
pub struct PartitionLag {
    /// Records not yet processed (end offset − position), or [`UNKNOWN`].
    messages: AtomicI64,
    /// Timestamp (epoch ms) of the last record processed, or [`UNKNOWN`].
    last_processed_ts_ms: AtomicI64,
}

impl PartitionLag {
    fn new() -> Self {
        Self {
            messages: AtomicI64::new(UNKNOWN),
            last_processed_ts_ms: AtomicI64::new(UNKNOWN),
        }
    }

    /// Record that the record with timestamp `ts_ms` (epoch ms) has been processed.
    pub fn processed(&self, ts_ms: i64) {
        self.last_processed_ts_ms.store(ts_ms, Ordering::Relaxed);
    }

    /// Set the message lag directly (for consumers that compute it from watermarks).
    pub fn set_messages(&self, lag: i64) {
        self.messages.store(lag.max(0), Ordering::Relaxed);
    }

    /// Current message lag, if known.
    pub fn messages(&self) -> Option<i64> {
        let m = self.messages.load(Ordering::Relaxed);
        (m != UNKNOWN).then_some(m)
    }

    /// Seconds behind at `now_ms`: 0 when caught up, else the age of the last record
    /// processed (the oldest unprocessed record is at least that old).
    pub fn seconds(&self, now_ms: i64) -> Option<f64> {
        match self.messages()? {
            0 => Some(0.0),
            _ => {
                let ts = self.last_processed_ts_ms.load(Ordering::Relaxed);
                (ts != UNKNOWN).then(|| ((now_ms - ts).max(0) as f64) / 1000.0)
            }
        }
    }
}

/// Registry of lag series of every consumer in the process.
#[derive(Debug, Clone, Default)]
pub struct LagMetrics {
    series: Arc<DashMap<SeriesKey, Arc<PartitionLag>>>,
}

impl LagMetrics {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start reporting `group/topic/partition`; returns the handle the consumer loop
    /// stamps processed records on. Idempotent.
    pub fn track(&self, group: &str, topic: &str, partition: i32) -> Arc<PartitionLag> {
        self.series
            .entry(SeriesKey::of(group, topic, partition))
            .or_insert_with(|| Arc::new(PartitionLag::new()))
            .clone()
    }

    /// Stop reporting `group/topic/partition` (partition revoked or unassigned).
    pub fn untrack(&self, group: &str, topic: &str, partition: i32) {
        self.series.remove(&SeriesKey::of(group, topic, partition));
    }

    /// Number of series reported.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    /// True when nothing is reported.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// The handle of a tracked partition.
    pub fn get(&self, group: &str, topic: &str, partition: i32) -> Option<Arc<PartitionLag>> {
        self.series
            .get(&SeriesKey::of(group, topic, partition))
            .map(|e| e.value().clone())
    }

    /// Update message lag of tracked partitions from librdkafka statistics.
    pub fn apply_statistics(&self, group: &str, stats: &Statistics) {
        for entry in self.series.iter() {
            let key = entry.key();
            if key.group != group {
                continue;
            }
            let Some(p) = stats
                .topics
                .get(&key.topic)
                .and_then(|t| t.partitions.get(&key.partition))
            else {
                continue;
            };
            // Under read_committed the readable end is the last stable offset. app_offset
            // is the offset after the last record handed to the application (last + 1),
            // so their difference is exactly the number of records still to process.
            let end = if p.ls_offset >= 0 {
                p.ls_offset
            } else {
                p.hi_offset
            };
            let lag = if p.app_offset >= 0 && end >= 0 {
                end - p.app_offset
            } else if p.consumer_lag >= 0 {
                p.consumer_lag
            } else {
                continue; // -1 / -1001: not known yet
            };
            entry.value().set_messages(lag);
        }
    }

    /// Every tracked series at `now_ms`, sorted by group, topic and partition.
    pub fn rows(&self, now_ms: i64) -> Vec<LagRow> {
        let mut rows: Vec<LagRow> = self
            .series
            .iter()
            .map(|e| LagRow {
                group: e.key().group.clone(),
                topic: e.key().topic.clone(),
                partition: e.key().partition,
                messages: e.value().messages(),
                seconds: e.value().seconds(now_ms),
            })
            .collect();
        rows.sort_by(|a, b| {
            (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition))
        });
        rows
    }

    /// Prometheus text exposition of every tracked series, at `now_ms`.
    pub fn render(&self, now_ms: i64) -> String {
        let rows = self.rows(now_ms);
        let mut out = String::new();
        out.push_str("# HELP carbonflow_consumer_lag_messages Records between the consumer's position and the readable end of the partition.\n");
        out.push_str("# TYPE carbonflow_consumer_lag_messages gauge\n");
        for r in &rows {
            if let Some(m) = r.messages {
                let _ = writeln!(out, "carbonflow_consumer_lag_messages{} {m}", r.labels());
            }
        }
        out.push_str("# HELP carbonflow_consumer_lag_seconds Age of the last processed record while behind; 0 when caught up.\n");
        out.push_str("# TYPE carbonflow_consumer_lag_seconds gauge\n");
        for r in &rows {
            if let Some(s) = r.seconds {
                let _ = writeln!(out, "carbonflow_consumer_lag_seconds{} {s}", r.labels());
            }
        }
        out
    }
}

/// Lag of one group/topic/partition at a moment (status pages, `/metrics`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LagRow {
    /// Consumer group reported.
    pub group: String,
    /// Full topic name read (prefix included).
    pub topic: String,
    /// Partition number within `topic`.
    pub partition: i32,
    /// Records still to process, once known.
    pub messages: Option<i64>,
    /// Age of the last processed record while behind, once known.
    pub seconds: Option<f64>,
}

impl LagRow {
    fn labels(&self) -> String {
        format!(
            "{{group=\"{}\",topic=\"{}\",partition=\"{}\"}}",
            escape(&self.group),
            escape(&self.topic),
            self.partition
        )
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// rdkafka client context that feeds [`LagMetrics`] and follows group rebalances.
#[derive(Clone)]
pub struct LagContext {
    group: String,
    lag: LagMetrics,
}

impl LagContext {
    /// Context for a consumer of `group` reporting into `lag`.
    pub fn new(group: impl Into<String>, lag: LagMetrics) -> Self {
        Self {
            group: group.into(),
            lag,
        }
    }

    /// Register partitions assigned explicitly with `assign()` (no rebalance callback).
    pub fn assigned(&self, tpl: &TopicPartitionList) {
        for e in tpl.elements() {
            self.lag.track(&self.group, e.topic(), e.partition());
        }
    }

    /// Forget partitions no longer read.
    pub fn revoked(&self, tpl: &TopicPartitionList) {
        for e in tpl.elements() {
            self.lag.untrack(&self.group, e.topic(), e.partition());
        }
    }

    /// The registry.
    pub fn metrics(&self) -> &LagMetrics {
        &self.lag
    }

    /// The consumer group reported.
    pub fn group(&self) -> &str {
        &self.group
    }
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        self.lag.apply_statistics(&self.group, &statistics);
    }
}

impl ConsumerContext for LagContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.revoked(tpl);
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => self.assigned(tpl),
            Rebalance::Error(e) => {
                tracing::error!(group = %self.group, error = %e, "consumer group rebalance failed")
            }
            Rebalance::Revoke(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoked_partitions_stop_reporting() {
        let lag = LagMetrics::new();
        let h0 = lag.track("g", "t", 0);
        let h1 = lag.track("g", "t", 1);
        h0.set_messages(5);
        h0.processed(1_000);
        h1.set_messages(0);
        let text = lag.render(4_000);
        assert!(
            text.contains(
                "carbonflow_consumer_lag_messages{group=\"g\",topic=\"t\",partition=\"0\"} 5"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "carbonflow_consumer_lag_seconds{group=\"g\",topic=\"t\",partition=\"0\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "carbonflow_consumer_lag_seconds{group=\"g\",topic=\"t\",partition=\"1\"} 0"
            ),
            "{text}"
        );
        lag.untrack("g", "t", 0);
        let text = lag.render(4_000);
        assert!(!text.contains("partition=\"0\""), "{text}");
        assert!(text.contains("partition=\"1\""), "{text}");
    }

    #[test]
    fn unknown_lag_is_not_reported_as_zero() {
        let lag = LagMetrics::new();
        lag.track("g", "t", 0);
        assert!(!lag.render(0).contains("partition=\"0\""));
    }
}
