//! TLS configuration of a reactor server: reading the PEM files, building the rustls
//! `ServerConfig` that every new handshake shares, the errors that name the attribute and
//! file at fault, and the classes failed handshakes are counted under.
//!
//! The crypto provider is rustls's `ring`: it builds from crates.io with nothing but a C
//! compiler (aws-lc-rs, rustls's default, also needs cmake, and Go or perl on some targets),
//! so wheels and `cargo check` for other platforms need no extra system tools.
//! This file needs no Python and is tested with `cargo test`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, Error, InconsistentKeys, RootCertStore, ServerConfig};

/// What the server's `tls_*` attributes say, as the engine takes it.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    pub certfile: PathBuf,
    /// `None`: the key is in `certfile`.
    pub keyfile: Option<PathBuf>,
    pub client_ca: Option<PathBuf>,
    pub require_client_cert: bool,
    pub alpn_protocols: Vec<Vec<u8>>,
    /// `"1.2"` or `"1.3"`.
    pub min_version: String,
}

/// The configuration every new connection of a server is given: shared, swapped whole by a
/// reload (connections already open keep the `Arc` they were given).
#[derive(Debug, Clone)]
pub struct TlsServer {
    pub config: Arc<ServerConfig>,
    /// From accept to a finished handshake (`None`: no limit).
    pub handshake_timeout: Option<Duration>,
}

/// A configuration that cannot be used: the message names the attribute, the file and the
/// problem; `source` is the `OSError` behind it, if any.
#[derive(Debug)]
pub struct ConfigError {
    pub message: String,
    pub source: Option<io::Error>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl ConfigError {
    fn new(attribute: &str, path: &Path, problem: impl fmt::Display) -> ConfigError {
        ConfigError {
            message: format!("{attribute} '{}': {problem}", path.display()),
            source: None,
        }
    }

    fn io(attribute: &str, path: &Path, err: io::Error) -> ConfigError {
        let problem = match err.kind() {
            io::ErrorKind::NotFound => "no such file".to_string(),
            io::ErrorKind::PermissionDenied => "permission denied".to_string(),
            _ => format!("cannot be read ({err})"),
        };
        ConfigError {
            source: Some(err),
            ..ConfigError::new(attribute, path, problem)
        }
    }
}

/// The provider every configuration uses (see the top of this file for why ring).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// One PEM file, read whole.
struct PemFile<'a> {
    attribute: &'static str,
    path: &'a Path,
    data: Vec<u8>,
}

impl<'a> PemFile<'a> {
    fn read(attribute: &'static str, path: &'a Path) -> Result<PemFile<'a>, ConfigError> {
        let data = std::fs::read(path).map_err(|e| ConfigError::io(attribute, path, e))?;
        Ok(PemFile {
            attribute,
            path,
            data,
        })
    }

    fn error(&self, problem: impl fmt::Display) -> ConfigError {
        ConfigError::new(self.attribute, self.path, problem)
    }

    fn malformed(&self, err: &pem::Error) -> ConfigError {
        self.error(format_args!("not a valid PEM file ({err})"))
    }

    /// Every certificate in the file, in order; at least one.
    fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        let certs = CertificateDer::pem_slice_iter(&self.data)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.malformed(&e))?;
        if certs.is_empty() {
            return Err(self.error("no certificate found in the PEM file"));
        }
        Ok(certs)
    }

    /// The first private key in the file (PKCS#8, PKCS#1 or SEC1).
    fn private_key(&self) -> Result<PrivateKeyDer<'static>, ConfigError> {
        match PrivateKeyDer::from_pem_slice(&self.data) {
            Ok(key) => Ok(key),
            Err(pem::Error::NoItemsFound) => {
                Err(self.error("no private key found in the PEM file"))
            }
            Err(err) => Err(self.malformed(&err)),
        }
    }
}

static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];

fn protocol_versions(
    min_version: &str,
) -> Result<&'static [&'static rustls::SupportedProtocolVersion], ConfigError> {
    match min_version {
        "1.2" => Ok(rustls::ALL_VERSIONS),
        "1.3" => Ok(&TLS13_ONLY),
        other => Err(ConfigError {
            message: format!("tls_min_version: expected \"1.2\" or \"1.3\", got '{other}'"),
            source: None,
        }),
    }
}

/// Read the files `options` names and build the server configuration, checking that the
/// key matches the certificate and that the client CA bundle is usable.
pub fn load(options: &TlsOptions) -> Result<Arc<ServerConfig>, ConfigError> {
    let versions = protocol_versions(&options.min_version)?;
    for protocol in &options.alpn_protocols {
        if protocol.is_empty() || protocol.len() > 255 {
            return Err(ConfigError {
                message: format!(
                    "tls_alpn_protocols: each protocol name must be 1 to 255 bytes, got {:?}",
                    String::from_utf8_lossy(protocol)
                ),
                source: None,
            });
        }
    }
    let cert_file = PemFile::read("tls_certfile", &options.certfile)?;
    let chain = cert_file.certificates()?;
    let key = match &options.keyfile {
        Some(path) => PemFile::read("tls_keyfile", path)?.private_key()?,
        None => cert_file.private_key().map_err(|mut err| {
            err.message
                .push_str(" (put the key there, or name its file in tls_keyfile)");
            err
        })?,
    };
    let key_file = PemFile {
        attribute: if options.keyfile.is_some() {
            "tls_keyfile"
        } else {
            "tls_certfile"
        },
        path: options.keyfile.as_deref().unwrap_or(&options.certfile),
        data: Vec::new(),
    };

    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| ConfigError {
            message: format!("tls_min_version: {e}"),
            source: None,
        })?;
    let builder = match &options.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let ca_file = PemFile::read("tls_client_ca", path)?;
            let mut roots = RootCertStore::empty();
            for cert in ca_file.certificates()? {
                roots.add(cert).map_err(|e| {
                    ca_file.error(format_args!("not a usable CA certificate ({e})"))
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if options.require_client_cert {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| ca_file.error(format_args!("not a usable CA bundle ({e})")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|err| match err {
            Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => key_file.error(format_args!(
                "the private key does not match the certificate in tls_certfile '{}'",
                options.certfile.display()
            )),
            Error::InvalidCertificate(_) | Error::InconsistentKeys(_) => {
                cert_file.error(format_args!("the first certificate is not usable ({err})"))
            }
            other => key_file.error(format_args!("the private key is not usable ({other})")),
        })?;
    config.alpn_protocols.clone_from(&options.alpn_protocols);
    Ok(Arc::new(config))
}

/// Why a handshake failed, as `stats()` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Not finished within the handshake timeout.
    Timeout,
    /// The peer closed or reset the connection.
    Closed,
    /// Not TLS, malformed, or nothing in common (version, cipher suite, ALPN protocol).
    Protocol,
    /// The client certificate was missing or did not verify.
    Certificate,
}

impl Failure {
    /// Every class, in the order `stats()` reports them.
    pub const ALL: [Failure; 4] = [
        Failure::Timeout,
        Failure::Closed,
        Failure::Protocol,
        Failure::Certificate,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Closed => "closed",
            Failure::Protocol => "protocol",
            Failure::Certificate => "certificate",
        }
    }

    /// The class of a rustls error raised while handshaking.
    pub fn of(err: &Error) -> Failure {
        match err {
            Error::NoCertificatesPresented
            | Error::InvalidCertificate(_)
            | Error::InvalidCertRevocationList(_) => Failure::Certificate,
            Error::AlertReceived(AlertDescription::CloseNotify) => Failure::Closed,
            _ => Failure::Protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::CertificateError;

    /// A throwaway directory under the system temp dir, removed on drop.
    pub struct Scratch(pub PathBuf);

    impl Scratch {
        pub fn new(name: &str) -> Scratch {
            let dir = std::env::temp_dir()
                .join(format!("socketserver_rs-tls-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        pub fn write(&self, name: &str, data: &[u8]) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, data).unwrap();
            path
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn options(certfile: PathBuf, keyfile: Option<PathBuf>) -> TlsOptions {
        TlsOptions {
            certfile,
            keyfile,
            client_ca: None,
            require_client_cert: true,
            alpn_protocols: Vec::new(),
            min_version: "1.2".into(),
        }
    }

    fn message(result: Result<Arc<ServerConfig>, ConfigError>) -> String {
        result
            .expect_err("the configuration must be refused")
            .message
    }

    #[test]
    fn a_missing_file_is_named_with_its_os_error() {
        let err = load(&options("/nonexistent/c.pem".into(), None)).unwrap_err();
        assert_eq!(
            err.message,
            "tls_certfile '/nonexistent/c.pem': no such file"
        );
        assert_eq!(err.source.unwrap().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn files_without_the_expected_items_are_refused() {
        let dir = Scratch::new("empty");
        let empty = dir.write("empty.pem", b"nothing here\n");
        let text = message(load(&options(empty.clone(), None)));
        assert!(text.contains("no certificate found"), "{text}");
        let bad_min = TlsOptions {
            min_version: "1.1".into(),
            ..options(empty, None)
        };
        assert_eq!(
            message(load(&bad_min)),
            "tls_min_version: expected \"1.2\" or \"1.3\", got '1.1'"
        );
    }

    #[test]
    fn a_pem_that_is_not_base64_is_malformed() {
        let dir = Scratch::new("malformed");
        let bad = dir.write(
            "bad.pem",
            b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let text = message(load(&options(bad, None)));
        assert!(text.contains("not a valid PEM file"), "{text}");
    }

    fn testdata(name: &str) -> PathBuf {
        crate::tls_stream::tests::testdata(name)
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused() {
        let options = options(testdata("server.crt"), Some(testdata("unrelated.key")));
        let text = message(load(&options));
        assert!(
            text.starts_with("tls_keyfile '")
                && text.contains("unrelated.key")
                && text.contains("does not match the certificate in tls_certfile")
                && text.contains("server.crt"),
            "{text}"
        );
    }

    #[test]
    fn the_key_may_share_the_certificate_file_but_must_be_there() {
        let dir = Scratch::new("combined");
        let cert = std::fs::read(testdata("server.crt")).unwrap();
        let key = std::fs::read(testdata("server.key")).unwrap();
        let combined = dir.write("combined.pem", &[cert.clone(), key].concat());
        load(&options(combined, None)).expect("certificate and key in one file");
        let text = message(load(&options(testdata("server.crt"), None)));
        assert!(
            text.starts_with("tls_certfile '") && text.contains("no private key found"),
            "{text}"
        );
        let text = message(load(&options(
            testdata("server.crt"),
            Some(testdata("server.crt")),
        )));
        assert!(
            text.starts_with("tls_keyfile '") && text.contains("no private key found"),
            "{text}"
        );
    }

    #[test]
    fn a_client_ca_bundle_without_certificates_is_refused() {
        let options = TlsOptions {
            client_ca: Some(testdata("server.key")),
            ..options(testdata("server.crt"), Some(testdata("server.key")))
        };
        let text = message(load(&options));
        assert!(
            text.starts_with("tls_client_ca '") && text.contains("no certificate found"),
            "{text}"
        );
    }

    #[test]
    fn alpn_names_and_versions_are_checked_and_applied() {
        let mut good = options(testdata("server.crt"), Some(testdata("server.key")));
        good.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        good.min_version = "1.3".into();
        let config = load(&good).unwrap();
        assert_eq!(config.alpn_protocols, good.alpn_protocols);
        good.alpn_protocols = vec![Vec::new()];
        assert!(message(load(&good)).starts_with("tls_alpn_protocols:"));
    }

    #[test]
    fn failure_classes_follow_the_rustls_error() {
        assert_eq!(
            Failure::of(&Error::NoCertificatesPresented),
            Failure::Certificate
        );
        assert_eq!(
            Failure::of(&Error::InvalidCertificate(CertificateError::UnknownIssuer)),
            Failure::Certificate
        );
        assert_eq!(
            Failure::of(&Error::AlertReceived(AlertDescription::CloseNotify)),
            Failure::Closed
        );
        assert_eq!(
            Failure::of(&Error::NoApplicationProtocol),
            Failure::Protocol
        );
        assert_eq!(
            Failure::ALL.map(Failure::name),
            ["timeout", "closed", "protocol", "certificate"]
        );
    }
}
