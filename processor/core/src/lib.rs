//! carbonflow's decision core: everything that decides, and nothing that does I/O.
//!
//! A schedule's decision is a pure function of its inputs. This crate holds that function
//! and the event-sourced state it folds, so the processor binary is a thin Kafka shell
//! around it. The crate's dependencies make the purity a compile-time fact: no rdkafka,
//! tokio, HTTP or compression is reachable from here, and time enters only as event times
//! carried by records.
//!
//! Layout, from the ground up:
//!
//! * [`ledger`] — the credit account of quality delivered against the target;
//! * [`forecast`] — the forecast view at an event time;
//! * [`policy`] — one file per policy, behind one trait and one registry;
//! * [`throttle`] — throttle factor and replica ceilings;
//! * [`weights`] — integer percentages of exact weights;
//! * [`spec`] — the schedule spec people write, and its conversion to and from the
//!   config record;
//! * [`validate`] — the rules a config and a manual override must keep;
//! * [`gate`] — the plausibility every decoded input must have before the fold sees it;
//! * [`decide`] — all of the above composed into one decision;
//! * [`issued`] — a schedule's latest decision as the state keeps it: its record;
//! * [`state`] — a partition's state and the fold `apply(input) -> outputs`;
//! * [`reconcile`] — after a restore, what the journal and the decisions topic disagree on;
//! * [`contract`] — the reference engine's JSON contract of a decision;
//! * [`dry_run`] — `processor decide`: one JSON document in, one decision out;
//! * [`audit`] — differences, verification, accounting, explanations and export rows of
//!   re-derived decisions.

pub mod audit;
pub mod contract;
pub mod decide;
pub mod dry_run;
pub mod forecast;
pub mod gate;
pub mod issued;
pub mod ledger;
pub mod policy;
pub mod reconcile;
pub mod spec;
pub mod state;
pub mod throttle;
pub mod validate;
pub mod weights;
