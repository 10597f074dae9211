//! Programs that exercise carbonflow from the outside: the sample flavour service
//! (`carbonstat`), the quickstart's load generator and live table (`demo`), and the
//! benchmarks of issue #7 (`propagation`). Shared here: the carbonstat computation, a
//! Prometheus text reader, an HTTP GET client, latency summaries and the broker's
//! one-hop yardstick.

pub mod carbonstat;
pub mod history;
pub mod hop;
pub mod http;
pub mod pipeline;
pub mod plot;
pub mod prom;
pub mod stats;

/// Wall clock, epoch ms.
pub use carbonflow_schemas::service::now_ms;
