//! The journal and snapshots on Kafka: how a partition's state is written down and how it
//! is restored.
//!
//! Journal (`processor.journal`, partition p): one [`JournalEntry`] per input applied to
//! partition p's state, in the order applied, carrying the input record as consumed and
//! its position. Entries are written in [`JournalBatch`] records (older journals hold one
//! entry per record; [`journal_entries`] reads both). State = fold of
//! [`PartitionState::apply`] over the entries.
//!
//! Snapshots (`processor.snapshots`, partition p, compacted): the state after a journal
//! prefix, with `journal_next_offset` = offset of the last *record* folded in **+ 1**
//! (a batch is folded whole), so restore never re-applies that record and never skips
//! the one after it.
//!
//! Restore of partition p = latest readable snapshot + the journal from its
//! `journal_next_offset` to the end, then a scan of `schedule.decisions` written since the
//! snapshot: a decision whose journal entry was lost in a crash is *adopted* (its version
//! is taken, so no version is issued twice with different content), and a journaled
//! decision that never reached the topic is sent again (routers ignore versions they hold,
//! so a duplicate is harmless). Journal and decisions are written without transactions;
//! these two rules are what make the outputs exactly-once in effect.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use carbonflow_schemas::bus::{KafkaArgs, Topic};
use carbonflow_schemas::records::{
    InputPosition, JournalEntry, PartitionSnapshot, ScheduleDecision, journal_entries,
};
use carbonflow_schemas::{CodecError, decode};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::state::{Input, Output, PartitionState, STATE_FORMAT};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;

/// How long a restore read waits for the broker before giving up.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a partition could not be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// The broker refused or timed out.
    #[error("restoring partition {partition}: kafka {operation} failed: {source}")]
    Kafka {
        /// Partition being restored.
        partition: i32,
        /// What we were doing.
        operation: String,
        /// Client error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Reading stopped before the end offset measured at the start.
    #[error(
        "restoring partition {partition}: {topic} stopped at offset {at} before its end {end} (no record for {timeout:?})"
    )]
    Stalled {
        /// Partition being restored.
        partition: i32,
        /// Topic read.
        topic: String,
        /// Offset reached.
        at: i64,
        /// End expected.
        end: i64,
        /// Wait that expired.
        timeout: Duration,
    },
    /// A journal entry cannot be read: the journal is the truth, so restore stops.
    #[error("journal {topic} partition {partition} offset {offset} is unreadable: {source}")]
    Journal {
        /// Journal topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Offset of the unreadable journal record.
        offset: i64,
        /// Decode error.
        #[source]
        source: CodecError,
    },
    /// The client configuration is unusable.
    #[error(transparent)]
    Config(#[from] carbonflow_schemas::bus::BusError),
    /// The state inside the snapshot could not be encoded.
    #[error("encoding the state of partition {partition}: {source}")]
    Encode {
        /// Partition.
        partition: i32,
        /// Error.
        #[source]
        source: serde_json::Error,
    },
}

/// A partition restored from the log.
#[derive(Debug)]
pub struct Restored {
    /// The state.
    pub state: PartitionState,
    /// Next journal offset to write (entries end here).
    pub journal_next: i64,
    /// Decisions offset from which later decisions are known delivered only by scanning.
    pub decisions_next: i64,
    /// Whether a snapshot was used.
    pub from_snapshot: bool,
    /// Journal entries replayed after the snapshot.
    pub replayed: u64,
    /// Entries whose recorded decision versions differ from the replay (should be 0).
    pub divergent: u64,
    /// Decisions found on the topic but missing from the journal; the caller journals
    /// them as [`Input::Adopted`] before anything else.
    pub orphans: Vec<(InputPosition, Vec<u8>)>,
    /// Journaled decisions that never reached the topic; the caller sends them again.
    pub unsent: Vec<ScheduleDecision>,
    /// Schedules deleted during the replayed tail; the caller sends their tombstones again.
    pub removed: Vec<String>,
    /// Time the restore took.
    pub took: Duration,
}

/// The encoded snapshot of `state` after journal offset `journal_next - 1`.
pub fn snapshot_of(
    state: &PartitionState,
    journal_next: i64,
    decisions_next: i64,
) -> Result<PartitionSnapshot, RestoreError> {
    Ok(PartitionSnapshot {
        partition: state.partition,
        journal_next_offset: journal_next,
        decisions_next_offset: decisions_next,
        clock_ms: state.clock_ms,
        state_format: STATE_FORMAT,
        state: encode_state(state)?,
    })
}

/// A partition state as snapshots hold it: JSON, gzip-compressed. JSON of many schedules
/// repeats the same keys, so it shrinks about tenfold, which keeps a partition of 10,000
/// schedules under the broker's default 1 MB record limit.
fn encode_state(state: &PartitionState) -> Result<Vec<u8>, RestoreError> {
    let encode = |source| RestoreError::Encode {
        partition: state.partition,
        source,
    };
    // The JSON is written whole, then compressed in one call: fed serde's many small
    // writes, flate2 zero-fills its output buffer on each, which made a 10,000-schedule
    // snapshot take most of a second.
    let json = serde_json::to_vec(state).map_err(encode)?;
    let mut gz = GzEncoder::new(Vec::with_capacity(json.len() / 8), Compression::fast());
    gz.write_all(&json)
        .and_then(|()| gz.finish())
        .map_err(|e| encode(serde_json::Error::io(e)))
}

/// The state of a snapshot, `None` if it does not decode (restore then replays the journal).
fn decode_state(bytes: &[u8]) -> Option<PartitionState> {
    serde_json::from_reader(GzDecoder::new(bytes)).ok()
}

/// Apply one journal entry to `state`; returns the outputs the replay produced. An entry
/// whose record no longer decodes only advances the position, as the live path did when
/// it dead-lettered that record.
pub fn replay_entry(state: &mut PartitionState, entry: &JournalEntry) -> Vec<Output> {
    if state.already_applied(&entry.input) {
        return vec![];
    }
    match Input::decode_record(&entry.record) {
        Ok(input) => state.apply(&input, &entry.input),
        Err(_) => {
            state.skip(&entry.input);
            vec![]
        }
    }
}

/// Reads partitions of our topics from a start offset to the end measured at the start.
pub struct RangeReader {
    consumer: BaseConsumer,
    partition: i32,
}

impl RangeReader {
    /// A reader of partition `partition` of any topic.
    pub fn new(args: &KafkaArgs, partition: i32) -> Result<Self, RestoreError> {
        let consumer: BaseConsumer = args
            .consumer_config(
                &format!("carbonflow-restore-{partition}"),
                "carbonflow-restore",
            )?
            .create()
            .map_err(|source| RestoreError::Kafka {
                partition,
                operation: "create consumer".into(),
                source,
            })?;
        Ok(Self {
            consumer,
            partition,
        })
    }

    fn kafka(&self, operation: String) -> impl FnOnce(rdkafka::error::KafkaError) -> RestoreError {
        let partition = self.partition;
        move |source| RestoreError::Kafka {
            partition,
            operation,
            source,
        }
    }

    /// `(low, high)` watermarks: the first offset kept and the next offset to be written.
    pub fn watermarks(&self, topic: &str) -> Result<(i64, i64), RestoreError> {
        self.consumer
            .fetch_watermarks(topic, self.partition, READ_TIMEOUT)
            .map_err(self.kafka(format!("read end offsets of {topic}")))
    }

    /// Call `f(offset, payload)` for every record of `topic` in `[from, end)`.
    pub fn read(
        &self,
        topic: &str,
        from: i64,
        end: i64,
        mut f: impl FnMut(i64, Option<&[u8]>) -> Result<(), RestoreError>,
    ) -> Result<(), RestoreError> {
        if from >= end {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, self.partition, Offset::Offset(from))
            .map_err(self.kafka(format!("assign {topic}")))?;
        self.consumer
            .assign(&tpl)
            .map_err(self.kafka(format!("assign {topic}")))?;
        let mut at = from;
        while at < end {
            match self.consumer.poll(READ_TIMEOUT) {
                Some(Ok(m)) => {
                    at = m.offset() + 1;
                    if m.offset() < end {
                        f(m.offset(), m.payload())?;
                    }
                }
                Some(Err(e)) => return Err(self.kafka(format!("read {topic}"))(e)),
                None => {
                    return Err(RestoreError::Stalled {
                        partition: self.partition,
                        topic: topic.into(),
                        at,
                        end,
                        timeout: READ_TIMEOUT,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Restore `partition` from the journal, using the latest snapshot unless
/// `use_snapshot` is false (then the whole journal is folded: audit and tests).
/// Blocking; call from a blocking thread.
pub fn restore(
    args: &KafkaArgs,
    partition: i32,
    use_snapshot: bool,
) -> Result<Restored, RestoreError> {
    let started = Instant::now();
    let layout = args.layout();
    let reader = RangeReader::new(args, partition)?;
    let mut state = PartitionState::new(partition);
    let (mut journal_from, mut decisions_from, mut from_snapshot) = (0, 0, false);

    if use_snapshot {
        let topic = layout.name(Topic::Snapshots);
        let (low, high) = reader.watermarks(&topic)?;
        // The last few records suffice: the newest readable snapshot wins.
        reader.read(&topic, low.max(high - 4), high, |_, payload| {
            let Some(snap) = payload.and_then(|p| decode::<PartitionSnapshot>(p).ok()) else {
                return Ok(());
            };
            if snap.state_format != STATE_FORMAT || snap.partition != partition {
                return Ok(());
            }
            if let Some(s) = decode_state(&snap.state) {
                state = s;
                journal_from = snap.journal_next_offset;
                decisions_from = snap.decisions_next_offset;
                from_snapshot = true;
            }
            Ok(())
        })?;
    }

    // Journal tail.
    let journal = layout.name(Topic::Journal);
    let (low, journal_end) = reader.watermarks(&journal)?;
    if !from_snapshot && low > 0 {
        tracing::warn!(
            partition,
            first_offset = low,
            "journal starts at offset {low}: older entries were deleted by retention and no snapshot covers them; the state folds only what is left"
        );
    }
    let (mut replayed, mut divergent) = (0_u64, 0_u64);
    let mut last_decision: BTreeMap<String, ScheduleDecision> = BTreeMap::new();
    let mut removed = Vec::new();
    reader.read(
        &journal,
        journal_from.max(low),
        journal_end,
        |offset, payload| {
            let entries = journal_entries(payload.unwrap_or_default()).map_err(|source| {
                RestoreError::Journal {
                    topic: journal.clone(),
                    partition,
                    offset,
                    source,
                }
            })?;
            for (index, entry) in entries.iter().enumerate() {
                let outputs = replay_entry(&mut state, entry);
                replayed += 1;
                let produced: Vec<(String, i64)> = outputs
                    .iter()
                    .filter_map(|o| match o {
                        Output::Decision(d) => Some((d.schedule.clone(), d.version)),
                        _ => None,
                    })
                    .collect();
                let recorded: Vec<(String, i64)> = entry
                    .decisions
                    .iter()
                    .map(|d| (d.schedule.clone(), d.version))
                    .collect();
                if produced != recorded {
                    divergent += 1;
                    tracing::error!(
                        partition,
                        offset,
                        index,
                        ?produced,
                        ?recorded,
                        "journal replay diverges from what was recorded"
                    );
                }
                for o in outputs {
                    match o {
                        Output::Decision(d) => {
                            removed.retain(|s| s != &d.schedule);
                            last_decision.insert(d.schedule.clone(), *d);
                        }
                        Output::Removed { schedule } => {
                            last_decision.remove(&schedule);
                            removed.push(schedule);
                        }
                        Output::Rejection(_) => {}
                    }
                }
            }
            Ok(())
        },
    )?;

    // Decisions written since the snapshot: which reached the topic, and which are orphans.
    let decisions = layout.name(Topic::Decisions);
    let (low, decisions_end) = reader.watermarks(&decisions)?;
    let mut on_topic: BTreeMap<String, (i64, i64, Vec<u8>)> = BTreeMap::new();
    reader.read(
        &decisions,
        decisions_from.max(low),
        decisions_end,
        |offset, payload| {
            if let Some(d) = payload.and_then(|p| decode::<ScheduleDecision>(p).ok()) {
                let held = on_topic.get(&d.schedule).map_or(i64::MIN, |(v, _, _)| *v);
                if d.version > held {
                    on_topic.insert(
                        d.schedule.clone(),
                        (d.version, offset, payload.unwrap_or_default().to_vec()),
                    );
                }
            }
            Ok(())
        },
    )?;
    let mut orphans = Vec::new();
    for (schedule, (version, offset, bytes)) in &on_topic {
        let journaled = state.schedules.get(schedule).map_or(0, |s| s.version);
        if *version > journaled {
            orphans.push((
                InputPosition {
                    topic: decisions.clone(),
                    partition,
                    offset: *offset,
                },
                bytes.clone(),
            ));
        }
    }
    let unsent = last_decision
        .into_values()
        .filter(|d| {
            on_topic
                .get(&d.schedule)
                .is_none_or(|(v, _, _)| *v < d.version)
        })
        .collect();
    Ok(Restored {
        state,
        journal_next: journal_end,
        decisions_next: decisions_end,
        from_snapshot,
        replayed,
        divergent,
        orphans,
        unsent,
        removed,
        took: started.elapsed(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use carbonflow_schemas::records::{ConfigCommand, InputPosition};
    use carbonflow_schemas::testing::samples;

    #[test]
    fn snapshot_state_round_trips_compressed() {
        let mut state = PartitionState::new(0);
        for i in 0..200 {
            let mut c = samples::schedule_config();
            c.schedule = format!("bench/s{i}");
            let pos = InputPosition {
                topic: "schedule.config".into(),
                partition: 0,
                offset: i,
            };
            state.apply(&Input::Config(ConfigCommand::Config(Box::new(c))), &pos);
        }
        let snap = snapshot_of(&state, 200, 17).expect("encodes");
        assert_eq!(snap.state_format, STATE_FORMAT);
        assert_eq!(decode_state(&snap.state), Some(state.clone()));
        let json = serde_json::to_vec(&state).expect("json");
        assert!(
            snap.state.len() * 5 < json.len(),
            "compressed {} bytes vs {} of JSON",
            snap.state.len(),
            json.len()
        );
        assert_eq!(decode_state(b"not gzip"), None);
    }
}
