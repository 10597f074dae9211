//! Shared Kafka plumbing: every component talks to the broker through these pieces.
//!
//! * [`config`] — librdkafka client configuration from flags/env, with reasons;
//! * [`admin`] — idempotent topic creation;
//! * [`consumer`] — range reads of `[from, end)` and explicitly assigned input consumers;
//! * [`producer`] — the idempotent producer that encodes records;
//! * [`lag`] — consumer-lag gauges that follow partition ownership.

pub mod admin;
pub mod config;
pub mod consumer;
pub mod lag;
pub mod producer;

pub use crate::topics::{Topic, TopicLayout};
pub use config::{GroupMember, KafkaArgs};
pub use consumer::{RangeReader, RangeRecord, add_position, assigned_consumer};
pub use lag::{LagContext, LagMetrics, LagRow};
pub use producer::{Delivered, RecordProducer};

/// Errors of the Kafka plumbing.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// librdkafka refused or failed an operation.
    #[error("kafka {operation} failed: {source}")]
    Kafka {
        /// What we were doing, e.g. "create producer" or "produce to schedule.decisions".
        operation: String,
        /// The client error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A range read stopped before the end offset measured when it started.
    #[error(
        "reading {topic}/{partition} stopped at offset {at} before its end {end}: no record for {timeout:?}"
    )]
    Stalled {
        /// Topic read.
        topic: String,
        /// Partition read.
        partition: i32,
        /// Next offset that was expected.
        at: i64,
        /// End measured at the start (next offset to be written then).
        end: i64,
        /// Wait that expired.
        timeout: std::time::Duration,
    },
    /// A record could not be encoded.
    #[error(transparent)]
    Codec(#[from] crate::CodecError),
    /// A topic carbonflow needs does not exist.
    #[error(
        "topic {topic} does not exist: create carbonflow's topics first with `ingest topics create` (with the same --topic-prefix and --schedule-partitions)"
    )]
    TopicMissing {
        /// Topic name.
        topic: String,
    },
    /// A topic exists with settings we cannot use.
    #[error("topic {topic} exists with {found}, expected {expected}")]
    TopicMismatch {
        /// Topic name.
        topic: String,
        /// What the broker has.
        found: String,
        /// What carbonflow needs.
        expected: String,
    },
    /// A flag value is malformed.
    #[error("invalid {flag} value {value:?}: {expected}")]
    InvalidOption {
        /// Flag name.
        flag: &'static str,
        /// Value given.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
}

impl BusError {
    /// The producer's local queue was full (the broker is slow or unreachable).
    pub fn is_queue_full(&self) -> bool {
        self.production_error() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
    }

    /// The record is larger than the client or the broker accepts (`message.max.bytes`).
    pub fn is_message_too_large(&self) -> bool {
        // Client-side (librdkafka's own check) and broker-side refusals both map here.
        matches!(
            self.production_error(),
            Some(
                rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge
                    | rdkafka::types::RDKafkaErrorCode::InvalidMessageSize
            )
        )
    }

    fn production_error(&self) -> Option<rdkafka::types::RDKafkaErrorCode> {
        match self {
            Self::Kafka {
                source: rdkafka::error::KafkaError::MessageProduction(code),
                ..
            } => Some(*code),
            _ => None,
        }
    }

    /// librdkafka failed while doing `operation` ("create producer", "assign ...").
    pub fn kafka(operation: impl Into<String>, source: rdkafka::error::KafkaError) -> Self {
        Self::Kafka {
            operation: operation.into(),
            source,
        }
    }
}
