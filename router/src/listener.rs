//! The proxy's listener: one thread accepts connections up to a cap and hands each to the
//! worker thread serving the fewest; a worker serves its connections over HTTP/1.1 with a
//! deadline for request headers, and drains them on shutdown. A client that opens
//! connections and never finishes a request (slowloris) holds a slot for at most the
//! header-read timeout; beyond the cap, new connections are closed at once instead of
//! queueing behind the ones in use.
//!
//! Each worker has a single-threaded runtime and its own proxy and upstream connections: a
//! request and its upstream call are served on one thread, with no wake-up crossing
//! threads (what a multi-threaded runtime cost the proxy: a fifth of its CPU went to the
//! scheduler). Connections are dealt out by one acceptor because workers that each accept
//! on the shared socket do not share: the first to wake drains the whole backlog, so a
//! burst of connections (a client pool opening at once) lands on one thread while the
//! others idle. The acceptor is a thread of its own so that accepting never waits behind
//! a busy worker's requests: a client whose new connection is not accepted sees a slow
//! request and opens yet more connections. Its cost, two thread wake-ups per
//! connection, shows only when every request opens a connection.

use std::convert::Infallible;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::proxy::{Peer, Proxy, UPSTREAM_IDLE_TIMEOUT};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use metrics::Gauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
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

/// The proxy's acceptor and worker threads, serving until the shutdown they were started
/// with.
pub struct Workers {
    threads: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
}

/// An accepted connection on its way to a worker, with its slot under the cap.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    counted: Counted,
}

/// A connection's place in its worker's count of open connections, given back when the
/// connection (or its handoff, if it is never served) is dropped.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A worker as the acceptor sees it: where to send it connections and how many it has.
struct WorkerQueue {
    index: usize,
    connections: mpsc::UnboundedSender<Handoff>,
    open: Arc<AtomicUsize>,
}

impl Workers {
    /// Start `threads` workers, each serving the proxy `make_proxy(worker index)` builds
    /// for it, and one thread accepting on `listener` (bound by the caller, so a port in
    /// use fails there) for them, within `limits`.
    pub fn start(
        listener: std::net::TcpListener,
        threads: usize,
        limits: ListenerLimits,
        make_proxy: impl Fn(usize) -> Arc<Proxy> + Send + Sync + 'static,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        // Every thread stops with `shutdown`, or at once if a later one cannot be started.
        let stop = shutdown.child_token();
        let mut workers = Self {
            threads: Vec::new(),
        };
        let mut queues = Vec::new();
        for i in 0..threads.max(1) {
            // Unbounded: what waits in it holds a slot, so the cap bounds it.
            let (connections, handed) = mpsc::unbounded_channel();
            queues.push(WorkerQueue {
                index: i,
                connections,
                open: Arc::new(AtomicUsize::new(0)),
            });
            let (proxy, stop_worker) = (make_proxy(i), stop.clone());
            let started = spawn(format!("proxy-{i}"), &stop, move || {
                serve(i, handed, proxy, limits, stop_worker)
            });
            workers.add(started, &stop)?;
        }
        let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
        let stop_acceptor = stop.clone();
        let started = spawn("proxy-accept".into(), &stop, move || async move {
            let listener = TcpListener::from_std(listener)?;
            accept(listener, queues, slots, stop_acceptor).await
        });
        workers.add(started, &stop)?;
        Ok(workers)
    }

    /// Keep a started thread; if it could not be started, stop and join the others.
    fn add(
        &mut self,
        started: std::io::Result<std::thread::JoinHandle<std::io::Result<()>>>,
        stop: &CancellationToken,
    ) -> std::io::Result<()> {
        match started {
            Ok(thread) => {
                self.threads.push(thread);
                Ok(())
            }
            Err(e) => {
                stop.cancel();
                for t in self.threads.drain(..) {
                    let _ = t.join();
                }
                Err(e)
            }
        }
    }

    /// Wait until the acceptor has stopped and every worker has drained its connections;
    /// the first error a thread ended with (one that fails stops them all).
    pub async fn finished(self) -> std::io::Result<()> {
        let mut ended = Ok(());
        for t in self.threads {
            let joined = tokio::task::spawn_blocking(move || t.join())
                .await
                .map_err(std::io::Error::other)
                .and_then(|joined| {
                    joined.unwrap_or_else(|_| Err(std::io::Error::other("a proxy thread panicked")))
                });
            if ended.is_ok() {
                ended = joined;
            }
        }
        ended
    }
}

/// Start thread `name` running the future `task` makes on a single-threaded runtime of
/// its own. If it fails, every proxy thread is stopped with `stop`: a proxy short of a
/// thread fails as a whole rather than serve on at part of its capacity.
fn spawn<F>(
    name: String,
    stop: &CancellationToken,
    task: impl FnOnce() -> F + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<std::io::Result<()>>>
where
    F: std::future::Future<Output = std::io::Result<()>>,
{
    let stop = stop.clone();
    std::thread::Builder::new().name(name.clone()).spawn(move || {
        let ended = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .and_then(|runtime| runtime.block_on(task()));
        if let Err(e) = &ended {
            tracing::error!(thread = %name, error = %e, "a proxy thread failed; stopping the proxy");
            stop.cancel();
        }
        ended
    })
}

/// Accept until `shutdown`, each connection within the cap of `slots` handed to the
/// worker with the fewest open connections. Fails if no worker is left to hand to.
async fn accept(
    listener: TcpListener,
    mut workers: Vec<WorkerQueue>,
    slots: Arc<Semaphore>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    while !workers.is_empty() {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // The client gave up before it was accepted: nothing to wait for.
                Err(e) if matches!(
                    e.kind(),
                    ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
                ) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: wait a little, do not spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            crate::metrics::connection_refused();
            drop(stream);
            continue;
        };
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(peer = %peer, error = %e, "an accepted connection could not be handed to a worker");
                continue;
            }
        };
        let (mut stream, mut peer, mut permit) = (stream, peer, permit);
        // A worker that has stopped gives the connection back: try the next.
        while let Some(i) = least_busy(&workers) {
            let handoff = Handoff {
                stream,
                peer,
                permit,
                counted: Counted::new(&workers[i].open),
            };
            match workers[i].connections.send(handoff) {
                Ok(()) => break,
                Err(mpsc::error::SendError(back)) => {
                    tracing::warn!(
                        worker = workers[i].index,
                        "a proxy worker has stopped; the others take its share of connections"
                    );
                    workers.swap_remove(i);
                    (stream, peer, permit) = (back.stream, back.peer, back.permit);
                }
            }
        }
    }
    // Dropping the listener on return refuses new clients at once rather than queueing
    // them.
    Err(std::io::Error::other(
        "every proxy worker has stopped: no thread is left to serve connections",
    ))
}

/// Index of the worker with the fewest open connections (the first of equals).
fn least_busy(workers: &[WorkerQueue]) -> Option<usize> {
    (0..workers.len()).min_by_key(|&i| workers[i].open.load(Ordering::Relaxed))
}

/// Serve `proxy` on the connections handed to worker `index` until `shutdown`, then wait
/// for the requests in flight to finish.
async fn serve(
    index: usize,
    mut handed: mpsc::UnboundedReceiver<Handoff>,
    proxy: Arc<Proxy>,
    limits: ListenerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    tokio::spawn(close_idle_upstreams(proxy.clone(), shutdown.clone()));
    let connections = WorkerConnections {
        proxy,
        limits,
        graceful: GracefulShutdown::new(),
        open: crate::metrics::worker_connections(index),
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            handoff = handed.recv() => match handoff {
                Some(h) => connections.start(h),
                None => break,
            },
        }
    }
    // The connections already handed over were accepted, and their clients may have
    // sent a request: each is served its first one rather than reset. Closing the queue
    // first makes the acceptor stop sending here.
    handed.close();
    while let Some(h) = handed.recv().await {
        connections.start(h);
    }
    connections.graceful.shutdown().await;
    Ok(())
}

/// The connections of one worker: each served by a task of its own, all drained together
/// on shutdown.
struct WorkerConnections {
    proxy: Arc<Proxy>,
    limits: ListenerLimits,
    graceful: GracefulShutdown,
    open: Gauge,
}

impl WorkerConnections {
    /// Serve `handoff`'s connection over HTTP/1.1 until it ends or the worker drains.
    fn start(&self, handoff: Handoff) {
        let Handoff {
            stream,
            peer: peer_addr,
            permit,
            counted,
        } = handoff;
        let stream = match TcpStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(peer = %peer_addr, error = %e, "a proxy worker could not take a connection");
                return;
            }
        };
        let _ = stream.set_nodelay(true);
        let proxy = self.proxy.clone();
        let peer = Arc::new(Peer::new(peer_addr));
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let (proxy, peer) = (proxy.clone(), peer.clone());
            async move { Ok::<_, Infallible>(proxy.serve(&peer, req).await) }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(self.limits.header_read_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let connection = self.graceful.watch(connection);
        crate::metrics::connection_opened(&self.open);
        let open = self.open.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(peer = %peer_addr, error = %e, "connection ended with an error");
            }
            // The slot and the count before the gauge: whoever sees the gauge fall may
            // connect again at once.
            drop((permit, counted));
            crate::metrics::connection_closed(&open);
        });
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn queues(open: &[usize]) -> Vec<WorkerQueue> {
        open.iter()
            .enumerate()
            .map(|(index, n)| WorkerQueue {
                index,
                connections: mpsc::unbounded_channel().0,
                open: Arc::new(AtomicUsize::new(*n)),
            })
            .collect()
    }

    #[test]
    fn a_connection_goes_to_the_worker_with_the_fewest_open() {
        assert_eq!(least_busy(&queues(&[3, 1, 2])), Some(1));
        assert_eq!(
            least_busy(&queues(&[2, 1, 1])),
            Some(1),
            "the first of equals"
        );
        assert_eq!(least_busy(&queues(&[])), None, "no worker left");
    }

    #[test]
    fn a_counted_place_is_given_back_when_dropped() {
        let open = Arc::new(AtomicUsize::new(0));
        let (a, b) = (Counted::new(&open), Counted::new(&open));
        assert_eq!(open.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(open.load(Ordering::Relaxed), 1);
        drop(b);
        assert_eq!(open.load(Ordering::Relaxed), 0);
    }
}
