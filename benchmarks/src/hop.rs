//! The broker's own produce → consume latency for one hop, measured with carbonflow's
//! client settings (the yardstick of the propagation target).

use std::time::Duration;

use anyhow::Context;
use carbonflow_schemas::bus::{KafkaArgs, RecordProducer, Topic};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

/// `samples` one-hop latencies in ms: each record is produced with its send time as
/// timestamp and measured when our consumer receives it. `topic` must be one nothing
/// else writes during the benchmark (dead letters: 1 partition; rejections: as many as
/// the schedule topics, which is what a router's consumer reads); the consumer is
/// assigned every partition of it, as the routers are.
pub async fn one_hop_ms(
    args: &KafkaArgs,
    producer: &RecordProducer,
    topic: Topic,
    samples: usize,
) -> anyhow::Result<Vec<f64>> {
    let partitions = args.layout().partitions(topic);
    let topic = args.layout().name(topic);
    let consumer: StreamConsumer = args
        .consumer_config("hop-benchmark", "hop-benchmark")?
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(&topic, p, Duration::from_secs(10))?;
        tpl.add_partition_offset(&topic, p, Offset::Offset(high))?;
    }
    consumer.assign(&tpl)?;
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let t0 = super::now_ms();
        let key = format!("hop-{i}");
        producer
            .send_bytes(&topic, key.as_bytes(), Some(0), b"hop", Some(t0))
            .await?;
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), consumer.recv())
                .await
                .context("waiting for the hop record")??;
            if m.key() == Some(key.as_bytes()) {
                out.push((super::now_ms() - t0) as f64);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(out)
}
