//! Per-core workers for the public listener, as nginx's worker processes:
//! each worker is a thread with a single-threaded tokio runtime that accepts
//! connections from the one listening socket and serves them itself, so a
//! connection, its requests and its upstream connections stay on one core
//! (no work stealing, no cross-thread wake-ups on the request path).
//! Everything else (the admin listener, the audit writer, health checks,
//! reloads) runs on the process's main runtime.
//!
//! Every worker gets its own descriptor of the listening socket (`dup`),
//! registered with its own runtime: a new connection wakes the workers
//! waiting in `accept` and the first takes it. Whoever takes it, it is
//! served by the worker with the fewest open connections ([`Spread`]): a
//! worker more than one connection ahead of the least busy one hands the
//! socket over. A burst of new connections (a load balancer's pool, wrk's
//! 64) otherwise lands mostly on whichever worker woke first. That keeps
//! the bind as one socket: no `SO_REUSEPORT` group that a second process of
//! the same user could join (and whose hash spreads a few connections
//! unevenly), and an address in use is still an error at start.
//!
//! A worker that has finished serving (shutdown, drain done) keeps its
//! runtime running until [`Workers::stop`]: sockets a worker opened (a
//! store connection a key lookup opened, say) are registered with its
//! runtime and may still be used by the main runtime's shutdown (flushing
//! key usage, the audit log).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::net::TcpListener as StdListener;
use std::num::NonZeroUsize;

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

thread_local! {
    static WORKER: Cell<u16> = const { Cell::new(0) };
}

/// The worker this thread is (1, 2, …), or 0 outside the workers.
pub fn current() -> u16 {
    WORKER.with(Cell::get)
}

/// Makes this thread worker `index`, for tests of what depends on it.
#[cfg(test)]
pub(crate) fn pretend_to_be(index: u16) {
    WORKER.with(|w| w.set(index));
}

/// The most workers a process runs (`[server] workers` is checked against it).
pub const MAX_WORKERS: usize = 256;

/// How many workers to run: `[server] workers`, else `TOKIO_WORKER_THREADS`
/// (what set the worker count before there were per-core workers), else
/// one per CPU the process may use; at most [`MAX_WORKERS`].
pub fn count(configured: Option<NonZeroUsize>) -> usize {
    configured
        .or_else(|| {
            std::env::var("TOKIO_WORKER_THREADS")
                .ok()
                .and_then(|v| v.trim().parse::<NonZeroUsize>().ok())
        })
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, NonZeroUsize::get)
        .min(MAX_WORKERS)
}

struct Worker {
    thread: std::thread::JoinHandle<()>,
    served: oneshot::Receiver<()>,
    stop: oneshot::Sender<()>,
}

/// The running workers.
pub struct Workers {
    workers: Vec<Worker>,
}

impl Workers {
    /// Starts a worker for each gauge in `open` (its open connections),
    /// each running `serve` on its own descriptor of `listener`
    /// (non-blocking, as a tokio listener's `into_std` leaves it) with its
    /// seat in one [`Spread`].
    pub fn start<F, Fut>(open: Vec<IntGauge>, listener: StdListener, serve: F) -> io::Result<Workers>
    where
        F: Fn(TcpListener, Seat) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let mut workers = Vec::with_capacity(open.len());
        for (seat, index) in Spread::seats(open).into_iter().zip(1u16..) {
            let listener = listener.try_clone()?;
            let serve = serve.clone();
            let (served_tx, served) = oneshot::channel();
            let (stop, stop_rx) = oneshot::channel::<()>();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let thread = std::thread::Builder::new()
                .name(format!("portcullis-worker-{index}"))
                .spawn(move || {
                    WORKER.with(|w| w.set(index));
                    runtime.block_on(async move {
                        match TcpListener::from_std(listener) {
                            Ok(listener) => serve(listener, seat).await,
                            Err(error) => tracing::error!(%error, worker = index, "worker cannot listen"),
                        }
                        let _ = served_tx.send(());
                        // Also ends when `Workers` is dropped.
                        let _ = stop_rx.await;
                    });
                })?;
            workers.push(Worker { thread, served, stop });
        }
        Ok(Workers { workers })
    }

    /// Waits until every worker has stopped serving (after a shutdown
    /// signal and the drain).
    pub async fn served(&mut self) {
        for worker in &mut self.workers {
            let _ = (&mut worker.served).await;
        }
    }

    /// Ends the workers' runtimes (dropping any task still running on
    /// them) and waits for their threads.
    pub async fn stop(self) {
        let threads: Vec<_> = self
            .workers
            .into_iter()
            .map(|worker| {
                let _ = worker.stop.send(());
                worker.thread
            })
            .collect();
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

/// A connection one worker accepted and handed to another, counted as the
/// other's from the moment it was handed (so that a worker slow to take
/// what it was handed is not handed everything in the meantime).
pub struct Handed {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    count: OpenCount,
}

/// A connection a worker serves, counted as its own while it is open.
pub struct Placed {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub count: OpenCount,
}

/// Every worker's open connections, and a way to hand each a connection.
pub struct Spread {
    open: Box<[IntGauge]>,
    inboxes: Box<[mpsc::UnboundedSender<Handed>]>,
}

/// One worker's place in a [`Spread`]: what its accept loop needs.
pub struct Seat {
    spread: Arc<Spread>,
    index: usize,
    inbox: mpsc::UnboundedReceiver<Handed>,
}

impl Spread {
    /// A spread over one worker per gauge (its open connections), and
    /// each worker's seat.
    pub fn seats(open: Vec<IntGauge>) -> Vec<Seat> {
        let (inboxes, receivers): (Vec<_>, Vec<_>) = open.iter().map(|_| mpsc::unbounded_channel()).unzip();
        let spread = Arc::new(Spread {
            open: open.into(),
            inboxes: inboxes.into(),
        });
        receivers
            .into_iter()
            .enumerate()
            .map(|(index, inbox)| Seat {
                spread: spread.clone(),
                index,
                inbox,
            })
            .collect()
    }
}

impl Seat {
    /// The worker a connection this worker just accepted should go to,
    /// when that is not this one: the least busy, if this one has more
    /// than one connection more than it.
    fn lighter(&self) -> Option<usize> {
        let open = |i: usize| self.spread.open[i].get();
        let (least, fewest) = (0..self.spread.open.len())
            .map(|i| (i, open(i)))
            .min_by_key(|&(_, n)| n)?;
        (open(self.index) > fewest + 1).then_some(least)
    }

    /// A connection this worker accepted: kept, or handed to the least
    /// busy worker (`None`) when this one is more than one ahead of it.
    pub fn place(&self, stream: TcpStream, peer: SocketAddr) -> Option<Placed> {
        let Some(to) = self.lighter() else {
            return Some(Placed {
                stream,
                peer,
                count: self.count(self.index),
            });
        };
        let stream = stream.into_std().ok()?;
        let handed = Handed {
            stream,
            peer,
            count: self.count(to),
        };
        match self.spread.inboxes[to].send(handed) {
            Ok(()) => None,
            // That worker has stopped (shutting down): keep it.
            Err(mpsc::error::SendError(back)) => Some(Placed {
                stream: TcpStream::from_std(back.stream).ok()?,
                peer: back.peer,
                count: self.count(self.index),
            }),
        }
    }

    /// The next connection another worker handed to this one.
    pub async fn handed(&mut self) -> Option<Placed> {
        loop {
            let Handed { stream, peer, count } = self.inbox.recv().await?;
            // Only fails if the runtime cannot register it; that socket is
            // closed and the next one is taken.
            if let Ok(stream) = TcpStream::from_std(stream) {
                return Some(Placed { stream, peer, count });
            }
        }
    }

    /// Counts one open connection on worker `index` until it is dropped.
    fn count(&self, index: usize) -> OpenCount {
        self.spread.open[index].inc();
        OpenCount {
            spread: self.spread.clone(),
            index,
        }
    }
}

/// One of a worker's open connections, counted while it lives.
pub struct OpenCount {
    spread: Arc<Spread>,
    index: usize,
}

impl Drop for OpenCount {
    fn drop(&mut self) {
        self.spread.open[self.index].dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spread(counts: &[i64]) -> Vec<Seat> {
        let gauges: Vec<IntGauge> = (0..counts.len())
            .map(|i| IntGauge::new(format!("open_{i}"), "test").unwrap())
            .collect();
        for (gauge, n) in gauges.iter().zip(counts) {
            gauge.set(*n);
        }
        Spread::seats(gauges)
    }

    #[test]
    fn a_worker_keeps_a_connection_unless_it_is_more_than_one_ahead() {
        let seats = spread(&[3, 2, 2]);
        assert_eq!(seats[0].lighter(), None, "one ahead keeps it");
        let seats = spread(&[4, 2, 3]);
        assert_eq!(
            seats[0].lighter(),
            Some(1),
            "two ahead hands it to the least busy"
        );
        assert_eq!(seats[2].lighter(), None);
        let seats = spread(&[0, 0]);
        assert_eq!(seats[1].lighter(), None);
    }

    #[tokio::test]
    async fn a_handed_connection_counts_for_its_new_worker_at_once() {
        let seats = spread(&[2, 0]);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        assert!(seats[0].place(stream, peer).is_none(), "handed on");
        // Counted before the other worker has taken it.
        assert_eq!(seats[1].spread.open[1].get(), 1);
        let mut seats = seats;
        let placed = seats[1].handed().await.expect("the handed connection");
        assert_eq!(placed.peer, peer);
        drop(placed);
        assert_eq!(seats[1].spread.open[1].get(), 0, "closed, uncounted");
    }
}
