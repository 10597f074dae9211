//! The processor's Prometheus metrics: the reference engine's (section 8.3) under a
//! `carbonflow_` prefix, plus decisions, journal, snapshots, restore, rejections and dead
//! letters. Labels are bounded: schedule, flavour, component, cause, topic, error kind;
//! never offsets, versions or error strings.

use carbonflow_schemas::CodecError;
use carbonflow_schemas::bus::Topic;
use carbonflow_schemas::records::ScheduleDecision;

use crate::pipeline::ScheduleSummary;

/// Export the figures of a decision just made.
pub fn decision(d: &ScheduleDecision) {
    let (ns, sc) = split_id(&d.schedule);
    metrics::counter!("carbonflow_decisions_total", "cause" => cause_label(&d.provenance.cause))
        .increment(1);
    for f in &d.flavours {
        metrics::gauge!("carbonflow_schedule_flavour_weight", "namespace" => ns.clone(), "schedule" => sc.clone(), "flavour" => f.name.clone())
            .set(f64::from(f.weight_percent));
        // The reference adds each flavour's fractional weight per evaluation; counters are
        // integers here, so this one counts thousandths of a decision.
        metrics::counter!("carbonflow_policy_choice_milli_total", "namespace" => ns.clone(), "schedule" => sc.clone(), "flavour" => f.name.clone())
            .increment((f.weight * 1000.0).round() as u64);
    }
    metrics::gauge!("carbonflow_schedule_valid_until_seconds", "namespace" => ns.clone(), "schedule" => sc.clone())
        .set(d.valid_until_ms as f64 / 1000.0);
    let by_policy = [
        ("carbonflow_credit_balance", d.credits.balance),
        ("carbonflow_credit_velocity", d.credits.velocity),
        ("carbonflow_avg_precision", d.avg_precision),
        ("carbonflow_processing_throttle", d.processing.throttle),
        ("carbonflow_credit_min", d.credits.min),
        ("carbonflow_credit_max", d.credits.max),
    ];
    for (name, value) in by_policy {
        metrics::gauge!(name, "namespace" => ns.clone(), "schedule" => sc.clone()).set(value);
    }
    for c in &d.processing.ceilings {
        metrics::gauge!("carbonflow_effective_replica_ceiling", "namespace" => ns.clone(), "schedule" => sc.clone(), "component" => c.component.clone())
            .set(f64::from(c.replicas));
    }
    if let Some(f) = &d.provenance.forecast {
        for (horizon, value) in [("now", f.intensity_now), ("next", f.intensity_next)] {
            if let Some(v) = value {
                metrics::gauge!("carbonflow_forecast_intensity", "namespace" => ns.clone(), "schedule" => sc.clone(), "horizon" => horizon)
                    .set(v);
            }
        }
    }
}

/// Slots of the forecast ahead exported per schedule.
pub const FORECAST_SLOTS_EXPORTED: usize = 12;

/// A schedule was deleted. Its series cannot be removed from the exporter, so the ones that
/// alerts compare against time are set to NaN, which no comparison matches.
pub fn removed(id: &str) {
    let (ns, sc) = split_id(id);
    for name in [
        "carbonflow_schedule_version",
        "carbonflow_schedule_valid_until_seconds",
    ] {
        metrics::gauge!(name, "namespace" => ns.clone(), "schedule" => sc.clone()).set(f64::NAN);
    }
}

/// Start the counters that alerts watch at zero, so that their first increase is seen
/// (a series that appears at 1 has no increase to alert on).
pub fn start_at_zero() {
    metrics::counter!("carbonflow_config_rejections_total").increment(0);
    metrics::counter!("carbonflow_snapshots_skipped_total", "reason" => "too_large").increment(0);
    for topic in [
        Topic::Config,
        Topic::Forecasts,
        Topic::Telemetry,
        Topic::Ticks,
    ] {
        for kind in CodecError::DECODE_KINDS {
            metrics::counter!("carbonflow_dead_letters_total", "topic" => topic.base_name(), "kind" => kind)
                .increment(0);
        }
    }
    metrics::gauge!("carbonflow_processor_ready").set(0.0);
}

/// Export what was delivered and emitted, as the state holds it (so restored figures are
/// exported again after a restart rather than starting from zero).
pub fn summary(id: &str, s: &ScheduleSummary, previous: Option<&ScheduleSummary>) {
    let (ns, sc) = split_id(id);
    // Which zone a schedule follows (dashboards join the zone's forecast through it); set
    // only when it changes, since this runs for every input that touches the schedule.
    let old_zone = previous.map(|p| p.zone.as_str());
    if old_zone != Some(s.zone.as_str()) {
        if let Some(old) = old_zone {
            metrics::gauge!("carbonflow_schedule_zone", "namespace" => ns.clone(), "schedule" => sc.clone(), "zone" => old.to_string())
                .set(0.0);
        }
        metrics::gauge!("carbonflow_schedule_zone", "namespace" => ns.clone(), "schedule" => sc.clone(), "zone" => s.zone.clone())
            .set(1.0);
    }
    // The forecast ahead per zone, not per schedule: thousands of schedules share a few
    // zones. Slot 0 is the current one; a fixed number of slots keeps the label bounded
    // (the reference made one series per hour offset, never removed). Slots the forecast
    // does not reach are NaN, which dashboards show as gaps.
    let slots_changed = previous.is_none_or(|p| p.forecast_slots != s.forecast_slots);
    if slots_changed && !s.forecast_slots.is_empty() {
        for slot in 0..FORECAST_SLOTS_EXPORTED {
            metrics::gauge!("carbonflow_forecast_slot_intensity", "zone" => s.zone.clone(), "slot" => slot.to_string())
                .set(s.forecast_slots.get(slot).copied().unwrap_or(f64::NAN));
        }
    }
    for (flavour, share) in &s.delivered_shares {
        metrics::gauge!("carbonflow_delivered_share", "namespace" => ns.clone(), "schedule" => sc.clone(), "flavour" => flavour.clone())
            .set(*share);
    }
    // Counters in whole units: the index is request-equivalents × g/kWh, so rounding
    // loses nothing a dashboard shows.
    for (basis, value) in [
        ("delivered", s.emissions.delivered),
        ("full-precision", s.emissions.full_precision),
    ] {
        metrics::counter!("carbonflow_emissions_index_total", "namespace" => ns.clone(), "schedule" => sc.clone(), "basis" => basis)
            .absolute(value.max(0.0).round() as u64);
    }
    metrics::gauge!("carbonflow_schedule_requests_seen", "namespace" => ns.clone(), "schedule" => sc.clone())
        .set(s.requests_seen as f64);
    // 0 until the schedule's first decision (an alert watches for that).
    metrics::gauge!("carbonflow_schedule_version", "namespace" => ns, "schedule" => sc)
        .set(s.version as f64);
}

/// `namespace/name` as the two labels the reference uses.
fn split_id(id: &str) -> (String, String) {
    match id.split_once('/') {
        Some((n, s)) => (n.to_string(), s.to_string()),
        None => (String::new(), id.to_string()),
    }
}

/// Causes come from a fixed set; anything else is folded so labels stay bounded.
fn cause_label(cause: &str) -> &'static str {
    match cause {
        "config" => "config",
        "forecast" => "forecast",
        "telemetry" => "telemetry",
        "override" => "override",
        "override-end" => "override-end",
        "slot" => "slot",
        "refresh" => "refresh",
        _ => "other",
    }
}
