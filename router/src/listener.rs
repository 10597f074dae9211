//! The proxy's listener: connections accepted up to a cap, each served over HTTP/1.1 with
//! a deadline for request headers, and drained on shutdown. A client that opens
//! connections and never finishes a request (slowloris) holds a slot for at most the
//! header-read timeout; beyond the cap, new connections are closed at once instead of
//! queueing behind the ones in use.
//!
//! The proxy runs one thread per worker, each with a single-threaded runtime, its own
//! listening socket on the shared address (`SO_REUSEPORT`: the kernel spreads connections
//! over them) and its own app and upstream pool: a request and its upstream call are
//! served on one thread, with no wake-up crossing threads (what a multi-threaded runtime
//! cost the proxy: a fifth of its CPU went to the scheduler).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::proxy::Proxy;
use axum::body::Body;
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
    /// The address they listen on (the port chosen when the one asked for was 0).
    pub local_addr: SocketAddr,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Start `threads` workers on `addr`, each serving the proxy `make_app` builds for it;
    /// they share the connection cap of `limits`. Fails when a socket cannot be bound.
    pub fn start(
        addr: SocketAddr,
        threads: usize,
        limits: ListenerLimits,
        make_app: impl Fn() -> Arc<Proxy> + Send + Sync + 'static,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let make_app = Arc::new(make_app);
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let mut workers = Self {
            local_addr: addr,
            threads: Vec::new(),
        };
        for i in 0..threads.max(1) {
            let (bound_tx, bound_rx) = std::sync::mpsc::channel();
            let (make_app, slots, shutdown) = (make_app.clone(), slots.clone(), shutdown.clone());
            // The first worker binds the address asked for; the others bind the one it got.
            let addr = workers.local_addr;
            let thread = std::thread::Builder::new()
                .name(format!("proxy-{i}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(r) => r,
                        Err(e) => {
                            let _ = bound_tx.send(Err(e));
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let listener = match bind_shared(addr) {
                            Ok(l) => l,
                            Err(e) => {
                                let _ = bound_tx.send(Err(e));
                                return;
                            }
                        };
                        let _ = bound_tx.send(listener.local_addr());
                        serve(listener, make_app(), limits, slots, shutdown).await;
                    });
                })?;
            workers.threads.push(thread);
            workers.local_addr = bound_rx.recv().map_err(|_| {
                std::io::Error::other(format!("proxy worker {i} stopped before binding {addr}"))
            })??;
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

/// A listening socket on `addr` that other workers may bind too (`SO_REUSEPORT`).
fn bind_shared(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Serve `app` on `listener` within `limits` (connection slots shared with the other
/// workers) until `shutdown`, then wait for the requests in flight to finish.
async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    limits: ListenerLimits,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
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
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.serve(peer, req.map(Body::new)).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = connection.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}
