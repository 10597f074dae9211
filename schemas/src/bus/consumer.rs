//! Reading our topics: bounded range reads (restore, audit, bootstrap, tests) and the
//! consumers the long-running loops read inputs with.
//!
//! Neither commits offsets to Kafka: positions live next to the state they describe (the
//! processor's journal) or are not kept at all (routers re-read decisions at start). A
//! position handed to these functions is always the *next* offset to read (last
//! processed + 1), Kafka's committed-offset convention.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use super::admin::partition_count;
use super::{BusError, KafkaArgs, LagContext, LagMetrics};

/// How long a range read waits for the broker before giving up.
const READ_TIMEOUT: Duration = Duration::from_secs(30);

/// One record of a range read.
#[derive(Debug, Clone, Copy)]
pub struct RangeRecord<'a> {
    /// Its offset.
    pub offset: i64,
    /// Its key, if any.
    pub key: Option<&'a [u8]>,
    /// Its value; `None` for a tombstone.
    pub payload: Option<&'a [u8]>,
    /// Its Kafka timestamp, epoch ms (the producer's create time), if it has one.
    pub timestamp_ms: Option<i64>,
}

/// Reads `[from, end)` of a partition, where `end` is measured before reading: what a
/// restore, an audit or a bootstrap must see, and nothing written after it started.
pub struct RangeReader {
    consumer: BaseConsumer,
}

impl RangeReader {
    /// A reader with client and group id `client_id` (the group is never joined; librdkafka
    /// only needs one).
    pub fn new(args: &KafkaArgs, client_id: &str) -> Result<Self, BusError> {
        let consumer: BaseConsumer = args
            .consumer_config(client_id, client_id)?
            .create()
            .map_err(|e| BusError::kafka("create a range reader", e))?;
        Ok(Self { consumer })
    }

    /// Partitions of `topic`; [`BusError::TopicMissing`] if it does not exist.
    pub fn partitions(&self, topic: &str) -> Result<i32, BusError> {
        partition_count(&self.consumer, topic)
    }

    /// `(low, high)` watermarks: the first offset kept and the next offset to be written.
    pub fn watermarks(&self, topic: &str, partition: i32) -> Result<(i64, i64), BusError> {
        self.consumer
            .fetch_watermarks(topic, partition, READ_TIMEOUT)
            .map_err(|e| BusError::kafka(format!("read end offsets of {topic}/{partition}"), e))
    }

    /// `(low, high)` watermarks of each of `partitions` (topic, partition), read with two
    /// requests whatever their number, where [`watermarks`](Self::watermarks) makes two
    /// per partition: a takeover reads several, and each request is a broker round trip.
    pub fn watermarks_of(&self, partitions: &[(&str, i32)]) -> Result<Vec<(i64, i64)>, BusError> {
        // Offsets for the "times" -2 and -1: Kafka's earliest and latest offsets.
        let ends = |at: Offset| -> Result<TopicPartitionList, BusError> {
            let mut tpl = TopicPartitionList::new();
            for &(topic, partition) in partitions {
                add_offset(&mut tpl, topic, partition, at)?;
            }
            self.consumer
                .offsets_for_times(tpl, READ_TIMEOUT)
                .map_err(|e| BusError::kafka("read end offsets", e))
        };
        let (low, high) = (ends(Offset::Beginning)?, ends(Offset::End)?);
        partitions
            .iter()
            .map(|&(topic, partition)| {
                let offset = |tpl: &TopicPartitionList| {
                    let e = tpl.find_partition(topic, partition);
                    match e.as_ref().map(|e| (e.error(), e.offset())) {
                        Some((Ok(()), Offset::Offset(o))) => Ok(o),
                        Some((Err(err), _)) => Err(BusError::kafka(
                            format!("read end offsets of {topic}/{partition}"),
                            err,
                        )),
                        _ => Err(BusError::kafka(
                            format!("read end offsets of {topic}/{partition}"),
                            rdkafka::error::KafkaError::OffsetFetch(
                                rdkafka::types::RDKafkaErrorCode::OffsetNotAvailable,
                            ),
                        )),
                    }
                };
                Ok((offset(&low)?, offset(&high)?))
            })
            .collect()
    }

    /// Call `f` for every record of `topic`/`partition` in `[from, end)`, in offset order.
    /// Offsets missing from the range (compaction) are passed over. `f` stops the read by
    /// returning an error, which is returned as it is.
    pub fn read<E: From<BusError>>(
        &self,
        topic: &str,
        partition: i32,
        from: i64,
        end: i64,
        mut f: impl FnMut(RangeRecord<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        if from >= end {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        add_position(&mut tpl, topic, partition, from)?;
        self.consumer
            .assign(&tpl)
            .map_err(|e| BusError::kafka(format!("assign {topic}/{partition}"), e))?;
        let mut at = from;
        while at < end {
            match self.consumer.poll(READ_TIMEOUT) {
                Some(Ok(m)) => {
                    // +1: `at` is the next offset to read.
                    at = m.offset() + 1;
                    if m.offset() < end {
                        f(RangeRecord {
                            offset: m.offset(),
                            key: m.key(),
                            payload: m.payload(),
                            timestamp_ms: m.timestamp().to_millis(),
                        })?;
                    }
                }
                Some(Err(e)) => {
                    return Err(BusError::kafka(format!("read {topic}/{partition}"), e).into());
                }
                None => {
                    return Err(BusError::Stalled {
                        topic: topic.into(),
                        partition,
                        at,
                        end,
                        timeout: READ_TIMEOUT,
                    }
                    .into());
                }
            }
        }
        Ok(())
    }
}

/// Add `topic`/`partition` at `next` (the next offset to read) to `tpl`.
pub fn add_position(
    tpl: &mut TopicPartitionList,
    topic: &str,
    partition: i32,
    next: i64,
) -> Result<(), BusError> {
    add_offset(tpl, topic, partition, Offset::Offset(next))
}

/// Add `topic`/`partition` at `offset` (e.g. [`Offset::Beginning`]) to `tpl`.
pub fn add_offset(
    tpl: &mut TopicPartitionList,
    topic: &str,
    partition: i32,
    offset: Offset,
) -> Result<(), BusError> {
    tpl.add_partition_offset(topic, partition, offset)
        .map_err(|e| BusError::kafka(format!("assign {topic}/{partition}"), e))
}

/// A consumer of the partitions and positions in `tpl`, assigned explicitly (no group
/// membership), reporting consumer lag for `group` into `lag`.
pub fn assigned_consumer(
    args: &KafkaArgs,
    client_id: &str,
    group: &str,
    lag: LagMetrics,
    tpl: &TopicPartitionList,
) -> Result<StreamConsumer<LagContext>, BusError> {
    let consumer: StreamConsumer<LagContext> = args
        .consumer_config(client_id, group)?
        .create_with_context(LagContext::new(group, lag))
        .map_err(|e| BusError::kafka(format!("create consumer {client_id}"), e))?;
    consumer
        .assign(tpl)
        .map_err(|e| BusError::kafka(format!("assign the partitions of {client_id}"), e))?;
    consumer.context().assigned(tpl);
    Ok(consumer)
}
