//! The pipeline a broker-backed benchmark runs: one processor and some routers (release
//! binaries), a schedule config published to its own topics, and the wait for every router
//! to hold the schedule's first decision.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use carbonflow_schemas::bus::{KafkaArgs, RecordProducer, Topic};
use carbonflow_schemas::records::{ConfigCommand, ScheduleConfig};
use carbonflow_schemas::testing::{Children, ProcessorRun, free_port};

use crate::http::get_json;

/// A router to start.
#[derive(Debug, Clone)]
pub struct RouterSpec {
    /// `--router-id`.
    pub id: String,
    /// `--mode`: random or smooth.
    pub mode: &'static str,
}

/// The addresses of a running router.
#[derive(Debug, Clone)]
pub struct RouterEndpoints {
    /// The spec it was started with.
    pub spec: RouterSpec,
    /// Proxy base URL.
    pub proxy: String,
    /// Admin base URL.
    pub admin: String,
}

/// Running processes, killed on drop.
pub struct Pipeline {
    /// The children.
    pub procs: Children,
    /// Processor admin base URL.
    pub processor_admin: String,
    /// The routers.
    pub routers: Vec<RouterEndpoints>,
}

impl Pipeline {
    /// Start one processor and `routers` on `args`' topics, the routers serving
    /// `schedule` (the default for requests without a schedule header), or every schedule
    /// when it is `None`.
    pub fn start(
        args: &KafkaArgs,
        bin_dir: &Path,
        schedule: Option<&str>,
        routers: &[RouterSpec],
    ) -> anyhow::Result<Self> {
        let mut procs = Children::default();
        let common = |c: &mut Command| {
            c.args(args.to_flags())
                .envs(args.to_secret_env())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        };
        let (processor, processor_admin) = spawn_processor(args, bin_dir, &[])?;
        procs.0.push(processor);
        let mut started = vec![];
        for spec in routers {
            let (port, admin) = (free_port(), free_port());
            let mut r = Command::new(bin_dir.join("router"));
            r.args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
                .args(["--router-id", &spec.id, "--mode", spec.mode]);
            match schedule {
                Some(s) => r.args(["--schedule", s]),
                None => r.arg("--all-schedules"),
            };
            common(&mut r);
            procs.0.push(r.spawn().context("starting a router")?);
            started.push(RouterEndpoints {
                spec: spec.clone(),
                proxy: format!("http://127.0.0.1:{port}"),
                admin: format!("http://127.0.0.1:{admin}"),
            });
        }
        Ok(Self {
            procs,
            processor_admin,
            routers: started,
        })
    }

    /// Publish `config` and wait (up to 60 s) until every router holds a decision for it;
    /// returns the version they hold.
    pub async fn configure(
        &self,
        args: &KafkaArgs,
        producer: &RecordProducer,
        config: ScheduleConfig,
    ) -> anyhow::Result<i64> {
        let schedule = config.schedule.clone();
        producer
            .publish_config(&args.layout(), &ConfigCommand::Config(Box::new(config)))
            .await?;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut version = 0;
        for r in &self.routers {
            loop {
                if let Some((v, _)) = held(&r.admin, &schedule).await {
                    version = v;
                    break;
                }
                if Instant::now() > deadline {
                    bail!("router {} never received the first decision", r.admin);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(version)
    }
}

/// Start `processor run` on `args`' topics with `flags` added; returns the child and its
/// admin base URL.
pub fn spawn_processor(
    args: &KafkaArgs,
    bin_dir: &Path,
    flags: &[&str],
) -> anyhow::Result<(std::process::Child, String)> {
    let run = ProcessorRun::new(bin_dir.join("processor"), args).args(flags);
    let log = std::env::temp_dir().join(format!(
        "carbonflow-bench-processor-{}.log",
        run.admin_port()
    ));
    let p = run
        .spawn(&log)
        .context("starting the processor (build with cargo build --release)")?;
    eprintln!("processor log: {}", log.display());
    let admin = p.admin_url();
    Ok((p.child, admin))
}

/// Poll `{admin}/metrics` until the sum of the samples starting with `prefix` reaches
/// `target`. Returns the time from the first value above `from` to the target and the
/// increase over that time, so that start-up and restore are not counted.
pub async fn metric_reaches(
    admin: &str,
    prefix: &str,
    from: f64,
    target: f64,
    limit: Duration,
) -> anyhow::Result<(Duration, f64)> {
    let http = crate::http::client();
    let url = format!("{admin}/metrics");
    let deadline = Instant::now() + limit;
    let mut first: Option<(Instant, f64)> = None;
    loop {
        let v = crate::prom::sum(&crate::http::get_text(&http, &url).await, prefix);
        let now = Instant::now();
        if first.is_none() && v > from {
            first = Some((now, v));
        }
        if v >= target {
            let (t0, v0) = first.unwrap_or((now, from));
            return Ok((now.duration_since(t0), target - v0));
        }
        if now > deadline {
            bail!("{prefix} reached {v} of {target} within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until `{admin}/readyz` answers 200; returns how long that took.
pub async fn wait_ready(admin: &str, limit: Duration) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let url = format!("{admin}/readyz");
    while get_json(&url).await.is_none() {
        if started.elapsed() > limit {
            bail!("{admin} not ready within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(started.elapsed())
}

/// Write decision `d` straight to the decisions topic (no processor) and wait until the
/// router whose admin endpoints are at `admin` holds it.
pub async fn publish_decision(
    args: &KafkaArgs,
    admin: &str,
    d: &carbonflow_schemas::records::ScheduleDecision,
) -> anyhow::Result<()> {
    RecordProducer::new(args, "bench-decision")?
        .send(&args.layout().name(Topic::Decisions), &d.schedule, None, d)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while held(admin, &d.schedule).await.map(|(v, _)| v) != Some(d.version) {
        if Instant::now() > deadline {
            bail!("the router at {admin} never applied the benchmark decision");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Version and apply time (epoch ms) a router holds for `schedule`.
pub async fn held(admin: &str, schedule: &str) -> Option<(i64, i64)> {
    let v = get_json(&format!("{admin}/decisions")).await?;
    let d = v["decisions"]
        .as_array()?
        .iter()
        .find(|d| d["schedule"] == schedule)?
        .clone();
    Some((d["version"].as_i64()?, d["appliedAtMs"].as_i64()?))
}
