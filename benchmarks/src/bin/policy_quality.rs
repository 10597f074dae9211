//! Policy quality: every policy on every scenario, measured against the offline optimum.
//!
//! A deterministic simulation through the processor's own state machine
//! (`PartitionState::apply`, no broker). Per simulated second: a tick, then one telemetry
//! bucket whose requests are split over the flavours by the decision in force (largest
//! remainder), all answered. Forecast `k` is issued at the start of slot `k` and reaches
//! the end of the run: the run is the period the quality promise is kept over. Accounting
//! follows reference section 9.2 with the deployed relative energies (1.0 / 0.6 / 0.3):
//! emissions = Σ requests_f × energy_f × actual intensity, baseline = the same requests at
//! full precision, saved = 1 − emissions / baseline, mean precision = Σ requests_f ×
//! precision_f / Σ requests.
//!
//! Every run is repeated under each *setting*: a forecast error σ (each issued point is
//! the actual intensity × exp(σ·z − σ²/2), z standard normal, seeded, so the actual
//! intensity is always the scenario's) and a load profile (flat, or diurnal: one day per
//! run, 0.4× at night to 1.6× at midday, with the demand published in the forecast). The
//! UK daily pattern also runs for two of its days.
//!
//! The oracle: the same constraints (mean precision ≥ the target over the run, shares of
//! each second summing to 1), solved once over the whole run with the actual intensities
//! and the actual load, perfect knowledge (`carbonflow_core::policy::solve`, checked against
//! an independent LP in the core's unit tests). Each policy is compared with the oracle *at
//! its own delivered precision*, so a policy that overspends quality is not flattered.
//!
//! Run: `target/release/policy_quality [--seconds 600] [--load 100] [--all-tables]`.

use std::path::PathBuf;

use carbonflow_benchmarks::now_ms;
use carbonflow_benchmarks::plot::{Chart, Series, Style, draw};
use carbonflow_core::policy::{MixCurve, PlanSlot, emissions, policy_names, solve};
use carbonflow_core::spec::ScheduleSpec;
use carbonflow_core::state::{Input, Output, PartitionState};
use carbonflow_ingest::scenario::Scenario;
use carbonflow_schemas::records::{
    ConfigCommand, DemandPoint, Forecast, InputPosition, LatencyHistogram, Outcome, OutcomeCount,
    ScheduleConfig, ScheduleDecision, TelemetryBucket, Tick,
};
use clap::Parser;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

#[derive(Parser)]
#[command(
    name = "policy_quality",
    about = "Every policy on every scenario against the offline optimum, same load, same code paths as the processor"
)]
struct Cli {
    /// Scenario directory.
    #[arg(long, default_value = "benchmarks/scenarios")]
    scenarios: PathBuf,
    /// Simulated seconds per run (the reference's showdown ran 10 minutes).
    #[arg(long, default_value_t = 600)]
    seconds: i64,
    /// Mean requests per second.
    #[arg(long, default_value_t = 100)]
    load: i64,
    /// Slot length, seconds.
    #[arg(long, default_value_t = 15)]
    slot_seconds: i64,
    /// Forecast errors σ to run, fractions (0.2 = 20 %), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0,0.1,0.2,0.3")]
    errors: Vec<f64>,
    /// Seed of the forecast errors.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Print every policy's row for every setting (default: the exact-forecast flat-load
    /// and the σ = 20 % diurnal tables in full, a summary of the rest).
    #[arg(long)]
    all_tables: bool,
    /// Scenario (name) whose credit trajectories and savings-vs-precision are plotted.
    #[arg(long, default_value = "forecast-aware-challenge")]
    plot_scenario: String,
    /// Where the PNGs go.
    #[arg(long, default_value = "benchmarks/results")]
    out_dir: PathBuf,
}

const SCHEDULE: &str = "sim/app";
const T0: i64 = 1_763_467_200_000; // 2025-11-18T12:00:00Z
/// Delivered precision may fall short of the target by this much (integer request splits).
const PRECISION_TOLERANCE: f64 = 0.002;
/// Forecast horizon, slots (as published by the forecast adapters).
const HORIZON_SLOTS: usize = 48;

/// How a run is set up besides its scenario.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Setting {
    /// Forecast error σ (multiplicative, log-normal).
    sigma: f64,
    /// Diurnal load (else flat).
    diurnal: bool,
}

impl Setting {
    fn label(&self) -> String {
        format!(
            "forecast error σ = {:.0} %, {} load",
            self.sigma * 100.0,
            if self.diurnal { "diurnal" } else { "flat" }
        )
    }
}

/// What a run plays out over: the actual intensities and the load of every second.
struct World {
    name: String,
    scenario: Scenario,
    slot_seconds: i64,
    /// Requests of every simulated second.
    load: Vec<i64>,
}

impl World {
    fn new(name: String, scenario: Scenario, cli: &Cli, seconds: i64, diurnal: bool) -> Self {
        // One day per run (the UK pattern's day is its 24 points).
        let load = (0..seconds)
            .map(|t| {
                let profile = if diurnal {
                    1.0 - 0.6 * (std::f64::consts::TAU * t as f64 / seconds as f64).cos()
                } else {
                    1.0
                };
                (cli.load as f64 * profile).round() as i64
            })
            .collect();
        Self {
            name,
            scenario,
            slot_seconds: cli.slot_seconds,
            load,
        }
    }

    fn seconds(&self) -> i64 {
        self.load.len() as i64
    }

    fn slots(&self) -> usize {
        (self.seconds() as usize).div_ceil(self.slot_seconds as usize)
    }

    fn intensity(&self, second: i64) -> f64 {
        self.scenario.value((second / self.slot_seconds) as usize)
    }

    /// Actual requests of slot `k`.
    fn requests_in(&self, k: usize) -> f64 {
        let from = k * self.slot_seconds as usize;
        let to = (from + self.slot_seconds as usize).min(self.load.len());
        self.load[from..to].iter().sum::<i64>() as f64
    }

    /// The forecast issued at the start of slot `k`: the actual intensities with error σ,
    /// up to the end of the run, with the demand when the load is diurnal.
    fn forecast(&self, k: usize, setting: Setting, rng: &mut rand_chacha::ChaCha8Rng) -> Forecast {
        let slot_ms = self.slot_seconds * 1000;
        let at = |i: usize| T0 + i as i64 * slot_ms;
        let end = (k + HORIZON_SLOTS).min(self.slots());
        let mut f = self.scenario.forecast("SIM", T0, slot_ms, k, end - k);
        for p in &mut f.points {
            let z: f64 = StandardNormal.sample(rng);
            p.g_per_kwh *= (setting.sigma * z - setting.sigma * setting.sigma / 2.0).exp();
        }
        if setting.diurnal {
            f.demand = Some(
                (k..end)
                    .map(|i| DemandPoint {
                        start_ms: at(i),
                        end_ms: at(i + 1),
                        requests_per_second: self.requests_in(i) / self.slot_seconds as f64,
                    })
                    .collect(),
            );
        }
        f
    }
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

impl Run {
    fn saved(&self) -> f64 {
        1.0 - self.emissions / self.baseline.max(f64::MIN_POSITIVE)
    }

    fn precision(&self) -> f64 {
        self.precision_sum / self.requests.max(1) as f64
    }
}

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

fn config(policy: &str) -> ScheduleConfig {
    let spec = ScheduleSpec {
        policy: policy.into(),
        zone: "SIM".into(),
        ..ScheduleSpec::default()
    };
    let mut config = spec.to_config(SCHEDULE, 1, T0);
    for f in &mut config.flavours {
        f.upstream_url = format!("http://127.0.0.1:9/{}", f.name);
    }
    config
}

fn bucket(
    at: i64,
    d: &ScheduleDecision,
    config: &ScheduleConfig,
    counts: &[i64],
) -> TelemetryBucket {
    TelemetryBucket {
        router_id: "sim".into(),
        schedule: SCHEDULE.into(),
        bucket_start_ms: at,
        bucket_length_ms: 1000,
        decision_version: Some(d.version),
        counts: config
            .flavours
            .iter()
            .zip(counts)
            .filter(|(_, n)| **n > 0)
            .map(|(f, n)| OutcomeCount {
                flavour: f.name.clone(),
                outcome: Outcome::Success,
                count: *n,
            })
            .collect(),
        latency: LatencyHistogram {
            upper_bounds_ms: vec![],
            counts: vec![0],
            sum_ms: 0.0,
        },
    }
}

fn simulate(world: &World, setting: Setting, policy: &str, seed: u64) -> Run {
    // The same seed for every policy: each sees exactly the same forecasts.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
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
    let mut decisions = 0;
    let mut take = |outs: Vec<Output>, latest: &mut Option<ScheduleDecision>| {
        for o in outs {
            if let Output::Decision { decision: d, .. } = o {
                decisions += 1;
                *latest = Some(std::sync::Arc::unwrap_or_clone(d));
            }
        }
    };
    let config = config(policy);
    let outs = state.apply(
        &Input::Config(ConfigCommand::Config(Box::new(config.clone()))),
        &next("config"),
    );
    take(outs, &mut latest);
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
    for second in 0..world.seconds() {
        let at = T0 + second * 1000;
        if second % world.slot_seconds == 0 {
            let k = (second / world.slot_seconds) as usize;
            let f = world.forecast(k, setting, &mut rng);
            take(
                state.apply(&Input::Forecast(f), &next("forecasts")),
                &mut latest,
            );
        }
        let tick = Tick {
            at_ms: at,
            source: "sim".into(),
        };
        take(state.apply(&Input::Tick(tick), &next("ticks")), &mut latest);
        let Some(d) = &latest else { continue };
        let weights: Vec<f64> = d.flavours.iter().map(|f| f.weight).collect();
        let counts = split(world.load[second as usize], &weights);
        let intensity = world.intensity(second);
        for (f, n) in config.flavours.iter().zip(&counts) {
            run.requests += n;
            run.emissions += *n as f64 * f.relative_energy * intensity;
            run.baseline += *n as f64 * intensity;
            run.precision_sum += *n as f64 * f.precision;
        }
        let b = bucket(at, d, &config, &counts);
        take(
            state.apply(&Input::Telemetry(b), &next("telemetry")),
            &mut latest,
        );
        let balance = state.schedules[SCHEDULE].ledger.balance();
        run.credit_min = run.credit_min.min(balance);
        run.credit_final = balance;
        run.trajectory.push((second as f64, balance));
    }
    run.decisions = decisions;
    run
}

/// The offline optimum of a world: every slot's actual intensity and load, known ahead.
struct Oracle {
    curve: MixCurve,
    slots: Vec<PlanSlot>,
    /// Σ requests × intensity at full precision (energy 1.0).
    baseline: f64,
}

impl Oracle {
    fn of(world: &World) -> Self {
        let slots: Vec<PlanSlot> = (0..world.slots())
            .map(|k| PlanSlot {
                intensity: world.scenario.value(k),
                requests: world.requests_in(k),
            })
            .collect();
        let baseline = slots.iter().map(|s| s.requests * s.intensity).sum();
        let curve = MixCurve::of_flavours(&config("carbon-optimal").flavours)
            .expect("the default flavours fill a slot");
        Self {
            curve,
            slots,
            baseline,
        }
    }

    /// Fraction saved by the best allocation delivering mean precision `precision`.
    fn saved_at(&self, precision: f64) -> Option<f64> {
        let plan = solve(&self.curve, &self.slots, precision, 0.0, None);
        plan.lambda?;
        Some(1.0 - emissions(&self.curve, &self.slots, &plan.precision) / self.baseline)
    }

    /// The frontier: saving at every precision the flavours can deliver, 1-point steps.
    fn frontier(&self) -> Vec<(f64, f64)> {
        let low = (self.curve.lowest() * 100.0).ceil() as i64;
        (low..=100)
            .filter_map(|p| {
                let q = p as f64 / 100.0;
                self.saved_at(q).map(|s| (q, 100.0 * s))
            })
            .collect()
    }
}

/// One policy's row of a table.
struct Row {
    policy: &'static str,
    saved: f64,
    precision: f64,
    meets: bool,
    /// Saved as a fraction of the oracle's saving at this policy's precision.
    of_oracle: Option<f64>,
    run: Run,
}

fn rows(world: &World, setting: Setting, oracle: &Oracle, seed: u64, target: f64) -> Vec<Row> {
    policy_names()
        .into_iter()
        .map(|policy| {
            let run = simulate(world, setting, policy, seed);
            let (saved, precision) = (run.saved(), run.precision());
            let of_oracle = oracle
                .saved_at(precision.min(1.0))
                .filter(|s| *s > 1e-9)
                .map(|s| saved / s);
            Row {
                policy,
                saved,
                precision,
                meets: precision >= target - PRECISION_TOLERANCE,
                of_oracle,
                run,
            }
        })
        .collect()
}

fn percent(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{:.1}", 100.0 * v))
}

fn print_table(rows: &[Row], oracle_saved: Option<f64>, target: f64) {
    println!(
        "    oracle at the target ({target:.2}): saves {} %",
        percent(oracle_saved)
    );
    println!(
        "    {:<22} {:>8} {:>10} {:>6} {:>10} {:>10} {:>10} {:>9}",
        "policy",
        "saved %",
        "mean prec",
        "meets",
        "% oracle",
        "credit min",
        "credit end",
        "decisions"
    );
    for r in rows {
        println!(
            "    {:<22} {:>8.2} {:>10.4} {:>6} {:>10} {:>10.3} {:>10.3} {:>9}",
            r.policy,
            100.0 * r.saved,
            r.precision,
            if r.meets { "yes" } else { "no" },
            percent(r.of_oracle),
            r.run.credit_min,
            r.run.credit_final,
            r.run.decisions
        );
    }
}

/// The carbon-optimal row of a table and the best saving among the others that meet the
/// target.
fn summary_line(name: &str, rows: &[Row], oracle_saved: Option<f64>) -> String {
    let ours = rows.iter().find(|r| r.policy == "carbon-optimal");
    let best_other = rows
        .iter()
        .filter(|r| r.policy != "carbon-optimal" && r.meets)
        .max_by(|a, b| a.saved.total_cmp(&b.saved));
    match ours {
        Some(o) => format!(
            "    {:<30} {:>8} {:>9.2} {:>9.4} {:>6} {:>9} {:>9} {:>22}",
            name,
            percent(oracle_saved),
            100.0 * o.saved,
            o.precision,
            if o.meets { "yes" } else { "no" },
            percent(oracle_saved.map(|s| o.saved / s)),
            percent(o.of_oracle),
            best_other.map_or("-".into(), |b| format!(
                "{} {:.2}",
                b.policy,
                100.0 * b.saved
            )),
        ),
        None => format!("    {name}: carbon-optimal missing"),
    }
}

fn worlds(cli: &Cli, diurnal: bool) -> anyhow::Result<Vec<World>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&cli.scenarios)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut worlds = Vec::new();
    for file in files {
        let scenario = Scenario::load(&file)?;
        let stem = file
            .file_stem()
            .map_or(String::new(), |s| s.to_string_lossy().into_owned());
        if stem == "uk-daily-pattern" {
            // Two of its days, back to back, one day per load cycle.
            let day = scenario.values.len() as i64 * cli.slot_seconds;
            let two_days = Scenario {
                repeat: true,
                ..scenario.clone()
            };
            let mut world = World::new(format!("{stem} ×2 days"), two_days, cli, 2 * day, diurnal);
            if diurnal {
                let one = World::new(String::new(), scenario.clone(), cli, day, true);
                world.load = [one.load.clone(), one.load].concat();
            }
            worlds.push(world);
        }
        worlds.push(World::new(stem, scenario, cli, cli.seconds, diurnal));
    }
    Ok(worlds)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let started = now_ms();
    let target = 1.0 - ScheduleSpec::default().target_error;
    println!(
        "policy quality: {} s per run at {} req/s mean, {} s slots, telemetry feed, energies 1.0/0.6/0.3, target precision {target:.2} (met within {PRECISION_TOLERANCE})",
        cli.seconds, cli.load, cli.slot_seconds
    );
    let mut settings = Vec::new();
    for diurnal in [false, true] {
        for sigma in &cli.errors {
            settings.push(Setting {
                sigma: *sigma,
                diurnal,
            });
        }
    }
    let full = |s: &Setting| {
        cli.all_tables
            || (*s
                == Setting {
                    sigma: 0.0,
                    diurnal: false,
                })
            || (*s
                == Setting {
                    sigma: 0.2,
                    diurnal: true,
                })
    };
    let mut charts = Vec::new();
    for setting in &settings {
        println!("\n== {}", setting.label());
        let mut summary = Vec::new();
        for world in worlds(&cli, setting.diurnal)? {
            let oracle = Oracle::of(&world);
            let oracle_saved = oracle.saved_at(target);
            let rows = rows(&world, *setting, &oracle, cli.seed, target);
            if full(setting) {
                println!("\n  {} ({} slots)", world.name, world.slots());
                print_table(&rows, oracle_saved, target);
            }
            summary.push(summary_line(&world.name, &rows, oracle_saved));
            if world.name == cli.plot_scenario && full(setting) {
                charts.push(frontier_chart(&world, setting, &oracle, &rows));
                if *setting
                    == (Setting {
                        sigma: 0.0,
                        diurnal: false,
                    })
                {
                    draw_credit(&cli, &world, &rows)?;
                }
            }
        }
        println!(
            "\n  carbon-optimal, {}:\n    {:<30} {:>8} {:>9} {:>9} {:>6} {:>9} {:>9} {:>22}",
            setting.label(),
            "scenario",
            "oracle %",
            "saved %",
            "mean prec",
            "meets",
            "% oracle",
            "% at prec",
            "best other meeting it %"
        );
        for line in summary {
            println!("{line}");
        }
    }
    if !charts.is_empty() {
        std::fs::create_dir_all(&cli.out_dir)?;
        let png = cli.out_dir.join("policy-frontier.png");
        draw(&png, 1000, &charts)?;
        println!("\nplot: {}", png.display());
    }
    eprintln!("\n({} ms)", now_ms() - started);
    Ok(())
}

/// Savings against delivered precision: one point per policy, the oracle's frontier as a line.
fn frontier_chart(world: &World, setting: &Setting, oracle: &Oracle, rows: &[Row]) -> Chart {
    let mut series = vec![Series {
        label: "oracle (perfect knowledge)".into(),
        colour: 8,
        style: Style::Line,
        points: oracle.frontier(),
    }];
    series.extend(rows.iter().enumerate().map(|(i, r)| Series {
        label: r.policy.to_string(),
        colour: i,
        style: Style::Points,
        points: vec![(r.precision, 100.0 * r.saved)],
    }));
    Chart {
        title: format!(
            "Saved vs delivered precision: {}, {}",
            world.name,
            setting.label()
        ),
        x_label: "delivered mean precision".into(),
        y_label: "carbon saved vs full precision, %".into(),
        log_x: false,
        series,
    }
}

fn draw_credit(cli: &Cli, world: &World, rows: &[Row]) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cli.out_dir)?;
    let png = cli.out_dir.join("policy-credit.png");
    let series = rows
        .iter()
        .enumerate()
        .map(|(colour, r)| Series {
            label: r.policy.to_string(),
            colour,
            style: Style::Line,
            points: r.run.trajectory.clone(),
        })
        .collect();
    draw(
        &png,
        1000,
        &[Chart {
            title: format!("Credit balance per policy: {}", world.name),
            x_label: "simulated seconds".into(),
            y_label: "credit balance".into(),
            log_x: false,
            series,
        }],
    )?;
    println!("  plot: {}", png.display());
    Ok(())
}
