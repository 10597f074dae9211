//! The observability deliverables against a running pipeline (broker, processor, two
//! routers, carbonstat, a forecast and load):
//!
//! - a real Prometheus (Debian's `prometheus` package, installed by `deploy/local/test.sh`)
//!   scrapes every component with the jobs of `deploy/prometheus/prometheus.yml` and loads
//!   `alerts.yml`; every dashboard expression returns at least one series, every rule
//!   expression parses and every rule evaluates without error; `promtool check` passes;
//! - the status page, in headless Chromium (Debian's `chromium` and `chromium-driver`),
//!   renders the schedule and updates without a reload when a new decision arrives; the
//!   screenshot is saved under `target/test-artifacts/`.
//!
//! Missing tools fail the test with the command that installs them; nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use carbonflow_deploy_checks::{
    alert_rules, dashboard_queries, deploy_dir, substitute, workspace_binary, yaml_document,
};
use carbonflow_schemas::bus::{KafkaArgs, RecordProducer, Topic};
use carbonflow_schemas::records::Forecast;
use carbonflow_schemas::testing::{
    Children, ProcessorRun, eventually, free_port, fresh_layout, repo_root, samples, try_http,
};
use serde_json::{Value, json};

const SCHEDULE: &str = "demo/carbonstat";

/// What a failed start most likely needs.
const BUILD_FIRST: &str = "build the workspace binaries first (`cargo build --workspace --bins`)";

fn tool(env: &str, default: &str, package: &str) -> PathBuf {
    let path = PathBuf::from(std::env::var(env).unwrap_or_else(|_| default.to_string()));
    assert!(
        path.is_file(),
        "{} not found: install Debian's {package} (`apt-get install {package}`; deploy/local/test.sh does) or set {env}",
        path.display()
    );
    path
}

fn artifacts() -> PathBuf {
    let dir = repo_root().join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("creating target/test-artifacts");
    dir
}

fn spawn(children: &mut Children, name: &str, log_tag: &str, cmd: &mut Command) {
    let log = artifacts().join(format!("{log_tag}.log"));
    let file = std::fs::File::create(&log).expect("log file");
    let bin = cmd.get_program().to_string_lossy().into_owned();
    let child = cmd
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name} ({bin}): {e}; {BUILD_FIRST}"));
    children.0.push(child);
}

async fn wait_ready(url: &str, what: &str) {
    eventually(what, Duration::from_secs(60), || async {
        matches!(try_http("GET", url, None).await, Ok((200, _))).then_some(())
    })
    .await;
}

/// A forecast of 12 half-hour slots from the current one, `now_g` g/kWh now.
fn forecast(now_g: f64) -> Forecast {
    let slots: Vec<f64> = (0..12)
        .map(|i| {
            if i == 0 {
                now_g
            } else {
                150.0 + 20.0 * f64::from(i)
            }
        })
        .collect();
    samples::forecast_from(
        "GB",
        "observability-test",
        carbonflow_schemas::service::now_ms(),
        30 * 60 * 1000,
        &slots,
    )
}

/// Broker topics, processor, two routers, carbonstat, the sample schedule, a forecast and
/// load: the quickstart in miniature, on free ports and topics of its own.
struct Pipeline {
    args: KafkaArgs,
    processor: String,
    routers: Vec<String>,
    scrape: Vec<(&'static str, String)>,
    load_stop: Arc<AtomicBool>,
    _children: Children,
}

impl Pipeline {
    async fn start(test: &str) -> Self {
        let args = fresh_layout(test, 1).await;
        let mut children = Children::default();
        let carbonstat = format!("127.0.0.1:{}", free_port());
        spawn(
            &mut children,
            "carbonstat",
            &format!("{test}-carbonstat"),
            Command::new(workspace_binary("carbonstat")).args(["--listen", &carbonstat]),
        );
        // precision-30 points at a closed port: GETs fall back to precision-100 (fallback
        // series), POSTs are not retried and answer 502 (error series).
        let dead = format!("127.0.0.1:{}", free_port());
        let yaml = std::fs::read_to_string(repo_root().join("deploy/local/sample-schedule.yaml"))
            .expect("sample schedule")
            .replace(
                "127.0.0.1:8100/precision-30",
                &format!("{dead}/precision-30"),
            )
            .replace("127.0.0.1:8100", &carbonstat);
        let file = artifacts().join(format!("{test}-schedule.yaml"));
        std::fs::write(&file, yaml).expect("schedule file");
        let status = Command::new(workspace_binary("ingest"))
            .args(args.to_flags())
            .envs(args.to_secret_env())
            .args(["config", "apply", "-f"])
            .arg(&file)
            .status()
            .expect("running ingest config apply");
        assert!(status.success(), "ingest config apply failed: {status}");

        let processor = ProcessorRun::new(workspace_binary("processor"), &args)
            .args(["--tick-interval-ms", "200"])
            .spawn(&artifacts().join(format!("{test}-processor.log")))
            .unwrap_or_else(|e| panic!("starting the processor: {e}; {BUILD_FIRST}"));
        let admin = format!("127.0.0.1:{}", processor.admin_port);
        children.0.push(processor.child);
        let mut routers = Vec::new();
        let mut scrape = vec![
            ("carbonflow-processor", admin.clone()),
            ("carbonstat", carbonstat.clone()),
        ];
        for id in ["router-a", "router-b"] {
            let (listen, admin) = (
                format!("127.0.0.1:{}", free_port()),
                format!("127.0.0.1:{}", free_port()),
            );
            spawn(
                &mut children,
                id,
                &format!("{test}-{id}"),
                Command::new(workspace_binary("router"))
                    .args(args.to_flags())
                    .envs(args.to_secret_env())
                    .args([
                        "--listen",
                        &listen,
                        "--admin-listen",
                        &admin,
                        "--schedule",
                        SCHEDULE,
                        "--router-id",
                        id,
                    ]),
            );
            routers.push(listen);
            scrape.push(("carbonflow-router", admin));
        }
        wait_ready(
            &format!("http://{admin}/readyz"),
            "the processor to be ready",
        )
        .await;
        for (job, a) in &scrape {
            if *job == "carbonflow-router" {
                wait_ready(&format!("http://{a}/readyz"), "a router to be ready").await;
            }
        }
        let p = Self {
            args,
            processor: format!("http://{admin}"),
            routers,
            scrape,
            load_stop: Arc::new(AtomicBool::new(false)),
            _children: children,
        };
        p.publish_forecast(240.0).await;
        p.start_load();
        p
    }

    async fn publish_forecast(&self, now_g: f64) {
        let producer = RecordProducer::new(&self.args, "observability-test").expect("producer");
        producer
            .send(
                &self.args.layout().name(Topic::Forecasts),
                "GB",
                None,
                &forecast(now_g),
            )
            .await
            .expect("publishing a forecast");
    }

    /// ~40 GET/s through both routers, and a POST now and then.
    fn start_load(&self) {
        let routers = self.routers.clone();
        let stop = self.load_stop.clone();
        tokio::spawn(async move {
            let mut i = 0_usize;
            while !stop.load(Ordering::Relaxed) {
                let r = &routers[i % routers.len()];
                let method = if i % 10 == 9 { "POST" } else { "GET" };
                let _ = try_http(method, &format!("http://{r}/stats?n=2000"), None).await;
                i += 1;
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        });
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.load_stop.store(true, Ordering::Relaxed);
    }
}

/// `deploy/prometheus/prometheus.yml` with its jobs pointed at this test's processes,
/// scraping every second, and its rule file by absolute path.
fn prometheus_config(pipeline: &Pipeline, dir: &Path) -> PathBuf {
    let mut config =
        yaml_document(&deploy_dir().join("prometheus/prometheus.yml")).expect("prometheus.yml");
    config["global"]["scrape_interval"] = json!("1s");
    config["global"]["evaluation_interval"] = json!("1s");
    config["rule_files"] = json!([deploy_dir().join("prometheus/alerts.yml")]);
    for job in config["scrape_configs"]
        .as_array_mut()
        .expect("scrape_configs")
    {
        let name = job["job_name"].as_str().expect("job_name").to_string();
        let targets: Vec<&String> = pipeline
            .scrape
            .iter()
            .filter(|(j, _)| *j == name)
            .map(|(_, a)| a)
            .collect();
        assert!(
            !targets.is_empty(),
            "job {name} of deploy/prometheus/prometheus.yml scrapes no component of the pipeline"
        );
        job["static_configs"] = json!([{"targets": targets}]);
    }
    for (job, _) in &pipeline.scrape {
        assert!(
            config["scrape_configs"]
                .as_array()
                .expect("jobs")
                .iter()
                .any(|j| j["job_name"] == *job),
            "deploy/prometheus/prometheus.yml has no job for {job}"
        );
    }
    let path = dir.join("prometheus.yml");
    std::fs::write(&path, serde_yaml_ng::to_string(&config).expect("yaml"))
        .expect("writing the config");
    path
}

async fn query(prometheus: &str, expr: &str) -> Value {
    let q: String = url::form_urlencoded::byte_serialize(expr.as_bytes()).collect();
    match try_http("GET", &format!("{prometheus}/api/v1/query?query={q}"), None).await {
        Ok((_, body)) => body,
        Err(e) => json!({"status": "unreachable", "error": e}),
    }
}

fn promtool(args: &[&str], file: &Path) {
    let promtool = tool("PROMTOOL", "/usr/bin/promtool", "prometheus");
    let out = Command::new(promtool)
        .args(args)
        .arg(file)
        .output()
        .expect("running promtool");
    assert!(
        out.status.success(),
        "promtool {} {} failed:\n{}{}",
        args.join(" "),
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_and_rule_expression_evaluates_over_scraped_components() {
    promtool(
        &["check", "config"],
        &deploy_dir().join("prometheus/prometheus.yml"),
    );
    promtool(
        &["check", "rules"],
        &deploy_dir().join("prometheus/alerts.yml"),
    );
    let prometheus_bin = tool("PROMETHEUS", "/usr/bin/prometheus", "prometheus");

    let pipeline = Pipeline::start("observability-prom").await;
    let dir = std::env::temp_dir().join(format!("carbonflow-prometheus-{}", free_port()));
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let config = prometheus_config(&pipeline, &dir);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut children = Children::default();
    spawn(
        &mut children,
        "prometheus",
        "observability-prometheus",
        Command::new(prometheus_bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}")),
    );
    let prom = format!("http://{listen}");
    wait_ready(&format!("{prom}/-/ready"), "Prometheus to be ready").await;

    // Every component is scraped and healthy.
    let targets = eventually("every target to be up", Duration::from_secs(60), || async {
        let (_, body) = try_http("GET", &format!("{prom}/api/v1/targets"), None)
            .await
            .ok()?;
        let active = body["data"]["activeTargets"].as_array()?.clone();
        (active.len() == pipeline.scrape.len() && active.iter().all(|t| t["health"] == "up"))
            .then_some(active)
    })
    .await;
    assert_eq!(targets.len(), 4, "processor, two routers and carbonstat");

    // Every dashboard expression returns a series once traffic has flowed for a while.
    let vars = [
        ("namespace", "demo"),
        ("schedule", "carbonstat"),
        ("flavour", ".*"),
        ("zone", "GB"),
        ("__rate_interval", "30s"),
        ("__interval", "5s"),
        ("__range", "5m"),
    ];
    let queries = dashboard_queries().unwrap_or_else(|e| panic!("{e}"));
    let mut missing = Vec::new();
    for _ in 0..90 {
        missing.clear();
        for q in &queries {
            let expr = substitute(&q.expr, &vars);
            let r = query(&prom, &expr).await;
            assert_eq!(
                r["status"], "success",
                "{} / {}: {expr} does not evaluate: {r}",
                q.dashboard, q.panel
            );
            if r["data"]["result"].as_array().is_none_or(Vec::is_empty) {
                missing.push(format!("{} / {}: {expr}", q.dashboard, q.panel));
            }
        }
        if missing.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert!(
        missing.is_empty(),
        "dashboard expressions without a series after 90 s:\n{}",
        missing.join("\n")
    );

    // Every alert expression parses; Prometheus loaded and evaluated every rule.
    let rules = alert_rules().unwrap_or_else(|e| panic!("{e}"));
    for r in &rules {
        let body = query(&prom, &r.expr).await;
        assert_eq!(
            body["status"], "success",
            "alert {}: {} does not evaluate: {body}",
            r.name, r.expr
        );
    }
    let loaded = eventually("every rule evaluated", Duration::from_secs(30), || async {
        let (_, body) = try_http("GET", &format!("{prom}/api/v1/rules"), None)
            .await
            .ok()?;
        let rules: Vec<Value> = body["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        rules
            .iter()
            .all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001"))
            })
            .then_some(rules)
    })
    .await;
    assert_eq!(
        loaded.len(),
        rules.len(),
        "Prometheus loaded every rule of alerts.yml"
    );
    for r in &loaded {
        assert_eq!(
            r["health"], "ok",
            "rule {} failed to evaluate: {}",
            r["name"], r["lastError"]
        );
    }
    // No alert fires on a healthy pipeline, except what the test does on purpose
    // (nothing here drops telemetry, expires decisions or writes dead letters).
    for r in &loaded {
        let name = r["name"].as_str().unwrap_or_default();
        if [
            "CarbonflowSnapshotsSkipped",
            "CarbonflowConfigRejected",
            "CarbonflowDeadLetters",
            "CarbonflowTelemetryDropped",
            "CarbonflowRouterServingExpiredDecision",
            "CarbonflowComponentDown",
        ]
        .contains(&name)
        {
            assert_eq!(
                r["alerts"].as_array().map_or(0, Vec::len),
                0,
                "{name} fires on a healthy pipeline: {}",
                r["alerts"]
            );
        }
    }

    // The autoscaler example's query parses too.
    let scaled = yaml_document(
        &deploy_dir().join("kubernetes/examples/autoscaler-ceilings/router-scaledobject.yaml"),
    )
    .expect("ScaledObject");
    let keda = scaled["spec"]["triggers"][0]["metadata"]["query"]
        .as_str()
        .expect("query");
    assert_eq!(
        query(&prom, keda).await["status"],
        "success",
        "the KEDA query does not parse: {keda}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_the_schedule_and_updates_without_a_reload() {
    let chromium = tool("CHROMIUM", "/usr/bin/chromium", "chromium");
    let chromedriver = tool("CHROMEDRIVER", "/usr/bin/chromedriver", "chromium-driver");
    let pipeline = Pipeline::start("observability-page").await;

    let mut children = Children::default();
    let port = free_port();
    spawn(
        &mut children,
        "chromedriver",
        "observability-chromedriver",
        Command::new(chromedriver).arg(format!("--port={port}")),
    );
    let driver = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{driver}/status"), "chromedriver to answer").await;
    let profile = std::env::temp_dir().join(format!("carbonflow-chromium-{port}"));
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            // The machine's network is closed: no background connections, no sandbox (root in CI).
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--window-size=1400,1100",
                     format!("--user-data-dir={}", profile.display())],
        }),
    );
    let browser =
        fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver)
            .await
            .expect("a Chromium session through chromedriver");

    browser
        .goto(&format!("{}/", pipeline.processor))
        .await
        .expect("loading the status page");
    let card = format!("section[data-schedule=\"{SCHEDULE}\"]");
    let version = |browser: fantoccini::Client, card: String| async move {
        let e = browser.find(fantoccini::Locator::Css(&card)).await.ok()?;
        let v: i64 = e.attr("data-version").await.ok()??.parse().ok()?;
        let text = e.text().await.ok()?;
        Some((v, text))
    };
    let (v0, text) = eventually("the schedule on the page", Duration::from_secs(30), || {
        version(browser.clone(), card.clone())
    })
    .await;
    assert!(v0 > 0, "a decision is shown");
    for f in ["precision-100", "precision-50", "precision-30"] {
        assert!(text.contains(f), "the page lists flavour {f}: {text}");
    }
    browser
        .execute("window.__notReloaded = true; return true;", vec![])
        .await
        .expect("marking the page");

    // A new forecast makes a new decision; the page shows it without being reloaded.
    pipeline.publish_forecast(432.0).await;
    let (v1, text) = eventually(
        "the page to show the new decision",
        Duration::from_secs(30),
        || {
            let (b, c) = (browser.clone(), card.clone());
            async move {
                version(b, c)
                    .await
                    .filter(|(v, t)| *v > v0 && t.contains("432"))
            }
        },
    )
    .await;
    assert!(v1 > v0);
    assert!(text.contains("intensity now"), "{text}");
    let marker = browser
        .execute("return window.__notReloaded === true;", vec![])
        .await
        .expect("reading the marker");
    assert_eq!(
        marker,
        json!(true),
        "the page was reloaded instead of updated in place"
    );

    // Let the delivered-share bars fill in before the picture.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let png = browser.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(artifacts().join("status-page.png"), &png).expect("saving the screenshot");
    if std::env::var_os("CARBONFLOW_UPDATE_SCREENSHOTS").is_some() {
        std::fs::write(deploy_dir().join("status-page.png"), &png)
            .expect("updating deploy/status-page.png");
    }
    browser.close().await.expect("closing the browser");
}
