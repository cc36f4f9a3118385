//! `Engine`: the serving loop behind `serve_forever()`, `handle_request()` and `shutdown()`.
//!
//! One engine belongs to one Python server object and borrows its listening descriptor
//! (`server.fileno()`, re-read at the start of every call, as the stdlib does); it never owns
//! or reconfigures the socket. Every wait runs with the GIL released. Python hooks are called
//! by attribute lookup on the server, so overrides always win.

use std::io;
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;

use crate::acquire::{FastPath, Raw};
use crate::deadline::{AcceptBackoff, Deadline, duration_from_secs, effective_timeout};
use crate::errors::os_error;
use crate::net::is_descriptor_exhaustion;
use crate::poller::{Poller, PollerSlot, Wakeup};
use crate::pool::WorkerPool;
use crate::shutdown::ShutdownLatch;
use crate::signals::SignalWakeup;

/// How often a `shutdown()` that is waiting for the loop looks for pending signals.
const SHUTDOWN_SIGNAL_CHECK: Duration = Duration::from_millis(100);

#[pyclass(frozen, module = "socketserver_rs._core")]
#[derive(Debug, Default)]
pub struct Engine {
    latch: ShutdownLatch,
    poller: PollerSlot,
}

/// Everything one serving call holds while it runs.
struct Session {
    poller: Poller,
    signals: Option<SignalWakeup>,
    fast: Option<FastPath>,
    /// The worker pool whose free capacity decides whether to accept (backpressure).
    pool: Option<Py<WorkerPool>>,
    backoff: AcceptBackoff,
    /// The last wait reported the listener readable: its edge is consumed.
    needs_rearm: bool,
    /// The last wait was not listening (back-off or a full pool).
    was_paused: bool,
}

impl Engine {
    /// Start watching the server's descriptor, with signals routed to the poller.
    fn open_session(
        &self,
        server: &Bound<'_, PyAny>,
        fast: bool,
        pool: Option<Py<WorkerPool>>,
    ) -> PyResult<Session> {
        let py = server.py();
        let fd: i32 = server.call_method0(intern!(py, "fileno"))?.extract()?;
        if fd < 0 {
            return Err(PyValueError::new_err(format!(
                "Invalid file descriptor: {fd}"
            )));
        }
        let fast = if fast {
            FastPath::for_server(server)?
        } else {
            None
        };
        let mut poller = self.poller.take().map_err(|e| os_error(&e))?;
        if let Err(err) = poller.watch(fd) {
            self.poller.put_back(poller);
            return Err(os_error(&err));
        }
        let signals = match SignalWakeup::install(py, poller.signal_write_fd()) {
            Ok(signals) => signals,
            Err(err) => {
                poller.unwatch();
                self.poller.put_back(poller);
                return Err(err);
            }
        };
        if let Some(pool) = &pool {
            pool.get().queue().set_admission_waker(Some(poller.waker()));
        }
        Ok(Session {
            poller,
            signals: Some(signals),
            fast,
            pool,
            backoff: AcceptBackoff::default(),
            needs_rearm: false,
            was_paused: false,
        })
    }

    fn close_session(&self, py: Python<'_>, mut session: Session) -> PyResult<()> {
        session.poller.unwatch();
        if let Some(pool) = &session.pool {
            pool.get().queue().set_admission_waker(None);
        }
        let restored = match session.signals.take() {
            Some(signals) => signals.restore(py),
            None => Ok(()),
        };
        self.poller.put_back(session.poller);
        restored
    }

    /// Run `body` inside a session, closing it whatever `body` returns.
    fn with_session<T>(
        &self,
        server: &Bound<'_, PyAny>,
        fast: bool,
        pool: Option<Py<WorkerPool>>,
        body: impl FnOnce(&mut Session) -> PyResult<T>,
    ) -> PyResult<T> {
        let mut session = self.open_session(server, fast, pool)?;
        let result = body(&mut session);
        let closed = self.close_session(server.py(), session);
        let value = result?;
        closed?;
        Ok(value)
    }
}

impl Session {
    /// Wait with the GIL released; on the fast path also take the request in the same
    /// GIL-free stretch. Pending signals are checked (and their handlers run) afterwards.
    fn wait(
        &mut self,
        py: Python<'_>,
        timeout: Option<Duration>,
    ) -> PyResult<(Wakeup, Option<io::Result<Raw>>)> {
        // Accept only when the pool (if any) has a worker for the request: otherwise clients
        // wait in the kernel backlog and the first worker to free up wakes us.
        let listening = !self.backoff.is_paused()
            && self
                .pool
                .as_ref()
                .is_none_or(|pool| pool.get().queue().admit());
        // mio is edge-triggered: ask the kernel to report a still-readable listener again
        // after we consumed its readiness, or when listening resumes after a pause (events
        // during the pause were ignored). Not while paused: that would report it at once,
        // again and again, and spin.
        if listening && (self.needs_rearm || self.was_paused) {
            self.poller.rearm().map_err(|e| os_error(&e))?;
        }
        let timeout = match self.backoff.remaining() {
            Some(pause) => Some(timeout.map_or(pause, |t| t.min(pause))),
            None => timeout,
        };
        let Session { poller, fast, .. } = self;
        let raw = fast.as_mut().map(|fast| &mut fast.raw);
        let (wakeup, acquired) = py
            .detach(move || {
                let wakeup = poller.wait(timeout, listening)?;
                let acquired = match raw {
                    Some(raw) if wakeup.readable => Some(raw.acquire()),
                    _ => None,
                };
                io::Result::Ok((wakeup, acquired))
            })
            .map_err(|e| os_error(&e))?;
        self.needs_rearm = wakeup.readable;
        self.was_paused = !listening;
        py.check_signals()?;
        Ok((wakeup, acquired))
    }

    /// Serve the request that made the socket readable, the way `_handle_request_noblock()`
    /// does; returns what the Python side returned.
    fn serve_one<'py>(
        &mut self,
        server: &Bound<'py, PyAny>,
        acquired: Option<io::Result<Raw>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = server.py();
        let failure = match (&self.fast, acquired) {
            (Some(fast), Some(Ok(raw))) => {
                self.backoff.succeeded();
                let args = fast.to_python(py, raw)?;
                return server.call_method1(intern!(py, "_rs_serve_acquired"), args);
            }
            // get_request() swallows an OSError from accept/recvfrom and serves nothing.
            (Some(_), Some(Err(err))) => err.raw_os_error(),
            _ => {
                let outcome = server.call_method0(intern!(py, "_handle_request_noblock"))?;
                // Our `_handle_request_noblock` returns the OSError it swallowed, if any.
                outcome
                    .getattr(intern!(py, "errno"))
                    .ok()
                    .and_then(|errno| errno.extract::<i32>().ok())
            }
        };
        match failure.map(io::Error::from_raw_os_error) {
            Some(err) if is_descriptor_exhaustion(&err) => self.backoff.failed(),
            _ => self.backoff.succeeded(),
        }
        Ok(py.None().into_bound(py))
    }
}

#[pymethods]
impl Engine {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Serve requests until `shutdown()`. `service_actions` false means the server's
    /// `service_actions()` is the no-op default: then an idle loop never wakes up.
    #[pyo3(signature = (server, poll_interval, fast, service_actions, pool=None))]
    fn serve_forever(
        &self,
        server: &Bound<'_, PyAny>,
        poll_interval: Option<f64>,
        fast: bool,
        service_actions: bool,
        pool: Option<Py<WorkerPool>>,
    ) -> PyResult<()> {
        let py = server.py();
        let interval = if service_actions {
            duration_from_secs(poll_interval)
        } else {
            None
        };
        self.latch.begin_serving();
        let result = self.with_session(server, fast, pool, |session| {
            while !self.latch.is_requested() {
                let (wakeup, acquired) = session.wait(py, interval)?;
                if self.latch.is_requested() {
                    break;
                }
                if wakeup.readable {
                    session.serve_one(server, acquired)?;
                }
                if service_actions {
                    server.call_method0(intern!(py, "service_actions"))?;
                }
            }
            Ok(())
        });
        self.latch.end_serving();
        result
    }

    /// Wait for and serve one request, or call `handle_timeout()` once the timeout passes.
    #[pyo3(signature = (server, fast))]
    fn handle_request<'py>(
        &self,
        server: &Bound<'py, PyAny>,
        fast: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = server.py();
        let socket_timeout = server
            .getattr(intern!(py, "socket"))?
            .call_method0(intern!(py, "gettimeout"))?
            .extract()?;
        let server_timeout = server.getattr(intern!(py, "timeout"))?.extract()?;
        let timeout = effective_timeout(socket_timeout, server_timeout);
        let deadline = Deadline::after(duration_from_secs(timeout));
        self.with_session(server, fast, None, |session| {
            loop {
                let (wakeup, acquired) = session.wait(py, deadline.remaining())?;
                if wakeup.readable {
                    return session.serve_one(server, acquired);
                }
                if deadline.has_passed() {
                    return server.call_method0(intern!(py, "handle_timeout"));
                }
            }
        })
    }

    /// Ask `serve_forever()` to stop and wait until it has. On the serving thread itself
    /// (a handler calling it) it only asks, since waiting there would deadlock.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        self.latch.request();
        self.poller.wake().map_err(|e| os_error(&e))?;
        if self.latch.is_serving_thread() {
            return Ok(());
        }
        while !py.detach(|| self.latch.wait_stopped(SHUTDOWN_SIGNAL_CHECK)) {
            py.check_signals()?;
        }
        Ok(())
    }

    /// The sticky shutdown request (the stdlib's `_BaseServer__shutdown_request`).
    #[getter]
    fn shutdown_requested(&self) -> bool {
        self.latch.is_requested()
    }

    #[setter]
    fn set_shutdown_requested(&self, value: bool) {
        self.latch.set_requested(value);
    }
}
