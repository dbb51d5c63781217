//! Two lanes for the API server's work, so that a flood of writes cannot hold up reads.
//!
//! Tokio runs tasks from one queue per runtime, first come first served, and never
//! preempts a task. With every request on the runtime that also runs the controllers,
//! a `kubectl get` arriving behind 64 clients' creates took its turn behind them and
//! the scheduler and kubelets they woke. Go's scheduler preempts, so kube-apiserver
//! does not queue a read that way.
//!
//! So the API server's connections (TLS, HTTP framing), its reads and its watches run
//! on a runtime of their own, the **read lane** ([`ReadLane`]), and a mutating request's
//! handling (decode, admission, the store, the watch fan-out it causes) is handed to
//! the runtime the server was started on, the **write lane**, where the controllers
//! also run. The lanes' threads are ordinary threads of the same priority: the kernel's
//! fair scheduler, which favours a thread that has been waiting over one that has been
//! running, now decides between a read and the flood, instead of a task queue that
//! cannot tell them apart. Upstream draws the same line between read-only and mutating
//! requests in its `--max-requests-inflight` and `--max-mutating-requests-inflight`.
//!
//! Measured (`bench pods-simulated`, 100,000 pods): most of a first page's time under
//! the flood is its own work (the Table), not the wait; the lane took the worst page
//! from 57 to 38–42 ms at a 10 ms allocator purge delay, and made it worse without one
//! (see `docs/performance.md`).

use std::future::Future;

use tokio::runtime::{Handle, Runtime};

/// A server's read lane: a multi-threaded runtime with as many workers as the machine
/// has cores, ended with the server (many servers in one process, as in tests, each
/// have their own, and none leaves a thread behind).
pub struct ReadLane {
    runtime: Option<Runtime>,
}

impl ReadLane {
    /// Start the lane's threads.
    pub fn start() -> std::io::Result<ReadLane> {
        let runtime = tokio::runtime::Builder::new_multi_thread().thread_name("nanokube-reads").enable_all().build()?;
        Ok(ReadLane { runtime: Some(runtime) })
    }

    /// Where to spawn the lane's work.
    pub fn handle(&self) -> Option<&Handle> {
        self.runtime.as_ref().map(Runtime::handle)
    }
}

impl Drop for ReadLane {
    /// Its tasks are dropped and its threads end without being waited for, which is
    /// allowed inside another runtime (a plain drop would block, and panic there).
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Whether a request's handling belongs on the write lane: every method that may
/// change something (`GET`, `HEAD` and `OPTIONS` do not; upgrades such as exec over
/// SPDY are `POST`s and go there too, which only moves where their streams are
/// pumped).
pub fn is_mutating(method: &http::Method) -> bool {
    !matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS)
}

/// Run `work` on the runtime `lane` and wait for it; if the task panics, `on_panic`
/// answers instead (as a panic in the request's own task would have ended it).
pub async fn run_on<T: Send + 'static>(lane: &Handle, work: impl Future<Output = T> + Send + 'static, on_panic: impl FnOnce() -> T) -> T {
    let mut task = AbortOnDrop(lane.spawn(work));
    match (&mut task.0).await {
        Ok(v) => v,
        Err(_) => on_panic(),
    }
}

/// A task that ends when its handle is dropped: a request whose client went away
/// stops being handled, as it would have on its own task.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
