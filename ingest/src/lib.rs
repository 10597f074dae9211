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
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
