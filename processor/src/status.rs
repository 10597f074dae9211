//! The built-in status page on the admin port (`/`) and the document it polls
//! (`/status.json`): per schedule, commanded weights against delivered shares, carbon
//! intensity, the credit ledger, carbon saved and the last decisions, plus consumer lag.
//!
//! For people who run the quickstart without Grafana. The page is one self-contained file
//! compiled into the binary (no CDN, no external asset, works air-gapped); it polls once a
//! second, so a new decision shows without a reload.

use serde::Serialize;

use crate::pipeline::{ProcessorView, ScheduleSummary, now_ms};
use carbonflow_schemas::bus::LagRow;
use carbonflow_schemas::records::ScheduleDecision;

/// The page itself.
pub const PAGE: &str = include_str!("status.html");

/// What `/status.json` returns.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusDocument {
    /// When the document was made, epoch ms (the page shows staleness against it).
    pub generated_at_ms: i64,
    /// This instance's index.
    pub instance: i32,
    /// Number of instances.
    pub instances: i32,
    /// Restore finished and inputs are being consumed.
    pub ready: bool,
    /// Owned schedules, by id.
    pub schedules: Vec<ScheduleStatus>,
    /// Consumer lag of every partition this instance reads.
    pub lag: Vec<LagRow>,
}

/// One schedule on the page.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleStatus {
    /// `namespace/name`.
    pub id: String,
    /// Ledger, delivered shares and emissions.
    pub summary: ScheduleSummary,
    /// Latest decision, if one was made.
    pub decision: Option<ScheduleDecision>,
    /// The last decisions, newest first.
    pub recent: Vec<RecentDecision>,
}

/// A past decision, briefly (what the view keeps per schedule: a few of these cost little
/// even with 10,000 schedules, where whole decisions would not).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecentDecision {
    /// Version.
    pub version: i64,
    /// Event time it was decided at, epoch ms.
    pub decided_at_ms: i64,
    /// What caused it.
    pub cause: String,
    /// Integer weights per flavour.
    pub weights: Vec<(String, i32)>,
}

impl RecentDecision {
    /// The brief of `d`.
    pub fn of(d: &ScheduleDecision) -> Self {
        Self {
            version: d.version,
            decided_at_ms: d.decided_at_ms,
            cause: d.provenance.cause.clone(),
            weights: d
                .flavours
                .iter()
                .map(|f| (f.name.clone(), f.weight_percent))
                .collect(),
        }
    }
}

impl StatusDocument {
    /// The document for `view` now.
    pub fn of(view: &ProcessorView) -> Self {
        let now = now_ms();
        let mut schedules: Vec<ScheduleStatus> = view
            .schedules
            .iter()
            .map(|e| {
                let id = e.key().clone();
                let recent = view
                    .recent
                    .get(&id)
                    .map(|r| r.iter().rev().cloned().collect())
                    .unwrap_or_default();
                ScheduleStatus {
                    decision: view.decisions.get(&id).map(|d| d.clone()),
                    summary: e.value().clone(),
                    recent,
                    id,
                }
            })
            .collect();
        schedules.sort_by(|a, b| a.id.cmp(&b.id));
        Self {
            generated_at_ms: now,
            instance: view.settings.instance,
            instances: view.settings.instances,
            ready: view.ready.load(std::sync::atomic::Ordering::SeqCst),
            schedules,
            lag: view.lag.rows(now),
        }
    }
}
