//! carbonflow's wire contract and shared Kafka plumbing.
//!
//! Everything that crosses a topic is defined here once:
//!
//! * [`records`] — the Rust types of every record, mirroring the `.avsc` files under
//!   `schemas/avro/` (one folder per record, one file per schema version ever shipped);
//! * [`catalog`] — every schema version compiled into the binary, keyed by fingerprint;
//! * [`codec`] — Avro single-object encoding (`C3 01` + CRC-64-AVRO fingerprint + datum),
//!   decoding with the writer's schema resolved to the current reader schema;
//! * [`bus`] — topic names and settings, client configuration, the producer helper,
//!   topic creation and consumer-lag metrics;
//! * [`service`] — logging and shutdown signals shared by the binaries.
//!
//! With the `testing` feature, [`testing`] gives integration tests a running broker.

pub mod bus;
pub mod catalog;
pub mod codec;
pub mod records;
pub mod service;
#[cfg(feature = "testing")]
pub mod testing;

pub use codec::{AvroRecord, CodecError, decode, encode};
