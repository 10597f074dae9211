//! carbonflow's publishers: topic creation ([`topics`]), forecasts from scenario files
//! and CSV ([`scenario`], [`forecasts`]), forecast APIs ([`providers`], polled by [`poll`]), and schedule configs, deletions and manual
//! overrides ([`schedule`]).

pub mod forecasts;
pub mod poll;
pub mod providers;
pub mod scenario;
pub mod schedule;
pub mod topics;

/// Wall clock, epoch ms (stamps records; never used to derive forecast timestamps).
pub use carbonflow_schemas::service::now_ms;
