//! The shutdown handshake between `shutdown()` and a running `serve_forever()`.
//!
//! Mirrors the stdlib's two pieces of state: a sticky request flag (a `shutdown()` that comes
//! before `serve_forever()` still stops it) and an "is shut down" event that `shutdown()` waits
//! on. Waiting is split into slices so the caller can check for signals between them. This file
//! needs no Python and is tested with `cargo test`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, PoisonError};
use std::time::Duration;

/// Identifies an OS thread (`pthread_self`, which is also Python's `threading.get_ident()`).
pub fn current_thread_id() -> u64 {
    // SAFETY: pthread_self has no preconditions and cannot fail.
    unsafe { libc::pthread_self() as u64 }
}

const NOBODY: u64 = 0;

#[derive(Debug, Default)]
pub struct ShutdownLatch {
    requested: AtomicBool,
    serving_thread: AtomicU64,
    stopped: Mutex<bool>,
    stopped_changed: Condvar,
}

impl ShutdownLatch {
    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    pub fn request(&self) {
        self.requested.store(true, Ordering::Release);
    }

    /// Overwrite the request flag (the stdlib exposes it as `_BaseServer__shutdown_request`).
    pub fn set_requested(&self, value: bool) {
        self.requested.store(value, Ordering::Release);
    }

    /// The serving loop starts on the calling thread (another may be running: the classic
    /// servers allow that, as the stdlib's do).
    pub fn begin_serving(&self) {
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        *stopped = false;
        self.serving_thread
            .store(current_thread_id(), Ordering::Release);
    }

    /// The serving loop starts on the calling thread unless one is running already: then
    /// nothing changes and the error is that loop's thread. Of two threads calling at once,
    /// exactly one gets `Ok`.
    pub fn begin_serving_alone(&self) -> Result<(), u64> {
        // Under the lock under which `end_serving` frees the thread and reports the stop: a
        // loop that begins as another ends is not reported stopped by it.
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        self.serving_thread
            .compare_exchange(
                NOBODY,
                current_thread_id(),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .map(|_| *stopped = false)
    }

    /// The serving loop has ended: clear the request and release every waiting `shutdown()`.
    pub fn end_serving(&self) {
        self.requested.store(false, Ordering::Release);
        // The thread is freed with the stop reported, under one lock: once a `shutdown()`
        // returns, a new loop may begin (`begin_serving_alone`); and one that begins now cannot
        // have its `stopped = false` overwritten by this loop's `true`.
        let mut stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        self.serving_thread.store(NOBODY, Ordering::Release);
        *stopped = true;
        drop(stopped);
        self.stopped_changed.notify_all();
    }

    /// Whether the calling thread is the one running the loop (waiting would deadlock).
    pub fn is_serving_thread(&self) -> bool {
        self.serving_thread.load(Ordering::Acquire) == current_thread_id()
    }

    /// Wait at most `slice` for the loop to stop; true once it has.
    pub fn wait_stopped(&self, slice: Duration) -> bool {
        let stopped = self.stopped.lock().unwrap_or_else(PoisonError::into_inner);
        let (stopped, _) = self
            .stopped_changed
            .wait_timeout_while(stopped, slice, |stopped| !*stopped)
            .unwrap_or_else(PoisonError::into_inner);
        *stopped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn request_before_serving_is_sticky_until_the_loop_ends() {
        let latch = ShutdownLatch::default();
        latch.request();
        latch.begin_serving();
        assert!(latch.is_requested());
        latch.end_serving();
        assert!(!latch.is_requested());
    }

    #[test]
    fn waiting_before_any_loop_does_not_report_stopped() {
        let latch = ShutdownLatch::default();
        assert!(!latch.wait_stopped(Duration::from_millis(10)));
    }

    #[test]
    fn waiter_is_released_as_soon_as_the_loop_ends() {
        let latch = Arc::new(ShutdownLatch::default());
        latch.begin_serving();
        let server = Arc::clone(&latch);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            server.end_serving();
        });
        let started = Instant::now();
        assert!(
            latch.wait_stopped(Duration::from_secs(5)),
            "the loop never reported its stop"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
        thread.join().unwrap();
    }

    #[test]
    fn a_second_loop_alone_is_refused_until_the_first_ends() {
        let latch = Arc::new(ShutdownLatch::default());
        assert_eq!(latch.begin_serving_alone(), Ok(()));
        assert_eq!(latch.begin_serving_alone(), Err(current_thread_id()));
        let other = Arc::clone(&latch);
        let refused = std::thread::spawn(move || other.begin_serving_alone())
            .join()
            .unwrap();
        assert_eq!(refused, Err(current_thread_id()));
        latch.end_serving();
        assert_eq!(latch.begin_serving_alone(), Ok(()));
        assert!(!latch.wait_stopped(Duration::from_millis(1)));
    }

    #[test]
    fn once_a_waiter_sees_the_loop_stopped_a_new_loop_may_begin() {
        for _ in 0..2000 {
            let latch = Arc::new(ShutdownLatch::default());
            latch.begin_serving_alone().unwrap();
            let ending = Arc::clone(&latch);
            let thread = std::thread::spawn(move || ending.end_serving());
            assert!(
                latch.wait_stopped(Duration::from_secs(5)),
                "the loop never reported its stop"
            );
            assert_eq!(latch.begin_serving_alone(), Ok(()));
            thread.join().unwrap();
        }
    }

    #[test]
    fn of_threads_beginning_alone_at_once_exactly_one_serves() {
        for _ in 0..50 {
            let latch = Arc::new(ShutdownLatch::default());
            let start = Arc::new(std::sync::Barrier::new(4));
            let threads: Vec<_> = (0..4)
                .map(|_| {
                    let (latch, start) = (Arc::clone(&latch), Arc::clone(&start));
                    std::thread::spawn(move || {
                        start.wait();
                        latch.begin_serving_alone().is_ok()
                    })
                })
                .collect();
            let won = threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .filter(|&ok| ok)
                .count();
            assert_eq!(won, 1);
        }
    }

    #[test]
    fn serving_thread_is_recognised() {
        let latch = Arc::new(ShutdownLatch::default());
        latch.begin_serving();
        assert!(latch.is_serving_thread());
        let other = Arc::clone(&latch);
        assert!(
            !std::thread::spawn(move || other.is_serving_thread())
                .join()
                .unwrap()
        );
    }
}
