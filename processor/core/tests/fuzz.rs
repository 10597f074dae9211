//! Fuzzing as tests: mutated seeds and random bytes through everything that reads
//! untrusted input — the record codec, the plausibility gate and the fold behind it, the
//! schedule spec (JSON and YAML), the `processor decide` document and the admin API's
//! override body. Nothing may panic or hang, and whatever the gate lets through must fold
//! into decisions with finite weights.
//!
//! Seeds: every record type encoded from the samples, plus the files under
//! `fuzz/corpus/`. Mutations: byte flips, insertions, deletions, truncations and splices
//! of random bytes. CI runs a bounded number of cases; run longer with
//! `PROPTEST_CASES=100000 cargo test -p carbonflow-core --test fuzz --release`.

use std::path::PathBuf;

use carbonflow_core::gate::{Limits, Placement, check};
use carbonflow_core::spec::ScheduleSpec;
use carbonflow_core::state::{Input, Output, PartitionState};
use carbonflow_core::validate::{validate, validate_override};
use carbonflow_schemas::encode;
use carbonflow_schemas::records::{
    ConfigCommand, FlavourWeight, InputPosition, ManualOverride, Tick,
};
use carbonflow_schemas::testing::samples;
use carbonflow_schemas::topics::Topic;
use proptest::prelude::*;

fn corpus(kind: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(kind);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading the seed corpus {}: {e}", dir.display()))
        .map(|f| std::fs::read(f.expect("corpus entry").path()).expect("corpus file"))
        .collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds.sort();
    seeds
}

/// Every input record type, encoded: the codec's seeds.
fn record_seeds() -> Vec<(Topic, Vec<u8>)> {
    let ok = |r: Result<Vec<u8>, carbonflow_schemas::CodecError>| r.expect("sample encodes");
    vec![
        (Topic::Forecasts, ok(encode(&samples::forecast()))),
        (Topic::Telemetry, ok(encode(&samples::telemetry_bucket()))),
        (Topic::Config, ok(encode(&samples::schedule_config()))),
        (Topic::Config, ok(encode(&samples::manual_override()))),
        (Topic::Config, ok(encode(&samples::schedule_deletion()))),
        (Topic::Ticks, ok(encode(&samples::tick()))),
        (Topic::Decisions, ok(encode(&samples::schedule_decision()))),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Delete(usize, usize),
    Truncate(usize),
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(
        prop_oneof![
            (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
            (
                any::<usize>(),
                proptest::collection::vec(any::<u8>(), 1..16)
            )
                .prop_map(|(i, b)| Mutation::Insert(i, b)),
            (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
            any::<usize>().prop_map(Mutation::Truncate),
        ],
        0..6,
    )
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len();
        match m {
            Mutation::Flip(i, b) if len > 0 => bytes[i % len] ^= b,
            Mutation::Insert(i, b) => {
                let at = i % (len + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Delete(i, n) if len > 0 => {
                let at = i % len;
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
            _ => {}
        }
    }
    bytes
}

/// A partition whose clock a tick set, holding the sample schedule's config.
fn partition() -> (PartitionState, Placement) {
    let mut state = PartitionState::new(0);
    let at = |offset| InputPosition {
        topic: "schedule.ticks".into(),
        partition: 0,
        offset,
    };
    let clock = samples::forecast().issued_at_ms;
    state.apply(
        &Input::Tick(Tick {
            at_ms: clock,
            source: "fuzz".into(),
        }),
        &at(0),
    );
    let mut config = samples::schedule_config();
    config.published_at_ms = clock;
    state.apply(
        &Input::Config(ConfigCommand::Config(Box::new(config))),
        &at(1),
    );
    let placement = Placement {
        partition: 0,
        partitions: 1,
        clock_ms: clock,
        wall_clock_ms: i64::MAX / 2,
    };
    (state, placement)
}

/// Decode `bytes` as a record of `topic`; what decodes goes through the gate, and what
/// passes is folded: its decisions must have finite weights.
fn through_the_fold(topic: Topic, bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(input) = Input::decode(topic, bytes) else {
        return Ok(());
    };
    let (mut state, at) = partition();
    if check(&input, at, &Limits::default()).is_err() {
        return Ok(());
    }
    let pos = InputPosition {
        topic: topic.base_name().into(),
        partition: 0,
        offset: 9,
    };
    for out in state.apply(&input, &pos) {
        if let Output::Decision { decision: d, .. } = out {
            prop_assert!(
                d.flavours
                    .iter()
                    .all(|f| f.weight.is_finite() && f.weight >= 0.0),
                "{:?}",
                d.flavours
            );
            prop_assert!(d.avg_precision.is_finite());
        }
    }
    Ok(())
}

/// A schedule spec as `PUT /config` and `ingest config apply` read it.
fn spec(value: serde_json::Value) {
    let mut value = value;
    if let Some(map) = value.as_object_mut() {
        map.remove("schedule");
    }
    if let Ok(spec) = ScheduleSpec::from_value(value) {
        let _ = validate(&spec.to_config("fuzz/spec", 1, 0));
    }
}

/// `POST /schedule/{ns}/{name}/manual`'s body, as the admin API reads it.
fn manual_body(value: &serde_json::Value) {
    let Some(weights) = value.get("weights").and_then(|w| w.as_object()) else {
        return;
    };
    let o = ManualOverride {
        schedule: "fuzz/spec".into(),
        issued_at_ms: 0,
        ttl_seconds: value
            .get("ttlSeconds")
            .and_then(|t| t.as_i64())
            .unwrap_or(60),
        weights: weights
            .iter()
            .map(|(f, w)| FlavourWeight {
                flavour: f.clone(),
                weight: w.as_f64().unwrap_or(f64::NAN),
            })
            .collect(),
        reason: None,
    };
    let _ = validate_override(&o, None, None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(512)
    ))]

    #[test]
    fn mutated_records_never_panic_the_codec_gate_or_fold(seed in any::<prop::sample::Index>(), m in mutations()) {
        let seeds = record_seeds();
        let (topic, bytes) = &seeds[seed.index(seeds.len())];
        through_the_fold(*topic, &mutate(bytes.clone(), &m))?;
    }

    #[test]
    fn random_bytes_never_panic_the_codec(bytes in proptest::collection::vec(any::<u8>(), 0..512), topic in 0usize..5) {
        let topic = [Topic::Forecasts, Topic::Telemetry, Topic::Config, Topic::Ticks, Topic::Decisions][topic];
        through_the_fold(topic, &bytes)?;
        let mut framed = vec![0xC3, 0x01];
        framed.extend(&bytes);
        through_the_fold(topic, &framed)?;
    }

    #[test]
    fn mutated_specs_and_bodies_never_panic(seed in any::<prop::sample::Index>(), m in mutations()) {
        let seeds = corpus("spec");
        let text = mutate(seeds[seed.index(seeds.len())].clone(), &m);
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&text) {
            spec(v.clone());
            manual_body(&v);
        }
        if let Ok(v) = serde_yaml_ng::from_slice::<serde_json::Value>(&text) {
            spec(v);
        }
    }

    #[test]
    fn mutated_decide_documents_never_panic(seed in any::<prop::sample::Index>(), m in mutations()) {
        let seeds = corpus("decide");
        let text = mutate(seeds[seed.index(seeds.len())].clone(), &m);
        if let Ok(text) = std::str::from_utf8(&text) {
            let _ = carbonflow_core::dry_run::run(text);
        }
    }
}

#[test]
fn every_seed_is_accepted_unmutated() {
    for (topic, bytes) in record_seeds() {
        assert!(Input::decode(topic, &bytes).is_ok(), "{topic:?}");
    }
    for text in corpus("decide") {
        let text = String::from_utf8(text).expect("utf-8");
        carbonflow_core::dry_run::run(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    }
    for text in corpus("spec") {
        let value: serde_json::Value = serde_yaml_ng::from_slice(&text).expect("YAML or JSON");
        if value.get("weights").is_some() {
            continue; // the override body
        }
        let mut value = value;
        value.as_object_mut().expect("object").remove("schedule");
        let spec = ScheduleSpec::from_value(value).expect("a valid spec");
        validate(&spec.to_config("fuzz/spec", 1, 0)).expect("valid");
    }
}
