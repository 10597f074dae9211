//! GETs for the programs here, through the harness's one HTTP client
//! ([`carbonflow_schemas::testing::send`]); what is added here is the benchmarks' own
//! 5 s limit and the shapes their callers read.

use std::time::Duration;

use carbonflow_schemas::testing::send;
pub use carbonflow_schemas::testing::{HttpClient, http_client as client};
use hyper::body::Bytes;

/// GET `url`: status, the `x-carbonflow-flavour` header, body. `None` if unreachable or
/// slower than 5 s.
pub async fn get(client: &HttpClient, url: &str) -> Option<(u16, Option<String>, Bytes)> {
    // A bound, so a stalled router costs a benchmark one sample, not its run.
    let r = tokio::time::timeout(Duration::from_secs(5), send(client, "GET", url, &[], None))
        .await
        .ok()?
        .ok()?;
    Some((r.status, r.flavour, r.body))
}

/// GET a JSON document (200 only) with a process-wide pooled client.
pub async fn get_json(url: &str) -> Option<serde_json::Value> {
    static CLIENT: std::sync::OnceLock<HttpClient> = std::sync::OnceLock::new();
    let (status, _, body) = get(CLIENT.get_or_init(client), url).await?;
    (status == 200).then(|| serde_json::from_slice(&body).ok())?
}

/// GET a text document (any status; empty when unreachable).
pub async fn get_text(client: &HttpClient, url: &str) -> String {
    get(client, url)
        .await
        .map(|(_, _, b)| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
