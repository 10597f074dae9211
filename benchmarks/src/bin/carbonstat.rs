//! `carbonstat`: the sample flavour service (see `carbonflow_benchmarks::carbonstat`).
//! `GET /precision-NN/stats?n=POINTS` computes over NN % of the input; `GET /metrics`
//! counts requests and points computed per flavour (the work, hence energy, each did).

use std::collections::HashMap;
use std::net::SocketAddr;

use anyhow::Context;
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use carbonflow_benchmarks::carbonstat::{compute, precision_of};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "carbonstat",
    about = "Sample flavour service: one computation at 100 %, 50 % and 30 % of its input, one path prefix per flavour"
)]
struct Cli {
    /// Address to listen on; repeat (or comma-separate) to serve the same routes on
    /// several (one port per upstream in a proxy's upstream list).
    #[arg(
        long,
        env = "CARBONSTAT_LISTEN",
        value_delimiter = ',',
        default_value = "127.0.0.1:8100"
    )]
    listen: Vec<SocketAddr>,
    /// Points in the full input (work per full-precision request).
    #[arg(long, env = "CARBONSTAT_POINTS", default_value_t = 20_000)]
    points: usize,
}

async fn handle(
    Path((flavour, _rest)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    points: usize,
) -> Response {
    let Some(precision) = precision_of(&flavour) else {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(
                serde_json::json!({"error": "unknown_flavour", "flavour": flavour,
                "detail": "paths start with /precision-NN/ with NN in 1..=100"}),
            ),
        )
            .into_response();
    };
    let n = q
        .get("n")
        .and_then(|n| n.parse().ok())
        .unwrap_or(points)
        .clamp(1, 10_000_000);
    let stats = compute(&flavour, precision, n);
    // Bounded label: only `precision-NN` with NN in 1..=100 gets here.
    metrics::counter!("carbonstat_requests_total", "flavour" => flavour.clone()).increment(1);
    metrics::counter!("carbonstat_points_total", "flavour" => flavour).increment(stats.used as u64);
    axum::Json(stats).into_response()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let points = cli.points;
    let handle_metrics =
        carbonflow_schemas::service::install_metrics().context("installing metrics")?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || std::future::ready(handle_metrics.render())),
        )
        .route(
            "/{flavour}/{*rest}",
            axum::routing::get(move |p, q| handle(p, q, points)),
        );
    let shutdown = tokio_util::sync::CancellationToken::new();
    carbonflow_schemas::service::cancel_on_signal(shutdown.clone());
    let mut servers = Vec::new();
    for addr in &cli.listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        eprintln!(
            "carbonstat on http://{addr} (flavours /precision-100, /precision-50, /precision-30)"
        );
        let (app, stop) = (app.clone(), shutdown.clone());
        servers.push(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        }));
    }
    for server in servers {
        server.await.context("server task")?.context("serving")?;
    }
    Ok(())
}
