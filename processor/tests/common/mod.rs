//! Shared by the processor's broker-backed tests: run the real `processor` binary, talk to
//! its admin API over real HTTP, and read topics back.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use carbonflow_schemas::bus::{KafkaArgs, Topic};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// A running `processor run` child process; killed with SIGKILL when dropped.
pub struct ProcessorProcess {
    child: Child,
    /// Admin API base URL.
    pub admin: String,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl ProcessorProcess {
    /// Start instance `instance` of `instances` on the topics of `args`.
    pub fn start(args: &KafkaArgs, instance: i32, instances: i32, extra: &[&str]) -> Self {
        let port = free_port();
        let log = std::env::temp_dir().join(format!(
            "{}processor-{instance}-of-{instances}-{port}.log",
            args.topic_prefix
        ));
        let file = std::fs::File::create(&log).expect("processor log file");
        let child = Command::new(env!("CARGO_BIN_EXE_processor"))
            .arg("run")
            .args(["--kafka-brokers", &args.brokers])
            .args(["--topic-prefix", &args.topic_prefix])
            .args([
                "--schedule-partitions",
                &args.schedule_partitions.to_string(),
            ])
            .args(["--instance", &instance.to_string()])
            .args(["--instances", &instances.to_string()])
            .args(["--admin-listen", &format!("127.0.0.1:{port}")])
            .args(["--tick-interval-ms", "200"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn the processor binary");
        Self {
            child,
            admin: format!("http://127.0.0.1:{port}"),
        }
    }

    /// SIGKILL: no clean shutdown, no final snapshot.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit (everything written, final snapshots taken).
    pub fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(
                    status.success(),
                    "processor exited with {status} on SIGTERM"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("processor did not stop within 30 s of SIGTERM");
    }

    /// Wait until `/readyz` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if let Ok((200, _)) = try_http("GET", &format!("{}/readyz", self.admin), None).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "processor at {} not ready within {within:?}",
                self.admin
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ProcessorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP request; `Err` when the server cannot be reached.
pub async fn try_http(
    method: &str,
    url: &str,
    body: Option<&str>,
) -> Result<(u16, serde_json::Value), String> {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_string())))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    Ok((status, json))
}

/// One HTTP request that must reach the server.
pub async fn http(method: &str, url: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    try_http(method, url, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
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
    let consumer: BaseConsumer = args
        .consumer_config("test-reader", "test-reader")
        .expect("consumer config")
        .create()
        .expect("consumer");
    let (low, high) = consumer
        .fetch_watermarks(&name, partition, Duration::from_secs(10))
        .expect("watermarks");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&name, partition, Offset::Offset(low))
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut at = low;
    while at < high {
        match consumer.poll(Duration::from_secs(10)) {
            Some(Ok(m)) => {
                at = m.offset() + 1;
                out.push((
                    m.offset(),
                    m.key().map(<[u8]>::to_vec),
                    m.payload().map(<[u8]>::to_vec),
                ));
            }
            Some(Err(e)) => panic!("reading {name}/{partition}: {e}"),
            None => panic!("reading {name}/{partition} stalled at {at} of {high}"),
        }
    }
    out
}
