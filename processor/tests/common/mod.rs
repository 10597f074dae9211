//! Shared by the processor's broker-backed tests: run the real `processor` binary and
//! stop it the ways the tests need (SIGKILL, SIGTERM). How it is started, and the HTTP,
//! polling and topic reading helpers, live in `carbonflow_schemas::testing`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use carbonflow_processor::journal::{RestoreOptions, Restored, restore};
use carbonflow_schemas::bus::{KafkaArgs, RecordProducer, Topic};
use carbonflow_schemas::decode;
use carbonflow_schemas::records::{
    Forecast, Outcome, OutcomeCount, ScheduleConfig, ScheduleDecision, TelemetryBucket,
};
use carbonflow_schemas::service::now_ms;
use carbonflow_schemas::testing::{ProcessorRun, processor_command, samples};
pub(crate) use carbonflow_schemas::testing::{eventually, http, read_all, try_http};
use serde_json::Value;

/// A running `processor run` child process; killed with SIGKILL when dropped.
pub(crate) struct ProcessorProcess {
    child: Child,
    /// Admin API base URL.
    pub admin: String,
}

impl ProcessorProcess {
    /// Start instance `instance` of `instances` (explicit ownership) on the topics of
    /// `args`.
    pub(crate) fn start(args: &KafkaArgs, instance: i32, instances: i32, extra: &[&str]) -> Self {
        let (i, n) = (instance.to_string(), instances.to_string());
        let mut flags = vec!["--instance", &i, "--instances", &n];
        flags.extend_from_slice(extra);
        Self::spawn(args, &format!("{instance}-of-{instances}"), &flags)
    }

    /// Start a member of the processors' consumer group (group ownership) on the topics
    /// of `args`, evicted `session_timeout_ms` after it falls silent.
    pub(crate) fn start_member(args: &KafkaArgs, session_timeout_ms: u64, extra: &[&str]) -> Self {
        let timeout = session_timeout_ms.to_string();
        let mut flags = vec!["--ownership", "group", "--session-timeout-ms", &timeout];
        flags.extend_from_slice(extra);
        Self::spawn(args, "member", &flags)
    }

    fn spawn(args: &KafkaArgs, label: &str, flags: &[&str]) -> Self {
        let run = ProcessorRun::new(env!("CARGO_BIN_EXE_processor"), args)
            .args(["--tick-interval-ms", "200"])
            .args(flags);
        let log = std::env::temp_dir().join(format!(
            "{}processor-{label}-{}.log",
            args.topic_prefix,
            run.admin_port()
        ));
        let p = run
            .spawn(&log)
            .unwrap_or_else(|e| panic!("spawn the processor binary: {e}"));
        Self {
            admin: p.admin_url(),
            child: p.child,
        }
    }

    /// The value of the series `name` (with its labels, as exported) on its `/metrics`,
    /// if it answers and exports it.
    pub(crate) async fn metric(&self, name: &str) -> Option<f64> {
        let client = carbonflow_schemas::testing::http_client();
        let url = format!("{}/metrics", self.admin);
        let reply = carbonflow_schemas::testing::send(&client, "GET", &url, &[], None)
            .await
            .ok()?;
        String::from_utf8_lossy(&reply.body)
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// The schedule partitions it owns now (its status document), if it answers.
    pub(crate) async fn partitions(&self) -> Option<Vec<i64>> {
        let (code, doc) = try_http("GET", &format!("{}/status.json", self.admin), None)
            .await
            .ok()?;
        (code == 200).then_some(())?;
        doc["partitions"]
            .as_array()?
            .iter()
            .map(serde_json::Value::as_i64)
            .collect()
    }

    /// Whether the process has exited on its own.
    pub(crate) fn exited(&mut self) -> bool {
        self.exit_status().is_some()
    }

    /// How the process exited, if it has.
    pub(crate) fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL: no clean shutdown, no final snapshot.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: the process stops answering anything, state intact.
    pub(crate) fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT after [`pause`](Self::pause).
    pub(crate) fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args([signal, &pid]).status();
    }

    /// Send SIGTERM without waiting.
    pub(crate) fn terminate(&self) {
        self.signal("-TERM");
    }

    /// SIGTERM and wait for a clean exit (everything written, final snapshots taken).
    pub(crate) fn stop(&mut self) {
        self.terminate();
        self.wait_clean_exit();
    }

    /// Wait for a clean exit after SIGTERM.
    pub(crate) fn wait_clean_exit(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "processor exited with {status} on SIGTERM"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("processor did not stop within 30 s of SIGTERM");
    }

    /// Wait until `/readyz` answers 200.
    pub(crate) async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok((200, _)) = try_http("GET", &format!("{}/readyz", self.admin), None).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "processor at {} not ready within {within:?}",
                self.admin
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ProcessorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Version `version` of schedule `schedule`'s config, in zone GB.
pub(crate) fn config(schedule: &str, version: i64) -> ScheduleConfig {
    let mut c = samples::schedule_config();
    c.schedule = schedule.into();
    c.config_version = version;
    c.published_at_ms = now_ms();
    c.zone = "GB".into();
    c
}

/// A four-slot forecast for GB starting now, from `g_per_kwh` up in steps of 20.
pub(crate) fn forecast(g_per_kwh: f64) -> Forecast {
    let slots: Vec<f64> = (0..4).map(|i| g_per_kwh + 20.0 * f64::from(i)).collect();
    samples::forecast_from("GB", "test", now_ms(), 60_000, &slots)
}

/// A telemetry bucket of `schedule` from `router`: `counts` successes per flavour.
pub(crate) fn bucket(schedule: &str, router: &str, counts: [i64; 3]) -> TelemetryBucket {
    let now = now_ms();
    let mut b = samples::telemetry_bucket();
    b.schedule = schedule.into();
    b.router_id = router.into();
    b.bucket_start_ms = now - now.rem_euclid(1000);
    b.counts = ["precision-100", "precision-50", "precision-30"]
        .iter()
        .zip(counts)
        .map(|(f, count)| OutcomeCount {
            flavour: (*f).into(),
            outcome: Outcome::Success,
            count,
        })
        .collect();
    b
}

/// Write `record` to `topic` with `key`; panics if it cannot.
pub(crate) async fn send<T: carbonflow_schemas::AvroRecord>(
    producer: &RecordProducer,
    args: &KafkaArgs,
    topic: Topic,
    key: &str,
    record: &T,
) {
    producer
        .send(&args.layout().name(topic), key, None, record)
        .await
        .unwrap_or_else(|e| panic!("producing to {topic:?}: {e}"));
}

/// Every decision on the topic, per schedule, in offset order (tombstones skipped).
pub(crate) fn decisions_by_schedule(
    args: &KafkaArgs,
) -> BTreeMap<String, Vec<(ScheduleDecision, Vec<u8>)>> {
    let mut out: BTreeMap<String, Vec<(ScheduleDecision, Vec<u8>)>> = BTreeMap::new();
    for p in 0..args.schedule_partitions {
        for (_, _, payload) in read_all(args, Topic::Decisions, p) {
            let Some(bytes) = payload else { continue };
            let d: ScheduleDecision = decode(&bytes).expect("decisions decode");
            out.entry(d.schedule.clone()).or_default().push((d, bytes));
        }
    }
    out
}

/// Partition `p` restored by folding its whole journal from offset 0, with no entry whose
/// replay diverges from what it recorded.
pub(crate) async fn fold_whole_journal(args: &KafkaArgs, p: i32) -> Restored {
    let a = args.clone();
    let folded = tokio::task::spawn_blocking(move || restore(&a, p, RestoreOptions::WHOLE_JOURNAL))
        .await
        .expect("join")
        .expect("fold the whole journal");
    assert_eq!(folded.divergent, 0, "replay diverged from the journal");
    folded
}

/// What `p`'s admin API shows of `schedule`'s state, if it holds it.
pub(crate) async fn state_of(p: &ProcessorProcess, schedule: &str) -> Option<Value> {
    match http(
        "GET",
        &format!("{}/schedule/{schedule}/state", p.admin),
        None,
    )
    .await
    {
        (200, v) => Some(v),
        _ => None,
    }
}

/// No two different decisions share (schedule, epoch, version) on the topic.
pub(crate) fn assert_no_decision_issued_twice(args: &KafkaArgs) {
    let mut by_precedence: BTreeMap<(String, i64, i64), Vec<u8>> = BTreeMap::new();
    for (schedule, ds) in decisions_by_schedule(args) {
        for (d, bytes) in ds {
            let key = (schedule.clone(), d.epoch, d.version);
            if let Some(held) = by_precedence.get(&key) {
                assert_eq!(held, &bytes, "{key:?} issued twice with different content");
            }
            by_precedence.insert(key, bytes);
        }
    }
}

/// `processor audit verify` over the topics of `args` exits 0 with 0 mismatches.
pub(crate) fn assert_audit_verifies(args: &KafkaArgs) {
    let out = processor_command(env!("CARGO_BIN_EXE_processor"), "audit", args)
        .arg("verify")
        .output()
        .expect("run processor audit verify");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && text.contains(" 0 mismatched"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every schedule of `expected` has seen exactly its requests, in the state of whichever
/// of `members` holds it (the last ones are waited for, up to a minute).
pub(crate) async fn assert_requests_seen(
    members: &[&ProcessorProcess],
    expected: &BTreeMap<String, i64>,
) {
    for (s, &want) in expected {
        let seen = eventually(
            &format!("{s} to have seen {want} requests"),
            Duration::from_secs(60),
            || async {
                for m in members {
                    if let Some(state) = state_of(m, s).await {
                        let seen = state["requestsSeen"].as_i64()?;
                        return (seen >= want).then_some(seen);
                    }
                }
                None
            },
        )
        .await;
        assert_eq!(seen, want, "{s}: requests counted {seen}, produced {want}");
    }
}

/// The fold of each whole journal counts exactly the requests of `expected`; returns how
/// many entries the folds passed over (superseded owners' written after a newer claim).
pub(crate) async fn assert_folds_count(args: &KafkaArgs, expected: &BTreeMap<String, i64>) -> u64 {
    let mut fenced = 0;
    for p in 0..args.schedule_partitions {
        let folded = fold_whole_journal(args, p).await;
        fenced += folded.fenced;
        for (id, s) in &folded.state.schedules {
            assert_eq!(s.requests_seen, expected[id], "{id}: journal fold counts");
        }
    }
    fenced
}
