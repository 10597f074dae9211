//! Every metric the router exports: its name, its description, and the one function
//! through which it is emitted.
//!
//! The rest of the router reports events (`request_served`, `fallback_taken`, ...) and
//! never names a metric, so the hot path carries no metric macros and label values
//! cannot drift. Names and labels are an interface: the dashboards and alert rules in
//! `deploy/`, the benchmarks and the integration tests read them, so renaming one is a
//! breaking change. Every label is bounded: schedules and flavours come from decisions,
//! and the remaining labels are fixed enumerations (status classes, fallback rule
//! indices, codec error kinds, drop reasons).
//!

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::StatusCode;
use carbonflow_schemas::records::{DecisionFlavour, ScheduleDecision};
use metrics::{
    Counter, Gauge, Histogram, Unit, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};

// Metric names; `describe` says what each measures.
const REQUESTS: &str = "carbonflow_router_requests_total";
const UPSTREAM_LATENCY: &str = "carbonflow_router_upstream_latency_seconds";
const FALLBACKS: &str = "carbonflow_router_fallbacks_total";
const DECISION_EXPIRED: &str = "carbonflow_router_decision_expired";
const DECISION_AGE: &str = "carbonflow_router_decision_age_seconds";
const DECISION_VERSION: &str = "carbonflow_router_decision_version";
const COMMANDED_WEIGHT: &str = "carbonflow_router_commanded_weight";
const DECISION_PROPAGATION: &str = "carbonflow_router_decision_propagation_seconds";
const DECISIONS_IGNORED: &str = "carbonflow_router_decisions_ignored_total";
const TELEMETRY_DROPPED: &str = "carbonflow_router_telemetry_dropped_total";
const BOOTSTRAP_SECONDS: &str = "carbonflow_router_bootstrap_seconds";
const UNDECODABLE_DECISIONS: &str = "carbonflow_router_undecodable_decisions_total";
const FOLLOW_FAILURES: &str = "carbonflow_router_follow_failures_total";
const CONNECTIONS_REFUSED: &str = "carbonflow_router_connections_refused_total";
const CONNECTIONS_OPEN: &str = "carbonflow_router_connections_open";

/// Describe every metric with its unit, so that `/metrics` has a HELP line for each.
/// (`install_metrics` enables no unit suffixes: the names stay as they are.)
///
/// Call once, after the recorder is installed: descriptions given to no recorder are lost.
pub fn describe() {
    describe_counter!(
        REQUESTS,
        Unit::Count,
        "Requests answered, by schedule, serving flavour and status class (1xx..5xx)."
    );
    describe_histogram!(
        UPSTREAM_LATENCY,
        Unit::Seconds,
        "Time from a request's arrival until the upstream's response headers or the router's error, fallback attempt included, by schedule and serving flavour."
    );
    describe_counter!(
        FALLBACKS,
        Unit::Count,
        "Requests retried on a fallback flavour, by schedule and index of the matching rule."
    );
    describe_gauge!(
        DECISION_EXPIRED,
        "1 while the schedule's decision is past validUntil plus the grace (the expiry behaviour applies), else 0."
    );
    describe_gauge!(
        DECISION_AGE,
        Unit::Seconds,
        "Time since the held decision of the schedule was made."
    );
    describe_gauge!(
        DECISION_VERSION,
        "Version of the decision held for the schedule."
    );
    describe_gauge!(
        COMMANDED_WEIGHT,
        Unit::Percent,
        "Integer weight of the flavour in the held decision of the schedule."
    );
    describe_histogram!(
        DECISION_PROPAGATION,
        Unit::Seconds,
        "Time from a live decision's record timestamp to its application (history read at start excluded)."
    );
    describe_counter!(
        DECISIONS_IGNORED,
        Unit::Count,
        "Decisions not newer than the one held (duplicates or replayed history)."
    );
    describe_counter!(
        TELEMETRY_DROPPED,
        Unit::Count,
        "Telemetry buckets lost instead of produced to request.telemetry, by reason."
    );
    describe_gauge!(
        BOOTSTRAP_SECONDS,
        Unit::Seconds,
        "Time from start until caught up with the decisions topic (ready)."
    );
    describe_counter!(
        UNDECODABLE_DECISIONS,
        Unit::Count,
        "Records on the decisions topic skipped as undecodable, by codec error kind."
    );
    describe_counter!(
        FOLLOW_FAILURES,
        Unit::Count,
        "Failed attempts to start following the decisions topic (retried with backoff)."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        Unit::Count,
        "Connections closed on accept because the proxy already served --max-connections."
    );
    describe_gauge!(
        CONNECTIONS_OPEN,
        Unit::Count,
        "Client connections the proxy holds now, by worker thread (summed over workers, at most --max-connections)."
    );
}

/// A request was answered with `status` by `flavour` after `latency`.
pub(crate) fn request_served(
    served: &ServedMetrics,
    schedule: &str,
    flavour: &str,
    status: StatusCode,
    latency: Duration,
) {
    let class = status_class(status);
    served.requests[class]
        .get_or_init(|| counter!(REQUESTS, "schedule" => schedule.to_owned(), "flavour" => flavour.to_owned(), "status" => STATUS_CLASSES[class]))
        .increment(1);
    served
        .latency
        .get_or_init(|| histogram!(UPSTREAM_LATENCY, "schedule" => schedule.to_owned(), "flavour" => flavour.to_owned()))
        .record(latency.as_secs_f64());
}

/// One flavour's request metrics of one decision, registered on first use and then reused,
/// so a request costs no label allocation or registry lookup.
#[derive(Debug, Default)]
pub(crate) struct ServedMetrics {
    requests: [OnceLock<Counter>; 5],
    latency: OnceLock<Histogram>,
}

/// The `status` label values: the class, so that the label stays bounded.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Index of `status`'s class in [`STATUS_CLASSES`].
fn status_class(status: StatusCode) -> usize {
    match status.as_u16() {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// A request is being retried on a fallback flavour by rule `rule` (index in the
/// decision's fallbacks).
pub(crate) fn fallback_taken(schedule: &str, rule: usize) {
    fallbacks(schedule, rule).increment(1);
}

fn fallbacks(schedule: &str, rule: usize) -> Counter {
    counter!(FALLBACKS, "schedule" => schedule.to_owned(), "rule" => rule.to_string())
}

/// One schedule's decision series, registered when a decision with new flavours (or more
/// fallback rules) is applied and carried over by the next decisions: applying a decision
/// and the expiry watch, which visits every schedule twice a second, then cost no label
/// allocation or registry lookup (at 10,000 schedules they were 40,000 lookups a second).
#[derive(Debug)]
pub(crate) struct ScheduleGauges {
    version: Gauge,
    expired: Gauge,
    age: Gauge,
    /// Per flavour, in the decision's order: its name and its commanded weight.
    weights: Vec<(String, Gauge)>,
    /// Fallback rules whose series exist (started at zero).
    fallback_rules: usize,
}

impl ScheduleGauges {
    /// The series of `schedule` for a decision of `flavours` with `fallback_rules` rules;
    /// each rule's fallback series starts at zero, so that an alert on its increase sees
    /// the first fallback.
    pub(crate) fn of(schedule: &str, flavours: &[DecisionFlavour], fallback_rules: usize) -> Self {
        for rule in 0..fallback_rules {
            fallbacks(schedule, rule).increment(0);
        }
        Self {
            version: gauge!(DECISION_VERSION, "schedule" => schedule.to_owned()),
            expired: gauge!(DECISION_EXPIRED, "schedule" => schedule.to_owned()),
            age: gauge!(DECISION_AGE, "schedule" => schedule.to_owned()),
            weights: flavours
                .iter()
                .map(|f| {
                    let g = gauge!(COMMANDED_WEIGHT, "schedule" => schedule.to_owned(), "flavour" => f.name.clone());
                    (f.name.clone(), g)
                })
                .collect(),
            fallback_rules,
        }
    }

    /// Whether these series serve a decision of `flavours` with `fallback_rules` rules.
    pub(crate) fn fit(&self, flavours: &[DecisionFlavour], fallback_rules: usize) -> bool {
        fallback_rules <= self.fallback_rules
            && self.weights.len() == flavours.len()
            && self
                .weights
                .iter()
                .zip(flavours)
                .all(|((n, _), f)| *n == f.name)
    }

    /// Decision `d` is now in force: export its version and weights.
    pub(crate) fn applied(&self, d: &ScheduleDecision) {
        self.version.set(d.version as f64);
        for ((_, gauge), f) in self.weights.iter().zip(&d.flavours) {
            gauge.set(f64::from(f.weight_percent));
        }
    }

    /// The decision in force is `age_ms` old and has `expired` or not.
    pub(crate) fn status(&self, expired: bool, age_ms: i64) {
        self.expired.set(if expired { 1.0 } else { 0.0 });
        self.age.set(age_ms.max(0) as f64 / 1000.0);
    }
}

/// A live decision was applied `delay_ms` after its record's timestamp (clamped at 0:
/// the clocks of the broker and the router may disagree).
pub(crate) fn decision_propagated(delay_ms: i64) {
    histogram!(DECISION_PROPAGATION).record(delay_ms.max(0) as f64 / 1000.0);
}

/// A connection was closed on accept: the proxy already serves its maximum.
pub(crate) fn connection_refused() {
    counter!(CONNECTIONS_REFUSED).increment(1);
}

/// The open client connections of proxy worker `worker` (a label bounded by
/// `--worker-threads`), to pass to [`connection_opened`] and [`connection_closed`].
pub(crate) fn worker_connections(worker: usize) -> Gauge {
    gauge!(CONNECTIONS_OPEN, "worker" => worker.to_string())
}

/// A client connection took one of the proxy's slots and is served by the worker whose
/// gauge is `open`.
pub(crate) fn connection_opened(open: &Gauge) {
    open.increment(1.0);
}

/// A client connection ended and gave its slot back.
pub(crate) fn connection_closed(open: &Gauge) {
    open.decrement(1.0);
}

/// An attempt to start following the decisions topic failed (it is retried).
pub(crate) fn follow_failed() {
    counter!(FOLLOW_FAILURES).increment(1);
}

/// The router caught up with the decisions topic `seconds` after it started.
pub(crate) fn bootstrapped(seconds: f64) {
    gauge!(BOOTSTRAP_SECONDS).set(seconds);
}

/// A record on the decisions topic did not decode (`kind`: the codec error kind).
pub(crate) fn undecodable_decision(kind: &'static str) {
    counter!(UNDECODABLE_DECISIONS, "kind" => kind).increment(1);
}

/// A decision not newer than the one held was ignored.
pub(crate) fn decision_ignored() {
    counter!(DECISIONS_IGNORED).increment(1);
}

/// Why a telemetry bucket was lost (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// The bucket could not be encoded.
    Encode,
    /// The producer accepted it but the broker never acknowledged it.
    Delivery,
    /// librdkafka's queue was full.
    QueueFull,
    /// The producer refused it for another reason.
    Refused,
}

impl DropReason {
    const ALL: [Self; 4] = [Self::Encode, Self::Delivery, Self::QueueFull, Self::Refused];

    fn label(self) -> &'static str {
        match self {
            Self::Encode => "encode",
            Self::Delivery => "delivery",
            Self::QueueFull => "queue_full",
            Self::Refused => "refused",
        }
    }
}

/// One telemetry bucket was lost for `reason`.
pub(crate) fn telemetry_dropped(reason: DropReason) {
    telemetry_drops(reason).increment(1);
}

/// Start every drop series at zero, so that an alert on their increase sees the first
/// drop.
pub(crate) fn telemetry_drops_start() {
    for reason in DropReason::ALL {
        telemetry_drops(reason).increment(0);
    }
}

fn telemetry_drops(reason: DropReason) -> Counter {
    counter!(TELEMETRY_DROPPED, "reason" => reason.label())
}

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    #[test]
    fn events_render_the_series_that_dashboards_and_alerts_read() {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            describe();
            let served = ServedMetrics::default();
            request_served(
                &served,
                "a/b",
                "full",
                StatusCode::OK,
                Duration::from_millis(5),
            );
            request_served(
                &served,
                "a/b",
                "full",
                StatusCode::OK,
                Duration::from_millis(5),
            );
            let mut d = carbonflow_schemas::testing::samples::schedule_decision();
            d.schedule = "a/b".into();
            d.version = 7;
            d.flavours.truncate(1);
            d.flavours[0].name = "full".into();
            d.flavours[0].weight_percent = 60;
            let gauges = ScheduleGauges::of("a/b", &d.flavours, 2);
            gauges.applied(&d);
            fallback_taken("a/b", 1);
            decision_propagated(-5);
            decision_ignored();
            gauges.status(true, 1500);
            telemetry_drops_start();
            telemetry_dropped(DropReason::Delivery);
        });
        let text = handle.render();
        let lines: Vec<&str> = text.lines().collect();
        for expected in [
            r#"carbonflow_router_requests_total{schedule="a/b",flavour="full",status="2xx"} 2"#,
            r#"carbonflow_router_upstream_latency_seconds_count{schedule="a/b",flavour="full"} 2"#,
            r#"carbonflow_router_decision_version{schedule="a/b"} 7"#,
            r#"carbonflow_router_commanded_weight{schedule="a/b",flavour="full"} 60"#,
            r#"carbonflow_router_fallbacks_total{schedule="a/b",rule="0"} 0"#,
            r#"carbonflow_router_fallbacks_total{schedule="a/b",rule="1"} 1"#,
            "carbonflow_router_decision_propagation_seconds_sum 0",
            "carbonflow_router_decisions_ignored_total 1",
            r#"carbonflow_router_decision_expired{schedule="a/b"} 1"#,
            r#"carbonflow_router_decision_age_seconds{schedule="a/b"} 1.5"#,
            r#"carbonflow_router_telemetry_dropped_total{reason="encode"} 0"#,
            r#"carbonflow_router_telemetry_dropped_total{reason="delivery"} 1"#,
            r#"carbonflow_router_telemetry_dropped_total{reason="queue_full"} 0"#,
            r#"carbonflow_router_telemetry_dropped_total{reason="refused"} 0"#,
        ] {
            assert!(lines.contains(&expected), "{expected} missing from\n{text}");
        }
        for name in [
            REQUESTS,
            UPSTREAM_LATENCY,
            FALLBACKS,
            DECISION_EXPIRED,
            DECISION_AGE,
            DECISION_VERSION,
            COMMANDED_WEIGHT,
            DECISION_PROPAGATION,
            DECISIONS_IGNORED,
            TELEMETRY_DROPPED,
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "no HELP line for {name}"
            );
        }
    }

    #[test]
    fn status_classes_are_bounded() {
        let class = |s| STATUS_CLASSES[status_class(s)];
        assert_eq!(class(StatusCode::OK), "2xx");
        assert_eq!(class(StatusCode::SWITCHING_PROTOCOLS), "1xx");
        assert_eq!(class(StatusCode::NOT_MODIFIED), "3xx");
        assert_eq!(class(StatusCode::NOT_FOUND), "4xx");
        assert_eq!(class(StatusCode::BAD_GATEWAY), "5xx");
    }
}
