//! `Engine`: the serving loop behind `serve_forever()`, `handle_request()` and `shutdown()`.
//!
//! One engine belongs to one Python server object and borrows its listening descriptor
//! (`server.fileno()`, re-read at the start of every call, as the stdlib does); it never owns
//! or reconfigures the socket. Every wait runs with the GIL released. Python hooks are called
//! by attribute lookup on the server, so overrides always win.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyTuple};

use crate::acquire::{FastPath, Raw, packet_size};
use crate::deadline::{AcceptBackoff, Deadline, duration_from_secs, effective_timeout};
use crate::errors::os_error;
use crate::finalize::{self, detach};
use crate::net::is_descriptor_exhaustion;
use crate::parking::{Parking, shorter};
use crate::poller::{Poller, PollerSlot, Wakeup};
use crate::pool::{WorkItem, WorkerPool};
use crate::shutdown::ShutdownLatch;
use crate::signals::SignalWakeup;
use crate::stats::Counters;
use crate::work_queue::{Submitted, WorkQueue};

/// How often a `shutdown()` that is waiting for the loop looks for pending signals.
const SHUTDOWN_SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// `socketserver_rs._fastpath.serving_plan`: whether the engine may acquire requests itself.
static SERVING_PLAN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// `socketserver_rs._fastpath.stock_serving`: which parts of the serial loop are stock …
static STOCK_SERVING: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// … `service_actions()` is the no-op, which the loop then does not call …
const STOCK_SERVICE_ACTIONS: u8 = 1;
/// … and every hook from `verify_request()` to `close_request()` is stock, so the engine
/// serves a request it took off the socket itself (see `Session::serve_stock`).
const STOCK_REQUEST_PATH: u8 = 2;
/// Its answers (see `_fastpath.py`): the engine may accept/receive requests itself …
const PLAN_FAST: u8 = 1;
/// … and hand them straight to the worker pool.
const PLAN_DIRECT: u8 = 2;

/// Why `serve_directly` came back to Python.
enum DirectExit {
    /// Shutdown was requested.
    Stopped,
    /// The pool needs this many more worker threads (already counted).
    StartWorkers(usize),
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
    /// `serve_forever()` parks connections (`dispatch_when_readable`): `park()` may take them.
    parking_on: AtomicBool,
    /// Connections `park()` took from Python's `process_request()`, for the loop to park.
    handoff: Mutex<Vec<(RawFd, Py<PyAny>)>>,
    /// Connections parked now (read by `stats()` without a lock).
    parked: AtomicUsize,
    stats: Counters,
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
    /// `service_actions()` is the stock no-op: calling it would only cost time.
    stock_service_actions: bool,
    /// The hooks a request goes through are stock (`STOCK_REQUEST_PATH`).
    stock_requests: bool,
    /// The last request was a datagram taken off the socket by the fast path: the next one
    /// may be there already, so `serve_forever()` tries a non-blocking receive before it
    /// waits (a datagram socket only; see `serve_ready_datagram`).
    datagram_streak: bool,
    /// The size of the server's instance `__dict__` when the plan was made: a hook assigned
    /// on the instance while serving changes it, and the plan is made again.
    plan_key: Option<usize>,
    /// The worker pool whose free capacity decides whether to accept (backpressure).
    pool: Option<Py<WorkerPool>>,
    backoff: AcceptBackoff,
    /// Connections waiting for their first bytes (`dispatch_when_readable`, pools only).
    parking: Option<Parking<WorkItem>>,
    /// Parked Python-made requests to `shutdown_request()`: their first-byte timeout passed,
    /// or the loop is ending.
    expired: Vec<Py<PyAny>>,
    /// How many of `expired` timed out: counted once they are closed.
    expired_timeouts: u64,
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
            stock_service_actions: false,
            stock_requests: false,
            datagram_streak: false,
            plan_key: None,
            pool,
            backoff: AcceptBackoff::default(),
            parking: None,
            expired: Vec::new(),
            expired_timeouts: 0,
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

    /// Whether `shutdown()` was asked for (and the loop not yet started again).
    pub(crate) fn shutdown_is_requested(&self) -> bool {
        self.latch.is_requested()
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

pub(crate) fn instance_dict_len(server: &Bound<'_, PyAny>) -> usize {
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
        let mode: u8 = finalize::call(plan.bind(py), (server,))?.extract()?;
        let stock = STOCK_SERVING.get_or_try_init(py, || {
            PyResult::Ok(
                py.import("socketserver_rs._fastpath")?
                    .getattr("stock_serving")?
                    .unbind(),
            )
        })?;
        let stock: u8 = finalize::call(stock.bind(py), (server,))?.extract()?;
        self.stock_service_actions = stock & STOCK_SERVICE_ACTIONS != 0;
        self.stock_requests = stock & STOCK_REQUEST_PATH != 0;
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
        // Parked connections cost no worker, so a parking loop accepts whatever the pool says.
        let listening = !self.backoff.is_paused()
            && (self.parking.is_some()
                || self
                    .pool
                    .as_ref()
                    .is_none_or(|pool| pool.get().queue().admit()));
        // A failure means the socket was closed under us (a handler called server_close()):
        // it has left the epoll set, and the loop goes on waiting for shutdown() like the
        // stdlib's.
        let _ = self.poller.set_listening(listening);
        let timeout = shorter(
            self.backoff.cap(timeout),
            self.parking.as_ref().and_then(Parking::until_next_deadline),
        );
        let poller = &mut self.poller;
        let wakeup = detach(py, move || poller.wait(timeout)).map_err(|e| os_error(&e))?;
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
                // Read here, after the wait, as get_request() reads it before recvfrom(): a
                // change made while the loop waited applies to this datagram.
                fast.follow_packet_size(server)?;
                let raw = &mut fast.raw;
                match detach(py, move || raw.acquire()) {
                    Ok(raw) => {
                        self.datagram_streak = matches!(raw, Raw::Datagram(..));
                        return self.serve_acquired(engine, server, raw);
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
                let outcome =
                    finalize::call_method(server, intern!(py, "_handle_request_noblock"), ())?;
                // Our `_handle_request_noblock` reports the errno of an OSError it swallowed.
                let errno = engine.acquire_errno.swap(0, Ordering::Relaxed);
                self.note_failure(engine, (errno != 0).then_some(errno));
                return Ok(outcome);
            }
        };
        self.note_failure(engine, failure);
        Ok(py.None().into_bound(py))
    }

    /// Verify and process a request the fast path took off the socket, as
    /// `_handle_request_noblock()` would once `get_request()` returned it.
    fn serve_acquired<'py>(
        &mut self,
        engine: &Engine,
        server: &Bound<'py, PyAny>,
        raw: Raw,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = server.py();
        let Some(fast) = &mut self.fast else {
            return Ok(py.None().into_bound(py));
        };
        self.backoff.succeeded();
        Counters::bump(&engine.stats.acquired);
        let stream = matches!(raw, Raw::Connection(..));
        let args = fast.converter.to_python(py, raw)?;
        if self.stock_requests {
            serve_stock(engine, server, &args, stream).map(|()| py.None().into_bound(py))
        } else {
            finalize::call_method(server, intern!(py, "_rs_serve_acquired"), args)
        }
    }

    /// A serial server's datagram fast path, right after a datagram was served: take the
    /// next one with a non-blocking receive instead of waiting first. Under load one is
    /// nearly always queued, and the wait (a system call and a GIL release) would only
    /// report it. True if a datagram was served; false (nothing queued, or the plan
    /// changed) means: wait as usual. The stdlib's loop would have found the socket
    /// readable and received the same datagram; nothing else differs, as the caller checks
    /// for shutdown and signals first and calls `service_actions()` after it.
    fn serve_ready_datagram(
        &mut self,
        engine: &Engine,
        server: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        if !std::mem::take(&mut self.datagram_streak) || self.pool.is_some() {
            return Ok(false);
        }
        // The wait would have run pending signal handlers: so does this path.
        server.py().check_signals()?;
        self.refresh_plan(server)?;
        let Some(fast) = &mut self.fast else {
            return Ok(false);
        };
        if self.direct {
            return Ok(false);
        }
        // recv_from never blocks (MSG_DONTWAIT): it is taken with the GIL held, and with the
        // max_packet_size of this moment, as in serve_one.
        fast.follow_packet_size(server)?;
        match fast.raw.acquire() {
            Ok(raw) => {
                self.datagram_streak = true;
                self.serve_acquired(engine, server, raw)?;
                Ok(true)
            }
            // Nothing queued (or an error, which the wait and the next receive will meet
            // as they would have): wait as usual.
            Err(_) => Ok(false),
        }
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
        // This loop cannot read max_packet_size per datagram (no GIL): it receives into a
        // buffer large enough for any datagram the current size could keep, and the worker
        // truncates each to the size it reads when it makes the request (see
        // `WorkerPool::receive_len`). Read once here (at every entry) so that the buffer
        // follows a size raised above it even before a worker has seen one.
        if fast.raw.is_datagram() {
            pool.get().note_packet_size(packet_size(server)?);
            fast.raw.set_packet_size(pool.get().receive_len());
        }
        // Workers receive the next datagram themselves while this loop runs without Python.
        pool.get().receive_slot().fill(fast.raw.datagram_twin());
        let latch = &engine.latch;
        let workers = pool.get();
        let (poller, raw, backoff) = (&mut self.poller, &mut fast.raw, &mut self.backoff);
        let (parking, expired) = (&mut self.parking, &mut self.expired);
        let expired_timeouts = &mut self.expired_timeouts;
        let exit = finalize::detach(py, || -> io::Result<DirectExit> {
            loop {
                if latch.is_requested() {
                    return Ok(DirectExit::Stopped);
                }
                let accepting = parking.is_some() || queue.admit();
                let _ = poller.set_listening(!backoff.is_paused() && accepting);
                let timeout = shorter(
                    backoff.cap(interval),
                    parking.as_ref().and_then(Parking::until_next_deadline),
                );
                let wakeup = poller.wait(timeout)?;
                let mut start = 0;
                if let Some(parking) = parking.as_mut() {
                    let timed_out;
                    (start, timed_out) = dispatch_parked(
                        parking,
                        poller,
                        queue,
                        expired,
                        &engine.stats,
                        &engine.parked,
                    );
                    *expired_timeouts += timed_out;
                }
                if start > 0 {
                    return Ok(DirectExit::StartWorkers(start));
                }
                if wakeup.signalled || !expired.is_empty() {
                    return Ok(DirectExit::Python);
                }
                if !(wakeup.readable || wakeup.woken) {
                    if poller.ready().is_empty() {
                        return Ok(DirectExit::Python); // poll_interval (or a deadline)
                    }
                    continue; // parked connections only
                }
                if !wakeup.readable {
                    continue; // a worker freed up, or shutdown: both are looked at above
                }
                // An atomic load; the buffer is resized only when a worker saw the size grow.
                raw.set_packet_size(workers.receive_len());
                match raw.acquire() {
                    Ok(item) => {
                        backoff.succeeded();
                        Counters::bump(&engine.stats.acquired);
                        let item = match parking.as_mut() {
                            Some(parking) => match park_raw(parking, poller, item) {
                                None => {
                                    engine.parked.store(parking.len(), Ordering::Relaxed);
                                    continue;
                                }
                                Some(item) => item,
                            },
                            None => WorkItem::Raw(item),
                        };
                        // A closed pool (server_close() under us) drops the connection.
                        if let Ok(Submitted::StartWorker) = queue.submit(item) {
                            return Ok(DirectExit::StartWorkers(1));
                        }
                    }
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => {
                        return Ok(DirectExit::Python);
                    }
                    Err(err) => {
                        if let Some(errno) = err.raw_os_error() {
                            engine.stats.accept_error(errno);
                        }
                        if is_descriptor_exhaustion(&err) {
                            backoff.failed();
                        } else {
                            backoff.succeeded(); // as get_request(): this client only
                        }
                    }
                }
            }
        });
        // Before shutdown() or anything else can see this loop gone.
        pool.get().receive_slot().fill(None);
        let exit = exit.map_err(|e| os_error(&e))?;
        self.close_expired(engine, server)?;
        py.check_signals()?;
        if let DirectExit::StartWorkers(count) = exit {
            start_workers(server, count)?;
        }
        Ok(())
    }

    /// Begin parking connections if the server asks for it (`_rs_first_byte_wait`: `None`
    /// dispatches at once; otherwise the seconds a connection may stay silent).
    fn start_parking(&mut self, engine: &Engine, server: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = server.py();
        if self.pool.is_none() || !server.hasattr(intern!(py, "_rs_first_byte_wait"))? {
            return Ok(());
        }
        let wait: Option<f64> = server
            .getattr(intern!(py, "_rs_first_byte_wait"))?
            .extract()?;
        if let Some(seconds) = wait {
            self.parking = Some(Parking::new(duration_from_secs(Some(seconds))));
            engine.parking_on.store(true, Ordering::Release);
        }
        Ok(())
    }

    /// The loop is ending: parked connections go to the workers as if parking were off
    /// (after a clean stop), or are closed (the loop failed, e.g. on Ctrl-C).
    fn stop_parking(
        &mut self,
        engine: &Engine,
        server: &Bound<'_, PyAny>,
        clean: bool,
    ) -> PyResult<()> {
        engine.parking_on.store(false, Ordering::Release);
        let mut start = self.take_handoff(engine);
        let Some(mut parking) = self.parking.take() else {
            return Ok(());
        };
        let items = parking.take_all(&self.poller);
        engine.parked.store(0, Ordering::Relaxed);
        for item in items {
            match (clean, &self.pool, item) {
                (true, Some(pool), item) => {
                    if let Ok(Submitted::StartWorker) = pool.get().queue().submit(item) {
                        start += 1;
                    }
                }
                (_, _, WorkItem::Ready(args)) => self.expired.push(args),
                (_, _, WorkItem::Raw(raw)) => {
                    drop(raw); // closes the connection
                    Counters::bump(&engine.stats.closed);
                }
            }
        }
        self.close_expired(engine, server)?;
        start_workers(server, start)
    }

    /// Park the connections Python's `process_request()` handed to `Engine.park`; one that
    /// cannot be parked goes to the workers at once. Returns how many workers to start.
    fn take_handoff(&mut self, engine: &Engine) -> usize {
        let handed: Vec<(RawFd, Py<PyAny>)> = std::mem::take(
            &mut *engine
                .handoff
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let (Some(parking), Some(pool)) = (&mut self.parking, &self.pool) else {
            return 0; // `park()` only hands over while both exist
        };
        let mut start = 0;
        for (fd, args) in handed {
            if let Err((_, item)) = parking.park(&self.poller, fd, WorkItem::Ready(args))
                && let Ok(Submitted::StartWorker) = pool.get().queue().submit(item)
            {
                start += 1;
            }
        }
        start
    }

    /// After a wait on the Python path: park what `process_request()` handed over, dispatch
    /// the parked connections that spoke, close those that stayed silent too long.
    fn tend_parking(&mut self, engine: &Engine, server: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.parking.is_none() {
            return Ok(());
        }
        let handed_start = self.take_handoff(engine);
        let (Some(parking), Some(pool)) = (&mut self.parking, &self.pool) else {
            return Ok(());
        };
        let (dispatched_start, timed_out) = dispatch_parked(
            parking,
            &self.poller,
            pool.get().queue(),
            &mut self.expired,
            &engine.stats,
            &engine.parked,
        );
        self.expired_timeouts += timed_out;
        self.close_expired(engine, server)?;
        start_workers(server, handed_start + dispatched_start)
    }

    /// `shutdown_request()` for parked Python-made requests that stayed silent too long (or
    /// are left when the loop ends); then the timeouts among them are counted.
    fn close_expired(&mut self, engine: &Engine, server: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = server.py();
        for args in std::mem::take(&mut self.expired) {
            let request = args.bind(py).get_item(0)?;
            finalize::call_method(server, intern!(py, "shutdown_request"), (request,))?;
        }
        let timed_out = std::mem::take(&mut self.expired_timeouts);
        Counters::add(&engine.stats.first_byte_timeouts, timed_out);
        Ok(())
    }

    /// Back off from a listener that failed for lack of descriptors; reset otherwise.
    fn note_failure(&mut self, engine: &Engine, errno: Option<i32>) {
        if let Some(errno) = errno {
            engine.stats.accept_error(errno);
        }
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
            session.start_parking(self, server)?;
            let served = (|| {
                while !self.latch.is_requested() {
                    session.refresh_plan(server)?;
                    if session.direct {
                        // service_actions() is the stock no-op here: nothing to call.
                        session.serve_directly(self, server, interval)?;
                        continue;
                    }
                    if !session.serve_ready_datagram(self, server)? {
                        let wakeup = session.wait(server, interval)?;
                        if self.latch.is_requested() {
                            break;
                        }
                        if wakeup.readable {
                            session.serve_one(self, server)?;
                        }
                        session.tend_parking(self, server)?;
                    }
                    if !session.stock_service_actions {
                        finalize::call_method(server, intern!(py, "service_actions"), ())?;
                    }
                }
                Ok(())
            })();
            let stopped = session.stop_parking(self, server, served.is_ok());
            served.and(stopped)
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
                    return finalize::call_method(server, intern!(py, "handle_timeout"), ());
                }
            }
        })
    }

    /// Ask `serve_forever()` to stop and wait until it has. On the serving thread itself
    /// (a handler calling it) it only asks, since waiting there would deadlock.
    fn shutdown(&self, py: Python<'_>) -> PyResult<()> {
        self.latch.request();
        self.poller.wake().map_err(|e| os_error(&e))?;
        // Once the interpreter exits, a serving daemon thread may be parked for ever and
        // never report that it stopped (see finalize.rs).
        if self.latch.is_serving_thread() || finalize::exiting() {
            return Ok(());
        }
        while !detach(py, || self.latch.wait_stopped(SHUTDOWN_SIGNAL_CHECK)) {
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

    /// Park a request `process_request()` made (`dispatch_when_readable`) until its first
    /// bytes arrive. False when no `serve_forever()` on this thread parks connections: then
    /// the caller hands it to a worker at once.
    fn park(
        &self,
        request: &Bound<'_, PyAny>,
        client_address: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        if !self.parking_on.load(Ordering::Acquire) || !self.latch.is_serving_thread() {
            return Ok(false);
        }
        let py = request.py();
        let fd: RawFd = request.call_method0(intern!(py, "fileno"))?.extract()?;
        let args = PyTuple::new(py, [request, client_address])?;
        self.handoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((fd, args.into_any().unbind()));
        Ok(true)
    }

    /// A request was acquired (accepted or received) and is about to be verified.
    pub(crate) fn note_acquired(&self) {
        Counters::bump(&self.stats.acquired);
    }

    /// An accepted connection was closed (`close_request()`).
    fn note_closed(&self) {
        Counters::bump(&self.stats.closed);
    }

    /// A handler returned (`ok`) or raised.
    fn note_request(&self, ok: bool) {
        Counters::bump(if ok {
            &self.stats.requests
        } else {
            &self.stats.handler_errors
        });
    }

    /// The engine's counters, read without a lock (see `docs/stats.md`).
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let stats = &self.stats;
        let dict = PyDict::new(py);
        dict.set_item("acquired", Counters::get(&stats.acquired))?;
        dict.set_item("closed", Counters::get(&stats.closed))?;
        dict.set_item("requests", Counters::get(&stats.requests))?;
        dict.set_item("handler_errors", Counters::get(&stats.handler_errors))?;
        let errors = PyDict::new(py);
        for (class, count) in stats.accept_errors() {
            errors.set_item(class, count)?;
        }
        dict.set_item("accept_errors", errors)?;
        dict.set_item("parked", self.parked.load(Ordering::Relaxed))?;
        dict.set_item(
            "first_byte_timeouts",
            Counters::get(&stats.first_byte_timeouts),
        )?;
        Ok(dict)
    }

    /// Connections waiting in the engine for their first bytes (`dispatch_when_readable`).
    #[getter]
    fn parked(&self) -> usize {
        self.parked.load(Ordering::Relaxed)
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

/// Park a freshly accepted connection; returns the item back when it cannot be parked (a
/// datagram, or registration failed), to be served at once.
fn park_raw(parking: &mut Parking<WorkItem>, poller: &Poller, raw: Raw) -> Option<WorkItem> {
    match raw {
        Raw::Connection(fd, peer) => {
            let raw_fd = fd.as_raw_fd();
            let item = WorkItem::Raw(Raw::Connection(fd, peer));
            parking
                .park(poller, raw_fd, item)
                .err()
                .map(|(_, item)| item)
        }
        datagram => Some(WorkItem::Raw(datagram)),
    }
}

/// Hand parked connections that spoke to the workers and take out those that stayed silent
/// too long: raw ones are closed here, Python-made ones go to `expired` (their
/// `shutdown_request()` needs Python). Returns how many workers to start, and how many of
/// `expired` timed out (the caller counts those once they are closed). No Python here.
/// The `parked` gauge is updated before anything is handed on or closed, so a client that
/// sees its connection closed (or a counter that says so) never finds it still counted there;
/// a first-byte timeout is counted after its close, so a reader who sees the timeout counted
/// also sees the connection gone from `active_connections`.
fn dispatch_parked(
    parking: &mut Parking<WorkItem>,
    poller: &Poller,
    queue: &WorkQueue<WorkItem>,
    expired: &mut Vec<Py<PyAny>>,
    stats: &Counters,
    parked: &AtomicUsize,
) -> (usize, u64) {
    let readable = parking.take_readable(poller);
    let silent = parking.take_expired(poller, Instant::now());
    parked.store(parking.len(), Ordering::Relaxed);
    let mut start = 0;
    for item in readable {
        // A closed pool (server_close() under us) drops the connection.
        if let Ok(Submitted::StartWorker) = queue.submit(item) {
            start += 1;
        }
    }
    let mut expired_silent = 0;
    for item in silent {
        match item {
            WorkItem::Raw(raw) => {
                drop(raw); // closes the connection; no handler ran
                Counters::bump(&stats.closed);
                Counters::bump(&stats.first_byte_timeouts);
            }
            WorkItem::Ready(args) => {
                expired.push(args);
                expired_silent += 1;
            }
        }
    }
    (start, expired_silent)
}

/// What `_rs_serve_acquired()` does when every hook on its way is stock: `verify_request()`
/// is true, `process_request()` is `finish_request()` (which makes the handler and counts
/// the request) then `shutdown_request()`: for a connection, `shutdown(SHUT_WR)` (an
/// `OSError` ignored) and `close()`; for a datagram, nothing. A failure goes to Python's
/// `_rs_request_failed()`, which calls `handle_error()` and `shutdown_request()` with the
/// exception being handled, as `_rs_serve_acquired()` would. `args`: `(request, address)`.
pub(crate) fn serve_stock(
    engine: &Engine,
    server: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
    stream: bool,
) -> PyResult<()> {
    let py = server.py();
    let (request, address) = (args.get_item(0)?, args.get_item(1)?);
    // Read at every request, as finish_request() does.
    let class = server.getattr(intern!(py, "RequestHandlerClass"))?;
    let outcome = match finalize::call(&class, (&request, &address, server)) {
        Ok(_) => {
            Counters::bump(&engine.stats.requests);
            if stream {
                shut_down_connection(engine, &request)
            } else {
                Ok(())
            }
        }
        Err(err) => {
            Counters::bump(&engine.stats.handler_errors);
            Err(err)
        }
    };
    match outcome {
        Ok(()) => Ok(()),
        Err(err) => finalize::call_method(
            server,
            intern!(py, "_rs_request_failed"),
            (request, address, err.into_value(py)),
        )
        .map(drop),
    }
}

/// The stock `TCPServer.shutdown_request()`: our FIN first (the peer may be gone already),
/// then `close_request()`'s `close()`.
fn shut_down_connection(engine: &Engine, request: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = request.py();
    // Guarded calls: `close()` is Python code (socket.py), where a daemon worker can be ended
    // by an exiting interpreter (see finalize.rs).
    match finalize::call_method(request, intern!(py, "shutdown"), (libc::SHUT_WR,)) {
        Err(err) if !err.is_instance_of::<pyo3::exceptions::PyOSError>(py) => return Err(err),
        _ => {}
    }
    finalize::call_method(request, intern!(py, "close"), ())?;
    Counters::bump(&engine.stats.closed);
    Ok(())
}

/// Start `count` worker threads the pool has already counted.
fn start_workers(server: &Bound<'_, PyAny>, count: usize) -> PyResult<()> {
    if count == 0 {
        return Ok(());
    }
    let py = server.py();
    let workers = server.getattr(intern!(py, "_rs_workers"))?;
    for started in 0..count {
        if let Err(err) = finalize::call_method(&workers, intern!(py, "start_worker"), ()) {
            // That one is uncounted already; so are the rest, which will not be started.
            let pool = workers.getattr(intern!(py, "pool"))?;
            for _ in started + 1..count {
                pool.call_method0(intern!(py, "worker_gone"))?;
            }
            return Err(err);
        }
    }
    Ok(())
}
