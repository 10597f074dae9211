//! Router overhead: the same load generator against the sample flavour
//! service directly and through a router, interleaved in one run.
//!
//! 1. Saturation: closed loop with `--concurrency` workers for `--seconds`, alternating
//!    direct / router `--rounds` times: requests per second of each.
//! 2. Latency at half the direct saturation rate and at half the router's own saturation:
//!    open loop (one request every 1/rate s), alternating direct / router: p50 / p99 of
//!    each and the p99 the router adds.
//!
//! Run (local broker up, `cargo build --release` done):
//! `target/release/router_overhead [--seconds 10] [--concurrency 32] [--rounds 3]`

use std::path::PathBuf;
use std::process::{Command, Stdio};

use carbonflow_schemas::testing::{Children, free_port};

use anyhow::Context;
use carbonflow_benchmarks::load::{at_rate, saturate};
use carbonflow_benchmarks::now_ms;
use carbonflow_benchmarks::pipeline::publish_decision;
use carbonflow_benchmarks::stats::Summary;
use carbonflow_schemas::bus::KafkaArgs;
use carbonflow_schemas::bus::admin::ensure_topics;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "router_overhead",
    about = "Throughput and latency of the sample service directly and through a router"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Closed-loop workers for the saturation runs.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Direct/router alternations.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Directory with the release binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    cli.kafka.topic_prefix = format!("bench.overhead.{}.", now_ms());
    let args = cli.kafka.clone();
    ensure_topics(&args, &args.layout(), 1).await?;
    let (backend, proxy, admin) = (free_port(), free_port(), free_port());
    let mut procs = Children::default();
    procs.0.push(
        Command::new(cli.bin_dir.join("carbonstat"))
            .args([
                "--listen",
                &format!("127.0.0.1:{backend}"),
                "--points",
                "1000",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting carbonstat (cargo build --release first)")?,
    );
    procs.0.push(
        Command::new(cli.bin_dir.join("router"))
            .args(args.to_flags())
            .envs(args.to_secret_env())
            .args(["--listen", &format!("127.0.0.1:{proxy}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
            .args([
                "--router-id",
                "overhead",
                "--schedule",
                "bench/overhead",
                "--mode",
                "smooth",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the router")?,
    );
    // One decision: all traffic to the full-precision flavour, so both paths do the same work.
    let mut d = carbonflow_schemas::testing::samples::schedule_decision();
    d.schedule = "bench/overhead".into();
    d.valid_until_ms = now_ms() + 3_600_000;
    for f in &mut d.flavours {
        f.upstream_url = format!("http://127.0.0.1:{backend}/{}", f.name);
        f.weight = if f.precision_percent == 100 { 1.0 } else { 0.0 };
    }
    publish_decision(&args, &format!("http://127.0.0.1:{admin}"), &d).await?;
    let full = d
        .flavours
        .iter()
        .find(|f| f.precision_percent == 100)
        .map(|f| f.name.clone())
        .unwrap_or_default();
    let direct_url = format!("http://127.0.0.1:{backend}/{full}/stats");
    let router_url = format!("http://127.0.0.1:{proxy}/stats");

    let (mut direct, mut routed) = (vec![], vec![]);
    for _ in 0..cli.rounds {
        direct.push(saturate(&direct_url, cli.concurrency, cli.seconds).await);
        routed.push(saturate(&router_url, cli.concurrency, cli.seconds).await);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (td, tr) = (median(&mut direct), median(&mut routed));
    println!(
        "router overhead: {} rounds × {} s, {} workers, carbonstat 1000 points",
        cli.rounds, cli.seconds, cli.concurrency
    );
    println!("  saturation direct   {td:>9.0} req/s   (rounds {direct:.0?})");
    println!("  saturation router   {tr:>9.0} req/s   (rounds {routed:.0?})");
    println!(
        "  throughput ratio    {:>9.3}          (target ≥ 0.8)",
        tr / td
    );
    // Latency at half the router's own saturation first (the rate that isolates what the
    // router adds from queueing), then at half the direct saturation (the target's rate),
    // which overloads the router on this machine: measured last so its backlog cannot
    // spill into the other figure.
    for (what, rate) in [
        ("half router saturation", tr / 2.0),
        ("half direct saturation", td / 2.0),
    ] {
        let (mut ld, mut lr) = (vec![], vec![]);
        for _ in 0..cli.rounds {
            ld.extend(at_rate(&direct_url, rate, cli.seconds).await);
            lr.extend(at_rate(&router_url, rate, cli.seconds).await);
        }
        let (sd, sr) = (Summary::of(&ld), Summary::of(&lr));
        println!("  {what}, {rate:.0} req/s:");
        println!("    direct  {sd}");
        println!("    router  {sr}");
        println!(
            "    added p99 {:>7.2} ms   (target ≤ 1 ms)",
            sr.p99 - sd.p99
        );
    }
    Ok(())
}
