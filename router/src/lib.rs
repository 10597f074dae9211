//! The data plane: routers apply decisions the moment they are consumed, pick a flavour
//! per request, proxy it, and report what they served.
//!
//! Layout: [`select`] (weighted random and smooth round-robin over proportional weights),
//! [`table`] (the latest decision per schedule, version-gated, and expiry), [`follow`]
//! (the decisions consumer and bootstrap), [`proxy`] (forwarding and fallbacks),
//! `upstream` (each proxy worker's kept connections to the upstreams),
//! [`telemetry`] (per-second request buckets to `request.telemetry`), [`admin`] (health,
//! readiness, held decisions, `/metrics`, and the expiry watcher), [`metrics`] (every
//! metric the router exports).
//!
//! The public surface is what the `router` binary wires together; everything else is
//! crate-private.

pub mod admin;
pub mod follow;
pub mod listener;
pub mod metrics;
pub mod proxy;
mod resolve;
pub mod select;
pub mod served;
pub mod table;
pub mod telemetry;
pub mod tls;
mod upstream;

/// Wall clock, epoch ms.
pub use carbonflow_schemas::service::now_ms;
