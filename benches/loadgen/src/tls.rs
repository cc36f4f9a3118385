//! The TLS client side: one rustls configuration per run (the CA file given with `--tls-ca`,
//! TLS 1.3 only, no session resumption, ring as the provider) and the non-blocking TLS stream
//! the drivers read and write as they would a plain socket.
//!
//! Every connection does a full handshake and verifies the server's certificate for the name
//! `localhost`, as a real client would: the benchmark measures the server's handshake, so the
//! client must neither skip verification nor resume sessions.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// The name the server's certificate is verified for (and sent as SNI).
pub const SERVER_NAME: &str = "localhost";

/// The client configuration: trust the certificates in `ca_file`, offer TLS 1.3 only, and
/// never resume a session (each connection pays a full handshake).
pub fn client_config(ca_file: &Path) -> Result<Arc<ClientConfig>, String> {
    let what = |e: &dyn std::fmt::Display| format!("--tls-ca {}: {e}", ca_file.display());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| what(&e))? {
        roots
            .add(cert.map_err(|e| what(&e))?)
            .map_err(|e| what(&e))?;
    }
    if roots.is_empty() {
        return Err(what(&"no certificate found in the PEM file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| what(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// A TLS session over a non-blocking byte stream `S`. Reads and writes never block: `write`
/// takes the whole plaintext (rustls buffers it until the handshake is done) and sends what
/// the socket takes; `flush` sends the rest once the socket is writable again; `read` returns
/// plaintext, `Ok(0)` at the server's close_notify, or `WouldBlock` once the socket has
/// nothing more (so edge-triggered readiness stays correct).
#[derive(Debug)]
pub struct TlsStream<S> {
    sock: S,
    tls: ClientConnection,
}

impl<S: Read + Write> TlsStream<S> {
    /// Starts a client session on `sock` (connected or still connecting).
    pub fn new(sock: S, config: &Arc<ClientConfig>) -> io::Result<Self> {
        let name = ServerName::try_from(SERVER_NAME).map_err(io::Error::other)?;
        let tls = ClientConnection::new(Arc::clone(config), name).map_err(io::Error::other)?;
        Ok(TlsStream { sock, tls })
    }

    pub fn get_ref(&self) -> &S {
        &self.sock
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.sock
    }

    /// Queues a close_notify and sends what the socket takes now (the connection is about to
    /// be dropped, so nothing waits for the rest).
    pub fn close_notify(&mut self) {
        self.tls.send_close_notify();
        let _ = self.send_records();
    }

    /// Sends queued TLS records until the socket would block. A socket still connecting
    /// counts as one that would block: its writable event brings the caller back.
    fn send_records(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::NotConnected
                    ) =>
                {
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl<S: Read + Write> Read for TlsStream<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut at_eof = false;
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if at_eof {
                        return Ok(0);
                    }
                }
                Err(e) => return Err(e),
            }
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => at_eof = true,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let processed = self.tls.process_new_packets();
            // Handshake messages, key updates or the alert of a failure go out now.
            self.send_records()?;
            if let Err(e) = processed {
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }
}

impl<S: Read + Write> Write for TlsStream<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.tls.writer().write(buf)?;
        self.send_records()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_records()
    }
}
