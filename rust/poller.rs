//! Readiness waiting: one mio `Poll` per process, with a `Waker` for `shutdown()` and a
//! socket pair that Python's C signal handler writes to (`signal.set_wakeup_fd`).
//!
//! mio registers descriptors edge-triggered, while socketserver serves one request per wakeup
//! and relies on level-triggered readiness (`poll()`): with a plain edge-triggered listener,
//! clients still queued after one is accepted would never be reported again. So the listening
//! descriptor goes through the platform layer's `sys::Listener`, which gives it level-triggered
//! meaning on every OS: it is reported on every wait while a client waits in the backlog, and
//! not at all while accepting is paused (back-off, full pool). The caller's other sources go
//! through mio.
//! This file needs no Python and is tested with `cargo test`.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::heartbeat;
use crate::sys::{self, ForkBound, Paths};

/// A poller's waker, shareable with other threads (and closed only where that is safe after
/// a `fork()`, see `sys::ForkBound`).
pub type SharedWaker = Arc<ForkBound<Waker>>;

const WATCHED: Token = Token(0);
const WAKER: Token = Token(1);
const SIGNALS: Token = Token(2);
/// Tokens from here on belong to the caller's own sources (`register`).
const FIRST_SOURCE: usize = 3;

/// Readiness of one of the caller's own sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub source: usize,
    pub readable: bool,
    pub writable: bool,
    /// The peer hung up or the socket is in error: reading will say which.
    pub closed: bool,
}

/// What ended one wait. Several may be true at once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Wakeup {
    /// The watched descriptor is readable.
    pub readable: bool,
    /// `Waker::wake` was called (a shutdown request).
    pub woken: bool,
    /// A signal arrived: through the wakeup pipe, or as `EINTR` on this thread.
    pub signalled: bool,
}

/// A mio `Poll` with its waker and signal pipe, owned by the process that made it.
#[derive(Debug)]
pub struct Poller {
    poll: ForkBound<Poll>,
    events: Events,
    waker: SharedWaker,
    ready: Vec<Ready>,
    signal_rx: UnixStream,
    signal_tx: UnixStream,
    paths: Paths,
    watched: Option<sys::Listener>,
}

impl Poller {
    /// A poller on the paths this process uses (`sys::active`).
    pub fn new() -> io::Result<Poller> {
        Poller::with_paths(sys::active())
    }

    /// A poller whose listener registration takes the given paths.
    pub fn with_paths(paths: Paths) -> io::Result<Poller> {
        let poll = Poll::new()?;
        let waker = Arc::new(ForkBound::new(Waker::new(poll.registry(), WAKER)?));
        // Both ends non-blocking: the C signal handler must never block on a full pipe, and
        // draining stops at the first `WouldBlock`.
        let (signal_rx, signal_tx) = UnixStream::pair()?;
        signal_rx.set_nonblocking(true)?;
        signal_tx.set_nonblocking(true)?;
        poll.registry().register(
            &mut SourceFd(&signal_rx.as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )?;
        Ok(Poller {
            poll: ForkBound::new(poll),
            events: Events::with_capacity(8),
            waker,
            ready: Vec::new(),
            signal_rx,
            signal_tx,
            paths,
            watched: None,
        })
    }

    /// Whether this poller belongs to the calling process. After `fork()` a Linux child shares
    /// the epoll instance and the eventfd with the parent, and a kqueue child has no copy of
    /// the kqueue at all: either way a child must build its own.
    pub fn is_owned_by_this_process(&self) -> bool {
        self.poll.is_owned_by_this_process()
    }

    pub fn waker(&self) -> SharedWaker {
        Arc::clone(&self.waker)
    }

    /// The descriptor to hand to `signal.set_wakeup_fd`.
    pub fn signal_write_fd(&self) -> RawFd {
        self.signal_tx.as_raw_fd()
    }

    /// Watch `fd` for readability (level-triggered), replacing any watched descriptor.
    pub fn watch(&mut self, fd: RawFd) -> io::Result<()> {
        self.unwatch();
        self.watched = Some(sys::Listener::watch(self.paths, &self.poll, fd, WATCHED)?);
        Ok(())
    }

    /// Stop watching. The descriptor may already be closed, so failures are ignored: a closed
    /// descriptor has left the poll set by itself.
    pub fn unwatch(&mut self) {
        if let Some(watched) = self.watched.take() {
            watched.unwatch(&self.poll);
        }
    }

    /// Ask for the watched descriptor's readiness, or not (accepting paused). A no-op when
    /// nothing changes, so callers may say it before every wait.
    pub fn set_listening(&mut self, listening: bool) -> io::Result<()> {
        match &mut self.watched {
            Some(watched) => watched.set_listening(&self.poll, listening),
            None => Ok(()),
        }
    }

    /// Register one of the caller's own descriptors under `source` (any number).
    pub fn register(&self, fd: RawFd, source: usize, interest: Interest) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), Token(FIRST_SOURCE + source), interest)
    }

    /// Change the interest of a registered descriptor (this also re-arms it).
    pub fn reregister(&self, fd: RawFd, source: usize, interest: Interest) -> io::Result<()> {
        self.poll
            .registry()
            .reregister(&mut SourceFd(&fd), Token(FIRST_SOURCE + source), interest)
    }

    /// Stop watching one of the caller's own descriptors that stays open.
    pub fn deregister(&self, fd: RawFd) -> io::Result<()> {
        self.poll.registry().deregister(&mut SourceFd(&fd))
    }

    /// Readiness of the caller's own sources from the last `wait`.
    pub fn ready(&self) -> &[Ready] {
        &self.ready
    }

    /// Wait until something happens or `timeout` passes (`None`: no limit).
    pub fn wait(&mut self, timeout: Option<Duration>) -> io::Result<Wakeup> {
        let mut listening = false;
        if let Some(watched) = &mut self.watched {
            listening = watched.is_listening();
            // A failure means the listener was closed under us (a handler called
            // server_close()); the caller goes on waiting for shutdown, as with the stdlib.
            let _ = watched.before_wait(&self.poll);
        }
        let mut wakeup = Wakeup::default();
        self.ready.clear();
        // In a prefork child every loop reports in around its waits, and waits no longer
        // than the beat interval (see heartbeat.rs); elsewhere both are no-ops.
        heartbeat::beat();
        let polled = self.poll.poll(&mut self.events, heartbeat::cap(timeout));
        heartbeat::beat();
        match polled {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {
                wakeup.signalled = true;
                return Ok(wakeup);
            }
            Err(err) => return Err(err),
        }
        for event in &self.events {
            match event.token() {
                WATCHED => wakeup.readable |= listening,
                WAKER => wakeup.woken = true,
                SIGNALS => wakeup.signalled = true,
                Token(token) => self.ready.push(Ready {
                    source: token - FIRST_SOURCE,
                    readable: event.is_readable() || event.is_read_closed(),
                    writable: event.is_writable(),
                    closed: event.is_error() || event.is_read_closed(),
                }),
            }
        }
        if wakeup.signalled {
            self.drain_signal_pipe();
        }
        Ok(wakeup)
    }

    fn drain_signal_pipe(&mut self) {
        let mut sink = [0u8; 64];
        while matches!(self.signal_rx.read(&mut sink), Ok(n) if n > 0) {}
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // An inherited poller's epoll set is the parent's too: deregistering here would stop
        // the parent from seeing its listener. Closing our copies of the descriptors (where
        // the OS made copies, see `sys::ForkBound`) is enough.
        if self.is_owned_by_this_process() {
            self.unwatch();
        }
    }
}

/// The pollers of one server object: the idle one, kept between serving calls, and the
/// wakers of all it handed out.
///
/// A call takes a poller out for its duration, so no lock is held across a wait (and a fork
/// during a wait cannot leave one locked). Two calls at once (`handle_request()` on one
/// thread while `serve_forever()` runs on another) each get their own, and `wake()` reaches
/// both. A poller inherited through `fork()` shares its epoll set with the parent, so the
/// child builds a new one.
#[derive(Debug, Default)]
pub struct PollerSlot {
    idle: Mutex<Option<Poller>>,
    /// Wakers of the live pollers this slot made, with the pid each belongs to.
    wakers: Mutex<Vec<(u32, SharedWaker)>>,
}

impl PollerSlot {
    fn wakers(&self) -> std::sync::MutexGuard<'_, Vec<(u32, SharedWaker)>> {
        self.wakers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn take(&self) -> io::Result<Poller> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(poller) = idle.filter(Poller::is_owned_by_this_process) {
            return Ok(poller);
        }
        let poller = Poller::new()?;
        let pid = std::process::id();
        let mut wakers = self.wakers();
        wakers.retain(|(owner, _)| *owner == pid); // those of the parent are not ours
        wakers.push((pid, poller.waker()));
        Ok(poller)
    }

    /// Keep `poller` for the next call, or drop it if another is kept already.
    pub fn put_back(&self, poller: Poller) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.is_none() {
            *idle = Some(poller);
            return;
        }
        drop(idle);
        let waker = poller.waker();
        self.wakers().retain(|(_, w)| !Arc::ptr_eq(w, &waker));
    }

    /// Close the idle poller's descriptors now (the server is closed) rather than when the
    /// server object is garbage-collected. A later serving call builds a new one.
    pub fn release(&self) {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(poller) = idle {
            let waker = poller.waker();
            self.wakers().retain(|(_, w)| !Arc::ptr_eq(w, &waker));
        }
    }

    /// Wake every poller handed out in this process (waking an inherited one would wake the
    /// parent's loop instead).
    pub fn wake(&self) -> io::Result<()> {
        let pid = std::process::id();
        let wakers: Vec<SharedWaker> = self
            .wakers()
            .iter()
            .filter(|(owner, _)| *owner == pid)
            .map(|(_, waker)| Arc::clone(waker))
            .collect();
        wakers.iter().try_for_each(|waker| waker.wake())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;

    const SHORT: Option<Duration> = Some(Duration::from_millis(50));

    impl Wakeup {
        fn timed_out(self) -> bool {
            self == Wakeup::default()
        }
    }

    #[test]
    fn times_out_when_nothing_happens() {
        let mut poller = Poller::new().unwrap();
        let started = Instant::now();
        let wakeup = poller.wait(SHORT).unwrap();
        assert!(wakeup.timed_out());
        assert!(started.elapsed() >= Duration::from_millis(40));
    }

    #[test]
    fn waker_ends_an_unbounded_wait() {
        let mut poller = Poller::new().unwrap();
        let waker = poller.waker();
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            waker.wake().unwrap();
        });
        let wakeup = poller.wait(None).unwrap();
        assert!(wakeup.woken);
        thread.join().unwrap();
    }

    #[test]
    fn signal_pipe_bytes_report_a_signal_and_are_drained() {
        let mut poller = Poller::new().unwrap();
        let mut tx = poller.signal_tx.try_clone().unwrap();
        tx.write_all(&[2, 2, 2]).unwrap();
        assert!(poller.wait(SHORT).unwrap().signalled);
        // Drained: the next wait times out instead of reporting the same bytes again.
        assert!(poller.wait(SHORT).unwrap().timed_out());
    }

    #[test]
    fn queued_clients_are_reported_until_all_are_accepted() {
        for &paths in Paths::ALL {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let address = listener.local_addr().unwrap();
            let clients: Vec<_> = (0..3)
                .map(|_| TcpStream::connect(address).unwrap())
                .collect();
            let mut poller = Poller::with_paths(paths).unwrap();
            poller.watch(listener.as_raw_fd()).unwrap();
            for _ in 0..clients.len() {
                assert!(poller.wait(SHORT).unwrap().readable, "{paths:?}");
                // Level-triggered: the clients still queued are reported on the next wait.
                listener.accept().unwrap();
            }
            assert!(poller.wait(SHORT).unwrap().timed_out(), "{paths:?}");
        }
    }

    #[test]
    fn paused_listening_ignores_readiness() {
        for &paths in Paths::ALL {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let mut poller = Poller::with_paths(paths).unwrap();
            poller.watch(listener.as_raw_fd()).unwrap();
            poller.set_listening(false).unwrap();
            let paused = poller.wait(SHORT).unwrap();
            assert!(paused.timed_out(), "{paths:?}: paused, so no wakeup at all");
            poller.set_listening(true).unwrap();
            assert!(poller.wait(SHORT).unwrap().readable, "{paths:?}");
        }
    }

    #[test]
    fn a_wakeup_for_something_else_leaves_the_listener_armed() {
        for &paths in Paths::ALL {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let mut poller = Poller::with_paths(paths).unwrap();
            poller.watch(listener.as_raw_fd()).unwrap();
            poller.waker().wake().unwrap();
            let woken = poller.wait(SHORT).unwrap();
            assert!(woken.woken && !woken.readable, "{paths:?}");
            let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            assert!(poller.wait(SHORT).unwrap().readable, "{paths:?}");
            assert!(
                poller.wait(SHORT).unwrap().readable,
                "{paths:?}: not accepted yet"
            );
        }
    }

    #[test]
    fn own_sources_report_their_readiness() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let poller = Poller::new().unwrap();
        poller
            .register(a.as_raw_fd(), 7, Interest::READABLE)
            .unwrap();
        let mut poller = poller;
        b.write_all(b"x").unwrap();
        poller.wait(SHORT).unwrap();
        assert_eq!(poller.ready().len(), 1);
        assert_eq!(poller.ready()[0].source, 7);
        assert!(poller.ready()[0].readable);
        drop(b);
        poller
            .reregister(a.as_raw_fd(), 7, Interest::READABLE)
            .unwrap();
        poller.wait(SHORT).unwrap();
        assert!(poller.ready()[0].closed);
    }

    #[test]
    fn slot_reuses_its_poller_and_wakes_it() {
        let slot = PollerSlot::default();
        let mut poller = slot.take().unwrap();
        slot.wake().unwrap();
        assert!(poller.wait(SHORT).unwrap().woken);
        let fd = poller.signal_write_fd();
        slot.put_back(poller);
        assert_eq!(slot.take().unwrap().signal_write_fd(), fd);
    }

    #[test]
    fn slot_wakes_every_poller_it_handed_out() {
        let slot = PollerSlot::default();
        let mut first = slot.take().unwrap();
        let mut second = slot.take().unwrap();
        slot.wake().unwrap();
        assert!(first.wait(SHORT).unwrap().woken);
        assert!(second.wait(SHORT).unwrap().woken);
        slot.put_back(first);
        slot.put_back(second); // one is kept, the other dropped with its waker
        assert_eq!(slot.wakers().len(), 1);
        slot.release();
        assert_eq!(slot.wakers().len(), 0);
        assert!(slot.idle.lock().unwrap().is_none());
    }

    #[test]
    fn unwatching_a_closed_descriptor_is_harmless() {
        for &paths in Paths::ALL {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let mut poller = Poller::with_paths(paths).unwrap();
            poller.watch(listener.as_raw_fd()).unwrap();
            drop(listener);
            // Closed under the loop: the wait still works (and just times out).
            assert!(poller.wait(SHORT).unwrap().timed_out(), "{paths:?}");
            poller.unwatch();
            assert!(poller.wait(SHORT).unwrap().timed_out(), "{paths:?}");
        }
    }
}
