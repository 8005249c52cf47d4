//! The threads queries execute on: a tokio runtime of their own, apart from the one that
//! serves HTTP, PostgreSQL and ingestion. In: a query's execution future. Out: its result,
//! awaited from the request's task, which stays free to answer.
//!
//! A few steps of DataFusion run for a long time without yielding (a hash join builds its
//! whole table in one poll). On a shared runtime, two such builds hold both workers of a
//! two-core machine: a query's deadline cannot fire, its answer (`57014`) waits for the
//! build, and `/health` and every other request wait with it. Here the deadline fires on
//! the serving runtime on time; the abandoned work is aborted at its next yield (a build
//! runs to its end; RELIABILITY.md measures that tail). As in InfluxDB 3's dedicated
//! executor.
//!
//! A service whose callers keep their own deadlines (a server's Flight service, bounded by
//! the broker's) is served from these threads instead ([`serve_on_query_threads`]): its
//! queries run where the request arrived, without a hand-off to this runtime and back.

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::{JoinError, JoinHandle};

/// The query runtime: one worker per core, 16 MiB stacks (as the serving runtime's, for
/// deep expression trees). `None` when its threads could not be started; queries then run
/// on the caller's runtime.
fn runtime() -> Option<&'static Runtime> {
    static RUNTIME: OnceLock<Option<Runtime>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let cores = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2);
            match Builder::new_multi_thread()
                .worker_threads(cores)
                .thread_name("basalt-query")
                .thread_stack_size(16 << 20)
                .enable_all()
                .build()
            {
                Ok(rt) => Some(rt),
                Err(e) => {
                    tracing::error!(error = %e, "could not start the query threads; queries share the serving threads");
                    None
                }
            }
        })
        .as_ref()
}

/// Whether the calling task runs on the query runtime (a service served from it).
pub(crate) fn on_query_runtime() -> bool {
    match (runtime(), Handle::try_current()) {
        (Some(rt), Ok(h)) => rt.handle().id() == h.id(),
        _ => false,
    }
}

/// Serves `service` (a long-lived server loop) from the query runtime: a request it
/// handles runs its query on the same threads, without handing it to another runtime and
/// back (two thread wake-ups, ~50-60 µs each on two cores). For a service whose callers
/// keep their own deadlines (a server's fragments, bounded by the broker's deadline);
/// health and membership stay on the serving runtime. On the caller's runtime when the
/// query threads could not be started.
pub fn serve_on_query_threads<T: Send + 'static>(
    service: impl Future<Output = T> + Send + 'static,
) -> JoinHandle<T> {
    spawn_on_query_runtime(service)
}

/// Runs `work` on the query runtime. The returned handle aborts the work when dropped (a
/// client gone, a deadline passed).
pub(crate) fn spawn<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
) -> QueryTask<T> {
    QueryTask(spawn_on_query_runtime(work))
}

/// `work` spawned on the query runtime, or on the caller's when it could not be started.
fn spawn_on_query_runtime<T: Send + 'static>(
    work: impl Future<Output = T> + Send + 'static,
) -> JoinHandle<T> {
    match runtime() {
        Some(rt) => rt.spawn(work),
        None => Handle::current().spawn(work),
    }
}

/// A query's work on the query runtime; aborted when dropped.
pub(crate) struct QueryTask<T>(JoinHandle<T>);

impl<T> Future for QueryTask<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for QueryTask<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    /// Work that blocks its thread does not delay the caller's deadline, and dropping the
    /// task aborts the work at its next yield.
    #[tokio::test(flavor = "current_thread")]
    async fn a_blocked_query_thread_does_not_hold_the_caller() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let after = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for _ in 0..cores {
            let after = after.clone();
            tasks.push(spawn(async move {
                std::thread::sleep(Duration::from_millis(600)); // a hash build
                tokio::task::yield_now().await;
                after.store(true, Ordering::SeqCst);
            }));
        }
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_millis(50), &mut tasks[0]).await;
        assert!(r.is_err());
        assert!(started.elapsed() < Duration::from_millis(400));
        drop(tasks);
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(!after.load(Ordering::SeqCst), "aborted work ran on");
    }

    /// A service served from the query threads runs its queries where it is (no hand-off);
    /// anything else hands them over.
    #[tokio::test(flavor = "current_thread")]
    async fn a_service_on_the_query_threads_runs_queries_in_place() {
        assert!(!on_query_runtime());
        let served = serve_on_query_threads(async { on_query_runtime() });
        assert!(served.await.unwrap());
    }
}
