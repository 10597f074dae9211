//! Programs that exercise carbonflow from the outside: the sample flavour service
//! (`carbonstat`), the quickstart's load generator and live table (`demo`), and the
//! benchmarks of issue #7. Shared here: the carbonstat computation and a Prometheus text
//! reader.

pub mod carbonstat;
pub mod prom;
