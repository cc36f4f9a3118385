//! `Supervisor`: the waiting and bookkeeping of a prefork parent. One wait, with the GIL
//! released, ends on a child's exit (SIGCHLD through the signal wakeup pipe), any other
//! signal, `request_stop()` from another thread, or a timeout; the children it watches are
//! reaped there. It also owns the heartbeat board the children report to.
//!
//! The policy (what a signal means, when to respawn, whom to stop) is Python's
//! (`_prefork.py`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::deadline::duration_from_secs;
use crate::errors::os_error;
use crate::finalize::detach;
use crate::heartbeat::{self, Board};
use crate::orphans;
use crate::poller::{Poller, SharedWaker};
use crate::shutdown::ShutdownLatch;
use crate::signals::SignalWakeup;

/// How often a `wait_stopped()` looks for pending signals.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// The prefork parent's wait: child exits, signals and shutdown requests.
#[pyclass(frozen, module = "socketserver_rs._core")]
#[derive(Debug)]
pub struct Supervisor {
    board: Arc<Board>,
    /// Taken out for the length of a wait, so no lock is held across it.
    poller: Mutex<Option<Poller>>,
    /// The poller's waker (None in a child, which must not wake its parent's loop).
    waker: Mutex<Option<SharedWaker>>,
    latch: ShutdownLatch,
    /// Children forked and not yet reaped.
    children: Mutex<Vec<i32>>,
}

impl Supervisor {
    fn children(&self) -> std::sync::MutexGuard<'_, Vec<i32>> {
        self.children.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reap every watched child that has ended: `(pid, wait status)`, the status `None`
    /// when someone else reaped it.
    fn reap(&self) -> Vec<(i32, Option<i32>)> {
        let mut ended = Vec::new();
        self.children().retain(|&pid| {
            let mut status = 0;
            // SAFETY: waitpid on a pid we forked, with a valid status pointer.
            let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
            match rc {
                0 => true,
                rc if rc == pid => {
                    ended.push((pid, Some(status)));
                    false
                }
                _ if std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) => {
                    ended.push((pid, None));
                    false
                }
                _ => true, // EINTR: look again on the next wait
            }
        });
        ended
    }
}

#[pymethods]
impl Supervisor {
    /// A supervisor whose heartbeat board has `slots` slots (children alive at once).
    #[new]
    fn new(slots: usize) -> PyResult<Self> {
        if slots == 0 {
            return Err(PyValueError::new_err("slots must be positive"));
        }
        let board = Board::new(slots).map_err(|e| os_error(&e))?;
        let poller = Poller::new().map_err(|e| os_error(&e))?;
        Ok(Supervisor {
            board: Arc::new(board),
            waker: Mutex::new(Some(poller.waker())),
            poller: Mutex::new(Some(poller)),
            latch: ShutdownLatch::default(),
            children: Mutex::new(Vec::new()),
        })
    }

    /// The supervising loop starts on the calling thread (for `wait_stopped`).
    fn begin(&self) {
        self.latch.begin_serving();
    }

    /// The supervising loop has ended: release every `wait_stopped()`.
    fn end(&self) {
        self.latch.end_serving();
    }

    /// Reap `pid` (a child just forked) in later waits; its heartbeat slot starts now.
    fn watch_child(&self, pid: i32, slot: usize) -> PyResult<()> {
        if !self.board.set(slot, heartbeat::now_ms()) {
            return Err(PyValueError::new_err(format!(
                "heartbeat slot {slot} out of range (the board has {})",
                self.board.slots()
            )));
        }
        self.children().push(pid);
        Ok(())
    }

    /// Whether `pid` is a child not reaped yet (so its pid cannot have been reused).
    fn is_watching(&self, pid: i32) -> bool {
        self.children().contains(&pid)
    }

    /// Wait (GIL released) until a signal arrives, `request_stop()` is called or `timeout`
    /// seconds pass, then reap. Returns the children that ended, as `(pid, wait status)`
    /// (status None: reaped elsewhere). Signal handlers run once this returns to Python.
    #[pyo3(signature = (timeout))]
    fn wait(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Vec<(i32, Option<i32>)>> {
        let ended = self.reap();
        if !ended.is_empty() || self.latch.is_requested() {
            return Ok(ended);
        }
        let taken = self
            .poller
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut poller) = taken else {
            return Err(PyValueError::new_err(
                "Supervisor.wait() is already running",
            ));
        };
        let routed = SignalWakeup::install(py, poller.signal_write_fd());
        let waited = match &routed {
            // A signal that came before the wakeup descriptor was in place left only a flag;
            // Python runs its handler when we return, so do not sleep through it.
            Ok(_) => detach(py, || poller.wait(duration_from_secs(timeout))),
            Err(_) => Ok(Default::default()),
        };
        let restored = routed.and_then(|wakeup| wakeup.restore(py));
        *self.poller.lock().unwrap_or_else(PoisonError::into_inner) = Some(poller);
        restored?;
        waited.map_err(|e| os_error(&e))?;
        Ok(self.reap())
    }

    /// Ask the supervising loop to stop (what `shutdown()` does); wakes its wait.
    fn request_stop(&self) -> PyResult<()> {
        self.latch.request();
        let waker = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        waker.map_or(Ok(()), |w| w.wake().map_err(|e| os_error(&e)))
    }

    /// Whether a stop was asked for (sticky until `end()`).
    #[getter]
    fn stop_requested(&self) -> bool {
        self.latch.is_requested()
    }

    /// Wait until the supervising loop has ended (returns at once on its own thread).
    fn wait_stopped(&self, py: Python<'_>) -> PyResult<()> {
        if self.latch.is_serving_thread() {
            return Ok(());
        }
        while !detach(py, || self.latch.wait_stopped(SIGNAL_CHECK)) {
            py.check_signals()?;
        }
        Ok(())
    }

    /// Of `slots`, those whose child has not reported in for `timeout` seconds.
    fn stale(&self, slots: Vec<usize>, timeout: f64) -> Vec<usize> {
        let limit = (timeout * 1000.0) as u64;
        let now = heartbeat::now_ms();
        slots
            .into_iter()
            .filter(|&slot| {
                self.board
                    .last(slot)
                    .is_some_and(|last| now.saturating_sub(last) > limit)
            })
            .collect()
    }

    /// In a freshly forked child: drop the parent's wait descriptors, die with the parent
    /// (`parent` is its pid), and, with `beat_every`, report in to `slot` from every serving
    /// loop at least that often (seconds). Returns false when the parent is already gone.
    #[pyo3(signature = (parent, slot, beat_every))]
    fn enter_child(&self, parent: i32, slot: usize, beat_every: Option<f64>) -> PyResult<bool> {
        // Its epoll set and waker are the parent's: closing our copies is all we may do.
        drop(
            self.poller
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        drop(
            self.waker
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        self.children().clear();
        if !orphans::die_with_parent(parent) {
            return Ok(false);
        }
        if let Some(every) = duration_from_secs(beat_every) {
            heartbeat::attach(&self.board, slot, every).map_err(|e| os_error(&e))?;
        }
        Ok(true)
    }
}
