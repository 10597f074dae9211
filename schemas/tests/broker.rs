//! Through the real broker: every record type is produced with the project's codec and
//! consumed back equal field by field; topics are created idempotently with the layout's
//! partition counts; consumer-lag series follow assignment.

use std::time::Duration;

use carbonflow_schemas::bus::admin::{TopicOutcome, ensure_topics};
use carbonflow_schemas::bus::{LagContext, LagMetrics, RecordProducer, Topic};
use carbonflow_schemas::records::*;
use carbonflow_schemas::testing::{fresh_layout, samples};
use carbonflow_schemas::{AvroRecord, decode};
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

async fn read_one<T: AvroRecord>(consumer: &StreamConsumer, topic: &str, partition: i32) -> T {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    let msg = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
        .await
        .unwrap_or_else(|_| panic!("no record on {topic}/{partition} within 20 s"))
        .expect("consume");
    assert_eq!(msg.topic(), topic);
    decode(msg.payload().expect("payload")).unwrap_or_else(|e| panic!("decode from {topic}: {e}"))
}

#[tokio::test]
async fn every_record_type_survives_the_broker() {
    let args = fresh_layout("roundtrip", 3).await;
    let layout = args.layout();
    let producer = RecordProducer::new(&args, "test-producer").expect("producer");
    let consumer: StreamConsumer = args
        .consumer_config("test-consumer", "test-roundtrip")
        .expect("cfg")
        .create()
        .expect("consumer");

    macro_rules! check {
        ($topic:expr, $sample:expr, $ty:ty) => {{
            let topic = layout.name($topic);
            let sample = $sample;
            let d = producer
                .send(&topic, "default/demo", Some(1), &sample)
                .await
                .expect("produce");
            assert_eq!(d.partition, 1);
            let back: $ty = read_one(&consumer, &topic, d.partition).await;
            assert_eq!(back, sample, "record read back from {topic} differs");
        }};
    }
    check!(Topic::Config, samples::schedule_config(), ScheduleConfig);
    check!(
        Topic::Telemetry,
        samples::telemetry_bucket(),
        TelemetryBucket
    );
    check!(
        Topic::Decisions,
        samples::schedule_decision(),
        ScheduleDecision
    );
    check!(Topic::Ticks, samples::tick(), Tick);
    check!(
        Topic::Rejections,
        samples::config_rejection(),
        ConfigRejection
    );
    check!(Topic::Journal, samples::manual_override(), ManualOverride);
    check!(
        Topic::Snapshots,
        samples::schedule_deletion(),
        ScheduleDeletion
    );

    // Single-partition topics.
    for (topic, bytes) in [
        (
            Topic::Forecasts,
            carbonflow_schemas::encode(&samples::forecast()).expect("e"),
        ),
        (
            Topic::DeadLetters,
            carbonflow_schemas::encode(&samples::dead_letter()).expect("e"),
        ),
    ] {
        let name = layout.name(topic);
        producer
            .send_bytes(&name, b"GB", None, &bytes, None)
            .await
            .expect("produce");
    }
    let f: Forecast = read_one(&consumer, &layout.name(Topic::Forecasts), 0).await;
    assert_eq!(f, samples::forecast());
    let d: DeadLetter = read_one(&consumer, &layout.name(Topic::DeadLetters), 0).await;
    assert_eq!(d, samples::dead_letter());

    // Several types on one topic, in order, told apart by fingerprint.
    let topic = layout.name(Topic::Config);
    let cmds = [
        ConfigCommand::Override(samples::manual_override()),
        ConfigCommand::Delete(samples::schedule_deletion()),
        ConfigCommand::CancelOverride(samples::override_cancellation()),
    ];
    for c in &cmds {
        producer
            .send_bytes(
                &topic,
                b"default/demo",
                Some(2),
                &c.encode().expect("e"),
                None,
            )
            .await
            .expect("produce");
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 2, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    for expected in &cmds {
        let msg = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("in time")
            .expect("msg");
        assert_eq!(
            &ConfigCommand::decode(msg.payload().expect("payload")).expect("decode"),
            expected
        );
    }
}

#[tokio::test]
async fn topic_creation_is_idempotent_and_partitioned_as_laid_out() {
    let args = fresh_layout("topics", 4).await;
    let layout = args.layout();
    let again = ensure_topics(&args, &layout, 1)
        .await
        .expect("second creation succeeds");
    assert_eq!(again.len(), Topic::ALL.len());
    assert!(
        again.iter().all(|o| matches!(o, TopicOutcome::Existed(_))),
        "{again:?}"
    );

    let consumer: BaseConsumer = args
        .consumer_config("meta", "meta")
        .expect("cfg")
        .create()
        .expect("c");
    for t in Topic::ALL {
        let n = carbonflow_schemas::bus::admin::partition_count(&consumer, &layout.name(t))
            .expect("metadata");
        assert_eq!(n, layout.partitions(t), "{}", layout.name(t));
    }

    // A layout asking for another partition count is refused, naming the topic.
    let mut other = args.clone();
    other.schedule_partitions = 2;
    let err = ensure_topics(&other, &other.layout(), 1)
        .await
        .expect_err("mismatch");
    assert!(err.to_string().contains("partitions"), "{err}");

    // Topics that were never created are named as missing, with how to create them.
    let mut missing = args.clone();
    missing.topic_prefix = format!("{}never.", args.topic_prefix);
    let err = carbonflow_schemas::bus::admin::check_partition_counts(&missing, &missing.layout())
        .expect_err("no topics");
    let text = err.to_string();
    assert!(
        text.contains("does not exist") && text.contains("ingest topics create"),
        "{text}"
    );
}

#[tokio::test]
async fn lag_series_follow_assignment() {
    let mut args = fresh_layout("lag", 2).await;
    args.options.push("statistics.interval.ms=200".into());
    let topic = args.layout().name(Topic::Telemetry);
    let producer = RecordProducer::new(&args, "lag-producer").expect("producer");
    for _ in 0..10 {
        producer
            .send(&topic, "default/demo", Some(0), &samples::tick())
            .await
            .expect("produce");
    }

    let lag = LagMetrics::new();
    let ctx = LagContext::new("lag-group", lag.clone());
    let consumer: StreamConsumer<LagContext> = args
        .consumer_config("lag-consumer", "lag-group")
        .expect("cfg")
        .create_with_context(ctx.clone())
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, Offset::Beginning)
        .expect("tpl");
    consumer.assign(&tpl).expect("assign");
    ctx.assigned(&tpl);

    let handle = lag.get("lag-group", &topic, 0).expect("tracked");
    for _ in 0..4 {
        let m = tokio::time::timeout(Duration::from_secs(20), consumer.recv())
            .await
            .expect("in time")
            .expect("msg");
        handle.processed(m.timestamp().to_millis().expect("timestamp"));
    }
    // Stop fetching so exactly 6 records stay unread, and keep polling so librdkafka
    // serves its statistics callbacks (every 200 ms here).
    consumer.pause(&tpl).expect("pause");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while handle.messages() != Some(6) {
        let _ = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag should reach 6 unread records from statistics, last seen {:?}",
            handle.messages()
        );
    }
    let text = lag.render(i64::MAX / 2);
    assert!(
        text.contains(&format!(
            "carbonflow_consumer_lag_messages{{group=\"lag-group\",topic=\"{topic}\",partition=\"0\"}}"
        )),
        "{text}"
    );

    ctx.revoked(&tpl);
    assert!(
        !lag.render(0).contains(&topic),
        "revoked partition still reported"
    );
}

/// Regression: the local broker deletes every record of a topic created with
/// `retention.ms=-1` (and resets its offsets) about a minute after the first write. The
/// journal and the configs are kept "forever"; they must survive the broker's sweep.
#[tokio::test]
async fn topics_kept_forever_survive_the_brokers_retention_sweep() {
    let args = fresh_layout("forever", 1).await;
    let layout = args.layout();
    let producer = RecordProducer::new(&args, "forever-test").expect("producer");
    let kept = [Topic::Journal, Topic::Config];
    for t in kept {
        for _ in 0..3 {
            producer
                .send_bytes(&layout.name(t), b"k", Some(0), b"v", None)
                .await
                .expect("send");
        }
    }
    let consumer: BaseConsumer = args
        .consumer_config("forever-test", "forever-test")
        .expect("config")
        .create()
        .expect("consumer");
    // tansu sweeps about once a minute; wait through at least one sweep.
    tokio::time::sleep(Duration::from_secs(75)).await;
    for t in kept {
        let (low, high) = consumer
            .fetch_watermarks(&layout.name(t), 0, Duration::from_secs(10))
            .expect("watermarks");
        assert_eq!((low, high), (0, 3), "{:?} lost records to retention", t);
    }
}

#[tokio::test]
async fn keyed_records_land_on_the_partition_that_partition_of_computes() {
    let args = fresh_layout("keys", 6).await;
    let layout = args.layout();
    let producer = RecordProducer::new(&args, "keys").expect("producer");
    let topic = layout.name(Topic::Config);
    for i in 0..40 {
        let key = format!("ns-{i}/schedule-{}", i * 7);
        let d = producer
            .send_bytes(&topic, key.as_bytes(), None, b"x", None)
            .await
            .expect("delivered");
        assert_eq!(
            Some(d.partition),
            carbonflow_schemas::topics::partition_of(key.as_bytes(), layout.schedule_partitions),
            "{key}"
        );
    }
}
