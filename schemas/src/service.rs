//! What every long-running carbonflow binary starts the same way: structured logs to
//! stderr (stdout stays free for command output) and one shutdown signal (Ctrl-C or
//! SIGTERM, as Kubernetes sends) turned into a cancellation token.

use tokio_util::sync::CancellationToken;

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
