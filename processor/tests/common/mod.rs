//! Shared by the processor's broker-backed tests: run the real `processor` binary and
//! stop it the ways the tests need (SIGKILL, SIGTERM). How it is started, and the HTTP,
//! polling and topic reading helpers, live in `carbonflow_schemas::testing`.

#![allow(dead_code)]

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use carbonflow_schemas::bus::KafkaArgs;
use carbonflow_schemas::testing::ProcessorRun;
pub(crate) use carbonflow_schemas::testing::{eventually, http, read_all, try_http};

/// A running `processor run` child process; killed with SIGKILL when dropped.
pub(crate) struct ProcessorProcess {
    child: Child,
    /// Admin API base URL.
    pub admin: String,
}

impl ProcessorProcess {
    /// Start instance `instance` of `instances` on the topics of `args`.
    pub(crate) fn start(args: &KafkaArgs, instance: i32, instances: i32, extra: &[&str]) -> Self {
        let run = ProcessorRun::new(env!("CARGO_BIN_EXE_processor"), args)
            .args(["--instance", &instance.to_string()])
            .args(["--instances", &instances.to_string()])
            .args(["--tick-interval-ms", "200"])
            .args(extra);
        let log = std::env::temp_dir().join(format!(
            "{}processor-{instance}-of-{instances}-{}.log",
            args.topic_prefix,
            run.admin_port()
        ));
        let p = run
            .spawn(&log)
            .unwrap_or_else(|e| panic!("spawn the processor binary: {e}"));
        Self {
            admin: p.admin_url(),
            child: p.child,
        }
    }

    /// Whether the process has exited on its own.
    pub(crate) fn exited(&mut self) -> bool {
        self.exit_status().is_some()
    }

    /// How the process exited, if it has.
    pub(crate) fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL: no clean shutdown, no final snapshot.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send SIGTERM without waiting.
    pub(crate) fn terminate(&self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
    }

    /// SIGTERM and wait for a clean exit (everything written, final snapshots taken).
    pub(crate) fn stop(&mut self) {
        self.terminate();
        self.wait_clean_exit();
    }

    /// Wait for a clean exit after SIGTERM.
    pub(crate) fn wait_clean_exit(&mut self) {
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
    pub(crate) async fn wait_ready(&self, within: Duration) {
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
