//! The connection-per-request driver: each worker connects (from the next loopback source
//! address), writes one message, reads its echo, closes, and starts over. A sample spans the
//! whole exchange, connect included (and with `--tls-ca` the full TLS handshake: no session is
//! ever resumed). All workers start at once, so `--conns 256
//! --max-requests 256` is a burst of 256 simultaneous connects.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Poll};
use rustls::ClientConfig;

use crate::args::{Config, Target, source_addr};
use crate::net::{Stream, payload, token, untoken};
use crate::stats::Recorder;
use crate::stream::GRACE;

const TICK: Duration = Duration::from_millis(10);
const RETRY: Duration = Duration::from_millis(10);

#[derive(Debug)]
struct Worker {
    stream: Option<Stream>,
    generation: u32,
    started: Instant,
    written: usize,
    pending: usize,
    /// When a worker whose last exchange failed starts over.
    retry_at: Option<Instant>,
}

#[derive(Debug)]
struct Driver<'a> {
    config: &'a Config,
    /// TLS sessions are made with this, when the run speaks TLS.
    tls: Option<Arc<ClientConfig>>,
    dest: SocketAddr,
    poll: Poll,
    workers: Vec<Worker>,
    request: Vec<u8>,
    issued: u64,
    end: Instant,
    recorder: Recorder,
    buf: Vec<u8>,
}

/// Runs the connection-per-request scenario; returns the samples and the measured time.
pub fn run(config: &Config, tls: Option<Arc<ClientConfig>>) -> io::Result<(Recorder, Duration)> {
    let Target::Inet(dest) = config.target else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "connect mode needs TCP",
        ));
    };
    let start = Instant::now();
    let mut driver = Driver {
        config,
        tls,
        dest,
        poll: Poll::new()?,
        workers: Vec::with_capacity(config.conns),
        request: payload(config.size),
        issued: 0,
        end: start + config.duration,
        recorder: Recorder::with_capacity(config.max_requests.min(1 << 21) as usize),
        buf: vec![0; 64 * 1024],
    };
    for _ in 0..config.conns {
        driver.workers.push(Worker {
            stream: None,
            generation: 0,
            started: start,
            written: 0,
            pending: 0,
            retry_at: None,
        });
    }
    for slot in 0..config.conns {
        driver.start(slot, start);
    }
    let mut events = Events::with_capacity(1024);
    let mut elapsed = None;
    let mut until = driver.end;
    loop {
        let now = Instant::now();
        let idle = driver.workers.iter().all(|w| w.stream.is_none());
        if elapsed.is_none()
            && (now >= driver.end || (driver.issued >= config.max_requests && idle))
        {
            elapsed = Some(now.min(driver.end) - start);
            // Exchanges in flight may finish (uncounted), so no socket closes with an echo
            // unread, which would reset the server's connection instead of ending it.
            until = now + config.timeout.min(GRACE);
            driver.end = driver.end.min(now);
        }
        if let Some(elapsed) = elapsed {
            if idle || now >= until {
                return Ok((driver.recorder, elapsed));
            }
        }
        let wait = until.saturating_duration_since(now).min(TICK);
        match driver.poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            let (slot, generation) = untoken(event.token());
            if slot < driver.workers.len() && driver.workers[slot].generation == generation {
                driver.on_event(slot);
            }
        }
        driver.sweep(Instant::now());
    }
}

impl Driver<'_> {
    /// Starts the next exchange on `slot`, if the bounds allow one.
    fn start(&mut self, slot: usize, now: Instant) {
        let worker = &mut self.workers[slot];
        worker.retry_at = None;
        if now >= self.end || self.issued >= self.config.max_requests {
            return;
        }
        self.issued += 1;
        let source = source_addr(self.issued - 1, self.config.sources);
        worker.generation = worker.generation.wrapping_add(1);
        worker.started = Instant::now();
        worker.written = 0;
        worker.pending = self.request.len();
        let opened = Stream::tcp(self.dest, Some(source))
            .and_then(|stream| stream.with_tls(self.tls.as_ref()))
            .and_then(|mut stream| {
                stream.register(self.poll.registry(), token(slot, worker.generation))?;
                Ok(stream)
            });
        match opened {
            Ok(stream) => {
                worker.stream = Some(stream);
                self.write(slot);
            }
            Err(e) => {
                worker.retry_at = Some(now + RETRY);
                self.recorder.error(|| format!("connect: {e}"));
            }
        }
    }

    /// Closes `slot`'s connection (we close first, so TIME_WAIT stays on the client side; a TLS
    /// session sends its close_notify first).
    fn close(&mut self, slot: usize) {
        if let Some(mut stream) = self.workers[slot].stream.take() {
            stream.close_notify();
            stream.deregister(self.poll.registry());
        }
    }

    /// Counts a failed exchange; the worker starts over at the next tick, not at once, so a
    /// server that is gone costs a few errors per tick rather than a busy loop.
    fn fail(&mut self, slot: usize, what: &str, error: Option<io::Error>) {
        self.recorder.error(|| match error {
            Some(e) => format!("{what}: {e}"),
            None => what.to_owned(),
        });
        self.close(slot);
        self.workers[slot].retry_at = Some(Instant::now() + RETRY);
    }

    fn write(&mut self, slot: usize) {
        let worker = &mut self.workers[slot];
        let Some(stream) = worker.stream.as_mut() else {
            return;
        };
        while worker.written < self.request.len() {
            match stream.write(&self.request[worker.written..]) {
                Ok(n) => worker.written += n,
                // Still connecting, or the buffer is full: the writable event brings us back.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(slot, "write", Some(e)),
            }
        }
    }

    fn on_event(&mut self, slot: usize) {
        if self.workers[slot].written < self.request.len() {
            self.write(slot);
        } else if let Some(Err(e)) = self.workers[slot].stream.as_mut().map(Stream::flush) {
            // A TLS session sends the records the socket did not take before.
            return self.fail(slot, "write", Some(e));
        }
        let generation = self.workers[slot].generation;
        loop {
            if self.workers[slot].generation != generation {
                return;
            }
            let worker = &mut self.workers[slot];
            let Some(stream) = worker.stream.as_mut() else {
                return;
            };
            let n = match stream.read(&mut self.buf) {
                Ok(0) => return self.fail(slot, "server closed before echoing", None),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.fail(slot, "read", Some(e)),
            };
            if n > worker.pending {
                return self.fail(slot, "server sent more than was asked for", None);
            }
            worker.pending -= n;
            if worker.pending == 0 {
                let started = worker.started;
                let now = Instant::now();
                if now < self.end {
                    self.recorder.complete(started, now);
                }
                self.close(slot);
                self.start(slot, now);
            }
        }
    }

    /// Times out overdue exchanges; restarts workers whose last exchange failed.
    fn sweep(&mut self, now: Instant) {
        for slot in 0..self.workers.len() {
            let worker = &self.workers[slot];
            if worker.stream.is_none() {
                if worker.retry_at.is_some_and(|at| now >= at) {
                    self.start(slot, now);
                }
            } else if now.saturating_duration_since(worker.started) > self.config.timeout {
                self.recorder.timeouts(1);
                self.close(slot);
                self.start(slot, now);
            }
        }
    }
}
