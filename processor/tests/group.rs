//! Ownership by consumer group (`--ownership group`): two members split the schedule
//! partitions; when one stops gracefully (local broker) or is SIGKILLed (librdkafka's mock
//! cluster, which evicts a silent member after its session timeout; the local broker
//! never does), the other takes its partitions over and every request is counted once.
//! When one is paused past its session and resumes (split brain: it still believes it
//! owns its partitions), the new owner's claims fence it and nothing is counted twice.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use carbonflow_schemas::bus::{KafkaArgs, RecordProducer, Topic};
use carbonflow_schemas::testing::{fresh_layout, unique_prefix};
use common::{
    ProcessorProcess, assert_audit_verifies, assert_no_decision_issued_twice, bucket, config,
    eventually, fold_whole_journal, forecast, send, state_of,
};
use rand::{Rng, SeedableRng};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

/// How the second member goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Departure {
    /// SIGTERM: it writes out, snapshots and leaves the group.
    Graceful,
    /// SIGKILL: the broker evicts it once its session times out.
    Crash,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_stopped_gracefully_hands_its_partitions_to_the_other_and_nothing_is_lost_or_doubled()
 {
    let args = fresh_layout("group", 4).await;
    // Kafka's smallest session timeout by default; a graceful leave does not wait for it.
    two_members_then_one(&args, 6_000, Departure::Graceful, &[]).await;
}

/// librdkafka's mock cluster, in this process, holding carbonflow's topics (4 schedule
/// partitions) under a fresh prefix, and the flags that reach it.
fn mock_cluster(test: &str) -> (MockCluster<'static, DefaultProducerContext>, KafkaArgs) {
    let mock = MockCluster::new(1).expect("start librdkafka's mock cluster");
    let mut args = KafkaArgs::for_brokers(mock.bootstrap_servers());
    args.topic_prefix = unique_prefix(test);
    args.schedule_partitions = 4;
    let layout = args.layout();
    for t in Topic::ALL {
        mock.create_topic(&layout.name(t), layout.partitions(t), 1)
            .unwrap_or_else(|e| panic!("create {} on the mock cluster: {e}", layout.name(t)));
    }
    (mock, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_mock_cluster_the_survivor_of_a_sigkill_takes_over_and_continues_the_fold_exactly() {
    let (mock, args) = mock_cluster("mockgroup");
    // The survivor keeps the other's partitions warm: the takeover folds only the journal
    // since its replicas last read.
    two_members_then_one(&args, 3_000, Departure::Crash, &["--standby-replicas", "1"]).await;
    drop(mock);
}

/// Two members (started with `flags`) split the partitions under telemetry load; one
/// departs; the other ends up owning every partition, and every request is counted exactly
/// once, in its state and in the fold of each whole journal; no (epoch, version) is issued
/// twice; the audit verifies.
async fn two_members_then_one(
    args: &KafkaArgs,
    session_timeout_ms: u64,
    departure: Departure,
    flags: &[&str],
) {
    let producer = RecordProducer::new(args, "group-test").expect("producer");
    let schedules: Vec<String> = (0..8).map(|i| format!("group/s{i}")).collect();
    for s in &schedules {
        send(&producer, args, Topic::Config, s, &config(s, 1)).await;
    }
    let mut extra = vec!["--snapshot-every", "50"];
    extra.extend_from_slice(flags);
    let survivor = ProcessorProcess::start_member(args, session_timeout_ms, &extra);
    survivor.wait_ready(Duration::from_secs(60)).await;
    let mut leaver = ProcessorProcess::start_member(args, session_timeout_ms, &extra);
    leaver.wait_ready(Duration::from_secs(60)).await;
    let all: Vec<i64> = (0..i64::from(args.schedule_partitions)).collect();
    let split = eventually(
        "the group to split the partitions between the two members",
        Duration::from_secs(60),
        || async {
            let (a, b) = (survivor.partitions().await?, leaver.partitions().await?);
            let mut both = [a.clone(), b.clone()].concat();
            both.sort_unstable();
            (!a.is_empty() && !b.is_empty() && both == all).then_some(b)
        },
    )
    .await;
    eprintln!("the leaving member owns partitions {split:?}");
    if flags.contains(&"--standby-replicas") {
        eventually(
            "the survivor to keep the other's partitions warm",
            Duration::from_secs(30),
            || async {
                let warm = survivor.metric("carbonflow_standby_partitions").await?;
                (warm == split.len() as f64).then_some(())
            },
        )
        .await;
    }
    send(&producer, args, Topic::Forecasts, "GB", &forecast(150.0)).await;
    // Every config is applied before telemetry is sent (see the crash tests: across
    // topics a restart does not keep the order in which records were produced).
    for s in &schedules {
        eventually(
            &format!("{s} decided by one of the members"),
            Duration::from_secs(30),
            || async {
                let held =
                    state_of(&survivor, s).await.is_some() || state_of(&leaver, s).await.is_some();
                held.then_some(())
            },
        )
        .await;
    }

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(18);
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let batches = 120;
    let mut departed_at = None;
    for batch in 0..batches {
        for (i, s) in schedules.iter().enumerate() {
            let counts = [rng.random_range(0..20), rng.random_range(0..20), 0];
            *expected.entry(s.clone()).or_default() += counts.iter().sum::<i64>();
            let b = bucket(s, &format!("router-{}", i % 2), counts);
            send(&producer, args, Topic::Telemetry, s, &b).await;
        }
        if batch == batches / 4 {
            match departure {
                Departure::Graceful => leaver.terminate(),
                Departure::Crash => leaver.kill(),
            }
            departed_at = Some(Instant::now());
        }
        if batch == batches / 2 {
            send(&producer, args, Topic::Forecasts, "GB", &forecast(230.0)).await;
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    if departure == Departure::Graceful {
        leaver.wait_clean_exit();
    }
    eventually(
        "the survivor to own every partition",
        Duration::from_millis(session_timeout_ms) + Duration::from_secs(30),
        || async { (survivor.partitions().await? == all).then_some(()) },
    )
    .await;
    eprintln!(
        "{departure:?}: the survivor owns every partition {:?} after the departure",
        departed_at.map(|t| t.elapsed())
    );
    for s in &schedules {
        let want = expected[s];
        let seen = eventually(
            &format!("{s} to have seen {want} requests"),
            Duration::from_secs(60),
            || async {
                let seen = state_of(&survivor, s).await?["requestsSeen"].as_i64()?;
                (seen >= want).then_some(seen)
            },
        )
        .await;
        assert_eq!(seen, want, "{s}: requests counted {seen}, produced {want}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut survivor = survivor;
    survivor.stop();

    for p in 0..args.schedule_partitions {
        let folded = fold_whole_journal(args, p).await;
        for (id, s) in &folded.state.schedules {
            assert_eq!(s.requests_seen, expected[id], "{id}: journal fold counts");
        }
    }
    assert_no_decision_issued_twice(args);
    assert_audit_verifies(args);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_mock_cluster_a_member_paused_past_its_session_is_fenced_and_nothing_is_counted_twice()
 {
    let (mock, args) = mock_cluster("mockpause");
    let session_timeout_ms = 3_000;
    let producer = RecordProducer::new(&args, "pause-test").expect("producer");
    let schedules: Vec<String> = (0..8).map(|i| format!("pause/s{i}")).collect();
    for s in &schedules {
        send(&producer, &args, Topic::Config, s, &config(s, 1)).await;
    }
    let extra = ["--snapshot-every", "50"];
    let mut a = ProcessorProcess::start_member(&args, session_timeout_ms, &extra);
    a.wait_ready(Duration::from_secs(60)).await;
    let mut b = ProcessorProcess::start_member(&args, session_timeout_ms, &extra);
    b.wait_ready(Duration::from_secs(60)).await;
    let all: Vec<i64> = (0..i64::from(args.schedule_partitions)).collect();
    let owned_by_b = eventually(
        "the group to split the partitions between the two members",
        Duration::from_secs(60),
        || async {
            let (pa, pb) = (a.partitions().await?, b.partitions().await?);
            let mut both = [pa.clone(), pb.clone()].concat();
            both.sort_unstable();
            (!pa.is_empty() && !pb.is_empty() && both == all).then_some(pb)
        },
    )
    .await;
    send(&producer, &args, Topic::Forecasts, "GB", &forecast(150.0)).await;
    for s in &schedules {
        eventually(&format!("{s} decided"), Duration::from_secs(30), || async {
            (state_of(&a, s).await.is_some() || state_of(&b, s).await.is_some()).then_some(())
        })
        .await;
    }

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(44);
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut load = async |batches: usize| {
        for _ in 0..batches {
            for (i, s) in schedules.iter().enumerate() {
                let counts = [rng.random_range(0..20), rng.random_range(0..20), 0];
                *expected.entry(s.clone()).or_default() += counts.iter().sum::<i64>();
                let bucket = bucket(s, &format!("router-{}", i % 2), counts);
                send(&producer, &args, Topic::Telemetry, s, &bucket).await;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    };
    load(30).await;
    // B stops answering (a long GC pause, a frozen VM) but keeps its state and its
    // belief that it owns its partitions; the group evicts it and A takes them over.
    b.pause();
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.partitions().await != Some(all.clone()) {
        assert!(
            Instant::now() < deadline,
            "A never took B's partitions over"
        );
        load(5).await;
    }
    load(10).await;
    // B resumes, still holding what it had fetched and applied: whatever it writes now
    // is written after A's claims.
    b.resume();
    load(60).await;
    eventually(
        "the resumed member to give up the partitions it lost",
        Duration::from_secs(60),
        || async {
            let lost = b
                .metric("carbonflow_partitions_released_total{reason=\"lost\"}")
                .await?;
            let fenced = b
                .metric("carbonflow_partitions_released_total{reason=\"fenced\"}")
                .await?;
            (lost + fenced >= owned_by_b.len() as f64).then_some(())
        },
    )
    .await;
    load(30).await;
    let expected = expected;
    for s in &schedules {
        let want = expected[s];
        let seen = eventually(
            &format!("{s} to have seen {want} requests"),
            Duration::from_secs(60),
            || async {
                let held = match state_of(&a, s).await {
                    Some(v) => v,
                    None => state_of(&b, s).await?,
                };
                let seen = held["requestsSeen"].as_i64()?;
                (seen >= want).then_some(seen)
            },
        )
        .await;
        assert_eq!(seen, want, "{s}: requests counted {seen}, produced {want}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.stop();
    a.stop();

    let mut fenced = 0;
    for p in 0..args.schedule_partitions {
        let folded = fold_whole_journal(&args, p).await;
        fenced += folded.fenced;
        for (id, s) in &folded.state.schedules {
            assert_eq!(s.requests_seen, expected[id], "{id}: journal fold counts");
        }
    }
    eprintln!("entries the paused member wrote after the new owner's claims, not folded: {fenced}");
    assert_no_decision_issued_twice(&args);
    assert_audit_verifies(&args);
    drop(mock);
}
