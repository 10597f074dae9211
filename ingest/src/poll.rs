//! Polling a forecast provider: fetch with a timeout, publish only when the forecast
//! changed, and on any failure (transport, timeout, HTTP status, unreadable answer) log
//! the reason, count it, publish nothing and retry with exponential backoff and jitter.
//! The loop never gives up; only the shutdown token stops it.

use std::collections::BTreeMap;
use std::time::Duration;

use carbonflow_schemas::bus::{BusError, KafkaArgs, RecordProducer, Topic};
use carbonflow_schemas::records::{Forecast, ForecastPoint};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_tls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::providers::{ParseError, Provider, auth_header, parse, request_path};

/// How to poll.
#[derive(Debug, Clone)]
pub struct PollSettings {
    /// Which API.
    pub provider: Provider,
    /// Base URL, e.g. `https://api.carbonintensity.org.uk`.
    pub base: String,
    /// Provider-side area (region id, zone, location).
    pub area: String,
    /// carbonflow zone the forecasts are published for.
    pub zone: String,
    /// Time between successful polls.
    pub interval: Duration,
    /// Time allowed for one request.
    pub timeout: Duration,
    /// First retry delay after a failure.
    pub backoff_initial: Duration,
    /// Largest retry delay.
    pub backoff_max: Duration,
    /// Credential (from the environment; never logged).
    pub secret: Option<String>,
}

/// Why one poll failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The request could not be made or read.
    #[error("request failed: {0}")]
    Transport(String),
    /// The API answered with an error status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The answer could not be read.
    #[error("unreadable answer: {0}")]
    Parse(#[from] ParseError),
}

impl FetchError {
    /// Bounded name of the failure class.
    pub fn kind(&self) -> &'static str {
        match self {
            FetchError::Timeout(_) => "timeout",
            FetchError::Transport(_) => "transport",
            FetchError::Status(_) => "http_status",
            FetchError::Parse(_) => "parse",
        }
    }
}

/// What a poll loop did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PollStats {
    /// Forecasts published.
    pub published: u64,
    /// Successful polls whose forecast had not changed (nothing published).
    pub unchanged: u64,
    /// Failures by class.
    pub failures: BTreeMap<&'static str, u64>,
}

type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

async fn fetch(client: &HttpsClient, s: &PollSettings) -> Result<Vec<ForecastPoint>, FetchError> {
    let url = format!(
        "{}{}",
        s.base.trim_end_matches('/'),
        request_path(&s.provider, &s.area, crate::now_ms())
    );
    let mut req = hyper::Request::get(&url).header("accept", "application/json");
    if let Some((name, value)) = s
        .secret
        .as_deref()
        .and_then(|k| auth_header(&s.provider, k))
    {
        req = req.header(name, value);
    }
    let req = req
        .body(Empty::new())
        .map_err(|e| FetchError::Transport(format!("bad URL {url}: {e}")))?;
    let work = async {
        let resp = client
            .request(req)
            .await
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| FetchError::Transport(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        Ok(parse(&s.provider, &body)?)
    };
    tokio::time::timeout(s.timeout, work)
        .await
        .map_err(|_| FetchError::Timeout(s.timeout))?
}

/// Delay before retry number `failures` (1, 2, ...): exponential, capped, with "equal
/// jitter" (a uniform draw in the upper half) so that many pollers do not retry in step.
pub fn backoff(s: &PollSettings, failures: u32, draw: f64) -> Duration {
    let exp = s
        .backoff_initial
        .saturating_mul(1_u32 << failures.saturating_sub(1).min(20));
    let capped = exp.min(s.backoff_max);
    capped.mul_f64(0.5 + 0.5 * draw.clamp(0.0, 1.0))
}

/// Poll until `shutdown`, publishing changed forecasts to `carbon.forecasts`.
pub async fn poll(
    args: &KafkaArgs,
    producer: &RecordProducer,
    s: &PollSettings,
    shutdown: &CancellationToken,
) -> Result<PollStats, BusError> {
    let client: HttpsClient = Client::builder(TokioExecutor::new()).build(HttpsConnector::new());
    let topic = args.layout().name(Topic::Forecasts);
    let mut rng = rand::rngs::SmallRng::seed_from_u64(crate::now_ms() as u64);
    let mut stats = PollStats::default();
    let mut last: Option<Vec<ForecastPoint>> = None;
    let mut failures_in_row = 0_u32;
    while !shutdown.is_cancelled() {
        let wait = match fetch(&client, s).await {
            Ok(points) => {
                failures_in_row = 0;
                if last.as_ref() == Some(&points) {
                    stats.unchanged += 1;
                    tracing::debug!(provider = ?s.provider, "forecast unchanged; nothing published");
                } else {
                    let f = Forecast {
                        zone: s.zone.clone(),
                        issuer: format!("{:?}:{}", s.provider, s.area),
                        issued_at_ms: crate::now_ms(),
                        points: points.clone(),
                        demand: None,
                    };
                    producer.send(&topic, &s.zone, None, &f).await?;
                    stats.published += 1;
                    tracing::info!(provider = ?s.provider, zone = %s.zone, points = points.len(), now = points[0].g_per_kwh, "forecast published");
                    last = Some(points);
                }
                s.interval
            }
            Err(e) => {
                failures_in_row += 1;
                *stats.failures.entry(e.kind()).or_default() += 1;
                let delay = backoff(s, failures_in_row, rng.random());
                tracing::warn!(provider = ?s.provider, reason = %e, kind = e.kind(), retry_in_ms = delay.as_millis() as u64, failures_in_row, "forecast poll failed; nothing published");
                delay
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_in_the_upper_half() {
        let s = PollSettings {
            provider: Provider::UkNational,
            base: String::new(),
            area: String::new(),
            zone: "GB".into(),
            interval: Duration::from_secs(60),
            timeout: Duration::from_secs(2),
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            secret: None,
        };
        assert_eq!(backoff(&s, 1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(&s, 3, 1.0), Duration::from_secs(4));
        assert_eq!(backoff(&s, 10, 1.0), Duration::from_secs(30));
        assert_eq!(backoff(&s, 10, 0.0), Duration::from_secs(15));
    }
}
