//! Persistent-stream drivers (`tcp`, `unix`, `line`, `idle`): each connection sends a request,
//! waits for its whole echo, records the latency and sends the next one (a closed loop). In
//! `idle` mode every connection does its one priming round trip and then holds still until the
//! end, so the server's memory per idle connection can be read meanwhile.
//!
//! All connections are established before the clock starts (with `--prime`, each also completes
//! one round trip first, so the server has accepted it). A connection that fails or times out
//! is counted, closed and replaced, since its byte stream can no longer be trusted.

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll};
use rustls::ClientConfig;

use crate::args::{Config, Mode, Target, source_addr};
use crate::net::{Stream, payload, token, untoken};
use crate::stats::{ConnectionStats, Recorder};

/// How often timeouts and reconnects are looked at.
const TICK: Duration = Duration::from_millis(10);
/// Pause before reconnecting a slot whose connect failed at once (server gone, backlog full).
const RETRY: Duration = Duration::from_millis(10);
/// The longest wait for requests in flight when the run ends.
pub const GRACE: Duration = Duration::from_secs(1);

/// How a response is known to be complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// After as many bytes as were sent.
    Bytes,
    /// After as many newlines as lines were sent; each line is one sample.
    Lines,
}

#[derive(Debug)]
struct Conn {
    stream: Option<Stream>,
    generation: u32,
    connected: bool,
    /// When the pending connect or the request in flight started.
    started: Instant,
    /// Bytes of the request written so far; meaningful while `busy`.
    written: usize,
    /// Bytes (`Framing::Bytes`) or lines (`Framing::Lines`) still expected; 0 when idle.
    pending: usize,
    retry_at: Option<Instant>,
    /// Whether this connection completed its round trip before the clock (`--prime`).
    primed: bool,
    /// Whether this slot completed a round trip while the clock ran (kept across reconnects).
    served: bool,
    /// The poller reported the server's end of stream or an error on this connection, which
    /// raises no further readiness: read it down to `WouldBlock` from then on.
    hung_up: bool,
}

#[derive(Debug)]
struct Driver<'a> {
    config: &'a Config,
    /// TLS sessions are made with this, when the run speaks TLS.
    tls: Option<Arc<ClientConfig>>,
    poll: Poll,
    conns: Vec<Conn>,
    request: Vec<u8>,
    framing: Framing,
    /// Requests issued so far (lines, in line mode), bounded by `max_requests`.
    issued: u64,
    next_source: u64,
    /// Connections opened so far, reconnects included.
    opened: u64,
    /// When timeouts and reconnects are next looked at: once per `TICK`, so a turn costs
    /// the events it handles, not a walk over every connection (10,000 of them, say).
    next_sweep: Instant,
    /// None while connecting; the end of the measurement once it has started.
    end: Option<Instant>,
    recorder: Recorder,
    buf: Vec<u8>,
}

/// Runs a persistent-connection scenario; returns the samples and the measured time.
pub fn run(config: &Config, tls: Option<Arc<ClientConfig>>) -> io::Result<(Recorder, Duration)> {
    let framing = match config.mode {
        Mode::Line | Mode::Idle => Framing::Lines,
        _ => Framing::Bytes,
    };
    let one = payload(config.size);
    let mut driver = Driver {
        config,
        tls,
        poll: Poll::new()?,
        conns: Vec::with_capacity(config.conns),
        request: one.repeat(config.pipeline),
        framing,
        issued: 0,
        next_source: 0,
        opened: 0,
        next_sweep: Instant::now(),
        end: None,
        recorder: Recorder::with_capacity(config.max_requests.min(1 << 21) as usize),
        buf: vec![0; 64 * 1024],
    };
    let now = Instant::now();
    for slot in 0..config.conns {
        driver.conns.push(Conn {
            stream: None,
            generation: 0,
            connected: false,
            started: now,
            written: 0,
            pending: 0,
            retry_at: None,
            primed: false,
            served: false,
            hung_up: false,
        });
        driver.connect(slot, now);
    }
    let mut events = Events::with_capacity(1024);

    // Connect everything first (and prime it, if asked; bounded by the per-request timeout),
    // then start the clock.
    let connect_deadline = now + config.timeout;
    let ready = |c: &Conn| c.connected && (c.primed || !config.prime);
    while !driver.conns.iter().all(ready) && Instant::now() < connect_deadline {
        driver.turn(&mut events, connect_deadline)?;
    }
    let start = Instant::now();
    let ready = driver.conns.iter().filter(|c| ready(c)).count() as u64;
    let end = start + config.duration;
    driver.end = Some(end);
    if config.mode == Mode::Idle {
        // The runner reads the server's memory from here on, until the connections close.
        let mut out = io::stdout().lock();
        writeln!(out, "HOLDING {ready}")?;
        out.flush()?;
    }
    for slot in 0..driver.conns.len() {
        // A priming round trip still in flight is left to finish (it then counts as a request).
        if driver.conns[slot].connected && driver.conns[slot].pending == 0 {
            driver.issue(slot, start);
        }
    }
    let elapsed = loop {
        let now = Instant::now();
        let drained =
            driver.issued >= config.max_requests && driver.conns.iter().all(|c| c.pending == 0);
        if now >= end || drained {
            break now.min(end) - start;
        }
        driver.turn(&mut events, end)?;
    };
    // Let the requests still in flight come back (uncounted) before the sockets close: closing
    // with an echo unread would send the server a reset instead of an end of stream.
    let grace = Instant::now() + config.timeout.min(GRACE);
    while driver.conns.iter().any(|c| c.pending > 0) && Instant::now() < grace {
        driver.turn(&mut events, grace)?;
    }
    for slot in 0..driver.conns.len() {
        driver.close(slot);
    }
    let stats = ConnectionStats {
        ready,
        served: driver.conns.iter().filter(|c| c.served).count() as u64,
        opened: driver.opened,
        connect_s: start.saturating_duration_since(now).as_secs_f64(),
    };
    driver.recorder.connections(stats);
    Ok((driver.recorder, elapsed))
}

impl Driver<'_> {
    /// One poll: handles the events that came, then timeouts and pending reconnects.
    fn turn(&mut self, events: &mut Events, until: Instant) -> io::Result<()> {
        let wait = until.saturating_duration_since(Instant::now()).min(TICK);
        match self.poll.poll(events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        for event in events.iter() {
            let (slot, generation) = untoken(event.token());
            if slot < self.conns.len() && self.conns[slot].generation == generation {
                if event.is_read_closed() || event.is_error() {
                    self.conns[slot].hung_up = true;
                }
                self.on_event(slot, event.is_readable() || event.is_read_closed(), now);
            }
        }
        let now = Instant::now();
        if now >= self.next_sweep {
            self.sweep(now);
            self.next_sweep = now + TICK;
        }
        Ok(())
    }

    fn measuring(&self, now: Instant) -> bool {
        self.end.is_some_and(|end| now < end)
    }

    /// Connecting is allowed while connecting up front and during the measurement.
    fn may_connect(&self, now: Instant) -> bool {
        self.end.is_none_or(|end| now < end)
    }

    /// Opens a fresh connection in `slot` from the next source address.
    fn connect(&mut self, slot: usize, now: Instant) {
        let source = source_addr(self.next_source, self.config.sources);
        self.next_source += 1;
        self.opened += 1;
        let opened = match &self.config.target {
            Target::Inet(addr) => Stream::tcp(*addr, Some(source)),
            Target::Unix(path) => Stream::unix(path),
        }
        .and_then(|stream| stream.with_tls(self.tls.as_ref()));
        let conn = &mut self.conns[slot];
        conn.generation = conn.generation.wrapping_add(1);
        conn.connected = false;
        conn.started = now;
        conn.pending = 0;
        conn.written = 0;
        conn.retry_at = None;
        conn.primed = false;
        conn.hung_up = false;
        let result = opened.and_then(|mut stream| {
            stream.register(self.poll.registry(), token(slot, conn.generation))?;
            Ok(stream)
        });
        match result {
            Ok(stream) => conn.stream = Some(stream),
            Err(e) => {
                conn.retry_at = Some(now + RETRY);
                self.recorder.error(|| format!("connect: {e}"));
            }
        }
    }

    /// Counts the failure of whatever `slot` was doing, and replaces its connection after a
    /// short pause (so a server that is gone costs a few errors per tick, not a busy loop).
    fn fail(&mut self, slot: usize, what: &str, error: Option<io::Error>, now: Instant) {
        let failed = self.in_flight(slot).max(1);
        for _ in 0..failed {
            self.recorder.error(|| match &error {
                Some(e) => format!("{what}: {e}"),
                None => what.to_owned(),
            });
        }
        self.close(slot);
        self.conns[slot].retry_at = Some(now + RETRY);
    }

    /// Replaces `slot`'s connection at once (after a timeout).
    fn reconnect(&mut self, slot: usize, now: Instant) {
        self.close(slot);
        if self.may_connect(now) {
            self.connect(slot, now);
        }
    }

    fn close(&mut self, slot: usize) {
        if let Some(mut stream) = self.conns[slot].stream.take() {
            stream.close_notify();
            stream.deregister(self.poll.registry());
        }
        let conn = &mut self.conns[slot];
        conn.pending = 0;
        conn.connected = false;
        conn.generation = conn.generation.wrapping_add(1);
    }

    /// Requests in flight on `slot` (lines in line mode).
    fn in_flight(&self, slot: usize) -> u64 {
        let conn = &self.conns[slot];
        match (conn.pending, self.framing) {
            (0, _) => 0,
            (_, Framing::Bytes) => 1,
            (lines, Framing::Lines) => lines as u64,
        }
    }

    /// Sends the next request on an idle, connected `slot`, if the bounds allow one; before the
    /// clock, only the priming request of a connection not yet primed (with `--prime`).
    fn issue(&mut self, slot: usize, now: Instant) {
        let per_request = self.config.pipeline as u64;
        if self.end.is_none() {
            if !self.config.prime || self.conns[slot].primed {
                return;
            }
        } else if self.config.mode == Mode::Idle
            || !self.measuring(now)
            || self.issued + per_request > self.config.max_requests
        {
            return;
        } else {
            self.issued += per_request;
        }
        let conn = &mut self.conns[slot];
        conn.started = Instant::now();
        conn.written = 0;
        conn.pending = match self.framing {
            Framing::Bytes => self.request.len(),
            Framing::Lines => self.config.pipeline,
        };
        self.write(slot, now);
    }

    fn write(&mut self, slot: usize, now: Instant) {
        let conn = &mut self.conns[slot];
        let Some(stream) = conn.stream.as_mut() else {
            return;
        };
        while conn.written < self.request.len() {
            match stream.write(&self.request[conn.written..]) {
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(slot, "write", Some(e), now),
            }
        }
    }

    fn on_event(&mut self, slot: usize, readable: bool, now: Instant) {
        if self.conns[slot].stream.is_none() {
            return;
        }
        if !self.conns[slot].connected {
            let state = self.conns[slot].stream.as_ref().map(Stream::connected);
            match state {
                Some(Ok(true)) => {
                    self.conns[slot].connected = true;
                    self.issue(slot, now);
                }
                Some(Ok(false)) | None => return,
                Some(Err(e)) => return self.fail(slot, "connect", Some(e), now),
            }
        } else if self.conns[slot].pending > 0 && self.conns[slot].written < self.request.len() {
            self.write(slot, now);
        } else if let Some(Err(e)) = self.conns[slot].stream.as_mut().map(Stream::flush) {
            // A TLS session sends the records the socket did not take before.
            return self.fail(slot, "write", Some(e), now);
        }
        if readable {
            self.read(slot, now);
        }
    }

    /// Reads everything available on `slot` (events are edge-triggered).
    ///
    /// On a plain socket, a read shorter than the buffer has emptied the receive queue (a
    /// stream socket's read takes all that is queued, up to the buffer), and any later bytes
    /// raise a new edge, so reading stops there rather than spending a second syscall per
    /// request on `WouldBlock`: client CPU saved is CPU the server under test is not made to
    /// wait for. A TLS session may hold back decrypted bytes, and a hang-up raises no later
    /// edge, so those are read down to `WouldBlock`.
    fn read(&mut self, slot: usize, now: Instant) {
        loop {
            let generation = self.conns[slot].generation;
            let hung_up = self.conns[slot].hung_up;
            let Some(stream) = self.conns[slot].stream.as_mut() else {
                return;
            };
            let plain = !matches!(stream, Stream::Tls(_));
            let n = match stream.read(&mut self.buf) {
                Ok(0) => return self.fail(slot, "server closed the connection", None, now),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(slot, "read", Some(e), now),
            };
            self.received(slot, n);
            if self.conns[slot].generation != generation {
                return; // the connection was replaced while handling what it sent
            }
            if plain && !hung_up && n < self.buf.len() {
                return;
            }
        }
    }

    /// Accounts for `n` echoed bytes now in `self.buf`.
    fn received(&mut self, slot: usize, n: usize) {
        // Timed here, not at the poll: the echo may have come while this batch was handled.
        let now = Instant::now();
        let measuring = self.measuring(now);
        let conn = &mut self.conns[slot];
        let arrived = match self.framing {
            Framing::Bytes => n,
            Framing::Lines => self.buf[..n].iter().filter(|&&b| b == b'\n').count(),
        };
        if arrived > conn.pending {
            let what = "server sent more than was asked for";
            return self.fail(slot, what, None, now);
        }
        conn.pending -= arrived;
        let started = conn.started;
        let done = conn.pending == 0 && arrived > 0;
        let count = match self.framing {
            Framing::Lines => arrived,
            Framing::Bytes => usize::from(done),
        };
        if measuring && count > 0 {
            conn.served = true;
            (0..count).for_each(|_| self.recorder.complete(started, now));
        }
        if done && self.end.is_none() {
            conn.primed = true;
        } else if done {
            self.issue(slot, now);
        }
    }

    /// Times out overdue requests and connects; retries connects that failed at once.
    fn sweep(&mut self, now: Instant) {
        let timeout = self.config.timeout;
        for slot in 0..self.conns.len() {
            let conn = &self.conns[slot];
            if conn.stream.is_none() {
                if conn.retry_at.is_some_and(|at| now >= at) && self.may_connect(now) {
                    self.connect(slot, now);
                }
                continue;
            }
            let overdue = now.saturating_duration_since(conn.started) > timeout;
            if overdue && conn.pending > 0 {
                let n = self.in_flight(slot);
                self.recorder.timeouts(n);
                self.reconnect(slot, now);
            } else if overdue && !conn.connected {
                self.recorder.timeouts(1);
                self.reconnect(slot, now);
            }
        }
    }
}
