//! Publishers of carbonflow's inputs: topic creation today; forecast adapters, scenario
//! replay, schedule configs and overrides as they land.

pub mod topics;
