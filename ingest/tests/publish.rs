//! `ingest` through the real broker: deterministic replays and refused configs.

use std::process::Command;

use carbonflow_schemas::bus::{KafkaArgs, Topic};
use carbonflow_schemas::records::ConfigCommand;
use carbonflow_schemas::testing::{fresh_layout, read_all, repo_root};

fn ingest(args: &KafkaArgs, rest: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ingest"))
        .args(args.to_flags())
        .envs(args.to_secret_env())
        .args(rest)
        .output()
        .expect("run ingest")
}

#[tokio::test]
async fn a_replay_from_the_same_start_publishes_identical_records() {
    let args = fresh_layout("replay", 1).await;
    let file = repo_root().join("benchmarks/scenarios/forecast-aware-challenge.json");
    let file = file.to_string_lossy();
    for _ in 0..2 {
        let out = ingest(
            &args,
            &[
                "forecasts",
                "scenario",
                &file,
                "--slot",
                "15s",
                "--speed",
                "1",
                "--start",
                "2025-11-18T12:00:00Z",
                "--steps",
                "3",
                "--no-wait",
                "--horizon",
                "8",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let records: Vec<Vec<u8>> = read_all(&args, Topic::Forecasts, 0)
        .into_iter()
        .filter_map(|(_, _, p)| p)
        .collect();
    assert_eq!(records.len(), 6);
    assert_eq!(
        records[..3],
        records[3..],
        "the second replay differs from the first"
    );
    let f: carbonflow_schemas::records::Forecast =
        carbonflow_schemas::decode(&records[1]).expect("forecast");
    assert_eq!(f.points.len(), 8);
    assert_eq!(f.points[0].g_per_kwh, 45.0);
    assert_eq!(f.points[0].end_ms - f.points[0].start_ms, 15_000);
}

#[tokio::test]
async fn an_invalid_schedule_file_publishes_nothing_and_a_valid_one_is_published() {
    let args = fresh_layout("apply", 1).await;
    let dir = std::env::temp_dir().join(format!("{}files", args.topic_prefix));
    std::fs::create_dir_all(&dir).expect("dir");
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "schedule: shop/checkout\npolicy: fastest\nflavours:\n  - {name: full, precision: 1, upstream: http://a:1}\n",
    )
    .expect("write");
    let out = ingest(&args, &["config", "apply", "-f", &bad.to_string_lossy()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("bad.yaml") && stderr.contains("policy"),
        "{stderr}"
    );
    assert!(
        read_all(&args, Topic::Config, 0).is_empty(),
        "nothing published"
    );

    let good = dir.join("good.yaml");
    std::fs::write(
        &good,
        "schedule: shop/checkout\npolicy: credit-greedy\nflavours:\n  - {name: full, precision: 1, upstream: http://a:1}\n",
    )
    .expect("write");
    let out = ingest(&args, &["config", "apply", "-f", &good.to_string_lossy()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records = read_all(&args, Topic::Config, 0);
    assert_eq!(records.len(), 1);
    let command = ConfigCommand::decode(records[0].2.as_deref().expect("payload")).expect("decode");
    assert_eq!(command.schedule(), "shop/checkout");
    let _ = std::fs::remove_dir_all(dir);
}
