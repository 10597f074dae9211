//! The pipeline a broker-backed benchmark runs: one processor and some routers (release
//! binaries), a schedule config published to its own topics, and the wait for every router
//! to hold the schedule's first decision.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use carbonflow_schemas::bus::{KafkaArgs, RecordProducer, Topic};
use carbonflow_schemas::records::{ConfigCommand, ScheduleConfig};

use crate::http::get_json;
use crate::procs::{Children, free_port};

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
    /// Start one processor and `routers` (serving `schedule` by default) on `args`' topics.
    pub fn start(
        args: &KafkaArgs,
        bin_dir: &Path,
        schedule: &str,
        routers: &[RouterSpec],
    ) -> anyhow::Result<Self> {
        let mut procs = Children::default();
        let common = |c: &mut Command| {
            c.args(args.to_flags())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
        };
        let padmin = free_port()?;
        let mut p = Command::new(bin_dir.join("processor"));
        p.args(["run", "--admin-listen", &format!("127.0.0.1:{padmin}")]);
        common(&mut p);
        procs.0.push(
            p.spawn()
                .context("starting the processor (build with cargo build --release)")?,
        );
        let mut started = vec![];
        for spec in routers {
            let (port, admin) = (free_port()?, free_port()?);
            let mut r = Command::new(bin_dir.join("router"));
            r.args(["--listen", &format!("127.0.0.1:{port}")])
                .args(["--admin-listen", &format!("127.0.0.1:{admin}")])
                .args(["--router-id", &spec.id, "--mode", spec.mode])
                .args(["--schedule", schedule]);
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
            processor_admin: format!("http://127.0.0.1:{padmin}"),
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
        let bytes = ConfigCommand::Config(Box::new(config)).encode()?;
        producer
            .send_bytes(
                &args.layout().name(Topic::Config),
                schedule.as_bytes(),
                None,
                &bytes,
                None,
            )
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
