//! The request threads: one per CPU, each with a single-threaded tokio runtime of its own
//! that accepts from the shared listening socket and serves what it accepted, as nginx's
//! worker processes do. A request and its upstream exchange stay on one thread from
//! start to end. On one CPU, tokio's work-stealing runtime served 27–39% fewer requests/s
//! of swr-gate's, and 17–28% fewer of the bare stack's (`examples/bare_proxy.rs`).
//! Everything else (signals, reloads, the admin endpoints, IAM refreshes) runs on the
//! main thread's runtime.

use std::cell::Cell;
use std::num::NonZeroUsize;
use std::sync::OnceLock;
use std::thread::JoinHandle;

use tokio::sync::watch;

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
    static IN_FLIGHT: Cell<usize> = const { Cell::new(0) };
}

/// A request in progress on this thread, counted while it lives. A request's task never
/// leaves the thread that accepted it, so the count needs no atomics.
pub struct InFlight(());

impl InFlight {
    pub fn start() -> InFlight {
        IN_FLIGHT.with(|n| n.set(n.get() + 1));
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// Whether requests other than the caller's are in progress on this thread: work that
/// can wait a turn to be done together with theirs.
pub fn others_in_flight() -> bool {
    IN_FLIGHT.with(Cell::get) > 1
}

/// How many request threads to run: the CPUs this process may use (its affinity mask
/// and cgroup CPU quota), at least one.
pub fn count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        std::thread::available_parallelism()
            .map(NonZeroUsize::get)
            .unwrap_or(1)
    })
}

/// Which request thread this is (0 on any other thread): for per-thread resources such
/// as the upstream connection pool.
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Running request threads, and the signal that tells them to stop accepting.
pub struct Workers {
    threads: Vec<JoinHandle<bool>>,
    stop: watch::Sender<bool>,
}

impl Workers {
    /// Start [`count`] threads, each running the future `serve(stop)` makes on a runtime
    /// of its own. `serve` is called here, inside that runtime, so that what it sets up
    /// (a listener registered with the runtime) fails the start rather than a thread.
    /// The future is to stop accepting once `stop` turns true, finish what it has, and
    /// return whether it finished in time.
    pub fn start<S, F>(serve: S) -> Result<Workers, String>
    where
        S: Fn(watch::Receiver<bool>) -> Result<F, String>,
        F: std::future::Future<Output = bool> + Send + 'static,
    {
        let (stop, stopping) = watch::channel(false);
        let mut threads = Vec::with_capacity(count());
        for index in 0..count() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start a request thread's runtime: {e}"))?;
            let task = {
                let _entered = runtime.enter();
                serve(stopping.clone())?
            };
            let thread = std::thread::Builder::new()
                .name(format!("swr-gate-{index}"))
                .spawn(move || {
                    INDEX.with(|cell| cell.set(index));
                    runtime.block_on(task)
                })
                .map_err(|e| format!("cannot start a request thread: {e}"))?;
            threads.push(thread);
        }
        Ok(Workers { threads, stop })
    }

    /// Tell every thread to stop accepting and wait until all have finished; whether all
    /// finished in time.
    pub async fn stop(self) -> Result<bool, String> {
        let _ = self.stop.send(true);
        let threads = self.threads;
        tokio::task::spawn_blocking(move || {
            let mut in_time = true;
            for thread in threads {
                in_time &= thread
                    .join()
                    .map_err(|_| "a request thread panicked".to_owned())?;
            }
            Ok(in_time)
        })
        .await
        .map_err(|e| e.to_string())?
    }
}
