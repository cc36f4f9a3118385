//! The reactor's loop for stream sockets (TCP, Unix). Each turn has two halves:
//!
//! 1. without the GIL: write queued output, wait, accept new connections, read whatever is
//!    readable and cut it into messages (copied into one arena for the turn);
//! 2. with the GIL: make handlers for new connections, call `handle_message` for every
//!    message in order, queue the replies, apply handlers' `send`/`close` commands, close
//!    finished connections (calling `finish()`), and enforce the idle timeout.
//!
//! Backpressure: a connection whose unsent output (or, with worker threads, whose backlog of
//! unhandled messages) passes `write_buffer_limit` is not read until it drains below half of
//! it, so a client that never reads cannot make the server buffer without bound.
//!
//! With worker threads, messages are handed to `submit` in batches, one batch in flight per
//! connection so its messages are handled in order; replies come back through `send()`.
//!
//! TLS: an accepted connection first joins the handshakes (`handshakes.rs`), driven in the
//! GIL-free half and given up after the handshake timeout; only a finished handshake makes
//! a handler. Handshakes count toward `max_connections`.

use std::ops::Range;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Interest;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::address::peer_to_python;
use crate::connections::{Conn, ReadStop, Slab};
use crate::deadline::AcceptBackoff;
use crate::errors::os_error;
use crate::finalize::{self, detach};
use crate::framing::{Decoder, encode};
use crate::handshakes::{HANDSHAKE_SOURCE, Handshakes};
use crate::net::{PeerAddress, is_descriptor_exhaustion};
use crate::reactor::{
    Command, Connection, Handler, Reactor, Session, Settings, finish, framing_error, report,
    with_bytes_of,
};
use crate::stats::Counters;
use crate::sys;
use crate::tls_stream::TlsStream;

const SCRATCH: usize = 64 * 1024;
/// Bytes read from one connection per turn before others get their go.
const READ_BUDGET: usize = 256 * 1024;
/// Connections accepted per turn at most.
const ACCEPT_BATCH: usize = 256;
/// Messages handed to a worker at once: bounds what one batch can add to the output.
const SUBMIT_BATCH: usize = 16;
/// How long `shutdown()` waits for queued replies to be written.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// Gives `emptied`'s allocation back to `list` for the next turn, keeping whatever was pushed
/// onto `list` meanwhile: the per-turn lists are then allocated once, not on every turn.
fn reuse<T>(list: &mut Vec<T>, mut emptied: Vec<T>) {
    emptied.clear();
    emptied.append(list);
    *list = emptied;
}

/// Something that happened to a connection while reading, for the Python half to act on.
#[derive(Debug)]
enum Trouble {
    Failed,
    Framing(String),
}

pub struct StreamLoop<'r> {
    reactor: &'r Reactor,
    session: Session,
    settings: Settings,
    conns: Slab<Conn<Handler>>,
    scratch: Vec<u8>,
    arena: Vec<u8>,
    messages: Vec<(usize, Range<usize>)>,
    troubles: Vec<(usize, Trouble)>,
    /// Connections ready for a handler: just accepted, or (TLS) with a finished handshake.
    accepted: Vec<(OwnedFd, PeerAddress, Option<Box<TlsStream>>)>,
    /// TLS connections still handshaking, and those of them with something to do now.
    handshakes: Handshakes,
    to_handshake: Vec<usize>,
    /// Connections with input left to read.
    to_read: Vec<usize>,
    /// Connections with output left to write.
    to_flush: Vec<usize>,
    /// Connections that may be ready to close.
    to_close: Vec<usize>,
    /// Connections whose peer ended its side this turn (closed once their messages are done).
    ended: Vec<usize>,
    commands: Vec<Command>,
    /// Hands batches to worker threads (None: handlers run on this thread).
    submit: Option<Py<PyAny>>,
    /// Connections whose waiting messages may be handled (or submitted) now.
    to_resume: Vec<usize>,
    backoff: AcceptBackoff,

    next_idle_check: Option<Instant>,
}

impl<'r> StreamLoop<'r> {
    pub fn new(
        reactor: &'r Reactor,
        session: Session,
        settings: Settings,
        conns: Slab<Conn<Handler>>,
        handshakes: Handshakes,
        submit: Option<Py<PyAny>>,
    ) -> Self {
        let mut lp = StreamLoop {
            reactor,
            session,
            settings,
            conns,
            scratch: vec![0; SCRATCH],
            arena: Vec::new(),
            messages: Vec::new(),
            troubles: Vec::new(),
            accepted: Vec::new(),
            handshakes,
            to_handshake: Vec::new(),
            to_read: Vec::new(),
            to_flush: Vec::new(),
            to_close: Vec::new(),
            ended: Vec::new(),
            commands: Vec::new(),
            submit,
            to_resume: Vec::new(),
            backoff: AcceptBackoff::default(),

            next_idle_check: None,
        };
        // Connections kept from an earlier call: the poller may be a new one (after fork).
        let slots: Vec<usize> = lp.conns.indices().collect();
        for slot in slots {
            let conn = lp.conns.get_mut(slot).expect("listed slot");
            let fd = conn.fd();
            let registered = lp.session.poller.register(fd, slot, Interest::READABLE);
            if registered.is_err() {
                let _ = lp.session.poller.reregister(fd, slot, Interest::READABLE);
            }
            conn.wants_writable = false;
            lp.to_flush.push(slot);
            lp.to_read.push(slot);
            conn.readable = true;
        }
        for slot in lp.handshakes.slots() {
            let pending = lp.handshakes.get_mut(slot).expect("listed slot");
            let (fd, source) = (pending.fd(), HANDSHAKE_SOURCE + slot);
            let interest = Interest::READABLE | Interest::WRITABLE;
            if lp.session.poller.register(fd, source, interest).is_err() {
                let _ = lp.session.poller.reregister(fd, source, interest);
            }
            pending.wants_writable = true;
            lp.to_handshake.push(slot);
        }
        lp
    }

    pub fn into_parts(self, _py: Python<'_>) -> (Session, Slab<Conn<Handler>>, Handshakes) {
        (self.session, self.conns, self.handshakes)
    }

    /// Connections open, handshaking or waiting for a handler: what `max_connections` counts.
    fn open_count(&self) -> usize {
        self.conns.len() + self.handshakes.len() + self.accepted.len()
    }

    pub fn run(
        &mut self,
        server: &Bound<'_, PyAny>,
        handler_class: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = server.py();
        let latch = self.reactor.latch();
        while !latch.is_requested() {
            let timeout = self.next_timeout();
            let listening =
                !self.backoff.is_paused() && self.open_count() < self.settings.max_connections;
            detach(py, || self.io_half(timeout, listening)).map_err(|e| os_error(&e))?;
            py.check_signals()?;
            self.python_half(server, handler_class)?;
            self.reactor.retire_if_due();
        }
        // Stop accepting. With a drain window (`shutdown(timeout)`), go on serving the
        // connections already accepted (on handler threads too) until no request is in
        // flight or the window closes; then give queued replies the rest of it (by default,
        // a bounded time).
        let Some(window) = self.reactor.take_drain_window() else {
            let deadline = Instant::now() + SHUTDOWN_FLUSH;
            detach(py, || self.flush_before_return(deadline));
            return Ok(());
        };
        let deadline = Instant::now() + window;
        while self.has_work_in_flight() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            detach(py, || {
                self.io_half(Some(left.min(Duration::from_millis(50))), false)
            })
            .map_err(|e| os_error(&e))?;
            py.check_signals()?;
            self.python_half(server, handler_class)?;
        }
        detach(py, || self.flush_before_return(deadline));
        Ok(())
    }

    /// Requests in flight: messages read but not yet handled or being handled on a worker
    /// thread, connections accepted but not yet opened, and requests on their way (a
    /// connection that has sent nothing yet, or part of a message; see `awaits_request`).
    fn has_work_in_flight(&self) -> bool {
        !self.to_read.is_empty()
            || !self.accepted.is_empty()
            || !self.handshakes.is_empty()
            || self.conns.indices().any(|slot| {
                self.conns.get(slot).is_some_and(|c| {
                    c.handler.in_flight || !c.handler.backlog.is_empty() || c.awaits_request()
                })
            })
    }

    fn next_timeout(&mut self) -> Option<Duration> {
        if !self.to_read.is_empty() || !self.accepted.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = Instant::now();
        let handshake = self.handshakes.next_deadline();
        let next = match (self.next_idle_check, handshake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.backoff
            .cap(next.map(|at| at.saturating_duration_since(now)))
    }

    /// The GIL-free half of a turn.
    fn io_half(&mut self, timeout: Option<Duration>, listening: bool) -> std::io::Result<()> {
        self.flush_pending();
        // Connections whose last bytes just went out (or waiting messages that may now run)
        // must not wait for an unrelated wakeup.
        let timeout = if self.to_close.is_empty() && self.to_resume.is_empty() {
            timeout
        } else {
            Some(Duration::ZERO)
        };
        // A failure means the listener was closed under us; nothing more will be accepted.
        let _ = self.session.poller.set_listening(listening);
        let wakeup = self.session.poller.wait(timeout)?;
        if wakeup.readable {
            self.accept_batch();
        }
        for ready in self.session.poller.ready() {
            if ready.source >= HANDSHAKE_SOURCE {
                self.to_handshake.push(ready.source - HANDSHAKE_SOURCE);
                continue;
            }
            let Some(conn) = self.conns.get_mut(ready.source) else {
                continue;
            };
            conn.hung_up |= ready.closed;
            if (ready.readable || ready.closed) && !conn.readable {
                conn.readable = true;
                self.to_read.push(ready.source);
            }
            if ready.writable && conn.pending_output() > 0 {
                self.to_flush.push(ready.source);
            }
        }
        let stats = &self.reactor.shared().stats;
        for slot in std::mem::take(&mut self.to_handshake) {
            let poller = &self.session.poller;
            if let Some(done) = self.handshakes.advance(slot, poller, stats) {
                self.accepted.push(done);
            }
        }
        self.handshakes.expire(Instant::now(), stats);
        self.read_ready();
        Ok(())
    }

    fn accept_batch(&mut self) {
        let room = self
            .settings
            .max_connections
            .saturating_sub(self.open_count());
        for _ in 0..ACCEPT_BATCH.min(room) {
            match sys::accept_nonblocking(self.session.listener) {
                Ok((fd, peer)) => {
                    self.backoff.succeeded();
                    Counters::bump(&self.reactor.shared().stats.acquired);
                    let stats = &self.reactor.shared().stats;
                    // Read per connection, not per batch: a batch of TLS handshakes can last
                    // long enough for a reload to land in it, and a client that connects after
                    // reload_tls() returned must get the new certificate.
                    let done = match self.reactor.shared().tls_server() {
                        None => Some((fd, peer, None)),
                        Some(tls) => {
                            let poller = &self.session.poller;
                            self.handshakes.start(fd, peer, &tls, poller, stats)
                        }
                    };
                    self.accepted.extend(done);
                }
                Err(err) => {
                    if let Some(errno) = err.raw_os_error() {
                        self.reactor.shared().stats.accept_error(errno);
                    }
                    if is_descriptor_exhaustion(&err) {
                        self.backoff.failed();
                    }
                    // WouldBlock: the backlog is empty. Anything else (a client that reset
                    // while queued, say) concerns only that client.
                    return;
                }
            }
        }
    }

    fn read_ready(&mut self) {
        let limit = self.settings.write_buffer_limit;
        let StreamLoop {
            conns,
            scratch,
            arena,
            messages,
            troubles,
            to_read,
            to_flush,
            ended,
            ..
        } = self;
        // Kept in place (no new list per turn): only connections whose budget ran out stay.
        to_read.retain(|&slot| {
            let Some(conn) = conns.get_mut(slot) else {
                return false;
            };
            let backlogged = conn.handler.backlog_bytes > limit;
            if conn.paused || backlogged || conn.read_closed || conn.closing {
                return false; // resumed by `flush_pending` once output drains
            }
            let stop = conn.read_messages(scratch, READ_BUDGET, &mut |message| {
                let start = arena.len();
                arena.extend_from_slice(message);
                messages.push((slot, start..arena.len()));
            });
            let again = matches!(stop, ReadStop::Budget);
            match stop {
                ReadStop::Drained | ReadStop::Eof | ReadStop::Budget => {}
                ReadStop::Failed => troubles.push((slot, Trouble::Failed)),
                ReadStop::Framing(err) => troubles.push((slot, Trouble::Framing(err.to_string()))),
            }
            if conn.read_closed {
                ended.push(slot);
            }
            if conn.has_records_to_send() {
                to_flush.push(slot);
            }
            again
        });
    }

    /// Write queued output; watch for writability where the socket is full.
    fn flush_pending(&mut self) {
        let limit = self.settings.write_buffer_limit;
        let mut to_flush = std::mem::take(&mut self.to_flush);
        for slot in to_flush.drain(..) {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            let poller = &self.session.poller;
            match conn.flush() {
                Ok(true) => {
                    if conn.wants_writable {
                        conn.wants_writable = false;
                        let _ = poller.reregister(conn.fd(), slot, Interest::READABLE);
                    }
                }
                Ok(false) => {
                    if !conn.wants_writable {
                        conn.wants_writable = true;
                        let _ = poller.reregister(
                            conn.fd(),
                            slot,
                            Interest::READABLE | Interest::WRITABLE,
                        );
                    }
                }
                Err(_) => {
                    // The peer is gone: drop what cannot be delivered and close.
                    conn.discard_output();
                    conn.closing = true;
                    self.troubles.push((slot, Trouble::Failed));
                }
            }
            if conn.paused && conn.pending_output() <= limit / 2 {
                conn.paused = false;
                if !conn.handler.backlog.is_empty() {
                    self.to_resume.push(slot);
                } else if conn.readable {
                    self.to_read.push(slot);
                }
            }
            if conn.closing && conn.pending_output() == 0 {
                self.to_close.push(slot);
            }
        }
        reuse(&mut self.to_flush, to_flush);
    }

    /// The half of a turn that needs Python.
    fn python_half(
        &mut self,
        server: &Bound<'_, PyAny>,
        handler_class: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.open_accepted(server, handler_class)?;
        self.dispatch_messages(server)?;
        self.apply_commands(server.py());
        for slot in std::mem::take(&mut self.ended) {
            self.close_when_flushed(slot);
        }
        self.handle_troubles(server)?;
        self.enforce_idle_timeout();
        self.close_finished(server)
    }

    fn open_accepted(
        &mut self,
        server: &Bound<'_, PyAny>,
        handler_class: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = server.py();
        let shared = self.reactor.shared();
        for (fd, peer, tls) in std::mem::take(&mut self.accepted) {
            let address = peer_to_python(py, &peer)?.unbind();
            let slot = self.conns.next_index();
            let generation = self.reactor.next_generation();
            let info = tls.as_ref().map(|stream| stream.info());
            let connection = Connection::for_stream(shared, slot, generation, info);
            let made = finalize::call(handler_class, (connection, address.clone_ref(py), server))
                .and_then(|object| {
                    let handle_message = object.getattr(intern!(py, "handle_message"))?;
                    finalize::call_method(&object, intern!(py, "setup"), ())?;
                    Ok(Handler::new(
                        object.unbind(),
                        handle_message.unbind(),
                        address.clone_ref(py),
                    ))
                });
            let handler = match made {
                Ok(handler) => handler,
                Err(err) => {
                    drop(fd); // close the connection: it has no handler
                    Counters::bump(&shared.stats.closed);
                    report(server, None, &address, err)?;
                    continue;
                }
            };
            let decoder = Decoder::new(self.settings.framing, self.settings.max_message_size);
            let raw_fd = fd.as_raw_fd();
            let mut conn = Conn::new(fd, generation, decoder, handler);
            conn.stats = Some(Arc::clone(&shared.stats));
            // A TLS connection is registered already, under its handshake's source.
            let registered = if tls.is_some() {
                self.session
                    .poller
                    .reregister(raw_fd, slot, Interest::READABLE)
            } else {
                self.session
                    .poller
                    .register(raw_fd, slot, Interest::READABLE)
            };
            conn.tls = tls;
            let inserted = self.conns.insert(conn);
            debug_assert_eq!(inserted, slot);
            if let Err(err) = registered {
                let conn = self.conns.remove(slot).expect("just inserted");
                report(
                    server,
                    Some(&conn.handler.object),
                    &conn.handler.address,
                    os_error(&err),
                )?;
                continue;
            }
            // Data may have come with the connection: read it this turn.
            let conn = self.conns.get_mut(slot).expect("just inserted");
            conn.readable = true;
            self.to_read.push(slot);
            if conn.pending_output() > 0 {
                self.to_flush.push(slot); // the end of a handshake the socket did not take
            }
        }
        Ok(())
    }

    /// Queue the turn's messages on their connections, then run what can run.
    fn dispatch_messages(&mut self, server: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = server.py();
        let mut messages = std::mem::take(&mut self.messages);
        for (slot, range) in messages.drain(..) {
            let Some(conn) = self.conns.get_mut(slot) else {
                continue;
            };
            if conn.handler.stopped {
                continue; // closed by its handler or after an error: drop later messages
            }
            let message = PyBytes::new(py, &self.arena[range.clone()]);
            let handler = &mut conn.handler;
            handler.backlog.push_back(message.into_any().unbind());
            handler.backlog_bytes += range.len();
            if handler.backlog.len() == 1 {
                self.to_resume.push(slot);
            }
        }
        self.arena.clear();
        reuse(&mut self.messages, messages);
        let mut to_resume = std::mem::take(&mut self.to_resume);
        for slot in to_resume.drain(..) {
            if self.submit.is_some() {
                self.submit_backlog(py, slot)?;
            } else {
                self.handle_backlog(server, slot)?;
            }
            self.after_backlog(slot);
        }
        reuse(&mut self.to_resume, to_resume);
        Ok(())
    }

    /// Handle `slot`'s waiting messages on this thread, in order, until its output passes
    /// the limit (backpressure: the rest wait until the output drains).
    fn handle_backlog(&mut self, server: &Bound<'_, PyAny>, slot: usize) -> PyResult<()> {
        let py = server.py();
        loop {
            let Some(conn) = self.conns.get_mut(slot) else {
                return Ok(());
            };
            if conn.paused || conn.handler.stopped {
                return Ok(());
            }
            let Some(message) = conn.handler.backlog.pop_front() else {
                return Ok(());
            };
            conn.handler.backlog_bytes -= message.bind(py).len()?;
            let reply =
                finalize::call(conn.handler.handle_message.bind(py), (message,)).map(Bound::unbind);
            // Commands from the handler (send/close) come before its returned reply.
            self.apply_commands(py);
            let Some(conn) = self.conns.get_mut(slot) else {
                return Ok(());
            };
            let queued = reply.and_then(|reply| {
                let reply = reply.bind(py);
                if reply.is_none() {
                    return Ok(());
                }
                let framing = self.settings.framing;
                with_bytes_of(reply, |data| encode(framing, data, conn.output()))?
                    .map_err(|e| framing_error(e.to_string()))
            });
            match queued {
                Ok(()) => {
                    Counters::bump(&self.reactor.shared().stats.requests);
                    self.after_output(slot);
                }
                Err(err) => {
                    let (object, address) = self.stop(py, slot);
                    report(server, Some(&object), &address, err)?;
                }
            }
        }
    }

    /// Worker-thread mode: give `slot`'s waiting messages to a worker as one batch, unless
    /// one is in flight (order) or its output is over the limit (backpressure).
    fn submit_backlog(&mut self, py: Python<'_>, slot: usize) -> PyResult<()> {
        let Some(submit) = &self.submit else {
            return Ok(());
        };
        let Some(conn) = self.conns.get_mut(slot) else {
            return Ok(());
        };
        let handler = &mut conn.handler;
        if handler.in_flight || handler.stopped || conn.paused || handler.backlog.is_empty() {
            return Ok(());
        }
        let take = handler.backlog.len().min(SUBMIT_BATCH);
        let batch: Vec<Py<PyAny>> = handler.backlog.drain(..take).collect();
        for message in &batch {
            handler.backlog_bytes -= message.bind(py).len()?;
        }
        let batch = pyo3::types::PyList::new(py, batch)?;
        handler.in_flight = true;
        finalize::call(
            submit.bind(py),
            ((handler.object.clone_ref(py), batch, false),),
        )?;
        Ok(())
    }

    /// After `slot`'s backlog shrank: read again if reading was held back for it, and see
    /// whether a closing connection is done.
    fn after_backlog(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.readable && conn.handler.backlog_bytes <= self.settings.write_buffer_limit {
            self.to_read.push(slot);
        }
        if conn.closing {
            self.to_close.push(slot);
        }
    }

    /// The handler failed or asked to close: take no more of its messages, close once the
    /// output is written. Returns the handler object and address, for reporting.
    fn stop(&mut self, py: Python<'_>, slot: usize) -> (Py<PyAny>, Py<PyAny>) {
        self.close_when_flushed(slot);
        let conn = self.conns.get_mut(slot).expect("a live connection");
        conn.handler.stopped = true;
        conn.handler.backlog.clear();
        conn.handler.backlog_bytes = 0;
        (
            conn.handler.object.clone_ref(py),
            conn.handler.address.clone_ref(py),
        )
    }

    /// Output was queued on `slot`: schedule the write, and pause past the limit.
    fn after_output(&mut self, slot: usize) {
        let Some(conn) = self.conns.get_mut(slot) else {
            return;
        };
        if conn.pending_output() > 0 {
            self.to_flush.push(slot);
            if conn.pending_output() > self.settings.write_buffer_limit {
                if !conn.paused {
                    Counters::bump(&self.reactor.shared().stats.backpressure_pauses);
                }
                conn.paused = true;
            }
        }
    }

    fn apply_commands(&mut self, py: Python<'_>) {
        let shared = self.reactor.shared();
        loop {
            shared.take_commands(&mut self.commands);
            if self.commands.is_empty() {
                return;
            }
            for command in std::mem::take(&mut self.commands) {
                match command {
                    Command::Send {
                        slot,
                        generation,
                        data,
                    } => {
                        let Some(conn) = self.conns.get_mut(slot) else {
                            continue;
                        };
                        if conn.generation != generation {
                            continue; // meant for an earlier connection in this slot
                        }
                        // Framing errors cannot happen for sends under 4 GiB; drop otherwise.
                        if encode(self.settings.framing, &data, conn.output()).is_ok() {
                            self.after_output(slot);
                        }
                    }
                    Command::Close { slot, generation } => {
                        if self
                            .conns
                            .get(slot)
                            .is_some_and(|c| c.generation == generation)
                        {
                            self.stop(py, slot);
                        }
                    }
                    Command::BatchDone { slot, generation } => {
                        let Some(conn) = self.conns.get_mut(slot) else {
                            continue;
                        };
                        if conn.generation == generation {
                            conn.handler.in_flight = false;
                            self.to_resume.push(slot);
                            self.to_close.push(slot);
                        }
                    }
                    Command::SendTo { .. } | Command::DatagramDone => {}
                }
            }
        }
    }

    /// Stop taking input from `slot` and close it once its output is written.
    fn close_when_flushed(&mut self, slot: usize) {
        if let Some(conn) = self.conns.get_mut(slot) {
            conn.closing = true;
            self.to_flush.push(slot);
            self.to_close.push(slot);
        }
    }

    fn handle_troubles(&mut self, server: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = server.py();
        for (slot, trouble) in std::mem::take(&mut self.troubles) {
            if self.conns.get(slot).is_none() {
                continue;
            }
            match trouble {
                // The peer is gone: nothing more can be delivered.
                Trouble::Failed => {
                    self.stop(py, slot);
                    let conn = self.conns.get_mut(slot).expect("checked above");
                    conn.discard_output();
                }
                // Messages before the bad one still get handled and answered; then close.
                Trouble::Framing(message) => {
                    self.close_when_flushed(slot);
                    let conn = self.conns.get(slot).expect("checked above");
                    let object = conn.handler.object.clone_ref(py);
                    let address = conn.handler.address.clone_ref(py);
                    report(server, Some(&object), &address, framing_error(message))?;
                }
            }
        }
        Ok(())
    }

    fn enforce_idle_timeout(&mut self) {
        let Some(idle) = self.settings.idle_timeout else {
            return;
        };
        let now = Instant::now();
        if self.next_idle_check.is_some_and(|at| now < at) {
            return;
        }
        let slots: Vec<usize> = self.conns.indices().collect();
        for slot in slots {
            let conn = self.conns.get_mut(slot).expect("listed slot");
            if now.duration_since(conn.last_active) >= idle && !conn.closing {
                Counters::bump(&self.reactor.shared().stats.idle_timeouts);
                self.close_when_flushed(slot);
            }
        }
        // Checking a quarter as often as the timeout keeps closes within 1.25x of it.
        self.next_idle_check = Some(now + (idle / 4).max(Duration::from_millis(10)));
    }

    /// Close connections that are closing and have nothing left to write.
    fn close_finished(&mut self, server: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut result = Ok(());
        for slot in std::mem::take(&mut self.to_close) {
            // Done: nothing left to write, no batch in flight on a worker (it still uses the
            // handler), and no waiting message that will still be handled.
            let ready = self.conns.get(slot).is_some_and(|c| {
                c.closing
                    && c.pending_output() == 0
                    && !c.handler.in_flight
                    && (c.handler.backlog.is_empty() || c.handler.stopped)
            });
            if !ready {
                continue;
            }
            let conn = self.conns.remove(slot).expect("checked above");
            if let Err(err) = finish(server, &conn.handler) {
                result = result.and(Err(err));
            }
            drop(conn); // closes the socket, which also leaves the epoll set
        }
        result
    }

    fn flush_before_return(&mut self, deadline: Instant) {
        let slots: Vec<usize> = self.conns.indices().collect();
        self.to_flush.extend(slots);
        loop {
            self.flush_pending();
            let pending = self
                .conns
                .indices()
                .any(|slot| self.conns.get(slot).is_some_and(|c| c.pending_output() > 0));
            let left = deadline.saturating_duration_since(Instant::now());
            if !pending || left.is_zero() {
                return;
            }
            let poller = &mut self.session.poller;
            let waited = poller
                .set_listening(false)
                .and_then(|()| poller.wait(Some(left.min(Duration::from_millis(50)))));
            if waited.is_err() {
                return;
            }
            self.to_flush
                .extend(self.conns.indices().collect::<Vec<_>>());
        }
    }
}
