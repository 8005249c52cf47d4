//! Admission of queries: at most `max_concurrent` run at once, at most `max_queued` wait for
//! a turn, and the rest are refused at once. In: a query about to run (with its deadline).
//! Out: a permit held while it runs, or [`QueryError::Overloaded`] (HTTP 503, SQLSTATE
//! 53300) when the queue is full, or a timeout when its turn does not come before its
//! deadline.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::QueryError;

#[derive(Debug)]
pub struct Admission {
    running: Arc<Semaphore>,
    max_concurrent: usize,
    max_queued: usize,
    queued: AtomicUsize,
}

/// A running query's place; the next waiting query gets it when this is dropped.
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] OwnedSemaphorePermit);

/// Counts a query as waiting while it is alive.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Admission {
    pub fn new(max_concurrent: usize, max_queued: usize) -> Admission {
        Admission {
            running: Arc::new(Semaphore::new(max_concurrent.max(1))),
            max_concurrent: max_concurrent.max(1),
            max_queued,
            queued: AtomicUsize::new(0),
        }
    }

    /// Queries running now.
    pub fn running(&self) -> usize {
        self.max_concurrent - self.running.available_permits()
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Waits up to `timeout` for a turn.
    pub async fn admit(&self, timeout: Duration) -> Result<Permit, QueryError> {
        if let Ok(p) = self.running.clone().try_acquire_owned() {
            return Ok(Permit(p));
        }
        let prev = self.queued.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.queued);
        if prev >= self.max_queued {
            return Err(QueryError::Overloaded {
                running: self.running(),
                queued: prev,
            });
        }
        match tokio::time::timeout(timeout, self.running.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(Permit(p)),
            Ok(Err(_)) => Err(QueryError::Overloaded {
                running: self.running(),
                queued: self.queued(),
            }),
            Err(_) => Err(QueryError::Timeout(timeout.as_millis() as u64)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_at_once() {
        let a = Arc::new(Admission::new(1, 1));
        let first = a.admit(Duration::from_secs(5)).await.unwrap();
        let a2 = a.clone();
        let second = tokio::spawn(async move { a2.admit(Duration::from_secs(5)).await });
        while a.queued() == 0 {
            tokio::task::yield_now().await;
        }
        let third = a.admit(Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(third, QueryError::Overloaded { .. }), "{third}");
        drop(first);
        second.await.unwrap().unwrap();
        assert_eq!(a.queued(), 0);
        // A turn that does not come in time is a timeout.
        let _held = a.admit(Duration::from_secs(1)).await.unwrap();
        let late = a.admit(Duration::from_millis(20)).await.unwrap_err();
        assert!(matches!(late, QueryError::Timeout(_)), "{late}");
    }
}
