//! Codec: round trips, golden fixtures of every shipped schema version, typed errors, and
//! property tests that random or truncated bytes never panic the decoder.
//!
//! Regenerate fixtures of *current* versions after adding a new version with
//! `CARBONFLOW_BLESS=1 cargo test -p carbonflow-schemas --test codec` — never rewrite the
//! fixture of a version that has shipped.

use std::path::PathBuf;

use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use carbonflow_schemas::catalog::catalog;
use carbonflow_schemas::codec::{CodecError, HEADER_LEN, decode, encode};
use carbonflow_schemas::records::*;
use carbonflow_schemas::testing::samples;
use proptest::prelude::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Read a committed fixture, or (with CARBONFLOW_BLESS=1) write it first.
fn golden(name: &str, make: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
    let path = fixture(name);
    if std::env::var_os("CARBONFLOW_BLESS").is_some() && !path.exists() {
        std::fs::write(&path, make()).expect("write fixture");
    }
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "fixture {} missing ({e}); see the module doc",
            path.display()
        )
    })
}

fn round_trip<T: carbonflow_schemas::AvroRecord + PartialEq + std::fmt::Debug>(sample: T) {
    let bytes = encode(&sample).expect("encode");
    assert_eq!(&bytes[..2], &[0xC3, 0x01]);
    let back: T = decode(&bytes).expect("decode");
    assert_eq!(back, sample);
}

#[test]
fn every_record_type_round_trips() {
    round_trip(samples::forecast());
    round_trip(samples::schedule_config());
    round_trip(samples::manual_override());
    round_trip(samples::schedule_deletion());
    round_trip(samples::override_cancellation());
    round_trip(samples::telemetry_bucket());
    round_trip(samples::schedule_decision());
    round_trip(samples::tick());
    round_trip(samples::config_rejection());
    round_trip(samples::dead_letter());
    round_trip(samples::journal_entry());
    round_trip(samples::journal_batch());
    round_trip(samples::ownership_claim());
    round_trip(samples::partition_snapshot());
}

#[test]
fn headers_are_the_ones_apache_avro_computes() {
    use apache_avro::headers::{HeaderBuilder, RabinFingerprintHeader};
    for v in catalog().versions() {
        let expected = RabinFingerprintHeader::from_schema(&v.schema).build_header();
        let mut ours = vec![0xC3, 0x01];
        ours.extend_from_slice(&v.fingerprint.to_le_bytes());
        assert_eq!(ours, expected, "{} v{}", v.full_name, v.version);
    }
}

#[test]
fn current_version_fixtures_still_decode() {
    macro_rules! check {
        ($file:literal, $sample:expr, $ty:ty) => {{
            let bytes = golden($file, || encode(&$sample).expect("encode"));
            let decoded: $ty = decode(&bytes).unwrap_or_else(|e| panic!("{}: {e}", $file));
            assert_eq!(decoded, $sample, "{}", $file);
            // Today's encoder writes exactly what the fixture's writer wrote.
            assert_eq!(encode(&$sample).expect("encode"), bytes, "{}", $file);
        }};
    }
    check!("forecast-v2.bin", samples::forecast(), Forecast);
    check!(
        "schedule_config-v2.bin",
        samples::schedule_config(),
        ScheduleConfig
    );
    check!(
        "manual_override-v1.bin",
        samples::manual_override(),
        ManualOverride
    );
    check!(
        "schedule_deletion-v1.bin",
        samples::schedule_deletion(),
        ScheduleDeletion
    );
    check!(
        "override_cancellation-v1.bin",
        samples::override_cancellation(),
        OverrideCancellation
    );
    check!(
        "telemetry_bucket-v1.bin",
        samples::telemetry_bucket(),
        TelemetryBucket
    );
    check!(
        "schedule_decision-v3.bin",
        samples::schedule_decision(),
        ScheduleDecision
    );
    check!("tick-v1.bin", samples::tick(), Tick);
    check!(
        "config_rejection-v1.bin",
        samples::config_rejection(),
        ConfigRejection
    );
    check!("dead_letter-v1.bin", samples::dead_letter(), DeadLetter);
    check!(
        "journal_entry-v1.bin",
        samples::journal_entry(),
        JournalEntry
    );
    check!(
        "journal_batch-v2.bin",
        samples::journal_batch(),
        JournalBatch
    );
    check!(
        "ownership_claim-v1.bin",
        samples::ownership_claim(),
        OwnershipClaim
    );
    check!(
        "partition_snapshot-v2.bin",
        samples::partition_snapshot(),
        PartitionSnapshot
    );
}

#[test]
fn v1_configs_and_decisions_decode_with_the_v2_defaults() {
    // The samples hold the defaults: no caps, no floor, credentials forwarded.
    let config = golden("schedule_config-v1.bin", || unreachable!("shipped fixture"));
    let config: ScheduleConfig = decode(&config).expect("v1 config decodes");
    assert_eq!(config, samples::schedule_config());
    assert!(config.forward_credentials);
    assert_eq!(config.min_slot_precision, None);
    let decision = golden("schedule_decision-v1.bin", || {
        unreachable!("shipped fixture")
    });
    let decision: ScheduleDecision = decode(&decision).expect("v1 decision decodes");
    assert_eq!(decision, samples::schedule_decision());
    assert!(decision.forward_credentials);
}

#[test]
fn records_written_before_ownership_claims_read_with_epoch_0() {
    // The samples hold epoch 0, the default.
    for file in ["schedule_decision-v1.bin", "schedule_decision-v2.bin"] {
        let bytes = golden(file, || unreachable!("shipped fixture"));
        let d: ScheduleDecision = decode(&bytes).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert_eq!(d, samples::schedule_decision(), "{file}");
        assert_eq!(d.epoch, 0);
    }
    let bytes = golden("journal_batch-v1.bin", || unreachable!("shipped fixture"));
    let batch: JournalBatch = decode(&bytes).expect("v1 batch decodes");
    assert_eq!(batch, samples::journal_batch());
    let mut d = samples::schedule_decision();
    d.epoch = 7;
    round_trip(d);
}

#[test]
fn a_v1_snapshot_decodes_as_one_chunk() {
    let bytes = golden("partition_snapshot-v1.bin", || {
        unreachable!("shipped fixture")
    });
    let snap: PartitionSnapshot = decode(&bytes).expect("v1 snapshot decodes");
    assert_eq!(snap, samples::partition_snapshot());
    assert_eq!((snap.chunk, snap.chunks), (0, 1));
}

#[test]
fn forecast_v1_decodes_into_the_current_type_with_demand_defaulted() {
    let bytes = golden("forecast-v1.bin", || {
        // Written the way a v1 producer did: the v1 schema, no demand field.
        let v1 = catalog()
            .versions()
            .iter()
            .find(|v| v.full_name == "carbonflow.Forecast" && v.version == 1)
            .expect("forecast v1 in catalog");
        let point = |s: i64, e: i64, g: f64, idx: Option<&str>| {
            Value::Record(vec![
                ("start_ms".into(), Value::Long(s)),
                ("end_ms".into(), Value::Long(e)),
                ("g_per_kwh".into(), Value::Double(g)),
                (
                    "index".into(),
                    match idx {
                        Some(i) => Value::Union(1, Box::new(Value::String(i.into()))),
                        None => Value::Union(0, Box::new(Value::Null)),
                    },
                ),
            ])
        };
        let value = Value::Record(vec![
            ("zone".into(), Value::String("GB".into())),
            (
                "issuer".into(),
                Value::String("carbonintensity.org.uk".into()),
            ),
            ("issued_at_ms".into(), Value::Long(1_763_467_200_000)),
            (
                "points".into(),
                Value::Array(vec![
                    point(
                        1_763_467_200_000,
                        1_763_469_000_000,
                        266.0,
                        Some("moderate"),
                    ),
                    point(1_763_469_000_000, 1_763_470_800_000, 250.0, None),
                ]),
            ),
        ]);
        let mut out = vec![0xC3, 0x01];
        out.extend(v1.fingerprint.to_le_bytes());
        out.extend(
            GenericDatumWriter::builder(&v1.schema)
                .build()
                .expect("writer")
                .write_value_to_vec(value)
                .expect("v1 datum"),
        );
        out
    });
    let f: Forecast = decode(&bytes).expect("v1 decodes");
    assert_eq!(f.zone, "GB");
    assert_eq!(f.issuer, "carbonintensity.org.uk");
    assert_eq!(f.points.len(), 2);
    assert_eq!(f.points[0].g_per_kwh, 266.0);
    assert_eq!(f.points[0].index.as_deref(), Some("moderate"));
    assert_eq!(f.points[1].index, None);
    assert_eq!(f.demand, None, "field added in v2 takes its default");
}

#[test]
fn unknown_fingerprint_is_named() {
    let mut bytes = encode(&samples::tick()).expect("encode");
    bytes[2..HEADER_LEN].copy_from_slice(&0x0123_4567_89ab_cdefu64.to_le_bytes());
    let err = decode::<Tick>(&bytes).expect_err("unknown");
    assert!(matches!(
        err,
        CodecError::UnknownFingerprint {
            fingerprint: 0x0123_4567_89ab_cdef,
            ..
        }
    ));
    assert!(err.to_string().contains("0123456789abcdef"), "{err}");
}

#[test]
fn wrong_record_type_names_both_types() {
    let bytes = encode(&samples::tick()).expect("encode");
    let err = decode::<Forecast>(&bytes).expect_err("wrong type");
    let msg = err.to_string();
    assert!(
        msg.contains("carbonflow.Forecast") && msg.contains("carbonflow.Tick"),
        "{msg}"
    );
}

#[test]
fn truncated_records_are_reported_as_truncated() {
    let bytes = encode(&samples::schedule_decision()).expect("encode");
    let err = decode::<ScheduleDecision>(&bytes[..bytes.len() - 7]).expect_err("truncated");
    assert!(matches!(err, CodecError::Truncated { .. }), "{err}");
    assert!(matches!(
        decode::<ScheduleDecision>(&bytes[..4]),
        Err(CodecError::TooShort { len: 4 })
    ));
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(matches!(
        decode::<ScheduleDecision>(&longer),
        Err(CodecError::TrailingBytes { extra: 1, .. })
    ));
}

#[test]
fn every_strict_prefix_of_every_record_is_truncated() {
    // Includes cuts just before a trailing optional field, which apache-avro alone would
    // decode as null (see codec::StrictReader).
    macro_rules! all_prefixes {
        ($sample:expr, $ty:ty) => {{
            let full = encode(&$sample).expect("encode");
            for cut in HEADER_LEN..full.len() {
                match decode::<$ty>(&full[..cut]) {
                    Err(CodecError::Truncated { .. }) => {}
                    other => panic!("{} cut at {cut}/{}: {other:?}", stringify!($ty), full.len()),
                }
            }
        }};
    }
    all_prefixes!(samples::forecast(), Forecast);
    all_prefixes!(samples::schedule_config(), ScheduleConfig);
    all_prefixes!(samples::manual_override(), ManualOverride);
    all_prefixes!(samples::telemetry_bucket(), TelemetryBucket);
    all_prefixes!(samples::schedule_decision(), ScheduleDecision);
    all_prefixes!(samples::dead_letter(), DeadLetter);
    all_prefixes!(samples::journal_entry(), JournalEntry);
    all_prefixes!(samples::journal_batch(), JournalBatch);
    all_prefixes!(samples::ownership_claim(), OwnershipClaim);
    all_prefixes!(samples::partition_snapshot(), PartitionSnapshot);
}

#[test]
fn journal_records_read_as_entries_whether_batched_or_single_or_as_claims() {
    let mut batch = samples::journal_batch();
    batch.epoch = 42;
    let bytes = encode(&batch).expect("encode");
    assert_eq!(
        journal_record(&bytes).expect("batch"),
        JournalRecord::Entries {
            epoch: 42,
            entries: batch.entries.clone()
        }
    );
    // A journal written before batching holds single entries, of no epoch; they still read.
    let single = samples::journal_entry();
    let bytes = encode(&single).expect("encode");
    assert_eq!(
        journal_record(&bytes).expect("single").entries(),
        std::slice::from_ref(&single)
    );
    assert!(matches!(
        journal_record(&bytes),
        Ok(JournalRecord::Entries { epoch: 0, .. })
    ));
    let claim = samples::ownership_claim();
    let bytes = encode(&claim).expect("encode");
    assert_eq!(
        journal_record(&bytes).expect("claim"),
        JournalRecord::Claim(claim)
    );
    assert_eq!(OwnershipClaim::epoch_at(0), 1, "epoch 0 means no claim");
    // Anything else on the journal topic is an error naming what was found.
    let tick = encode(&samples::tick()).expect("encode");
    match journal_record(&tick) {
        Err(CodecError::WrongRecord {
            expected, found, ..
        }) => {
            assert_eq!(expected, "carbonflow.JournalEntry");
            assert_eq!(found, "carbonflow.Tick");
        }
        other => panic!("a tick is not a journal record: {other:?}"),
    }
}

#[test]
fn config_topic_commands_decode_by_fingerprint() {
    for cmd in [
        ConfigCommand::Config(Box::new(samples::schedule_config())),
        ConfigCommand::Override(samples::manual_override()),
        ConfigCommand::Delete(samples::schedule_deletion()),
        ConfigCommand::CancelOverride(samples::override_cancellation()),
    ] {
        let bytes = cmd.encode().expect("encode");
        assert_eq!(ConfigCommand::decode(&bytes).expect("decode"), cmd);
    }
}

#[test]
fn a_record_of_another_type_is_no_config_command() {
    let tick = encode(&samples::tick()).expect("encode");
    let e = ConfigCommand::decode(&tick).expect_err("a tick is not a command");
    assert!(
        matches!(e, carbonflow_schemas::CodecError::WrongRecord { .. }),
        "{e}"
    );
}

fn all_samples() -> Vec<Vec<u8>> {
    vec![
        encode(&samples::forecast()).expect("e"),
        encode(&samples::schedule_config()).expect("e"),
        encode(&samples::telemetry_bucket()).expect("e"),
        encode(&samples::schedule_decision()).expect("e"),
        encode(&samples::dead_letter()).expect("e"),
    ]
}

/// Decode `bytes` as every record type; only errors or values, never a panic.
fn decode_all(bytes: &[u8]) {
    let _ = decode::<Forecast>(bytes);
    let _ = decode::<ScheduleConfig>(bytes);
    let _ = decode::<TelemetryBucket>(bytes);
    let _ = decode::<ScheduleDecision>(bytes);
    let _ = decode::<DeadLetter>(bytes);
    let _ = ConfigCommand::decode(bytes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        decode_all(&bytes);
    }

    #[test]
    fn random_bodies_behind_a_valid_header_never_panic(which in 0usize..5, body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut bytes = all_samples()[which][..HEADER_LEN].to_vec();
        bytes.extend(body);
        decode_all(&bytes);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic(which in 0usize..5, cut in 0usize..4096) {
        let full = &all_samples()[which];
        let cut = cut % full.len();
        decode_all(&full[..cut]);
        let r = match which {
            0 => decode::<Forecast>(&full[..cut]).map(|_| ()),
            1 => decode::<ScheduleConfig>(&full[..cut]).map(|_| ()),
            2 => decode::<TelemetryBucket>(&full[..cut]).map(|_| ()),
            3 => decode::<ScheduleDecision>(&full[..cut]).map(|_| ()),
            _ => decode::<DeadLetter>(&full[..cut]).map(|_| ()),
        };
        prop_assert!(r.is_err(), "a strict prefix must not decode");
    }

    #[test]
    fn flipped_bytes_never_panic(which in 0usize..5, pos in 0usize..4096, bit in 0u8..8) {
        let mut bytes = all_samples()[which].clone();
        let pos = HEADER_LEN + pos % (bytes.len() - HEADER_LEN);
        bytes[pos] ^= 1 << bit;
        decode_all(&bytes);
    }
}
