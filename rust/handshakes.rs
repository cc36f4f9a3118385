//! Connections of a TLS server whose handshake has not finished: each one's socket, peer
//! address and TLS state, in a slab of their own (no handler exists yet, so they cost no
//! Python), with their deadlines in accept order so the oldest is found first; and driving
//! them (the stream loop calls this in its GIL-free half): a finished handshake is handed
//! back for a handler, a failed or late one is counted by class and closed.
//!
//! Needs no Python; tested with `cargo test`.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use mio::Interest;

use crate::connections::Slab;
use crate::net::PeerAddress;
use crate::poller::Poller;
use crate::stats::Counters;
use crate::tls::{Failure, TlsServer};
use crate::tls_stream::{Progress, TlsStream};

/// A connection whose handshake finished, ready for a handler.
pub type Finished = (OwnedFd, PeerAddress, Option<Box<TlsStream>>);

/// Poller sources at and above this one are handshakes (`source - HANDSHAKE_SOURCE` is the
/// slot); those below are established connections.
pub const HANDSHAKE_SOURCE: usize = 1 << (usize::BITS - 2);

#[derive(Debug)]
pub struct Pending {
    pub fd: OwnedFd,
    pub peer: PeerAddress,
    pub stream: Box<TlsStream>,
    /// Registered with the poller for writability too.
    pub wants_writable: bool,
    /// Tells this handshake from earlier ones in the same slot (for the deadline queue).
    serial: u64,
}

impl Pending {
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[derive(Debug, Default)]
pub struct Handshakes {
    slab: Slab<Pending>,
    /// `(slot, serial, deadline)` in accept order, so in deadline order (one timeout for
    /// all); entries of handshakes that ended are skipped when they come up.
    deadlines: VecDeque<(usize, u64, Instant)>,
    serial: u64,
}

impl Handshakes {
    /// Track a new handshake, to be given up at `deadline` (None: never); returns its slot.
    pub fn insert(
        &mut self,
        fd: OwnedFd,
        peer: PeerAddress,
        stream: Box<TlsStream>,
        deadline: Option<Instant>,
    ) -> usize {
        self.serial += 1;
        let serial = self.serial;
        let slot = self.slab.insert(Pending {
            fd,
            peer,
            stream,
            wants_writable: false,
            serial,
        });
        if let Some(deadline) = deadline {
            self.deadlines.push_back((slot, serial, deadline));
        }
        slot
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.len() == 0
    }

    pub fn get_mut(&mut self, slot: usize) -> Option<&mut Pending> {
        self.slab.get_mut(slot)
    }

    pub fn remove(&mut self, slot: usize) -> Option<Pending> {
        self.slab.remove(slot)
    }

    pub fn slots(&self) -> Vec<usize> {
        self.slab.indices().collect()
    }

    fn is_current(&self, slot: usize, serial: u64) -> bool {
        self.slab.get(slot).is_some_and(|p| p.serial == serial)
    }

    /// Start the handshake of a connection just accepted, and take it as far as it goes
    /// now (the ClientHello is often there already).
    pub fn start(
        &mut self,
        fd: OwnedFd,
        peer: PeerAddress,
        tls: &TlsServer,
        poller: &Poller,
        stats: &Counters,
    ) -> Option<Finished> {
        let Ok(stream) = TlsStream::new(Arc::clone(&tls.config)) else {
            stats.tls_failure(Failure::Protocol);
            Counters::bump(&stats.closed);
            return None; // `fd` closes here
        };
        let deadline = tls.handshake_timeout.map(|t| Instant::now() + t);
        let raw_fd = fd.as_raw_fd();
        let slot = self.insert(fd, peer, Box::new(stream), deadline);
        if poller
            .register(raw_fd, HANDSHAKE_SOURCE + slot, Interest::READABLE)
            .is_err()
        {
            stats.tls_failure(Failure::Closed);
            Counters::bump(&stats.closed);
            drop(self.remove(slot));
            return None;
        }
        self.advance(slot, poller, stats)
    }

    /// Take the handshake in `slot` as far as the socket allows: a finished one is returned
    /// (still registered with `poller` under its handshake source), a failed one is counted
    /// and closed.
    pub fn advance(&mut self, slot: usize, poller: &Poller, stats: &Counters) -> Option<Finished> {
        let pending = self.slab.get_mut(slot)?;
        let fd = pending.fd();
        match pending.stream.handshake(fd, stats) {
            Progress::Pending => {
                // Our side of the handshake did not fit the socket: write the rest when it can.
                let wants = pending.stream.pending_wire() > 0;
                if wants != pending.wants_writable {
                    pending.wants_writable = wants;
                    let interest = if wants {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    let _ = poller.reregister(fd, HANDSHAKE_SOURCE + slot, interest);
                }
                None
            }
            Progress::Done => {
                let pending = self.slab.remove(slot)?;
                Counters::bump(&stats.tls_handshakes);
                Some((pending.fd, pending.peer, Some(pending.stream)))
            }
            Progress::Failed(class) => {
                // Counted before the close, so a peer that sees the close sees the count.
                stats.tls_failure(class);
                Counters::bump(&stats.closed);
                drop(self.slab.remove(slot)); // closes the socket
                None
            }
        }
    }

    /// Close the handshakes whose deadline has passed by `now`.
    pub fn expire(&mut self, now: Instant, stats: &Counters) {
        while let Some(pending) = self.pop_expired(now) {
            stats.tls_failure(Failure::Timeout);
            Counters::bump(&stats.closed);
            drop(pending); // closes the socket
        }
    }

    /// The earliest deadline of a handshake still going.
    pub fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&(slot, serial, deadline)) = self.deadlines.front() {
            if self.is_current(slot, serial) {
                return Some(deadline);
            }
            self.deadlines.pop_front();
        }
        None
    }

    /// Take out the next handshake whose deadline has passed by `now`, if any.
    pub fn pop_expired(&mut self, now: Instant) -> Option<Pending> {
        while let Some(&(slot, serial, deadline)) = self.deadlines.front() {
            if !self.is_current(slot, serial) {
                self.deadlines.pop_front();
                continue;
            }
            if deadline > now {
                return None;
            }
            self.deadlines.pop_front();
            return self.slab.remove(slot);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::load;
    use crate::tls_stream::tests::server_options;
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    fn pending(handshakes: &mut Handshakes, deadline: Option<Instant>) -> (usize, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let stream = Box::new(TlsStream::new(load(&server_options()).unwrap()).unwrap());
        let peer = PeerAddress::Absent;
        (
            handshakes.insert(ours.into(), peer, stream, deadline),
            theirs,
        )
    }

    fn server() -> TlsServer {
        TlsServer {
            config: load(&server_options()).unwrap(),
            handshake_timeout: Some(Duration::from_secs(60)),
        }
    }

    #[test]
    fn garbage_is_counted_and_closed_and_a_real_client_is_handed_back() {
        use crate::tls_stream::tests::{client, pump};
        use std::io::{Read, Write};
        let poller = Poller::new().unwrap();
        let stats = Counters::default();
        let mut handshakes = Handshakes::default();

        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        theirs.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        let peer = PeerAddress::Absent;
        assert!(
            handshakes
                .start(ours.into(), peer, &server(), &poller, &stats)
                .is_none()
        );
        assert!(handshakes.is_empty());
        assert_eq!(stats.tls_failures()[2], ("protocol", 1));
        assert_eq!(Counters::get(&stats.closed), 1);
        let mut rest = Vec::new();
        theirs.read_to_end(&mut rest).unwrap(); // an alert, then the end: closed

        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut tls_client = client(&[], false);
        pump(&mut tls_client, &mut theirs, &mut Vec::new()); // the ClientHello
        let started =
            handshakes.start(ours.into(), PeerAddress::Absent, &server(), &poller, &stats);
        assert!(
            started.is_none(),
            "the server waits for the client's Finished"
        );
        assert_eq!(handshakes.len(), 1);
        let slot = handshakes.slots()[0];
        let mut finished = None;
        for _ in 0..10 {
            pump(&mut tls_client, &mut theirs, &mut Vec::new());
            finished = handshakes.advance(slot, &poller, &stats);
            if finished.is_some() {
                break;
            }
        }
        let (_, _, stream) = finished.expect("the handshake finished");
        assert_eq!(stream.unwrap().info().version, Some("TLSv1.3"));
        assert!(handshakes.is_empty());
        assert_eq!(Counters::get(&stats.tls_handshakes), 1);
        assert_eq!(Counters::get(&stats.closed), 1);
    }

    #[test]
    fn expired_handshakes_are_counted_as_timeouts() {
        let stats = Counters::default();
        let mut handshakes = Handshakes::default();
        let now = Instant::now();
        let (_slot, _peer) = pending(&mut handshakes, Some(now));
        handshakes.expire(now + Duration::from_millis(1), &stats);
        assert!(handshakes.is_empty());
        assert_eq!(stats.tls_failures()[0], ("timeout", 1));
        assert_eq!(Counters::get(&stats.closed), 1);
    }

    #[test]
    fn deadlines_expire_oldest_first_and_ended_handshakes_are_skipped() {
        let mut handshakes = Handshakes::default();
        let now = Instant::now();
        let (a, _pa) = pending(&mut handshakes, Some(now));
        let (b, _pb) = pending(&mut handshakes, Some(now + Duration::from_millis(5)));
        let (c, _pc) = pending(&mut handshakes, Some(now + Duration::from_secs(60)));
        let (_d, _pd) = pending(&mut handshakes, None);
        assert_eq!(handshakes.len(), 4);
        assert!(handshakes.remove(a).is_some()); // finished in time
        assert_eq!(
            handshakes.next_deadline(),
            Some(now + Duration::from_millis(5))
        );
        let later = now + Duration::from_secs(1);
        let expired = handshakes.pop_expired(later).expect("b has expired");
        assert_eq!(expired.serial, 2);
        assert!(handshakes.pop_expired(later).is_none());
        assert_eq!(
            handshakes.next_deadline(),
            Some(now + Duration::from_secs(60))
        );
        // A new handshake in b's old slot is not mistaken for b.
        let (b2, _pb2) = pending(&mut handshakes, Some(now + Duration::from_secs(120)));
        assert_eq!(b2, b);
        assert!(handshakes.remove(c).is_some());
        assert_eq!(
            handshakes.next_deadline(),
            Some(now + Duration::from_secs(120))
        );
        assert_eq!(handshakes.len(), 2);
    }
}
