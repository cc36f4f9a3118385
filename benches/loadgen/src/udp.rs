//! The datagram driver: `--conns` connected UDP sockets (each from its own loopback source
//! address), each with one request outstanding. Requests carry a sequence number, so an echo
//! that arrives after its request timed out is recognised and not counted.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll};

use crate::args::{Config, Target, source_addr};
use crate::net::{payload, token, untoken};
use crate::stats::Recorder;

const TICK: Duration = Duration::from_millis(10);
const RETRY: Duration = Duration::from_millis(10);
/// Hex digits of the sequence number at the start of each datagram (when it is long enough).
const SEQ_DIGITS: usize = 16;

#[derive(Debug)]
struct Slot {
    socket: UdpSocket,
    seq: u64,
    started: Instant,
    busy: bool,
    /// The request is built but `send` would block: sent on the next writable event.
    unsent: bool,
    retry_at: Option<Instant>,
}

#[derive(Debug)]
struct Driver<'a> {
    config: &'a Config,
    slots: Vec<Slot>,
    request: Vec<u8>,
    next_seq: u64,
    issued: u64,
    end: Instant,
    recorder: Recorder,
    buf: Vec<u8>,
}

/// Runs the datagram scenario; returns the samples and the measured time.
pub fn run(config: &Config) -> io::Result<(Recorder, Duration)> {
    let Target::Inet(dest) = config.target else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "udp mode needs host:port",
        ));
    };
    let poll = Poll::new()?;
    let mut slots = Vec::with_capacity(config.conns);
    for slot in 0..config.conns {
        let local = match dest {
            SocketAddr::V4(_) => {
                SocketAddr::new(IpAddr::V4(source_addr(slot as u64, config.sources)), 0)
            }
            SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 0),
        };
        let mut socket = UdpSocket::bind(local)?;
        socket.connect(dest)?;
        poll.registry().register(
            &mut socket,
            token(slot, 0),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        slots.push(Slot {
            socket,
            seq: 0,
            started: Instant::now(),
            busy: false,
            unsent: false,
            retry_at: None,
        });
    }
    let start = Instant::now();
    let mut driver = Driver {
        config,
        slots,
        request: payload(config.size),
        next_seq: 0,
        issued: 0,
        end: start + config.duration,
        recorder: Recorder::with_capacity(config.max_requests.min(1 << 21) as usize),
        buf: vec![0; 65_536],
    };
    for slot in 0..config.conns {
        driver.issue(slot, start);
    }
    let mut events = Events::with_capacity(1024);
    let mut poll = poll;
    loop {
        let now = Instant::now();
        let drained = driver.issued >= config.max_requests && driver.slots.iter().all(|s| !s.busy);
        if now >= driver.end || drained {
            return Ok((driver.recorder, now.min(driver.end) - start));
        }
        match poll.poll(&mut events, Some((driver.end - now).min(TICK))) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        for event in events.iter() {
            let (slot, _) = untoken(event.token());
            if slot < driver.slots.len() {
                if event.is_writable() && driver.slots[slot].unsent {
                    driver.send(slot, now);
                }
                driver.receive(slot, now);
            }
        }
        driver.sweep(Instant::now());
    }
}

impl Driver<'_> {
    fn issue(&mut self, slot: usize, now: Instant) {
        let s = &mut self.slots[slot];
        s.busy = false;
        s.retry_at = None;
        if now >= self.end || self.issued >= self.config.max_requests {
            return;
        }
        self.issued += 1;
        s.seq = self.next_seq;
        self.next_seq += 1;
        s.busy = true;
        s.started = Instant::now();
        s.unsent = true;
        self.send(slot, now);
    }

    fn send(&mut self, slot: usize, now: Instant) {
        let s = &mut self.slots[slot];
        if self.request.len() > SEQ_DIGITS {
            let digits = format!("{:0width$x}", s.seq, width = SEQ_DIGITS);
            self.request[..SEQ_DIGITS].copy_from_slice(digits.as_bytes());
        }
        match s.socket.send(&self.request) {
            Ok(_) => s.unsent = false,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => self.failed(slot, "send", e, now),
        }
    }

    /// A failed request (e.g. ECONNREFUSED from an earlier datagram): counted, retried shortly.
    fn failed(&mut self, slot: usize, what: &str, error: io::Error, now: Instant) {
        self.recorder.error(|| format!("{what}: {error}"));
        let s = &mut self.slots[slot];
        s.busy = false;
        s.unsent = false;
        s.retry_at = Some(now + RETRY);
    }

    fn receive(&mut self, slot: usize, now: Instant) {
        loop {
            let s = &mut self.slots[slot];
            let n = match s.socket.recv(&mut self.buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    if s.busy {
                        self.failed(slot, "recv", e, now);
                    }
                    continue;
                }
            };
            if s.busy && !s.unsent && self.is_echo(slot, n) {
                let started = self.slots[slot].started;
                let now = Instant::now();
                self.recorder.complete(started, now);
                self.issue(slot, now);
            }
        }
    }

    /// Whether the `n` bytes in `self.buf` are the echo of `slot`'s outstanding request.
    fn is_echo(&self, slot: usize, n: usize) -> bool {
        if n != self.request.len() {
            return false;
        }
        if n <= SEQ_DIGITS {
            return true;
        }
        let digits = format!("{:0width$x}", self.slots[slot].seq, width = SEQ_DIGITS);
        self.buf[..SEQ_DIGITS] == *digits.as_bytes()
    }

    fn sweep(&mut self, now: Instant) {
        for slot in 0..self.slots.len() {
            let s = &self.slots[slot];
            if s.busy && now.saturating_duration_since(s.started) > self.config.timeout {
                self.recorder.timeouts(1);
                self.issue(slot, now);
            } else if s.retry_at.is_some_and(|at| now >= at) {
                self.issue(slot, now);
            }
        }
    }
}
