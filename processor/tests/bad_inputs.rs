//! Bad input never reaches state, through the real broker: records a foreign client
//! writes with our schemas (a plain rdkafka producer with librdkafka's default
//! partitioner, not carbonflow's producer) are refused with their reason, and the
//! schedule's decisions stay exactly what they were.

mod common;

use std::time::Duration;

use carbonflow_schemas::bus::{KafkaArgs, Topic};
use carbonflow_schemas::records::{
    ConfigRejection, DeadLetter, Forecast, ScheduleConfig, ScheduleDecision,
};
use carbonflow_schemas::service::now_ms;
use carbonflow_schemas::testing::{fresh_layout, samples};
use carbonflow_schemas::topics::partition_of;
use carbonflow_schemas::{AvroRecord, decode, encode};
use common::{ProcessorProcess, eventually, read_all};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const SCHEDULE: &str = "shop/checkout";
const PARTITIONS: i32 = 4;

/// A producer as a third-party publisher would configure it: nothing but the brokers.
fn foreign_producer(args: &KafkaArgs) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .create()
        .expect("a plain rdkafka producer")
}

async fn write<T: AvroRecord>(
    producer: &FutureProducer,
    args: &KafkaArgs,
    topic: Topic,
    key: &str,
    partition: Option<i32>,
    record: &T,
) {
    let name = args.layout().name(topic);
    let payload = encode(record).expect("encodes");
    let mut r = FutureRecord::to(&name).key(key).payload(&payload);
    if let Some(p) = partition {
        r = r.partition(p);
    }
    producer
        .send(r, Duration::from_secs(10))
        .await
        .unwrap_or_else(|(e, _)| panic!("writing to {name}: {e}"));
}

fn config() -> ScheduleConfig {
    let mut c = samples::schedule_config();
    c.schedule = SCHEDULE.into();
    c.config_version = 1;
    c.published_at_ms = now_ms();
    c.zone = "GB".into();
    c
}

fn forecast(zone: &str, at_ms: i64, first: f64) -> Forecast {
    samples::forecast_from(zone, "third-party", at_ms, 600_000, &[first, 200.0, 220.0])
}

fn decisions(args: &KafkaArgs, home: i32) -> Vec<ScheduleDecision> {
    read_all(args, Topic::Decisions, home)
        .into_iter()
        .filter_map(|(_, _, payload)| decode(&payload?).ok())
        .filter(|d: &ScheduleDecision| d.schedule == SCHEDULE)
        .collect()
}

/// Write a good forecast for GB starting at `g_per_kwh` and wait for the decision on it.
async fn decide_on_forecast(
    producer: &FutureProducer,
    args: &KafkaArgs,
    home: i32,
    g_per_kwh: f64,
) -> ScheduleDecision {
    let f = forecast("GB", now_ms(), g_per_kwh);
    write(producer, args, Topic::Forecasts, "GB", None, &f).await;
    eventually(
        &format!("a decision on the forecast at {g_per_kwh} g/kWh"),
        Duration::from_secs(30),
        || async {
            decisions(args, home)
                .into_iter()
                .rfind(|d| intensity_now(d) == Some(g_per_kwh))
        },
    )
    .await
}

fn intensity_now(d: &ScheduleDecision) -> Option<f64> {
    d.provenance.forecast.as_ref().and_then(|f| f.intensity_now)
}

#[tokio::test]
async fn bad_records_from_a_foreign_producer_are_refused_and_change_no_decision() {
    let args = fresh_layout("badinput", PARTITIONS).await;
    let home = partition_of(SCHEDULE.as_bytes(), PARTITIONS).expect("partitions");
    let processor = ProcessorProcess::start(&args, 0, 1, &[]);
    processor.wait_ready(Duration::from_secs(60)).await;
    let producer = foreign_producer(&args);

    // Given a schedule following a good forecast.
    write(
        &producer,
        &args,
        Topic::Config,
        SCHEDULE,
        Some(home),
        &config(),
    )
    .await;
    let before = decide_on_forecast(&producer, &args, home, 180.0).await;

    // When a foreign client writes each bad record of the issue.
    let mut nan = forecast("GB", now_ms(), 180.0);
    nan.points[0].g_per_kwh = f64::NAN;
    write(&producer, &args, Topic::Forecasts, "GB", None, &nan).await;
    let in_2030 = forecast("XX", 1_893_456_000_000, 180.0);
    write(&producer, &args, Topic::Forecasts, "XX", None, &in_2030).await;
    let huge = forecast("GB", now_ms(), 1e308);
    write(&producer, &args, Topic::Forecasts, "GB", None, &huge).await;
    let mut forever = samples::manual_override();
    forever.schedule = SCHEDULE.into();
    forever.issued_at_ms = now_ms();
    forever.ttl_seconds = 100_000_000_000_000_000;
    write(
        &producer,
        &args,
        Topic::Config,
        SCHEDULE,
        Some(home),
        &forever,
    )
    .await;
    let mut elsewhere = samples::telemetry_bucket();
    elsewhere.schedule = SCHEDULE.into();
    elsewhere.bucket_start_ms = now_ms() - now_ms().rem_euclid(1000);
    let wrong = (home + 1) % PARTITIONS;
    write(
        &producer,
        &args,
        Topic::Telemetry,
        SCHEDULE,
        Some(wrong),
        &elsewhere,
    )
    .await;

    let name = args.layout().name(Topic::Forecasts);
    let huge_record = vec![0xC3_u8; 600_000];
    producer
        .send(
            FutureRecord::to(&name).key("GB").payload(&huge_record),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("writing a 600 kB record: {e}"));

    // Then each is refused with its reason...
    let letters: Vec<DeadLetter> =
        eventually("five dead letters", Duration::from_secs(30), || async {
            let letters: Vec<DeadLetter> = read_all(&args, Topic::DeadLetters, 0)
                .into_iter()
                .filter_map(|(_, _, payload)| decode(&payload?).ok())
                .collect();
            (letters.len() >= 5).then_some(letters)
        })
        .await;
    let reasons: Vec<(String, String)> = letters
        .iter()
        .map(|l| (l.error_kind.clone(), l.reason.clone()))
        .collect();
    let has = |kind: &str, text: &str| reasons.iter().any(|(k, r)| k == kind && r.contains(text));
    assert!(
        has("implausible", "points[0].g_per_kwh") && has("implausible", "NaN"),
        "{reasons:?}"
    );
    assert!(
        has("implausible", "1e308") || has("implausible", "100000000"),
        "{reasons:?}"
    );
    assert!(has("future_dated", "issued_at_ms"), "{reasons:?}");
    assert!(
        has("wrong_partition", &format!("partition {home}")),
        "{reasons:?}"
    );
    let oversized = letters
        .iter()
        .find(|l| l.error_kind == "too_large")
        .expect("the oversized record is dead-lettered");
    assert_eq!(
        oversized.payload.as_ref().map(Vec::len),
        Some(64 * 1024),
        "with a truncated copy"
    );
    assert!(
        oversized.reason.contains("600000 bytes"),
        "{}",
        oversized.reason
    );
    eventually(
        "the override's TTL refused on schedule.rejections",
        Duration::from_secs(30),
        || async {
            read_all(&args, Topic::Rejections, home)
                .into_iter()
                .filter_map(|(_, _, payload)| decode::<ConfigRejection>(&payload?).ok())
                .find(|r| r.reasons.iter().any(|p| p.field == "ttl_seconds"))
        },
    )
    .await;

    // ... no decision changed ...
    let after = decisions(&args, home);
    let last = after.last().expect("decisions");
    assert_eq!(
        (last.version, &last.flavours, last.valid_until_ms),
        (before.version, &before.flavours, before.valid_until_ms),
        "the last decision is the one made before the bad records"
    );
    assert!(!last.manual);

    // ... and the real forecasts of the zone still apply.
    let next = decide_on_forecast(&producer, &args, home, 300.0).await;
    assert!(next.version > before.version);
    assert!(
        next.valid_until_ms <= now_ms() + 3_600_000,
        "validity stays within the hour, got {}",
        next.valid_until_ms
    );
    let state = common::http(
        "GET",
        &format!("{}/schedule/{SCHEDULE}/state", processor.admin),
        None,
    )
    .await;
    assert_eq!(state.0, 200, "the schedule is still served: {:?}", state.1);
}
