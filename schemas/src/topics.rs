//! Topic names, partition counts and retention — defined once for every component.
//!
//! Schedule-keyed topics are *co-partitioned*: they all have the same partition count,
//! every producer places keys with Kafka's murmur2 partitioner (see
//! `bus::config`), and the processor writes its journal, snapshots and
//! decisions to the same partition number as the input that caused them. An owner of partition `p` therefore finds everything
//! about its schedules in partition `p` of every topic. Forecasts are global (every
//! processor instance reads all of them), so that topic has a single partition.

/// The partition of `partitions` that Kafka's default partitioner (and librdkafka's
/// `murmur2_random`, which every carbonflow producer uses) puts key `key` on:
/// `(murmur2(key) & 0x7fffffff) mod partitions`. `None` when `partitions` is not positive.
pub fn partition_of(key: &[u8], partitions: i32) -> Option<i32> {
    if partitions <= 0 {
        return None;
    }
    let hash = murmur2::murmur2(key, murmur2::KAFKA_SEED) & 0x7fff_ffff;
    // The hash fits in 31 bits, so it is a non-negative i64 and the result fits an i32.
    Some((i64::from(hash) % i64::from(partitions)) as i32)
}

/// Default partition count of the schedule-keyed topics.
pub const DEFAULT_SCHEDULE_PARTITIONS: i32 = 6;

/// What the broker does with old records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// Delete records older than the retention (`None` = keep forever).
    Delete {
        /// `retention.ms`, or `None` for "forever" ([`FOREVER_MS`]).
        retention_ms: Option<i64>,
    },
    /// Keep the latest record per key (values must be full snapshots, never deltas).
    Compact,
}

/// Every topic carbonflow uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `carbon.forecasts`: forecasts per zone.
    Forecasts,
    /// `schedule.config`: configs, overrides and deletions per schedule.
    Config,
    /// `request.telemetry`: router telemetry buckets per schedule.
    Telemetry,
    /// `processor.ticks`: time written to the log.
    Ticks,
    /// `schedule.decisions`: latest decision per schedule (compacted).
    Decisions,
    /// `schedule.rejections`: refused configs.
    Rejections,
    /// `processor.journal`: the processor's state changes.
    Journal,
    /// `processor.snapshots`: periodic full state per partition (compacted).
    Snapshots,
    /// `deadletters`: undecodable records.
    DeadLetters,
}

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// "Keep forever", written as 100 years rather than Kafka's `-1`: the local broker
/// (tansu 0.6) treats `retention.ms=-1` as "already expired" and, about a minute after
/// the first write, deletes every record of such a topic and resets its offsets to 0 —
/// which would erase the journal and the configs. A century behaves the same as `-1` on
/// every broker.
pub const FOREVER_MS: i64 = 100 * 365 * DAY_MS;

impl Topic {
    /// All topics, in creation order.
    pub const ALL: [Topic; 9] = [
        Topic::Forecasts,
        Topic::Config,
        Topic::Telemetry,
        Topic::Ticks,
        Topic::Decisions,
        Topic::Rejections,
        Topic::Journal,
        Topic::Snapshots,
        Topic::DeadLetters,
    ];

    /// Name without prefix.
    pub fn base_name(self) -> &'static str {
        match self {
            Topic::Forecasts => "carbon.forecasts",
            Topic::Config => "schedule.config",
            Topic::Telemetry => "request.telemetry",
            Topic::Ticks => "processor.ticks",
            Topic::Decisions => "schedule.decisions",
            Topic::Rejections => "schedule.rejections",
            Topic::Journal => "processor.journal",
            Topic::Snapshots => "processor.snapshots",
            Topic::DeadLetters => "deadletters",
        }
    }

    /// Whether the topic is keyed by schedule and so co-partitioned with the others.
    pub fn is_schedule_keyed(self) -> bool {
        !matches!(self, Topic::Forecasts | Topic::DeadLetters)
    }

    /// Retention / compaction of the topic, and why.
    pub fn cleanup(self) -> Cleanup {
        match self {
            // Forecasts are replayed by audit and what-if: keep a month.
            Topic::Forecasts => Cleanup::Delete {
                retention_ms: Some(30 * DAY_MS),
            },
            // Configs are tiny and define every schedule: keep them all.
            Topic::Config => Cleanup::Delete { retention_ms: None },
            Topic::Telemetry => Cleanup::Delete {
                retention_ms: Some(7 * DAY_MS),
            },
            Topic::Ticks => Cleanup::Delete {
                retention_ms: Some(DAY_MS),
            },
            // Routers bootstrap from the latest decision per schedule; the full decision
            // history lives in the journal.
            Topic::Decisions => Cleanup::Compact,
            Topic::Rejections | Topic::DeadLetters => Cleanup::Delete {
                retention_ms: Some(30 * DAY_MS),
            },
            // The journal is the audit trail; restore only needs the tail after the
            // latest snapshot, so operators may shorten this.
            Topic::Journal => Cleanup::Delete { retention_ms: None },
            Topic::Snapshots => Cleanup::Compact,
        }
    }

    /// Topic-level configs to create the topic with.
    pub fn configs(self) -> Vec<(&'static str, String)> {
        match self.cleanup() {
            Cleanup::Compact => vec![("cleanup.policy", "compact".into())],
            Cleanup::Delete { retention_ms } => vec![
                ("cleanup.policy", "delete".into()),
                (
                    "retention.ms",
                    retention_ms.unwrap_or(FOREVER_MS).to_string(),
                ),
            ],
        }
    }
}

/// Topic names and partition counts of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicLayout {
    /// Prefix prepended to every topic name (e.g. `staging.`); may be empty.
    pub prefix: String,
    /// Partition count of every schedule-keyed topic.
    pub schedule_partitions: i32,
}

impl Default for TopicLayout {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            schedule_partitions: DEFAULT_SCHEDULE_PARTITIONS,
        }
    }
}

impl TopicLayout {
    /// Layout with a prefix and the default partition count.
    pub fn with_prefix(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
            ..Self::default()
        }
    }

    /// Full name of `topic`.
    pub fn name(&self, topic: Topic) -> String {
        format!("{}{}", self.prefix, topic.base_name())
    }

    /// Partition count of `topic`.
    pub fn partitions(&self, topic: Topic) -> i32 {
        if topic.is_schedule_keyed() {
            self.schedule_partitions
        } else {
            1
        }
    }

    /// Which topic a full name refers to, if it is one of ours.
    pub fn topic_of(&self, full_name: &str) -> Option<Topic> {
        let base = full_name.strip_prefix(&self.prefix)?;
        Topic::ALL.into_iter().find(|t| t.base_name() == base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_prefix_and_map_back() {
        let l = TopicLayout::with_prefix("t1.");
        assert_eq!(l.name(Topic::Decisions), "t1.schedule.decisions");
        assert_eq!(l.topic_of("t1.schedule.decisions"), Some(Topic::Decisions));
        assert_eq!(l.topic_of("schedule.decisions"), None);
        assert_eq!(l.partitions(Topic::Forecasts), 1);
        assert_eq!(l.partitions(Topic::Journal), DEFAULT_SCHEDULE_PARTITIONS);
    }
}
