//! Connections of a TLS server whose handshake has not finished: each one's socket, peer
//! address and TLS state, in a slab of their own (no handler exists yet, so they cost no
//! Python), with their deadlines in accept order so the oldest is found first.
//!
//! Needs no Python; tested with `cargo test`.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Instant;

use crate::connections::Slab;
use crate::net::PeerAddress;
use crate::tls_stream::TlsStream;

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
