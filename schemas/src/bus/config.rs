//! Kafka client configuration shared by every component.
//!
//! One set of flags (each with an environment variable) points a component at any Kafka
//! cluster: bootstrap servers, TLS/SASL, a topic prefix, and a passthrough of arbitrary
//! librdkafka properties. Every property carbonflow sets itself carries its reason; the
//! passthrough is applied last, so users can override any of them.

use rdkafka::ClientConfig;

use super::BusError;
use crate::topics::{DEFAULT_SCHEDULE_PARTITIONS, TopicLayout};

/// Flags for reaching the Kafka cluster (flatten into a component's clap `Parser`).
#[derive(Clone, clap::Args)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, comma-separated host:port.
    #[arg(
        long = "kafka-brokers",
        env = "KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,

    /// Prefix prepended to every topic name, e.g. "staging." (empty: none).
    #[arg(long, env = "CARBONFLOW_TOPIC_PREFIX", default_value = "")]
    pub topic_prefix: String,

    /// Partition count of the schedule-keyed topics (used when creating topics; must be
    /// the same for all of them).
    #[arg(long, env = "CARBONFLOW_SCHEDULE_PARTITIONS", default_value_t = DEFAULT_SCHEDULE_PARTITIONS)]
    pub schedule_partitions: i32,

    /// security.protocol: plaintext, ssl, sasl_plaintext or sasl_ssl.
    #[arg(long = "kafka-security-protocol", env = "KAFKA_SECURITY_PROTOCOL")]
    pub security_protocol: Option<String>,

    /// sasl.mechanism, e.g. PLAIN, SCRAM-SHA-256, SCRAM-SHA-512.
    #[arg(long = "kafka-sasl-mechanism", env = "KAFKA_SASL_MECHANISM")]
    pub sasl_mechanism: Option<String>,

    /// sasl.username.
    #[arg(long = "kafka-sasl-username", env = "KAFKA_SASL_USERNAME")]
    pub sasl_username: Option<String>,

    /// sasl.password (prefer the environment variable: flags show up in `ps`).
    #[arg(
        long = "kafka-sasl-password",
        env = "KAFKA_SASL_PASSWORD",
        hide_env_values = true
    )]
    pub sasl_password: Option<String>,

    /// ssl.ca.location: PEM file of the CA that signed the brokers' certificates.
    #[arg(long = "kafka-ssl-ca", env = "KAFKA_SSL_CA_LOCATION")]
    pub ssl_ca_location: Option<String>,

    /// ssl.certificate.location: client certificate (PEM) for mutual TLS.
    #[arg(long = "kafka-ssl-certificate", env = "KAFKA_SSL_CERTIFICATE_LOCATION")]
    pub ssl_certificate_location: Option<String>,

    /// ssl.key.location: client private key (PEM) for mutual TLS.
    #[arg(long = "kafka-ssl-key", env = "KAFKA_SSL_KEY_LOCATION")]
    pub ssl_key_location: Option<String>,

    /// Extra librdkafka property as key=value (repeatable; the env var takes a
    /// comma-separated list). Applied last, so it overrides carbonflow's own settings.
    #[arg(
        long = "kafka-option",
        env = "KAFKA_OPTIONS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub options: Vec<String>,
}

/// Secrets stay out of logs and panics: the password and the librdkafka options (which
/// may name one) are shown redacted.
impl std::fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |set: bool| if set { "<redacted>" } else { "<none>" };
        f.debug_struct("KafkaArgs")
            .field("brokers", &self.brokers)
            .field("topic_prefix", &self.topic_prefix)
            .field("schedule_partitions", &self.schedule_partitions)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &redacted(self.sasl_password.is_some()))
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("ssl_certificate_location", &self.ssl_certificate_location)
            .field("ssl_key_location", &self.ssl_key_location)
            .field("options", &redacted(!self.options.is_empty()))
            .finish()
    }
}

/// Longest interval between a group member's heartbeats, milliseconds.
const HEARTBEAT_MS: u64 = 250;

/// How a consumer-group member joins its group (see [`KafkaArgs::group_member_config`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Static membership id (`group.instance.id`), e.g. a StatefulSet pod name; `None`
    /// for a dynamic member, which leaves the group at once when it stops.
    pub instance_id: Option<String>,
    /// How long the broker waits for a silent member before it is evicted, milliseconds.
    pub session_timeout_ms: u64,
}

impl Default for KafkaArgs {
    fn default() -> Self {
        Self::for_brokers("127.0.0.1:9092")
    }
}

impl KafkaArgs {
    /// Plaintext settings for `brokers` with no prefix (tests, tools).
    pub fn for_brokers(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: String::new(),
            schedule_partitions: DEFAULT_SCHEDULE_PARTITIONS,
            security_protocol: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            options: Vec::new(),
        }
    }

    /// The command-line flags that give a child process (processor, router, ingest) these
    /// same settings, secrets excepted: pass [`to_secret_env`](Self::to_secret_env) as
    /// its environment too.
    pub fn to_flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--kafka-brokers".to_string(),
            self.brokers.clone(),
            "--topic-prefix".into(),
            self.topic_prefix.clone(),
            "--schedule-partitions".into(),
            self.schedule_partitions.to_string(),
        ];
        let optional = [
            ("--kafka-security-protocol", &self.security_protocol),
            ("--kafka-sasl-mechanism", &self.sasl_mechanism),
            ("--kafka-sasl-username", &self.sasl_username),
            ("--kafka-ssl-ca", &self.ssl_ca_location),
            ("--kafka-ssl-certificate", &self.ssl_certificate_location),
            ("--kafka-ssl-key", &self.ssl_key_location),
        ];
        for (flag, value) in optional {
            if let Some(v) = value {
                flags.push(flag.into());
                flags.push(v.clone());
            }
        }
        flags
    }

    /// The settings [`to_flags`](Self::to_flags) leaves out because they may hold
    /// secrets (the SASL password; librdkafka options, which can name one), as
    /// environment variables for a child process: command lines show up in `ps`.
    pub fn to_secret_env(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(p) = &self.sasl_password {
            env.push(("KAFKA_SASL_PASSWORD", p.clone()));
        }
        if !self.options.is_empty() {
            env.push(("KAFKA_OPTIONS", self.options.join(",")));
        }
        env
    }

    /// Topic names and partition counts these flags describe.
    pub fn layout(&self) -> TopicLayout {
        TopicLayout {
            prefix: self.topic_prefix.clone(),
            schedule_partitions: self.schedule_partitions,
        }
    }

    /// Configuration common to every client.
    pub fn client_config(&self, client_id: &str) -> Result<ClientConfig, BusError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        // Shows up in broker logs and quotas; lets operators tell our components apart.
        c.set("client.id", client_id);
        let optional = [
            ("security.protocol", &self.security_protocol),
            ("sasl.mechanism", &self.sasl_mechanism),
            ("sasl.username", &self.sasl_username),
            ("sasl.password", &self.sasl_password),
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
        ];
        for (key, value) in optional {
            if let Some(v) = value {
                c.set(key, v);
            }
        }
        Ok(c)
    }

    /// Configuration of an idempotent producer.
    pub fn producer_config(&self, client_id: &str) -> Result<ClientConfig, BusError> {
        let mut c = self.client_config(client_id)?;
        // No duplicates or reordering from internal retries (implies acks=all): decisions
        // and journal records must land once, in order, per partition.
        c.set("enable.idempotence", "true");
        // Decisions are latency-critical (seed 000): send almost at once, batching only
        // what arrives within a millisecond.
        c.set("linger.ms", "1");
        // Kafka's Java partitioner (murmur2 of the key): schedule-keyed topics share a
        // partition count, so a schedule lands on the same partition number everywhere,
        // whichever client (Rust, Java, Go) produced it.
        c.set("partitioner", "murmur2_random");
        // Connect to every broker at once instead of when first needed: an idempotent
        // producer's first write waits for its producer id, which it asks of a connected
        // broker and otherwise retries only every 500 ms (a takeover's first claim).
        c.set("enable.sparse.connections", "false");
        self.apply_options(c)
    }

    /// Configuration of a consumer that keeps its own positions (no group commits).
    pub fn consumer_config(
        &self,
        client_id: &str,
        group_id: &str,
    ) -> Result<ClientConfig, BusError> {
        let c = self.consumer_base(client_id, group_id)?;
        self.apply_options(c)
    }

    /// Configuration of a consumer that joins `group_id` to be given partitions by the
    /// consumer-group protocol (processor ownership, `--ownership group`). It reads no
    /// records and commits nothing: it only carries membership.
    pub fn group_member_config(
        &self,
        client_id: &str,
        group_id: &str,
        member: &GroupMember,
    ) -> Result<ClientConfig, BusError> {
        let mut c = self.consumer_base(client_id, group_id)?;
        // Incremental rebalancing: a member joining or leaving moves only the partitions
        // that change hands, the others keep being decided throughout.
        c.set("partition.assignment.strategy", "cooperative-sticky");
        // How long the broker waits for a silent member before giving its partitions to
        // the others: the bound on a crashed instance's takeover.
        c.set("session.timeout.ms", member.session_timeout_ms.to_string());
        // A member learns of a rebalance (a member left or joined) from the answer to its
        // next heartbeat, and a cooperative rebalance takes two rounds: frequent
        // heartbeats keep a handover well under a second. At least three per session.
        c.set(
            "heartbeat.interval.ms",
            (member.session_timeout_ms / 3)
                .clamp(1, HEARTBEAT_MS)
                .to_string(),
        );
        if let Some(id) = &member.instance_id {
            // Static membership: a restarted pod with the same id gets its partitions back
            // without a rebalance, if it returns within the session timeout.
            c.set("group.instance.id", id);
        }
        // Nothing is read, so no statistics are needed.
        c.set("statistics.interval.ms", "0");
        self.apply_options(c)
    }

    fn consumer_base(&self, client_id: &str, group_id: &str) -> Result<ClientConfig, BusError> {
        let mut c = self.client_config(client_id)?;
        // librdkafka needs a group id even for assign()-only consumers.
        c.set("group.id", group_id);
        // Positions live next to the state they describe (processor journal) or are not
        // kept at all (routers re-read decisions), so Kafka's commits are never the truth.
        c.set("enable.auto.commit", "false");
        c.set("enable.auto.offset.store", "false");
        // A new reader starts from the oldest retained record: replay, not skip.
        c.set("auto.offset.reset", "earliest");
        // The local broker answers a waiting fetch only when this expires, so it bounds
        // every hop's latency; librdkafka's 500 ms default would make each hop half a second.
        c.set("fetch.wait.max.ms", "5");
        // Never read records of aborted transactions (if any producer ever uses them).
        c.set("isolation.level", "read_committed");
        // Feeds the consumer-lag gauges (see `lag`).
        c.set("statistics.interval.ms", "5000");
        c.set("enable.partition.eof", "false");
        Ok(c)
    }

    fn apply_options(&self, mut c: ClientConfig) -> Result<ClientConfig, BusError> {
        for option in &self.options {
            let option = option.trim();
            if option.is_empty() {
                continue;
            }
            let (key, value) = option
                .split_once('=')
                .ok_or_else(|| BusError::InvalidOption {
                    flag: "--kafka-option",
                    value: option.to_string(),
                    expected: "a librdkafka property as key=value, e.g. socket.timeout.ms=30000",
                })?;
            c.set(key.trim(), value.trim());
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passthrough_overrides_our_defaults() {
        let mut args = KafkaArgs::for_brokers("b:1");
        args.options = vec!["linger.ms=20".into(), " socket.timeout.ms = 9 ".into()];
        let c = args.producer_config("p").expect("valid");
        assert_eq!(c.get("linger.ms"), Some("20"));
        assert_eq!(c.get("socket.timeout.ms"), Some("9"));
        assert_eq!(c.get("enable.idempotence"), Some("true"));
        assert_eq!(c.get("bootstrap.servers"), Some("b:1"));
    }

    #[test]
    fn a_group_member_rebalances_cooperatively_and_heartbeats_often() {
        let member = GroupMember {
            instance_id: Some("processor-1".into()),
            session_timeout_ms: 10_000,
        };
        let c = KafkaArgs::for_brokers("b:1")
            .group_member_config("m", "g", &member)
            .expect("valid");
        assert_eq!(
            c.get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        assert_eq!(c.get("session.timeout.ms"), Some("10000"));
        assert_eq!(c.get("heartbeat.interval.ms"), Some("250"));
        assert_eq!(c.get("group.instance.id"), Some("processor-1"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        let short = GroupMember {
            instance_id: None,
            session_timeout_ms: 300,
        };
        let c = KafkaArgs::for_brokers("b:1")
            .group_member_config("m", "g", &short)
            .expect("valid");
        assert_eq!(c.get("heartbeat.interval.ms"), Some("100"));
        assert_eq!(c.get("group.instance.id"), None);
    }

    #[test]
    fn malformed_passthrough_names_the_flag_and_value() {
        let args = KafkaArgs {
            options: vec!["linger.ms".into()],
            ..KafkaArgs::default()
        };
        let err = args
            .consumer_config("c", "g")
            .expect_err("must fail")
            .to_string();
        assert!(
            err.contains("--kafka-option") && err.contains("linger.ms"),
            "{err}"
        );
    }

    #[test]
    fn security_settings_are_passed_through() {
        let args = KafkaArgs {
            security_protocol: Some("sasl_ssl".into()),
            sasl_username: Some("u".into()),
            ..KafkaArgs::default()
        };
        let c = args.client_config("x").expect("valid");
        assert_eq!(c.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(c.get("sasl.username"), Some("u"));
        assert_eq!(c.get("sasl.password"), None);
    }
}

#[cfg(test)]
mod secret_tests {
    use super::*;

    #[test]
    fn secrets_stay_off_command_lines_and_out_of_debug() {
        let mut args = KafkaArgs::for_brokers("b:9092");
        args.sasl_password = Some("hunter2-hunter2".into());
        args.options = vec!["sasl.password=hunter2-hunter2".into()];
        assert!(!args.to_flags().iter().any(|f| f.contains("hunter2")));
        assert!(!format!("{args:?}").contains("hunter2"));
        let env = args.to_secret_env();
        assert!(env.contains(&("KAFKA_SASL_PASSWORD", "hunter2-hunter2".into())));
        assert!(
            env.iter()
                .any(|(k, v)| *k == "KAFKA_OPTIONS" && v.contains("hunter2"))
        );
    }
}
