//! `processor audit` through the real broker: verify, a tampered copy, explain, export
//! and what-if.

mod common;

use std::time::Duration;

use carbonflow_schemas::bus::{KafkaArgs, RecordProducer, Topic};
use carbonflow_schemas::records::{Outcome, OutcomeCount, ScheduleDecision};
use carbonflow_schemas::service::now_ms;
use carbonflow_schemas::testing::{fresh_layout, processor_command, samples};
use carbonflow_schemas::{decode, encode};
use common::{ProcessorProcess, eventually, http, read_all};

const SCHEDULE: &str = "audit/app";

fn audit(args: &KafkaArgs, rest: &[&str]) -> (i32, String) {
    let out = processor_command(env!("CARGO_BIN_EXE_processor"), "audit", args)
        .args(rest)
        .output()
        .expect("run processor audit");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// A short real history: a config, forecasts and telemetry windows, then a clean stop.
async fn history() -> KafkaArgs {
    let args = fresh_layout("audit", 2).await;
    let producer = RecordProducer::new(&args, "audit-test").expect("producer");
    let topic = |t| args.layout().name(t);
    let mut c = samples::schedule_config();
    c.schedule = SCHEDULE.into();
    c.config_version = 1;
    c.published_at_ms = now_ms();
    producer
        .send(&topic(Topic::Config), SCHEDULE, None, &c)
        .await
        .expect("config");
    let mut p = ProcessorProcess::start(&args, 0, 1, &[]);
    p.wait_ready(Duration::from_secs(60)).await;
    for (i, g) in [150.0, 320.0].into_iter().enumerate() {
        let mut f = samples::forecast();
        f.zone = c.zone.clone();
        f.issued_at_ms = now_ms();
        let start = f.issued_at_ms - f.issued_at_ms.rem_euclid(1_800_000);
        for (k, pt) in f.points.iter_mut().enumerate() {
            pt.start_ms = start + k as i64 * 1_800_000;
            pt.end_ms = pt.start_ms + 1_800_000;
            pt.g_per_kwh = g + k as f64;
        }
        producer
            .send(&topic(Topic::Forecasts), &f.zone, None, &f)
            .await
            .expect("forecast");
        // Two telemetry windows' worth of buckets.
        for s in 0..6 {
            let mut b = samples::telemetry_bucket();
            b.schedule = SCHEDULE.into();
            let now = now_ms();
            b.bucket_start_ms = now - now.rem_euclid(1000) + i as i64 * 10_000 + s * 2000;
            b.counts = vec![
                OutcomeCount {
                    flavour: "precision-100".into(),
                    outcome: Outcome::Success,
                    count: 10 + s,
                },
                OutcomeCount {
                    flavour: "precision-30".into(),
                    outcome: Outcome::Success,
                    count: 5,
                },
            ];
            producer
                .send(&topic(Topic::Telemetry), SCHEDULE, None, &b)
                .await
                .expect("bucket");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eventually("windows accounted", Duration::from_secs(30), || async {
        let (_, v) = http(
            "GET",
            &format!("{}/schedule/{SCHEDULE}/state", p.admin),
            None,
        )
        .await;
        (v["requestsAccounted"].as_i64()? > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    p.stop();
    args
}

fn decisions(args: &KafkaArgs) -> Vec<(i32, Vec<u8>, ScheduleDecision)> {
    let mut out = vec![];
    for p in 0..args.schedule_partitions {
        for (_, _, payload) in read_all(args, Topic::Decisions, p) {
            let Some(bytes) = payload else { continue };
            let d: ScheduleDecision = decode(&bytes).expect("decision");
            out.push((p, bytes, d));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verifies_explains_exports_and_replays_what_if() {
    let args = history().await;
    let emitted = decisions(&args);
    let ours = emitted
        .iter()
        .filter(|(_, _, d)| d.schedule == SCHEDULE)
        .count();
    assert!(ours >= 4, "expected several decisions, got {ours}");

    // verify: every decision re-derived, 0 mismatches.
    let (code, out) = audit(&args, &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "{ours} decisions checked, {ours} matched, 0 mismatched"
        )),
        "{out}"
    );

    // explain: every item, of a decision that closed a window and saw a forecast (inputs
    // of different topics are not ordered: the first window may close before the first
    // forecast is read).
    let window_version = emitted
        .iter()
        .map(|(_, _, d)| d)
        .find(|d| {
            d.schedule == SCHEDULE
                && d.provenance.telemetry_window.is_some()
                && d.provenance.forecast.is_some()
        })
        .expect("a decision that closed a window and saw a forecast")
        .version;
    let (code, out) = audit(
        &args,
        &[
            "explain",
            "--schedule",
            SCHEDULE,
            "--version",
            &window_version.to_string(),
        ],
    );
    assert_eq!(code, 0, "{out}");
    for item in [
        "config version in force: 1",
        "forecast used:",
        "now 1",
        "ledger: balance",
        "telemetry window:",
        "answered requests",
        "policy diagnostics:",
        "weights: precision-100",
        "changed from version",
    ] {
        assert!(out.contains(item), "explain lacks {item:?}:\n{out}");
    }

    // export: the CSV parses and has one row per decision.
    let (code, out) = audit(
        &args,
        &["export", "--schedule", SCHEDULE, "--format", "csv"],
    );
    assert_eq!(code, 0, "{out}");
    let mut reader = csv::Reader::from_reader(out.as_bytes());
    let rows = reader
        .records()
        .collect::<Result<Vec<_>, _>>()
        .expect("the CSV parses");
    assert_eq!(rows.len(), ours);

    // what-if with the policy in force reproduces the actual figures exactly.
    let policy = emitted
        .iter()
        .find(|(_, _, d)| d.schedule == SCHEDULE)
        .map(|(_, _, d)| d.policy.clone())
        .expect("policy");
    let (code, out) = audit(
        &args,
        &["what-if", "--schedule", SCHEDULE, "--policy", &policy],
    );
    assert_eq!(code, 0, "{out}");
    let figures = |label: &str| {
        out.lines()
            .find(|l| l.starts_with(label) && l.contains(" requests "))
            .map(|l| l[label.len()..].trim().to_string())
            .unwrap_or_else(|| panic!("no {label} line in {out}"))
    };
    assert_eq!(figures("actual"), figures("what-if"));
    let (code, other) = audit(
        &args,
        &["what-if", "--schedule", SCHEDULE, "--policy", "p100"],
    );
    assert_eq!(code, 0, "{other}");
    assert!(
        other.contains("reduction vs full precision 0.000 %"),
        "p100 saves nothing: {other}"
    );

    // A copy of the topics with one decision's weight altered: verify names it and fails.
    let copy = fresh_layout("audit-copy", 2).await;
    let producer = RecordProducer::new(&copy, "audit-copy").expect("producer");
    for p in 0..args.schedule_partitions {
        for (_, key, payload) in read_all(&args, Topic::Journal, p) {
            producer
                .send_bytes(
                    &copy.layout().name(Topic::Journal),
                    &key.unwrap_or_default(),
                    Some(p),
                    &payload.expect("entry"),
                    None,
                )
                .await
                .expect("copy journal");
        }
    }
    for (p, bytes, d) in &emitted {
        let bytes = if d.schedule == SCHEDULE && d.version == window_version {
            let mut altered = d.clone();
            altered.flavours[0].weight += 0.01;
            encode(&altered).expect("encode")
        } else {
            bytes.clone()
        };
        producer
            .send_bytes(
                &copy.layout().name(Topic::Decisions),
                d.schedule.as_bytes(),
                Some(*p),
                &bytes,
                None,
            )
            .await
            .expect("copy decision");
    }
    let (code, out) = audit(&copy, &["verify"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(" 1 mismatched"), "{out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("mismatch: "))
        .unwrap_or_else(|| panic!("no mismatch line: {out}"));
    assert!(
        line.starts_with(&format!("mismatch: {SCHEDULE} epoch "))
            && line.ends_with(&format!(" version {window_version}: flavours[0].weight")),
        "{out}"
    );
}
