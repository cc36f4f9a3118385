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

#[cfg(test)]
mod tests {
    //! The TLS client against a real rustls server over loopback, with certificates made by
    //! `openssl` at test time: persistent echo, connection per request (every one a full
    //! handshake), the idle hold, and a server whose certificate our CA did not sign.

    use std::io::{BufRead, BufReader};
    use std::net::{SocketAddr, TcpListener};
    use std::path::PathBuf;
    use std::process::Command;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::thread;

    use rustls::pki_types::PrivateKeyDer;
    use rustls::{HandshakeKind, ServerConfig, ServerConnection, StreamOwned};

    use super::*;
    use crate::args::{Config, Parsed, parse};

    /// A directory of this test's own, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let dir = std::env::temp_dir().join(format!("loadgen-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs (Debian: apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `{prefix}ca.crt` (a CA) and `{prefix}server.crt`/`.key` (ECDSA P-256, for
    /// localhost, signed by that CA) in `dir`.
    fn make_certificates(dir: &Path, prefix: &str) {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let (ca_key, ca_crt) = (format!("{prefix}ca.key"), format!("{prefix}ca.crt"));
        let (key, csr) = (format!("{prefix}server.key"), format!("{prefix}server.csr"));
        let (crt, ext) = (format!("{prefix}server.crt"), format!("{prefix}server.ext"));
        openssl(
            dir,
            &[
                &["req", "-x509"],
                &ec[..],
                &["-keyout", &ca_key, "-out", &ca_crt],
            ]
            .concat()
            .iter()
            .copied()
            .chain([
                "-subj",
                "/CN=loadgen test CA",
                "-days",
                "2",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign",
            ])
            .collect::<Vec<_>>(),
        );
        openssl(
            dir,
            &[
                &["req"],
                &ec[..],
                &["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"],
            ]
            .concat(),
        );
        std::fs::write(
            dir.join(&ext),
            "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_crt,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }

    /// Handshakes a test server completed, full and resumed.
    #[derive(Debug, Default)]
    struct Counts {
        full: AtomicU64,
        resumed: AtomicU64,
    }

    /// A TLS line-echo server on 127.0.0.1 (a thread per connection), serving until the test
    /// process ends.
    fn serve(cert: &Path, key: &Path) -> (SocketAddr, Arc<Counts>) {
        let certs: Vec<_> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let served = Arc::clone(&counts);
        thread::spawn(move || {
            for sock in listener.incoming() {
                let Ok(sock) = sock else { continue };
                let (config, counts) = (Arc::clone(&config), Arc::clone(&served));
                thread::spawn(move || echo(sock, config, &counts));
            }
        });
        (addr, counts)
    }

    fn echo(sock: std::net::TcpStream, config: Arc<ServerConfig>, counts: &Counts) {
        let mut tls = StreamOwned::new(ServerConnection::new(config).unwrap(), sock);
        while tls.conn.is_handshaking() {
            if tls.conn.complete_io(&mut tls.sock).is_err() {
                return;
            }
        }
        match tls.conn.handshake_kind() {
            Some(HandshakeKind::Resumed) => counts.resumed.fetch_add(1, Ordering::SeqCst),
            _ => counts.full.fetch_add(1, Ordering::SeqCst),
        };
        let mut lines = BufReader::new(tls);
        let mut line = Vec::new();
        while matches!(lines.read_until(b'\n', &mut line), Ok(n) if n > 0) {
            let tls = lines.get_mut();
            if tls.write_all(&line).and_then(|()| tls.flush()).is_err() {
                return;
            }
            line.clear();
        }
    }

    fn config(args: &[&str]) -> Config {
        match parse(args.iter().map(|s| s.to_string())) {
            Ok(Parsed::Run(config)) => config,
            other => panic!("{other:?}"),
        }
    }

    fn run(config: &Config) -> crate::stats::Summary {
        let tls = config
            .tls_ca
            .as_deref()
            .map(client_config)
            .transpose()
            .unwrap();
        let outcome = match config.mode {
            crate::args::Mode::Connect => crate::connect::run(config, tls),
            _ => crate::stream::run(config, tls),
        };
        let (recorder, elapsed) = outcome.unwrap();
        recorder.summarize(elapsed)
    }

    #[test]
    fn echoes_over_tls_in_every_stream_mode() {
        let dir = TempDir::new("tls-modes");
        make_certificates(&dir.0, "");
        let (addr, counts) = serve(&dir.0.join("server.crt"), &dir.0.join("server.key"));
        let (addr, ca) = (addr.to_string(), dir.0.join("ca.crt"));
        let ca = ca.to_str().unwrap();
        let common = ["--addr", &addr, "--tls-ca", ca, "--timeout", "10"];
        let with = |extra: &[&str]| config(&[&common[..], extra].concat());

        let line = run(&with(&[
            "--mode",
            "line",
            "--conns",
            "4",
            "--duration",
            "0.3",
        ]));
        assert!(line.requests > 0, "{line:?}");
        assert_eq!((line.errors, line.timeouts), (0, 0), "{line:?}");

        // Bounded by the request count; the duration only guards against a hang.
        let before = counts.full.load(Ordering::SeqCst);
        let connect = run(&with(&[
            "--mode",
            "connect",
            "--conns",
            "4",
            "--max-requests",
            "40",
            "--duration",
            "60",
        ]));
        assert_eq!(connect.requests, 40, "{connect:?}");
        assert_eq!((connect.errors, connect.timeouts), (0, 0), "{connect:?}");
        // One full handshake per request: no session was resumed.
        assert!(counts.full.load(Ordering::SeqCst) - before >= 40);
        assert_eq!(counts.resumed.load(Ordering::SeqCst), 0);

        let idle = run(&with(&[
            "--mode",
            "idle",
            "--conns",
            "8",
            "--duration",
            "0.3",
        ]));
        assert_eq!(idle.requests, 0, "{idle:?}");
        assert_eq!(idle.connections.map(|c| c.ready), Some(8), "{idle:?}");
        assert_eq!(idle.errors, 0, "{idle:?}");
    }

    #[test]
    fn a_certificate_our_ca_did_not_sign_fails_every_request() {
        let dir = TempDir::new("tls-untrusted");
        make_certificates(&dir.0, "");
        make_certificates(&dir.0, "other-");
        let (addr, _) = serve(
            &dir.0.join("other-server.crt"),
            &dir.0.join("other-server.key"),
        );
        let (addr, ca) = (addr.to_string(), dir.0.join("ca.crt"));
        let args = [
            "--mode",
            "connect",
            "--addr",
            &addr,
            "--tls-ca",
            ca.to_str().unwrap(),
        ];
        let summary = run(&config(&[&args[..], &["--max-requests", "5"]].concat()));
        assert_eq!(summary.requests, 0, "{summary:?}");
        assert!(summary.errors >= 1, "{summary:?}");
        let error = summary.first_error.unwrap_or_default();
        assert!(error.contains("certificate"), "{error}");
    }

    #[test]
    fn the_ca_file_must_hold_a_certificate() {
        let dir = TempDir::new("tls-ca-file");
        make_certificates(&dir.0, "");
        let error = client_config(&dir.0.join("server.key")).unwrap_err();
        assert!(error.contains("no certificate found"), "{error}");
        let error = client_config(&dir.0.join("missing.crt")).unwrap_err();
        assert!(error.contains("missing.crt"), "{error}");
        assert!(client_config(&dir.0.join("ca.crt")).is_ok());
    }
}
