//! Router against nginx: the reverse proxy users would deploy instead, on the same backend,
//! driven by the same generators, interleaved A/B in one run.
//!
//! One trivial backend (carbonstat, one process listening on one port per flavour), then:
//! - nginx (Debian's `nginx-light`) as a weighted reverse proxy: an `upstream` of the
//!   flavour ports with the decision's weights and upstream keepalive, `worker_processes`
//!   = the router's worker threads; the config is generated here;
//! - a router (smooth mode) whose decision splits traffic over the same ports with the
//!   same weights.
//!
//! 1. Saturation: `wrk` (closed loop, `--connections`) for `--seconds`, nginx and router
//!    alternating (the order flips every round): req/s, p50/p99/p99.9, the CPU seconds
//!    each proxy's processes spent per 100,000 requests (from `/proc`), and the share of
//!    its workers' CPU the busiest worker spent (nginx's worker processes, the router's
//!    `proxy-<n>` threads: 50 % for two workers sharing the load evenly).
//! 2. Latency at half (and a quarter) of the slower proxy's saturation: the project's
//!    open-loop client (one request every 1/rate s), alternating: p50/p99/p99.9 and CPU
//!    per 100k.
//!
//! Medians over `--rounds`; ratios are router / nginx. Needs `wrk` and `nginx`
//! (`bash benchmarks/setup.sh` installs both from Debian when missing), the local broker
//! (`deploy/local/broker.sh start`) and `cargo build --release`.
//! Run: `target/release/router_vs_nginx [--seconds 8] [--connections 32] [--rounds 3]`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use carbonflow_benchmarks::load::at_rate;
use carbonflow_benchmarks::now_ms;
use carbonflow_benchmarks::pipeline::publish_decision;
use carbonflow_benchmarks::stats::Summary;
use carbonflow_schemas::bus::KafkaArgs;
use carbonflow_schemas::bus::admin::ensure_topics;
use carbonflow_schemas::testing::{Children, free_port};
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "router_vs_nginx",
    about = "Throughput, latency and CPU per request of the router and of nginx in front of the same backend"
)]
struct Cli {
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Seconds per measurement.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// wrk connections (closed loop).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// wrk threads.
    #[arg(long, default_value_t = 2)]
    wrk_threads: usize,
    /// Worker threads of the router = nginx worker processes.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// nginx / router alternations.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Flavour weights, percent, comma-separated (one backend port each).
    #[arg(long, value_delimiter = ',', default_value = "50,30,20")]
    weights: Vec<u32>,
    /// Open-loop rates for the latency rounds, as fractions of the slower proxy's
    /// saturation, comma-separated (the generator shares the machine's cores with both
    /// proxies and the backend: at high rates it measures itself too).
    #[arg(long, value_delimiter = ',', default_value = "0.5,0.25")]
    latency_at: Vec<f64>,
    /// Directory with the release binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// nginx binary.
    #[arg(long, default_value = "/usr/sbin/nginx")]
    nginx: PathBuf,
    /// Have nginx set the forwarding headers the router always sets (X-Forwarded-For,
    /// -Proto and -Host), so that both proxies do the same work per request. Off: the
    /// minimal reverse-proxy config.
    #[arg(long)]
    nginx_forwarded_headers: bool,
}

/// The two proxies under test.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Proxy {
    Nginx,
    Router,
}

impl Proxy {
    fn name(self) -> &'static str {
        match self {
            Proxy::Nginx => "nginx",
            Proxy::Router => "router",
        }
    }
}

/// One measurement of one proxy.
#[derive(Debug, Clone, Copy)]
struct Round {
    rate: f64,
    p50: f64,
    p99: f64,
    p999: f64,
    /// CPU seconds of the proxy's processes per 100,000 requests.
    cpu_per_100k: f64,
    /// Share of its workers' CPU that the busiest worker spent (1 / workers when they
    /// share the load evenly).
    busiest_worker: f64,
}

/// wrk's own summary, printed by the Lua `done` hook below.
const WRK_SCRIPT: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("carbonflow-wrk requests=%d duration_us=%d errors=%d p50=%.3f p99=%.3f p999=%.3f\n",
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
"#;

/// CPU ticks per second of `/proc/<pid>/stat`.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// User + system CPU seconds in a `/proc/.../stat` file (of a process or of a thread).
fn stat_cpu_seconds(stat: &str, ticks: f64) -> f64 {
    std::fs::read_to_string(stat)
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) close with ')'.
            let rest = s.rsplit_once(')')?.1.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
        })
        .unwrap_or(0.0)
        / ticks
}

/// The child processes of `pid` (nginx's workers).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect()
}

/// User + system CPU seconds of `pid` and its children (nginx's workers).
fn cpu_seconds(pid: u32, ticks: f64) -> f64 {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"), ticks)
        + children(pid)
            .into_iter()
            .map(|c| cpu_seconds(c, ticks))
            .sum::<f64>()
}

/// CPU seconds of each worker of proxy `pid`: nginx's worker processes, or the router's
/// worker threads (named `proxy-<n>`), in a stable order.
fn worker_cpu_seconds(pid: u32, ticks: f64) -> Vec<f64> {
    let workers = children(pid);
    if !workers.is_empty() {
        return workers.into_iter().map(|c| cpu_seconds(c, ticks)).collect();
    }
    let mut threads: Vec<(String, f64)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|task| {
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
            let name = name.trim();
            name.strip_prefix("proxy-")?.parse::<usize>().ok()?;
            let stat = task.path().join("stat");
            Some((name.to_string(), stat_cpu_seconds(stat.to_str()?, ticks)))
        })
        .collect();
    threads.sort_by(|a, b| a.0.cmp(&b.0));
    threads.into_iter().map(|(_, cpu)| cpu).collect()
}

/// Run wrk against `url`; its rate and latencies.
fn wrk(cli: &Cli, script: &Path, url: &str) -> anyhow::Result<(f64, f64, f64, f64, f64)> {
    let out = Command::new("wrk")
        .args(["-t", &cli.wrk_threads.to_string()])
        .args(["-c", &cli.connections.to_string()])
        .args(["-d", &format!("{}s", cli.seconds)])
        .arg("-s")
        .arg(script)
        .arg(url)
        .output()
        .context("running wrk (bash benchmarks/setup.sh installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("carbonflow-wrk "))
        .with_context(|| format!("wrk printed no summary: {text}"))?;
    let field = |name: &str| -> anyhow::Result<f64> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {name} in wrk's summary {line:?}"))
    };
    let (requests, duration, errors) = (
        field("requests")?,
        field("duration_us")? / 1e6,
        field("errors")?,
    );
    if errors > requests * 0.001 {
        bail!("wrk saw {errors} errors in {requests} requests against {url}");
    }
    Ok((
        requests,
        requests / duration,
        field("p50")?,
        field("p99")?,
        field("p999")?,
    ))
}

/// nginx's config: the backend ports as one weighted upstream with keepalive, `workers`
/// worker processes, and with `forwarded_headers` the X-Forwarded-* headers the router sets.
fn nginx_config(
    dir: &Path,
    listen: u16,
    ports: &[u16],
    weights: &[u32],
    workers: usize,
    forwarded_headers: bool,
) -> String {
    let servers: String = ports
        .iter()
        .zip(weights)
        .map(|(p, w)| format!("    server 127.0.0.1:{p} weight={w};\n"))
        .collect();
    let forwarded = if forwarded_headers {
        "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n\
      proxy_set_header X-Forwarded-Proto $scheme;\n\
      proxy_set_header X-Forwarded-Host $host;\n"
    } else {
        ""
    };
    let d = dir.display();
    format!(
        "worker_processes {workers};\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
events {{ worker_connections 4096; }}\n\
http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
  upstream flavours {{\n{servers}    keepalive 64;\n  }}\n\
  server {{\n    listen 127.0.0.1:{listen};\n    location / {{\n\
      proxy_pass http://flavours/precision-100/;\n      proxy_http_version 1.1;\n\
      proxy_set_header Connection \"\";\n{forwarded}    }}\n  }}\n}}\n"
    )
}

/// nginx's master process, stopped on drop with SIGTERM, which stops its workers too: a
/// SIGKILLed master (what `Children` does) leaves them running after the benchmark.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command, what: &str) -> anyhow::Result<Child> {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {what}"))
}

/// Wait until `url` answers 200.
async fn answering(url: &str) -> anyhow::Result<()> {
    let c = carbonflow_benchmarks::http::client();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !matches!(
        carbonflow_benchmarks::http::get(&c, url).await,
        Some((200, _, _))
    ) {
        if Instant::now() > deadline {
            bail!("{url} never answered 200");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    cli.kafka.topic_prefix = format!("bench.nginx.{}.", now_ms());
    for (tool, ok) in [
        ("wrk", Command::new("wrk").arg("--version").output().is_ok()),
        ("nginx", cli.nginx.exists()),
    ] {
        if !ok {
            bail!(
                "{tool} is not installed: run `bash benchmarks/setup.sh` (Debian's wrk and nginx-light)"
            );
        }
    }
    let args = cli.kafka.clone();
    ensure_topics(&args, &args.layout(), 1).await?;
    let dir =
        std::env::temp_dir().join(format!("carbonflow-router-vs-nginx-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let script = dir.join("summary.lua");
    std::fs::write(&script, WRK_SCRIPT)?;

    let ports: Vec<u16> = cli.weights.iter().map(|_| free_port()).collect();
    let (nginx_port, router_port, admin_port) = (free_port(), free_port(), free_port());
    let listen: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut procs = Children::default();
    procs.0.push(spawn(
        Command::new(cli.bin_dir.join("carbonstat")).args([
            "--listen",
            &listen.join(","),
            "--points",
            "1000",
        ]),
        "carbonstat (cargo build --release first)",
    )?);
    std::fs::write(
        dir.join("nginx.conf"),
        nginx_config(
            &dir,
            nginx_port,
            &ports,
            &cli.weights,
            cli.workers,
            cli.nginx_forwarded_headers,
        ),
    )?;
    let nginx = spawn(
        Command::new(&cli.nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log")),
        "nginx",
    )?;
    let nginx_pid = nginx.id();
    let _nginx = Nginx(nginx);
    let router = spawn(
        Command::new(cli.bin_dir.join("router"))
            .args(["--worker-threads", &cli.workers.to_string()])
            .args(args.to_flags())
            .envs(args.to_secret_env())
            .args(["--listen", &format!("127.0.0.1:{router_port}")])
            .args(["--admin-listen", &format!("127.0.0.1:{admin_port}")])
            .args([
                "--router-id",
                "vs-nginx",
                "--schedule",
                "bench/nginx",
                "--mode",
                "smooth",
            ]),
        "the router",
    )?;
    let router_pid = router.id();
    procs.0.push(router);

    let mut d = carbonflow_schemas::testing::samples::schedule_decision();
    d.schedule = "bench/nginx".into();
    d.valid_until_ms = now_ms() + 3_600_000;
    d.fallbacks = vec![];
    let template = d.flavours[0].clone();
    d.flavours = ports
        .iter()
        .zip(&cli.weights)
        .enumerate()
        .map(
            |(i, (port, w))| carbonflow_schemas::records::DecisionFlavour {
                name: format!("flavour-{i}"),
                weight: f64::from(*w) / 100.0,
                weight_percent: *w as i32,
                upstream_url: format!("http://127.0.0.1:{port}/precision-100"),
                ..template.clone()
            },
        )
        .collect();
    publish_decision(&args, &format!("http://127.0.0.1:{admin_port}"), &d).await?;
    let url = |p: Proxy| match p {
        Proxy::Nginx => format!("http://127.0.0.1:{nginx_port}/stats"),
        Proxy::Router => format!("http://127.0.0.1:{router_port}/stats"),
    };
    let pid = |p: Proxy| match p {
        Proxy::Nginx => nginx_pid,
        Proxy::Router => router_pid,
    };
    answering(&url(Proxy::Nginx)).await?;
    answering(&url(Proxy::Router)).await?;
    let ticks = clock_ticks();
    println!(
        "router vs nginx: {} rounds × {} s, wrk {} threads {} connections; {} router worker threads = {} nginx worker processes; weights {:?} over {} backend ports (carbonstat, 1000 points); nginx {} X-Forwarded-* headers",
        cli.rounds,
        cli.seconds,
        cli.wrk_threads,
        cli.connections,
        cli.workers,
        cli.workers,
        cli.weights,
        ports.len(),
        if cli.nginx_forwarded_headers {
            "sets"
        } else {
            "does not set"
        }
    );

    // 1. Saturation, wrk.
    let saturation = interleaved(cli.rounds, ticks, pid, |p| {
        let (requests, rate, p50, p99, p999) = wrk(&cli, &script, &url(p))?;
        Ok((
            requests,
            Round {
                rate,
                p50,
                p99,
                p999,
                cpu_per_100k: 0.0,
                busiest_worker: f64::NAN,
            },
        ))
    })?;
    report("saturation (wrk, closed loop)", &saturation);

    // 2. Fractions of the slower one's saturation, open loop.
    let median_rate = |p: Proxy| {
        median(
            saturation
                .iter()
                .filter(|(q, _)| *q == p)
                .map(|(_, r)| r.rate),
        )
    };
    let slower = median_rate(Proxy::Nginx).min(median_rate(Proxy::Router));
    let runtime = tokio::runtime::Handle::current();
    for fraction in &cli.latency_at {
        let rate = slower * fraction;
        let rounds = tokio::task::block_in_place(|| {
            interleaved(cli.rounds, ticks, pid, |p| {
                let latencies = runtime.block_on(at_rate(&url(p), rate, cli.seconds));
                let s = Summary::of(&latencies);
                let answered = latencies.len() as f64;
                Ok((
                    answered,
                    Round {
                        rate: answered / cli.seconds as f64,
                        p50: s.p50,
                        p99: s.p99,
                        p999: s.p999,
                        cpu_per_100k: 0.0,
                        busiest_worker: f64::NAN,
                    },
                ))
            })
        })?;
        report(
            &format!(
                "{:.0} % of the slower saturation, {rate:.0} req/s (open loop, this program's client)",
                fraction * 100.0
            ),
            &rounds,
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `rounds` alternations of nginx and the router (the order flips every round), each
/// measured by `measure` (requests done, figures) and charged the CPU its proxy spent.
fn interleaved(
    rounds: usize,
    ticks: f64,
    pid: impl Fn(Proxy) -> u32,
    mut measure: impl FnMut(Proxy) -> anyhow::Result<(f64, Round)>,
) -> anyhow::Result<Vec<(Proxy, Round)>> {
    let mut out = Vec::new();
    for r in 0..rounds {
        let order = if r % 2 == 0 {
            [Proxy::Nginx, Proxy::Router]
        } else {
            [Proxy::Router, Proxy::Nginx]
        };
        for p in order {
            let (before, workers_before) = (
                cpu_seconds(pid(p), ticks),
                worker_cpu_seconds(pid(p), ticks),
            );
            let (requests, mut round) = measure(p)?;
            let cpu = cpu_seconds(pid(p), ticks) - before;
            round.cpu_per_100k = cpu / requests.max(1.0) * 100_000.0;
            let spent: Vec<f64> = worker_cpu_seconds(pid(p), ticks)
                .iter()
                .zip(&workers_before)
                .map(|(after, before)| after - before)
                .collect();
            round.busiest_worker =
                spent.iter().copied().fold(0.0, f64::max) / spent.iter().sum::<f64>();
            out.push((p, round));
        }
    }
    Ok(out)
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Medians per proxy and the router / nginx ratios.
fn report(title: &str, rounds: &[(Proxy, Round)]) {
    println!("\n  {title}: medians of {} rounds", rounds.len() / 2);
    println!(
        "    {:<8} {:>10} {:>9} {:>9} {:>10} {:>16} {:>15}   rounds (req/s)",
        "proxy", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "CPU s / 100k req", "busiest worker"
    );
    let m = |p: Proxy, f: fn(&Round) -> f64| {
        median(rounds.iter().filter(|(q, _)| *q == p).map(|(_, r)| f(r)))
    };
    for p in [Proxy::Nginx, Proxy::Router] {
        let all: Vec<String> = rounds
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, r)| format!("{:.0}", r.rate))
            .collect();
        println!(
            "    {:<8} {:>10.0} {:>9.2} {:>9.2} {:>10.2} {:>16.2} {:>14.0}%   {}",
            p.name(),
            m(p, |r| r.rate),
            m(p, |r| r.p50),
            m(p, |r| r.p99),
            m(p, |r| r.p999),
            m(p, |r| r.cpu_per_100k),
            m(p, |r| r.busiest_worker) * 100.0,
            all.join(" / ")
        );
    }
    let ratio = |f: fn(&Round) -> f64| m(Proxy::Router, f) / m(Proxy::Nginx, f);
    println!(
        "    router / nginx: req/s {:.2}, p50 {:.2}, p99 {:.2}, p99.9 {:.2}, CPU per request {:.2}",
        ratio(|r| r.rate),
        ratio(|r| r.p50),
        ratio(|r| r.p99),
        ratio(|r| r.p999),
        ratio(|r| r.cpu_per_100k)
    );
}
