//! What every long-running carbonflow binary starts the same way: structured logs to
//! stderr (stdout stays free for command output), one shutdown signal (Ctrl-C or
//! SIGTERM, as Kubernetes sends) turned into a cancellation token, the Prometheus
//! recorder, and the wall clock (for stamping records and measuring latency only —
//! deciding never reads it).

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::bus::LagMetrics;

/// Buckets of every `*_seconds` histogram: decisions and requests take milliseconds and
/// the tail matters.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];

/// Wall clock, epoch ms.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Install the global metrics recorder; the handle renders `/metrics`.
pub fn install_metrics() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .install_recorder()
}

/// Content type of the `/metrics` text.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// What `/metrics` answers: the recorder's series followed by consumer lag.
pub fn metrics_text(handle: &PrometheusHandle, lag: &LagMetrics) -> String {
    let mut text = handle.render();
    text.push_str(&lag.render(now_ms()));
    text
}

/// Log with `tracing` to stderr; `RUST_LOG` filters (default: info, librdkafka warnings).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,rdkafka=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Cancel `token` on Ctrl-C or SIGTERM (spawned; needs a tokio runtime).
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = ctrl_c => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
        tracing::info!("stop requested: finishing in-flight work");
        token.cancel();
    });
}
