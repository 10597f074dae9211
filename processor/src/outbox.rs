//! Writes in flight: every record the pipeline produces is queued here on one idempotent
//! producer without waiting, and its delivery is checked as it completes. Records queued
//! for one partition reach it in queue order, so a journal batch queued after a decision
//! is never acknowledged before it.
//!
//! Also the unwritten journal batch of a partition ([`UnwrittenBatch`]): entries applied
//! to the state but not yet queued, written as one [`JournalBatch`] record.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};

use carbonflow_schemas::bus::{BusError, Delivered, RecordProducer, Topic, TopicLayout};
use carbonflow_schemas::records::{JournalBatch, JournalEntry};
use carbonflow_schemas::{AvroRecord, encode};

/// A partition's journal batch is written once it holds this many entries, or
/// [`JOURNAL_BATCH_BYTES`] of input records, if inputs keep arriving; otherwise as soon as
/// none is waiting.
const JOURNAL_BATCH_ENTRIES: usize = 1000;
/// Input bytes that fill a batch: well under the broker's default 1 MB record limit.
const JOURNAL_BATCH_BYTES: usize = 256 * 1024;

/// What a queued record was, for the offsets it advances and for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    Journal,
    Decision,
    /// A rejection, tombstone or dead letter: no offset is tracked for these.
    Other,
}

impl Written {
    fn describe(self) -> &'static str {
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
    entries: Vec<JournalEntry>,
    /// Input bytes the entries hold.
    bytes: usize,
}

impl UnwrittenBatch {
    /// Add `entry`; true when the batch is full and should be written now.
    pub(crate) fn push(&mut self, entry: JournalEntry) -> bool {
        self.bytes += entry.record.len();
        self.entries.push(entry);
        self.entries.len() >= JOURNAL_BATCH_ENTRIES || self.bytes >= JOURNAL_BATCH_BYTES
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The batch record of partition `partition`, written by its owner of `epoch`,
    /// leaving this empty; `None` if it was.
    pub(crate) fn take(&mut self, partition: i32, epoch: i64) -> Option<JournalBatch> {
        if self.entries.is_empty() {
            return None;
        }
        self.bytes = 0;
        Some(JournalBatch {
            partition,
            epoch,
            entries: std::mem::take(&mut self.entries),
        })
    }
}
