//! The read model: what the admin API, the status page and `/metrics` see of the owned
//! schedules. The pipeline writes it after applying inputs; HTTP handlers read it through
//! the methods here and never touch the partition state itself.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use carbonflow_core::issued::IssuedDecision;
use carbonflow_core::state::{DeliveredWindow, EmissionsAccount, ScheduleState};
use carbonflow_schemas::bus::LagMetrics;
use carbonflow_schemas::records::ScheduleDecision;
use carbonflow_schemas::vocabulary::DecisionCause;
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
        })
    }
}

/// A past decision, briefly (what the view keeps per schedule, [`RECENT_DECISIONS`] of
/// them: at 100,000 schedules each byte here costs 800 kB).
#[derive(Debug, Clone)]
pub struct RecentDecision {
    /// Decision version.
    pub version: i64,
    /// Event time it was decided at, epoch ms.
    pub decided_at_ms: i64,
    /// What caused it (`provenance.cause`; `other` for a cause this version does not know).
    pub cause: &'static str,
    /// Flavour names, one allocation shared by consecutive decisions of the same flavours.
    flavours: Arc<[String]>,
    /// Integer weight percentage per flavour, in the order of `flavours`.
    weights: Box<[i32]>,
}

impl RecentDecision {
    /// `d`, briefly; `previous` is the schedule's recent decision before it, whose flavour
    /// names are shared when they are the same.
    fn of(d: &ScheduleDecision, previous: Option<&RecentDecision>) -> Self {
        let same = previous.filter(|p| {
            p.flavours.len() == d.flavours.len()
                && p.flavours
                    .iter()
                    .zip(&d.flavours)
                    .all(|(a, b)| *a == b.name)
        });
        Self {
            version: d.version,
            decided_at_ms: d.decided_at_ms,
            cause: DecisionCause::from_wire(&d.provenance.cause)
                .map_or("other", DecisionCause::as_str),
            flavours: same.map_or_else(
                || d.flavours.iter().map(|f| f.name.clone()).collect(),
                |p| p.flavours.clone(),
            ),
            weights: d.flavours.iter().map(|f| f.weight_percent).collect(),
        }
    }

    /// `(flavour, integer weight percentage)` pairs.
    pub fn weights(&self) -> impl Iterator<Item = (&str, i32)> {
        self.flavours
            .iter()
            .map(String::as_str)
            .zip(self.weights.iter().copied())
    }
}

/// The status page's shape: `{version, decidedAtMs, cause, weights: [[flavour, percent]]}`.
impl Serialize for RecentDecision {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct("RecentDecision", 4)?;
        s.serialize_field("version", &self.version)?;
        s.serialize_field("decidedAtMs", &self.decided_at_ms)?;
        s.serialize_field("cause", self.cause)?;
        s.serialize_field("weights", &self.weights().collect::<Vec<_>>())?;
        s.end()
    }
}

/// One schedule as the status page gets it: id, summary, latest decision, recent
/// decisions (newest first).
pub(crate) type ScheduleShown = (
    String,
    ScheduleSummary,
    Option<IssuedDecision>,
    Vec<RecentDecision>,
);

/// What the view holds of one schedule.
#[derive(Debug)]
struct ScheduleView {
    summary: ScheduleSummary,
    /// Its latest decision, as its record shared with the partition state.
    decision: Option<IssuedDecision>,
    /// The last [`RECENT_DECISIONS`] decisions, newest last.
    recent: VecDeque<RecentDecision>,
}

/// Which schedules have series of their own in `/metrics`. Every per-schedule series
/// costs the processor memory and Prometheus a time series; at tens of thousands of
/// schedules they would cost more than the schedules themselves. Aggregates over all
/// schedules are exported whatever this says.
#[derive(Debug, Clone, Default)]
pub struct ScheduleSeries {
    /// Schedules besides the opted-in ones that get series: the first this instance
    /// shows, which keep them until they are deleted or their partition is released.
    pub limit: usize,
    /// Schedules (`namespace/name`) that always get series.
    pub opted_in: BTreeSet<String>,
}

/// What showing a schedule changed.
#[derive(Debug)]
pub(crate) struct Shown {
    /// The summary shown before, if any.
    pub(crate) previous: Option<ScheduleSummary>,
    /// The schedule has series of its own.
    pub(crate) series: bool,
    /// The intensities of its zone's forecast slots from the current one, when the
    /// decision shown saw others than the zone's last shown (g/kWh).
    pub(crate) zone_slots: Option<Vec<f64>>,
}

/// State shared between the pipeline (the one writer) and the admin API.
#[derive(Debug)]
pub struct ProcessorView {
    ready: AtomicBool,
    /// How this instance comes to own partitions, e.g. "instance 0 of 2".
    ownership: String,
    /// The schedule partitions it owns now.
    partitions: Mutex<Vec<i32>>,
    /// Every schedule shown, by id (one map: at 100,000 schedules, each further copy of
    /// the ids and each further table costs megabytes).
    schedules: DashMap<String, ScheduleView>,
    lag: LagMetrics,
    series: ScheduleSeries,
    /// Schedules with series of their own, and whether each was opted in.
    with_series: DashMap<String, bool>,
    /// Of them, the ones admitted under [`ScheduleSeries::limit`].
    admitted: AtomicUsize,
    /// Per zone, the forecast slots the latest decision shown saw: kept once per zone,
    /// not per schedule (thousands of schedules share a few zones).
    zone_slots: DashMap<String, Vec<f64>>,
}

impl ProcessorView {
    /// An empty view of an instance whose ownership is described by `ownership` (e.g.
    /// "instance 0 of 2", "consumer group carbonflow-processor"), exporting per-schedule
    /// series as `series` says.
    pub fn new(ownership: impl Into<String>, series: ScheduleSeries) -> Self {
        Self {
            ready: AtomicBool::new(false),
            ownership: ownership.into(),
            partitions: Mutex::new(Vec::new()),
            schedules: DashMap::new(),
            lag: LagMetrics::new(),
            series,
            with_series: DashMap::new(),
            admitted: AtomicUsize::new(0),
            zone_slots: DashMap::new(),
        }
    }

    /// Whether schedule `id` has series of their own.
    pub(crate) fn has_series(&self, id: &str) -> bool {
        self.with_series.contains_key(id)
    }

    /// Give schedule `id` series of its own if it is opted in or the limit allows;
    /// whether it has them.
    fn admit_series(&self, id: &str) -> bool {
        if self.has_series(id) {
            return true;
        }
        let opted_in = self.series.opted_in.contains(id);
        // One writer (the pipeline): the count cannot change between load and store.
        let admitted = self.admitted.load(Ordering::SeqCst);
        if !opted_in && admitted >= self.series.limit {
            return false;
        }
        if !opted_in {
            self.admitted.store(admitted + 1, Ordering::SeqCst);
        }
        self.with_series.insert(id.to_string(), opted_in);
        true
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

    /// Latest decision of schedule `id`, as its record.
    pub(crate) fn decision(&self, id: &str) -> Option<IssuedDecision> {
        self.schedules.get(id).and_then(|s| s.decision.clone())
    }

    /// Summary of schedule `id`.
    pub(crate) fn summary(&self, id: &str) -> Option<ScheduleSummary> {
        self.schedules.get(id).map(|s| s.summary.clone())
    }

    /// Every latest decision as its record, sorted by schedule id.
    pub(crate) fn decisions(&self) -> Vec<IssuedDecision> {
        let mut all: Vec<(String, IssuedDecision)> = self
            .schedules
            .iter()
            .filter_map(|e| Some((e.key().clone(), e.decision.clone()?)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all.into_iter().map(|(_, d)| d).collect()
    }

    /// Every schedule with its summary, latest decision and recent decisions (newest
    /// first), sorted by id.
    pub(crate) fn schedules(&self) -> Vec<ScheduleShown> {
        let mut all: Vec<_> = self
            .schedules
            .iter()
            .map(|e| {
                let recent = e.recent.iter().rev().cloned().collect();
                (
                    e.key().clone(),
                    e.summary.clone(),
                    e.decision.clone(),
                    recent,
                )
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Show `summary` for schedule `id`, and `issued` as its latest decision if it is
    /// newer than the one shown. `decided` is that decision decoded, when the caller has
    /// it at hand (it was just made); otherwise a newer one is decoded from its record
    /// (after a restore), for the brief kept of it.
    pub(crate) fn show(
        &self,
        id: &str,
        summary: ScheduleSummary,
        issued: Option<&IssuedDecision>,
        decided: Option<&ScheduleDecision>,
    ) -> Shown {
        let shown_version = self
            .schedules
            .get(id)
            .and_then(|s| s.recent.back().map(|r| r.version));
        let newer = issued.filter(|i| shown_version.is_none_or(|v| v < i.version()));
        let decoded;
        let decision = match (newer, decided) {
            (None, _) => None,
            (Some(i), Some(d)) if d.version == i.version() => Some(d),
            (Some(i), _) => {
                decoded = i
                    .decode()
                    .inspect_err(|e| tracing::error!(schedule = id, version = i.version(), error = %e, "the latest decision's record does not decode; its brief is not shown"))
                    .ok();
                decoded.as_ref()
            }
        };
        let zone_slots = decision
            .and_then(|d| d.provenance.forecast.as_ref())
            .filter(|f| {
                !f.slots.is_empty()
                    && self
                        .zone_slots
                        .get(&summary.zone)
                        .is_none_or(|shown| *shown != f.slots)
            })
            .map(|f| {
                self.zone_slots
                    .insert(summary.zone.clone(), f.slots.clone());
                f.slots.clone()
            });
        let previous = match self.schedules.get_mut(id) {
            Some(mut shown) => {
                if let Some(i) = newer {
                    shown.decision = Some(i.clone());
                }
                if let Some(d) = decision {
                    let recent = &mut shown.recent;
                    if recent.len() == RECENT_DECISIONS {
                        recent.pop_front();
                    } else {
                        // Grown one at a time: doubling would give most schedules room
                        // for 4 while they have 2 (at 100,000 schedules, 13 MB).
                        recent.reserve_exact(1);
                    }
                    let brief = RecentDecision::of(d, recent.back());
                    recent.push_back(brief);
                }
                Some(std::mem::replace(&mut shown.summary, summary))
            }
            None => {
                let recent = decision.map(|d| RecentDecision::of(d, None));
                let shown = ScheduleView {
                    summary,
                    decision: issued.cloned(),
                    recent: recent.into_iter().collect(),
                };
                self.schedules.insert(id.to_string(), shown);
                None
            }
        };
        Shown {
            series: self.admit_series(id),
            previous,
            zone_slots,
        }
    }

    /// Stop showing schedule `id`; what was shown of it, if anything.
    pub(crate) fn forget(&self, id: &str) -> Option<Shown> {
        let series = match self.with_series.remove(id) {
            Some((_, opted_in)) => {
                if !opted_in {
                    self.admitted.fetch_sub(1, Ordering::SeqCst);
                }
                true
            }
            None => false,
        };
        let (_, shown) = self.schedules.remove(id)?;
        Some(Shown {
            previous: Some(shown.summary),
            series,
            zone_slots: None,
        })
    }

    /// Schedules shown with series of their own.
    pub(crate) fn with_series(&self) -> usize {
        self.with_series.len()
    }
}

#[cfg(test)]
mod tests {
    use carbonflow_core::state::ScheduleState;
    use carbonflow_schemas::testing::samples;

    use super::*;

    fn summary(zone: &str) -> ScheduleSummary {
        let mut config = samples::schedule_config();
        config.zone = zone.into();
        let state = ScheduleState {
            config: Some(Box::new(config)),
            ..ScheduleState::default()
        };
        ScheduleSummary::of(0, &state).expect("a config")
    }

    #[test]
    fn series_go_to_opted_in_schedules_and_the_first_within_the_limit() {
        // Given a limit of one and schedule b/opted opted in
        let view = ProcessorView::new(
            "test",
            ScheduleSeries {
                limit: 1,
                opted_in: ["b/opted".to_string()].into(),
            },
        );
        // When three schedules are shown
        let series = |id: &str| view.show(id, summary("DE"), None, None).series;
        // Then the first and the opted-in one get series, the third does not
        assert!(series("a/first"));
        assert!(!series("c/third"));
        assert!(series("b/opted"));
        assert!(series("a/first"), "a schedule keeps its series");
        assert_eq!(view.with_series(), 2);
        // and once the first is forgotten, the next schedule shown takes its place
        assert!(view.forget("a/first").expect("was shown").series);
        assert!(series("c/third"));
        assert!(!series("d/fourth"));
    }

    #[test]
    fn a_decision_kept_only_as_its_record_is_shown_with_its_brief_once() {
        let view = ProcessorView::new("test", ScheduleSeries::default());
        let recent = |id: &str| {
            view.schedules()
                .into_iter()
                .find(|s| s.0 == id)
                .map(|s| s.3.iter().map(|r| r.version).collect::<Vec<_>>())
        };
        // Given a decision the view gets as its record only (as after a restore)
        let mut first = samples::schedule_decision();
        first.version = 1;
        let issued = IssuedDecision::encode(&first).expect("encodes");
        view.show("a/one", summary("DE"), Some(&issued), None);
        // Then its brief is decoded from the record, and its record is served
        assert_eq!(recent("a/one"), Some(vec![1]));
        assert_eq!(
            view.decision("a/one")
                .expect("a decision")
                .decode()
                .expect("decodes"),
            first
        );
        // When it is shown again, nothing is added
        view.show("a/one", summary("DE"), Some(&issued), None);
        assert_eq!(recent("a/one"), Some(vec![1]));
        // When a newer decision is shown with the decision at hand
        let mut second = first.clone();
        second.version = 2;
        let newer = IssuedDecision::encode(&second).expect("encodes");
        view.show("a/one", summary("DE"), Some(&newer), Some(&second));
        // Then it is the latest, newest first in the briefs
        assert_eq!(recent("a/one"), Some(vec![2, 1]));
        assert_eq!(view.decision("a/one"), Some(newer));
    }

    #[test]
    fn zone_slots_are_reported_once_per_change_of_the_zone() {
        let view = ProcessorView::new("test", ScheduleSeries::default());
        let decision = samples::schedule_decision();
        let issued = IssuedDecision::encode(&decision).expect("encodes");
        let slots = |id: &str| {
            view.show(id, summary("DE"), Some(&issued), Some(&decision))
                .zone_slots
        };
        let first = slots("a/one");
        assert_eq!(
            first,
            decision
                .provenance
                .forecast
                .as_ref()
                .map(|f| f.slots.clone())
        );
        assert_eq!(slots("a/two"), None, "the zone's slots are unchanged");
    }
}
