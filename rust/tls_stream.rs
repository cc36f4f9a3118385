//! The TLS transport of one reactor connection: ciphertext read from the socket goes through
//! rustls, and the plaintext comes out into the connection's decoder; plaintext output is
//! sealed into records queued in a ciphertext buffer of our own (so the unsent output is
//! known to the byte, for backpressure) and written to the socket from there.
//!
//! Both the handshake and the data path run in the loop's GIL-free half. Needs no Python;
//! tested with `cargo test` against a rustls client over a socket pair.

use std::io::{self, BufRead, Read, Write};
use std::os::fd::RawFd;
use std::sync::Arc;

use rustls::{ServerConfig, ServerConnection};

use crate::net;
use crate::stats::Counters;
use crate::tls::Failure;

/// Plaintext sealed ahead of the socket at most: more waits, unencrypted, in the
/// connection's output buffer (so a big reply is not held twice).
const SEAL_AHEAD: usize = 64 * 1024;

/// `read(2)` on a borrowed descriptor, as rustls's `read_tls` wants it.
struct FdReader(RawFd);

impl Read for FdReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        net::read(self.0, buf)
    }
}

/// How far a handshake got in one go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Waiting for the peer.
    Pending,
    /// Finished: the connection can be given to a handler.
    Done,
    Failed(Failure),
}

/// What reading a TLS connection found, besides the plaintext it emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadEnd {
    /// The socket has nothing more for now.
    Drained,
    /// `budget` ciphertext bytes were read; there may be more.
    Budget,
    /// The peer ended the stream (close_notify, or a TCP end without one).
    Eof,
    /// The socket failed, or the peer sent something that is not valid TLS.
    Failed,
}

/// The negotiated parameters a handler sees, captured when the handshake finished.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    pub version: Option<&'static str>,
    pub alpn_protocol: Option<String>,
    /// DER of the client's leaf certificate, when it presented one.
    pub peer_certificate: Option<Vec<u8>>,
}

#[derive(Debug)]
pub struct TlsStream {
    session: ServerConnection,
    /// Ciphertext not yet written to the socket.
    wire: Vec<u8>,
    wire_start: usize,
    close_notify_queued: bool,
}

impl TlsStream {
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsStream, rustls::Error> {
        let mut session = ServerConnection::new(config)?;
        // Our own `SEAL_AHEAD` bounds what is sealed at once; rustls need not refuse any.
        session.set_buffer_limit(None);
        Ok(TlsStream {
            session,
            wire: Vec::new(),
            wire_start: 0,
            close_notify_queued: false,
        })
    }

    /// Ciphertext queued and not yet written.
    pub fn pending_wire(&self) -> usize {
        self.wire.len() - self.wire_start
    }

    /// Drop whatever was queued for the socket, close_notify included (the peer is gone).
    pub fn discard_output(&mut self) {
        self.wire.clear();
        self.wire_start = 0;
        self.close_notify_queued = true;
    }

    /// Whether the close_notify has been queued (or given up on).
    pub fn said_goodbye(&self) -> bool {
        self.close_notify_queued
    }

    /// Move the records rustls has ready (handshake messages, alerts, sealed data) into the
    /// ciphertext buffer.
    fn take_records(&mut self) {
        while self.session.wants_write() {
            // Writing into a Vec cannot fail.
            if self.session.write_tls(&mut self.wire).is_err() {
                break;
            }
        }
    }

    /// Write queued ciphertext until the socket takes no more. `Ok(true)` once all is out.
    fn send(&mut self, fd: RawFd, stats: Option<&Counters>) -> io::Result<bool> {
        while self.wire_start < self.wire.len() {
            match net::send_quietly(fd, &self.wire[self.wire_start..]) {
                Ok(n) => {
                    self.wire_start += n;
                    if let Some(stats) = stats {
                        Counters::add(&stats.bytes_out, n as u64);
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        self.wire.clear();
        self.wire_start = 0;
        Ok(true)
    }

    /// Read ciphertext from the socket into rustls and decrypt it. `Ok(0)`: end of stream.
    /// `on_read` is told of the bytes read before they are decrypted, so bytes that turn
    /// out not to be valid TLS are counted too.
    fn read_records(&mut self, fd: RawFd, on_read: &mut impl FnMut(usize)) -> io::Result<usize> {
        let n = self.session.read_tls(&mut FdReader(fd))?;
        if n > 0 {
            on_read(n);
            if let Err(err) = self.session.process_new_packets() {
                // rustls has queued an alert saying why; it goes out before the close.
                self.take_records();
                return Err(io::Error::new(io::ErrorKind::InvalidData, err));
            }
        }
        Ok(n)
    }

    /// Advance the handshake with whatever the socket has, and send our side of it.
    pub fn handshake(&mut self, fd: RawFd, stats: &Counters) -> Progress {
        let progress = loop {
            if !self.session.is_handshaking() {
                break Progress::Done;
            }
            match self.read_records(fd, &mut |n| Counters::add(&stats.bytes_in, n as u64)) {
                Ok(0) => break Progress::Failed(Failure::Closed),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break Progress::Pending,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) if err.kind() == io::ErrorKind::InvalidData => {
                    let class = err
                        .get_ref()
                        .and_then(|e| e.downcast_ref::<rustls::Error>())
                        .map_or(Failure::Protocol, Failure::of);
                    break Progress::Failed(class);
                }
                Err(_) => break Progress::Failed(Failure::Closed),
            }
        };
        self.take_records();
        match self.send(fd, Some(stats)) {
            Ok(true) if progress == Progress::Done => {
                // An idle connection should not keep the handshake flight's buffer.
                self.wire = Vec::new();
                progress
            }
            Ok(_) => progress,
            // The peer is gone; a failure already classified keeps its class.
            Err(_) if matches!(progress, Progress::Failed(_)) => progress,
            Err(_) => Progress::Failed(Failure::Closed),
        }
    }

    /// What the handshake settled, for the handler's `connection`.
    pub fn info(&self) -> TlsInfo {
        let version = self.session.protocol_version().map(|v| match v {
            rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3",
            rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2",
            _ => "TLS",
        });
        TlsInfo {
            version,
            alpn_protocol: self
                .session
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            peer_certificate: self
                .session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| leaf.as_ref().to_vec()),
        }
    }

    /// Read and decrypt until the socket has nothing more or `budget` ciphertext bytes were
    /// read, giving each piece of plaintext (at most `piece` bytes) to `feed`, which returns
    /// false to stop. `on_read` is told of every ciphertext read.
    pub fn read(
        &mut self,
        fd: RawFd,
        budget: usize,
        piece: usize,
        on_read: &mut impl FnMut(usize),
        feed: &mut impl FnMut(&[u8]) -> bool,
    ) -> ReadEnd {
        let mut taken = 0;
        loop {
            // Plaintext already decrypted comes first (some may have come with the handshake).
            loop {
                let mut reader = self.session.reader();
                match reader.fill_buf() {
                    Ok([]) => return ReadEnd::Eof, // close_notify
                    Ok(chunk) => {
                        let n = chunk.len().min(piece);
                        let go_on = feed(&chunk[..n]);
                        reader.consume(n);
                        if !go_on {
                            return ReadEnd::Failed;
                        }
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    // The TCP stream ended without a close_notify: an end all the same, as
                    // many clients close that way.
                    Err(_) => return ReadEnd::Eof,
                }
            }
            if taken >= budget {
                return ReadEnd::Budget;
            }
            match self.read_records(fd, on_read) {
                Ok(0) => {} // rustls now reports the end through the reader
                Ok(n) => taken += n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return ReadEnd::Drained,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadEnd::Failed,
            }
        }
    }

    /// Seal plaintext from `out[*start..]` (advancing `start`) and write ciphertext, a
    /// window at a time; with `closing`, once all plaintext is sealed, add the close_notify.
    /// `Ok(true)` once everything is written.
    pub fn flush(
        &mut self,
        fd: RawFd,
        out: &[u8],
        start: &mut usize,
        closing: bool,
        stats: Option<&Counters>,
    ) -> io::Result<bool> {
        if self.close_notify_queued {
            // Nothing can follow a close_notify (a handler thread's send after its close).
            *start = out.len();
        }
        loop {
            if self.pending_wire() < SEAL_AHEAD && *start < out.len() {
                let end = out.len().min(*start + SEAL_AHEAD);
                // With no buffer limit, rustls takes it all.
                let n = self.session.writer().write(&out[*start..end])?;
                *start += n;
            }
            if closing && *start == out.len() && !self.close_notify_queued {
                self.close_notify_queued = true;
                self.session.send_close_notify();
            }
            self.take_records();
            if !self.send(fd, stats)? {
                return Ok(false);
            }
            if *start == out.len() {
                return Ok(true);
            }
        }
    }

    /// Records rustls queued while reading (a key update, an alert) that want sending.
    pub fn has_records_to_send(&mut self) -> bool {
        self.take_records();
        self.pending_wire() > 0
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::tls::{TlsOptions, load};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use rustls::{ClientConfig, ClientConnection, RootCertStore};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::path::PathBuf;

    pub fn testdata(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("rust/testdata/tls")
            .join(name)
    }

    pub fn server_options() -> TlsOptions {
        TlsOptions {
            certfile: testdata("server.crt"),
            keyfile: Some(testdata("server.key")),
            client_ca: None,
            require_client_cert: true,
            alpn_protocols: vec![b"h2".to_vec(), b"echo".to_vec()],
            min_version: "1.2".into(),
        }
    }

    pub fn client(alpn: &[&[u8]], with_cert: bool) -> ClientConnection {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(testdata("ca.crt")).unwrap())
            .unwrap();
        let builder = ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
        let mut config = if with_cert {
            builder
                .with_client_auth_cert(
                    vec![CertificateDer::from_pem_file(testdata("client.crt")).unwrap()],
                    PrivateKeyDer::from_pem_file(testdata("client.key")).unwrap(),
                )
                .unwrap()
        } else {
            builder.with_no_client_auth()
        };
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = ServerName::try_from("localhost").unwrap();
        ClientConnection::new(Arc::new(config), name).unwrap()
    }

    /// Move the client's records to the socket and the socket's to the client (blocking
    /// socket on the client's side); plaintext the client receives goes to `sink`.
    pub fn pump(client: &mut ClientConnection, sock: &mut UnixStream, sink: &mut Vec<u8>) {
        while client.wants_write() {
            client.write_tls(sock).unwrap();
        }
        sock.set_nonblocking(true).unwrap();
        loop {
            match client.read_tls(sock) {
                Ok(0) => break,
                Ok(_) => {
                    client.process_new_packets().unwrap();
                    let mut reader = client.reader();
                    while let Ok(chunk) = reader.fill_buf() {
                        if chunk.is_empty() {
                            break;
                        }
                        let n = chunk.len();
                        sink.extend_from_slice(chunk);
                        reader.consume(n);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        sock.set_nonblocking(false).unwrap();
    }

    /// A finished handshake between an in-process client and a `TlsStream`.
    pub fn connected(
        options: &TlsOptions,
        alpn: &[&[u8]],
        with_cert: bool,
    ) -> (TlsStream, UnixStream, ClientConnection, UnixStream) {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let stats = Counters::default();
        let mut stream = TlsStream::new(load(options).unwrap()).unwrap();
        let mut client = client(alpn, with_cert);
        let mut sink = Vec::new();
        for _ in 0..10 {
            pump(&mut client, &mut theirs, &mut sink);
            match stream.handshake(ours.as_raw_fd(), &stats) {
                Progress::Done => {
                    pump(&mut client, &mut theirs, &mut sink);
                    return (stream, ours, client, theirs);
                }
                Progress::Pending => {}
                Progress::Failed(class) => panic!("handshake failed: {class:?}"),
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn a_handshake_negotiates_version_and_alpn_then_data_flows_both_ways() {
        let (mut stream, ours, mut client, mut theirs) =
            connected(&server_options(), &[b"echo"], false);
        let info = stream.info();
        assert_eq!(info.version, Some("TLSv1.3"));
        assert_eq!(info.alpn_protocol.as_deref(), Some("echo"));
        assert!(info.peer_certificate.is_none());

        client.writer().write_all(b"hello\nworld\n").unwrap();
        pump(&mut client, &mut theirs, &mut Vec::new());
        let mut got = Vec::new();
        let end = stream.read(ours.as_raw_fd(), 1 << 20, 1 << 16, &mut |_| {}, &mut |p| {
            got.extend_from_slice(p);
            true
        });
        assert_eq!(end, ReadEnd::Drained);
        assert_eq!(got, b"hello\nworld\n");

        // A reply bigger than the socket buffer and than what is sealed at once.
        let reply = vec![b'x'; 3 * SEAL_AHEAD + 123];
        let mut start = 0;
        let mut received = Vec::new();
        for _ in 0..1000 {
            let done = stream
                .flush(ours.as_raw_fd(), &reply, &mut start, true, None)
                .unwrap();
            pump(&mut client, &mut theirs, &mut received);
            if done {
                break;
            }
        }
        pump(&mut client, &mut theirs, &mut received);
        assert_eq!(received, reply);
        assert_eq!(stream.pending_wire(), 0);
        // The close_notify came after the data: the client's reader says end of stream.
        assert_eq!(client.reader().read(&mut [0u8; 16]).unwrap(), 0);
    }

    #[test]
    fn a_peer_close_notify_is_an_end_of_stream() {
        let (mut stream, ours, mut client, mut theirs) = connected(&server_options(), &[], false);
        client.writer().write_all(b"last").unwrap();
        client.send_close_notify();
        pump(&mut client, &mut theirs, &mut Vec::new());
        let mut got = Vec::new();
        let end = stream.read(ours.as_raw_fd(), 1 << 20, 1 << 16, &mut |_| {}, &mut |p| {
            got.extend_from_slice(p);
            true
        });
        assert_eq!(end, ReadEnd::Eof);
        assert_eq!(got, b"last");
    }

    #[test]
    fn mutual_tls_captures_the_client_certificate() {
        let options = TlsOptions {
            client_ca: Some(testdata("ca.crt")),
            ..server_options()
        };
        let (stream, ..) = connected(&options, &[], true);
        let expected = CertificateDer::from_pem_file(testdata("client.crt")).unwrap();
        assert_eq!(
            stream.info().peer_certificate.as_deref(),
            Some(expected.as_ref())
        );
    }

    fn failed_handshake(options: &TlsOptions, first_bytes: &[u8]) -> Progress {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut stream = TlsStream::new(load(options).unwrap()).unwrap();
        theirs.write_all(first_bytes).unwrap();
        stream.handshake(ours.as_raw_fd(), &Counters::default())
    }

    #[test]
    fn garbage_instead_of_a_client_hello_is_a_protocol_failure() {
        assert_eq!(
            failed_handshake(&server_options(), b"GET / HTTP/1.1\r\n\r\n"),
            Progress::Failed(Failure::Protocol)
        );
    }

    #[test]
    fn a_client_without_the_required_certificate_fails_as_certificate() {
        let options = TlsOptions {
            client_ca: Some(testdata("ca.crt")),
            ..server_options()
        };
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let stats = Counters::default();
        let mut stream = TlsStream::new(load(&options).unwrap()).unwrap();
        let mut client = client(&[], false);
        let mut outcome = Progress::Pending;
        for _ in 0..10 {
            while client.wants_write() {
                client.write_tls(&mut theirs).unwrap();
            }
            outcome = stream.handshake(ours.as_raw_fd(), &stats);
            if outcome != Progress::Pending {
                break;
            }
            theirs.set_nonblocking(true).unwrap();
            while let Ok(n) = client.read_tls(&mut theirs) {
                if n == 0 {
                    break;
                }
                client.process_new_packets().unwrap();
            }
            theirs.set_nonblocking(false).unwrap();
        }
        assert_eq!(outcome, Progress::Failed(Failure::Certificate));
    }

    #[test]
    fn a_peer_that_hangs_up_mid_handshake_is_closed() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        let mut stream = TlsStream::new(load(&server_options()).unwrap()).unwrap();
        let stats = Counters::default();
        assert_eq!(
            stream.handshake(ours.as_raw_fd(), &stats),
            Progress::Pending
        );
        drop(theirs);
        assert_eq!(
            stream.handshake(ours.as_raw_fd(), &stats),
            Progress::Failed(Failure::Closed)
        );
    }
}
