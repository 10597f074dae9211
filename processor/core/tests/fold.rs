//! Properties of the event-sourced fold over random input sequences: what restore, audit
//! and exactly-once effects rely on.

use carbonflow_core::state::{Input, Output, PartitionState};
use carbonflow_schemas::records::{ConfigCommand, InputPosition};
use carbonflow_schemas::testing::samples;
use proptest::prelude::*;

const T0: i64 = 1_763_467_200_000;

/// One input of a generated sequence, read at the next offset of its topic.
#[derive(Debug, Clone)]
enum Step {
    /// A config of the sample schedule with this target error, published `at` s after T0.
    Config { target_error: f64, at: i64 },
    /// A forecast with this intensity now.
    Forecast { intensity: f64, at: i64 },
    /// A telemetry bucket starting `at` s after T0.
    Telemetry { at: i64 },
    /// A tick `at` s after T0.
    Tick { at: i64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0.05..0.5_f64, 0..600_i64)
            .prop_map(|(target_error, at)| Step::Config { target_error, at }),
        (50.0..500.0_f64, 0..600_i64).prop_map(|(intensity, at)| Step::Forecast { intensity, at }),
        (0..600_i64).prop_map(|at| Step::Telemetry { at }),
        (0..600_i64).prop_map(|at| Step::Tick { at }),
    ]
}

/// The inputs of `steps` with their positions (offsets counted per topic).
fn inputs(steps: &[Step]) -> Vec<(Input, InputPosition)> {
    let mut offsets = std::collections::BTreeMap::<&str, i64>::new();
    steps
        .iter()
        .map(|s| {
            let (topic, input) = match s {
                Step::Config { target_error, at } => {
                    let mut c = samples::schedule_config();
                    c.target_error = *target_error;
                    c.published_at_ms = T0 + at * 1000;
                    c.config_version = T0 + at * 1000;
                    (
                        "schedule.config",
                        Input::Config(ConfigCommand::Config(Box::new(c))),
                    )
                }
                Step::Forecast { intensity, at } => {
                    let f = samples::forecast_from(
                        "GB",
                        "test",
                        T0 + at * 1000,
                        1_800_000,
                        &[*intensity, intensity * 1.1],
                    );
                    ("carbon.forecasts", Input::Forecast(f))
                }
                Step::Telemetry { at } => {
                    let mut b = samples::telemetry_bucket();
                    b.schedule = samples::schedule_config().schedule;
                    b.bucket_start_ms = T0 + at * 1000;
                    ("request.telemetry", Input::Telemetry(b))
                }
                Step::Tick { at } => {
                    let mut t = samples::tick();
                    t.at_ms = T0 + at * 1000;
                    ("processor.ticks", Input::Tick(t))
                }
            };
            let offset = offsets.entry(topic).or_default();
            let pos = InputPosition {
                topic: topic.into(),
                partition: 0,
                offset: *offset,
            };
            *offset += 1;
            (input, pos)
        })
        .collect()
}

/// Fold `inputs` into `state` as the live path does; returns every output.
fn fold(state: &mut PartitionState, inputs: &[(Input, InputPosition)]) -> Vec<Output> {
    let mut out = vec![];
    for (input, pos) in inputs {
        if !state.already_applied(pos) {
            out.extend(state.apply(input, pos));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn applying_a_duplicated_position_changes_nothing(steps in prop::collection::vec(step(), 1..40), dup in any::<prop::sample::Index>()) {
        let inputs = inputs(&steps);
        let mut state = PartitionState::new(0);
        fold(&mut state, &inputs);
        let before = state.clone();
        let again = &inputs[dup.index(inputs.len())];
        let outputs = fold(&mut state, std::slice::from_ref(again));
        prop_assert!(outputs.is_empty());
        prop_assert_eq!(state, before);
    }

    #[test]
    fn a_snapshot_after_a_prefix_folded_with_the_tail_equals_the_full_fold(steps in prop::collection::vec(step(), 1..40), cut in any::<prop::sample::Index>()) {
        let inputs = inputs(&steps);
        let cut = cut.index(inputs.len() + 1);
        let mut full = PartitionState::new(0);
        let all = fold(&mut full, &inputs);
        let mut prefix = PartitionState::new(0);
        let mut outputs = fold(&mut prefix, &inputs[..cut]);
        let json = serde_json::to_vec(&prefix).expect("encodes");
        let mut restored: PartitionState = serde_json::from_slice(&json).expect("decodes");
        outputs.extend(fold(&mut restored, &inputs[cut..]));
        prop_assert_eq!(restored, full);
        prop_assert_eq!(outputs, all);
    }

    #[test]
    fn decision_versions_strictly_increase_per_schedule(steps in prop::collection::vec(step(), 1..60)) {
        let mut state = PartitionState::new(0);
        let mut last = std::collections::BTreeMap::<String, i64>::new();
        for o in fold(&mut state, &inputs(&steps)) {
            if let Output::Decision { decision: d, .. } = o {
                let held = last.insert(d.schedule.clone(), d.version);
                prop_assert!(held.is_none_or(|v| v < d.version), "{} after {:?}", d.version, held);
            }
        }
    }
}
