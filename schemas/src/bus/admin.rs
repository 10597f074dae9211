//! Idempotent creation of carbonflow's topics.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use super::{BusError, KafkaArgs};
use crate::topics::{Topic, TopicLayout};

/// What happened to one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicOutcome {
    /// Created now.
    Created(String),
    /// Already there with the expected partition count.
    Existed(String),
}

/// Create every topic of `layout` that does not exist yet. Existing topics are checked
/// for their partition count, because co-partitioning depends on it.
pub async fn ensure_topics(
    args: &KafkaArgs,
    layout: &TopicLayout,
    replication: i32,
) -> Result<Vec<TopicOutcome>, BusError> {
    let admin: AdminClient<DefaultClientContext> = args
        .client_config("carbonflow-admin")?
        .create()
        .map_err(|e| BusError::kafka("create admin client", e))?;
    let names: Vec<(Topic, String)> = Topic::ALL.iter().map(|&t| (t, layout.name(t))).collect();
    let configs: Vec<Vec<(&str, String)>> = names.iter().map(|(t, _)| t.configs()).collect();
    let new_topics: Vec<NewTopic<'_>> = names
        .iter()
        .zip(&configs)
        .map(|((t, name), cfg)| {
            let mut nt = NewTopic::new(
                name,
                layout.partitions(*t),
                TopicReplication::Fixed(replication),
            );
            for (k, v) in cfg {
                nt = nt.set(k, v);
            }
            nt
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new_topics, &opts)
        .await
        .map_err(|e| BusError::kafka("create topics", e))?;
    let mut outcomes = Vec::new();
    for r in results {
        match r {
            Ok(name) => outcomes.push(TopicOutcome::Created(name)),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                outcomes.push(TopicOutcome::Existed(name))
            }
            Err((name, code)) => {
                return Err(BusError::kafka(
                    format!("create topic {name}"),
                    rdkafka::error::KafkaError::AdminOp(code),
                ));
            }
        }
    }
    check_partition_counts(args, layout)?;
    Ok(outcomes)
}

/// Verify that every topic has the partition count the layout expects.
pub fn check_partition_counts(args: &KafkaArgs, layout: &TopicLayout) -> Result<(), BusError> {
    let consumer: BaseConsumer = args
        .consumer_config("carbonflow-admin", "carbonflow-admin")?
        .create()
        .map_err(|e| BusError::kafka("create metadata client", e))?;
    for t in Topic::ALL {
        let name = layout.name(t);
        let found = partition_count(&consumer, &name)?;
        let expected = layout.partitions(t);
        if found != expected {
            return Err(BusError::TopicMismatch {
                topic: name,
                found: format!("{found} partitions"),
                expected: format!(
                    "{expected} partitions (co-partitioning with the other schedule-keyed topics)"
                ),
            });
        }
    }
    Ok(())
}

/// Number of partitions of `topic`; [`BusError::TopicMissing`] if it does not exist.
pub fn partition_count(consumer: &BaseConsumer, topic: &str) -> Result<i32, BusError> {
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| BusError::kafka(format!("fetch metadata of {topic}"), e))?;
    let count = md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len() as i32);
    if count == 0 {
        return Err(BusError::TopicMissing {
            topic: topic.into(),
        });
    }
    Ok(count)
}
