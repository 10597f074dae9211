//! Writes in flight: every record the pipeline produces is queued here on one idempotent
//! producer without waiting, and its delivery is checked as it completes. Records queued
//! for one partition reach it in queue order, so a journal batch queued after a decision
//! is never acknowledged before it.
//!
//! Also the unwritten journal batch of a partition ([`UnwrittenBatch`]): entries applied
//! to the state but not yet queued, written as [`JournalBatch`] records that stay well
//! under the broker's record size limit.

use std::collections::VecDeque;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};

use carbonflow_schemas::bus::{BusError, Delivered, RecordProducer, Topic, TopicLayout};
use carbonflow_schemas::records::{DecisionRef, JournalBatch, JournalEntry};
use carbonflow_schemas::{AvroRecord, encode};

/// A partition's journal batch is written once it holds this many entries, or
/// [`JOURNAL_BATCH_BYTES`] of input records and decision refs, if inputs keep arriving;
/// otherwise as soon as none is waiting.
const JOURNAL_BATCH_ENTRIES: usize = 1000;
/// Bytes that fill a batch: well under the broker's default 1 MB record limit.
const JOURNAL_BATCH_BYTES: usize = 256 * 1024;
/// Decision refs one journal entry holds at most, in bytes; more continue in further
/// entries of the same input.
const ENTRY_REFS_BYTES: usize = 128 * 1024;

/// What a queued record was, for the offsets it advances and for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    Journal,
    Decision,
    /// A rejection, tombstone or dead letter: no offset is tracked for these.
    Other,
}

impl Written {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Written::Journal => "a journal entry",
            Written::Decision => "a decision",
            Written::Other => "a rejection, tombstone or dead letter",
        }
    }
}

/// A write that completed, successfully or not.
pub(crate) struct Delivery {
    pub(crate) partition: i32,
    pub(crate) written: Written,
    /// Kafka timestamp of the input that caused a decision (latency metric).
    pub(crate) input_ts_ms: Option<i64>,
    pub(crate) result: Result<Delivered, BusError>,
}

/// A record could not be queued or was not acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("writing {what} for partition {partition} failed: {source}")]
pub struct WriteFailed {
    /// Journal entry, decision, snapshot...
    pub what: &'static str,
    /// Schedule partition.
    pub partition: i32,
    /// Why: the record did not encode, could not be queued, or the broker refused it.
    #[source]
    pub source: Box<BusError>,
}

impl WriteFailed {
    pub(crate) fn new(what: &'static str, partition: i32, source: BusError) -> Self {
        Self {
            what,
            partition,
            source: Box::new(source),
        }
    }
}

impl Delivery {
    /// The broker's acknowledgement, or the failure named after what was written.
    pub(crate) fn acknowledged(self) -> Result<Delivered, WriteFailed> {
        self.result
            .map_err(|source| WriteFailed::new(self.written.describe(), self.partition, source))
    }
}

/// Records queued and not yet acknowledged.
pub(crate) struct Outbox {
    producer: RecordProducer,
    layout: TopicLayout,
    pending: FuturesUnordered<BoxFuture<'static, Delivery>>,
}

impl Outbox {
    pub(crate) fn new(producer: RecordProducer, layout: TopicLayout) -> Self {
        Self {
            producer,
            layout,
            pending: FuturesUnordered::new(),
        }
    }

    /// The producer, for writes that wait for their acknowledgement (snapshots, ticks).
    pub(crate) fn producer(&self) -> &RecordProducer {
        &self.producer
    }

    /// Queue `payload` (or a tombstone) for `topic` partition `partition`.
    pub(crate) async fn queue(
        &mut self,
        topic: Topic,
        partition: i32,
        key: &[u8],
        payload: Option<&[u8]>,
        written: Written,
        input_ts_ms: Option<i64>,
    ) -> Result<(), WriteFailed> {
        let fut = self
            .producer
            .enqueue(
                &self.layout.name(topic),
                key,
                Some(partition),
                payload,
                None,
            )
            .await
            .map_err(|source| WriteFailed::new(written.describe(), partition, source))?;
        self.pending.push(
            async move {
                Delivery {
                    partition,
                    written,
                    input_ts_ms,
                    result: fut.await,
                }
            }
            .boxed(),
        );
        Ok(())
    }

    /// Encode `record` and queue it.
    pub(crate) async fn queue_record<T: AvroRecord>(
        &mut self,
        topic: Topic,
        partition: i32,
        key: &str,
        record: &T,
        written: Written,
        input_ts_ms: Option<i64>,
    ) -> Result<(), WriteFailed> {
        let bytes = encode(record)
            .map_err(|e| WriteFailed::new(written.describe(), partition, e.into()))?;
        let key = key.as_bytes();
        self.queue(topic, partition, key, Some(&bytes), written, input_ts_ms)
            .await
    }

    /// The next completed write; pending forever when nothing is queued (for `select!`).
    pub(crate) async fn next(&mut self) -> Option<Delivery> {
        self.pending.next().await
    }
}

/// Journal entries of one partition applied to its state but not yet queued, oldest first.
#[derive(Debug, Default)]
pub(crate) struct UnwrittenBatch {
    entries: VecDeque<JournalEntry>,
    /// Bytes the entries hold (input records and decision references).
    bytes: usize,
}

/// Bytes of `entry` that grow with its content: the input record and its decision refs
/// (a ref is its schedule id plus at most 10 bytes of varint version and lengths).
fn entry_bytes(entry: &JournalEntry) -> usize {
    entry.record.len() + refs_bytes(&entry.decisions)
}

fn refs_bytes(refs: &[DecisionRef]) -> usize {
    refs.iter().map(|d| d.schedule.len() + 10).sum()
}

/// `entry` as one entry, or, when its decision refs alone exceed [`ENTRY_REFS_BYTES`], as
/// the entry with the first refs followed by continuation entries: the same input
/// position, no record, the next refs. One forecast can re-decide every schedule of a
/// partition, and 100,000 refs would not fit in one record; readers re-join the refs of
/// consecutive entries of one input (see `carbonflow_core::reconcile`).
fn split(mut entry: JournalEntry) -> Vec<JournalEntry> {
    if refs_bytes(&entry.decisions) <= ENTRY_REFS_BYTES {
        return vec![entry];
    }
    let mut chunks: Vec<Vec<DecisionRef>> = vec![];
    let mut bytes = 0;
    for r in std::mem::take(&mut entry.decisions) {
        let size = r.schedule.len() + 10;
        match chunks.last_mut() {
            Some(chunk) if bytes + size <= ENTRY_REFS_BYTES => {
                bytes += size;
                chunk.push(r);
            }
            _ => {
                bytes = size;
                chunks.push(vec![r]);
            }
        }
    }
    let mut parts = Vec::with_capacity(chunks.len());
    for (i, decisions) in chunks.into_iter().enumerate() {
        parts.push(JournalEntry {
            partition: entry.partition,
            input: entry.input.clone(),
            record: if i == 0 {
                std::mem::take(&mut entry.record)
            } else {
                Vec::new()
            },
            decisions,
        });
    }
    parts
}

impl UnwrittenBatch {
    /// Add `entry` (split if its decision refs are many); true when enough is waiting
    /// that it should be written now.
    pub(crate) fn push(&mut self, entry: JournalEntry) -> bool {
        for part in split(entry) {
            self.bytes += entry_bytes(&part);
            self.entries.push_back(part);
        }
        self.entries.len() >= JOURNAL_BATCH_ENTRIES || self.bytes >= JOURNAL_BATCH_BYTES
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The next batch record of partition `partition`, written by its owner of `epoch`:
    /// the oldest entries, up to [`JOURNAL_BATCH_ENTRIES`] or [`JOURNAL_BATCH_BYTES`] (at
    /// least one); `None` when nothing is waiting. Take until `None` to write everything.
    pub(crate) fn take(&mut self, partition: i32, epoch: i64) -> Option<JournalBatch> {
        let mut entries = Vec::new();
        let mut bytes = 0;
        while let Some(next) = self.entries.front() {
            let size = entry_bytes(next);
            if !entries.is_empty()
                && (entries.len() >= JOURNAL_BATCH_ENTRIES || bytes + size > JOURNAL_BATCH_BYTES)
            {
                break;
            }
            bytes += size;
            entries.extend(self.entries.pop_front());
        }
        if entries.is_empty() {
            return None;
        }
        self.bytes -= bytes;
        Some(JournalBatch {
            partition,
            epoch,
            entries,
        })
    }
}

#[cfg(test)]
mod tests {
    use carbonflow_schemas::records::InputPosition;

    use super::*;

    fn entry(offset: i64, record: usize, refs: usize) -> JournalEntry {
        JournalEntry {
            partition: 0,
            input: InputPosition {
                topic: "carbon.forecasts".into(),
                partition: 0,
                offset,
            },
            record: vec![7; record],
            decisions: (0..refs)
                .map(|i| DecisionRef {
                    schedule: format!("team-{i}/schedule-{i}"),
                    version: 1,
                })
                .collect(),
        }
    }

    fn batches(unwritten: &mut UnwrittenBatch) -> Vec<JournalBatch> {
        std::iter::from_fn(|| unwritten.take(0, 1)).collect()
    }

    #[test]
    fn a_fan_out_entry_is_split_into_continuations_that_fit_in_records() {
        // Given one forecast that re-decided 100,000 schedules
        let mut unwritten = UnwrittenBatch::default();
        let whole = entry(41, 300, 100_000);
        // When it is pushed and written out
        assert!(unwritten.push(whole.clone()));
        let written = batches(&mut unwritten);
        // Then every record is well under the broker's 1 MB limit
        for b in &written {
            let bytes = encode(b).expect("encodes").len();
            assert!(bytes < 512 * 1024, "a batch of {bytes} bytes");
        }
        // and the entries are the input once, then continuations of the same position
        let entries: Vec<&JournalEntry> = written.iter().flat_map(|b| &b.entries).collect();
        assert!(entries.len() > 1);
        assert_eq!(entries[0].record, whole.record);
        assert!(entries.iter().all(|e| e.input == whole.input));
        assert!(entries[1..].iter().all(|e| e.record.is_empty()));
        // holding every ref, in order
        let refs: Vec<&DecisionRef> = entries.iter().flat_map(|e| &e.decisions).collect();
        assert_eq!(refs.len(), whole.decisions.len());
        assert!(refs.iter().zip(&whole.decisions).all(|(a, b)| *a == b));
        assert!(unwritten.is_empty());
    }

    #[test]
    fn small_entries_are_written_together_in_arrival_order() {
        let mut unwritten = UnwrittenBatch::default();
        for offset in 0..10 {
            assert!(!unwritten.push(entry(offset, 100, 1)));
        }
        let written = batches(&mut unwritten);
        assert_eq!(written.len(), 1);
        let offsets: Vec<i64> = written[0].entries.iter().map(|e| e.input.offset).collect();
        assert_eq!(offsets, (0..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_batch_stops_at_its_byte_bound() {
        let mut unwritten = UnwrittenBatch::default();
        for offset in 0..5 {
            unwritten.push(entry(offset, JOURNAL_BATCH_BYTES / 2, 0));
        }
        let sizes: Vec<usize> = batches(&mut unwritten)
            .iter()
            .map(|b| b.entries.len())
            .collect();
        assert_eq!(sizes, [2, 2, 1]);
    }
}
