//! The read model: what the admin API, the status page and `/metrics` see of the owned
//! schedules. The pipeline writes it after applying inputs; HTTP handlers read it through
//! the methods here and never touch the partition state itself.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use carbonflow_core::state::{DeliveredWindow, EmissionsAccount, ScheduleState};
use carbonflow_schemas::bus::LagMetrics;
use carbonflow_schemas::records::ScheduleDecision;
use dashmap::DashMap;
use serde::Serialize;

/// How many recent decisions per schedule the view keeps for the status page.
pub(crate) const RECENT_DECISIONS: usize = 8;

/// What the admin API and metrics see of one schedule.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleSummary {
    /// Owning schedule partition.
    pub partition: i32,
    /// Config version in force.
    pub config_version: i64,
    /// Last decision version (0 before the first decision).
    pub version: i64,
    /// Ledger balance.
    pub credit_balance: f64,
    /// Ledger velocity, balance change per second over the credit window.
    pub credit_velocity: f64,
    /// Requests of every telemetry bucket applied.
    pub requests_seen: i64,
    /// Answered requests accounted in the ledger.
    pub requests_accounted: i64,
    /// A manual override is in force.
    pub manual: bool,
    /// Share of answered requests per flavour in the last closed telemetry window.
    pub delivered_shares: BTreeMap<String, f64>,
    /// End of that window, epoch ms.
    pub delivered_window_end_ms: Option<i64>,
    /// Emissions index of every closed window (request-equivalents × g/kWh), as delivered
    /// and as it would have been at full precision.
    pub emissions: EmissionsAccount,
    /// Fraction of emissions saved against always-full-precision, over delivered requests.
    pub carbon_saved: Option<f64>,
    /// Forecast zone the schedule follows.
    pub zone: String,
    /// Intensities of the forecast slots from the current one, as the last decision saw
    /// them, g/kWh.
    pub forecast_slots: Vec<f64>,
}

impl ScheduleSummary {
    /// The summary of schedule state `s` in `partition`; `None` when it has no config
    /// (deleted, or only telemetry seen).
    pub(crate) fn of(partition: i32, s: &ScheduleState) -> Option<Self> {
        let config = s.config.as_ref()?;
        Some(Self {
            partition,
            config_version: config.config_version,
            version: s.version,
            credit_balance: s.ledger.balance(),
            credit_velocity: s.ledger.velocity(),
            requests_seen: s.requests_seen,
            requests_accounted: s.requests_accounted,
            manual: s.manual.is_some(),
            delivered_shares: s
                .last_window
                .as_ref()
                .map(DeliveredWindow::shares)
                .unwrap_or_default(),
            delivered_window_end_ms: s.last_window.as_ref().map(|w| w.end_ms),
            emissions: s.emissions,
            carbon_saved: s.emissions.saved_fraction(),
            zone: config.zone.clone(),
            forecast_slots: s
                .last_decision
                .as_ref()
                .and_then(|d| d.provenance.forecast.as_ref())
                .map(|f| f.slots.clone())
                .unwrap_or_default(),
        })
    }
}

/// A past decision, briefly (what the view keeps per schedule: a few of these cost little
/// even with 10,000 schedules, where whole decisions would not).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecentDecision {
    /// Decision version.
    pub version: i64,
    /// Event time it was decided at, epoch ms.
    pub decided_at_ms: i64,
    /// What caused it (`provenance.cause`).
    pub cause: String,
    /// Integer weight percentages per flavour.
    pub weights: Vec<(String, i32)>,
}

impl RecentDecision {
    fn of(d: &ScheduleDecision) -> Self {
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

/// State shared between the pipeline (the one writer) and the admin API.
#[derive(Debug)]
pub struct ProcessorView {
    ready: AtomicBool,
    /// How this instance comes to own partitions, e.g. "instance 0 of 2".
    ownership: String,
    /// The schedule partitions it owns now.
    partitions: Mutex<Vec<i32>>,
    decisions: DashMap<String, ScheduleDecision>,
    schedules: DashMap<String, ScheduleSummary>,
    /// The last [`RECENT_DECISIONS`] decisions per schedule, newest last.
    recent: DashMap<String, VecDeque<RecentDecision>>,
    lag: LagMetrics,
}

impl ProcessorView {
    /// An empty view of an instance whose ownership is described by `ownership` (e.g.
    /// "instance 0 of 2", "consumer group carbonflow-processor").
    pub fn new(ownership: impl Into<String>) -> Self {
        Self {
            ready: AtomicBool::new(false),
            ownership: ownership.into(),
            partitions: Mutex::new(Vec::new()),
            decisions: DashMap::new(),
            schedules: DashMap::new(),
            recent: DashMap::new(),
            lag: LagMetrics::new(),
        }
    }

    /// Restore finished and inputs are being consumed.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// How this instance comes to own partitions.
    pub(crate) fn ownership(&self) -> &str {
        &self.ownership
    }

    /// The schedule partitions this instance owns, ascending.
    pub(crate) fn partitions(&self) -> Vec<i32> {
        self.partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn set_partitions(&self, partitions: Vec<i32>) {
        *self
            .partitions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = partitions;
    }

    /// Consumer lag of the partitions this instance reads.
    pub(crate) fn lag(&self) -> &LagMetrics {
        &self.lag
    }

    /// Latest decision of schedule `id`.
    pub(crate) fn decision(&self, id: &str) -> Option<ScheduleDecision> {
        self.decisions.get(id).map(|d| d.clone())
    }

    /// Summary of schedule `id`.
    pub(crate) fn summary(&self, id: &str) -> Option<ScheduleSummary> {
        self.schedules.get(id).map(|s| s.clone())
    }

    /// Every latest decision, sorted by schedule id.
    pub(crate) fn decisions(&self) -> Vec<ScheduleDecision> {
        let mut all: Vec<ScheduleDecision> = self.decisions.iter().map(|e| e.clone()).collect();
        all.sort_by(|a, b| a.schedule.cmp(&b.schedule));
        all
    }

    /// Every schedule with its summary, latest decision and recent decisions (newest
    /// first), sorted by id.
    pub(crate) fn schedules(
        &self,
    ) -> Vec<(
        String,
        ScheduleSummary,
        Option<ScheduleDecision>,
        Vec<RecentDecision>,
    )> {
        let mut all: Vec<_> = self
            .schedules
            .iter()
            .map(|e| {
                let id = e.key().clone();
                let recent = self
                    .recent
                    .get(&id)
                    .map(|r| r.iter().rev().cloned().collect())
                    .unwrap_or_default();
                let decision = self.decision(&id);
                (id, e.value().clone(), decision, recent)
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Show `summary` for schedule `id`, and `decision` as its latest if it is newer;
    /// returns the summary shown before.
    pub(crate) fn show(
        &self,
        id: &str,
        summary: ScheduleSummary,
        decision: Option<&ScheduleDecision>,
    ) -> Option<ScheduleSummary> {
        if let Some(d) = decision {
            self.decisions.insert(id.to_string(), d.clone());
            let mut recent = self.recent.entry(id.to_string()).or_default();
            if recent.back().is_none_or(|last| last.version < d.version) {
                if recent.len() == RECENT_DECISIONS {
                    recent.pop_front();
                }
                recent.push_back(RecentDecision::of(d));
            }
        }
        self.schedules.insert(id.to_string(), summary)
    }

    /// Stop showing schedule `id`; whether it was shown.
    pub(crate) fn forget(&self, id: &str) -> bool {
        self.decisions.remove(id);
        self.recent.remove(id);
        self.schedules.remove(id).is_some()
    }
}
