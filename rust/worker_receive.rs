//! `ReceiveSlot`: pool workers receiving datagrams themselves.
//!
//! A pooled datagram server's serving loop receives each datagram and hands it to a worker:
//! a wake-up of the loop (its `epoll_wait`) and one of the worker (a condition variable) per
//! datagram. Under load the next datagram is nearly always queued on the socket by the time a
//! worker finishes one, so the worker that just finished takes it itself, without waiting
//! (`MSG_DONTWAIT`), and serves it. Only while the engine serves the socket without Python
//! (the slot is filled then, and emptied before the loop is seen to stop), and one worker at a
//! time: every worker that was handed a datagram would otherwise join in, and they would pass
//! the GIL to each other at every system call of their handlers, where one waiting on the
//! queue costs nothing. The serving loop keeps receiving too, and hands what it gets to the
//! other workers as before, so a slow handler never holds up the rest.
//! This file needs no Python and is tested with `cargo test`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::acquire::{Raw, RawAcquirer};

#[derive(Debug, Default)]
pub struct ReceiveSlot {
    /// The receiver workers use; `None` while they may not receive.
    receiver: Mutex<Option<RawAcquirer>>,
    /// Set for good once the socket is about to close: `fill` does nothing after that.
    stopped: AtomicBool,
    /// A worker holds the `Claim`.
    claimed: AtomicBool,
}

/// The right to receive, held by one worker between the datagrams it serves in a row.
#[derive(Debug)]
pub struct Claim<'a> {
    slot: &'a ReceiveSlot,
}

impl ReceiveSlot {
    /// Let workers receive with `receiver` (`None`: stop them; once this returns, no worker
    /// is receiving or will receive until the next `fill`).
    pub fn fill(&self, receiver: Option<RawAcquirer>) {
        let mut slot = self.receiver.lock().unwrap_or_else(PoisonError::into_inner);
        *slot = receiver.filter(|_| !self.stopped.load(Ordering::Acquire));
    }

    /// Empty the slot for good (the socket is about to be closed: its descriptor number may
    /// be reused for another file).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.fill(None);
    }

    /// The claim to receive, unless another worker holds it.
    pub fn claim(&self) -> Option<Claim<'_>> {
        if self.claimed.swap(true, Ordering::AcqRel) {
            return None;
        }
        Some(Claim { slot: self })
    }
}

impl Claim<'_> {
    /// The next datagram, truncated to `buffer_len` bytes as `recvfrom(buffer_len)` would,
    /// if one is queued and workers may receive now. A failure (nothing queued, or an error
    /// the serving loop's own receive meets too) is `None`.
    pub fn receive(&self, buffer_len: usize) -> Option<Raw> {
        let mut slot = self
            .slot
            .receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let receiver = slot.as_mut()?;
        receiver.set_packet_size(buffer_len);
        receiver.acquire().ok()
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.slot.claimed.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    fn receiver_for(socket: &UdpSocket) -> RawAcquirer {
        RawAcquirer::datagram(socket.as_raw_fd(), 64)
    }

    #[test]
    fn one_claim_at_a_time() {
        let slot = ReceiveSlot::default();
        let first = slot.claim().expect("free");
        assert!(slot.claim().is_none(), "held by the first");
        drop(first);
        assert!(slot.claim().is_some(), "released on drop");
    }

    #[test]
    fn receives_only_while_filled_and_never_after_stop() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        let slot = ReceiveSlot::default();
        let claim = slot.claim().unwrap();
        client
            .send_to(b"one", server.local_addr().unwrap())
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(claim.receive(64).is_none(), "empty slot");
        slot.fill(Some(receiver_for(&server)));
        match claim.receive(2) {
            Some(Raw::Datagram(data, _)) => assert_eq!(data, b"on", "truncated to 2"),
            other => panic!("expected a datagram, got {other:?}"),
        }
        assert!(claim.receive(64).is_none(), "nothing queued: no wait");
        slot.stop();
        client
            .send_to(b"two", server.local_addr().unwrap())
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(claim.receive(64).is_none(), "stopped");
        slot.fill(Some(receiver_for(&server)));
        assert!(claim.receive(64).is_none(), "stopped for good");
    }
}
