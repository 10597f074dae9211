//! Weight fidelity: seed 000's experiment redone. Weights change every
//! 15–30 s (manual overrides with seeded random weights, so the commanded timeline is
//! known exactly); ~60 requests/s go through two routers, one in each mode; every 5 s
//! sample compares, per router and flavour, the share of requests each flavour served
//! with the weight commanded *at the time the request was sent* (the wall-clock view of
//! seed 000, so propagation delay counts against us).
//!
//! A sample is "within binomial noise" when |delivered − commanded| ≤ 3·√(p(1−p)/n).
//! Samples are aligned to each change, so the first sample after a change holds the
//! propagation delay in full.
//!
//! Run (after `cargo build --release`, with the local broker up):
//! `target/release/weight_fidelity [--seconds 150] [--runs 3] [--rate 60]`
//! Writes `benchmarks/results/weight-fidelity.png` and `.csv`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use carbonflow_benchmarks::http::{client, get};
use carbonflow_benchmarks::now_ms;
use carbonflow_benchmarks::pipeline::{Pipeline, RouterSpec};
use carbonflow_benchmarks::plot::{Chart, Series, Style, draw};
use carbonflow_benchmarks::stats::Summary;
use carbonflow_schemas::bus::admin::ensure_topics;
use carbonflow_schemas::bus::{KafkaArgs, RecordProducer, Topic};
use carbonflow_schemas::records::{ConfigCommand, FlavourWeight, ManualOverride};
use carbonflow_schemas::testing::{Children, free_port};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "weight_fidelity",
    about = "Commanded vs delivered shares per 5 s sample while weights change every 15-30 s, in both router modes"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Length of one run, seconds.
    #[arg(long, default_value_t = 150)]
    seconds: u64,
    /// Runs (the figures reported are the median over runs).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Requests per second in total, split evenly over the two routers.
    #[arg(long, default_value_t = 60.0)]
    rate: f64,
    /// Seed of the weight sequence and change intervals.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Directory with the release binaries (processor, router, carbonstat).
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Where the PNG and CSV go.
    #[arg(long, default_value = "benchmarks/results")]
    out_dir: PathBuf,
}

const SCHEDULE: &str = "bench/fidelity";
const FLAVOURS: [&str; 3] = ["precision-100", "precision-50", "precision-30"];
const SAMPLE_MS: i64 = 5_000;

/// A commanded weight set and when it was published.
#[derive(Debug, Clone)]
struct Change {
    at_ms: i64,
    weights: [u32; 3],
}

/// A request: when it was sent, through which router, which flavour answered.
#[derive(Debug, Clone)]
struct Sent {
    at_ms: i64,
    router: usize,
    flavour: Option<String>,
}

/// A deterministic generator (splitmix64): the same seed gives the same changes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Integer weights over three flavours summing to 100, each a multiple of 5 and at
    /// least 10 (a weight of 0 or 100 has no binomial noise to compare with).
    fn weights(&mut self) -> [u32; 3] {
        let a = 10 + self.below(15) as u32 * 5;
        let b = 10 + self.below(u64::from((80 - a) / 5) + 1) as u32 * 5;
        let mut w = [a, b, 100 - a - b];
        // Rotate so that no flavour is always the remainder.
        w.rotate_left(self.below(3) as usize);
        w
    }
}

/// One sample of one router: shares delivered against shares commanded.
#[derive(Debug, Clone)]
struct Sample {
    run: usize,
    router: usize,
    start_ms: i64,
    first_after_change: bool,
    n: usize,
    commanded: [f64; 3],
    delivered: [f64; 3],
}

impl Sample {
    fn deviation_pp(&self, f: usize) -> f64 {
        (self.delivered[f] - self.commanded[f]) * 100.0
    }
    fn within_noise(&self, f: usize) -> bool {
        let p = self.commanded[f];
        let sigma = (p * (1.0 - p) / self.n as f64).sqrt();
        (self.delivered[f] - p).abs() <= 3.0 * sigma + 1e-12
    }
}

fn samples(
    run: usize,
    changes: &[Change],
    sent: &[Sent],
    end_ms: i64,
    routers: usize,
) -> Vec<Sample> {
    let mut out = Vec::new();
    for (i, c) in changes.iter().enumerate() {
        let until = changes.get(i + 1).map_or(end_ms, |n| n.at_ms);
        let mut start = c.at_ms;
        let mut first = true;
        // Whole 5 s samples only: a partial tail would be a smaller, noisier sample.
        while start + SAMPLE_MS <= until {
            for router in 0..routers {
                let mut counts = [0usize; 3];
                let mut n = 0;
                for s in sent.iter().filter(|s| {
                    s.router == router && s.at_ms >= start && s.at_ms < start + SAMPLE_MS
                }) {
                    n += 1;
                    if let Some(f) = s
                        .flavour
                        .as_deref()
                        .and_then(|f| FLAVOURS.iter().position(|x| *x == f))
                    {
                        counts[f] += 1;
                    }
                }
                if n < 20 {
                    continue;
                }
                out.push(Sample {
                    run,
                    router,
                    start_ms: start,
                    first_after_change: first,
                    n,
                    commanded: c.weights.map(|w| f64::from(w) / 100.0),
                    delivered: counts.map(|k| k as f64 / n as f64),
                });
            }
            first = false;
            start += SAMPLE_MS;
        }
    }
    out
}

/// Figures of one router mode in one run.
#[derive(Debug, Clone, Default)]
struct Figures {
    mean_abs_pp: [f64; 3],
    max_first_pp: f64,
    max_pp: f64,
    within: f64,
    samples: usize,
}

fn figures(samples: &[Sample]) -> Figures {
    let mut f = Figures {
        samples: samples.len(),
        ..Figures::default()
    };
    if samples.is_empty() {
        return f;
    }
    let (mut inside, mut total) = (0, 0);
    for k in 0..3 {
        f.mean_abs_pp[k] =
            samples.iter().map(|s| s.deviation_pp(k).abs()).sum::<f64>() / samples.len() as f64;
    }
    for s in samples {
        for k in 0..3 {
            let d = s.deviation_pp(k).abs();
            f.max_pp = f.max_pp.max(d);
            if s.first_after_change {
                f.max_first_pp = f.max_first_pp.max(d);
            }
            total += 1;
            inside += usize::from(s.within_noise(k));
        }
    }
    f.within = inside as f64 / total as f64;
    f
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    cli.kafka.topic_prefix = format!("bench.fidelity.{}.", now_ms());
    let args = cli.kafka.clone();
    ensure_topics(&args, &args.layout(), 1)
        .await
        .context("creating topics")?;

    let mut extra = Children::default();
    let carbonstat = format!("127.0.0.1:{}", free_port());
    extra.0.push(
        std::process::Command::new(cli.bin_dir.join("carbonstat"))
            .args(["--listen", &carbonstat])
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting carbonstat")?,
    );
    let routers = [
        RouterSpec {
            id: "fidelity-smooth".into(),
            mode: "smooth",
        },
        RouterSpec {
            id: "fidelity-random".into(),
            mode: "random",
        },
    ];
    let pipeline = Pipeline::start(&args, &cli.bin_dir, Some(SCHEDULE), &routers)?;
    let producer = RecordProducer::new(&args, "fidelity-bench")?;
    let mut config =
        carbonflow_core::spec::ScheduleSpec::default().to_config(SCHEDULE, now_ms(), now_ms());
    config.valid_for_seconds = 3600;
    for f in &mut config.flavours {
        f.upstream_url = format!("http://{carbonstat}/{}", f.name);
    }
    pipeline.configure(&args, &producer, config).await?;
    let config_topic = args.layout().name(Topic::Config);

    let mut rng = Rng(cli.seed);
    let mut all_samples = Vec::new();
    let mut timelines = Vec::new();
    let http = client();
    for run in 0..cli.runs {
        let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
        let stop = tokio_util::sync::CancellationToken::new();
        // Open-loop load: a request every 1/rate s per router, each on its own task, so a
        // slow answer never lowers the rate.
        let mut loaders = Vec::new();
        for (i, r) in pipeline.routers.iter().enumerate() {
            let (sent, stop, http) = (sent.clone(), stop.clone(), http.clone());
            let url = format!("{}/stats?n=2000", r.proxy);
            let every = Duration::from_secs_f64(routers.len() as f64 / cli.rate);
            loaders.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let (sent, http, url) = (sent.clone(), http.clone(), url.clone());
                    tokio::spawn(async move {
                        let at_ms = now_ms();
                        let flavour = get(&http, &url).await.and_then(|(_, f, _)| f);
                        if let Ok(mut v) = sent.lock() {
                            v.push(Sent {
                                at_ms,
                                router: i,
                                flavour,
                            });
                        }
                    });
                }
            }));
        }
        let started = now_ms();
        let end = started + cli.seconds as i64 * 1000;
        let mut changes = Vec::new();
        while now_ms() < end {
            let weights = rng.weights();
            let o = ManualOverride {
                schedule: SCHEDULE.into(),
                issued_at_ms: now_ms(),
                ttl_seconds: 3600,
                weights: FLAVOURS
                    .iter()
                    .zip(weights)
                    .map(|(f, w)| FlavourWeight {
                        flavour: (*f).into(),
                        weight: f64::from(w),
                    })
                    .collect(),
                reason: Some(format!("weight fidelity run {run}")),
            };
            let bytes = ConfigCommand::Override(o).encode()?;
            let at_ms = now_ms();
            producer
                .send_bytes(
                    &config_topic,
                    SCHEDULE.as_bytes(),
                    None,
                    &bytes,
                    Some(at_ms),
                )
                .await?;
            changes.push(Change { at_ms, weights });
            eprintln!(
                "run {run}: +{:>5.1} s weights {weights:?}",
                (at_ms - started) as f64 / 1000.0
            );
            let hold = 15_000 + rng.below(15_001) as i64;
            tokio::time::sleep(Duration::from_millis(
                hold.min((end - now_ms()).max(0)) as u64
            ))
            .await;
        }
        stop.cancel();
        for l in loaders {
            let _ = l.await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await; // answers in flight
        let sent = sent.lock().map(|v| v.clone()).unwrap_or_default();
        let s = samples(run, &changes, &sent, end, routers.len());
        eprintln!(
            "run {run}: {} requests, {} changes, {} samples",
            sent.len(),
            changes.len(),
            s.len()
        );
        all_samples.extend(s);
        timelines.push((started, changes, end));
    }

    // Figures per mode: the median over runs of each run's figure.
    println!(
        "\n## Weight fidelity: {} runs of {} s, {:.0} req/s over two routers, weights changing every 15-30 s\n",
        cli.runs, cli.seconds, cli.rate
    );
    println!(
        "| Router mode | Samples | Mean abs. deviation p100 / p50 / p30 (pp) | Max deviation, first sample after a change (pp) | Max deviation, any sample (pp) | Flavour-samples within 3σ binomial |"
    );
    println!("|---|---|---|---|---|---|");
    for (r, spec) in routers.iter().enumerate() {
        let per_run: Vec<Figures> = (0..cli.runs)
            .map(|run| {
                let s: Vec<Sample> = all_samples
                    .iter()
                    .filter(|s| s.run == run && s.router == r)
                    .cloned()
                    .collect();
                figures(&s)
            })
            .collect();
        let m = |f: &dyn Fn(&Figures) -> f64| {
            Summary::of(&per_run.iter().map(f).collect::<Vec<_>>()).p50
        };
        let spread = |f: &dyn Fn(&Figures) -> f64| {
            Summary::of(&per_run.iter().map(f).collect::<Vec<_>>()).spread()
        };
        println!(
            "| {} | {} | {:.2} / {:.2} / {:.2} | {:.1} (spread {:.1}) | {:.1} | {:.1} % |",
            spec.mode,
            per_run.iter().map(|f| f.samples).sum::<usize>(),
            m(&|f| f.mean_abs_pp[0]),
            m(&|f| f.mean_abs_pp[1]),
            m(&|f| f.mean_abs_pp[2]),
            m(&|f| f.max_first_pp),
            spread(&|f| f.max_first_pp),
            m(&|f| f.max_pp),
            100.0 * m(&|f| f.within),
        );
    }

    // CSV of every sample and a plot of the first run.
    std::fs::create_dir_all(&cli.out_dir)
        .with_context(|| format!("creating {}", cli.out_dir.display()))?;
    let mut csv = String::from(
        "run,router_mode,sample_start_ms,first_after_change,requests,flavour,commanded,delivered,within_3_sigma\n",
    );
    for s in &all_samples {
        for (k, f) in FLAVOURS.iter().enumerate() {
            csv.push_str(&format!(
                "{},{},{},{},{},{f},{:.4},{:.4},{}\n",
                s.run,
                routers[s.router].mode,
                s.start_ms,
                s.first_after_change,
                s.n,
                s.commanded[k],
                s.delivered[k],
                s.within_noise(k)
            ));
        }
    }
    let csv_path = cli.out_dir.join("weight-fidelity.csv");
    std::fs::write(&csv_path, csv).with_context(|| format!("writing {}", csv_path.display()))?;
    let (started, changes, end) = &timelines[0];
    let charts: Vec<Chart> = routers
        .iter()
        .enumerate()
        .map(|(r, spec)| {
            let mut series = Vec::new();
            for (k, f) in FLAVOURS.iter().enumerate() {
                let mut steps: Vec<(f64, f64)> = changes
                    .iter()
                    .map(|c| ((c.at_ms - started) as f64 / 1000.0, f64::from(c.weights[k])))
                    .collect();
                if let Some(last) = changes.last() {
                    steps.push(((end - started) as f64 / 1000.0, f64::from(last.weights[k])));
                }
                series.push(Series {
                    label: format!("{f}: line commanded, dots delivered per 5 s"),
                    colour: k,
                    style: Style::Step,
                    points: steps,
                });
                series.push(Series {
                    label: String::new(),
                    colour: k,
                    style: Style::Points,
                    points: all_samples
                        .iter()
                        .filter(|s| s.run == 0 && s.router == r)
                        .map(|s| {
                            (
                                (s.start_ms + SAMPLE_MS / 2 - started) as f64 / 1000.0,
                                s.delivered[k] * 100.0,
                            )
                        })
                        .collect(),
                });
            }
            Chart {
                title: format!(
                    "Router mode {}: commanded weight vs delivered share",
                    spec.mode
                ),
                x_label: "seconds".into(),
                y_label: "% of requests".into(),
                log_x: false,
                series,
            }
        })
        .collect();
    let png = cli.out_dir.join("weight-fidelity.png");
    draw(&png, 1100, &charts)?;
    println!("\nSamples: {}; plot: {}", csv_path.display(), png.display());
    drop(extra);
    Ok(())
}
