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

    /// The serving loop starts on the calling thread.
    pub fn begin_serving(&self) {
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = false;
        self.serving_thread
            .store(current_thread_id(), Ordering::Release);
    }

    /// The serving loop has ended: clear the request and release every waiting `shutdown()`.
    pub fn end_serving(&self) {
        self.requested.store(false, Ordering::Release);
        self.serving_thread.store(NOBODY, Ordering::Release);
        *self.stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
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
        while !latch.wait_stopped(Duration::from_secs(5)) {}
        assert!(started.elapsed() < Duration::from_secs(1));
        thread.join().unwrap();
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
