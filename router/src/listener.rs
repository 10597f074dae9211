//! The proxy's listener: connections accepted up to a cap, each served over HTTP/1.1 with
//! a deadline for request headers, and drained on shutdown. A client that opens
//! connections and never finishes a request (slowloris) holds a slot for at most the
//! header-read timeout; beyond the cap, new connections are closed at once instead of
//! queueing behind the ones in use.
//!
//! The proxy runs one thread per worker, each with a single-threaded runtime accepting on
//! the one listening socket, and its own proxy and upstream connections: a request and its
//! upstream call are served on one thread, with no wake-up crossing threads (what a
//! multi-threaded runtime cost the proxy: a fifth of its CPU went to the scheduler).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use crate::proxy::{Peer, Proxy, UPSTREAM_IDLE_TIMEOUT};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Bounds of the proxy's listener.
#[derive(Debug, Clone, Copy)]
pub struct ListenerLimits {
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Time a client has to send a request's headers, from the connection's opening or
    /// the end of its previous response (so it also closes idle keep-alive connections).
    pub header_read_timeout: Duration,
}

/// The proxy's worker threads, serving until the shutdown they were started with.
pub struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Start `threads` workers accepting on `listener` (bound by the caller, so a port in
    /// use fails there), each serving the proxy `make_proxy(worker index)` builds for it;
    /// they share the connection cap of `limits`.
    pub fn start(
        listener: std::net::TcpListener,
        threads: usize,
        limits: ListenerLimits,
        make_proxy: impl Fn(usize) -> Arc<Proxy> + Send + Sync + 'static,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let make_proxy = Arc::new(make_proxy);
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        // Workers stop with `shutdown`, or at once if a later one cannot be started.
        let stop = shutdown.child_token();
        let mut workers = Self {
            threads: Vec::new(),
        };
        for i in 0..threads.max(1) {
            let started = listener.try_clone().and_then(|socket| {
                let (make_proxy, slots, stop) = (make_proxy.clone(), slots.clone(), stop.clone());
                std::thread::Builder::new()
                    .name(format!("proxy-{i}"))
                    .spawn(move || worker(socket, make_proxy(i), limits, slots, stop))
            });
            match started {
                Ok(thread) => workers.threads.push(thread),
                Err(e) => {
                    stop.cancel();
                    for t in workers.threads {
                        let _ = t.join();
                    }
                    return Err(e);
                }
            }
        }
        Ok(workers)
    }

    /// Wait until every worker has drained its connections and stopped.
    pub async fn finished(self) {
        for t in self.threads {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// One worker: a single-threaded runtime accepting on its handle of the shared socket.
fn worker(
    socket: std::net::TcpListener,
    proxy: Arc<Proxy>,
    limits: ListenerLimits,
    slots: Arc<Semaphore>,
    stop: CancellationToken,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "a proxy worker could not start its runtime");
            return;
        }
    };
    runtime.block_on(async move {
        match TcpListener::from_std(socket) {
            Ok(listener) => serve(listener, proxy, limits, slots, stop).await,
            Err(e) => {
                tracing::error!(error = %e, "a proxy worker could not use the listening socket")
            }
        }
    });
}

/// Serve `proxy` on `listener` within `limits` (connection slots shared with the other
/// workers) until `shutdown`, then wait for the requests in flight to finish.
async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    limits: ListenerLimits,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    tokio::spawn(close_idle_upstreams(proxy.clone(), shutdown.clone()));
    loop {
        let (stream, peer_addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, do not spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            crate::metrics::connection_refused();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let peer = Arc::new(Peer::new(peer_addr));
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let (proxy, peer) = (proxy.clone(), peer.clone());
            async move { Ok::<_, Infallible>(proxy.serve(&peer, req).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        crate::metrics::connection_opened();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(peer = %peer_addr, error = %e, "connection ended with an error");
            }
            crate::metrics::connection_closed();
            drop(slot);
        });
    }
    // Stop accepting before waiting: new clients are refused at once (by the other
    // workers' handles while they still accept, then by the closed socket) rather than
    // queued and reset later.
    drop(listener);
    graceful.shutdown().await;
}

/// Close `proxy`'s idle upstream connections once they are past the idle timeout,
/// checking twice per timeout, until `shutdown`.
async fn close_idle_upstreams(proxy: Arc<Proxy>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(UPSTREAM_IDLE_TIMEOUT / 2);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = every.tick() => proxy.close_idle_upstreams(),
        }
    }
}
