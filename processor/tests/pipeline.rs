//! The processor through the real broker: crash safety under SIGKILL, explicit ownership
//! and takeover, refused configs, dead letters.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use carbonflow_processor::journal::{RestoreOptions, restore};
use carbonflow_schemas::bus::{KafkaArgs, RangeReader, RecordProducer, Topic};
use carbonflow_schemas::decode;
use carbonflow_schemas::records::{
    ConfigRejection, DeadLetter, JournalRecord, OwnershipClaim, ScheduleDecision, journal_record,
};
use carbonflow_schemas::service::now_ms;
use carbonflow_schemas::testing::{fresh_layout, samples};
use common::{
    ProcessorProcess, assert_audit_verifies, assert_no_decision_issued_twice, assert_requests_seen,
    bucket, config, decisions_by_schedule, eventually, fold_whole_journal, forecast, http,
    read_all, send, state_of, try_http,
};
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// Versions never go backwards, and a version seen twice has identical content.
fn assert_versions_never_regress(args: &KafkaArgs) -> BTreeMap<String, i64> {
    let mut last = BTreeMap::new();
    for (schedule, ds) in decisions_by_schedule(args) {
        for pair in ds.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            assert!(
                b.0.version >= a.0.version,
                "{schedule}: version {} follows {} on the topic",
                b.0.version,
                a.0.version
            );
            if b.0.version == a.0.version {
                assert_eq!(
                    a.1, b.1,
                    "{schedule}: version {} issued twice with different content",
                    a.0.version
                );
            }
        }
        last.insert(schedule, ds.last().map_or(0, |d| d.0.version));
    }
    last
}

/// The last decision of every schedule on the topic.
fn last_decisions(args: &KafkaArgs) -> BTreeMap<String, ScheduleDecision> {
    decisions_by_schedule(args)
        .into_iter()
        .filter_map(|(s, ds)| ds.into_iter().last().map(|(d, _)| (s, d)))
        .collect()
}

/// For `eventually`: the last decision of `schedule` on the topic, once `want` holds for it.
async fn last_decision_where(
    args: &KafkaArgs,
    schedule: &str,
    want: impl Fn(&ScheduleDecision) -> bool,
) -> Option<ScheduleDecision> {
    last_decisions(args).remove(schedule).filter(|d| want(d))
}

/// The processor's final ledger (what its last decision recorded) equals the ledger
/// obtained by folding each partition's whole journal in order; returns the folds.
async fn assert_final_state_is_the_journal_fold(
    args: &KafkaArgs,
) -> Vec<carbonflow_processor::journal::Restored> {
    let last = last_decisions(args);
    let mut folds = Vec::new();
    for p in 0..args.schedule_partitions {
        let folded = fold_whole_journal(args, p).await;
        assert!(
            folded.repairs.unsent.is_empty(),
            "a clean stop leaves nothing unsent"
        );
        for (id, s) in &folded.state.schedules {
            let d = &last[id];
            assert_eq!(d.version, s.version, "{id}: last version");
            assert_eq!(
                d.provenance.ledger_after.balance,
                s.ledger.balance(),
                "{id}: balance"
            );
            assert_eq!(
                d.provenance.ledger_after.velocity,
                s.ledger.velocity(),
                "{id}: velocity"
            );
        }
        folds.push(folded);
    }
    folds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_and_duplicates_nothing() {
    // Small snapshot interval so restores use snapshot + journal tail, not just the tail.
    crash_run("crash", &["--snapshot-every", "40"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_snapshots_are_written_loses_and_duplicates_nothing() {
    // A snapshot of every partition every second: the kills land before, during and just
    // after snapshot writes.
    crash_run(
        "snapcrash",
        &["--snapshot-every", "1", "--snapshot-interval-s", "1"],
    )
    .await;
}

/// Telemetry for four schedules while the processor is SIGKILLed six times at random
/// points; then every request is counted once, versions never regress, and the state
/// equals the journal folded from offset 0 and snapshot + tail.
async fn crash_run(name: &str, extra: &[&str]) {
    let args = fresh_layout(name, 2).await;
    let producer = RecordProducer::new(&args, "crash-test").expect("producer");
    let schedules: Vec<String> = (0..4).map(|i| format!("crash/s{i}")).collect();
    for s in &schedules {
        send(&producer, &args, Topic::Config, s, &config(s, 1)).await;
    }
    send(&producer, &args, Topic::Forecasts, "GB", &forecast(150.0)).await;

    let mut processor = ProcessorProcess::start(&args, 0, 1, extra);
    // The configs are journaled before any telemetry is sent. Otherwise a kill before
    // the first journal write makes the restart read configs and telemetry afresh, and
    // across topics the consumer does not keep the order in which they were produced: a
    // window closed before its schedule's config is read is dropped unaccounted (its
    // requests still counted as seen). That is the cold-start ordering, not crash safety,
    // which is what this test checks.
    let config_topic = args.layout().name(Topic::Config);
    eventually(
        "the configs in the journal",
        Duration::from_secs(60),
        || async {
            let journaled = (0..2)
                .flat_map(|p| read_all(&args, Topic::Journal, p))
                .filter_map(|(_, _, payload)| journal_record(&payload?).ok())
                .flat_map(|r| r.entries().to_vec())
                .filter(|e| e.input.topic == config_topic)
                .count();
            (journaled >= schedules.len()).then_some(())
        },
    )
    .await;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let batches = 300;
    let kill_points: Vec<usize> = {
        let mut k: Vec<usize> = (0..6).map(|_| rng.random_range(10..batches - 10)).collect();
        k.sort_unstable();
        k.dedup();
        k
    };
    assert!(kill_points.len() >= 5, "need at least 5 kill points");
    let mut kills = 0;
    for batch in 0..batches {
        for (i, s) in schedules.iter().enumerate() {
            let counts = [
                rng.random_range(0..20),
                rng.random_range(0..20),
                rng.random_range(0..20),
            ];
            *expected.entry(s.clone()).or_default() += counts.iter().sum::<i64>();
            let b = bucket(s, &format!("router-{}", i % 2), counts);
            send(&producer, &args, Topic::Telemetry, s, &b).await;
        }
        if batch == batches / 2 {
            send(&producer, &args, Topic::Forecasts, "GB", &forecast(260.0)).await;
        }
        if kill_points.contains(&batch) {
            processor.kill();
            kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..400))).await;
            processor = ProcessorProcess::start(&args, 0, 1, extra);
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(kills >= 5);
    processor.wait_ready(Duration::from_secs(60)).await;

    // Every request counted exactly once.
    assert_requests_seen(&[&processor], &expected).await;
    // Let the last windows close, stop cleanly, and compare with the journal.
    tokio::time::sleep(Duration::from_secs(3)).await;
    processor.stop();
    assert_versions_never_regress(&args);
    for folded in assert_final_state_is_the_journal_fold(&args).await {
        let p = folded.state.partition;
        let a = args.clone();
        let restored = tokio::task::spawn_blocking(move || restore(&a, p, RestoreOptions::LATEST))
            .await
            .expect("join")
            .expect("snapshot + tail");
        assert!(
            restored.from_snapshot,
            "partition {p} restored without a snapshot"
        );
        assert_eq!(
            folded.state, restored.state,
            "partition {p}: snapshot + tail differs from the whole journal folded"
        );
        for (id, s) in &folded.state.schedules {
            assert_eq!(s.requests_seen, expected[id], "{id}: journal fold counts");
            let open: i64 = s.window.as_ref().map_or(0, |w| w.served.values().sum());
            assert_eq!(
                s.requests_accounted + open,
                expected[id],
                "{id}: every answered request is in the ledger or its open window"
            );
            assert!(s.requests_accounted > 0, "{id}: some windows closed");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_split_the_partitions_then_one_takes_over() {
    let args = fresh_layout("owners", 2).await;
    let producer = RecordProducer::new(&args, "owners-test").expect("producer");
    let schedules: Vec<String> = (0..8).map(|i| format!("own/s{i}")).collect();
    for s in &schedules {
        send(&producer, &args, Topic::Config, s, &config(s, 1)).await;
    }
    let a = ProcessorProcess::start(&args, 0, 2, &[]);
    let b = ProcessorProcess::start(&args, 1, 2, &[]);
    a.wait_ready(Duration::from_secs(60)).await;
    b.wait_ready(Duration::from_secs(60)).await;
    send(&producer, &args, Topic::Forecasts, "GB", &forecast(200.0)).await;

    // Each schedule is decided by exactly one instance: the owner of its partition.
    let mut owner = BTreeMap::new();
    for s in &schedules {
        let who = eventually(
            &format!("{s} to be decided"),
            Duration::from_secs(30),
            || async {
                let in_a = http("GET", &format!("{}/schedule/{s}", a.admin), None)
                    .await
                    .0
                    == 200;
                let in_b = http("GET", &format!("{}/schedule/{s}", b.admin), None)
                    .await
                    .0
                    == 200;
                match (in_a, in_b) {
                    (true, true) => panic!("{s} is decided by both instances"),
                    (true, false) => Some(0),
                    (false, true) => Some(1),
                    _ => None,
                }
            },
        )
        .await;
        let state = state_of(if who == 0 { &a } else { &b }, s)
            .await
            .expect("state");
        assert_eq!(
            state["partition"].as_i64().map(|p| p % 2),
            Some(who),
            "{s} decided by instance {who} which does not own its partition"
        );
        owner.insert(s.clone(), who);
    }
    assert!(
        owner.values().any(|w| *w == 0) && owner.values().any(|w| *w == 1),
        "the test schedules should cover both partitions: {owner:?}"
    );
    // Each journal partition was written by its owner only.
    for p in 0..2 {
        for (_, _, payload) in read_all(&args, Topic::Journal, p) {
            match journal_record(&payload.expect("entry")).expect("journal decodes") {
                JournalRecord::Claim(c) => assert_eq!(c.partition, p),
                JournalRecord::Entries { entries, .. } => {
                    assert!(!entries.is_empty(), "an empty journal record");
                    for e in entries {
                        assert_eq!(e.partition, p);
                    }
                }
            }
        }
    }
    // The admin API shows a decision as soon as it is made; wait until all are on the topic.
    let before = eventually(
        "every decision on the topic",
        Duration::from_secs(10),
        || async {
            let v = assert_versions_never_regress(&args);
            (v.len() == schedules.len()).then_some(v)
        },
    )
    .await;
    drop(a);
    drop(b); // SIGKILL both

    let mut solo = ProcessorProcess::start(&args, 0, 1, &[]);
    solo.wait_ready(Duration::from_secs(60)).await;
    send(&producer, &args, Topic::Forecasts, "GB", &forecast(320.0)).await;
    for s in &schedules {
        let prior = before[s];
        eventually(
            &format!("{s} decided again after takeover"),
            Duration::from_secs(30),
            || async {
                let (code, v) = http("GET", &format!("{}/schedule/{s}", solo.admin), None).await;
                (code == 200 && v["version"].as_i64()? > prior).then_some(())
            },
        )
        .await;
    }
    solo.stop();
    assert_versions_never_regress(&args);
    // No divergent state: the survivor's final ledgers are the folds of the journals.
    let folds = assert_final_state_is_the_journal_fold(&args).await;
    let folded: usize = folds.iter().map(|f| f.state.schedules.len()).sum();
    assert_eq!(folded, schedules.len());
}

/// Journal records of partition `p` with their Kafka timestamps: (offset, ms, record).
fn journal_with_times(args: &KafkaArgs, p: i32) -> Vec<(i64, i64, JournalRecord)> {
    let reader = RangeReader::new(args, "fence-test").expect("reader");
    let topic = args.layout().name(Topic::Journal);
    let (low, high) = reader.watermarks(&topic, p).expect("watermarks");
    let mut out = vec![];
    reader
        .read(&topic, p, low, high, |r| {
            let record = journal_record(r.payload.unwrap_or_default()).expect("journal decodes");
            out.push((r.offset, r.timestamp_ms.expect("timestamped"), record));
            Ok::<(), carbonflow_schemas::bus::BusError>(())
        })
        .expect("read the journal");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_owner_of_the_same_partitions_fences_the_first_and_nothing_is_lost_or_doubled() {
    let args = fresh_layout("fence", 2).await;
    let producer = RecordProducer::new(&args, "fence-test").expect("producer");
    let schedules: Vec<String> = (0..4).map(|i| format!("fence/s{i}")).collect();
    for s in &schedules {
        send(&producer, &args, Topic::Config, s, &config(s, 1)).await;
    }
    send(&producer, &args, Topic::Forecasts, "GB", &forecast(150.0)).await;
    // Every instance is started as "instance 0 of 1": each new one owns the same
    // partitions as the one running, as after a botched scale-up.
    let mut owner = ProcessorProcess::start(&args, 0, 1, &["--snapshot-every", "50"]);
    owner.wait_ready(Duration::from_secs(60)).await;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let (rounds, batches_per_round) = (4, 60);
    let mut fenced_exits = 0;
    for round in 0..rounds {
        let mut newcomer = None;
        for batch in 0..batches_per_round {
            for (i, s) in schedules.iter().enumerate() {
                let counts = [rng.random_range(0..20), rng.random_range(0..20), 0];
                *expected.entry(s.clone()).or_default() += counts.iter().sum::<i64>();
                let b = bucket(s, &format!("router-{}", i % 2), counts);
                send(&producer, &args, Topic::Telemetry, s, &b).await;
            }
            if batch == batches_per_round / 3 && round > 0 {
                // A second owner starts while the first keeps deciding under load.
                newcomer = Some(ProcessorProcess::start(
                    &args,
                    0,
                    1,
                    &["--snapshot-every", "50"],
                ));
            }
            if batch == batches_per_round / 2 {
                send(
                    &producer,
                    &args,
                    Topic::Forecasts,
                    "GB",
                    &forecast(150.0 + f64::from(round * 40 + 1)),
                )
                .await;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        if round == 0 {
            // Every 50 entries a snapshot, and the time the pipeline waited for it.
            let paused = eventually(
                "a snapshot's pause to be recorded",
                Duration::from_secs(30),
                || async {
                    owner
                        .metric("carbonflow_snapshot_pause_seconds_count")
                        .await
                        .filter(|n| *n >= 1.0)
                },
            )
            .await;
            let written = owner.metric("carbonflow_snapshots_total").await;
            assert!(
                written.is_some_and(|w| w >= 1.0),
                "{paused} pauses recorded, {written:?} snapshots written"
            );
        }
        if let Some(next) = newcomer {
            // The first owner saw the newer claim and stopped, loudly.
            let status = eventually(
                "the superseded owner to exit",
                Duration::from_secs(30),
                || {
                    let status = owner.exit_status();
                    async move { status }
                },
            )
            .await;
            assert!(
                !status.success(),
                "a fenced processor exits non-zero, got {status}"
            );
            fenced_exits += 1;
            owner = next;
            owner.wait_ready(Duration::from_secs(60)).await;
        }
    }
    assert_eq!(fenced_exits, rounds - 1);
    assert_requests_seen(&[&owner], &expected).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    owner.stop();

    assert_no_decision_issued_twice(&args);
    let (mut fenced_entries, mut fold_last) = (0, BTreeMap::new());
    for p in 0..args.schedule_partitions {
        // Every superseded owner stopped writing within a second of the claim that
        // superseded it.
        let journal = journal_with_times(&args, p);
        let claims: Vec<(i64, i64)> = journal
            .iter()
            .filter(|(_, _, r)| matches!(r, JournalRecord::Claim(_)))
            .map(|(offset, ms, _)| (OwnershipClaim::epoch_at(*offset), *ms))
            .collect();
        assert_eq!(
            claims.len(),
            rounds as usize,
            "partition {p}: one claim per owner"
        );
        for &(epoch, claimed_ms) in &claims[1..] {
            let late = journal
                .iter()
                .filter(|(offset, _, r)| {
                    *offset >= epoch
                        && matches!(r, JournalRecord::Entries { epoch: e, .. } if *e < epoch)
                })
                .map(|(_, ms, _)| ms - claimed_ms)
                .max();
            assert!(
                late.is_none_or(|ms| ms <= 1000),
                "partition {p}: a superseded owner wrote {late:?} ms after the claim of epoch {epoch}"
            );
        }
        // The fold of the whole journal counts every request once.
        let folded = fold_whole_journal(&args, p).await;
        assert_eq!(
            folded.state.epoch,
            claims.last().expect("claims").0,
            "the last owner's epoch"
        );
        fenced_entries += folded.fenced;
        for (id, s) in &folded.state.schedules {
            assert_eq!(s.requests_seen, expected[id], "{id}: journal fold counts");
            if let Some(d) = &s.last_decision {
                fold_last.insert(id.clone(), d.decode().expect("decodes"));
            }
        }
    }
    eprintln!("entries of superseded owners passed over by the fold: {fenced_entries}");
    // The decision routers end up holding for each schedule is the surviving fold's last.
    for (id, d) in last_decisions_by_precedence(&args) {
        assert_eq!(
            Some(&d),
            fold_last.get(&id),
            "{id}: routers hold another decision than the fold's last"
        );
    }
    assert_audit_verifies(&args);
}

/// The decision of every schedule that wins by precedence: what a router holds.
fn last_decisions_by_precedence(args: &KafkaArgs) -> BTreeMap<String, ScheduleDecision> {
    decisions_by_schedule(args)
        .into_iter()
        .filter_map(|(s, ds)| {
            Some((
                s,
                ds.into_iter()
                    .map(|(d, _)| d)
                    .max_by_key(ScheduleDecision::precedence)?,
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configs_from_http_or_the_topic_leave_the_previous_in_force() {
    let args = fresh_layout("refuse", 1).await;
    let producer = RecordProducer::new(&args, "refuse-test").expect("producer");
    let p = ProcessorProcess::start(&args, 0, 1, &[]);
    p.wait_ready(Duration::from_secs(60)).await;
    let url = format!("{}/config/ns/app", p.admin);
    let good = r#"{"policy": "credit-greedy", "zone": "GB", "flavours": [
        {"name": "full", "precision": 1.0, "carbonIntensity": 1.0, "upstream": "http://127.0.0.1:1"},
        {"name": "lite", "precision": 0.3, "carbonIntensity": 0.3, "upstream": "http://127.0.0.1:2"}]}"#;
    let (code, body) = http("PUT", &url, Some(good)).await;
    assert_eq!(code, 202, "{body}");
    let version = body["configVersion"].as_i64().expect("version");
    eventually(
        "the good config to be decided",
        Duration::from_secs(30),
        || async {
            (http("GET", &format!("{}/schedule/ns/app", p.admin), None)
                .await
                .0
                == 200)
                .then_some(())
        },
    )
    .await;

    // One broken rule per case, each named in the 400 body.
    let mut spec: Value = serde_json::from_str(good).expect("json");
    type Breakage = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Breakage)> = vec![
        ("target_error", Box::new(|v| v["targetError"] = 1.5.into())),
        ("credit_min", Box::new(|v| v["creditMin"] = 2.into())),
        ("policy", Box::new(|v| v["policy"] = "fastest".into())),
        (
            "flavours",
            Box::new(|v| {
                v["flavours"][0]["enabled"] = false.into();
                v["flavours"][1]["enabled"] = false.into();
            }),
        ),
        (
            "flavours[1].name",
            Box::new(|v| v["flavours"][1]["name"] = "full".into()),
        ),
        (
            "flavours[1].precision",
            Box::new(|v| v["flavours"][1]["precision"] = 0.into()),
        ),
        ("valid_for_seconds", Box::new(|v| v["validFor"] = 0.into())),
        (
            "credit_window_seconds",
            Box::new(|v| v["creditWindow"] = 0.into()),
        ),
        (
            "flavours[0].upstream_url",
            Box::new(|v| v["flavours"][0]["upstream"] = "ftp://x".into()),
        ),
        (
            "fallbacks[0].to",
            Box::new(|v| {
                v["fallbacks"] = serde_json::json!([{"when": {"status": ["5xx"]}, "to": "nope"}]);
            }),
        ),
    ];
    for (field, break_it) in &cases {
        let mut bad = spec.clone();
        break_it(&mut bad);
        let (code, body) = http("PUT", &url, Some(&bad.to_string())).await;
        assert_eq!(code, 400, "{field}: {body}");
        let problems = body["problems"].as_array().expect("problems");
        assert!(
            problems.iter().any(|p| p["field"] == *field),
            "{field} not named in {body}"
        );
    }
    let (code, body) = http("PUT", &url, Some("{not json")).await;
    assert_eq!((code, body["error"].as_str()), (400, Some("invalid_json")));

    // The same rules over the topic: rejection records, previous config in force.
    for (_, break_it) in &cases {
        break_it(&mut spec);
        let mut c = carbonflow_core::spec::ScheduleSpec::from_value(spec.clone())
            .expect("spec")
            .to_config("ns/app", version + 1, now_ms());
        c.schedule = "ns/app".into();
        send(&producer, &args, Topic::Config, "ns/app", &c).await;
        spec = serde_json::from_str(good).expect("json");
    }
    let rejections: Vec<ConfigRejection> = eventually(
        "a rejection per bad config",
        Duration::from_secs(30),
        || async {
            let r: Vec<ConfigRejection> = read_all(&args, Topic::Rejections, 0)
                .into_iter()
                .filter_map(|(_, _, p)| decode(&p?).ok())
                .collect();
            (r.len() >= cases.len()).then_some(r)
        },
    )
    .await;
    for ((field, _), r) in cases.iter().zip(&rejections) {
        assert!(
            r.reasons.iter().any(|p| p.field == *field),
            "rejection does not name {field}: {r:?}"
        );
    }
    let (_, state) = http("GET", &format!("{}/schedule/ns/app/state", p.admin), None).await;
    assert_eq!(
        state["configVersion"].as_i64(),
        Some(version),
        "previous config stays in force"
    );

    // A poison record is dead-lettered and processing continues.
    let telemetry = args.layout().name(Topic::Telemetry);
    producer
        .send_bytes(&telemetry, b"ns/app", None, &[0xC3, 0x01, 0xFF], None)
        .await
        .expect("poison");
    let mut b = bucket("ns/app", "r", [5, 0, 0]);
    b.counts.truncate(1);
    b.counts[0].flavour = "full".into();
    send(&producer, &args, Topic::Telemetry, "ns/app", &b).await;
    eventually(
        "the bucket after the poison to be counted",
        Duration::from_secs(30),
        || async {
            let v = state_of(&p, "ns/app").await?;
            (v["requestsSeen"].as_i64()? == 5).then_some(())
        },
    )
    .await;
    let letters: Vec<DeadLetter> = read_all(&args, Topic::DeadLetters, 0)
        .into_iter()
        .filter_map(|(_, _, p)| decode(&p?).ok())
        .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].topic, telemetry);
    assert_eq!(letters[0].error_kind, "too_short");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_adopts_orphan_decisions_and_resends_unsent_ones() {
    use carbonflow_schemas::records::{DecisionRef, InputPosition, JournalBatch, JournalEntry};
    let args = fresh_layout("orphans", 1).await;
    let producer = RecordProducer::new(&args, "orphans-test").expect("producer");
    let id = "orph/app";
    send(&producer, &args, Topic::Config, id, &config(id, 1)).await;
    let mut p = ProcessorProcess::start(&args, 0, 1, &[]);
    p.wait_ready(Duration::from_secs(60)).await;
    let first = eventually("the first decision", Duration::from_secs(30), || async {
        let (code, v) = http("GET", &format!("{}/schedule/{id}", p.admin), None).await;
        (code == 200).then(|| v["version"].as_i64())?
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.kill();

    // A decision that reached the topic while its journal entry was lost.
    let mut orphan = samples::schedule_decision();
    orphan.schedule = id.into();
    orphan.version = first + 10;
    send(&producer, &args, Topic::Decisions, id, &orphan).await;
    p = ProcessorProcess::start(&args, 0, 1, &[]);
    p.wait_ready(Duration::from_secs(60)).await;
    send(&producer, &args, Topic::Forecasts, "GB", &forecast(210.0)).await;
    let next = eventually(
        "a decision after the orphan",
        Duration::from_secs(30),
        || async {
            let (_, v) = http("GET", &format!("{}/schedule/{id}", p.admin), None).await;
            v["version"].as_i64().filter(|v| *v > first + 1)
        },
    )
    .await;
    assert_eq!(
        next,
        first + 11,
        "the orphan's version was adopted, not reissued"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.kill();

    // A journaled decision that never reached the topic: restore sends it. The entry is
    // written as the last owner would have before it crashed: a batch of its epoch (an
    // entry of an older epoch after its claim would be a superseded writer's, and fenced).
    let next = assert_versions_never_regress(&args)[id];
    let mut c = config(id, 2);
    c.policy = "p100".into();
    let bytes = carbonflow_schemas::encode(&c).expect("encode");
    let config_topic = args.layout().name(Topic::Config);
    let at = producer
        .send_bytes(&config_topic, id.as_bytes(), Some(0), &bytes, None)
        .await
        .expect("config");
    let entry = JournalEntry {
        partition: 0,
        input: InputPosition {
            topic: config_topic,
            partition: 0,
            offset: at.offset,
        },
        record: bytes,
        decisions: vec![DecisionRef {
            schedule: id.into(),
            version: next + 1,
        }],
    };
    let epoch = read_all(&args, Topic::Journal, 0)
        .into_iter()
        .filter_map(|(offset, _, payload)| {
            matches!(journal_record(&payload?), Ok(JournalRecord::Claim(_)))
                .then(|| OwnershipClaim::epoch_at(offset))
        })
        .max()
        .expect("the owners' claims are in the journal");
    let batch = JournalBatch {
        partition: 0,
        epoch,
        entries: vec![entry],
    };
    send(&producer, &args, Topic::Journal, "0", &batch).await;
    let p = ProcessorProcess::start(&args, 0, 1, &[]);
    p.wait_ready(Duration::from_secs(60)).await;
    let resent = eventually(
        "the unsent decision on the topic",
        Duration::from_secs(30),
        || async {
            decisions_by_schedule(&args)
                .remove(id)?
                .into_iter()
                .map(|(d, _)| d)
                .find(|d| d.version == next + 1)
        },
    )
    .await;
    assert_eq!(resent.policy, "p100");
    assert_eq!(resent.provenance.cause, "config");
    assert_versions_never_regress(&args);
    drop(p);
}

/// `send` through the harness's retrying writer (a restarted broker refuses the first
/// writes for a while).
async fn send_retrying<T: carbonflow_schemas::AvroRecord>(
    producer: &RecordProducer,
    args: &KafkaArgs,
    topic: Topic,
    key: &str,
    record: &T,
) {
    carbonflow_schemas::testing::send_retrying(producer, &args.layout().name(topic), key, record)
        .await;
}

/// Buckets for every schedule, `batches` times; adds what was sent to `expected`.
async fn send_telemetry(
    producer: &RecordProducer,
    args: &KafkaArgs,
    schedules: &[&str],
    batches: i64,
    expected: &mut BTreeMap<String, i64>,
) {
    for batch in 0..batches {
        for s in schedules {
            let counts = [batch % 5, 2, 1];
            *expected.entry((*s).to_string()).or_default() += counts.iter().sum::<i64>();
            send_retrying(
                producer,
                args,
                Topic::Telemetry,
                s,
                &bucket(s, "router-0", counts),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_under_a_running_processor_loses_and_duplicates_nothing() {
    let broker = carbonflow_schemas::testing::PrivateBroker::start("bounce");
    let args = broker.layout("bounce.", 2).await;
    let producer = RecordProducer::new(&args, "bounce-test").expect("producer");
    let schedules = ["bounce/a", "bounce/b", "bounce/c"];
    for s in schedules {
        send_retrying(&producer, &args, Topic::Config, s, &config(s, 1)).await;
    }
    send_retrying(&producer, &args, Topic::Forecasts, "GB", &forecast(150.0)).await;
    let mut processor = ProcessorProcess::start(&args, 0, 1, &["--snapshot-every", "20"]);
    processor.wait_ready(Duration::from_secs(60)).await;
    let mut expected = BTreeMap::new();
    send_telemetry(&producer, &args, &schedules, 20, &mut expected).await;
    assert_requests_seen(&[&processor], &expected).await;

    // The broker goes away for a few seconds under the running processor, and comes back
    // with its data. A write the broker fails stops the processor (restore rebuilds from
    // the log); like its deployments (restart: always, a StatefulSet), the test then starts
    // it again.
    broker.stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.resume();

    send_telemetry(&producer, &args, &schedules, 20, &mut expected).await;
    let mut restarts = 0;
    // Generous: when the local broker does not stop within 5 s, broker.sh SIGKILLs it,
    // and the restarted broker may then reset connections for tens of seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(150);
    loop {
        if processor.exited() {
            restarts += 1;
            eprintln!("the processor stopped on a failed write; restarting it ({restarts})");
            processor = ProcessorProcess::start(&args, 0, 1, &["--snapshot-every", "20"]);
        }
        if processor.exited() {
            continue;
        }
        let mut all = true;
        for (s, want) in &expected {
            let seen = match common::try_http(
                "GET",
                &format!("{}/schedule/{s}/state", processor.admin),
                None,
            )
            .await
            {
                Ok((200, v)) => v["requestsSeen"].as_i64(),
                _ => None,
            };
            all &= seen == Some(*want);
        }
        if all {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "requests not all counted after the broker came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        restarts <= 3,
        "{restarts} restarts after one broker restart"
    );
    assert_requests_seen(&[&processor], &expected).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    processor.stop();
    assert_versions_never_regress(&args);
    for folded in assert_final_state_is_the_journal_fold(&args).await {
        for (id, s) in &folded.state.schedules {
            assert_eq!(s.requests_seen, expected[id], "{id}: journal fold counts");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_snapshot_is_passed_over_and_the_journal_replayed() {
    let args = fresh_layout("badsnap", 1).await;
    let producer = RecordProducer::new(&args, "badsnap-test").expect("producer");
    let schedules = ["snap/a", "snap/b"];
    for s in schedules {
        send(&producer, &args, Topic::Config, s, &config(s, 1)).await;
    }
    let mut processor = ProcessorProcess::start(&args, 0, 1, &[]);
    processor.wait_ready(Duration::from_secs(60)).await;
    let mut expected = BTreeMap::new();
    send_telemetry(&producer, &args, &schedules, 10, &mut expected).await;
    assert_requests_seen(&[&processor], &expected).await;
    processor.stop(); // a clean stop writes a snapshot

    // The newest snapshot record becomes garbage: right magic bytes, nothing behind them.
    let snapshots = args.layout().name(Topic::Snapshots);
    producer
        .send_bytes(&snapshots, b"0", Some(0), b"\xC3\x01garbage", None)
        .await
        .expect("a corrupt snapshot record");

    let processor = ProcessorProcess::start(&args, 0, 1, &[]);
    processor.wait_ready(Duration::from_secs(60)).await;
    assert_requests_seen(&[&processor], &expected).await;
    let client = carbonflow_schemas::testing::http_client();
    let metrics = carbonflow_schemas::testing::send(
        &client,
        "GET",
        &format!("{}/metrics", processor.admin),
        &[],
        None,
    )
    .await
    .expect("metrics");
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.lines()
            .any(|l| l.starts_with("carbonflow_snapshots_unreadable_total") && l.ends_with(" 1")),
        "the corrupt snapshot is counted:\n{}",
        text.lines()
            .filter(|l| l.contains("snapshot"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_the_processor_turns_unready_keeps_consuming_through_the_drain_then_exits() {
    let args = fresh_layout("drain", 1).await;
    let producer = RecordProducer::new(&args, "drain-test").expect("producer");
    let schedule = "shop/drain";
    send(
        &producer,
        &args,
        Topic::Config,
        schedule,
        &config(schedule, 1),
    )
    .await;
    let mut processor = ProcessorProcess::start(&args, 0, 1, &["--drain-delay-ms", "6000"]);
    processor.wait_ready(Duration::from_secs(60)).await;
    let decided = |version: i64| {
        let args = &args;
        move || {
            last_decision_where(args, schedule, move |d| {
                d.provenance.config_version == version
            })
        }
    };
    eventually(
        "the first config decided",
        Duration::from_secs(30),
        decided(1),
    )
    .await;

    processor.terminate();
    let readyz = format!("{}/readyz", processor.admin);
    eventually("unready after SIGTERM", Duration::from_secs(3), || async {
        matches!(try_http("GET", &readyz, None).await, Ok((503, _))).then_some(())
    })
    .await;
    let (status, _) = http("GET", &format!("{}/healthz", processor.admin), None).await;
    assert_eq!(status, 200, "alive while draining");
    // Still the owner while it drains: a config written now is decided.
    send(
        &producer,
        &args,
        Topic::Config,
        schedule,
        &config(schedule, 2),
    )
    .await;
    eventually(
        "a config decided during the drain",
        Duration::from_secs(5),
        decided(2),
    )
    .await;
    processor.wait_clean_exit();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_set_over_http_ends_early_on_delete() {
    let args = fresh_layout("cancel", 1).await;
    let producer = RecordProducer::new(&args, "cancel-test").expect("producer");
    let schedule = "shop/cancel";
    send(
        &producer,
        &args,
        Topic::Config,
        schedule,
        &config(schedule, 1),
    )
    .await;
    let processor = ProcessorProcess::start(&args, 0, 1, &[]);
    processor.wait_ready(Duration::from_secs(60)).await;
    let url = format!("{}/schedule/{schedule}", processor.admin);
    eventually("the config's decision", Duration::from_secs(30), || async {
        (http("GET", &url, None).await.0 == 200).then_some(())
    })
    .await;
    let manual = format!("{url}/manual");
    let body = r#"{"weights": {"precision-30": 1}, "ttlSeconds": 3600}"#;
    assert_eq!(http("POST", &manual, Some(body)).await.0, 202);
    let manual_on = |want: bool| {
        let args = &args;
        move || last_decision_where(args, schedule, move |d| d.manual == want)
    };
    let set = eventually(
        "the override in force",
        Duration::from_secs(30),
        manual_on(true),
    )
    .await;
    let (status, reply) = http("DELETE", &manual, None).await;
    assert_eq!(status, 202, "{reply}");
    let ended = eventually(
        "the override ended",
        Duration::from_secs(30),
        manual_on(false),
    )
    .await;
    assert!(ended.version > set.version);
    assert_eq!(ended.provenance.cause, "override-end");
    assert_eq!(ended.policy, "credit-greedy", "the policy decides again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_commands_needs_the_admin_token_when_one_is_set() {
    let args = fresh_layout("token", 1).await;
    let token_file = std::env::temp_dir().join(format!("{}admin-token", args.topic_prefix));
    let token = "correct-horse-battery-staple-42";
    std::fs::write(&token_file, format!("{token}\n")).expect("token file");
    let processor = ProcessorProcess::start(
        &args,
        0,
        1,
        &["--admin-token-file", &token_file.to_string_lossy()],
    );
    processor.wait_ready(Duration::from_secs(60)).await;
    let url = format!("{}/config/shop/token", processor.admin);
    let body = r#"{"policy": "credit-greedy", "zone": "GB", "flavours": [
        {"name": "full", "precision": 1.0, "carbonIntensity": 1.0, "upstream": "http://127.0.0.1:1"}]}"#;
    let client = carbonflow_schemas::testing::http_client();
    let put = |auth: Option<String>, content_type: &'static str| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let mut headers = vec![("content-type", content_type)];
            let auth = auth.unwrap_or_default();
            if !auth.is_empty() {
                headers.push(("authorization", auth.as_str()));
            }
            let reply =
                carbonflow_schemas::testing::send(&client, "PUT", &url, &headers, Some(body))
                    .await
                    .expect("the admin API answers");
            let json: Value = serde_json::from_slice(&reply.body).expect("a JSON answer");
            (reply.status, json)
        }
    };
    let (status, reply) = put(None, "application/json").await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = put(
        Some("Bearer not-the-token-at-all".into()),
        "application/json",
    )
    .await;
    assert_eq!(status, 401, "a wrong token");
    let (status, reply) = put(Some(format!("Bearer {token}")), "text/plain").await;
    assert_eq!(
        (status, reply["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (status, reply) = put(Some(format!("Bearer {token}")), "application/json").await;
    assert_eq!(status, 202, "{reply}");
    // A metadata address is refused at the API, naming the field.
    let metadata = body.replace(
        "http://127.0.0.1:1",
        "http://169.254.169.254/latest/meta-data",
    );
    let reply = carbonflow_schemas::testing::send(
        &client,
        "PUT",
        &url,
        &[
            ("content-type", "application/json"),
            ("authorization", &format!("Bearer {token}")),
        ],
        Some(&metadata),
    )
    .await
    .expect("the admin API answers");
    let json: Value = serde_json::from_slice(&reply.body).expect("JSON");
    assert_eq!(reply.status, 400, "{json}");
    assert_eq!(
        json["problems"][0]["field"], "flavours[0].upstream_url",
        "{json}"
    );
    // Reading stays open, and axum's own errors are JSON too.
    assert_eq!(
        http("GET", &format!("{}/readyz", processor.admin), None)
            .await
            .0,
        200
    );
    let (status, reply) = http("GET", &format!("{}/no/such/page", processor.admin), None).await;
    assert_eq!((status, reply["error"].as_str()), (404, Some("not_found")));
}

#[test]
fn a_processor_listening_beyond_loopback_without_a_token_refuses_to_start() {
    let args = KafkaArgs::for_brokers("127.0.0.1:1");
    let out = carbonflow_schemas::testing::processor_command(
        env!("CARGO_BIN_EXE_processor"),
        "run",
        &args,
    )
    .args(["--admin-listen", "0.0.0.0:0"])
    .env_remove("CARBONFLOW_ADMIN_TOKEN")
    .env_remove("CARBONFLOW_ADMIN_TOKEN_FILE")
    .output()
    .expect("run the processor binary");
    assert!(!out.status.success(), "it started");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("CARBONFLOW_ADMIN_TOKEN_FILE"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_the_series_limit_schedules_are_counted_in_the_aggregates_only() {
    // Given three schedules, a limit of one schedule with series, and shop/c opted in
    let args = fresh_layout("series", 1).await;
    let producer = RecordProducer::new(&args, "series-test").expect("producer");
    for id in ["shop/a", "shop/b", "shop/c"] {
        send(&producer, &args, Topic::Config, id, &config(id, 1)).await;
    }
    let processor = ProcessorProcess::start(
        &args,
        0,
        1,
        &[
            "--schedule-series-limit",
            "1",
            "--schedule-series-for",
            "shop/c",
        ],
    );
    processor.wait_ready(Duration::from_secs(60)).await;
    // When every schedule is decided
    eventually(
        "three schedules, all decided",
        Duration::from_secs(30),
        || async {
            let shown = processor.metric("carbonflow_schedules").await;
            let undecided = processor.metric("carbonflow_schedules_undecided").await;
            (shown == Some(3.0) && undecided == Some(0.0)).then_some(())
        },
    )
    .await;
    // Then the first shown (shop/a, first on the topic) and the opted-in one have series,
    // shop/b only counts in the aggregates
    assert_eq!(
        processor.metric("carbonflow_schedules_with_series").await,
        Some(2.0)
    );
    let client = carbonflow_schemas::testing::http_client();
    let url = format!("{}/metrics", processor.admin);
    let reply = carbonflow_schemas::testing::send(&client, "GET", &url, &[], None)
        .await
        .expect("/metrics answers");
    let text = String::from_utf8_lossy(&reply.body);
    let mut with_version: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("carbonflow_schedule_version{"))
        .filter_map(|l| l.split("schedule=\"").nth(1)?.split('"').next())
        .collect();
    with_version.sort_unstable();
    assert_eq!(with_version, ["a", "c"]);
    // and every schedule is still served by the admin API
    for id in ["shop/a", "shop/b", "shop/c"] {
        let (status, _) = http("GET", &format!("{}/schedule/{id}", processor.admin), None).await;
        assert_eq!(status, 200, "{id}");
    }
}
