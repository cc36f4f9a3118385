//! The connections a reactor server owns: each one's socket, input decoder, output buffer
//! and flow-control state, kept in a slab indexed by the poller's source number.
//!
//! A connection of a TLS server carries its `TlsStream` (one branch per read or flush call
//! picks the path, none per byte); its output buffer then holds plaintext not yet sealed.
//!
//! Generic over the handler payload so that it needs no Python: tested with `cargo test`.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use crate::framing::{Decoder, FrameError};
use crate::net;
use crate::stats::Counters;
use crate::tls_stream::{ReadEnd, TlsStream};

/// Why reading from a connection stopped.
#[derive(Debug)]
pub enum ReadStop {
    /// Nothing more to read for now.
    Drained,
    /// The read budget ran out with data possibly left: read again soon.
    Budget,
    /// The peer closed its side (the decoder has been finished).
    Eof,
    /// Reading failed (a reset, say): the connection is unusable.
    Failed,
    Framing(FrameError),
}

#[derive(Debug)]
pub struct Conn<H> {
    fd: OwnedFd,
    /// Distinguishes this connection from earlier ones that used the same slot.
    pub generation: u64,
    pub decoder: Decoder,
    out: Vec<u8>,
    out_start: usize,
    pub handler: H,
    pub last_active: Instant,
    /// Readiness was reported and not yet read down to `WouldBlock` (or a short read).
    pub readable: bool,
    /// The poller reported the peer's end of stream or an error: read on until the read
    /// says which, since no later readiness event would come for it.
    pub hung_up: bool,
    /// Reading is paused because too much output is waiting (backpressure).
    pub paused: bool,
    /// No more input will come (end of stream, or the handler asked to close).
    pub read_closed: bool,
    /// Close as soon as the output is flushed.
    pub closing: bool,
    /// Registered with the poller for writability too.
    pub wants_writable: bool,
    /// Some input has arrived since the connection was accepted.
    pub received: bool,
    /// The server's counters (bytes in and out; the close when dropped), once it has any.
    pub stats: Option<Arc<Counters>>,
    /// TLS state, on a TLS server (its handshake is done).
    pub tls: Option<Box<TlsStream>>,
}

impl<H> Drop for Conn<H> {
    fn drop(&mut self) {
        if let Some(stats) = &self.stats {
            Counters::bump(&stats.closed);
        }
    }
}

impl<H> Conn<H> {
    pub fn new(fd: OwnedFd, generation: u64, decoder: Decoder, handler: H) -> Conn<H> {
        Conn {
            fd,
            generation,
            decoder,
            out: Vec::new(),
            out_start: 0,
            handler,
            last_active: Instant::now(),
            readable: false,
            hung_up: false,
            paused: false,
            read_closed: false,
            closing: false,
            wants_writable: false,
            received: false,
            stats: None,
            tls: None,
        }
    }

    /// Whether a request may be on its way: input is still open and either nothing has
    /// arrived yet (a client that has just connected) or part of a message has. A graceful
    /// stop waits for these; an idle connection between requests it may close.
    pub fn awaits_request(&self) -> bool {
        !self.read_closed && !self.closing && (!self.received || self.decoder.buffered() > 0)
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Bytes queued and not yet written (with TLS: plaintext not yet sealed, plus
    /// ciphertext not yet written).
    pub fn pending_output(&self) -> usize {
        let plain = self.out.len() - self.out_start;
        match &self.tls {
            None => plain,
            // A closing connection's close_notify counts until it is queued.
            Some(tls) => {
                plain + tls.pending_wire() + usize::from(self.closing && !tls.said_goodbye())
            }
        }
    }

    /// Drop all queued output: the peer is gone.
    pub fn discard_output(&mut self) {
        self.out.clear();
        self.out_start = 0;
        if let Some(tls) = &mut self.tls {
            tls.discard_output();
        }
    }

    /// Whether reading left records to send (a TLS key update or alert) that no reply
    /// will carry.
    pub fn has_records_to_send(&mut self) -> bool {
        self.tls
            .as_mut()
            .is_some_and(|tls| tls.has_records_to_send())
    }

    /// The buffer replies are appended to.
    pub fn output(&mut self) -> &mut Vec<u8> {
        &mut self.out
    }

    /// Write as much queued output as the socket takes now. `Ok(true)` once all is written
    /// (with TLS, once closing, the close_notify included).
    pub fn flush(&mut self) -> io::Result<bool> {
        if let Some(tls) = &mut self.tls {
            let fd = self.fd.as_raw_fd();
            let stats = self.stats.as_deref();
            let done = tls.flush(fd, &self.out, &mut self.out_start, self.closing, stats)?;
            if self.out_start == self.out.len() {
                self.out.clear();
                self.out_start = 0;
            }
            return Ok(done);
        }
        while self.out_start < self.out.len() {
            match net::send_quietly(self.fd(), &self.out[self.out_start..]) {
                Ok(n) => {
                    self.out_start += n;
                    if let Some(stats) = &self.stats {
                        Counters::add(&stats.bytes_out, n as u64);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        self.out.clear();
        self.out_start = 0;
        Ok(true)
    }

    /// Read until the socket has nothing more or `budget` bytes were read, feeding the
    /// decoder; each complete message goes to `emit`.
    ///
    /// A read that returns less than was asked for has emptied the socket's receive queue
    /// (a stream socket's read takes all that is queued, up to the buffer), so reading stops
    /// there instead of asking again only to get `WouldBlock`: that saves one syscall per
    /// request in a request-reply exchange. Readiness is edge-triggered and every arrival
    /// raises a new edge, so bytes that come later are reported. The exception is a peer
    /// that hung up (`hung_up`): its end of stream raises no edge of its own once reported,
    /// so such a connection is read down to the end.
    pub fn read_messages(
        &mut self,
        scratch: &mut [u8],
        budget: usize,
        emit: &mut impl FnMut(&[u8]),
    ) -> ReadStop {
        if self.tls.is_some() {
            return self.read_tls_messages(scratch.len(), budget, emit);
        }
        let mut taken = 0;
        let limit = self.decoder.read_limit(scratch.len());
        loop {
            if taken >= budget {
                return ReadStop::Budget;
            }
            match net::read(self.fd(), &mut scratch[..limit]) {
                Ok(0) => {
                    self.readable = false;
                    self.read_closed = true;
                    return match self.decoder.finish(emit) {
                        Ok(()) => ReadStop::Eof,
                        Err(err) => ReadStop::Framing(err),
                    };
                }
                Ok(n) => {
                    taken += n;
                    self.received = true;
                    if let Some(stats) = &self.stats {
                        Counters::add(&stats.bytes_in, n as u64);
                    }
                    self.last_active = Instant::now();
                    if let Err(err) = self.decoder.feed(&scratch[..n], emit) {
                        return ReadStop::Framing(err);
                    }
                    if n < limit && !self.hung_up {
                        self.readable = false;
                        return ReadStop::Drained;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return ReadStop::Drained;
                }
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadStop::Failed,
            }
        }
    }
}

impl<H> Conn<H> {
    /// `read_messages` for a TLS connection: ciphertext goes through rustls, and the
    /// plaintext into the decoder, in pieces no larger than a plain read would be.
    fn read_tls_messages(
        &mut self,
        scratch: usize,
        budget: usize,
        emit: &mut impl FnMut(&[u8]),
    ) -> ReadStop {
        let fd = self.fd.as_raw_fd();
        let Conn {
            tls,
            decoder,
            stats,
            last_active,
            received,
            ..
        } = self;
        let tls = tls.as_mut().expect("a TLS connection");
        let piece = decoder.read_limit(scratch);
        let mut framing = None;
        let end = tls.read(
            fd,
            budget,
            piece,
            &mut |n| {
                if let Some(stats) = stats {
                    Counters::add(&stats.bytes_in, n as u64);
                }
                *last_active = Instant::now();
            },
            &mut |plaintext| {
                *received = true;
                match decoder.feed(plaintext, emit) {
                    Ok(()) => true,
                    Err(err) => {
                        framing = Some(err);
                        false
                    }
                }
            },
        );
        if let Some(err) = framing {
            return ReadStop::Framing(err);
        }
        match end {
            ReadEnd::Drained => {
                self.readable = false;
                ReadStop::Drained
            }
            ReadEnd::Budget => ReadStop::Budget,
            ReadEnd::Failed => ReadStop::Failed,
            ReadEnd::Eof => {
                self.readable = false;
                self.read_closed = true;
                match self.decoder.finish(emit) {
                    Ok(()) => ReadStop::Eof,
                    Err(err) => ReadStop::Framing(err),
                }
            }
        }
    }
}

/// A slab: stable indices, reused after removal.
#[derive(Debug)]
pub struct Slab<T> {
    entries: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            entries: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    pub fn insert(&mut self, value: T) -> usize {
        self.len += 1;
        match self.free.pop() {
            Some(index) => {
                self.entries[index] = Some(value);
                index
            }
            None => {
                self.entries.push(Some(value));
                self.entries.len() - 1
            }
        }
    }

    /// The index the next `insert` will use.
    pub fn next_index(&self) -> usize {
        self.free.last().copied().unwrap_or(self.entries.len())
    }

    pub fn remove(&mut self, index: usize) -> Option<T> {
        let value = self.entries.get_mut(index)?.take()?;
        self.free.push(index);
        self.len -= 1;
        Some(value)
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        self.entries.get(index)?.as_ref()
    }

    pub fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.entries.get_mut(index)?.as_mut()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(index, entry)| entry.as_ref().map(|_| index))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::Framing;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    fn pair(framing: Framing, limit: usize) -> (Conn<()>, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        (
            Conn::new(ours.into(), 1, Decoder::new(framing, limit), ()),
            theirs,
        )
    }

    #[test]
    fn reads_whole_messages_then_drains() {
        let (mut conn, mut peer) = pair(Framing::Line, 64);
        peer.write_all(b"one\ntwo\nthr").unwrap();
        let mut got = Vec::new();
        let mut scratch = [0u8; 4];
        let stop = conn.read_messages(&mut scratch, 1 << 20, &mut |m| got.push(m.to_vec()));
        assert!(matches!(stop, ReadStop::Drained));
        assert_eq!(got, vec![b"one\n".to_vec(), b"two\n".to_vec()]);
        assert_eq!(conn.decoder.buffered(), 3);
    }

    #[test]
    fn a_short_read_ends_the_read_unless_the_peer_hung_up() {
        let (mut conn, mut peer) = pair(Framing::Line, 64);
        peer.write_all(b"one\n").unwrap();
        drop(peer); // the end of stream is queued behind the line
        let mut got = Vec::new();
        let mut scratch = [0u8; 64];
        // The line came in a short read: no second read, so the end is not seen yet (the
        // poller would report the hang-up and set `hung_up`)...
        let stop = conn.read_messages(&mut scratch, 1 << 20, &mut |m| got.push(m.to_vec()));
        assert!(matches!(stop, ReadStop::Drained));
        assert!(!conn.readable && !conn.read_closed);
        assert_eq!(got, vec![b"one\n".to_vec()]);
        // ...and once it has, reading goes on to the end.
        conn.hung_up = true;
        let stop = conn.read_messages(&mut scratch, 1 << 20, &mut |m| got.push(m.to_vec()));
        assert!(matches!(stop, ReadStop::Eof));
        assert!(conn.read_closed);
    }

    #[test]
    fn a_peer_that_hung_up_is_read_to_the_end_in_one_go() {
        let (mut conn, mut peer) = pair(Framing::Line, 64);
        peer.write_all(b"one\ntwo").unwrap();
        drop(peer);
        conn.hung_up = true;
        let mut got = Vec::new();
        let mut scratch = [0u8; 64];
        let stop = conn.read_messages(&mut scratch, 1 << 20, &mut |m| got.push(m.to_vec()));
        assert!(matches!(stop, ReadStop::Eof));
        assert_eq!(got, vec![b"one\n".to_vec(), b"two".to_vec()]);
    }

    #[test]
    fn budget_stops_a_firehose_and_eof_is_seen() {
        let (mut conn, mut peer) = pair(Framing::Raw, 1 << 16);
        peer.write_all(&[7u8; 1000]).unwrap();
        let mut scratch = [0u8; 100];
        let mut count = 0;
        let stop = conn.read_messages(&mut scratch, 300, &mut |_| count += 1);
        assert!(matches!(stop, ReadStop::Budget));
        assert_eq!(count, 3);
        drop(peer);
        let stop = conn.read_messages(&mut scratch, 1 << 20, &mut |_| count += 1);
        assert!(matches!(stop, ReadStop::Eof));
        assert_eq!(count, 10);
        assert!(conn.read_closed);
    }

    #[test]
    fn output_is_flushed_in_pieces_when_the_peer_is_slow() {
        let (mut conn, mut peer) = pair(Framing::Raw, 64);
        conn.output().extend(std::iter::repeat_n(1u8, 4 << 20));
        assert!(!conn.flush().unwrap(), "4 MiB cannot fit a socket buffer");
        let pending = conn.pending_output();
        assert!(pending > 0);
        let mut sink = vec![0u8; 1 << 20];
        let mut received = 0;
        while conn.pending_output() > 0 {
            received += peer.read(&mut sink).unwrap();
            conn.flush().unwrap();
        }
        peer.set_nonblocking(true).unwrap();
        while let Ok(n) = peer.read(&mut sink) {
            if n == 0 {
                break;
            }
            received += n;
        }
        assert_eq!(received, 4 << 20);
    }

    #[test]
    fn writing_to_a_vanished_peer_is_an_error_not_a_signal() {
        let (mut conn, peer) = pair(Framing::Raw, 64);
        drop(peer);
        conn.output().extend_from_slice(b"hello");
        assert_eq!(conn.flush().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }

    #[test]
    fn slab_reuses_indices() {
        let mut slab = Slab::default();
        let a = slab.insert("a");
        let b = slab.insert("b");
        assert_eq!(slab.remove(a), Some("a"));
        assert_eq!(slab.next_index(), a);
        assert_eq!(slab.insert("c"), a);
        assert_eq!(slab.get(b), Some(&"b"));
        assert_eq!(slab.len(), 2);
        assert_eq!(slab.indices().collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(slab.remove(7), None);
    }
}
