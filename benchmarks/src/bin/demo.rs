//! `demo`: the quickstart's steady load and live table. Sends requests through the
//! routers at a fixed rate and prints, every few seconds: carbon intensity, commanded
//! weights, delivered shares, credit balance, decision propagation latency, and the CO2
//! saved against always-full-precision.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use carbonflow_benchmarks::prom;
use carbonflow_schemas::vocabulary::ScheduleId;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "demo",
    about = "Drive steady load through carbonflow routers and print a live table"
)]
struct Cli {
    /// Router proxy base URL (repeatable; requests are spread over them).
    #[arg(long = "router", required = true)]
    routers: Vec<String>,
    /// Router admin base URL (repeatable), for propagation latency.
    #[arg(long = "router-admin")]
    router_admins: Vec<String>,
    /// Processor admin base URL (repeatable: with several instances, the one that owns
    /// the schedule answers).
    #[arg(long = "processor", default_value = "http://127.0.0.1:9400")]
    processors: Vec<String>,
    /// Schedule, namespace/name.
    #[arg(long, default_value = "demo/carbonstat")]
    schedule: String,
    /// Requests per second.
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// Request path and query.
    #[arg(long, default_value = "/stats?n=20000")]
    path: String,
    /// Table interval, e.g. 5s.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    every: Duration,
    /// Energy of one full-precision request, Wh (an assumption for the CO2 estimate).
    #[arg(long, default_value_t = 0.1)]
    energy_per_request_wh: f64,
}

#[derive(Default)]
struct Tally {
    by_flavour: BTreeMap<String, u64>,
    errors: u64,
}

use carbonflow_benchmarks::http::{HttpClient, get, get_json, get_text as text};

fn shares(counts: &BTreeMap<String, u64>, names: &[String]) -> String {
    let total: u64 = counts.values().sum();
    names
        .iter()
        .map(|n| {
            let c = counts.get(n).copied().unwrap_or(0);
            (100 * c + total / 2)
                .checked_div(total)
                .map_or("  -".to_string(), |pct| format!("{pct:>3}"))
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let id: ScheduleId = cli.schedule.parse()?;
    anyhow::ensure!(cli.rate > 0.0, "--rate must be positive");
    let client: HttpClient = carbonflow_benchmarks::http::client();
    let tally = Arc::new(Mutex::new(Tally::default()));

    // Steady load: one request every 1/rate seconds, spread over the routers.
    {
        let (client, tally, routers, path) = (
            client.clone(),
            tally.clone(),
            cli.routers.clone(),
            cli.path.clone(),
        );
        let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / cli.rate));
        tokio::spawn(async move {
            for i in 0.. {
                tick.tick().await;
                let url = format!("{}{}", routers[i % routers.len()], path);
                let (client, tally) = (client.clone(), tally.clone());
                tokio::spawn(async move {
                    let result = get(&client, &url).await;
                    let mut t = tally.lock().unwrap_or_else(|e| e.into_inner());
                    match result {
                        Some((200, Some(f), _)) => *t.by_flavour.entry(f).or_default() += 1,
                        _ => t.errors += 1,
                    }
                });
            }
        });
    }

    let mut saved_g = 0.0_f64;
    let mut every = tokio::time::interval(cli.every);
    every.tick().await;
    for line in 0.. {
        every.tick().await;
        let window = std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()));
        // The schedule's owner, which may change as instances come and go.
        let mut owner = None;
        for p in &cli.processors {
            if let Some(d) = get_json(&format!("{p}/schedule/{}", cli.schedule)).await {
                owner = Some((p.as_str(), d));
                break;
            }
        }
        let processor = owner.as_ref().map_or(cli.processors[0].as_str(), |o| o.0);
        let decision = owner.as_ref().map(|o| o.1.clone());
        let flavours: Vec<(String, i64, f64)> = decision
            .as_ref()
            .and_then(|d| d["flavours"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().unwrap_or("?").to_string(),
                    f["weight"].as_i64().unwrap_or(0),
                    f["carbonIntensity"].as_f64().unwrap_or(1.0),
                )
            })
            .collect();
        let names: Vec<String> = flavours.iter().map(|f| f.0.clone()).collect();
        let metrics = text(&client, &format!("{processor}/metrics")).await;
        let (ns, name) = (id.namespace(), id.name());
        let intensity = prom::value(
            &metrics,
            &format!(
                "carbonflow_forecast_intensity{{namespace=\"{ns}\",schedule=\"{name}\",horizon=\"now\"}}"
            ),
        );
        let (mut sum, mut count) = (0.0, 0.0);
        for admin in &cli.router_admins {
            let m = text(&client, &format!("{admin}/metrics")).await;
            sum += prom::value(&m, "carbonflow_router_decision_propagation_seconds_sum")
                .unwrap_or(0.0);
            count += prom::value(&m, "carbonflow_router_decision_propagation_seconds_count")
                .unwrap_or(0.0);
        }
        // CO2 saved this window: each request served by flavour f used (1 − energy_f) less
        // energy than a full-precision one.
        let g = intensity.unwrap_or(0.0);
        for (name, n) in &window.by_flavour {
            let energy = flavours.iter().find(|f| &f.0 == name).map_or(1.0, |f| f.2);
            saved_g += *n as f64 * (1.0 - energy) * cli.energy_per_request_wh / 1000.0 * g;
        }
        if line % 15 == 0 {
            println!(
                "\n{:<9} {:>8} {:>7} {:<16} {:<16} {:>8} {:>9} {:>10} {:>6}",
                "time",
                "gCO2/kWh",
                "version",
                "commanded %",
                "delivered %",
                "credit",
                "prop ms",
                "saved g",
                "errors"
            );
            println!("(per flavour: {})", names.join(" / "));
        }
        let commanded = flavours
            .iter()
            .map(|f| format!("{:>3}", f.1))
            .collect::<Vec<_>>()
            .join("/");
        println!(
            "{:<9} {:>8} {:>7} {:<16} {:<16} {:>8} {:>9} {:>10} {:>6}",
            humantime_now(),
            intensity.map_or("-".into(), |g| format!("{g:.0}")),
            decision
                .as_ref()
                .and_then(|d| d["version"].as_i64())
                .map_or("-".into(), |v| v.to_string()),
            commanded,
            shares(&window.by_flavour, &names),
            decision
                .as_ref()
                .and_then(|d| d["credits"]["balance"].as_f64())
                .map_or("-".into(), |b| format!("{b:+.3}")),
            if count > 0.0 {
                format!("{:.1}", 1000.0 * sum / count)
            } else {
                "-".into()
            },
            format!("{saved_g:.2}"),
            window.errors,
        );
    }
    Ok(())
}

fn humantime_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}
