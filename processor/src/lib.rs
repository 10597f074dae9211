//! The processor's shell: the Kafka and HTTP side of the decision engine. Everything that
//! decides lives in `carbonflow-core` (`processor/core`); this crate reads inputs, hands
//! them to the core's fold, writes what the fold returns, and serves the admin API.

pub mod admin;
pub mod audit;
pub mod journal;
pub mod metrics;
pub mod pipeline;
pub mod status;
