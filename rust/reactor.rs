//! `Reactor`: servers whose connections Rust owns. The engine reads, frames and buffers input,
//! calls the Python handler with whole messages (taking the GIL once per batch of ready
//! messages) and writes the replies itself; a thousand idle connections cost descriptors and
//! small buffers, not threads.
//!
//! This file holds what the stream and datagram loops share: the `Connection` handle given
//! to handlers, the command queue through which handlers (on any thread) send and close, the
//! serving session (poller, signals, shutdown), error reporting, and the TLS configuration
//! (loaded and reloaded here, used by the stream loop). The loops themselves are in
//! `stream_loop.rs` and `datagram_loop.rs`.

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyBufferError, PyException, PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::connections::{Conn, Slab};
use crate::datagram_loop::DatagramLoop;
use crate::deadline::duration_from_secs;
use crate::errors::{TLSConfigError, os_error, while_handling};
use crate::finalize::{self, detach};
use crate::framing::Framing;
use crate::handshakes::Handshakes;
use crate::net::RawAddr;
use crate::poller::{Poller, PollerSlot};
use crate::shutdown::{ShutdownLatch, current_thread_id};
use crate::signals::SignalWakeup;
use crate::stats::Counters;
use crate::stream_loop::StreamLoop;
use crate::tls::{ConfigError, TlsOptions, TlsServer};
use crate::tls_stream::TlsInfo;

/// A request from a handler to the loop.
#[derive(Debug)]
pub enum Command {
    Send {
        slot: usize,
        generation: u64,
        data: Vec<u8>,
    },
    Close {
        slot: usize,
        generation: u64,
    },
    SendTo {
        to: RawAddr,
        data: Vec<u8>,
    },
    /// A worker thread finished the batch of messages it was given for a connection.
    BatchDone {
        slot: usize,
        generation: u64,
    },
    /// A worker thread finished a datagram (counted only for `shutdown(timeout)`'s drain).
    DatagramDone,
}

/// What the loop and every `Connection` handle share.
#[derive(Debug, Default)]
pub struct Shared {
    commands: Mutex<Vec<Command>>,
    /// Whether `commands` may hold something: set and cleared only under its lock, read
    /// without it, so the loop's look after every handler call costs no lock when (as on
    /// most turns) no handler sent or closed anything.
    has_commands: AtomicBool,
    pub poller: PollerSlot,
    /// The thread running the loop (0: none): commands from it need no wakeup.
    loop_thread: AtomicU64,
    /// The server's counters (read by `stats()` without a lock).
    pub stats: Arc<Counters>,
    /// The TLS configuration new connections get (None: plain). A reload swaps it.
    tls: Mutex<Option<TlsServer>>,
}

impl Shared {
    fn push(&self, command: Command) -> PyResult<()> {
        // Nothing waits for a finished datagram but a draining loop, which looks every 50 ms:
        // no wakeup (a syscall) per datagram for it.
        let wake = !matches!(command, Command::DatagramDone);
        let mut commands = self.commands.lock().unwrap_or_else(PoisonError::into_inner);
        commands.push(command);
        self.has_commands.store(true, Ordering::Release);
        drop(commands);
        if wake && self.loop_thread.load(Ordering::Acquire) != current_thread_id() {
            self.poller.wake().map_err(|e| os_error(&e))?;
        }
        Ok(())
    }

    /// The TLS configuration for connections accepted now (None: plain).
    pub fn tls_server(&self) -> Option<TlsServer> {
        self.tls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Move the queued commands into `into` (which the caller has emptied).
    pub fn take_commands(&self, into: &mut Vec<Command>) {
        // A command pushed after this look is found by the next one: the pusher wakes the
        // loop (from another thread) or the loop looks again after the call that pushed it.
        if !self.has_commands.load(Ordering::Acquire) {
            return;
        }
        let mut commands = self.commands.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *commands, into);
        self.has_commands.store(false, Ordering::Release);
    }
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Stream { slot: usize, generation: u64 },
    Datagram(RawAddr),
}

/// A handler's link to its connection (or, for datagrams, to the sender of its datagram).
/// `send()` and `close()` may be called from any thread.
#[pyclass(frozen, module = "socketserver_rs._core")]
#[derive(Debug)]
pub struct Connection {
    shared: Arc<Shared>,
    target: Target,
    /// What the TLS handshake settled (None: not TLS).
    tls: Option<TlsInfo>,
}

impl Connection {
    pub fn for_stream(
        shared: &Arc<Shared>,
        slot: usize,
        generation: u64,
        tls: Option<TlsInfo>,
    ) -> Connection {
        Connection {
            shared: Arc::clone(shared),
            target: Target::Stream { slot, generation },
            tls,
        }
    }

    pub fn for_datagram(shared: &Arc<Shared>, to: RawAddr) -> Connection {
        Connection {
            shared: Arc::clone(shared),
            target: Target::Datagram(to),
            tls: None,
        }
    }
}

/// The bytes of any bytes-like object.
pub fn bytes_of(data: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    with_bytes_of(data, <[u8]>::to_vec)
}

/// `use_bytes` applied to the bytes of any bytes-like object, borrowed in place: a reply
/// is framed straight into the output buffer with no copy of its own in between.
pub fn with_bytes_of<R>(
    data: &Bound<'_, PyAny>,
    use_bytes: impl FnOnce(&[u8]) -> R,
) -> PyResult<R> {
    if let Ok(bytes) = data.cast::<PyBytes>() {
        return Ok(use_bytes(bytes.as_bytes()));
    }
    let buffer = PyUntypedBuffer::get(data)?;
    if !buffer.is_c_contiguous() {
        return Err(PyBufferError::new_err("data must be a C-contiguous buffer"));
    }
    // SAFETY: the buffer is exported (pinned) and contiguous for `len_bytes` bytes, and no
    // Python code runs (we hold the GIL and call none) while `use_bytes` reads it.
    let slice =
        unsafe { std::slice::from_raw_parts(buffer.buf_ptr() as *const u8, buffer.len_bytes()) };
    Ok(use_bytes(slice))
}

#[pymethods]
impl Connection {
    /// Queue `data` to be sent (framed as the handler's `framing` says).
    fn send(&self, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = bytes_of(data)?;
        self.shared.push(match self.target {
            Target::Stream { slot, generation } => Command::Send {
                slot,
                generation,
                data,
            },
            Target::Datagram(to) => Command::SendTo { to, data },
        })
    }

    /// Close the connection once what was sent so far is written (no-op for datagrams).
    fn close(&self) -> PyResult<()> {
        match self.target {
            Target::Stream { slot, generation } => {
                self.shared.push(Command::Close { slot, generation })
            }
            Target::Datagram(_) => Ok(()),
        }
    }

    /// The TLS version negotiated (`"TLSv1.2"`, `"TLSv1.3"`), None without TLS.
    #[getter]
    fn tls_version(&self) -> Option<&'static str> {
        self.tls.as_ref().and_then(|tls| tls.version)
    }

    /// The ALPN protocol negotiated, None if none was (or without TLS).
    #[getter]
    fn alpn_protocol(&self) -> Option<&str> {
        self.tls
            .as_ref()
            .and_then(|tls| tls.alpn_protocol.as_deref())
    }

    /// The DER bytes of the client's certificate, when it presented one.
    #[getter]
    fn peer_certificate<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        let der = self.tls.as_ref()?.peer_certificate.as_deref()?;
        Some(PyBytes::new(py, der))
    }

    /// Internal: a worker thread is done with this connection's batch of messages (or with
    /// this datagram).
    fn batch_done(&self) -> PyResult<()> {
        match self.target {
            Target::Stream { slot, generation } => {
                self.shared.push(Command::BatchDone { slot, generation })
            }
            Target::Datagram(_) => self.shared.push(Command::DatagramDone),
        }
    }
}

/// A Python handler object and what the loop needs of it, looked up once.
#[derive(Debug)]
pub struct Handler {
    pub object: Py<PyAny>,
    pub handle_message: Py<PyAny>,
    pub address: Py<PyAny>,
    /// Messages read but not yet handled: held back while the connection's output is over
    /// the limit, or (with worker threads) while a batch of its messages is in flight.
    pub backlog: VecDeque<Py<PyAny>>,
    pub backlog_bytes: usize,
    /// With worker threads: a batch of this connection's messages is being handled.
    pub in_flight: bool,
    /// The handler asked to close, or failed: its further messages are dropped.
    pub stopped: bool,
}

impl Handler {
    pub fn new(object: Py<PyAny>, handle_message: Py<PyAny>, address: Py<PyAny>) -> Handler {
        Handler {
            object,
            handle_message,
            address,
            backlog: VecDeque::new(),
            backlog_bytes: 0,
            in_flight: false,
            stopped: false,
        }
    }
}

/// The reactor's settings, read from the server and handler class once per serving call.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub framing: Framing,
    pub max_message_size: usize,
    pub idle_timeout: Option<Duration>,
    pub max_connections: usize,
    pub write_buffer_limit: usize,
    /// Whether the handler class overrides `setup` / `finish` (datagrams skip the calls).
    pub calls_setup: bool,
    pub calls_finish: bool,
}

/// Call the server's `handle_error(handler, client_address)` for `err`, with `err` as the
/// exception being handled. `KeyboardInterrupt`, `SystemExit` and other non-`Exception`s
/// are not handled: they come back to stop the loop, as in the stdlib.
pub fn report(
    server: &Bound<'_, PyAny>,
    handler: Option<&Py<PyAny>>,
    address: &Py<PyAny>,
    err: PyErr,
) -> PyResult<()> {
    let py = server.py();
    if !err.is_instance_of::<PyException>(py) {
        return Err(err);
    }
    if let Ok(reactor) = server
        .getattr(intern!(py, "_rs_reactor"))
        .and_then(|r| r.extract::<Py<Reactor>>().map_err(PyErr::from))
    {
        Counters::bump(&reactor.get().shared.stats.handler_errors);
    }
    let handler = handler.map_or_else(|| py.None(), |h| h.clone_ref(py));
    while_handling(py, &err, || {
        finalize::call_method(
            server,
            intern!(py, "handle_error"),
            (handler, address.clone_ref(py)),
        )
        .map(drop)
    })
}

/// A `ValueError` for a framing problem, to report through `handle_error`.
pub fn framing_error(message: String) -> PyErr {
    PyValueError::new_err(message)
}

/// The poller, listener and signal routing of one serving call.
pub struct Session {
    pub poller: Poller,
    signals: Option<SignalWakeup>,
    pub listener: RawFd,
}

/// Connections kept between serving calls.
#[derive(Debug, Default)]
struct Parked {
    conns: Option<(Slab<Conn<Handler>>, Handshakes)>,
    /// Set by `close_all`: a serving call that ends afterwards (`server_close()` from another
    /// thread while it served) closes its connections instead of parking them, or they would
    /// stay open, their `finish()` never called, in a server nobody closes again.
    closed: bool,
}

/// The loop of a reactor server: Rust-owned connections, Python called per message.
#[pyclass(frozen, module = "socketserver_rs._core")]
#[derive(Debug, Default)]
pub struct Reactor {
    shared: Arc<Shared>,
    latch: ShutdownLatch,
    /// Open connections (and TLS handshakes) between serving calls (the one serving call
    /// takes them out while it runs), and whether `server_close()` has run.
    parked: Mutex<Parked>,
    generation: AtomicU64,
    /// `shutdown(timeout)`'s drain window in ms, plus one (0: none asked for).
    drain_ms: AtomicU64,
    /// A prefork child's `max_requests`: the request count at which the loop stops as
    /// `request_stop()` would (0: never), and that stop's drain window, encoded as `drain_ms`.
    retire_at: AtomicU64,
    retire_drain_ms: AtomicU64,
}

impl Reactor {
    fn parked(&self) -> MutexGuard<'_, Parked> {
        self.parked.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Close `conns` and `handshakes`, calling each handler's `finish()` (Python: the caller
    /// holds no lock); the first error a `finish()` raised is returned after all are closed.
    fn close_connections(
        &self,
        server: &Bound<'_, PyAny>,
        mut conns: Slab<Conn<Handler>>,
        mut handshakes: Handshakes,
    ) -> PyResult<()> {
        for slot in handshakes.slots() {
            drop(handshakes.remove(slot));
            Counters::bump(&self.shared.stats.closed);
        }
        let slots: Vec<usize> = conns.indices().collect();
        let mut first_error = None;
        for slot in slots {
            if let Some(mut conn) = conns.remove(slot) {
                if conn.tls.is_some() {
                    // One try at a close_notify (and what was queued), without waiting.
                    conn.closing = true;
                    let _ = conn.flush();
                }
                if let Err(err) = finish(server, &conn.handler) {
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn open_session(&self, server: &Bound<'_, PyAny>) -> PyResult<Session> {
        let py = server.py();
        let listener: RawFd = server.call_method0(intern!(py, "fileno"))?.extract()?;
        if listener < 0 {
            return Err(PyValueError::new_err(format!(
                "Invalid file descriptor: {listener}"
            )));
        }
        let mut poller = self.shared.poller.take().map_err(|e| os_error(&e))?;
        if let Err(err) = poller.watch(listener) {
            self.shared.poller.put_back(poller);
            return Err(os_error(&err));
        }
        match SignalWakeup::install(py, poller.signal_write_fd()) {
            Ok(signals) => Ok(Session {
                poller,
                signals: Some(signals),
                listener,
            }),
            Err(err) => {
                poller.unwatch();
                self.shared.poller.put_back(poller);
                Err(err)
            }
        }
    }

    fn close_session(&self, py: Python<'_>, mut session: Session) -> PyResult<()> {
        session.poller.unwatch();
        let restored = session.signals.take().map_or(Ok(()), |s| s.restore(py));
        self.shared.poller.put_back(session.poller);
        restored
    }

    pub fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn latch(&self) -> &ShutdownLatch {
        &self.latch
    }

    /// The drain window the stopping loop was given, if any (consumed).
    pub fn take_drain_window(&self) -> Option<Duration> {
        match self.drain_ms.swap(0, Ordering::AcqRel) {
            0 => None,
            ms => Some(Duration::from_millis(ms - 1)),
        }
    }

    fn set_drain_window(&self, timeout: Option<f64>) {
        if timeout.is_some() {
            self.drain_ms
                .store(encode_drain_window(timeout), Ordering::Release);
        }
    }

    /// Stop the loop gracefully once `retire_after`'s count is reached; called by both loops
    /// after each turn's handlers have run (one relaxed load when no limit is set).
    pub fn retire_if_due(&self) {
        let at = self.retire_at.load(Ordering::Relaxed);
        if at != 0 && Counters::get(&self.shared.stats.requests) >= at {
            self.retire_at.store(0, Ordering::Relaxed);
            let window = self.retire_drain_ms.load(Ordering::Relaxed);
            if window != 0 {
                self.drain_ms.store(window, Ordering::Release);
            }
            self.latch.request();
        }
    }
}

/// A drain window as `drain_ms` holds it: milliseconds plus one, 0 for none.
fn encode_drain_window(timeout: Option<f64>) -> u64 {
    duration_from_secs(timeout).map_or(0, |window| {
        u64::try_from(window.as_millis())
            .unwrap_or(u64::MAX - 1)
            .saturating_add(1)
    })
}

#[pymethods]
impl Reactor {
    #[new]
    fn new() -> Self {
        Self::default()
    }

    /// Serve until `shutdown()`: `datagram` selects the datagram loop. The handler class's
    /// `framing` and `max_message_size` and the server's limits come in as arguments.
    ///
    /// `submit`, when given, runs handlers on worker threads: the loop calls
    /// `submit((handler, messages, one_shot))` instead of `handle_message`, at most one batch
    /// per connection at a time (so its messages stay in order), and the worker reports back
    /// with `connection.batch_done()`.
    ///
    /// One serving call at a time: a call made while another runs (from another thread, or
    /// nested in a handler) raises `RuntimeError` and changes nothing. `started`, when given,
    /// is called once this call has the server, before it serves.
    #[pyo3(signature = (
        server, handler_class, *, datagram, framing, max_message_size, idle_timeout,
        max_connections, write_buffer_limit, calls_setup, calls_finish, submit=None,
        started=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn serve_forever(
        &self,
        server: &Bound<'_, PyAny>,
        handler_class: &Bound<'_, PyAny>,
        datagram: bool,
        framing: &str,
        max_message_size: usize,
        idle_timeout: Option<f64>,
        max_connections: Option<usize>,
        write_buffer_limit: usize,
        calls_setup: bool,
        calls_finish: bool,
        submit: Option<Py<PyAny>>,
        started: Option<Py<PyAny>>,
    ) -> PyResult<()> {
        let py = server.py();
        let framing = Framing::from_name(framing).ok_or_else(|| {
            PyValueError::new_err(format!(
                "framing must be 'raw', 'line' or 'length32', not {framing:?}"
            ))
        })?;
        if max_message_size == 0 {
            return Err(PyValueError::new_err("max_message_size must be positive"));
        }
        let settings = Settings {
            framing,
            max_message_size,
            idle_timeout: duration_from_secs(idle_timeout),
            max_connections: max_connections.unwrap_or(usize::MAX),
            write_buffer_limit: write_buffer_limit.max(1),
            calls_setup,
            calls_finish,
        };
        // Two calls at once would each take the stored connections and the poller, and the
        // first to end would clear a shutdown() meant for the other: refuse the second.
        self.latch.begin_serving_alone().map_err(already_serving)?;
        self.shared
            .loop_thread
            .store(current_thread_id(), Ordering::Release);
        let result = (|| {
            if let Some(started) = &started {
                started.call0(py)?;
            }
            let session = self.open_session(server)?;
            // A signal that arrived before the wakeup descriptor was in place only left a
            // flag: look now, or an idle loop would sleep through Ctrl-C.
            if let Err(err) = py.check_signals() {
                self.close_session(py, session)?;
                return Err(err);
            }
            let (session, served) = if datagram {
                let mut lp = DatagramLoop::new(self, session, settings, submit);
                let served = lp.run(server, handler_class);
                (lp.into_session(), served)
            } else {
                let conns = self.parked().conns.take();
                let (conns, handshakes) = conns.unwrap_or_default();
                let mut lp = StreamLoop::new(self, session, settings, conns, handshakes, submit);
                let served = lp.run(server, handler_class);
                let (session, conns, handshakes) = lp.into_parts(py);
                let mut parked = self.parked();
                let finished = if parked.closed {
                    drop(parked);
                    // The finish() calls run Python: never under the lock.
                    self.close_connections(server, conns, handshakes)
                } else {
                    // Empty since this call took them: no other serving call runs meanwhile,
                    // and `close_all` only takes. So nothing is dropped (no Python runs) under
                    // the lock.
                    debug_assert!(parked.conns.is_none(), "one serving call at a time");
                    parked.conns = Some((conns, handshakes));
                    Ok(())
                };
                (session, served.and(finished))
            };
            let closed = self.close_session(py, session);
            served?;
            closed
        })();
        self.shared.loop_thread.store(0, Ordering::Release);
        self.latch.end_serving();
        result
    }

    /// Stop the loop: no more accepting; queued replies are flushed before it returns.
    /// With `timeout`, messages already read are still handled, for up to that long.
    #[pyo3(signature = (timeout=None))]
    fn shutdown(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<()> {
        self.set_drain_window(timeout);
        self.latch.request();
        self.shared.poller.wake().map_err(|e| os_error(&e))?;
        // Once the interpreter exits, a serving daemon thread may be parked for ever and
        // never report that it stopped (see finalize.rs).
        if self.latch.is_serving_thread() || finalize::exiting() {
            return Ok(());
        }
        while !detach(py, || self.latch.wait_stopped(Duration::from_millis(100))) {
            py.check_signals()?;
        }
        Ok(())
    }

    /// Stop serving gracefully (as `request_stop(timeout)` does) once `requests` requests
    /// have been served in this process: a prefork child's `max_requests`.
    #[pyo3(signature = (requests, timeout=None))]
    fn retire_after(&self, requests: u64, timeout: Option<f64>) {
        self.retire_drain_ms
            .store(encode_drain_window(timeout), Ordering::Relaxed);
        self.retire_at.store(requests.max(1), Ordering::Relaxed);
    }

    /// Ask the loop to stop without waiting for it (safe from a signal handler on the
    /// serving thread, and before the loop has started: the request is sticky); `timeout`
    /// as for `shutdown`.
    #[pyo3(signature = (timeout=None))]
    fn request_stop(&self, timeout: Option<f64>) -> PyResult<()> {
        self.set_drain_window(timeout);
        self.latch.request();
        self.shared.poller.wake().map_err(|e| os_error(&e))
    }

    /// Close every open connection, calling each handler's `finish()`, and the reactor's own
    /// descriptors (for `server_close`).
    fn close_all(&self, server: &Bound<'_, PyAny>) -> PyResult<()> {
        self.shared.poller.release();
        let conns = {
            let mut parked = self.parked();
            parked.closed = true;
            parked.conns.take()
        };
        match conns {
            Some((conns, handshakes)) => self.close_connections(server, conns, handshakes),
            None => Ok(()),
        }
    }

    /// Messages handled on worker threads (`handler_threads`): `handled` returned, `failed`
    /// raised.
    fn note_handled(&self, handled: u64, failed: u64) {
        Counters::add(&self.shared.stats.requests, handled);
        Counters::add(&self.shared.stats.handler_errors, failed);
    }

    /// The reactor's counters, read without a lock (see `docs/stats.md`).
    fn counters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let stats = &self.shared.stats;
        let dict = pyo3::types::PyDict::new(py);
        for (name, counter) in [
            ("acquired", &stats.acquired),
            ("closed", &stats.closed),
            ("requests", &stats.requests),
            ("handler_errors", &stats.handler_errors),
            ("bytes_in", &stats.bytes_in),
            ("bytes_out", &stats.bytes_out),
            ("backpressure_pauses", &stats.backpressure_pauses),
            ("idle_timeouts", &stats.idle_timeouts),
        ] {
            dict.set_item(name, Counters::get(counter))?;
        }
        let errors = pyo3::types::PyDict::new(py);
        for (class, count) in stats.accept_errors() {
            errors.set_item(class, count)?;
        }
        dict.set_item("accept_errors", errors)?;
        dict.set_item("tls_handshakes", Counters::get(&stats.tls_handshakes))?;
        let failures = pyo3::types::PyDict::new(py);
        for (class, count) in stats.tls_failures() {
            failures.set_item(class, count)?;
        }
        dict.set_item("tls_handshake_failures", failures)?;
        Ok(dict)
    }

    /// Load the TLS configuration the server's `tls_*` attributes name (checked whole
    /// before anything changes) and use it for connections accepted from now on;
    /// `TLSConfigError` if it cannot be used, the configuration in use staying as it was.
    #[pyo3(signature = (
        certfile, keyfile, client_ca, require_client_cert, alpn_protocols, min_version,
        handshake_timeout
    ))]
    #[allow(clippy::too_many_arguments)]
    fn configure_tls(
        &self,
        py: Python<'_>,
        certfile: PathBuf,
        keyfile: Option<PathBuf>,
        client_ca: Option<PathBuf>,
        require_client_cert: bool,
        alpn_protocols: Vec<String>,
        min_version: String,
        handshake_timeout: Option<f64>,
    ) -> PyResult<()> {
        if handshake_timeout.is_some_and(|t| t.is_nan() || t <= 0.0) {
            return Err(TLSConfigError::new_err(format!(
                "tls_handshake_timeout: expected a positive number of seconds or None, got {}",
                handshake_timeout.unwrap_or_default()
            )));
        }
        let options = TlsOptions {
            certfile,
            keyfile,
            client_ca,
            require_client_cert,
            alpn_protocols: alpn_protocols.into_iter().map(String::into_bytes).collect(),
            min_version,
        };
        let config = detach(py, || crate::tls::load(&options)).map_err(|e| tls_error(py, e))?;
        *self
            .shared
            .tls
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(TlsServer {
            config,
            handshake_timeout: duration_from_secs(handshake_timeout),
        });
        Ok(())
    }

    /// Whether connections are served over TLS.
    #[getter]
    fn tls_enabled(&self) -> bool {
        self.shared.tls_server().is_some()
    }

    /// Connections kept open between serving calls (0 while a call serves: the call holds
    /// them, and `stats()` counts them live).
    #[getter]
    fn connection_count(&self) -> usize {
        self.parked()
            .conns
            .as_ref()
            .map_or(0, |(conns, handshakes)| conns.len() + handshakes.len())
    }

    #[getter]
    fn shutdown_requested(&self) -> bool {
        self.latch.is_requested()
    }
}

/// The `RuntimeError` for a serving call made while the thread `holder` serves.
fn already_serving(holder: u64) -> PyErr {
    let running = if holder == current_thread_id() {
        "on this thread (a handler called it)".to_owned()
    } else {
        format!("on thread {holder}")
    };
    PyRuntimeError::new_err(format!(
        "the server is already serving: a serving call is running {running}; \
         one serving call at a time per reactor server"
    ))
}

/// A `TLSConfigError` for `err`, with the `OSError` behind it as its `__cause__`.
fn tls_error(py: Python<'_>, err: ConfigError) -> PyErr {
    let error = TLSConfigError::new_err(err.message);
    if let Some(source) = &err.source {
        error.set_cause(py, Some(os_error(source)));
    }
    error
}

/// Call a stream handler's `finish()`, reporting an exception from it.
pub fn finish(server: &Bound<'_, PyAny>, handler: &Handler) -> PyResult<()> {
    let py = server.py();
    match finalize::call_method(handler.object.bind(py), intern!(py, "finish"), ()) {
        Ok(_) => Ok(()),
        Err(err) => report(server, Some(&handler.object), &handler.address, err),
    }
}
