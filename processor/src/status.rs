//! The built-in status page on the admin port (`/`) and the document it polls
//! (`/status.json`): per schedule, commanded weights against delivered shares, carbon
//! intensity, the credit ledger, carbon saved and the last decisions, plus consumer lag.
//!
//! For people who run the quickstart without Grafana. The page is one self-contained file
//! compiled into the binary (no CDN, no external asset, works air-gapped); it polls once a
//! second, so a new decision shows without a reload.

use serde::Serialize;

use carbonflow_schemas::bus::LagRow;
use carbonflow_schemas::records::ScheduleDecision;
use carbonflow_schemas::service::now_ms;

use crate::view::{ProcessorView, RecentDecision, ScheduleSummary};

/// The page itself.
pub(crate) const PAGE: &str = include_str!("status.html");

/// What `/status.json` returns.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StatusDocument {
    /// When the document was made, epoch ms (the page shows staleness against it).
    generated_at_ms: i64,
    /// How this instance comes to own partitions, e.g. "instance 0 of 2".
    ownership: String,
    /// The schedule partitions it owns.
    partitions: Vec<i32>,
    /// Restore finished and inputs are being consumed.
    ready: bool,
    /// Owned schedules, by id.
    schedules: Vec<ScheduleStatus>,
    /// Consumer lag of every partition this instance reads.
    lag: Vec<LagRow>,
}

/// One schedule on the page.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ScheduleStatus {
    /// `namespace/name`.
    id: String,
    /// Ledger, delivered shares and emissions.
    summary: ScheduleSummary,
    /// Latest decision, if one was made.
    decision: Option<ScheduleDecision>,
    /// The last decisions, newest first.
    recent: Vec<RecentDecision>,
}

impl StatusDocument {
    /// The document for `view` now.
    pub(crate) fn of(view: &ProcessorView) -> Self {
        let now = now_ms();
        let schedules = view
            .schedules()
            .into_iter()
            .map(|(id, summary, decision, recent)| ScheduleStatus {
                id,
                summary,
                decision: decision
                    .and_then(|d| d.decode().ok())
                    .map(without_upstreams),
                recent,
            })
            .collect();
        Self {
            generated_at_ms: now,
            ownership: view.ownership().to_string(),
            partitions: view.partitions(),
            ready: view.is_ready(),
            schedules,
            lag: view.lag().rows(now),
        }
    }
}

/// `d` without where its flavours are served: the page is open to anyone who reaches the
/// admin port, and upstream addresses are no business of theirs.
fn without_upstreams(mut d: ScheduleDecision) -> ScheduleDecision {
    for f in &mut d.flavours {
        f.upstream_url.clear();
        f.upstream_header = None;
    }
    d
}
