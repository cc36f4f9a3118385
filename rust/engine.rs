//! `Engine`: the serving loop behind `serve_forever()`, `handle_request()` and `shutdown()`.
//!
//! One engine belongs to one Python server object and borrows its listening descriptor
//! (`server.fileno()`, re-read at the start of every call, as the stdlib does); it never owns
//! or reconfigures the socket. Every wait runs with the GIL released. Python hooks are called
//! by attribute lookup on the server, so overrides always win.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::acquire::FastPath;
use crate::deadline::{AcceptBackoff, Deadline, duration_from_secs, effective_timeout};
use crate::errors::os_error;
use crate::net::is_descriptor_exhaustion;
use crate::poller::{Poller, PollerSlot, Wakeup};
use crate::pool::{WorkItem, WorkerPool};
use crate::shutdown::ShutdownLatch;
use crate::signals::SignalWakeup;
use crate::work_queue::Submitted;

/// How often a `shutdown()` that is waiting for the loop looks for pending signals.
const SHUTDOWN_SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// `socketserver_rs._fastpath.serving_plan`: whether the engine may acquire requests itself.
static SERVING_PLAN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// Its answers (see `_fastpath.py`): the engine may accept/receive requests itself …
const PLAN_FAST: u8 = 1;
/// … and hand them straight to the worker pool.
const PLAN_DIRECT: u8 = 2;

/// Why `serve_directly` came back to Python.
enum DirectExit {
    /// Shutdown was requested.
    Stopped,
    /// The pool needs one more worker thread (already counted).
    StartWorker,
    /// A signal, a timeout or an interrupted call: Python should look.
    Python,
}

/// The serving loop of one server: waiting, shutdown, signals and the fast path.
#[pyclass(frozen, module = "socketserver_rs._core")]
#[derive(Debug, Default)]
pub struct Engine {
    latch: ShutdownLatch,
    poller: PollerSlot,
    /// The errno of the last failed `get_request()` in `_handle_request_noblock` (0: none).
    acquire_errno: AtomicI32,
}

/// Everything one serving call holds while it runs.
struct Session {
    poller: Poller,
    signals: Option<SignalWakeup>,
    /// Set when the fast path applies (see `refresh_plan`).
    fast: Option<FastPath>,
    /// The fast path applies, and the server is a stock pool server: requests go from the
    /// socket to the pool's queue without Python on this thread (see `serve_directly`).
    direct: bool,
    /// The size of the server's instance `__dict__` when the plan was made: a hook assigned
    /// on the instance while serving changes it, and the plan is made again.
    plan_key: Option<usize>,
    /// The worker pool whose free capacity decides whether to accept (backpressure).
    pool: Option<Py<WorkerPool>>,
    backoff: AcceptBackoff,
}

impl Engine {
    /// Start watching the server's descriptor, with signals routed to the poller.
    fn open_session(
        &self,
        server: &Bound<'_, PyAny>,
        pool: Option<Py<WorkerPool>>,
    ) -> PyResult<Session> {
        let py = server.py();
        let fd: i32 = server.call_method0(intern!(py, "fileno"))?.extract()?;
        if fd < 0 {
            return Err(PyValueError::new_err(format!(
                "Invalid file descriptor: {fd}"
            )));
        }
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
            fast: None,
            direct: false,
            plan_key: None,
            pool,
            backoff: AcceptBackoff::default(),
        })
    }

    fn close_session(&self, py: Python<'_>, mut session: Session) -> PyResult<()> {
        session.poller.unwatch();
        if let Some(pool) = &session.pool {
            pool.get().queue().set_admission_waker(None);
        }
        let restored = session.signals.take().map_or(Ok(()), |s| s.restore(py));
        self.poller.put_back(session.poller);
        restored
    }

    /// Run `body` inside a session, closing it whatever `body` returns.
    fn with_session<T>(
        &self,
        server: &Bound<'_, PyAny>,
        pool: Option<Py<WorkerPool>>,
        body: impl FnOnce(&mut Session) -> PyResult<T>,
    ) -> PyResult<T> {
        let mut session = self.open_session(server, pool)?;
        // A signal that arrived before the wakeup descriptor was in place only left a flag:
        // look now, or an idle loop would sleep through Ctrl-C.
        let result = server
            .py()
            .check_signals()
            .and_then(|()| body(&mut session));
        let closed = self.close_session(server.py(), session);
        let value = result?;
        closed?;
        Ok(value)
    }
}

fn instance_dict_len(server: &Bound<'_, PyAny>) -> usize {
    server
        .getattr(intern!(server.py(), "__dict__"))
        .and_then(|dict| dict.len())
        .unwrap_or(0)
}

impl Session {
    /// Decide (again, if the server's instance attributes changed) whether the fast path
    /// applies. Costs one `len(server.__dict__)` per request when nothing changed; a hook
    /// patched on the class while serving is not noticed (documented).
    fn refresh_plan(&mut self, server: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = server.py();
        let key = instance_dict_len(server);
        if self.plan_key == Some(key) {
            return Ok(());
        }
        let plan = SERVING_PLAN.get_or_try_init(py, || {
            PyResult::Ok(
                py.import("socketserver_rs._fastpath")?
                    .getattr("serving_plan")?
                    .unbind(),
            )
        })?;
        let mode: u8 = plan.call1(py, (server,))?.extract(py)?;
        self.fast = if mode >= PLAN_FAST {
            FastPath::for_server(server)?
        } else {
            None
        };
        self.direct = false;
        if let (Some(fast), Some(pool), PLAN_DIRECT) = (&self.fast, &self.pool, mode) {
            pool.get().set_converter(Arc::clone(&fast.converter));
            self.direct = true;
        }
        self.plan_key = Some(key);
        Ok(())
    }

    /// Wait with the GIL released, then check for pending signals (running their handlers).
    fn wait(&mut self, server: &Bound<'_, PyAny>, timeout: Option<Duration>) -> PyResult<Wakeup> {
        let py = server.py();
        // Accept only when the pool (if any) has a worker for the request: otherwise clients
        // wait in the kernel backlog and the first worker to free up wakes us.
        let listening = !self.backoff.is_paused()
            && self
                .pool
                .as_ref()
                .is_none_or(|pool| pool.get().queue().admit());
        // A failure means the socket was closed under us (a handler called server_close()):
        // it has left the epoll set, and the loop goes on waiting for shutdown() like the
        // stdlib's.
        let _ = self.poller.set_listening(listening);
        let timeout = self.backoff.cap(timeout);
        let poller = &mut self.poller;
        let wakeup = py
            .detach(move || poller.wait(timeout))
            .map_err(|e| os_error(&e))?;
        py.check_signals()?;
        Ok(wakeup)
    }

    /// Serve the request that made the socket readable, the way `_handle_request_noblock()`
    /// does; returns what the Python side returned. The plan is checked here, after the
    /// wait, so a hook assigned on the instance while we waited serves this very request.
    fn serve_one<'py>(
        &mut self,
        engine: &Engine,
        server: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = server.py();
        self.refresh_plan(server)?;
        let failure = match &mut self.fast {
            Some(fast) => {
                let raw = &mut fast.raw;
                match py.detach(move || raw.acquire()) {
                    Ok(raw) => {
                        self.backoff.succeeded();
                        let args = fast.converter.to_python(py, raw)?;
                        let served = server.call_method1(intern!(py, "_rs_serve_acquired"), args);
                        // As get_request() would, the next datagram uses the current size.
                        fast.follow_packet_size(server)?;
                        return served;
                    }
                    // get_request() swallows an OSError from accept/recvfrom, serves nothing
                    // (after running signal handlers, for EINTR).
                    Err(err) => {
                        py.check_signals()?;
                        err.raw_os_error()
                    }
                }
            }
            None => {
                engine.acquire_errno.store(0, Ordering::Relaxed);
                let outcome = server.call_method0(intern!(py, "_handle_request_noblock"))?;
                // Our `_handle_request_noblock` reports the errno of an OSError it swallowed.
                let errno = engine.acquire_errno.swap(0, Ordering::Relaxed);
                self.note_failure((errno != 0).then_some(errno));
                return Ok(outcome);
            }
        };
        self.note_failure(failure);
        Ok(py.None().into_bound(py))
    }

    /// Pool servers with every hook stock: accept (or receive) and queue raw requests for
    /// the workers without the GIL, for as long as nothing needs Python. The workers turn
    /// them into sockets and addresses and call `process_request_thread()`, which is what
    /// `verify_request()` (always true) and `process_request()` (submit) would have led to.
    fn serve_directly(
        &mut self,
        engine: &Engine,
        server: &Bound<'_, PyAny>,
        interval: Option<Duration>,
    ) -> PyResult<()> {
        let py = server.py();
        let (Some(pool), Some(fast)) = (&self.pool, &mut self.fast) else {
            return Ok(());
        };
        let queue = pool.get().queue();
        let latch = &engine.latch;
        let (poller, raw, backoff) = (&mut self.poller, &mut fast.raw, &mut self.backoff);
        let exit = py
            .detach(|| -> io::Result<DirectExit> {
                loop {
                    if latch.is_requested() {
                        return Ok(DirectExit::Stopped);
                    }
                    let _ = poller.set_listening(!backoff.is_paused() && queue.admit());
                    let wakeup = poller.wait(backoff.cap(interval))?;
                    if wakeup.signalled || !(wakeup.readable || wakeup.woken) {
                        return Ok(DirectExit::Python);
                    }
                    if !wakeup.readable {
                        continue; // a worker freed up, or shutdown: both are looked at above
                    }
                    match raw.acquire() {
                        Ok(item) => {
                            backoff.succeeded();
                            // A closed pool (server_close() under us) drops the connection.
                            if let Ok(Submitted::StartWorker) = queue.submit(WorkItem::Raw(item)) {
                                return Ok(DirectExit::StartWorker);
                            }
                        }
                        Err(err) if err.kind() == io::ErrorKind::Interrupted => {
                            return Ok(DirectExit::Python);
                        }
                        Err(err) if is_descriptor_exhaustion(&err) => backoff.failed(),
                        Err(_) => backoff.succeeded(), // as get_request(): this client only
                    }
                }
            })
            .map_err(|e| os_error(&e))?;
        py.check_signals()?;
        if let DirectExit::StartWorker = exit {
            server
                .getattr(intern!(py, "_rs_workers"))?
                .call_method0(intern!(py, "start_worker"))?;
        }
        Ok(())
    }

    /// Back off from a listener that failed for lack of descriptors; reset otherwise.
    fn note_failure(&mut self, errno: Option<i32>) {
        match errno.map(io::Error::from_raw_os_error) {
            Some(err) if is_descriptor_exhaustion(&err) => self.backoff.failed(),
            _ => self.backoff.succeeded(),
        }
    }
}

#[pymethods]
impl Engine {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Serve requests until `shutdown()`, calling `service_actions()` after every request
    /// and at least every `poll_interval` seconds (`None`: only after requests, so an idle
    /// server never wakes up). `pool`: the worker pool that gates accepting.
    #[pyo3(signature = (server, poll_interval, pool=None))]
    fn serve_forever(
        &self,
        server: &Bound<'_, PyAny>,
        poll_interval: Option<f64>,
        pool: Option<Py<WorkerPool>>,
    ) -> PyResult<()> {
        let py = server.py();
        let interval = duration_from_secs(poll_interval);
        self.latch.begin_serving();
        let result = self.with_session(server, pool, |session| {
            while !self.latch.is_requested() {
                session.refresh_plan(server)?;
                if session.direct {
                    // service_actions() is the stock no-op here: nothing to call.
                    session.serve_directly(self, server, interval)?;
                    continue;
                }
                let wakeup = session.wait(server, interval)?;
                if self.latch.is_requested() {
                    break;
                }
                if wakeup.readable {
                    session.serve_one(self, server)?;
                }
                server.call_method0(intern!(py, "service_actions"))?;
            }
            Ok(())
        });
        self.latch.end_serving();
        result
    }

    /// Wait for and serve one request, or call `handle_timeout()` once the timeout passes.
    /// Returns what `_handle_request_noblock()` or `handle_timeout()` returned.
    fn handle_request<'py>(&self, server: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = server.py();
        let socket_timeout = server
            .getattr(intern!(py, "socket"))?
            .call_method0(intern!(py, "gettimeout"))?
            .extract()?;
        let server_timeout = server.getattr(intern!(py, "timeout"))?.extract()?;
        let timeout = effective_timeout(socket_timeout, server_timeout);
        let deadline = Deadline::after(duration_from_secs(timeout));
        self.with_session(server, None, |session| {
            loop {
                let wakeup = session.wait(server, deadline.remaining())?;
                if wakeup.readable {
                    return session.serve_one(self, server);
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

    /// Close the engine's own descriptors (epoll, waker, signal pair) now: `server_close()`
    /// calls this, so a closed server holds nothing until it is garbage-collected.
    fn release(&self) {
        self.poller.release();
    }

    /// Called by `_handle_request_noblock` with the errno of the OSError `get_request()`
    /// raised, so the loop can back off when descriptors run out.
    fn note_acquire_error(&self, errno: Option<i32>) {
        self.acquire_errno
            .store(errno.unwrap_or(0), Ordering::Relaxed);
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
