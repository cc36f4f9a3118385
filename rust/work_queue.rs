//! The queue between the serving loop and pooled worker threads, with the pool's sizing rules.
//!
//! Workers are started on demand up to `max_workers` and retire after sitting idle for the
//! idle timeout. The serving loop asks `admit()` before it accepts: when every worker is busy
//! and no more may start, it stops accepting (clients wait in the kernel backlog) and the
//! first worker to become free wakes it. This file needs no Python and is tested with
//! `cargo test`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use crate::poller::SharedWaker;

/// What the submitter must do after `submit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// An idle worker will take it.
    Handed,
    /// Start one more worker (already counted); it will take the item.
    StartWorker,
    /// Every worker is busy and the pool is full: it waits its turn.
    Queued,
}

#[derive(Debug)]
struct State<T> {
    items: VecDeque<T>,
    /// Workers started and not yet retired.
    workers: usize,
    /// Workers waiting in `take`.
    idle: usize,
    closed: bool,
    /// The serving loop found no free worker and waits to be woken when one frees up.
    admission_waiting: bool,
}

#[derive(Debug)]
pub struct WorkQueue<T> {
    state: Mutex<State<T>>,
    item_ready: Condvar,
    max_workers: usize,
    admission_waker: Mutex<Option<SharedWaker>>,
    /// `(workers, idle, queued)` as of the last change, for readers that must not lock.
    gauges: [AtomicUsize; 3],
}

impl<T> WorkQueue<T> {
    pub fn new(max_workers: usize) -> Self {
        WorkQueue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                workers: 0,
                idle: 0,
                closed: false,
                admission_waiting: false,
            }),
            item_ready: Condvar::new(),
            max_workers: max_workers.max(1),
            admission_waker: Mutex::new(None),
            gauges: Default::default(),
        }
    }

    /// Mirror the counts into `gauges` (called with the lock held, after every change).
    fn publish(&self, state: &State<T>) {
        self.gauges[0].store(state.workers, Ordering::Relaxed);
        self.gauges[1].store(state.idle, Ordering::Relaxed);
        self.gauges[2].store(state.items.len(), Ordering::Relaxed);
    }

    /// `(workers, idle, queued)` without taking the lock (for statistics: the three may be
    /// from two neighbouring moments).
    pub fn gauges(&self) -> (usize, usize, usize) {
        let [workers, idle, queued] = &self.gauges;
        (
            workers.load(Ordering::Relaxed),
            idle.load(Ordering::Relaxed),
            queued.load(Ordering::Relaxed),
        )
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queue one item. `Err(item)` once the queue is closed.
    pub fn submit(&self, item: T) -> Result<Submitted, T> {
        let mut state = self.lock();
        if state.closed {
            return Err(item);
        }
        state.items.push_back(item);
        if state.items.len() <= state.idle {
            self.publish(&state);
            drop(state);
            self.item_ready.notify_one();
            Ok(Submitted::Handed)
        } else if state.workers < self.max_workers {
            state.workers += 1;
            self.publish(&state);
            Ok(Submitted::StartWorker)
        } else {
            self.publish(&state);
            Ok(Submitted::Queued)
        }
    }

    /// A counted worker will never call `take` again (it failed to start, or an exception
    /// ended it): forget it, and wake a serving loop waiting for a free worker.
    pub fn worker_gone(&self) {
        let mut state = self.lock();
        state.workers = state.workers.saturating_sub(1);
        self.publish(&state);
        if std::mem::take(&mut state.admission_waiting) {
            self.wake_admission();
        }
    }

    /// Called by a worker that is ready for its next item (blocks; call without the GIL).
    /// `None` tells the worker to exit: the queue is closed and drained, or it sat idle for
    /// `idle_timeout`.
    pub fn take(&self, idle_timeout: Duration) -> Option<T> {
        let mut state = self.lock();
        state.idle += 1;
        self.publish(&state);
        let wake_admission = std::mem::take(&mut state.admission_waiting);
        if wake_admission {
            self.wake_admission();
        }
        let retire_at = Instant::now().checked_add(idle_timeout);
        loop {
            if let Some(item) = state.items.pop_front() {
                state.idle -= 1;
                self.publish(&state);
                return Some(item);
            }
            let now = Instant::now();
            let expired = retire_at.is_some_and(|at| now >= at);
            if state.closed || expired {
                state.idle -= 1;
                state.workers -= 1;
                self.publish(&state);
                return None;
            }
            state = match retire_at {
                Some(at) => {
                    self.item_ready
                        .wait_timeout(state, at - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .item_ready
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    /// Whether one more request can be given to a worker now. When not, remember that the
    /// serving loop is waiting, so the next worker to become free wakes it.
    pub fn admit(&self) -> bool {
        let mut state = self.lock();
        let free = state.idle + (self.max_workers - state.workers);
        let admitted = state.items.len() < free;
        state.admission_waiting = !admitted;
        admitted
    }

    /// The waker to use when admission becomes possible again (`None` to forget it).
    pub fn set_admission_waker(&self, waker: Option<SharedWaker>) {
        *self
            .admission_waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = waker;
    }

    fn wake_admission(&self) {
        let waker = self
            .admission_waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(waker) = waker {
            // A failed wake only delays admission until the loop's next wakeup.
            let _ = waker.wake();
        }
    }

    /// Refuse new items and let workers exit once the queue is drained.
    pub fn close(&self) {
        self.lock().closed = true;
        self.item_ready.notify_all();
    }

    /// `(workers, idle, queued)`.
    pub fn counts(&self) -> (usize, usize, usize) {
        let state = self.lock();
        (state.workers, state.idle, state.items.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::thread;

    const LONG: Duration = Duration::from_secs(5);

    #[test]
    fn first_submit_asks_for_a_worker_then_reuses_the_idle_one() {
        let queue = Arc::new(WorkQueue::new(4));
        assert_eq!(queue.submit(1), Ok(Submitted::StartWorker));
        let worker = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || {
                let mut seen = Vec::new();
                while let Some(item) = queue.take(LONG) {
                    seen.push(item);
                }
                seen
            })
        };
        // Wait until the worker is idle again, then the next item goes to it.
        while queue.counts() != (1, 1, 0) {
            thread::yield_now();
        }
        assert_eq!(queue.submit(2), Ok(Submitted::Handed));
        while queue.counts() != (1, 1, 0) {
            thread::yield_now();
        }
        queue.close();
        assert_eq!(worker.join().unwrap(), vec![1, 2]);
        assert_eq!(queue.counts(), (0, 0, 0));
    }

    #[test]
    fn pool_grows_to_its_limit_then_queues_and_refuses_admission() {
        let queue = WorkQueue::new(2);
        assert!(queue.admit());
        assert_eq!(queue.submit("a"), Ok(Submitted::StartWorker));
        assert_eq!(queue.submit("b"), Ok(Submitted::StartWorker));
        assert!(!queue.admit(), "both workers are spoken for");
        assert_eq!(queue.submit("c"), Ok(Submitted::Queued));
    }

    #[test]
    fn a_freed_worker_wakes_the_waiting_serving_loop() {
        let mut poll = mio::Poll::new().unwrap();
        let waker = Arc::new(crate::sys::ForkBound::new(
            mio::Waker::new(poll.registry(), mio::Token(7)).unwrap(),
        ));
        let queue = WorkQueue::new(1);
        queue.set_admission_waker(Some(waker));
        assert_eq!(queue.submit(()), Ok(Submitted::StartWorker));
        assert_eq!(queue.take(LONG), Some(()));
        assert!(!queue.admit(), "the only worker is busy");
        // The worker comes back for more: admission is possible again and the loop is woken.
        let queue = Arc::new(queue);
        let worker = {
            let queue = Arc::clone(&queue);
            thread::spawn(move || queue.take(Duration::from_millis(200)))
        };
        let mut events = mio::Events::with_capacity(4);
        poll.poll(&mut events, Some(LONG)).unwrap();
        assert_eq!(events.iter().next().map(|e| e.token()), Some(mio::Token(7)));
        assert!(queue.admit());
        assert_eq!(worker.join().unwrap(), None, "idle worker retires");
        assert_eq!(queue.counts(), (0, 0, 0));
    }

    #[test]
    fn idle_workers_retire_after_the_timeout() {
        let queue = WorkQueue::<u8>::new(1);
        assert_eq!(queue.submit(9), Ok(Submitted::StartWorker));
        assert_eq!(queue.take(Duration::from_millis(10)), Some(9));
        let started = Instant::now();
        assert_eq!(queue.take(Duration::from_millis(30)), None);
        assert!(started.elapsed() >= Duration::from_millis(25));
        assert_eq!(queue.counts(), (0, 0, 0));
    }

    #[test]
    fn close_drains_queued_items_first_and_refuses_new_ones() {
        let queue = WorkQueue::new(1);
        queue.submit(1).unwrap();
        queue.submit(2).unwrap();
        queue.close();
        assert_eq!(queue.submit(3), Err(3));
        assert_eq!(queue.take(LONG), Some(1));
        assert_eq!(queue.take(LONG), Some(2));
        assert_eq!(queue.take(LONG), None);
    }

    #[test]
    fn a_worker_that_is_gone_is_not_counted() {
        let queue = WorkQueue::new(1);
        assert_eq!(queue.submit(1), Ok(Submitted::StartWorker));
        queue.worker_gone();
        assert_eq!(queue.counts(), (0, 0, 1));
        assert_eq!(queue.submit(2), Ok(Submitted::StartWorker));
    }

    #[test]
    fn gauges_follow_the_counts_without_the_lock() {
        let queue = Arc::new(WorkQueue::new(2));
        assert_eq!(queue.gauges(), (0, 0, 0));
        assert_eq!(queue.submit(1), Ok(Submitted::StartWorker));
        assert_eq!(queue.gauges(), (1, 0, 1));
        assert_eq!(queue.take(Duration::from_secs(1)), Some(1));
        assert_eq!(queue.gauges(), (1, 0, 0));
        let waiting = Arc::clone(&queue);
        let worker = std::thread::spawn(move || waiting.take(Duration::from_millis(100)));
        while queue.gauges().1 == 0 {
            std::thread::yield_now();
        }
        assert_eq!(queue.gauges(), queue.counts());
        assert_eq!(worker.join().unwrap(), None); // retired after idling
        assert_eq!(queue.gauges(), (0, 0, 0));
    }
}
