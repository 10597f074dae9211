//! Shared fixture for integration tests that need the broker.
//!
//! [`broker`] reaches the broker at `CARBONFLOW_TEST_BROKERS` (default `127.0.0.1:9092`),
//! starting the local one with `deploy/local/broker.sh start` when nothing answers. If it
//! still cannot be reached the test fails: a broker-backed test never skips silently.
//! [`fresh_layout`] gives each test its own topic prefix, so tests run in parallel.
//!
//! It is also the one home of what every test and benchmark harness needs: [`repo_root`],
//! [`free_port`], the HTTP client ([`send`], [`try_http`], [`http`]), [`Children`] and
//! starting the `processor` binary ([`ProcessorRun`], [`processor_command`]).

use std::ffi::OsStr;
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::AvroRecord;
use crate::bus::admin::ensure_topics;
use crate::bus::{KafkaArgs, RangeReader, RecordProducer, Topic, TopicLayout};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Repository root (the workspace directory), for the files tests and checks read from the
/// tree (scripts, scenarios, `deploy/`, `docs/`).
pub fn repo_root() -> PathBuf {
    // This crate sits one level below the root.
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn answers(addr: &str) -> bool {
    addr.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
}

/// Bootstrap address of a running broker; starts the local one if needed, panics if
/// it cannot be reached.
pub fn broker() -> &'static str {
    static BROKER: OnceLock<String> = OnceLock::new();
    BROKER.get_or_init(|| {
        let addr =
            std::env::var("CARBONFLOW_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
        if answers(&addr) {
            return addr;
        }
        let script = repo_root().join("deploy/local/broker.sh");
        let port = addr.rsplit(':').next().unwrap_or("9092").to_string();
        let status = Command::new("bash")
            .arg(&script)
            .arg("start")
            .env("CARBONFLOW_BROKER_PORT", &port)
            .status();
        match status {
            Ok(s) if s.success() && answers(&addr) => addr,
            other => panic!(
                "no Kafka broker answers at {addr} and `{} start` could not start one ({other:?}). \
                 Run `deploy/local/test.sh` (installs and starts the local broker) or set \
                 CARBONFLOW_TEST_BROKERS to a reachable broker.",
                script.display()
            ),
        }
    })
}

/// A topic prefix no other test (or earlier run) uses.
pub fn unique_prefix(test: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "t.{test}.{}.{nanos}.{}.",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Kafka settings for a fresh set of topics (created) named after `test`.
pub async fn fresh_layout(test: &str, schedule_partitions: i32) -> KafkaArgs {
    let mut args = KafkaArgs::for_brokers(broker());
    args.topic_prefix = unique_prefix(test);
    args.schedule_partitions = schedule_partitions;
    let layout: TopicLayout = args.layout();
    ensure_topics(&args, &layout, 1)
        .await
        .unwrap_or_else(|e| panic!("creating test topics with prefix {}: {e}", layout.prefix));
    args
}

/// Write `record` to `topic` with `key`, retried for up to thirty seconds: a broker just
/// started or restarted (the local one especially) may refuse the first writes while it
/// takes the lead of its partitions, for longer than ten seconds when the machine is
/// busy with the other tests.
pub async fn send_retrying<T: AvroRecord>(
    producer: &RecordProducer,
    topic: &str,
    key: &str,
    record: &T,
) {
    for attempt in 1.. {
        match producer.send(topic, key, None, record).await {
            Ok(_) => return,
            Err(e) if attempt < 60 => {
                eprintln!("producing to {topic} (attempt {attempt}): {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("producing to {topic}: {e}"),
        }
    }
}

/// A broker of a test's own (for outage tests that must not disturb the shared one):
/// the local tansu on a free port with its own data directory; stopped on drop.
pub struct PrivateBroker {
    port: u16,
    dir: PathBuf,
}

impl PrivateBroker {
    /// Start a new private broker.
    pub fn start(test: &str) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("{}broker", unique_prefix(test)));
        let b = Self { port, dir };
        b.run("start");
        b
    }

    fn run(&self, action: &str) {
        let script = repo_root().join("deploy/local/broker.sh");
        let status = Command::new("bash")
            .arg(&script)
            .arg(action)
            .env("CARBONFLOW_BROKER_PORT", self.port.to_string())
            .env("CARBONFLOW_BROKER_DIR", &self.dir)
            .status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()),
            "`{} {action}` for a private broker on port {} failed: {status:?}",
            script.display(),
            self.port
        );
    }

    /// Bootstrap address.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Settings for this broker with topics under `prefix` created, `schedule_partitions`
    /// partitions each.
    pub async fn layout(&self, prefix: &str, schedule_partitions: i32) -> KafkaArgs {
        let mut args = KafkaArgs::for_brokers(self.address());
        args.topic_prefix = prefix.into();
        args.schedule_partitions = schedule_partitions;
        ensure_topics(&args, &args.layout(), 1)
            .await
            .unwrap_or_else(|e| panic!("creating topics {prefix}* on the private broker: {e}"));
        args
    }

    /// Stop it (an outage); [`resume`](Self::resume) brings it back with its data.
    pub fn stop(&self) {
        self.run("stop");
    }

    /// Start it again on the same port and data.
    pub fn resume(&self) {
        self.run("start");
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("deploy/local/broker.sh"))
            .arg("stop")
            .env("CARBONFLOW_BROKER_PORT", self.port.to_string())
            .env("CARBONFLOW_BROKER_DIR", &self.dir)
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port nothing listens on right now, for a server a test or benchmark starts
/// (admin APIs, proxies, private brokers, browsers' drivers).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The pooled plain-HTTP client every harness talks to its servers with (hyper, the stack
/// the routers use).
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A new [`HttpClient`]. Keep one for many requests within one runtime (benchmarks); its
/// pooled connections belong to the runtime they were opened on.
pub fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// What a server answered to [`send`].
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// The `x-carbonflow-flavour` header (which flavour a router served), if any.
    pub flavour: Option<String>,
    /// The whole body.
    pub body: Bytes,
}

/// One HTTP request through `client`, with exactly the `headers` given (no others are
/// added: router tests look at what reaches the backend) and `body` if any. `Err` when the
/// request cannot be built or the server cannot be reached.
pub async fn send(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Result<HttpReply, String> {
    let mut req = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let flavour = resp
        .headers()
        .get("x-carbonflow-flavour")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(HttpReply {
        status,
        flavour,
        body,
    })
}

/// One JSON request to an admin API: status and body as JSON (`Null` when it is not
/// JSON); `Err` when the server cannot be reached.
pub async fn try_http(
    method: &str,
    url: &str,
    body: Option<&str>,
) -> Result<(u16, serde_json::Value), String> {
    // A client per call: every #[tokio::test] has a runtime of its own, and a pooled
    // connection outlives the runtime it was opened on.
    let reply = send(
        &http_client(),
        method,
        url,
        &[("content-type", "application/json")],
        body,
    )
    .await?;
    let json = serde_json::from_slice(&reply.body).unwrap_or(serde_json::Value::Null);
    Ok((reply.status, json))
}

/// One JSON request that must reach the server.
pub async fn http(method: &str, url: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    try_http(method, url, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// The child processes a test or benchmark started (processor, routers, carbonstat,
/// Prometheus, chromedriver): killed when it ends, however it ends (a failed assertion
/// unwinds through this drop too).
#[derive(Default)]
pub struct Children(pub Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `BIN SUBCOMMAND <flags of kafka>`: the `processor` binary at `bin` on the topics of
/// `kafka`. For its one-shot subcommands (`audit`), and the base of [`ProcessorRun`]; `bin`
/// is `env!("CARGO_BIN_EXE_processor")` in the processor's tests and a path in a bin
/// directory in benchmarks and deploy checks.
pub fn processor_command(bin: impl AsRef<OsStr>, subcommand: &str, kafka: &KafkaArgs) -> Command {
    let mut command = Command::new(bin);
    command
        .arg(subcommand)
        .args(kafka.to_flags())
        .envs(kafka.to_secret_env());
    command
}

/// `processor run` as every harness starts it: on the topics of a [`KafkaArgs`], its
/// admin API on a free loopback port, stdout discarded and stderr (its log) in a file,
/// plus the caller's own flags ([`args`](Self::args)).
///
/// For: the processor's tests, the benchmarks and the deploy checks, so that how the
/// binary is started is written once.
pub struct ProcessorRun {
    command: Command,
    admin_port: u16,
}

impl ProcessorRun {
    /// `bin run` on the topics of `kafka` (see [`processor_command`] for `bin`).
    pub fn new(bin: impl AsRef<OsStr>, kafka: &KafkaArgs) -> Self {
        let admin_port = free_port();
        let mut command = processor_command(bin, "run", kafka);
        command.args(["--admin-listen", &format!("127.0.0.1:{admin_port}")]);
        Self {
            command,
            admin_port,
        }
    }

    /// The port its admin API will listen on; known before it starts, to name its log.
    pub fn admin_port(&self) -> u16 {
        self.admin_port
    }

    /// More flags for `processor run` (instance, tick interval, ...).
    #[must_use]
    pub fn args<I, S>(mut self, flags: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.command.args(flags);
        self
    }

    /// Start it with its log (stderr) in `log`: a run that stalls usually has its cause
    /// there. `Err` names what failed (creating the log, or starting the binary).
    pub fn spawn(mut self, log: &Path) -> std::io::Result<RunningProcessor> {
        let file = std::fs::File::create(log).map_err(|e| {
            std::io::Error::new(e.kind(), format!("creating {}: {e}", log.display()))
        })?;
        let bin = self.command.get_program().to_string_lossy().into_owned();
        let child = self
            .command
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("starting {bin}: {e}")))?;
        Ok(RunningProcessor {
            child,
            admin_port: self.admin_port,
        })
    }
}

/// A processor [`ProcessorRun::spawn`] started. Not stopped on drop: its `child` goes to
/// whatever owns the run's processes ([`Children`], a test's own wrapper), which decides
/// how it ends (kill or SIGTERM).
pub struct RunningProcessor {
    /// The process.
    pub child: Child,
    /// Its admin API's port on 127.0.0.1.
    pub admin_port: u16,
}

impl RunningProcessor {
    /// Admin API base URL, `http://127.0.0.1:PORT`.
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }
}

/// Poll `check` until it returns `Some`, or panic with `what` after `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A record read back: `(offset, key, payload)`.
pub type Record = (i64, Option<Vec<u8>>, Option<Vec<u8>>);

/// Every record of `topic` partition `partition`.
pub fn read_all(args: &KafkaArgs, topic: Topic, partition: i32) -> Vec<Record> {
    let name = args.layout().name(topic);
    let reader = RangeReader::new(args, "test-reader").expect("range reader");
    let (low, high) = reader.watermarks(&name, partition).expect("watermarks");
    let mut out = Vec::new();
    reader
        .read(&name, partition, low, high, |r| {
            out.push((
                r.offset,
                r.key.map(<[u8]>::to_vec),
                r.payload.map(<[u8]>::to_vec),
            ));
            Ok::<(), crate::bus::BusError>(())
        })
        .unwrap_or_else(|e| panic!("reading {name}/{partition}: {e}"));
    out
}

/// One fully populated sample of every record type (every optional field set), so
/// round-trip tests compare every field.
pub mod samples {
    use crate::records::*;

    /// A forecast for `zone` issued at `at_ms`: consecutive slots of `slot_ms`, the first
    /// being the one that contains `at_ms`, with the given intensities (g/kWh).
    pub fn forecast_from(
        zone: &str,
        issuer: &str,
        at_ms: i64,
        slot_ms: i64,
        intensities: &[f64],
    ) -> Forecast {
        let start = at_ms - at_ms.rem_euclid(slot_ms);
        Forecast {
            zone: zone.into(),
            issuer: issuer.into(),
            issued_at_ms: at_ms,
            points: (0_i64..)
                .zip(intensities)
                .map(|(i, g)| ForecastPoint {
                    start_ms: start + i * slot_ms,
                    end_ms: start + (i + 1) * slot_ms,
                    g_per_kwh: *g,
                    index: None,
                })
                .collect(),
            demand: None,
        }
    }

    /// A forecast with demand.
    pub fn forecast() -> Forecast {
        Forecast {
            zone: "GB".into(),
            issuer: "scenario:rising".into(),
            issued_at_ms: 1_763_467_200_000,
            points: vec![
                ForecastPoint {
                    start_ms: 1_763_467_200_000,
                    end_ms: 1_763_469_000_000,
                    g_per_kwh: 180.0,
                    index: Some("moderate".into()),
                },
                ForecastPoint {
                    start_ms: 1_763_469_000_000,
                    end_ms: 1_763_470_800_000,
                    g_per_kwh: 200.5,
                    index: None,
                },
            ],
            demand: Some(vec![DemandPoint {
                start_ms: 1_763_467_200_000,
                end_ms: 1_763_469_000_000,
                requests_per_second: 100.0,
            }]),
        }
    }

    /// The reference's default flavour triple as a config.
    pub fn schedule_config() -> ScheduleConfig {
        let flavour = |name: &str, precision: f64, energy: f64| Flavour {
            name: name.into(),
            precision,
            relative_energy: energy,
            enabled: true,
            upstream_url: format!("http://127.0.0.1:8080/{name}"),
            upstream_header: None,
            annotations: vec![Annotation {
                key: "tier".into(),
                value: name.into(),
            }],
            max_share: None,
        };
        let mut p30 = flavour("precision-30", 0.3, 0.3);
        p30.upstream_header = Some("x-carbonrouter".into());
        ScheduleConfig {
            schedule: "default/demo".into(),
            config_version: 3,
            published_at_ms: 1_763_467_200_000,
            policy: "credit-greedy".into(),
            zone: "GB".into(),
            target_error: 0.15,
            credit_min: -1.0,
            credit_max: 1.0,
            credit_sensitivity: 0.33,
            credit_window_seconds: 300,
            valid_for_seconds: 60,
            discovery_interval_seconds: 60,
            carbon_timeout_seconds: 2.0,
            carbon_cache_ttl_seconds: 5.0,
            throttle_min: 0.05,
            throttle_intensity_floor: 150.0,
            throttle_intensity_ceiling: 350.0,
            throttle_green_blend: 0.6,
            throttle_green_override_threshold: 0.99,
            evaluator: "router".into(),
            precision_feed: PrecisionFeed::Commanded,
            on_expiry: ExpiryBehaviour::KeepLastWeights,
            components: vec![
                ComponentBounds {
                    component: "router".into(),
                    min_replicas: Some(1),
                    max_replicas: Some(15),
                },
                ComponentBounds {
                    component: "target".into(),
                    min_replicas: None,
                    max_replicas: Some(12),
                },
            ],
            flavours: vec![
                flavour("precision-100", 1.0, 1.0),
                flavour("precision-50", 0.5, 0.6),
                p30,
            ],
            fallbacks: vec![FallbackRule {
                when_status: vec!["timeout".into(), "5xx".into()],
                to: "precision-100".into(),
            }],
            min_slot_precision: None,
            forward_credentials: true,
        }
    }

    /// A manual override.
    pub fn manual_override() -> ManualOverride {
        ManualOverride {
            schedule: "default/demo".into(),
            issued_at_ms: 1_763_467_260_000,
            ttl_seconds: 120,
            weights: vec![
                FlavourWeight {
                    flavour: "precision-100".into(),
                    weight: 70.0,
                },
                FlavourWeight {
                    flavour: "precision-30".into(),
                    weight: 30.0,
                },
            ],
            reason: Some("load test".into()),
        }
    }

    /// A deletion.
    pub fn schedule_deletion() -> ScheduleDeletion {
        ScheduleDeletion {
            schedule: "default/old".into(),
            issued_at_ms: 1_763_467_300_000,
        }
    }

    /// The end of `default/demo`'s override.
    pub fn override_cancellation() -> OverrideCancellation {
        OverrideCancellation {
            schedule: "default/demo".into(),
            issued_at_ms: 1_763_467_400_000,
            reason: Some("incident over".into()),
        }
    }

    /// A telemetry bucket.
    pub fn telemetry_bucket() -> TelemetryBucket {
        TelemetryBucket {
            router_id: "router-0".into(),
            schedule: "default/demo".into(),
            bucket_start_ms: 1_763_467_201_000,
            bucket_length_ms: 1000,
            decision_version: Some(7),
            counts: vec![
                OutcomeCount {
                    flavour: "precision-100".into(),
                    outcome: Outcome::Success,
                    count: 42,
                },
                OutcomeCount {
                    flavour: "precision-30".into(),
                    outcome: Outcome::Timeout,
                    count: 1,
                },
                OutcomeCount {
                    flavour: "precision-50".into(),
                    outcome: Outcome::Fallback,
                    count: 2,
                },
            ],
            latency: LatencyHistogram {
                upper_bounds_ms: vec![1.0, 5.0, 25.0],
                counts: vec![10, 30, 4, 1],
                sum_ms: 321.5,
            },
        }
    }

    /// The reference's worked decision (section 1.6) with provenance.
    pub fn schedule_decision() -> ScheduleDecision {
        let df = |name: &str, p: i32, wp: i32, w: f64, e: f64| DecisionFlavour {
            name: name.into(),
            precision_percent: p,
            weight_percent: wp,
            weight: w,
            relative_energy: e,
            enabled: true,
            upstream_url: format!("http://127.0.0.1:8080/{name}"),
            upstream_header: None,
        };
        ScheduleDecision {
            schedule: "default/demo".into(),
            version: 8,
            decided_at_ms: 1_763_467_807_000,
            valid_until_ms: 1_763_467_867_000,
            policy: "credit-greedy".into(),
            manual: false,
            avg_precision: 0.6486111111111111,
            flavours: vec![
                df("precision-100", 100, 42, 0.425, 1.0),
                df("precision-50", 50, 26, 0.25555555555555554, 0.6),
                df("precision-30", 30, 32, 0.3194444444444444, 0.3),
            ],
            credits: Credits {
                balance: -0.06645833333333333,
                velocity: -0.06645833333333333,
                target: 0.15,
                min: -1.0,
                max: 1.0,
                allowance: Some(0.575),
            },
            diagnostics: vec![
                Diagnostic {
                    name: "allowance".into(),
                    value: Some(0.575),
                },
                Diagnostic {
                    name: "carbon_ratio".into(),
                    value: None,
                },
            ],
            processing: Processing {
                throttle: 0.6367083333333333,
                credits_ratio: 0.46677083333333336,
                intensity_ratio: 0.75,
                ceilings: vec![ReplicaCeiling {
                    component: "router".into(),
                    replicas: 10,
                }],
            },
            fallbacks: vec![FallbackRule {
                when_status: vec!["503".into()],
                to: "precision-100".into(),
            }],
            on_expiry: ExpiryBehaviour::HighestPrecision,
            provenance: Provenance {
                cause: "forecast".into(),
                input: InputPosition {
                    topic: "carbon.forecasts".into(),
                    partition: 0,
                    offset: 12,
                },
                config_version: 3,
                forecast: Some(ForecastUsed {
                    issuer: "scenario:rising".into(),
                    issued_at_ms: 1_763_467_200_000,
                    intensity_now: Some(180.0),
                    intensity_next: Some(200.0),
                    slots: vec![180.0, 200.0, 220.0],
                }),
                ledger_before: LedgerState {
                    balance: 0.0,
                    velocity: 0.0,
                },
                ledger_after: LedgerState {
                    balance: -0.06645833333333333,
                    velocity: -0.06645833333333333,
                },
                telemetry_window: Some(TelemetryWindow {
                    start_ms: 1_763_467_800_000,
                    end_ms: 1_763_467_805_000,
                    requests: 300,
                    realised_precision: 0.72,
                }),
            },
            forward_credentials: true,
            epoch: 0,
        }
    }

    /// A tick.
    pub fn tick() -> Tick {
        Tick {
            at_ms: 1_763_467_200_500,
            source: "ticker@test".into(),
        }
    }

    /// A rejection.
    pub fn config_rejection() -> ConfigRejection {
        ConfigRejection {
            schedule: "default/demo".into(),
            config_version: 4,
            rejected_at_ms: 1_763_467_200_000,
            input: InputPosition {
                topic: "schedule.config".into(),
                partition: 2,
                offset: 9,
            },
            reasons: vec![FieldProblem {
                field: "credit_min".into(),
                rule: "must be below credit_max (1)".into(),
            }],
        }
    }

    /// A dead letter.
    pub fn dead_letter() -> DeadLetter {
        DeadLetter {
            topic: "request.telemetry".into(),
            partition: 1,
            offset: 77,
            key: Some(b"default/demo".to_vec()),
            payload: Some(vec![0xC3, 0x01, 0xFF, 0x00]),
            reason: "record is 4 bytes long".into(),
            error_kind: "too_short".into(),
            consumer: "processor-0".into(),
            at_ms: 1_763_467_200_000,
        }
    }

    /// A journal entry.
    pub fn journal_entry() -> JournalEntry {
        JournalEntry {
            partition: 2,
            input: InputPosition {
                topic: "schedule.config".into(),
                partition: 2,
                offset: 9,
            },
            record: crate::encode(&tick()).expect("the tick sample encodes"),
            decisions: vec![DecisionRef {
                schedule: "default/demo".into(),
                version: 12,
            }],
        }
    }

    /// A journal batch of two entries.
    pub fn journal_batch() -> JournalBatch {
        let first = journal_entry();
        let mut second = journal_entry();
        second.input.offset += 1;
        second.decisions.clear();
        JournalBatch {
            partition: first.partition,
            epoch: 0,
            entries: vec![first, second],
        }
    }

    /// An ownership claim.
    pub fn ownership_claim() -> OwnershipClaim {
        OwnershipClaim {
            partition: 2,
            owner: "processor-0".into(),
            claimed_at_ms: 1_763_467_200_000,
        }
    }

    /// A partition snapshot.
    pub fn partition_snapshot() -> PartitionSnapshot {
        PartitionSnapshot {
            partition: 2,
            journal_next_offset: 120,
            decisions_next_offset: 40,
            clock_ms: 1_763_467_200_000,
            state_format: 1,
            state: br#"{"schedules":{}}"#.to_vec(),
            chunk: 0,
            chunks: 1,
        }
    }
}
