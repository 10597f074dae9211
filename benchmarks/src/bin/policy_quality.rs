//! Policy quality: a deterministic simulation, through the processor's
//! own state machine (`PartitionState::apply`, no broker), of every policy on every
//! scenario under `benchmarks/scenarios/`, all with the same fixed load.
//!
//! Per simulated second: a tick, then one telemetry bucket whose requests are split over
//! the flavours by the decision in force (largest remainder), all answered. Forecast `k`
//! is issued at the start of slot `k` (15 s slots, as the reference's mock). Accounting
//! follows reference section 9.2 with the deployed relative energies (1.0 / 0.6 / 0.3):
//! emissions = Σ requests_f × energy_f × intensity, baseline = Σ requests × intensity,
//! reduction = 1 − emissions / baseline, mean precision = Σ requests_f × precision_f / Σ
//! requests. Run: `target/release/policy_quality [--seconds 600] [--load 100]`.

use std::path::PathBuf;

use carbonflow_benchmarks::now_ms;
use carbonflow_benchmarks::plot::{Chart, Series, Style, draw};
use carbonflow_core::policy::policy_names;
use carbonflow_core::spec::ScheduleSpec;
use carbonflow_core::state::{Input, Output, PartitionState};
use carbonflow_ingest::scenario::Scenario;
use carbonflow_schemas::records::{
    ConfigCommand, InputPosition, Outcome, OutcomeCount, ScheduleDecision, TelemetryBucket, Tick,
};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "policy_quality",
    about = "Every policy on every scenario, same load, same code paths as the processor"
)]
struct Cli {
    /// Scenario directory.
    #[arg(long, default_value = "benchmarks/scenarios")]
    scenarios: PathBuf,
    /// Simulated seconds per run (the reference's showdown ran 10 minutes).
    #[arg(long, default_value_t = 600)]
    seconds: i64,
    /// Requests per second.
    #[arg(long, default_value_t = 100)]
    load: i64,
    /// Slot length, seconds.
    #[arg(long, default_value_t = 15)]
    slot_seconds: i64,
    /// Scenario (file name without .json) whose credit-balance trajectories are plotted.
    #[arg(long, default_value = "forecast-aware-challenge")]
    plot_scenario: String,
    /// Where the PNG goes.
    #[arg(long, default_value = "benchmarks/results")]
    out_dir: PathBuf,
}

/// What one run measured.
struct Run {
    requests: i64,
    emissions: f64,
    baseline: f64,
    precision_sum: f64,
    credit_min: f64,
    credit_final: f64,
    decisions: usize,
    /// Credit balance after each simulated second.
    trajectory: Vec<(f64, f64)>,
}

const SCHEDULE: &str = "sim/app";
const T0: i64 = 1_763_467_200_000; // 2025-11-18T12:00:00Z

/// Split `n` requests by `weights` with the largest-remainder method.
fn split(n: i64, weights: &[f64]) -> Vec<i64> {
    let total: f64 = weights.iter().sum();
    if total <= 0.0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<f64> = weights.iter().map(|w| n as f64 * w / total).collect();
    let mut counts: Vec<i64> = exact.iter().map(|x| x.floor() as i64).collect();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|a, b| {
        (exact[*b] - exact[*b].floor()).total_cmp(&(exact[*a] - exact[*a].floor()))
    });
    let missing = n - counts.iter().sum::<i64>();
    for i in order.into_iter().take(missing.max(0) as usize) {
        counts[i] += 1;
    }
    counts
}

fn simulate(cli: &Cli, scenario: &Scenario, policy: &str) -> Run {
    let mut state = PartitionState::new(0);
    let mut offset = 0_i64;
    let mut next = |topic: &str| {
        offset += 1;
        InputPosition {
            topic: topic.into(),
            partition: 0,
            offset,
        }
    };
    let mut latest: Option<ScheduleDecision> = None;
    let take = |outs: Vec<Output>, latest: &mut Option<ScheduleDecision>, count: &mut usize| {
        for o in outs {
            if let Output::Decision(d) = o {
                *count += 1;
                *latest = Some(*d);
            }
        }
    };
    let mut decisions = 0;
    let spec = ScheduleSpec {
        policy: policy.into(),
        zone: "SIM".into(),
        ..ScheduleSpec::default()
    };
    let mut config = spec.to_config(SCHEDULE, 1, T0);
    for f in &mut config.flavours {
        f.upstream_url = format!("http://127.0.0.1:9/{}", f.name);
    }
    let outs = state.apply(
        &Input::Config(ConfigCommand::Config(Box::new(config.clone()))),
        &next("config"),
    );
    take(outs, &mut latest, &mut decisions);
    let slot_ms = cli.slot_seconds * 1000;
    let mut run = Run {
        requests: 0,
        emissions: 0.0,
        baseline: 0.0,
        precision_sum: 0.0,
        credit_min: f64::MAX,
        credit_final: 0.0,
        decisions: 0,
        trajectory: Vec::new(),
    };
    for second in 0..cli.seconds {
        let at = T0 + second * 1000;
        if (second * 1000) % slot_ms == 0 {
            let k = (second * 1000 / slot_ms) as usize;
            let f = scenario.forecast("SIM", T0, slot_ms, k, 48);
            let outs = state.apply(&Input::Forecast(f), &next("forecasts"));
            take(outs, &mut latest, &mut decisions);
        }
        let tick = Tick {
            at_ms: at,
            source: "sim".into(),
        };
        let outs = state.apply(&Input::Tick(tick), &next("ticks"));
        take(outs, &mut latest, &mut decisions);
        let Some(d) = &latest else { continue };
        let counts = split(
            cli.load,
            &d.flavours.iter().map(|f| f.weight).collect::<Vec<_>>(),
        );
        let intensity = scenario.value((second * 1000 / slot_ms) as usize);
        for (f, n) in config.flavours.iter().zip(&counts) {
            run.requests += n;
            run.emissions += *n as f64 * f.relative_energy * intensity;
            run.baseline += *n as f64 * intensity;
            run.precision_sum += *n as f64 * f.precision;
        }
        let bucket = TelemetryBucket {
            router_id: "sim".into(),
            schedule: SCHEDULE.into(),
            bucket_start_ms: at,
            bucket_length_ms: 1000,
            decision_version: Some(d.version),
            counts: config
                .flavours
                .iter()
                .zip(&counts)
                .filter(|(_, n)| **n > 0)
                .map(|(f, n)| OutcomeCount {
                    flavour: f.name.clone(),
                    outcome: Outcome::Success,
                    count: *n,
                })
                .collect(),
            latency: carbonflow_schemas::records::LatencyHistogram {
                upper_bounds_ms: vec![],
                counts: vec![0],
                sum_ms: 0.0,
            },
        };
        let outs = state.apply(&Input::Telemetry(bucket), &next("telemetry"));
        take(outs, &mut latest, &mut decisions);
        let balance = state.schedules[SCHEDULE].ledger.balance();
        run.credit_min = run.credit_min.min(balance);
        run.credit_final = balance;
        run.trajectory.push((second as f64, balance));
    }
    run.decisions = decisions;
    run
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let started = now_ms();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&cli.scenarios)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    println!(
        "policy quality: {} s per run at {} req/s, {} s slots, telemetry feed, energies 1.0/0.6/0.3",
        cli.seconds, cli.load, cli.slot_seconds
    );
    for file in files {
        let scenario = Scenario::load(&file)?;
        println!(
            "\n{} ({} slots{})",
            scenario.name,
            scenario.values.len(),
            if scenario.repeat { ", repeating" } else { "" }
        );
        println!(
            "  {:<22} {:>10} {:>10} {:>10} {:>11} {:>10} {:>10} {:>9}",
            "policy",
            "reduction%",
            "mean prec",
            "prec loss%",
            "efficiency",
            "credit min",
            "credit end",
            "decisions"
        );
        let plotted = file
            .file_stem()
            .is_some_and(|s| s == cli.plot_scenario.as_str());
        let mut series = Vec::new();
        for (colour, policy) in policy_names().into_iter().enumerate() {
            let r = simulate(&cli, &scenario, policy);
            if plotted {
                series.push(Series {
                    label: policy.to_string(),
                    colour,
                    style: Style::Line,
                    points: r.trajectory.clone(),
                });
            }
            let reduction = 100.0 * (1.0 - r.emissions / r.baseline.max(f64::MIN_POSITIVE));
            let precision = r.precision_sum / r.requests.max(1) as f64;
            let loss = 100.0 * (1.0 - precision);
            println!(
                "  {:<22} {:>10.2} {:>10.3} {:>10.2} {:>11} {:>10.3} {:>10.3} {:>9}",
                policy,
                reduction,
                precision,
                loss,
                if loss > 0.0 {
                    format!("{:.3}", reduction / loss)
                } else {
                    "-".into()
                },
                r.credit_min,
                r.credit_final,
                r.decisions
            );
        }
        if plotted {
            std::fs::create_dir_all(&cli.out_dir)?;
            let png = cli.out_dir.join("policy-credit.png");
            draw(
                &png,
                1000,
                &[Chart {
                    title: format!("Credit balance per policy: {}", scenario.name),
                    x_label: "simulated seconds".into(),
                    y_label: "credit balance".into(),
                    log_x: false,
                    series,
                }],
            )?;
            println!("  plot: {}", png.display());
        }
    }
    eprintln!("\n({} ms)", now_ms() - started);
    Ok(())
}
