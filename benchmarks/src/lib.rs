//! Programs that exercise carbonflow from the outside: the sample flavour service
//! (`carbonstat`), the quickstart's load generator and live table (`demo`), and the
//! benchmarks under `src/bin` (propagation, weight fidelity, router overhead, processor
//! throughput, restore, policy quality), each printing its figures beside a yardstick.
//! Shared here: the carbonstat computation, synthetic topic history, the broker's
//! one-hop yardstick, GETs, closed- and open-loop load, the benchmark pipeline, charts, a Prometheus text reader and
//! latency summaries.

pub mod carbonstat;
pub mod history;
pub mod hop;
pub mod http;
pub mod load;
pub mod pipeline;
pub mod plot;
pub mod prom;
pub mod stats;

/// Wall clock, epoch ms.
pub use carbonflow_schemas::service::now_ms;
