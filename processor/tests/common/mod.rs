//! Shared by the processor's broker-backed tests: run the real `processor` binary.
//! (HTTP, polling and topic reading helpers live in `carbonflow_schemas::testing`.)

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use carbonflow_schemas::bus::KafkaArgs;
pub use carbonflow_schemas::testing::{eventually, free_port, http, read_all, try_http};

/// A running `processor run` child process; killed with SIGKILL when dropped.
pub struct ProcessorProcess {
    child: Child,
    /// Admin API base URL.
    pub admin: String,
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
            .args(args.to_flags())
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
