//! Ownership by consumer group (`--ownership group`): two members split the schedule
//! partitions; when one stops gracefully (local broker) or is SIGKILLed (librdkafka's
//! mock cluster, which evicts a silent member after its session timeout; the local broker
//! never does), the other takes its partitions over and every request is counted once.
//! When one is paused past its session and resumes (split brain: it still believes it
//! owns its partitions), the new owner's claims fence it and nothing is counted twice.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use carbonflow_schemas::bus::{KafkaArgs, RecordProducer, Topic};
use carbonflow_schemas::testing::{fresh_layout, unique_prefix};
use common::{
    ProcessorProcess, assert_audit_verifies, assert_folds_count, assert_no_decision_issued_twice,
    assert_requests_seen, bucket, config, eventually, forecast, send, state_of,
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

/// Telemetry for a set of schedules, with the requests each one was sent.
struct Load<'a> {
    args: &'a KafkaArgs,
    producer: RecordProducer,
    schedules: Vec<String>,
    rng: rand_chacha::ChaCha8Rng,
    expected: BTreeMap<String, i64>,
}

impl<'a> Load<'a> {
    /// Eight schedules named `{name}/s0..7`, their configs written.
    async fn configured(args: &'a KafkaArgs, name: &str, seed: u64) -> Self {
        let producer = RecordProducer::new(args, &format!("{name}-test")).expect("producer");
        let schedules: Vec<String> = (0..8).map(|i| format!("{name}/s{i}")).collect();
        for s in &schedules {
            send(&producer, args, Topic::Config, s, &config(s, 1)).await;
        }
        Self {
            args,
            producer,
            schedules,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(seed),
            expected: BTreeMap::new(),
        }
    }

    /// `batches` rounds of one bucket per schedule, 40 ms apart.
    async fn batches(&mut self, batches: usize) {
        for _ in 0..batches {
            for (i, s) in self.schedules.iter().enumerate() {
                let counts = [
                    self.rng.random_range(0..20),
                    self.rng.random_range(0..20),
                    0,
                ];
                *self.expected.entry(s.clone()).or_default() += counts.iter().sum::<i64>();
                let b = bucket(s, &format!("router-{}", i % 2), counts);
                send(&self.producer, self.args, Topic::Telemetry, s, &b).await;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
    }

    /// A forecast for the schedules' zone.
    async fn forecast(&self, g_per_kwh: f64) {
        let f = forecast(g_per_kwh);
        send(&self.producer, self.args, Topic::Forecasts, "GB", &f).await;
    }
}

/// Two members started with `flags`, once the group has split the partitions between
/// them and every schedule of `load` is decided; returns them and the second's partitions.
async fn two_members(
    load: &Load<'_>,
    session_timeout_ms: u64,
    flags: &[&str],
) -> (ProcessorProcess, ProcessorProcess, Vec<i64>) {
    let mut extra = vec!["--snapshot-every", "50"];
    extra.extend_from_slice(flags);
    let a = ProcessorProcess::start_member(load.args, session_timeout_ms, &extra);
    a.wait_ready(Duration::from_secs(60)).await;
    let b = ProcessorProcess::start_member(load.args, session_timeout_ms, &extra);
    b.wait_ready(Duration::from_secs(60)).await;
    let all: Vec<i64> = (0..i64::from(load.args.schedule_partitions)).collect();
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
    load.forecast(150.0).await;
    // Every config is applied before telemetry is sent (see the crash tests: across
    // topics a restart does not keep the order in which records were produced).
    for s in &load.schedules {
        eventually(
            &format!("{s} decided by one of the members"),
            Duration::from_secs(30),
            || async {
                (state_of(&a, s).await.is_some() || state_of(&b, s).await.is_some()).then_some(())
            },
        )
        .await;
    }
    (a, b, owned_by_b)
}

/// After the run: every request counted once in each whole journal's fold, no (epoch,
/// version) issued twice, and the audit verifies.
async fn assert_nothing_lost_or_doubled(load: &Load<'_>) {
    let fenced = assert_folds_count(load.args, &load.expected).await;
    eprintln!("entries of superseded owners passed over by the folds: {fenced}");
    assert_no_decision_issued_twice(load.args);
    assert_audit_verifies(load.args);
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
    let mut load = Load::configured(args, "group", 18).await;
    let (mut survivor, mut leaver, split) = two_members(&load, session_timeout_ms, flags).await;
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
    load.batches(30).await;
    match departure {
        Departure::Graceful => leaver.terminate(),
        Departure::Crash => leaver.kill(),
    }
    let departed_at = Instant::now();
    load.batches(30).await;
    load.forecast(230.0).await;
    load.batches(60).await;
    if departure == Departure::Graceful {
        leaver.wait_clean_exit();
    }
    let all: Vec<i64> = (0..i64::from(args.schedule_partitions)).collect();
    eventually(
        "the survivor to own every partition",
        Duration::from_millis(session_timeout_ms) + Duration::from_secs(30),
        || async { (survivor.partitions().await? == all).then_some(()) },
    )
    .await;
    eprintln!(
        "{departure:?}: the survivor owns every partition {:?} after the departure",
        departed_at.elapsed()
    );
    assert_requests_seen(&[&survivor], &load.expected).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    survivor.stop();
    assert_nothing_lost_or_doubled(&load).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_mock_cluster_a_member_paused_past_its_session_is_fenced_and_nothing_is_counted_twice()
 {
    let (mock, args) = mock_cluster("mockpause");
    let mut load = Load::configured(&args, "pause", 44).await;
    let (mut a, mut b, owned_by_b) = two_members(&load, 3_000, &[]).await;
    load.batches(30).await;
    // B stops answering (a long GC pause, a frozen VM) but keeps its state and its
    // belief that it owns its partitions; the group evicts it and A takes them over.
    b.pause();
    let all: Vec<i64> = (0..i64::from(args.schedule_partitions)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while a.partitions().await != Some(all.clone()) {
        assert!(
            Instant::now() < deadline,
            "A never took B's partitions over"
        );
        load.batches(5).await;
    }
    load.batches(10).await;
    // B resumes, still holding what it had fetched and applied: whatever it writes now
    // is written after A's claims.
    b.resume();
    load.batches(60).await;
    eventually(
        "the resumed member to give up the partitions it lost",
        Duration::from_secs(60),
        || async {
            let released = "carbonflow_partitions_released_total";
            let lost = b.metric(&format!("{released}{{reason=\"lost\"}}")).await?;
            let fenced = b
                .metric(&format!("{released}{{reason=\"fenced\"}}"))
                .await?;
            (lost + fenced >= owned_by_b.len() as f64).then_some(())
        },
    )
    .await;
    load.batches(30).await;
    assert_requests_seen(&[&a, &b], &load.expected).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.stop();
    a.stop();
    assert_nothing_lost_or_doubled(&load).await;
    drop(mock);
}
