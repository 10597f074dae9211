//! carbonflow's wire contract and shared Kafka plumbing.
//!
//! Everything that crosses a topic is defined here once:
//!
//! * [`records`] — the Rust types of every record, mirroring the `.avsc` files under
//!   `schemas/avro/` (one folder per record, one file per schema version ever shipped);
//! * [`catalog`] — every schema version compiled into the binary, keyed by fingerprint;
//! * [`codec`] — Avro single-object encoding (`C3 01` + CRC-64-AVRO fingerprint + datum),
//!   decoding with the writer's schema resolved to the current reader schema;
//! * [`time`] — event times: epoch ms ↔ RFC 3339, the one conversion;
//! * [`topics`] — topic names (with a prefix), partition counts, cleanup policies;
//! * [`upstream`] — the allow-list of upstreams, checked by the processor and the router;
//! * [`vocabulary`] — typed schedule ids, decision causes and fallback conditions, the
//!   meanings of the records' string fields;
//! * `bus` — client configuration, the producer helper, range reads, topic creation and
//!   consumer-lag metrics (feature `bus`, on by default: it is what links librdkafka);
//! * `service` — logging, shutdown signals, the metrics recorder and the wall clock
//!   shared by the binaries (feature `bus`).
//!
//! Without default features the crate is the records, codec and topic names alone: what
//! the pure decision core (`carbonflow-core`) depends on.
//!
//! With the `testing` feature, `testing` gives integration tests a running broker.

#[cfg(feature = "bus")]
pub mod bus;
pub mod catalog;
pub mod codec;
pub mod records;
#[cfg(feature = "bus")]
pub mod service;
#[cfg(feature = "testing")]
pub mod testing;
pub mod time;
pub mod topics;
pub mod upstream;
pub mod vocabulary;

pub use codec::{AvroRecord, CodecError, decode, encode};
