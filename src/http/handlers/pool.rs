//! The one bounded executor for requests' blocking work (signing, store writes, chain
//! checks). A fixed number of jobs run at once on tokio's blocking threads, a bounded number
//! wait for a turn, and beyond that a request is answered 503 with `Retry-After: 1` at once:
//! under overload the server sheds work instead of piling up threads and memory.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::ca::CaError;

/// Runs blocking jobs, at most `threads` at once and `threads + queue_depth` admitted.
#[derive(Debug)]
pub(crate) struct BlockingPool {
    /// Jobs running or waiting; a job that finds none left is refused.
    admitted: Arc<Semaphore>,
    /// Jobs running.
    running: Arc<Semaphore>,
}

impl BlockingPool {
    /// A pool running `threads` jobs at once, with `queue_depth` more waiting.
    pub(crate) fn new(threads: usize, queue_depth: usize) -> Self {
        // `Semaphore::MAX_PERMITS` is far above any sane configuration; clamping keeps a
        // huge configured value from panicking at start.
        let cap = |n: usize| n.clamp(1, Semaphore::MAX_PERMITS);
        BlockingPool {
            admitted: Arc::new(Semaphore::new(cap(threads.saturating_add(queue_depth)))),
            running: Arc::new(Semaphore::new(cap(threads))),
        }
    }

    /// Runs `f` on a blocking thread once a turn is free, or answers [`CaError::Busy`] at
    /// once when the queue is full.
    pub(crate) async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, CaError> {
        let Ok(admitted) = self.admitted.clone().try_acquire_owned() else {
            return Err(CaError::Busy(
                "the server has too much work queued; retry in a moment".into(),
            ));
        };
        let running = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| CaError::Internal("the blocking pool is closed".into()))?;
        // The permits move into the job: if the request is dropped (client gone), the job
        // still runs to its end and keeps its place counted until then. The job runs in the
        // request's span, so its log lines carry the request id.
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _permits = (admitted, running);
            let _span = span.enter();
            f()
        })
        .await
        .map_err(|e| CaError::Internal(format!("worker failed: {e}")))
    }

    /// Jobs that may still be admitted (running or waiting) right now.
    #[cfg(test)]
    pub(crate) fn free(&self) -> usize {
        self.admitted.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_a_drained_one_admits_again() {
        let pool = Arc::new(BlockingPool::new(1, 1));
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Arc::new(std::sync::Mutex::new(held));
        // One job runs (blocked until released) and one waits for its turn.
        let mut jobs = Vec::new();
        for _ in 0..2 {
            let (pool, held) = (pool.clone(), held.clone());
            jobs.push(tokio::spawn(async move {
                pool.run(move || {
                    let _ = held.lock().unwrap().recv();
                })
                .await
            }));
        }
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while pool.free() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "jobs never admitted"
            );
            tokio::task::yield_now().await;
        }
        let refused = pool.run(|| ()).await;
        assert!(matches!(refused, Err(CaError::Busy(_))), "{refused:?}");
        for _ in 0..2 {
            release.send(()).unwrap();
        }
        for j in jobs {
            j.await.unwrap().unwrap();
        }
        pool.run(|| ()).await.unwrap();
    }
}
