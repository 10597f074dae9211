//! The plausibility gate, given / when / then: each bad input a foreign writer can produce
//! is refused with the field, the value and the rule; good inputs pass. Properties feed
//! arbitrary f64 (NaN, ±inf, subnormals, 1e308) to the gate and to every policy.

use carbonflow_core::forecast::ForecastSnapshot;
use carbonflow_core::gate::{Limits, Placement, RefusalKind, check};
use carbonflow_core::policy::{CreditView, POLICIES, PlanContext, PolicyInput, PolicyMemory};
use carbonflow_core::state::Input;
use carbonflow_schemas::records::{ConfigCommand, Flavour};
use carbonflow_schemas::testing::samples;
use carbonflow_schemas::topics::partition_of;
use proptest::prelude::*;

const PARTITIONS: i32 = 6;

/// Where the sample schedule belongs, with the clock at the sample forecast's issue time.
fn home() -> Placement {
    let schedule = samples::schedule_config().schedule;
    Placement {
        partition: partition_of(schedule.as_bytes(), PARTITIONS).expect("partitions > 0"),
        partitions: PARTITIONS,
        clock_ms: samples::forecast().issued_at_ms,
        wall_clock_ms: i64::MAX / 2,
    }
}

fn refusal(input: &Input, at: Placement) -> (RefusalKind, String) {
    let r = check(input, at, &Limits::default()).expect_err("refused");
    (r.kind, r.field)
}

#[test]
fn the_samples_pass() {
    let at = home();
    let mut bucket = samples::telemetry_bucket();
    bucket.bucket_start_ms = at.clock_ms;
    for input in [
        Input::Forecast(samples::forecast()),
        Input::Telemetry(bucket),
        Input::Config(ConfigCommand::Config(Box::new(samples::schedule_config()))),
        Input::Tick(samples::tick()),
    ] {
        assert_eq!(check(&input, at, &Limits::default()), Ok(()), "{input:?}");
    }
}

#[test]
fn a_nan_intensity_is_refused_naming_the_slot() {
    let mut f = samples::forecast();
    f.points[1].g_per_kwh = f64::NAN;
    let r = check(&Input::Forecast(f), home(), &Limits::default()).expect_err("refused");
    assert_eq!(
        (r.kind, r.field.as_str(), r.value.as_str()),
        (RefusalKind::Implausible, "points[1].g_per_kwh", "NaN")
    );
    assert!(r.to_string().contains("2000"), "{r}");
}

#[test]
fn an_intensity_above_the_limit_is_refused() {
    let mut f = samples::forecast();
    f.points[0].g_per_kwh = 1e308;
    assert_eq!(
        refusal(&Input::Forecast(f.clone()), home()),
        (RefusalKind::Implausible, "points[0].g_per_kwh".into())
    );
    let generous = Limits {
        max_intensity: f64::MAX,
        ..Limits::default()
    };
    assert_eq!(check(&Input::Forecast(f), home(), &generous), Ok(()));
}

#[test]
fn a_forecast_from_the_future_is_future_dated() {
    let mut f = samples::forecast();
    f.issued_at_ms = home().clock_ms + 6 * 60 * 1000;
    assert_eq!(
        refusal(&Input::Forecast(f), home()).0,
        RefusalKind::FutureDated
    );
}

#[test]
fn overlapping_or_unordered_slots_are_refused() {
    let mut f = samples::forecast();
    f.points.swap(0, 1);
    assert_eq!(
        refusal(&Input::Forecast(f), home()),
        (RefusalKind::Implausible, "points[1].start_ms".into())
    );
}

#[test]
fn a_forecast_that_has_ended_is_too_old() {
    let f = samples::forecast();
    let mut at = home();
    at.clock_ms = f.points.last().expect("slots").end_ms;
    assert_eq!(refusal(&Input::Forecast(f), at).0, RefusalKind::TooOld);
}

#[test]
fn telemetry_older_than_a_day_is_too_old() {
    let mut bucket = samples::telemetry_bucket();
    bucket.bucket_start_ms = home().clock_ms - 25 * 3600 * 1000;
    assert_eq!(
        refusal(&Input::Telemetry(bucket), home()).0,
        RefusalKind::TooOld
    );
}

#[test]
fn telemetry_on_another_partition_is_refused_naming_its_own() {
    let mut at = home();
    let own = at.partition;
    at.partition = (own + 1) % PARTITIONS;
    let mut bucket = samples::telemetry_bucket();
    bucket.bucket_start_ms = at.clock_ms;
    let r = check(&Input::Telemetry(bucket), at, &Limits::default()).expect_err("refused");
    assert_eq!(r.kind, RefusalKind::WrongPartition);
    assert!(r.rule.contains(&format!("partition {own}")), "{r}");
}

#[test]
fn negative_counts_are_refused() {
    let mut bucket = samples::telemetry_bucket();
    bucket.bucket_start_ms = home().clock_ms;
    bucket.counts[0].count = -5;
    assert_eq!(
        refusal(&Input::Telemetry(bucket), home()),
        (RefusalKind::Implausible, "counts[0].count".into())
    );
}

#[test]
fn an_override_longer_than_a_day_is_refused() {
    let mut o = samples::manual_override();
    o.issued_at_ms = home().clock_ms;
    o.ttl_seconds = 100_000_000_000_000_000;
    assert_eq!(
        refusal(&Input::Config(ConfigCommand::Override(o)), home()),
        (RefusalKind::Implausible, "ttl_seconds".into())
    );
}

#[test]
fn a_metadata_upstream_is_not_allowed() {
    let mut c = samples::schedule_config();
    c.flavours[1].upstream_url = "http://169.254.169.254/latest/meta-data".into();
    assert_eq!(
        refusal(&Input::Config(ConfigCommand::Config(Box::new(c))), home()),
        (RefusalKind::NotAllowed, "flavours[1].upstream_url".into())
    );
}

#[test]
fn a_validity_longer_than_an_hour_is_refused() {
    let mut c = samples::schedule_config();
    c.valid_for_seconds = 7200;
    assert_eq!(
        refusal(&Input::Config(ConfigCommand::Config(Box::new(c))), home()),
        (RefusalKind::Implausible, "valid_for_seconds".into())
    );
}

#[test]
fn a_tick_from_the_future_is_refused() {
    let mut at = home();
    at.wall_clock_ms = at.clock_ms;
    let mut tick = samples::tick();
    tick.at_ms = 253_402_300_799_999;
    assert_eq!(
        refusal(&Input::Tick(tick.clone()), at),
        (RefusalKind::FutureDated, "at_ms".into())
    );
    tick.at_ms = at.clock_ms + 1000;
    assert_eq!(check(&Input::Tick(tick), at, &Limits::default()), Ok(()));
}

#[test]
fn before_the_first_tick_no_time_is_future_dated() {
    let mut at = home();
    at.clock_ms = 0;
    assert_eq!(
        check(
            &Input::Forecast(samples::forecast()),
            at,
            &Limits::default()
        ),
        Ok(())
    );
}

fn any_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(f64::MIN_POSITIVE / 2.0),
        Just(1e308),
        Just(-0.0),
        any::<f64>(),
        0.0f64..2000.0,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_gate_passes_only_finite_intensities_within_the_limit(values in proptest::collection::vec(any_f64(), 1..8)) {
        let mut f = samples::forecast();
        f.points.truncate(1);
        let template = f.points[0].clone();
        f.points = values.iter().enumerate().map(|(i, v)| {
            let mut p = template.clone();
            p.start_ms = template.start_ms + i as i64 * 1_800_000;
            p.end_ms = p.start_ms + 1_800_000;
            p.g_per_kwh = *v;
            p
        }).collect();
        let plausible = values.iter().all(|v| v.is_finite() && (0.0..=2000.0).contains(v));
        prop_assert_eq!(check(&Input::Forecast(f), home(), &Limits::default()).is_ok(), plausible);
    }

    #[test]
    fn policies_never_emit_non_finite_weights_on_what_the_gate_passes(
        now in any_f64(), next in any_f64(), slots in proptest::collection::vec(any_f64(), 0..6),
        balance in any_f64(), policy in 0usize..POLICIES.len(),
    ) {
        // What the gate lets through: finite intensities in [0, 2000]; the ledger keeps
        // its balance finite and within the config's bounds.
        let ok = |v: f64| v.is_finite() && (0.0..=2000.0).contains(&v);
        let forecast = ForecastSnapshot::from_values(
            Some(now).filter(|v| ok(*v)),
            Some(next).filter(|v| ok(*v)),
            slots.into_iter().filter(|v| ok(*v)).collect(),
        );
        let flavours: Vec<Flavour> = samples::schedule_config().flavours;
        let input = PolicyInput {
            schedule: "ns/s",
            version: 1,
            flavours: &flavours,
            forecast: &forecast,
            credit: CreditView {
                balance: if balance.is_finite() { balance.clamp(-1.0, 1.0) } else { 0.0 },
                min: -1.0,
                max: 1.0,
                target_error: 0.15,
            },
            plan: PlanContext::default(),
        };
        let r = POLICIES[policy].evaluate(&input, &mut PolicyMemory::default()).expect("decides");
        prop_assert!(r.weights.iter().all(|(_, w)| w.is_finite() && *w >= 0.0), "{:?}", r.weights);
        prop_assert!(r.avg_precision.is_finite());
    }
}
