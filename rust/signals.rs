//! Making signals end a wait at once, whichever thread the kernel delivers them to.
//!
//! CPython runs signal handlers only on the main thread, but the kernel may deliver SIGINT to
//! any thread (a busy handler thread, say); then the main thread's `epoll_wait` sees no EINTR.
//! CPython's C-level handler also writes one byte to the descriptor set with
//! `signal.set_wakeup_fd`, so while a loop waits on the main thread we point that at the
//! poller's signal pipe and put the previous descriptor back afterwards.

use std::os::fd::RawFd;

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

static SET_WAKEUP_FD: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn set_wakeup_fd(py: Python<'_>, fd: RawFd, warn_on_full_buffer: bool) -> PyResult<RawFd> {
    let function = SET_WAKEUP_FD.get_or_try_init(py, || {
        PyResult::Ok(py.import("signal")?.getattr("set_wakeup_fd")?.unbind())
    })?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("warn_on_full_buffer", warn_on_full_buffer)?;
    function.bind(py).call((fd,), Some(&kwargs))?.extract()
}

/// The wakeup descriptor swapped in for the length of one wait loop.
#[derive(Debug)]
pub struct SignalWakeup {
    /// The descriptor to restore; `None` when not on the main thread (nothing was swapped).
    previous: Option<RawFd>,
}

impl SignalWakeup {
    /// Route signal wakeups to `fd`. Off the main thread Python refuses with `ValueError`,
    /// and signals there are not ours to handle, so that is not an error.
    pub fn install(py: Python<'_>, fd: RawFd) -> PyResult<SignalWakeup> {
        // A full pipe only means a wakeup is already pending, so no warning for it.
        match set_wakeup_fd(py, fd, false) {
            Ok(previous) => Ok(SignalWakeup {
                previous: Some(previous),
            }),
            Err(err) if err.is_instance_of::<PyValueError>(py) => {
                Ok(SignalWakeup { previous: None })
            }
            Err(err) => Err(err),
        }
    }

    pub fn restore(self, py: Python<'_>) -> PyResult<()> {
        if let Some(previous) = self.previous {
            set_wakeup_fd(py, previous, true)?;
        }
        Ok(())
    }
}
