//! Forecast adapters against a local HTTP server serving recorded answers, good and bad,
//! publishing to the real broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use carbonflow_ingest::poll::{PollSettings, poll};
use carbonflow_ingest::providers::Provider;
use carbonflow_schemas::bus::{RecordProducer, Topic};
use carbonflow_schemas::records::Forecast;
use carbonflow_schemas::testing::{eventually, fresh_layout, read_all};
use tokio_util::sync::CancellationToken;

/// A recorded answer of `provider` in its documented format whose first point is `g`
/// (in the provider's unit).
fn answer(provider: &Provider, g: f64) -> String {
    match provider {
        Provider::UkNational => format!(
            r#"{{"data": [{{"from": "2025-11-18T12:00Z", "to": "2025-11-18T12:30Z", "intensity": {{"forecast": {g}, "actual": null, "index": "moderate"}}}},
                {{"from": "2025-11-18T12:30Z", "to": "2025-11-18T13:00Z", "intensity": {{"forecast": 250, "index": "high"}}}}]}}"#
        ),
        Provider::UkRegional => format!(
            r#"{{"data": [{{"regionid": 13, "dnoregion": "UKPN London", "shortname": "London", "data": [
                {{"from": "2025-11-18T12:00Z", "to": "2025-11-18T12:30Z", "intensity": {{"forecast": {g}, "index": "low"}}, "generationmix": []}}]}}]}}"#
        ),
        Provider::ElectricityMaps => format!(
            r#"{{"zone": "DE", "forecast": [{{"carbonIntensity": {g}, "datetime": "2025-11-18T12:00:00.000Z"}},
                {{"carbonIntensity": 301, "datetime": "2025-11-18T13:00:00.000Z"}}], "updatedAt": "2025-11-18T11:00:00.000Z"}}"#
        ),
        Provider::Watttime => format!(
            r#"{{"data": [{{"point_time": "2025-11-18T12:00:00+00:00", "value": {g}, "version": "2025-10-01"}}],
                "meta": {{"region": "CAISO_NORTH", "signal_type": "co2_moer", "units": "lbs_co2_per_mwh", "data_point_period_seconds": 300, "generated_at": "2025-11-18T11:55:00+00:00"}}}}"#
        ),
        Provider::CarbonAwareSdk => format!(
            r#"[{{"generatedAt": "2025-11-18T11:55:00+00:00", "requestedAt": "2025-11-18T11:56:00+00:00", "location": "eastus", "windowSize": 5,
                "optimalDataPoints": [], "forecastData": [{{"location": "eastus", "timestamp": "2025-11-18T12:00:00+00:00", "duration": 5, "value": {g}}}]}}]"#
        ),
    }
}

fn in_g_per_kwh(provider: &Provider, g: f64) -> f64 {
    match provider {
        Provider::Watttime => g * carbonflow_ingest::providers::G_PER_KWH_PER_LBS_PER_MWH,
        _ => g,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_adapter_survives_bad_answers_and_publishes_only_changes() {
    for provider in [
        Provider::UkNational,
        Provider::UkRegional,
        Provider::ElectricityMaps,
        Provider::Watttime,
        Provider::CarbonAwareSdk,
    ] {
        exercise(provider).await;
    }
}

async fn exercise(provider: Provider) {
    let args = fresh_layout("adapter", 1).await;
    let (good, changed) = (answer(&provider, 266.0), answer(&provider, 180.0));
    // The recorded answers, served in order: HTTP 500, non-JSON, a missing field, a
    // timeout, a good forecast, the same again, then a changed one (and that one after).
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let app = axum::Router::new().fallback(move || {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        let (good, changed) = (good.clone(), changed.clone());
        async move {
            match n {
                0 => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
                1 => (StatusCode::OK, "<html>maintenance</html>").into_response(),
                // Valid JSON without the fields the format requires.
                2 => (
                    StatusCode::OK,
                    r#"{"data": {"unexpected": true}, "forecast": [{}]}"#,
                )
                    .into_response(),
                3 => {
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    (StatusCode::OK, good).into_response()
                }
                4 | 5 => (StatusCode::OK, good).into_response(),
                _ => (StatusCode::OK, changed).into_response(),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let settings = PollSettings {
        provider: provider.clone(),
        base,
        area: String::new(),
        zone: "GB".into(),
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(300),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        secret: None,
    };
    let producer = RecordProducer::new(&args, "adapter-test").expect("producer");
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let watcher = served.clone();
    tokio::spawn(async move {
        eventually("eight answers served", Duration::from_secs(30), || async {
            (watcher.load(Ordering::SeqCst) >= 8).then_some(())
        })
        .await;
        stop.cancel();
    });
    let stats = poll(&args, &producer, &settings, &shutdown)
        .await
        .expect("poll");

    let p = &provider;
    assert_eq!(
        stats.failures.get("http_status"),
        Some(&1),
        "{p:?}: {stats:?}"
    );
    assert_eq!(stats.failures.get("parse"), Some(&2), "{stats:?}");
    assert_eq!(stats.failures.get("timeout"), Some(&1), "{stats:?}");
    assert_eq!(
        stats.published, 2,
        "only changed forecasts are published: {stats:?}"
    );
    assert!(stats.unchanged >= 2, "{stats:?}");
    let published: Vec<Forecast> = read_all(&args, Topic::Forecasts, 0)
        .into_iter()
        .filter_map(|(_, _, p)| carbonflow_schemas::decode(&p?).ok())
        .collect();
    assert_eq!(published.len(), 2, "{p:?}");
    assert!((published[0].points[0].g_per_kwh - in_g_per_kwh(p, 266.0)).abs() < 1e-9);
    assert!((published[1].points[0].g_per_kwh - in_g_per_kwh(p, 180.0)).abs() < 1e-9);
}
