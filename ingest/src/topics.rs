//! `ingest topics`: create carbonflow's topics and show what exists.

use carbonflow_schemas::bus::admin::{TopicOutcome, ensure_topics};
use carbonflow_schemas::bus::{KafkaArgs, Topic};

/// Create every topic (idempotent) and return one line per topic for the user.
pub async fn create(
    args: &KafkaArgs,
    replication: i32,
) -> Result<Vec<String>, carbonflow_schemas::bus::BusError> {
    let layout = args.layout();
    let outcomes = ensure_topics(args, &layout, replication).await?;
    Ok(outcomes
        .into_iter()
        .map(|o| {
            let (verb, name) = match o {
                TopicOutcome::Created(n) => ("created", n),
                TopicOutcome::Existed(n) => ("exists ", n),
            };
            let topic = layout.topic_of(&name);
            let detail = topic.map_or(String::new(), |t| {
                format!("{} partition(s), {:?}", layout.partitions(t), t.cleanup())
            });
            format!("{verb} {name:<40} {detail}")
        })
        .collect())
}

/// Names of all topics of the layout.
pub fn names(args: &KafkaArgs) -> Vec<String> {
    let layout = args.layout();
    Topic::ALL.iter().map(|&t| layout.name(t)).collect()
}
