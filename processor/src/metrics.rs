//! The processor's Prometheus metrics: the reference engine's (section 8.3) under a
//! `carbonflow_` prefix, plus decisions, journal, snapshots, restore, rejections and dead
//! letters. Labels are bounded: schedule, flavour, component, cause, topic, error kind;
//! never offsets, versions or error strings.

use carbonflow_schemas::records::ScheduleDecision;

/// Export the figures of a decision just made.
pub fn decision(d: &ScheduleDecision) {
    let (namespace, schedule) = d
        .schedule
        .split_once('/')
        .map_or(("", d.schedule.as_str()), |(n, s)| (n, s));
    let (ns, sc) = (namespace.to_string(), schedule.to_string());
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
    metrics::gauge!("carbonflow_schedule_version", "namespace" => ns.clone(), "schedule" => sc.clone())
        .set(d.version as f64);
    let by_policy = [
        ("carbonflow_credit_balance", d.credits.balance),
        ("carbonflow_credit_velocity", d.credits.velocity),
        ("carbonflow_avg_precision", d.avg_precision),
        ("carbonflow_processing_throttle", d.processing.throttle),
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
