//! Failover: how long the schedules of a processor that goes away wait for a decision.
//!
//! Two processors share the schedule partitions as members of one consumer group
//! (`--ownership group`). Each round stops the member that owns a probe schedule's
//! partition and, at the same instant, publishes a new config version of that schedule;
//! the figure is the time from the stop to the new owner's decision for it (the decision
//! record's timestamp, written by the new owner). Two ways to go away:
//!
//! * **SIGTERM on the local broker**: the member writes out, snapshots its partitions and
//!   leaves the group; the other takes them at once (graceful handover).
//! * **SIGKILL on librdkafka's mock cluster** (started in this process; the local broker
//!   never evicts a dead member): the partitions move once the session times out.
//!
//! Each with and without a standby (`--standby-replicas 1`: the survivor has kept the
//! partitions it takes warm). Also reported: the group's part (stop → the new owner's
//! claim of the partition, written as soon as the group assigns it) and the restore part
//! of the takeover (the survivor's `carbonflow_restore_duration_seconds` over the
//! partitions it took). After
//! each round the stopped member is started again and the group rebalances before the
//! next round.
//!
//! Run (after `cargo build --release`, with the local broker up):
//! `target/release/failover [--schedules 1000,10000] [--rounds 3]`
//! Writes `benchmarks/results/failover.png`.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use carbonflow_benchmarks::history::{publish_config, publish_configs, schedule_id};
use carbonflow_benchmarks::http::{client, get_json, get_text};
use carbonflow_benchmarks::now_ms;
use carbonflow_benchmarks::pipeline::{spawn_processor, wait_ready};
use carbonflow_benchmarks::plot::{Chart, Series, Style, draw};
use carbonflow_benchmarks::stats::Summary;
use carbonflow_schemas::bus::admin::ensure_topics;
use carbonflow_schemas::bus::{KafkaArgs, RangeReader, RecordProducer, Topic};
use carbonflow_schemas::codec::record_name;
use carbonflow_schemas::records::{OwnershipClaim, ScheduleDecision};
use carbonflow_schemas::topics::partition_of;
use carbonflow_schemas::{AvroRecord, decode};
use clap::Parser;
use rdkafka::mocking::MockCluster;

#[derive(Parser)]
#[command(
    name = "failover",
    about = "Time from a processor's stop (SIGTERM, local broker) or crash (SIGKILL, mock cluster) to the new owner's first decision"
)]
struct Cli {
    /// The local broker, for the graceful handovers.
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Schedule counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    schedules: Vec<usize>,
    /// Schedule partitions.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Stops per setting (the figure is their median).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Session timeout of the members on the mock cluster, milliseconds (a crash
    /// takeover waits for it).
    #[arg(long, default_value_t = 6000)]
    session_timeout_ms: u64,
    /// Directory with the release binaries.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// Where the PNG goes.
    #[arg(long, default_value = "benchmarks/results")]
    out_dir: PathBuf,
}

/// How the member goes away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Departure {
    /// SIGTERM, local broker.
    Graceful,
    /// SIGKILL, mock cluster.
    Crash,
}

impl Departure {
    fn label(self) -> &'static str {
        match self {
            Self::Graceful => "SIGTERM, local broker",
            Self::Crash => "SIGKILL, mock cluster",
        }
    }
}

/// One group member: a `processor run --ownership group` child, SIGKILLed on drop.
struct Member {
    child: Child,
    admin: String,
}

impl Member {
    fn start(args: &KafkaArgs, bin_dir: &Path, setting: &Setting) -> anyhow::Result<Self> {
        let timeout = setting.session_timeout_ms.to_string();
        let flags = [
            "--ownership",
            "group",
            "--session-timeout-ms",
            &timeout,
            "--standby-replicas",
            if setting.standby { "1" } else { "0" },
        ];
        let (child, admin) = spawn_processor(args, bin_dir, &flags)?;
        Ok(Self { child, admin })
    }

    /// The partitions it owns and the number of schedules it shows, if it answers.
    async fn holdings(&self) -> Option<(Vec<i32>, usize)> {
        let doc = get_json(&format!("{}/status.json", self.admin)).await?;
        let partitions = doc["partitions"]
            .as_array()?
            .iter()
            .filter_map(|p| i32::try_from(p.as_i64()?).ok())
            .collect();
        Some((partitions, doc["schedules"].as_array()?.len()))
    }

    /// The sum of the samples of the metrics starting with `prefix`.
    async fn metric(&self, prefix: &str) -> f64 {
        let text = get_text(&client(), &format!("{}/metrics", self.admin)).await;
        carbonflow_benchmarks::prom::sum(&text, prefix)
    }

    /// Sum and count of its restore durations so far.
    async fn restores(&self) -> (f64, f64) {
        (
            self.metric("carbonflow_restore_duration_seconds_sum").await,
            self.metric("carbonflow_restore_duration_seconds_count")
                .await,
        )
    }

    fn signal(&mut self, departure: Departure) {
        match departure {
            Departure::Graceful => {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &self.child.id().to_string()])
                    .status();
            }
            Departure::Crash => {
                let _ = self.child.kill();
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one setting runs.
struct Setting {
    departure: Departure,
    schedules: usize,
    standby: bool,
    session_timeout_ms: u64,
}

/// What one round measured, milliseconds.
struct Round {
    /// Stop → the new owner's first decision for the probe schedule.
    to_decision: f64,
    /// Stop → the new owner's claim of the probe's partition: the group's part (the
    /// leave or the eviction, and the rebalance).
    to_claim: f64,
    /// Restore time per partition taken.
    restore: f64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut rows: Vec<(Setting, Summary, Summary, Summary)> = Vec::new();
    for departure in [Departure::Graceful, Departure::Crash] {
        for (&n, standby) in cli.schedules.iter().flat_map(|n| [(n, false), (n, true)]) {
            let setting = Setting {
                departure,
                schedules: n,
                standby,
                session_timeout_ms: match departure {
                    Departure::Graceful => 10_000,
                    Departure::Crash => cli.session_timeout_ms,
                },
            };
            // The mock cluster lives as long as the setting it serves.
            let mock = match departure {
                Departure::Graceful => None,
                Departure::Crash => Some(MockCluster::new(1).context("starting the mock cluster")?),
            };
            let mut args = match &mock {
                Some(m) => KafkaArgs::for_brokers(m.bootstrap_servers()),
                None => cli.kafka.clone(),
            };
            args.topic_prefix = format!("bench.failover.{}.{n}.", now_ms());
            args.schedule_partitions = cli.partitions;
            let layout = args.layout();
            match &mock {
                Some(m) => {
                    for t in Topic::ALL {
                        m.create_topic(&layout.name(t), layout.partitions(t), 1)
                            .with_context(|| format!("creating {}", layout.name(t)))?;
                    }
                }
                None => {
                    ensure_topics(&args, &layout, 1)
                        .await
                        .context("creating topics")?;
                }
            }
            let rounds = run_setting(&cli, &args, &setting).await?;
            let figure =
                |f: fn(&Round) -> f64| Summary::of(&rounds.iter().map(f).collect::<Vec<_>>());
            rows.push((
                setting,
                figure(|r| r.to_decision),
                figure(|r| r.to_claim),
                figure(|r| r.restore),
            ));
            drop(mock);
        }
    }

    println!(
        "\n## Failover: stop of a group member → the new owner's first decision ({} partitions, {} rounds per setting, session timeout on the mock cluster {} ms)\n",
        cli.partitions, cli.rounds, cli.session_timeout_ms
    );
    println!(
        "| Departure | Schedules | Standby | Stop → first decision, median | max | of which stop → claim (the group's part), median | Restore per partition taken, median | max |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (s, t, c, r) in &rows {
        println!(
            "| {} | {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
            s.departure.label(),
            s.schedules,
            if s.standby { "yes" } else { "no" },
            t.p50,
            t.max,
            c.p50,
            r.p50,
            r.max
        );
    }
    std::fs::create_dir_all(&cli.out_dir)
        .with_context(|| format!("creating {}", cli.out_dir.display()))?;
    let png = cli.out_dir.join("failover.png");
    let series = |d: Departure, standby: bool, colour: usize| Series {
        label: format!(
            "{}, {}",
            d.label(),
            if standby { "standby" } else { "no standby" }
        ),
        colour,
        style: Style::Line,
        points: rows
            .iter()
            .filter(|r| r.0.departure == d && r.0.standby == standby)
            .map(|r| (r.0.schedules as f64, r.1.p50))
            .collect(),
    };
    draw(
        &png,
        900,
        &[Chart {
            title: "Stop of a group member → the new owner's first decision (median)".into(),
            x_label: "schedules (log scale)".into(),
            y_label: "ms".into(),
            log_x: true,
            series: vec![
                series(Departure::Graceful, false, 0),
                series(Departure::Graceful, true, 1),
                series(Departure::Crash, false, 2),
                series(Departure::Crash, true, 3),
            ],
        }],
    )?;
    println!("\nPlot: {}", png.display());
    Ok(())
}

/// Rounds of one setting: its schedules decided by two members, then stops.
async fn run_setting(cli: &Cli, args: &KafkaArgs, setting: &Setting) -> anyhow::Result<Vec<Round>> {
    let (departure, n) = (setting.departure, setting.schedules);
    let producer = RecordProducer::new(args, "failover-bench")?;
    publish_configs(args, &producer, n).await?;
    let mut members = [
        Member::start(args, &cli.bin_dir, setting)?,
        Member::start(args, &cli.bin_dir, setting)?,
    ];
    for m in &members {
        wait_ready(&m.admin, Duration::from_secs(300)).await?;
    }
    let mut rounds = Vec::new();
    let mut version = 1;
    for round in 0..cli.rounds {
        settled(&members, setting, cli.partitions).await?;
        // The member to stop, and a schedule of one of its partitions.
        let holdings = [
            members[0].holdings().await.context("member 0")?,
            members[1].holdings().await.context("member 1")?,
        ];
        let victim = round % 2;
        let survivor = 1 - victim;
        let p = holdings[victim].0[0];
        let probe = (0..n)
            .map(schedule_id)
            .find(|s| partition_of(s.as_bytes(), cli.partitions) == Some(p))
            .context("no schedule in the probe partition")?;
        let (decisions, journal) = (
            args.layout().name(Topic::Decisions),
            args.layout().name(Topic::Journal),
        );
        let reader = RangeReader::new(args, "failover-bench")?;
        let (_, from) = reader.watermarks(&decisions, p)?;
        let (_, journal_from) = reader.watermarks(&journal, p)?;
        let restores_before = members[survivor].restores().await;
        version += 1;
        let stopped_ms = now_ms();
        members[victim].signal(departure);
        publish_config(args, &producer, &probe, version).await?;
        let decided_ms = first_written(&reader, &decisions, p, from, |bytes| {
            decode::<ScheduleDecision>(bytes)
                .is_ok_and(|d| d.schedule == probe && d.provenance.config_version == version)
        })
        .await?;
        let claimed_ms = first_written(&reader, &journal, p, journal_from, |bytes| {
            record_name(bytes).is_ok_and(|n| n == OwnershipClaim::FULL_NAME)
        })
        .await?;
        let restores_after = members[survivor].restores().await;
        let taken = (restores_after.1 - restores_before.1).max(1.0);
        let r = Round {
            to_decision: (decided_ms - stopped_ms) as f64,
            to_claim: (claimed_ms - stopped_ms) as f64,
            restore: (restores_after.0 - restores_before.0) * 1000.0 / taken,
        };
        eprintln!(
            "{} {n} schedules, standby {}, round {round}: partition {p} claimed {:.0} ms and decided {:.0} ms after the stop; restore {:.0} ms per partition ({taken} taken)",
            departure.label(),
            setting.standby,
            r.to_claim,
            r.to_decision,
            r.restore
        );
        rounds.push(r);
        // Back to two members for the next round.
        let _ = members[victim].child.wait();
        members[victim] = Member::start(args, &cli.bin_dir, setting)?;
        wait_ready(&members[victim].admin, Duration::from_secs(300)).await?;
    }
    Ok(rounds)
}

/// Wait until the two members split the partitions, together show all the schedules, and
/// (with standbys) each keeps the other's partitions warm.
async fn settled(members: &[Member; 2], setting: &Setting, partitions: i32) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let (Some(a), Some(b)) = (members[0].holdings().await, members[1].holdings().await)
            && !a.0.is_empty()
            && !b.0.is_empty()
            && a.0.len() + b.0.len() == partitions as usize
            && a.1 + b.1 == setting.schedules
        {
            let warm = [
                members[0].metric("carbonflow_standby_partitions ").await,
                members[1].metric("carbonflow_standby_partitions ").await,
            ];
            if !setting.standby || (warm[0] == b.0.len() as f64 && warm[1] == a.0.len() as f64) {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("the two members did not settle within 10 minutes");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The timestamp (epoch ms) of the first record of `topic` partition `p` at or after
/// offset `from` whose value is `wanted`, as soon as it is written.
async fn first_written(
    reader: &RangeReader,
    topic: &str,
    p: i32,
    mut from: i64,
    wanted: impl Fn(&[u8]) -> bool,
) -> anyhow::Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (_, end) = reader.watermarks(topic, p)?;
        let mut found = None;
        reader.read(topic, p, from, end, |r| {
            if found.is_none() && r.payload.is_some_and(&wanted) {
                found = r.timestamp_ms;
            }
            Ok::<(), carbonflow_schemas::bus::BusError>(())
        })?;
        if let Some(ms) = found {
            return Ok(ms);
        }
        from = end;
        if Instant::now() > deadline {
            bail!("no such record on {topic}/{p} within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
