//! The router's admin endpoints (health, readiness, held decisions, metrics) and the
//! expiry watcher that logs and exports expired decisions even when no request arrives.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use carbonflow_schemas::bus::LagMetrics;
use carbonflow_schemas::service::{METRICS_CONTENT_TYPE, metrics_text};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::now_ms;
use crate::table::DecisionTable;

/// What the admin endpoints read.
#[derive(Clone)]
pub struct AdminState {
    /// Set by the follower once caught up with the decisions topic; `/readyz` answers
    /// 503 until then.
    pub ready: Arc<AtomicBool>,
    /// The decisions `/decisions` lists.
    pub table: Arc<DecisionTable>,
    /// Consumer lag, appended to `/metrics`.
    pub lag: LagMetrics,
    /// The installed recorder, rendered by `/metrics`.
    pub metrics: PrometheusHandle,
    /// Milliseconds past `validUntil` before a decision counts as expired.
    pub expiry_grace_ms: i64,
    /// Cleared when the decisions follower has stopped: `/healthz` then fails, so that
    /// the router is restarted rather than left routing on decisions that no longer
    /// change.
    pub following: Arc<AtomicBool>,
}

/// `/healthz`, `/readyz`, `/decisions` and `/metrics`.
pub fn router(state: AdminState) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/decisions", get(decisions))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn healthz(State(s): State<AdminState>) -> Response {
    if s.following.load(Ordering::SeqCst) {
        axum::Json(json!({"status": "ok"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(
                json!({"status": "failed", "detail": "the decisions follower has stopped; restart the router"}),
            ),
        )
            .into_response()
    }
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, axum::Json(json!({"status": "ready"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(
                json!({"status": "bootstrapping", "detail": "reading the latest decisions"}),
            ),
        )
            .into_response()
    }
}

async fn decisions(State(s): State<AdminState>) -> Response {
    let now = now_ms();
    let mut all: Vec<serde_json::Value> = s
        .table
        .all()
        .iter()
        .map(|r| {
            json!({
                "schedule": r.decision.schedule,
                "version": r.decision.version,
                "validUntilMs": r.decision.valid_until_ms,
                "appliedAtMs": r.applied_at_ms,
                "expired": r.expired(now, s.expiry_grace_ms),
                "weights": r.decision.flavours.iter().map(|f| (f.name.clone(), f.weight)).collect::<HashMap<_, _>>(),
            })
        })
        .collect();
    all.sort_by(|a, b| a["schedule"].as_str().cmp(&b["schedule"].as_str()));
    axum::Json(json!({"decisions": all})).into_response()
}

async fn metrics(State(s): State<AdminState>) -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        metrics_text(&s.metrics, &s.lag),
    )
        .into_response()
}

/// Every 500 ms: export each decision's age and expiry state, and log once per
/// decision when it expires: a router never routes on an expired decision silently.
pub async fn watch_expiry(table: Arc<DecisionTable>, grace_ms: i64, shutdown: CancellationToken) {
    let mut logged: HashMap<String, i64> = HashMap::new();
    let mut every = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = now_ms();
        for r in table.all() {
            let d = &r.decision;
            let expired = r.expired(now, grace_ms);
            r.gauges.status(expired, now - d.decided_at_ms);
            if expired && logged.get(&d.schedule) != Some(&d.version) {
                tracing::warn!(schedule = %d.schedule, version = d.version, valid_until_ms = d.valid_until_ms, behaviour = ?d.on_expiry, "decision expired without a newer one; applying the expiry behaviour");
                logged.insert(d.schedule.clone(), d.version);
            }
        }
    }
}
