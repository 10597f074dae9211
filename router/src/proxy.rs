//! The data plane: pick a flavour for each request from the schedule's decision, forward
//! it to that flavour's upstream, retry once on a fallback flavour when a rule matches,
//! and count the outcome for telemetry.
//!
//! Errors the router itself produces are JSON bodies naming the problem (`error`, and
//! `detail` or the values involved); errors of an upstream are passed through unchanged.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::uri::PathAndQuery;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use carbonflow_schemas::records::Outcome;
use carbonflow_schemas::upstream::AllowList;
use carbonflow_schemas::vocabulary::AttemptResult;
use http_body_util::{BodyExt, Either, Full, LengthLimitError, Limited};
use hyper::body::Bytes;
use hyper::body::{Body as _, Incoming};
use hyper_tls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::metrics;
use crate::resolve::CheckedResolver;
use crate::select::Mode;
use crate::served::Served;
use crate::table::{DecisionTable, Route};
use crate::telemetry::Telemetry;
use crate::upstream::{ResponseBody, SendError, UpstreamBody, Upstreams};

/// Time an upstream connection is kept unused before it is closed.
pub const UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

// Header names are built once: a name given as a string is parsed on every use.
/// Header naming the schedule a request belongs to (when the router serves several).
static SCHEDULE_HEADER: HeaderName = HeaderName::from_static("x-carbonflow-schedule");
/// Header forcing a flavour by name (the reference's `x-carbonrouter`).
static FORCE_HEADER: HeaderName = HeaderName::from_static("x-carbonrouter");
/// Response header naming the flavour that served the request.
static SERVED_BY_HEADER: HeaderName = HeaderName::from_static("x-carbonflow-flavour");
/// Response header carrying the decision version used.
static VERSION_HEADER: HeaderName = HeaderName::from_static("x-carbonflow-decision-version");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// How the proxy behaves.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// How requests are spread over the flavours when none is forced.
    pub mode: Mode,
    /// The schedules served (with one, requests without an `x-carbonflow-schedule`
    /// header are for it).
    pub served: Served,
    /// Clients may force a flavour with `x-carbonrouter`.
    pub allow_forced_flavour: bool,
    /// Where upstreams may be; a decision naming another is not followed there.
    pub upstreams: AllowList,
    /// Time allowed for an upstream's response headers.
    pub request_timeout: Duration,
    /// Largest request body accepted (buffered when a fallback rule could resend it,
    /// streamed to the upstream otherwise).
    pub max_body_bytes: usize,
    /// Time past `valid_until` before the expiry behaviour applies, ms.
    pub expiry_grace_ms: i64,
    /// Retry non-idempotent methods (POST, PATCH) on a fallback flavour too.
    pub retry_non_idempotent: bool,
    /// Time a client has to send a request's body, when it is buffered.
    pub body_read_timeout: Duration,
}

/// Shared state of the proxy handler.
pub struct Proxy {
    table: Arc<DecisionTable>,
    telemetry: Arc<Telemetry>,
    upstreams: Upstreams,
    settings: ProxySettings,
    /// Seeded from the router id or `--seed` and the worker: routers and workers draw
    /// different sequences, and a run can be repeated. One proxy per worker thread, so
    /// the lock is never contended.
    rng: Mutex<SmallRng>,
}

impl Proxy {
    /// A proxy whose upstream connections (`connect_timeout` per attempt) speak plain
    /// HTTP or, to `https://` upstreams, TLS through `tls`.
    pub fn new(
        table: Arc<DecisionTable>,
        telemetry: Arc<Telemetry>,
        settings: ProxySettings,
        connect_timeout: Duration,
        tls: tokio_native_tls::TlsConnector,
        seed: u64,
    ) -> Self {
        let resolver = CheckedResolver::new(Arc::new(settings.upstreams.clone()));
        let mut connector = HttpConnector::new_with_resolver(resolver);
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        // The TLS layer needs the https:// URIs passed through to it.
        connector.enforce_http(false);
        Self {
            table,
            telemetry,
            upstreams: Upstreams::new(
                HttpsConnector::from((connector, tls)),
                UPSTREAM_IDLE_TIMEOUT,
            ),
            settings,
            rng: Mutex::new(SmallRng::seed_from_u64(seed)),
        }
    }

    /// Close the upstream connections left idle for longer than the idle timeout.
    pub fn close_idle_upstreams(&self) {
        self.upstreams.close_expired();
    }

    fn draw(&self) -> f64 {
        self.rng
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .random::<f64>()
    }
}

impl Proxy {
    /// Handle one request from `peer`: every path and method is proxied, so the listener
    /// calls this directly, with no router in between.
    pub(crate) async fn serve(
        self: Arc<Self>,
        peer: &Peer,
        req: hyper::Request<Incoming>,
    ) -> Response {
        handle(self, peer, req).await
    }
}

/// The client end of a connection, as its requests are forwarded.
#[derive(Debug, Clone)]
pub struct Peer {
    addr: SocketAddr,
    /// The address as an `x-forwarded-for` value, formatted once per connection.
    ip: HeaderValue,
}

impl Peer {
    /// The peer at `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::from_str(&addr.ip().to_string())
            .expect("an IP address is a valid header value");
        Self { addr, ip }
    }
}

/// A response as the proxy sends it: the upstream's body passed through as it arrives,
/// or the router's own JSON.
pub(crate) type Response = hyper::Response<Either<ResponseBody, Full<Bytes>>>;

/// The router's own answer: `status` with the JSON `body`.
fn error(status: StatusCode, body: serde_json::Value) -> Response {
    let mut response =
        hyper::Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Why an attempt produced no upstream response.
#[derive(Debug)]
enum Failure {
    Timeout,
    Connect(String),
    /// The upstream is outside the router's `--allow-upstream` list.
    NotAllowed(String),
    /// A streamed request body went over `--max-body-bytes`.
    BodyTooLarge,
    Other(String),
}

impl Failure {
    fn condition(&self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Connect(_) => "connect_error",
            Failure::NotAllowed(_) => "not_allowed",
            Failure::BodyTooLarge => "body_too_large",
            Failure::Other(_) => "error",
        }
    }
}

/// How `result` ended, as fallback conditions see it.
fn attempt_result(result: &Result<hyper::Response<ResponseBody>, Failure>) -> AttemptResult {
    match result {
        Ok(r) => AttemptResult::Answered(r.status().as_u16()),
        Err(Failure::Timeout) => AttemptResult::TimedOut,
        Err(Failure::Connect(_)) => AttemptResult::Unreachable,
        Err(Failure::NotAllowed(_) | Failure::BodyTooLarge | Failure::Other(_)) => {
            AttemptResult::Failed
        }
    }
}

fn failed(result: &Result<hyper::Response<ResponseBody>, Failure>) -> bool {
    match result {
        Ok(r) => r.status().is_client_error() || r.status().is_server_error(),
        Err(_) => true,
    }
}

fn outcome_of(result: &Result<hyper::Response<ResponseBody>, Failure>) -> Outcome {
    match result {
        Ok(r) if r.status().is_server_error() => Outcome::ServerError,
        Ok(r) if r.status().is_client_error() => Outcome::ClientError,
        Ok(_) => Outcome::Success,
        Err(Failure::Timeout) => Outcome::Timeout,
        Err(Failure::BodyTooLarge) => Outcome::ClientError,
        Err(_) => Outcome::ServerError,
    }
}

/// Whether `name` is a hop-by-hop header (RFC 9110 §7.6.1), not forwarded by a proxy.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ]
    .contains(&name)
}

/// Remove hop-by-hop headers (RFC 9110 §7.6.1), including those named in `Connection`.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none: one pass over their few names finds that out, where a
    // removal per hop-by-hop name would hash and probe the map eight times.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let mut named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    named.extend(headers.keys().filter(|n| is_hop_by_hop(n)).cloned());
    for n in named {
        headers.remove(n);
    }
}

/// What is sent upstream for one attempt.
struct Outgoing {
    method: Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
    body: UpstreamBody,
}

/// Whether `e`, or an error it was caused by, is a body over its size limit.
fn body_too_large(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

async fn attempt(
    proxy: &Proxy,
    route: &Route,
    flavour: usize,
    out: Outgoing,
) -> Result<hyper::Response<ResponseBody>, Failure> {
    // Defence in depth: the processor checks configs, but a decision written to the
    // topic by anyone else must not send traffic anywhere either.
    if let Some(refusal) = route.upstream_refusal(flavour) {
        return Err(Failure::NotAllowed(refusal.to_string()));
    }
    let upstream = &route.upstreams[flavour];
    let target = upstream
        .target
        .as_ref()
        .map_err(|e| Failure::Other(e.clone()))?;
    let uri = target
        .request_uri(&out.path_and_query)
        .map_err(Failure::Other)?;
    let mut req = hyper::Request::new(out.body);
    *req.method_mut() = out.method;
    *req.uri_mut() = uri;
    *req.headers_mut() = out.headers;
    req.headers_mut().insert(header::HOST, target.host.clone());
    if let Some((name, value)) = &upstream.mesh_header {
        // Service-mesh mode: one upstream, the flavour named by its precision percent.
        req.headers_mut().insert(name.clone(), value.clone());
    }
    let sent = proxy.upstreams.send(target, req);
    match tokio::time::timeout(proxy.settings.request_timeout, sent).await {
        Err(_) => Err(Failure::Timeout),
        Ok(Ok(r)) => Ok(r),
        Ok(Err(SendError::Connect(e))) => Err(Failure::Connect(e)),
        Ok(Err(SendError::Exchange(e))) if body_too_large(&e) => Err(Failure::BodyTooLarge),
        Ok(Err(SendError::Exchange(e))) => Err(Failure::Other(format!("{}: {e}", target.origin))),
    }
}

/// A request's body as the handler holds it.
enum RequestBody {
    /// Read whole: a fallback may resend it.
    Buffered(Bytes),
    /// Passed through as it arrives.
    Streamed(Limited<Incoming>),
}

/// 413 for a body over `--max-body-bytes`.
fn body_too_large_response(proxy: &Proxy) -> Response {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        json!({"error": "body_too_large", "limit_bytes": proxy.settings.max_body_bytes,
               "detail": format!("request bodies are limited to {} bytes (--max-body-bytes)", proxy.settings.max_body_bytes)}),
    )
}

/// The handler of every proxied request.
async fn handle(proxy: Arc<Proxy>, peer: &Peer, req: hyper::Request<Incoming>) -> Response {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    let schedule = match parts
        .headers
        .get(&SCHEDULE_HEADER)
        .and_then(|v| v.to_str().ok())
        .or_else(|| proxy.settings.served.single())
    {
        Some(s) => s,
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                json!({"error": "no_schedule", "detail": format!("name the schedule in the {SCHEDULE_HEADER} header (this router serves several)")}),
            );
        }
    };
    if !proxy.settings.served.contains(schedule) {
        return error(
            StatusCode::NOT_FOUND,
            json!({"error": "schedule_not_served", "schedule": schedule, "served": proxy.settings.served.names(),
                   "detail": "this router does not serve that schedule (its --schedule list)"}),
        );
    }
    let Some(route) = proxy.table.get(schedule) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "no_decision", "schedule": schedule, "detail": "no decision has been received for this schedule"}),
        );
    };
    let now = crate::now_ms();
    let forced = parts
        .headers
        .get(&FORCE_HEADER)
        .map(|v| v.to_str().unwrap_or(""));
    if forced.is_some() && !proxy.settings.allow_forced_flavour {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"error": "forced_flavour_disabled",
                   "detail": format!("this router does not let clients pick a flavour with {FORCE_HEADER}: start it with --allow-forced-flavour to allow that")}),
        );
    }
    let chosen = match forced {
        Some(name) => match route.enabled_flavour(name) {
            Some(i) => i,
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "unknown_flavour", "flavour": name, "valid": route.enabled_names(),
                           "detail": format!("{FORCE_HEADER} must name an enabled flavour of {schedule}")}),
                );
            }
        },
        None => match route
            .picker_at(now, proxy.settings.expiry_grace_ms)
            .pick(proxy.settings.mode, || proxy.draw())
        {
            Some(i) => i,
            None => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    json!({"error": "no_providers", "schedule": schedule, "version": route.decision.version,
                           "detail": "every flavour weight is 0"}),
                );
            }
        },
    };
    let retry_allowed = parts.method.is_idempotent() || proxy.settings.retry_non_idempotent;
    // The body is buffered only when a fallback rule could resend it; otherwise it is
    // streamed to the upstream as it arrives. Most proxied requests (GET, HEAD) have
    // none: nothing to wait for.
    let resendable = retry_allowed && route.has_fallbacks();
    let declared = body.size_hint().upper();
    if declared.is_some_and(|n| n > proxy.settings.max_body_bytes as u64) {
        return body_too_large_response(&proxy);
    }
    let body: RequestBody = if body.is_end_stream() {
        RequestBody::Buffered(Bytes::new())
    } else if !resendable {
        RequestBody::Streamed(Limited::new(body, proxy.settings.max_body_bytes))
    } else {
        match tokio::time::timeout(
            proxy.settings.body_read_timeout,
            Limited::new(body, proxy.settings.max_body_bytes).collect(),
        )
        .await
        {
            Ok(Ok(b)) => RequestBody::Buffered(b.to_bytes()),
            Ok(Err(_)) => return body_too_large_response(&proxy),
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    json!({"error": "body_timeout", "timeout_ms": proxy.settings.body_read_timeout.as_millis() as u64,
                           "detail": "the request body did not arrive in time"}),
                );
            }
        }
    };
    // From here on the schedule's name is the route's, so the request's headers can be
    // taken for forwarding rather than copied.
    let schedule = route.decision.schedule.as_str();
    let mut headers = std::mem::take(&mut parts.headers);
    strip_hop_by_hop(&mut headers);
    // The router's own request headers are for the router, not for the upstream.
    let own: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-carbonflow-") || *n == FORCE_HEADER)
        .cloned()
        .collect();
    for n in own {
        headers.remove(n);
    }
    // A schedule whose upstreams must not see the client's credentials says so in its
    // decision (`forwardCredentials: false` in the config).
    if !route.decision.forward_credentials {
        headers.remove(header::AUTHORIZATION);
        headers.remove(header::COOKIE);
    }
    if let Some(host) = headers.remove(header::HOST) {
        headers.insert(&X_FORWARDED_HOST, host);
    }
    let forwarded_for = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => HeaderValue::from_str(&format!("{prior}, {}", peer.addr.ip())).ok(),
        None => Some(peer.ip.clone()),
    };
    if let Some(v) = forwarded_for {
        headers.insert(&X_FORWARDED_FOR, v);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    // The request is kept for a second attempt only when a fallback rule could make one
    // (its body was buffered for that).
    let (body, kept) = match body {
        RequestBody::Buffered(b) => {
            let kept = resendable.then(|| Outgoing {
                method: parts.method.clone(),
                path_and_query: path_and_query.clone(),
                headers: headers.clone(),
                body: Either::Left(Full::new(b.clone())),
            });
            (Either::Left(Full::new(b)), kept)
        }
        RequestBody::Streamed(s) => (Either::Right(s), None),
    };
    let out = Outgoing {
        method: parts.method.clone(),
        path_and_query,
        headers,
        body,
    };

    let mut served_by = chosen;
    let mut result = attempt(&proxy, &route, chosen, out).await;
    let fallback = if failed(&result) && retry_allowed {
        route.fallback_for(attempt_result(&result))
    } else {
        None
    };
    if let (Some((index, to)), Some(out)) = (fallback, kept) {
        let condition = match &result {
            Ok(r) => r.status().as_u16().to_string(),
            Err(f) => f.condition().to_string(),
        };
        tracing::info!(%schedule, rule = index, from = %route.decision.flavours[chosen].name, to = %route.decision.flavours[to].name, %condition, "fallback");
        metrics::fallback_taken(schedule, index);
        served_by = to;
        result = attempt(&proxy, &route, to, out).await;
    }
    let latency = started.elapsed();
    let flavour = route.decision.flavours[served_by].name.as_str();
    let outcome = if served_by != chosen && !failed(&result) {
        Outcome::Fallback
    } else {
        outcome_of(&result)
    };
    proxy.telemetry.record(
        schedule,
        route.decision.version,
        flavour,
        outcome,
        latency.as_secs_f64() * 1000.0,
        // When it was answered, without asking the clock again.
        now.saturating_add(latency.as_millis() as i64),
    );
    let response = match result {
        Ok(upstream) => {
            let (mut parts, body) = upstream.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let mut resp = hyper::Response::from_parts(parts, Either::Left(body));
            if let Some(v) = &route.upstreams[served_by].served_by {
                resp.headers_mut().insert(&SERVED_BY_HEADER, v.clone());
            }
            resp.headers_mut()
                .insert(&VERSION_HEADER, route.version_header.clone());
            resp
        }
        Err(Failure::Timeout) => error(
            StatusCode::GATEWAY_TIMEOUT,
            json!({"error": "upstream_timeout", "flavour": flavour, "timeout_ms": proxy.settings.request_timeout.as_millis() as u64}),
        ),
        Err(Failure::Connect(e)) => error(
            StatusCode::BAD_GATEWAY,
            json!({"error": "upstream_unreachable", "flavour": flavour, "detail": e}),
        ),
        Err(Failure::NotAllowed(e)) => error(
            StatusCode::BAD_GATEWAY,
            json!({"error": "upstream_not_allowed", "flavour": flavour, "detail": e,
                   "rule": "the router's --allow-upstream list; link-local and metadata addresses are always refused"}),
        ),
        Err(Failure::BodyTooLarge) => body_too_large_response(&proxy),
        Err(Failure::Other(e)) => error(
            StatusCode::BAD_GATEWAY,
            json!({"error": "upstream_error", "flavour": flavour, "detail": e}),
        ),
    };
    metrics::request_served(
        &route.upstreams[served_by].metrics,
        schedule,
        flavour,
        response.status(),
        latency,
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    }

    #[test]
    fn each_hop_by_hop_header_is_stripped_even_without_a_connection_header() {
        for name in [
            "keep-alive",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut h = headers(&[(name, "x"), ("accept", "*/*")]);
            strip_hop_by_hop(&mut h);
            assert!(!h.contains_key(name), "{name} was forwarded");
            assert!(h.contains_key("accept"), "stripping {name} took accept too");
        }
    }

    #[test]
    fn headers_named_in_connection_are_stripped_with_it() {
        let mut h = headers(&[
            ("connection", "x-secret, X-Other"),
            ("x-secret", "1"),
            ("x-other", "2"),
            ("x-kept", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|n| n.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_as_it_is() {
        let mut h = headers(&[("accept", "*/*"), ("x-request-id", "7")]);
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }
}
