//! Parking: accepted connections that wait in the engine, costing a descriptor and a poller
//! registration but no worker, until their first bytes arrive (`dispatch_when_readable`).
//!
//! Modelled on the reactor's idle timeout: each parked connection has a deadline; the serving
//! loop caps its wait at the earliest one and, when it passes, takes the expired connections
//! out to be closed without a handler. A connection that becomes readable (bytes, or the
//! peer's end of stream) is taken out to be dispatched. Generic over the item that travels
//! with the descriptor, so that it needs no Python: tested with `cargo test`.

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use mio::Interest;

use crate::poller::Poller;

#[derive(Debug)]
struct Parked<T> {
    fd: RawFd,
    item: T,
    /// `None`: no first-byte timeout.
    deadline: Option<Instant>,
}

/// The parked connections of one serving loop, in a slab indexed by poller source number.
#[derive(Debug)]
pub struct Parking<T> {
    slots: Vec<Option<Parked<T>>>,
    free: Vec<usize>,
    len: usize,
    timeout: Option<Duration>,
}

impl<T> Parking<T> {
    /// `timeout`: how long a connection may stay silent (`None`: for ever).
    pub fn new(timeout: Option<Duration>) -> Parking<T> {
        Parking {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
            timeout,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Park `item`, whose connection is `fd`, until `fd` is readable. On failure to register
    /// the item comes back with the error (the caller dispatches it at once instead).
    pub fn park(&mut self, poller: &Poller, fd: RawFd, item: T) -> Result<(), (io::Error, T)> {
        let slot = self.free.pop().unwrap_or(self.slots.len());
        if let Err(err) = poller.register(fd, slot, Interest::READABLE) {
            if slot < self.slots.len() {
                self.free.push(slot);
            }
            return Err((err, item));
        }
        let deadline = self.timeout.and_then(|t| Instant::now().checked_add(t));
        let parked = Some(Parked { fd, item, deadline });
        if slot == self.slots.len() {
            self.slots.push(parked);
        } else {
            self.slots[slot] = parked;
        }
        self.len += 1;
        Ok(())
    }

    fn remove(&mut self, poller: &Poller, slot: usize) -> Option<T> {
        let parked = self.slots.get_mut(slot)?.take()?;
        // The descriptor stays open (it travels with the item): leave the epoll set by hand.
        let _ = poller.deregister(parked.fd);
        self.free.push(slot);
        self.len -= 1;
        Some(parked.item)
    }

    /// The items whose connections the last `poller.wait` reported readable.
    pub fn take_readable(&mut self, poller: &Poller) -> Vec<T> {
        let sources: Vec<usize> = poller
            .ready()
            .iter()
            .filter(|ready| ready.readable || ready.closed)
            .map(|ready| ready.source)
            .collect();
        sources
            .into_iter()
            .filter_map(|slot| self.remove(poller, slot))
            .collect()
    }

    /// The items that stayed silent past their deadline.
    pub fn take_expired(&mut self, poller: &Poller, now: Instant) -> Vec<T> {
        let expired: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(slot, parked)| {
                let deadline = parked.as_ref()?.deadline?;
                (now >= deadline).then_some(slot)
            })
            .collect();
        expired
            .into_iter()
            .filter_map(|slot| self.remove(poller, slot))
            .collect()
    }

    /// Every parked item (the serving loop is ending).
    pub fn take_all(&mut self, poller: &Poller) -> Vec<T> {
        (0..self.slots.len())
            .filter_map(|slot| self.remove(poller, slot))
            .collect()
    }

    /// How long the loop may wait before the earliest deadline (`None`: no deadline).
    pub fn until_next_deadline(&self) -> Option<Duration> {
        let earliest = self
            .slots
            .iter()
            .filter_map(|parked| parked.as_ref()?.deadline)
            .min()?;
        Some(earliest.saturating_duration_since(Instant::now()))
    }
}

/// The shorter of two optional wait limits (`None`: no limit).
pub fn shorter(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn a_connection_that_speaks_is_taken_out_readable() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut poller = Poller::new().unwrap();
        let mut parking = Parking::new(Some(Duration::from_secs(5)));
        let (mut silent_client, silent) = pair(&listener);
        let (mut speaking_client, speaking) = pair(&listener);
        parking.park(&poller, silent.as_raw_fd(), "silent").unwrap();
        parking
            .park(&poller, speaking.as_raw_fd(), "speaking")
            .unwrap();
        speaking_client.write_all(b"x").unwrap();
        poller.wait(Some(Duration::from_secs(2))).unwrap();
        assert_eq!(parking.take_readable(&poller), vec!["speaking"]);
        assert_eq!(parking.len(), 1);
        silent_client.write_all(b"y").unwrap();
        poller.wait(Some(Duration::from_secs(2))).unwrap();
        assert_eq!(parking.take_readable(&poller), vec!["silent"]);
        assert_eq!(parking.len(), 0);
    }

    #[test]
    fn a_silent_connection_expires_at_its_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let poller = Poller::new().unwrap();
        let mut parking = Parking::new(Some(Duration::from_millis(50)));
        let (_client, server) = pair(&listener);
        parking.park(&poller, server.as_raw_fd(), 1).unwrap();
        let wait = parking.until_next_deadline().unwrap();
        assert!(wait <= Duration::from_millis(50));
        assert!(parking.take_expired(&poller, Instant::now()).is_empty());
        let later = Instant::now() + Duration::from_millis(60);
        assert_eq!(parking.take_expired(&poller, later), vec![1]);
        assert_eq!(parking.until_next_deadline(), None);
    }

    #[test]
    fn without_a_timeout_nothing_expires_and_slots_are_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let poller = Poller::new().unwrap();
        let mut parking = Parking::new(None);
        let (_a, a) = pair(&listener);
        let (_b, b) = pair(&listener);
        parking.park(&poller, a.as_raw_fd(), 'a').unwrap();
        let far = Instant::now() + Duration::from_secs(3600);
        assert!(parking.take_expired(&poller, far).is_empty());
        assert_eq!(parking.take_all(&poller), vec!['a']);
        parking.park(&poller, b.as_raw_fd(), 'b').unwrap();
        assert_eq!(parking.slots.len(), 1);
        assert_eq!(parking.until_next_deadline(), None);
    }

    #[test]
    fn a_descriptor_that_cannot_be_registered_comes_back() {
        let poller = Poller::new().unwrap();
        let mut parking = Parking::new(None);
        let (err, item) = parking.park(&poller, -1, "bad").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBADF));
        assert_eq!(item, "bad");
        assert_eq!(parking.len(), 0);
    }
}
