//! Every metric the processor exports: its name, its description, and the one function
//! through which it is emitted. The reference engine's metrics (section 8.3) appear under
//! a `carbonflow_` prefix, beside decisions, journal, snapshots, restore, rejections and
//! dead letters.
//!
//! The pipeline reports events (`decision_emitted`, `journal_written`, ...) and never names
//! a metric. Names and labels are an interface: dashboards and alert rules in `deploy/`
//! read them. Labels are bounded: schedule, flavour, component, zone, cause, topic, error
//! kind, reason; never offsets, versions or error strings.

use std::sync::LazyLock;
use std::time::Duration;

use carbonflow_core::gate::RefusalKind;
use carbonflow_core::policy::PolicyError;
use carbonflow_schemas::CodecError;
use carbonflow_schemas::bus::Topic;
use carbonflow_schemas::records::ScheduleDecision;
use carbonflow_schemas::vocabulary::{DecisionCause, ScheduleId};
use metrics::{
    Counter, Gauge, Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge,
    histogram,
};

use crate::view::{ScheduleSummary, Shown};

// Per decision.
const DECISIONS: &str = "carbonflow_decisions_total";
const DECISIONS_REFUSED: &str = "carbonflow_decisions_refused_total";
const DECISION_LATENCY: &str = "carbonflow_decision_latency_seconds";
const FLAVOUR_WEIGHT: &str = "carbonflow_schedule_flavour_weight";
const POLICY_CHOICE: &str = "carbonflow_policy_choice_milli_total";
const VALID_UNTIL: &str = "carbonflow_schedule_valid_until_seconds";
const CREDIT_BALANCE: &str = "carbonflow_credit_balance";
const CREDIT_VELOCITY: &str = "carbonflow_credit_velocity";
const AVG_PRECISION: &str = "carbonflow_avg_precision";
const THROTTLE: &str = "carbonflow_processing_throttle";
const CREDIT_MIN: &str = "carbonflow_credit_min";
const CREDIT_MAX: &str = "carbonflow_credit_max";
const REPLICA_CEILING: &str = "carbonflow_effective_replica_ceiling";
const FORECAST_INTENSITY: &str = "carbonflow_forecast_intensity";
// Per schedule, from the state.
const SCHEDULE_ZONE: &str = "carbonflow_schedule_zone";
const FORECAST_SLOT_INTENSITY: &str = "carbonflow_forecast_slot_intensity";
const DELIVERED_SHARE: &str = "carbonflow_delivered_share";
const EMISSIONS_INDEX: &str = "carbonflow_emissions_index_total";
const REQUESTS_SEEN: &str = "carbonflow_schedule_requests_seen";
const SCHEDULE_VERSION: &str = "carbonflow_schedule_version";
// Over every schedule shown, whether or not it has series of its own.
const SCHEDULES: &str = "carbonflow_schedules";
const SCHEDULES_UNDECIDED: &str = "carbonflow_schedules_undecided";
const SCHEDULES_WITH_SERIES: &str = "carbonflow_schedules_with_series";
const REQUESTS_SEEN_ALL: &str = "carbonflow_requests_seen_all";
const EMISSIONS_INDEX_ALL: &str = "carbonflow_emissions_index_all";
// Inputs and refusals.
const INPUTS: &str = "carbonflow_inputs_total";
const DEAD_LETTERS: &str = "carbonflow_dead_letters_total";
const CONFIG_REJECTIONS: &str = "carbonflow_config_rejections_total";
const INPUTS_REFUSED: &str = "carbonflow_inputs_refused_total";
// Journal, snapshots, restore.
const JOURNAL_ENTRIES: &str = "carbonflow_journal_entries_total";
const JOURNAL_RECORDS: &str = "carbonflow_journal_records_total";
const JOURNAL_BYTES: &str = "carbonflow_journal_bytes_total";
const SNAPSHOTS: &str = "carbonflow_snapshots_total";
const SNAPSHOTS_SKIPPED: &str = "carbonflow_snapshots_skipped_total";
const SNAPSHOT_BYTES: &str = "carbonflow_snapshot_bytes";
const SNAPSHOT_PAUSE: &str = "carbonflow_snapshot_pause_seconds";
const SNAPSHOTS_UNREADABLE: &str = "carbonflow_snapshots_unreadable_total";
const RESTORE_DURATION: &str = "carbonflow_restore_duration_seconds";
const RESTORE_REPLAYED: &str = "carbonflow_restore_replayed_entries_total";
const RESTORE_DIVERGENT: &str = "carbonflow_restore_divergent_entries_total";
const READY: &str = "carbonflow_processor_ready";
// Ownership.
const PARTITION_EPOCH: &str = "carbonflow_partition_epoch";
const FENCED: &str = "carbonflow_partitions_fenced_total";
const FENCED_ENTRIES: &str = "carbonflow_restore_fenced_entries_total";
const PARTITIONS_OWNED: &str = "carbonflow_partitions_owned";
const PARTITIONS_RELEASED: &str = "carbonflow_partitions_released_total";
const STANDBY_PARTITIONS: &str = "carbonflow_standby_partitions";

/// Slots of the forecast ahead exported per zone.
const FORECAST_SLOTS_EXPORTED: usize = 12;

/// Describe every metric with its unit, so that `/metrics` has a HELP line for each.
/// Call once, after the recorder is installed.
pub fn describe() {
    describe_counter!(DECISIONS, Unit::Count, "Decisions emitted, by cause.");
    describe_counter!(
        DECISIONS_REFUSED,
        Unit::Count,
        "Decisions due but not emitted because the policy's result was unusable (the previous decision stays in force), by reason."
    );
    describe_histogram!(
        DECISION_LATENCY,
        Unit::Seconds,
        "Time from the causing input's record timestamp to the decision's acknowledgement by the broker."
    );
    describe_gauge!(
        FLAVOUR_WEIGHT,
        Unit::Percent,
        "Integer weight of the flavour in the schedule's latest decision."
    );
    describe_counter!(
        POLICY_CHOICE,
        Unit::Count,
        "Sum over decisions of the flavour's weight, in thousandths of a decision (the reference's policy_choice)."
    );
    describe_gauge!(
        VALID_UNTIL,
        Unit::Seconds,
        "validUntil of the schedule's latest decision, epoch seconds (NaN once deleted)."
    );
    describe_gauge!(
        CREDIT_BALANCE,
        "Credit ledger balance after the latest decision."
    );
    describe_gauge!(
        CREDIT_VELOCITY,
        "Credit ledger velocity after the latest decision, balance change per second."
    );
    describe_gauge!(
        AVG_PRECISION,
        "Mean precision commanded by the latest decision, 0..1."
    );
    describe_gauge!(
        THROTTLE,
        "Processing throttle of the latest decision, 0..1."
    );
    describe_gauge!(CREDIT_MIN, "Configured lower bound of the credit ledger.");
    describe_gauge!(CREDIT_MAX, "Configured upper bound of the credit ledger.");
    describe_gauge!(
        REPLICA_CEILING,
        "Replica ceiling of the component in the latest decision."
    );
    describe_gauge!(
        FORECAST_INTENSITY,
        "Carbon intensity the latest decision saw, g/kWh, now and for the next slot."
    );
    describe_gauge!(
        SCHEDULE_ZONE,
        "1 for the forecast zone the schedule follows, 0 for zones it followed before."
    );
    describe_gauge!(
        FORECAST_SLOT_INTENSITY,
        "Forecast intensity of the zone by slot from the current one, g/kWh (NaN past the forecast's end)."
    );
    describe_gauge!(
        DELIVERED_SHARE,
        "Share of answered requests per flavour in the schedule's last closed telemetry window, 0..1."
    );
    describe_counter!(
        EMISSIONS_INDEX,
        "Emissions index of closed windows (request-equivalents × g/kWh), as delivered and at full precision."
    );
    describe_gauge!(
        REQUESTS_SEEN,
        Unit::Count,
        "Requests of every telemetry bucket applied to the schedule."
    );
    describe_gauge!(
        SCHEDULE_VERSION,
        "Version of the schedule's latest decision (0 before the first; NaN once deleted)."
    );
    describe_gauge!(
        SCHEDULES,
        Unit::Count,
        "Schedules with a config in the partitions this instance owns."
    );
    describe_gauge!(
        SCHEDULES_UNDECIDED,
        Unit::Count,
        "Of them, schedules without a decision yet."
    );
    describe_gauge!(
        SCHEDULES_WITH_SERIES,
        Unit::Count,
        "Of them, schedules with series of their own (opted in, or within --schedule-series-limit)."
    );
    describe_gauge!(
        REQUESTS_SEEN_ALL,
        Unit::Count,
        "Requests of every telemetry bucket applied, over every schedule shown."
    );
    describe_gauge!(
        EMISSIONS_INDEX_ALL,
        "Emissions index of closed windows over every schedule shown (request-equivalents × g/kWh), as delivered and at full precision."
    );
    describe_counter!(INPUTS, Unit::Count, "Input records read, by topic.");
    describe_counter!(
        DEAD_LETTERS,
        Unit::Count,
        "Input records sent to the dead-letter topic, by topic and error kind."
    );
    describe_counter!(
        INPUTS_REFUSED,
        Unit::Count,
        "Decoded inputs the plausibility gate refused (no state changed), by topic and kind (implausible, future_dated, too_old, wrong_partition)."
    );
    describe_counter!(
        CONFIG_REJECTIONS,
        Unit::Count,
        "Configs and overrides refused (written to schedule.rejections)."
    );
    describe_counter!(
        JOURNAL_ENTRIES,
        Unit::Count,
        "Journal entries written (one per applied input and partition)."
    );
    describe_counter!(
        JOURNAL_RECORDS,
        Unit::Count,
        "Journal batch records written."
    );
    describe_counter!(
        JOURNAL_BYTES,
        Unit::Bytes,
        "Bytes of journal batch records written."
    );
    describe_counter!(SNAPSHOTS, Unit::Count, "Snapshots written.");
    describe_counter!(
        SNAPSHOTS_SKIPPED,
        Unit::Count,
        "Snapshots not written, by reason (too_large: over the broker's record limit; write_failed: refused or not acknowledged)."
    );
    describe_counter!(
        SNAPSHOTS_UNREADABLE,
        Unit::Count,
        "Snapshot records restore could not decode and passed over (it used an older snapshot or the journal)."
    );
    describe_gauge!(
        SNAPSHOT_BYTES,
        Unit::Bytes,
        "Size of the partition's latest snapshot state."
    );
    describe_histogram!(
        SNAPSHOT_PAUSE,
        Unit::Seconds,
        "Time the pipeline waited for a snapshot, written or skipped: pending writes drained, the journal read back, the state encoded and written."
    );
    describe_histogram!(
        RESTORE_DURATION,
        Unit::Seconds,
        "Time to restore one partition at start."
    );
    describe_counter!(
        RESTORE_REPLAYED,
        Unit::Count,
        "Journal entries replayed by restores."
    );
    describe_counter!(
        RESTORE_DIVERGENT,
        Unit::Count,
        "Journal entries whose replay produced other decisions than they record."
    );
    describe_gauge!(
        READY,
        "1 while restore is done and inputs are being consumed, else 0."
    );
    describe_gauge!(
        PARTITION_EPOCH,
        "Ownership epoch this instance holds per owned schedule partition (its claim's journal offset + 1)."
    );
    describe_counter!(
        FENCED,
        Unit::Count,
        "Owned partitions another instance claimed: this instance stopped writing them (and, in explicit mode, exited)."
    );
    describe_gauge!(
        PARTITIONS_OWNED,
        "Schedule partitions this instance owns now."
    );
    describe_gauge!(
        STANDBY_PARTITIONS,
        "Partitions this instance keeps warm for a takeover (--standby-replicas); how far each is behind is carbonflow_consumer_lag_messages{group=\"carbonflow-processor-standby\"}."
    );
    describe_counter!(
        PARTITIONS_RELEASED,
        Unit::Count,
        "Owned partitions given up, by reason: handed_over (revoked by the group, written out and snapshotted first), lost (the group moved them while this instance was out of touch), fenced (another instance claimed them)."
    );
    describe_counter!(
        FENCED_ENTRIES,
        Unit::Count,
        "Journal entries restore did not fold: written by a superseded owner after a newer claim."
    );
}

/// Start the counters that alerts watch at zero, so that their first increase is seen
/// (a series that appears at 1 has no increase to alert on), and the aggregates.
pub(crate) fn start_at_zero() {
    // The aggregates move by increments; each exists from the start (an instance owning
    // no schedule, or none undecided, exports 0 rather than nothing).
    for name in [
        SCHEDULES,
        SCHEDULES_UNDECIDED,
        SCHEDULES_WITH_SERIES,
        REQUESTS_SEEN_ALL,
    ] {
        gauge!(name).increment(0.0);
    }
    for basis in ["delivered", "full-precision"] {
        gauge!(EMISSIONS_INDEX_ALL, "basis" => basis).increment(0.0);
    }
    counter!(CONFIG_REJECTIONS).increment(0);
    counter!(FENCED).increment(0);
    for reason in Released::ALL {
        counter!(PARTITIONS_RELEASED, "reason" => reason.label()).increment(0);
    }
    for reason in SnapshotSkipped::ALL {
        counter!(SNAPSHOTS_SKIPPED, "reason" => reason.label()).increment(0);
    }
    counter!(SNAPSHOTS_UNREADABLE).increment(0);
    for reason in PolicyError::KINDS {
        counter!(DECISIONS_REFUSED, "reason" => reason).increment(0);
    }
    for topic in [
        Topic::Config,
        Topic::Forecasts,
        Topic::Telemetry,
        Topic::Ticks,
    ] {
        for kind in CodecError::DECODE_KINDS {
            counter!(DEAD_LETTERS, "topic" => topic.base_name(), "kind" => kind).increment(0);
        }
        for kind in RefusalKind::ALL {
            counter!(INPUTS_REFUSED, "topic" => topic.base_name(), "kind" => kind.as_str())
                .increment(0);
        }
    }
    ready(false);
}

/// `namespace/name` as the two labels the reference uses.
fn labels(id: &str) -> (String, String) {
    match id.parse::<ScheduleId>() {
        Ok(id) => (id.namespace().to_string(), id.name().to_string()),
        Err(_) => (String::new(), id.to_string()),
    }
}

/// `carbonflow_decisions_total` per cause (`None`: one this version does not know), looked
/// up once: it counts every decision.
static DECISIONS_BY_CAUSE: LazyLock<Vec<(Option<DecisionCause>, Counter)>> = LazyLock::new(|| {
    DecisionCause::ALL
        .into_iter()
        .map(Some)
        .chain([None])
        .map(|c| {
            let label = c.map_or("other", DecisionCause::as_str);
            (c, counter!(DECISIONS, "cause" => label))
        })
        .collect()
});

/// A decision was queued for the decisions topic; `series`: its schedule has series of
/// its own.
pub(crate) fn decision_emitted(d: &ScheduleDecision, series: bool) {
    let cause = DecisionCause::from_wire(&d.provenance.cause);
    if let Some((_, counter)) = DECISIONS_BY_CAUSE.iter().find(|(c, _)| *c == cause) {
        counter.increment(1);
    }
    if !series {
        return;
    }
    let (ns, sc) = labels(&d.schedule);
    for f in &d.flavours {
        gauge!(FLAVOUR_WEIGHT, "namespace" => ns.clone(), "schedule" => sc.clone(), "flavour" => f.name.clone())
            .set(f64::from(f.weight_percent));
        // The reference adds each flavour's fractional weight per evaluation; counters are
        // integers here, so this one counts thousandths of a decision.
        counter!(POLICY_CHOICE, "namespace" => ns.clone(), "schedule" => sc.clone(), "flavour" => f.name.clone())
            .increment((f.weight * 1000.0).round() as u64);
    }
    gauge!(VALID_UNTIL, "namespace" => ns.clone(), "schedule" => sc.clone())
        .set(d.valid_until_ms as f64 / 1000.0);
    let by_policy = [
        (CREDIT_BALANCE, d.credits.balance),
        (CREDIT_VELOCITY, d.credits.velocity),
        (AVG_PRECISION, d.avg_precision),
        (THROTTLE, d.processing.throttle),
        (CREDIT_MIN, d.credits.min),
        (CREDIT_MAX, d.credits.max),
    ];
    for (name, value) in by_policy {
        gauge!(name, "namespace" => ns.clone(), "schedule" => sc.clone()).set(value);
    }
    for c in &d.processing.ceilings {
        gauge!(REPLICA_CEILING, "namespace" => ns.clone(), "schedule" => sc.clone(), "component" => c.component.clone())
            .set(f64::from(c.replicas));
    }
    if let Some(f) = &d.provenance.forecast {
        for (horizon, value) in [("now", f.intensity_now), ("next", f.intensity_next)] {
            if let Some(v) = value {
                gauge!(FORECAST_INTENSITY, "namespace" => ns.clone(), "schedule" => sc.clone(), "horizon" => horizon)
                    .set(v);
            }
        }
    }
}

/// A decision was acknowledged `latency_ms` after its causing input's timestamp.
pub(crate) fn decision_delivered(latency_ms: i64) {
    histogram!(DECISION_LATENCY).record(latency_ms.max(0) as f64 / 1000.0);
}

/// A due decision was refused.
pub(crate) fn decision_refused(error: &PolicyError) {
    counter!(DECISIONS_REFUSED, "reason" => error.kind()).increment(1);
}

/// The aggregates' gauges, looked up once: they move for every schedule shown (100,000
/// per forecast at scale), and a registry lookup per move cost more than the move. The
/// recorder is installed before the pipeline starts, so the handles are the real ones.
struct Aggregates {
    schedules: Gauge,
    undecided: Gauge,
    with_series: Gauge,
    requests_seen: Gauge,
    delivered: Gauge,
    full_precision: Gauge,
}

static AGGREGATES: LazyLock<Aggregates> = LazyLock::new(|| Aggregates {
    schedules: gauge!(SCHEDULES),
    undecided: gauge!(SCHEDULES_UNDECIDED),
    with_series: gauge!(SCHEDULES_WITH_SERIES),
    requests_seen: gauge!(REQUESTS_SEEN_ALL),
    delivered: gauge!(EMISSIONS_INDEX_ALL, "basis" => "delivered"),
    full_precision: gauge!(EMISSIONS_INDEX_ALL, "basis" => "full-precision"),
});

/// Move the aggregates from one schedule's `previous` summary to `now` (`None`: not
/// shown), and set the count of schedules with series to `with_series`.
fn move_aggregates(
    previous: Option<&ScheduleSummary>,
    now: Option<&ScheduleSummary>,
    with_series: usize,
) {
    let figures = |s: Option<&ScheduleSummary>| {
        s.map_or([0.0; 5], |s| {
            [
                1.0,
                if s.version == 0 { 1.0 } else { 0.0 },
                s.requests_seen as f64,
                s.emissions.delivered,
                s.emissions.full_precision,
            ]
        })
    };
    let a = &*AGGREGATES;
    let gauges = [
        &a.schedules,
        &a.undecided,
        &a.requests_seen,
        &a.delivered,
        &a.full_precision,
    ];
    for (gauge, (before, after)) in gauges
        .into_iter()
        .zip(figures(previous).into_iter().zip(figures(now)))
    {
        if after != before {
            gauge.increment(after - before);
        }
    }
    a.with_series.set(with_series as f64);
}

/// Schedule `id` is no longer shown (deleted, or its partition released): `shown` is what
/// was. Its series cannot be removed from the exporter, so the ones that alerts compare
/// against time are set to NaN, which no comparison matches.
pub(crate) fn schedule_removed(id: &str, shown: &Shown, with_series: usize) {
    move_aggregates(shown.previous.as_ref(), None, with_series);
    if !shown.series {
        return;
    }
    let (ns, sc) = labels(id);
    for name in [SCHEDULE_VERSION, VALID_UNTIL] {
        gauge!(name, "namespace" => ns.clone(), "schedule" => sc.clone()).set(f64::NAN);
    }
}

/// Export what was delivered and emitted, as the state holds it (so restored figures are
/// exported again after a restart rather than starting from zero): into the aggregates
/// always, as series of its own when `shown.series`. `with_series` counts the schedules
/// that have them.
pub(crate) fn schedule_shown(id: &str, s: &ScheduleSummary, shown: &Shown, with_series: usize) {
    move_aggregates(shown.previous.as_ref(), Some(s), with_series);
    // The forecast ahead per zone, not per schedule: thousands of schedules share a few
    // zones. Slot 0 is the current one; a fixed number of slots keeps the label bounded
    // (the reference made one series per hour offset, never removed). Slots the forecast
    // does not reach are NaN, which dashboards show as gaps.
    if let Some(slots) = &shown.zone_slots {
        for slot in 0..FORECAST_SLOTS_EXPORTED {
            gauge!(FORECAST_SLOT_INTENSITY, "zone" => s.zone.clone(), "slot" => slot.to_string())
                .set(slots.get(slot).copied().unwrap_or(f64::NAN));
        }
    }
    if !shown.series {
        return;
    }
    let (ns, sc) = labels(id);
    // Which zone a schedule follows (dashboards join the zone's forecast through it); set
    // only when it changes, since this runs for every input that touches the schedule.
    let old_zone = shown.previous.as_ref().map(|p| p.zone.as_str());
    if old_zone != Some(s.zone.as_str()) {
        if let Some(old) = old_zone {
            gauge!(SCHEDULE_ZONE, "namespace" => ns.clone(), "schedule" => sc.clone(), "zone" => old.to_string())
                .set(0.0);
        }
        gauge!(SCHEDULE_ZONE, "namespace" => ns.clone(), "schedule" => sc.clone(), "zone" => s.zone.clone())
            .set(1.0);
    }
    for (flavour, share) in &s.delivered_shares {
        gauge!(DELIVERED_SHARE, "namespace" => ns.clone(), "schedule" => sc.clone(), "flavour" => flavour.clone())
            .set(*share);
    }
    // Counters in whole units: the index is request-equivalents × g/kWh, so rounding
    // loses nothing a dashboard shows.
    for (basis, value) in [
        ("delivered", s.emissions.delivered),
        ("full-precision", s.emissions.full_precision),
    ] {
        counter!(EMISSIONS_INDEX, "namespace" => ns.clone(), "schedule" => sc.clone(), "basis" => basis)
            .absolute(value.max(0.0).round() as u64);
    }
    gauge!(REQUESTS_SEEN, "namespace" => ns.clone(), "schedule" => sc.clone())
        .set(s.requests_seen as f64);
    // 0 until the schedule's first decision (an alert watches for that).
    gauge!(SCHEDULE_VERSION, "namespace" => ns, "schedule" => sc).set(s.version as f64);
}

/// An input record was read from `topic`.
pub(crate) fn input_read(topic: Topic) {
    counter!(INPUTS, "topic" => topic.base_name()).increment(1);
}

/// An input record of `topic` was dead-lettered for an error of `kind` (a codec error
/// kind or a gate refusal kind).
pub(crate) fn dead_lettered(topic: Option<Topic>, kind: &'static str) {
    let topic = topic.map_or("unknown", Topic::base_name);
    counter!(DEAD_LETTERS, "topic" => topic, "kind" => kind).increment(1);
}

/// The plausibility gate refused an input of `topic`.
pub(crate) fn input_refused(topic: Option<Topic>, kind: RefusalKind) {
    let topic = topic.map_or("unknown", Topic::base_name);
    counter!(INPUTS_REFUSED, "topic" => topic, "kind" => kind.as_str()).increment(1);
}

/// A config or override was refused.
pub(crate) fn config_rejected() {
    counter!(CONFIG_REJECTIONS).increment(1);
}

/// A journal batch of `entries` entries and `bytes` bytes was queued.
pub(crate) fn journal_written(entries: usize, bytes: usize) {
    counter!(JOURNAL_ENTRIES).increment(entries as u64);
    counter!(JOURNAL_RECORDS).increment(1);
    counter!(JOURNAL_BYTES).increment(bytes as u64);
}

/// A snapshot of `bytes` bytes of state was written for `partition`.
pub(crate) fn snapshot_written(partition: i32, bytes: usize) {
    gauge!(SNAPSHOT_BYTES, "partition" => partition.to_string()).set(bytes as f64);
    counter!(SNAPSHOTS).increment(1);
}

/// The pipeline waited `pause` for a snapshot, written or skipped.
pub(crate) fn snapshot_paused(pause: Duration) {
    histogram!(SNAPSHOT_PAUSE).record(pause.as_secs_f64());
}

/// Why a snapshot was not written.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SnapshotSkipped {
    /// Larger than the broker's record limit.
    TooLarge,
    /// The broker refused or did not acknowledge it.
    WriteFailed,
    /// The journal it would cover was not read back in time, so it could not be known
    /// free of a newer claim.
    NotReadBack,
}

impl SnapshotSkipped {
    const ALL: [Self; 3] = [Self::TooLarge, Self::WriteFailed, Self::NotReadBack];

    fn label(self) -> &'static str {
        match self {
            Self::TooLarge => "too_large",
            Self::WriteFailed => "write_failed",
            Self::NotReadBack => "not_read_back",
        }
    }
}

/// A snapshot was not written.
pub(crate) fn snapshot_skipped(reason: SnapshotSkipped) {
    counter!(SNAPSHOTS_SKIPPED, "reason" => reason.label()).increment(1);
}

/// Restore passed over a snapshot record it could not decode.
pub(crate) fn snapshot_unreadable() {
    counter!(SNAPSHOTS_UNREADABLE).increment(1);
}

/// A partition was restored in `took`, replaying `replayed` entries of which `divergent`
/// produced other decisions than they record, and passing over `fenced` entries of
/// superseded owners.
pub(crate) fn partition_restored(took: Duration, replayed: u64, divergent: u64, fenced: u64) {
    histogram!(RESTORE_DURATION).record(took.as_secs_f64());
    counter!(RESTORE_REPLAYED).increment(replayed);
    if divergent > 0 {
        counter!(RESTORE_DIVERGENT).increment(divergent);
    }
    if fenced > 0 {
        counter!(FENCED_ENTRIES).increment(fenced);
    }
}

/// This instance claimed partition `partition` at `epoch`.
pub(crate) fn ownership_claimed(partition: i32, epoch: i64) {
    gauge!(PARTITION_EPOCH, "partition" => partition.to_string()).set(epoch as f64);
}

/// Another instance claimed partition `partition`, which this one owned.
pub(crate) fn fenced(partition: i32) {
    counter!(FENCED).increment(1);
    gauge!(PARTITION_EPOCH, "partition" => partition.to_string()).set(0.0);
}

/// Why an owned partition was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Released {
    /// Revoked by the group; written out and snapshotted first.
    HandedOver,
    /// Moved by the group while this instance was out of touch.
    Lost,
    /// Claimed by another instance.
    Fenced,
}

impl Released {
    const ALL: [Self; 3] = [Self::HandedOver, Self::Lost, Self::Fenced];

    /// The `reason` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::HandedOver => "handed_over",
            Self::Lost => "lost",
            Self::Fenced => "fenced",
        }
    }
}

/// This instance gave up partition `partition`.
pub(crate) fn partition_released(partition: i32, why: Released) {
    counter!(PARTITIONS_RELEASED, "reason" => why.label()).increment(1);
    gauge!(PARTITION_EPOCH, "partition" => partition.to_string()).set(0.0);
}

/// This instance keeps `count` standby partitions warm.
pub(crate) fn standby_partitions(count: usize) {
    gauge!(STANDBY_PARTITIONS).set(count as f64);
}

/// This instance owns `count` schedule partitions.
pub(crate) fn partitions_owned(count: usize) {
    gauge!(PARTITIONS_OWNED).set(count as f64);
}

/// The processor started (true) or stopped (false) consuming inputs.
pub(crate) fn ready(ready: bool) {
    gauge!(READY).set(if ready { 1.0 } else { 0.0 });
}
