//! The processor's shell: the Kafka and HTTP side of the decision engine. Everything that
//! decides lives in `carbonflow-core` (`processor/core`); this crate reads inputs, hands
//! them to the core's fold, writes what the fold returns, and serves the admin API.
//!
//! Modules, from the loop outwards: [`pipeline`] (the event loop: restore, assign,
//! consume, stop), `membership` (ownership by consumer group), `log_budget` (rate limits
//! of the log lines about bad records), `outbox` (writes in flight and the unwritten journal batch), `ticks`
//! (the clock written to the log), [`journal`] (restore and snapshots), `view` (the read
//! model), [`metrics`], [`admin`], [`access`] and `status` (HTTP), [`audit`] (reading the topics
//! for `processor audit`).

pub mod access;
pub mod admin;
pub mod audit;
pub mod journal;
mod log_budget;
mod membership;
pub mod metrics;
mod outbox;
pub mod pipeline;
mod status;
mod ticks;
pub mod view;
