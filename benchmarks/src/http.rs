//! A small HTTP GET client for the programs here (hyper, the stack the routers use).

use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Pooled plain-HTTP client.
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A new pooled client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET `url`: status, the `x-carbonflow-flavour` header, body. `None` if unreachable or
/// slower than 5 s.
pub async fn get(client: &HttpClient, url: &str) -> Option<(u16, Option<String>, Bytes)> {
    let req = hyper::Request::get(url).body(Empty::new()).ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .ok()?
        .ok()?;
    let status = resp.status().as_u16();
    let flavour = resp
        .headers()
        .get("x-carbonflow-flavour")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, flavour, body))
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
