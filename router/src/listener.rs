//! The proxy's listener: worker threads accept connections up to a cap and serve them
//! over HTTP/1.1 with a deadline for request headers, and drain them on shutdown. A
//! client that opens connections and never finishes a request (slowloris) holds a slot
//! for at most the header-read timeout; beyond the cap, new connections are closed at
//! once instead of queueing behind the ones in use.
//!
//! Each worker has a single-threaded runtime and its own proxy and upstream connections: a
//! request and its upstream call are served on one thread, with no wake-up crossing
//! threads (what a multi-threaded runtime cost the proxy: a fifth of its CPU went to the
//! scheduler). Every worker accepts on the shared socket, and keeps what it accepts
//! unless another worker has fewer open connections, to which it hands the connection.
//! Without that, the first worker to wake drains the whole backlog, so a burst of
//! connections (a client pool opening at once) lands on one thread while the others
//! idle; with a separate accepting thread instead, every connection would cost two
//! thread wake-ups (9 % more CPU per request when each request opens a connection).

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

/// The proxy's worker threads, serving until the shutdown they were started with.
pub struct Workers {
    threads: Vec<std::thread::JoinHandle<std::io::Result<()>>>,
}

/// A connection accepted by one worker on its way to another, with its slot under the cap.
struct Handoff {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    claim: Claim,
}

/// What an open connection holds: a slot under the cap and a place in its worker's
/// count, both given back when it (or its handoff, if never served) is dropped.
struct Claim {
    _slot: OwnedSemaphorePermit,
    _counted: Counted,
}

/// A place in a worker's count of open connections.
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

/// What the workers know of each other: where to hand each one a connection, and how
/// many it has open.
struct Crew {
    queues: Vec<mpsc::UnboundedSender<Handoff>>,
    open: Vec<Arc<AtomicUsize>>,
    /// Connections served at once, over all workers.
    slots: Arc<Semaphore>,
}

impl Crew {
    /// The worker that should serve a connection `me` accepted: the one with the fewest
    /// open, `me` among equals.
    fn least_busy(&self, me: usize) -> usize {
        let mut best = (self.open[me].load(Ordering::Relaxed), me);
        for (i, open) in self.open.iter().enumerate() {
            let n = open.load(Ordering::Relaxed);
            if n < best.0 {
                best = (n, i);
            }
        }
        best.1
    }
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
        let threads = threads.max(1);
        // Unbounded queues: what waits in one holds a slot, so the cap bounds them.
        let (queues, handed): (Vec<_>, Vec<_>) =
            (0..threads).map(|_| mpsc::unbounded_channel()).unzip();
        let crew = Arc::new(Crew {
            queues,
            open: (0..threads).map(|_| Arc::default()).collect(),
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
        });
        // Every worker stops with `shutdown`, or at once if another cannot be started.
        let stop = shutdown.child_token();
        let mut workers = Self {
            threads: Vec::new(),
        };
        for (i, handed) in handed.into_iter().enumerate() {
            let started = listener.try_clone().and_then(|socket| {
                let (proxy, crew, stop_worker) = (make_proxy(i), crew.clone(), stop.clone());
                spawn(format!("proxy-{i}"), &stop, move || async move {
                    let listener = TcpListener::from_std(socket)?;
                    let worker = Worker {
                        index: i,
                        crew,
                        connections: WorkerConnections {
                            proxy,
                            limits,
                            graceful: GracefulShutdown::new(),
                            open: crate::metrics::worker_connections(i),
                        },
                    };
                    worker.serve(listener, handed, stop_worker).await;
                    Ok(())
                })
            });
            if let Err(e) = started {
                stop.cancel();
                for t in workers.threads {
                    let _ = t.join();
                }
                return Err(e);
            }
            workers.threads.extend(started.ok());
        }
        Ok(workers)
    }

    /// Wait until every worker has drained its connections and stopped; the first error a
    /// worker ended with (one that fails stops them all).
    pub async fn finished(self) -> std::io::Result<()> {
        let mut ended = Ok(());
        for t in self.threads {
            let joined = tokio::task::spawn_blocking(move || t.join())
                .await
                .map_err(std::io::Error::other)
                .and_then(|joined| {
                    joined.unwrap_or_else(|_| Err(std::io::Error::other("a proxy worker panicked")))
                });
            if ended.is_ok() {
                ended = joined;
            }
        }
        ended
    }
}

/// Start thread `name` running the future `task` makes on a single-threaded runtime of
/// its own. If it fails, every worker is stopped with `stop`: a proxy short of a worker
/// fails as a whole rather than serve on at part of its capacity.
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
            tracing::error!(thread = %name, error = %e, "a proxy worker failed; stopping the proxy");
            stop.cancel();
        }
        ended
    })
}

/// One worker thread: what it accepts and what the others hand it.
struct Worker {
    index: usize,
    crew: Arc<Crew>,
    connections: WorkerConnections,
}

impl Worker {
    /// Accept on `listener` and serve, with the connections other workers hand over on
    /// `handed`, until `shutdown`; then wait for the requests in flight to finish.
    async fn serve(
        self,
        listener: TcpListener,
        mut handed: mpsc::UnboundedReceiver<Handoff>,
        shutdown: CancellationToken,
    ) {
        tokio::spawn(close_idle_upstreams(
            self.connections.proxy.clone(),
            shutdown.clone(),
        ));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => self.place(stream, peer),
                    // The client gave up before it was accepted: nothing to wait for.
                    Err(e) if matches!(
                        e.kind(),
                        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::Interrupted
                    ) => {}
                    Err(e) => {
                        // Out of file descriptors and the like: wait a little, do not spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(handoff) = handed.recv() => self.take(handoff),
            }
        }
        // Stop accepting before waiting: new clients are refused at once (by the other
        // workers' handles while they still accept, then by the closed socket) rather
        // than queued and reset later.
        drop(listener);
        // Connections already handed over were accepted, and their clients may have sent
        // a request: each is served its first one rather than reset. Once the queue is
        // closed, a worker with something to hand here serves it itself.
        handed.close();
        while let Some(handoff) = handed.recv().await {
            self.take(handoff);
        }
        self.connections.graceful.shutdown().await;
    }

    /// Serve a connection this worker accepted, or hand it to a worker with fewer open.
    fn place(&self, stream: TcpStream, peer: SocketAddr) {
        let Ok(slot) = self.crew.slots.clone().try_acquire_owned() else {
            crate::metrics::connection_refused();
            return;
        };
        let to = self.crew.least_busy(self.index);
        let claim = Claim {
            _slot: slot,
            _counted: Counted::new(&self.crew.open[to]),
        };
        if to == self.index {
            self.connections.start(stream, peer, claim);
            return;
        }
        let handoff = match stream.into_std() {
            Ok(stream) => Handoff {
                stream,
                peer,
                claim,
            },
            Err(e) => {
                tracing::warn!(peer = %peer, error = %e, "an accepted connection could not be handed to another worker");
                return;
            }
        };
        // A worker that is draining has closed its queue: serve the connection here.
        if let Err(mpsc::error::SendError(back)) = self.crew.queues[to].send(handoff) {
            self.take(Handoff {
                claim: Claim {
                    _slot: back.claim._slot,
                    _counted: Counted::new(&self.crew.open[self.index]),
                },
                ..back
            });
        }
    }

    /// Serve a connection another worker handed over.
    fn take(&self, handoff: Handoff) {
        match TcpStream::from_std(handoff.stream) {
            Ok(stream) => self.connections.start(stream, handoff.peer, handoff.claim),
            Err(e) => {
                tracing::warn!(peer = %handoff.peer, error = %e, "a proxy worker could not take a connection");
            }
        }
    }
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
    /// Serve `stream` from `peer_addr` over HTTP/1.1 until it ends or the worker drains,
    /// holding `claim` until then.
    fn start(&self, stream: TcpStream, peer_addr: SocketAddr, claim: Claim) {
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
            // The claim before the gauge: whoever sees the gauge fall may connect again
            // at once.
            drop(claim);
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

    fn crew(open: &[usize]) -> Crew {
        Crew {
            queues: open.iter().map(|_| mpsc::unbounded_channel().0).collect(),
            open: open
                .iter()
                .map(|n| Arc::new(AtomicUsize::new(*n)))
                .collect(),
            slots: Arc::new(Semaphore::new(1)),
        }
    }

    #[test]
    fn a_connection_goes_to_the_worker_with_the_fewest_open_and_stays_among_equals() {
        assert_eq!(
            crew(&[2, 2, 2]).least_busy(1),
            1,
            "equals: the accepting worker"
        );
        assert_eq!(crew(&[3, 1, 2]).least_busy(0), 1);
        assert_eq!(
            crew(&[3, 1, 1]).least_busy(2),
            2,
            "among the fewest: itself"
        );
        assert_eq!(crew(&[3, 1, 1]).least_busy(0), 1, "else the first of them");
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
