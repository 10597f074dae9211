//! A proxy worker's connections to its upstreams: HTTP/1.1 connections opened on demand,
//! kept idle per origin (scheme and authority) between requests, and reused.
//!
//! A connection goes back to its origin's idle list only when its response body has been
//! read to the end: after a body cut short, the next bytes on that connection would be
//! the rest of it, so such a connection is closed instead. Idle connections are closed
//! after the idle timeout.
//!
//! Each worker has its own set and serves a request and its upstream exchange on one
//! thread; the lock around the idle lists is never contended. hyper-util's pooled client
//! did the same job with a key hashed twice per request, a URI rebuilt per request and a
//! task spawned per response to return its connection; this keeps what a proxy needs.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body_util::{Either, Full, Limited};
use hyper::body::{Body as _, Bytes, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_tls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower::ServiceExt;

use crate::resolve::CheckedResolver;
use crate::table::Target;

/// A request body as sent upstream: buffered whole (a fallback may resend it), or
/// streamed from the client as it arrives, within the size limit.
pub(crate) type UpstreamBody = Either<Full<Bytes>, Limited<Incoming>>;

/// Opens TCP connections (to resolved addresses the allow-list accepts) and, for
/// `https://` upstreams, TLS over them.
pub(crate) type Connector = HttpsConnector<HttpConnector<CheckedResolver>>;

/// Why an exchange with an upstream produced no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be opened: refused, unreachable, resolution refused, TLS.
    Connect(String),
    /// The connection failed while the request or its response was under way.
    Exchange(hyper::Error),
}

/// Idle connections by origin.
type IdleLists = HashMap<Arc<str>, Vec<Idle>, foldhash::fast::RandomState>;

struct Idle {
    sender: SendRequest<UpstreamBody>,
    since: Instant,
}

/// One proxy worker's upstream connections.
pub(crate) struct Upstreams {
    connector: Connector,
    idle: Arc<Mutex<IdleLists>>,
    idle_timeout: Duration,
}

impl Upstreams {
    /// Connections opened with `connector`, closed after `idle_timeout` unused.
    pub(crate) fn new(connector: Connector, idle_timeout: Duration) -> Self {
        Self {
            connector,
            idle: Arc::default(),
            idle_timeout,
        }
    }

    /// Send `req` (origin-form URI, `Host` set) to `target`, on an idle connection to it
    /// if there is one, else on a new one.
    pub(crate) async fn send(
        &self,
        target: &Target,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<ResponseBody>, SendError> {
        while let Some(mut sender) = self.take_idle(&target.origin) {
            if sender.ready().await.is_err() {
                continue; // closed by the upstream while idle
            }
            match sender.try_send_request(req).await {
                Ok(response) => return Ok(self.respond(target, sender, response)),
                // Closed before the request was written: it can go on another connection.
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(SendError::Exchange(e.into_error())),
                },
            }
        }
        let mut sender = self.connect(target).await?;
        let response = sender
            .send_request(req)
            .await
            .map_err(SendError::Exchange)?;
        Ok(self.respond(target, sender, response))
    }

    /// Close the connections idle for longer than the idle timeout, and forget the ones
    /// the upstream closed.
    pub(crate) fn close_expired(&self) {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        for connections in idle.values_mut() {
            connections.retain(|c| {
                !c.sender.is_closed() && now.duration_since(c.since) < self.idle_timeout
            });
        }
        idle.retain(|_, connections| !connections.is_empty());
    }

    /// The most recently used idle connection to `origin` that is ready for a request
    /// (the likeliest still open). One that is not ready stays in the list: an upstream
    /// that answered before the request's body ended makes its connection idle while that
    /// body is still being sent, and a request handed to it would wait for the client's
    /// upload to end.
    fn take_idle(&self, origin: &str) -> Option<SendRequest<UpstreamBody>> {
        let mut idle = lock(&self.idle);
        let connections = idle.get_mut(origin)?;
        while connections.last().is_some_and(|c| c.sender.is_closed()) {
            connections.pop();
        }
        let ready = connections.iter().rposition(|c| c.sender.is_ready())?;
        Some(connections.remove(ready).sender)
    }

    async fn connect(&self, target: &Target) -> Result<SendRequest<UpstreamBody>, SendError> {
        let connect_error = |e: &dyn std::error::Error| {
            SendError::Connect(format!("{}: {}", target.origin, with_causes(e)))
        };
        let io = self
            .connector
            .clone()
            .oneshot(target.origin_uri.clone())
            .await
            .map_err(|e| connect_error(&*e))?;
        let (sender, connection) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| connect_error(&e))?;
        // The connection runs as a task of this worker's runtime until it closes: when
        // the upstream closes it, or when its sender is dropped and no request is left.
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "an upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    fn respond(
        &self,
        target: &Target,
        sender: SendRequest<UpstreamBody>,
        response: Response<Incoming>,
    ) -> Response<ResponseBody> {
        let reuse = Reuse {
            idle: self.idle.clone(),
            origin: target.origin.clone(),
            sender,
        };
        response.map(|body| ResponseBody {
            body,
            finished: false,
            reuse: Some(reuse),
        })
    }
}

fn lock(idle: &Mutex<IdleLists>) -> std::sync::MutexGuard<'_, IdleLists> {
    idle.lock().unwrap_or_else(|e| e.into_inner())
}

/// `e` and the errors it was caused by, joined by `: `.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// What returns a connection to its origin's idle list.
struct Reuse {
    idle: Arc<Mutex<IdleLists>>,
    origin: Arc<str>,
    sender: SendRequest<UpstreamBody>,
}

/// An upstream response's body. Its connection is kept for reuse when the body is
/// dropped after its end was read, closed otherwise.
pub(crate) struct ResponseBody {
    body: Incoming,
    /// The body's last frame has been read.
    finished: bool,
    reuse: Option<Reuse>,
}

impl hyper::body::Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finished = true,
            Poll::Ready(Some(Ok(_))) => self.finished = self.body.is_end_stream(),
            // A connection that failed mid-body is not reused.
            Poll::Ready(Some(Err(_))) => self.reuse = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if !(self.finished || self.body.is_end_stream()) {
            return;
        }
        if let Some(Reuse {
            idle,
            origin,
            sender,
        }) = self.reuse.take()
        {
            lock(&idle).entry(origin).or_default().push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use carbonflow_schemas::upstream::AllowList;
    use http_body_util::BodyExt;
    use hyper::header::HOST;
    use hyper::http::uri::PathAndQuery;
    use hyper_util::rt::TokioIo;

    use super::*;

    /// An upstream answering every request with a 64 KiB body, counting the connections
    /// it accepted.
    async fn upstream() -> (Target, Arc<AtomicUsize>) {
        serve(true).await
    }

    /// The upstream, closing every connection after its first response unless
    /// `keep_alive`.
    async fn serve(keep_alive: bool) -> (Target, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the upstream");
        let url = format!(
            "http://{}/base",
            listener.local_addr().expect("its address")
        );
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                        vec![b'x'; 64 * 1024],
                    ))))
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        (Target::parse(&url).expect("a valid URL"), accepted)
    }

    fn upstreams(idle_timeout: Duration) -> Upstreams {
        let resolver = CheckedResolver::new(Arc::new(AllowList::default()));
        let mut connector = HttpConnector::new_with_resolver(resolver);
        connector.enforce_http(false);
        let tls = native_tls::TlsConnector::new().expect("a TLS connector");
        Upstreams::new(HttpsConnector::from((connector, tls.into())), idle_timeout)
    }

    fn request(target: &Target) -> Request<UpstreamBody> {
        let mut req = Request::new(Either::Left(Full::new(Bytes::new())));
        *req.uri_mut() = target
            .request_uri(&PathAndQuery::from_static("/item"))
            .expect("a valid path");
        req.headers_mut().insert(HOST, target.host.clone());
        req
    }

    async fn read_whole(upstreams: &Upstreams, target: &Target) -> usize {
        let response = upstreams
            .send(target, request(target))
            .await
            .expect("a response");
        let body = response
            .into_body()
            .collect()
            .await
            .expect("the whole body");
        body.to_bytes().len()
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_was_read_to_the_end() {
        let (target, accepted) = upstream().await;
        let upstreams = upstreams(Duration::from_secs(30));
        for _ in 0..3 {
            assert_eq!(read_whole(&upstreams, &target).await, 64 * 1024);
        }
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "one connection for all three"
        );
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_is_not_used_again() {
        let (target, accepted) = serve(false).await;
        let upstreams = upstreams(Duration::from_secs(30));
        for _ in 0..3 {
            assert_eq!(read_whole(&upstreams, &target).await, 64 * 1024);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_whose_body_was_left_unread_is_not_reused() {
        let (target, accepted) = upstream().await;
        let upstreams = upstreams(Duration::from_secs(30));
        let response = upstreams
            .send(&target, request(&target))
            .await
            .expect("a response");
        drop(response);
        assert_eq!(read_whole(&upstreams, &target).await, 64 * 1024);
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            2,
            "the cut-short one was closed"
        );
    }

    #[tokio::test]
    async fn connections_idle_past_the_timeout_are_closed() {
        let (target, accepted) = upstream().await;
        let upstreams = upstreams(Duration::ZERO);
        read_whole(&upstreams, &target).await;
        upstreams.close_expired();
        assert!(
            lock(&upstreams.idle).is_empty(),
            "nothing kept past the timeout"
        );
        read_whole(&upstreams, &target).await;
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_upstream_that_refuses_connections_is_a_connect_error_naming_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
        let url = format!("http://{}/", listener.local_addr().expect("its address"));
        drop(listener);
        let target = Target::parse(&url).expect("a valid URL");
        match upstreams(Duration::from_secs(30))
            .send(&target, request(&target))
            .await
        {
            Err(SendError::Connect(detail)) => {
                assert!(detail.contains(&*target.origin), "{detail}")
            }
            Err(other) => panic!("expected a connect error, got {other:?}"),
            Ok(response) => panic!("expected a connect error, got {}", response.status()),
        }
    }
}
