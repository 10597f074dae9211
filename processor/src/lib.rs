//! The decision engine: credit ledger, policies, throttle, and the pure function that
//! turns a schedule's inputs into a decision.
//!
//! Layout: [`ledger`] (the credit account), [`forecast`] (the forecast view at an event
//! time), [`policy`] (one file per policy), [`throttle`] (throttle factor and replica
//! ceilings), [`weights`] (integer percentages), [`validate`] (config rules), [`decide`]
//! (all of the above composed), [`dry_run`] (the `processor decide` command). Nothing here
//! reads a clock, does I/O or touches Kafka.

pub mod admin;
pub mod audit;
pub mod decide;
pub mod dry_run;
pub mod forecast;
pub mod journal;
pub mod ledger;
pub mod metrics;
pub mod pipeline;
pub mod policy;
pub mod spec;
pub mod state;
pub mod status;
pub mod throttle;
pub mod validate;
pub mod weights;
