//! The producer every component writes records with.
//!
//! Why one helper: every record is encoded the same way (single-object Avro), keyed the
//! same way (schedule id or zone), and awaited the same way — a write counts as done only
//! once the broker has acknowledged it, which is what lets callers advance their own
//! positions afterwards (offsets stored only after the output is delivered).

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use super::{BusError, KafkaArgs};
use crate::codec::{AvroRecord, encode};
use crate::records::ConfigCommand;
use crate::topics::{Topic, TopicLayout};

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// Partition written to.
    pub partition: i32,
    /// Offset of the record.
    pub offset: i64,
}

/// An idempotent producer of carbonflow records.
#[derive(Clone)]
pub struct RecordProducer {
    inner: FutureProducer,
}

impl RecordProducer {
    /// Connect with the idempotent producer settings of [`KafkaArgs::producer_config`].
    pub fn new(args: &KafkaArgs, client_id: &str) -> Result<Self, BusError> {
        let inner = args
            .producer_config(client_id)?
            .create()
            .map_err(|e| BusError::kafka("create producer", e))?;
        Ok(Self { inner })
    }

    /// As [`new`](Self::new), with librdkafka's gapless guarantee: a failure that could
    /// leave a gap in a partition's sequence (a record lost while later ones are written)
    /// is fatal to the producer instead. For writers whose records form a log that is
    /// folded in order (the processor's journal and decisions).
    pub fn gapless(args: &KafkaArgs, client_id: &str) -> Result<Self, BusError> {
        let mut config = args.producer_config(client_id)?;
        config.set("enable.gapless.guarantee", "true");
        let inner = config
            .create()
            .map_err(|e| BusError::kafka("create producer", e))?;
        Ok(Self { inner })
    }

    /// Publish a config command (config, override or deletion) to `schedule.config`,
    /// keyed by its schedule so the default partitioner puts it beside the schedule's
    /// other inputs. Resolves once the broker acknowledged it.
    pub async fn publish_config(
        &self,
        layout: &TopicLayout,
        command: &ConfigCommand,
    ) -> Result<Delivered, BusError> {
        let payload = command.encode()?;
        let topic = layout.name(Topic::Config);
        self.send_bytes(&topic, command.schedule().as_bytes(), None, &payload, None)
            .await
    }

    /// Encode and send `record` to `topic` with `key`; `partition` pins the partition
    /// (used by the processor to keep outputs next to their inputs). Resolves once the
    /// broker acknowledged the write.
    pub async fn send<T: AvroRecord>(
        &self,
        topic: &str,
        key: &str,
        partition: Option<i32>,
        record: &T,
    ) -> Result<Delivered, BusError> {
        let payload = encode(record)?;
        self.send_bytes(topic, key.as_bytes(), partition, &payload, None)
            .await
    }

    /// Send pre-encoded bytes (dead letters, copies). `timestamp_ms` sets the record's
    /// timestamp; `None` lets the client stamp it.
    pub async fn send_bytes(
        &self,
        topic: &str,
        key: &[u8],
        partition: Option<i32>,
        payload: &[u8],
        timestamp_ms: Option<i64>,
    ) -> Result<Delivered, BusError> {
        self.enqueue(topic, key, partition, Some(payload), timestamp_ms)
            .await?
            .await
    }

    /// Queue a record (or, with `payload: None`, a tombstone) and return at once with a
    /// future that resolves when the broker acknowledged it. Callers that must not wait
    /// per record (the processor's loop) keep the futures and check them later; records
    /// queued by one producer reach a partition in queue order.
    pub async fn enqueue(
        &self,
        topic: &str,
        key: &[u8],
        partition: Option<i32>,
        payload: Option<&[u8]>,
        timestamp_ms: Option<i64>,
    ) -> Result<impl Future<Output = Result<Delivered, BusError>> + Send + 'static, BusError> {
        self.queue(topic, key, partition, payload, timestamp_ms, true)
            .await
    }

    /// Like [`enqueue`](Self::enqueue) but never waits: when the local queue (bounded by
    /// `queue.buffering.max.*`) is full, fail at once with [`BusError::is_queue_full`].
    /// For records that may be dropped rather than delay their caller (router telemetry).
    pub async fn try_enqueue(
        &self,
        topic: &str,
        key: &[u8],
        partition: Option<i32>,
        payload: Option<&[u8]>,
    ) -> Result<impl Future<Output = Result<Delivered, BusError>> + Send + 'static, BusError> {
        self.queue(topic, key, partition, payload, None, false)
            .await
    }

    async fn queue(
        &self,
        topic: &str,
        key: &[u8],
        partition: Option<i32>,
        payload: Option<&[u8]>,
        timestamp_ms: Option<i64>,
        wait_when_full: bool,
    ) -> Result<impl Future<Output = Result<Delivered, BusError>> + Send + 'static, BusError> {
        let mut rec: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).key(key);
        if let Some(p) = payload {
            rec = rec.payload(p);
        }
        if let Some(p) = partition {
            rec = rec.partition(p);
        }
        if let Some(ts) = timestamp_ms {
            rec = rec.timestamp(ts);
        }
        let future = loop {
            match self.inner.send_result(rec) {
                Ok(f) => break f,
                // The local queue is full: wait for deliveries to drain it rather than fail;
                // delivery itself is bounded by librdkafka's message.timeout.ms.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if wait_when_full =>
                {
                    rec = back;
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Err((e, _)) => return Err(BusError::kafka(format!("produce to {topic}"), e)),
            }
        };
        let topic = topic.to_string();
        Ok(async move {
            match future.await {
                Ok(Ok(d)) => Ok(Delivered {
                    partition: d.partition,
                    offset: d.offset,
                }),
                Ok(Err((e, _))) => Err(BusError::kafka(format!("produce to {topic}"), e)),
                Err(_) => Err(BusError::kafka(
                    format!("produce to {topic}"),
                    KafkaError::Canceled,
                )),
            }
        })
    }

    /// Wait up to `timeout` for every queued record to be delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.inner
            .flush(timeout)
            .map_err(|e| BusError::kafka("flush producer", e))
    }
}
