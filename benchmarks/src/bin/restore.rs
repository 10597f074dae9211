//! Restore: restart-to-ready time of a processor against the length of
//! its history. For each history length H, H telemetry buckets (over 100 schedules) are
//! written and applied by a processor (journal entry per input, snapshots every 2000
//! entries by default); then the processor is SIGKILLed — no final snapshot, the worst
//! case — and restarted, and the time from spawn to `/readyz` = 200 is measured. Restore
//! reads the latest snapshot and the journal after it, so the time should stay flat.
//!
//! Run (after `cargo build --release`, with the local broker up):
//! `target/release/restore [--histories 10000,100000,1000000] [--restarts 3]`
//! Writes `benchmarks/results/restore.png`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use carbonflow_benchmarks::history::{publish_configs, write_buckets};
use carbonflow_benchmarks::now_ms;
use carbonflow_benchmarks::pipeline::{metric_reaches, spawn_processor, wait_ready};
use carbonflow_benchmarks::plot::{Chart, Series, Style, draw};
use carbonflow_benchmarks::stats::Summary;
use carbonflow_schemas::bus::admin::ensure_topics;
use carbonflow_schemas::bus::{KafkaArgs, RecordProducer};
use carbonflow_schemas::testing::Children;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "restore",
    about = "Processor restart-to-ready time against history length (SIGKILL, then restart)"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// History lengths (input records), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000,1000000")]
    histories: Vec<usize>,
    /// Schedules the inputs are spread over.
    #[arg(long, default_value_t = 100)]
    schedules: usize,
    /// Kill-and-restart cycles per history (the figure is their median).
    #[arg(long, default_value_t = 3)]
    restarts: usize,
    /// Directory with the release binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Where the PNG goes.
    #[arg(long, default_value = "benchmarks/results")]
    out_dir: PathBuf,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut rows = Vec::new();
    for &history in &cli.histories {
        let mut args: KafkaArgs = cli.kafka.clone();
        args.topic_prefix = format!("bench.restore.{history}.{}.", now_ms());
        args.schedule_partitions = 1;
        ensure_topics(&args, &args.layout(), 1)
            .await
            .context("creating topics")?;
        let producer = RecordProducer::new(&args, "restore-bench")?;
        publish_configs(&args, &producer, cli.schedules).await?;
        write_buckets(&args, &producer, history, cli.schedules).await?;

        // Build the history: the processor applies every input (journal, snapshots).
        let mut procs = Children::default();
        let (child, admin) = spawn_processor(&args, &cli.bin_dir, &[])?;
        procs.0.push(child);
        let (applied_in, _) = metric_reaches(
            &admin,
            "carbonflow_inputs_total{topic=\"request.telemetry\"",
            0.0,
            history as f64,
            Duration::from_secs(1800),
        )
        .await?;
        eprintln!(
            "history {history}: applied in {:.1} s",
            applied_in.as_secs_f64()
        );
        // Let the writes in flight be acknowledged (a snapshot may follow them).
        tokio::time::sleep(Duration::from_secs(2)).await;

        let mut times = Vec::new();
        for _ in 0..cli.restarts {
            drop(std::mem::take(&mut procs)); // SIGKILL
            let (child, admin) = spawn_processor(&args, &cli.bin_dir, &[])?;
            procs.0.push(child);
            let took = wait_ready(&admin, Duration::from_secs(600)).await?;
            eprintln!(
                "history {history}: ready {:.0} ms after spawn",
                took.as_secs_f64() * 1000.0
            );
            times.push(took.as_secs_f64() * 1000.0);
        }
        rows.push((history, Summary::of(&times)));
    }

    println!(
        "\n## Restore: restart-to-ready after SIGKILL ({} restarts per history, snapshots every 2000 entries)\n",
        cli.restarts
    );
    println!("| History (input records) | Restart-to-ready, median | Spread (max − min) |");
    println!("|---|---|---|");
    for (h, s) in &rows {
        println!("| {h} | {:.0} ms | {:.0} ms |", s.p50, s.spread());
    }
    std::fs::create_dir_all(&cli.out_dir)
        .with_context(|| format!("creating {}", cli.out_dir.display()))?;
    let png = cli.out_dir.join("restore.png");
    draw(
        &png,
        900,
        &[Chart {
            title: "Processor restart-to-ready after SIGKILL".into(),
            x_label: "history (input records, log scale)".into(),
            y_label: "ms".into(),
            log_x: true,
            series: vec![Series {
                label: "median of restarts".into(),
                colour: 0,
                style: Style::Line,
                points: rows.iter().map(|(h, s)| (*h as f64, s.p50)).collect(),
            }],
        }],
    )?;
    println!("\nPlot: {}", png.display());
    Ok(())
}
