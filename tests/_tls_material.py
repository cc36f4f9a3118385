"""Certificates and keys for the TLS tests, made at test time with ``cryptography``.

One private CA signs everything: two server certificates (so a reload can be told apart by
its serial number and common name) and a client certificate for mutual TLS. Server keys are
ECDSA P-256, the benchmark's key type; an RSA pair is made too, so tests can cover both key
kinds rustls accepts. Nothing here is a fixture itself: ``conftest.py`` builds it once per
session in a temporary directory.
"""

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclass(frozen=True)
class TlsMaterial:
    """Paths of PEM files, all under one directory."""

    directory: Path
    ca_cert: Path
    server_cert: Path  # CN "server-one", ECDSA P-256, SAN localhost/127.0.0.1/::1
    server_key: Path
    server_combined: Path  # certificate chain and key in one file, as ssl.load_cert_chain allows
    second_server_cert: Path  # CN "server-two": what a reload switches to
    second_server_key: Path
    rsa_server_cert: Path  # CN "server-rsa", RSA 2048
    rsa_server_key: Path
    client_cert: Path  # CN "client-one", clientAuth
    client_key: Path
    unrelated_key: Path  # matches no certificate here

    def client_context(
        self,
        *,
        alpn: list[str] | None = None,
        version: ssl.TLSVersion | None = None,
        client_cert: bool = False,
    ) -> ssl.SSLContext:
        """A client context that trusts our CA; optionally pinned to one TLS version, offering
        ALPN protocols, or presenting the client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        if version is not None:
            context.minimum_version = version
            context.maximum_version = version
        if alpn:
            context.set_alpn_protocols(alpn)
        if client_cert:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: _PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _issue(
    subject: str,
    key: _PrivateKey,
    issuer: tuple[x509.Name, _PrivateKey] | None,
    *,
    ca: bool = False,
    client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        # Python 3.13's default client context verifies strictly (VERIFY_X509_STRICT), which
        # requires an Authority Key Identifier on every certificate a CA issued.
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if not client:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.IPAddress(ipaddress.ip_address("::1")),
                    ]
                ),
                critical=False,
            )
    return builder.sign(issuer_key, hashes.SHA256())


def make_tls_material(directory: Path) -> TlsMaterial:
    """Write a CA, server, client and spare keys into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)

    def write(name: str, data: bytes) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    def cert_pem(cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _issue("socketserver_rs test CA", ca_key, None, ca=True)
    ca = (ca_cert.subject, ca_key)

    made: dict[str, tuple[x509.Certificate, _PrivateKey]] = {}
    for subject, key, client in [
        ("server-one", ec.generate_private_key(ec.SECP256R1()), False),
        ("server-two", ec.generate_private_key(ec.SECP256R1()), False),
        ("server-rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048), False),
        ("client-one", ec.generate_private_key(ec.SECP256R1()), True),
    ]:
        made[subject] = (_issue(subject, key, ca, client=client), key)

    def pair(subject: str, stem: str) -> tuple[Path, Path]:
        cert, key = made[subject]
        return write(f"{stem}.crt", cert_pem(cert)), write(f"{stem}.key", _pem_key(key))

    server_cert, server_key = pair("server-one", "server")
    second_cert, second_key = pair("server-two", "server-two")
    rsa_cert, rsa_key = pair("server-rsa", "server-rsa")
    client_cert, client_key = pair("client-one", "client")
    one_cert, one_key = made["server-one"]
    return TlsMaterial(
        directory=directory,
        ca_cert=write("ca.crt", cert_pem(ca_cert)),
        server_cert=server_cert,
        server_key=server_key,
        server_combined=write("server-combined.pem", cert_pem(one_cert) + _pem_key(one_key)),
        second_server_cert=second_cert,
        second_server_key=second_key,
        rsa_server_cert=rsa_cert,
        rsa_server_key=rsa_key,
        client_cert=client_cert,
        client_key=client_key,
        unrelated_key=write("unrelated.key", _pem_key(ec.generate_private_key(ec.SECP256R1()))),
    )
