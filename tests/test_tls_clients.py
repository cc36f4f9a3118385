"""TLS on reactor servers, driven by real clients: Python's ``ssl`` module, ``openssl s_client``
and ``curl``. socketserver_rs only: the stdlib's servers have no TLS of their own (they wrap
sockets with ``ssl``, which the reactor's Rust-owned connections cannot be).

Covered: TLS 1.2 and 1.3 with the version seen on both ends, a minimum version, ALPN by the
server's preference, client certificates required and optional, RSA and ECDSA server keys, a
combined certificate-and-key PEM, TCP over IPv4 and IPv6 and Unix stream sockets, every framing
with messages split across TLS records and many messages in one record, big transfers, handler
threads and cross-thread ``send()``, many handshakes at once, session resumption (and a reload
starting afresh), a TLS 1.3 KeyUpdate, a refused TLS 1.2 renegotiation, the close_notify both
ways, and the configuration errors raised at construction (naming the file, leaving no socket
bound and no descriptor open). The engine's own TLS tests (hostile clients, timeouts,
backpressure, reload, prefork) are in ``test_tls_engine.py``.

The certificates come from the session fixture ``tls_material`` (``_tls_material.py``). The
``openssl`` and ``curl`` command-line tools are required, not optional: ``.ci/run`` installs
them (Debian packages ``openssl`` and ``curl``), so a machine without them fails these tests
instead of skipping them silently. Every client has a socket timeout, every child process a
time limit, and every server is shut down and closed by the ``tls_servers`` fixture.
"""

import os
import queue
import re
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time

import pytest
import socketserver_rs
from _behaviour_helpers import HAS_IPV6, LOOPBACK6, open_fds, run_clients
from socketserver_rs import MessageHandler, ReactorTCPServer, ReactorUDPServer

HAS_UNIX = hasattr(socket, "AF_UNIX")
if HAS_UNIX:
    from socketserver_rs import ReactorUnixStreamServer

LOOPBACK = "127.0.0.1"
# How long a client waits for anything before the test fails (a loaded 2-core machine).
TIMEOUT = 10.0
# How long a command-line client may run.
PROCESS_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0

TRANSPORTS = [
    "tcp",
    pytest.param(
        "tcp6", marks=pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback (::1) here")
    ),
    pytest.param("unix", marks=pytest.mark.skipif(not HAS_UNIX, reason="no AF_UNIX")),
]
VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def required_tool(name):
    """The path of a command-line tool these tests need; fails (not skips) without it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"the {name!r} command is not installed (Debian package {name!r}; .ci/run installs it)"
        )
    return path


def common_name(peer_certificate):
    """The subject CN of a certificate as ``SSLSocket.getpeercert()`` returns it."""
    return dict(item[0] for item in peer_certificate["subject"])["commonName"]


def der_of(pem_path):
    """The DER bytes of the (first) certificate in a PEM file."""
    return ssl.PEM_cert_to_DER_cert(pem_path.read_text())


def wait_for(predicate, what, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)
    return value


# --------------------------------------------------------------------------------------------
# Handlers that record what the connection handle says


class Seen:
    """What handlers saw, thread-safe: one entry per connection, and every message."""

    def __init__(self):
        self.lock = threading.Lock()
        self.connections = []  # dicts of the TLS properties seen in setup()
        self.handles = []  # the connection handles themselves
        self.messages = []
        self.finished = 0

    def add_connection(self, connection):
        with self.lock:
            self.handles.append(connection)
            self.connections.append(
                {
                    "tls_version": connection.tls_version,
                    "alpn_protocol": connection.alpn_protocol,
                    "peer_certificate": connection.peer_certificate,
                }
            )

    def add_message(self, message):
        with self.lock:
            self.messages.append(message)

    def finish(self):
        with self.lock:
            self.finished += 1

    def wait_connections(self, count):
        wait_for(lambda: len(self.connections) >= count, f"{count} connection(s) in setup()")
        with self.lock:
            return list(self.connections)


def echo_handler(framing="line", max_message_size=65536, *, close_after=False, reply=True):
    """An echo handler class with a ``seen`` record. ``close_after``: close the connection after
    the first reply; ``reply=False``: record messages, answer nothing."""
    seen = Seen()

    class Echo(MessageHandler):
        def setup(self):
            seen.add_connection(self.connection)

        def handle_message(self, message):
            seen.add_message(message)
            if close_after:
                self.send(message.upper())
                self.close()
                return None
            return message.upper() if reply else None

        def finish(self):
            seen.finish()

    Echo.framing = framing
    Echo.max_message_size = max_message_size
    Echo.seen = seen
    return Echo


# --------------------------------------------------------------------------------------------
# Servers and clients, bounded


class TlsServers:
    """Starts reactor servers on a thread each; closes them all at teardown."""

    def __init__(self, unix_dir):
        self.unix_dir = unix_dir
        self.started = []  # (server, thread, raised)
        self.clients = []

    def server_class(self, transport, **class_attributes):
        if transport == "unix":
            base = ReactorUnixStreamServer
        else:
            base = ReactorTCPServer
            if transport == "tcp6":
                class_attributes["address_family"] = socket.AF_INET6
        return type(base.__name__, (base,), class_attributes) if class_attributes else base

    def address(self, transport):
        if transport == "unix":
            return os.path.join(str(self.unix_dir), f"tls{len(self.started)}.sock")
        return (LOOPBACK6 if transport == "tcp6" else LOOPBACK, 0)

    def start(self, handler, transport="tcp", *, server_class=None, **tls):
        """A server for ``handler`` on ``transport``, constructed with the keyword arguments
        ``tls``, serving on a thread of its own."""
        cls = server_class or self.server_class(transport)
        server = cls(self.address(transport), handler, **tls)
        raised = []

        def serve():
            try:
                server.serve_forever()
            except BaseException as exc:  # reported by close()
                raised.append(exc)

        thread = threading.Thread(target=serve, name="tls-serve", daemon=True)
        self.started.append((server, thread, raised))
        thread.start()
        server.transport = transport
        return server

    def connect(self, server, context, *, server_hostname="localhost", **wrap):
        """A TLS client of ``server`` (handshake done), with a timeout."""
        if server.transport == "unix":
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            family = socket.AF_INET6 if server.transport == "tcp6" else socket.AF_INET
            raw = socket.socket(family, socket.SOCK_STREAM)
        self.clients.append(raw)
        raw.settimeout(TIMEOUT)
        raw.connect(server.server_address)
        client = context.wrap_socket(raw, server_hostname=server_hostname, **wrap)
        self.clients.append(client)
        return client

    def stop(self, server):
        """``shutdown()`` (on a helper thread, bounded) and ``server_close()`` for ``server``;
        the problems seen."""
        (entry,) = [entry for entry in self.started if entry[0] is server]
        self.started.remove(entry)
        _, thread, raised = entry
        caller = threading.Thread(target=server.shutdown, daemon=True)
        caller.start()
        caller.join(STOP_TIMEOUT)
        thread.join(STOP_TIMEOUT)
        server.server_close()
        problems = [f"{server!r}: serve_forever() raised {exc!r}" for exc in raised]
        if thread.is_alive():
            problems.append(f"{server!r}: serve_forever() did not return")
        return problems

    def close(self):
        for client in self.clients:
            client.close()
        problems = []
        for server, _, _ in list(self.started):
            problems.extend(self.stop(server))
        assert not problems, problems


@pytest.fixture
def tls_servers(unix_dir):
    owner = TlsServers(unix_dir)
    try:
        yield owner
    finally:
        owner.close()


def server_tls(material, **overrides):
    """The keyword arguments of a TLS server with the ECDSA ``server-one`` certificate."""
    return {"tls_certfile": material.server_cert, "tls_keyfile": material.server_key, **overrides}


def recv_exactly(sock, n):
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(min(n - len(data), 1 << 16))
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {n} bytes: {bytes(data[:200])!r}")
        data += chunk
    return bytes(data)


def read_to_end(sock):
    """Everything until the server's close_notify (``suppress_ragged_eofs=False`` clients
    raise ``SSLEOFError`` instead if the server closes without one)."""
    data = bytearray()
    while chunk := sock.recv(1 << 16):
        data += chunk
    return bytes(data)


def handshake_refused(tls_servers, server, context):
    """Connect, send a line and read: the server must refuse the client, during the handshake
    or (TLS 1.3, where the client finishes first) with an alert or close on the first read.
    Returns the exception the client saw, or None for a plain end of stream."""
    try:
        client = tls_servers.connect(server, context)
        client.sendall(b"hello\n")
        data = client.recv(1024)
    except (ssl.SSLError, ConnectionError) as exc:
        return exc
    assert data == b"", f"the server answered {data!r} instead of refusing the client"
    return None


def wait_for_failure(server, reason):
    """Wait until ``server.stats()`` counts a handshake failure of class ``reason``."""
    return wait_for(
        lambda: server.stats()["tls_handshake_failures"][reason] >= 1,
        f"a {reason!r} handshake failure in stats(): {server.stats()!r}",
    )


# --------------------------------------------------------------------------------------------
# Python's ssl: versions


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_ssl_client_negotiates_the_version_it_pins_and_the_handler_sees_it(
    tls_servers, tls_material, version
):
    handler = echo_handler()
    server = tls_servers.start(handler, **server_tls(tls_material))
    client = tls_servers.connect(server, tls_material.client_context(version=VERSIONS[version]))

    client.sendall(b"hello\n")
    assert recv_exactly(client, 6) == b"HELLO\n"
    assert client.version() == f"TLSv{version}"
    (seen,) = handler.seen.wait_connections(1)
    assert seen == {
        "tls_version": f"TLSv{version}",
        "alpn_protocol": None,
        "peer_certificate": None,
    }
    assert common_name(client.getpeercert()) == "server-one"
    assert server.stats()["tls_handshakes"] == 1


def test_ssl_client_gets_tls_1_3_when_it_allows_both(tls_servers, tls_material):
    handler = echo_handler()
    server = tls_servers.start(handler, **server_tls(tls_material))
    client = tls_servers.connect(server, tls_material.client_context())
    client.sendall(b"x\n")
    assert recv_exactly(client, 2) == b"X\n"
    assert client.version() == "TLSv1.3"
    assert handler.seen.wait_connections(1)[0]["tls_version"] == "TLSv1.3"


@pytest.mark.parametrize("minimum", ["1.3", ssl.TLSVersion.TLSv1_3], ids=["str", "TLSVersion"])
def test_min_version_1_3_refuses_a_client_that_speaks_only_1_2(tls_servers, tls_material, minimum):
    handler = echo_handler()
    server = tls_servers.start(handler, **server_tls(tls_material, tls_min_version=minimum))

    with pytest.raises(ssl.SSLError):
        tls_servers.connect(server, tls_material.client_context(version=ssl.TLSVersion.TLSv1_2))
    wait_for_failure(server, "protocol")
    # A 1.3 client is served, and the refused one never reached Python.
    client = tls_servers.connect(server, tls_material.client_context())
    client.sendall(b"ok\n")
    assert recv_exactly(client, 3) == b"OK\n"
    assert client.version() == "TLSv1.3"
    assert len(handler.seen.wait_connections(1)) == 1
    assert server.stats()["tls_handshakes"] == 1


def test_a_1_2_minimum_serves_a_1_2_client(tls_servers, tls_material):
    handler = echo_handler()
    server = tls_servers.start(
        handler, **server_tls(tls_material, tls_min_version=ssl.TLSVersion.TLSv1_2)
    )
    client = tls_servers.connect(
        server, tls_material.client_context(version=ssl.TLSVersion.TLSv1_2)
    )
    client.sendall(b"ok\n")
    assert recv_exactly(client, 3) == b"OK\n"
    assert client.version() == "TLSv1.2"


# --------------------------------------------------------------------------------------------
# ALPN


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_alpn_picks_the_servers_preferred_protocol_among_the_clients(
    tls_servers, tls_material, version
):
    handler = echo_handler()
    server = tls_servers.start(
        handler, **server_tls(tls_material, tls_alpn_protocols=("h2", "http/1.1"))
    )
    context = tls_material.client_context(alpn=["http/1.1", "h2"], version=VERSIONS[version])
    client = tls_servers.connect(server, context)
    client.sendall(b"x\n")
    assert recv_exactly(client, 2) == b"X\n"

    assert client.selected_alpn_protocol() == "h2"
    assert handler.seen.wait_connections(1)[0]["alpn_protocol"] == "h2"


def test_alpn_picks_the_one_protocol_both_sides_know(tls_servers, tls_material):
    handler = echo_handler()
    server = tls_servers.start(
        handler, **server_tls(tls_material, tls_alpn_protocols=["h2", "http/1.1"])
    )
    client = tls_servers.connect(server, tls_material.client_context(alpn=["spdy/3", "http/1.1"]))
    client.sendall(b"x\n")
    assert recv_exactly(client, 2) == b"X\n"
    assert client.selected_alpn_protocol() == "http/1.1"
    assert handler.seen.wait_connections(1)[0]["alpn_protocol"] == "http/1.1"


def test_alpn_with_no_protocol_in_common_fails_the_handshake(tls_servers, tls_material):
    handler = echo_handler()
    server = tls_servers.start(handler, **server_tls(tls_material, tls_alpn_protocols=["h2"]))

    with pytest.raises(ssl.SSLError):
        tls_servers.connect(server, tls_material.client_context(alpn=["http/1.1"]))
    wait_for_failure(server, "protocol")
    assert handler.seen.connections == []


def test_a_client_that_offers_no_alpn_is_served_without_a_protocol(tls_servers, tls_material):
    handler = echo_handler()
    server = tls_servers.start(handler, **server_tls(tls_material, tls_alpn_protocols=["h2"]))
    client = tls_servers.connect(server, tls_material.client_context())
    client.sendall(b"x\n")
    assert recv_exactly(client, 2) == b"X\n"
    assert client.selected_alpn_protocol() is None
    assert handler.seen.wait_connections(1)[0]["alpn_protocol"] is None


# --------------------------------------------------------------------------------------------
# Client certificates (mTLS)


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_required_client_certificate_refuses_a_client_without_one(
    tls_servers, tls_material, version
):
    handler = echo_handler()
    server = tls_servers.start(
        handler, **server_tls(tls_material, tls_client_ca=tls_material.ca_cert)
    )

    handshake_refused(tls_servers, server, tls_material.client_context(version=VERSIONS[version]))
    wait_for_failure(server, "certificate")
    assert handler.seen.connections == []
    assert server.stats()["tls_handshakes"] == 0


def test_required_client_certificate_refuses_one_from_another_ca(tls_servers, tls_material):
    # The client presents a certificate the server's client CA did not sign: trusting only
    # the server's own (CA-signed) leaf as "client CA" makes the real client chain unverifiable.
    handler = echo_handler()
    server = tls_servers.start(
        handler, **server_tls(tls_material, tls_client_ca=tls_material.second_server_cert)
    )
    handshake_refused(tls_servers, server, tls_material.client_context(client_cert=True))
    wait_for_failure(server, "certificate")
    assert handler.seen.connections == []


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_required_client_certificate_is_given_to_the_handler_as_der(
    tls_servers, tls_material, version
):
    handler = echo_handler()
    server = tls_servers.start(
        handler, **server_tls(tls_material, tls_client_ca=tls_material.ca_cert)
    )
    context = tls_material.client_context(client_cert=True, version=VERSIONS[version])
    client = tls_servers.connect(server, context)
    client.sendall(b"hello\n")
    assert recv_exactly(client, 6) == b"HELLO\n"

    (seen,) = handler.seen.wait_connections(1)
    assert seen["peer_certificate"] == der_of(tls_material.client_cert)
    assert seen["tls_version"] == f"TLSv{version}"


@pytest.mark.parametrize("with_certificate", [False, True], ids=["without", "with"])
def test_optional_client_certificate_serves_clients_with_and_without_one(
    tls_servers, tls_material, with_certificate
):
    handler = echo_handler()
    server = tls_servers.start(
        handler,
        **server_tls(
            tls_material, tls_client_ca=tls_material.ca_cert, tls_require_client_cert=False
        ),
    )
    client = tls_servers.connect(server, tls_material.client_context(client_cert=with_certificate))
    client.sendall(b"hello\n")
    assert recv_exactly(client, 6) == b"HELLO\n"

    expected = der_of(tls_material.client_cert) if with_certificate else None
    assert handler.seen.wait_connections(1)[0]["peer_certificate"] == expected


def test_without_client_ca_no_certificate_is_asked_for(tls_servers, tls_material):
    # A client that has a certificate is not asked for it, so the handler gets none.
    handler = echo_handler()
    server = tls_servers.start(handler, **server_tls(tls_material))
    client = tls_servers.connect(server, tls_material.client_context(client_cert=True))
    client.sendall(b"x\n")
    assert recv_exactly(client, 2) == b"X\n"
    assert handler.seen.wait_connections(1)[0]["peer_certificate"] is None


# --------------------------------------------------------------------------------------------
# Server keys and PEM layouts


@pytest.mark.parametrize("key_kind", ["ecdsa", "rsa"])
@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_rsa_and_ecdsa_server_keys_serve_both_versions(
    tls_servers, tls_material, key_kind, version
):
    if key_kind == "rsa":
        cert, key, name = tls_material.rsa_server_cert, tls_material.rsa_server_key, "server-rsa"
    else:
        cert, key, name = tls_material.server_cert, tls_material.server_key, "server-one"
    server = tls_servers.start(echo_handler(), tls_certfile=cert, tls_keyfile=key)
    client = tls_servers.connect(server, tls_material.client_context(version=VERSIONS[version]))
    client.sendall(b"key\n")
    assert recv_exactly(client, 4) == b"KEY\n"
    assert common_name(client.getpeercert()) == name
    assert client.version() == f"TLSv{version}"


def test_combined_certificate_and_key_pem_with_no_keyfile(tls_servers, tls_material):
    server = tls_servers.start(
        echo_handler(), tls_certfile=tls_material.server_combined, tls_keyfile=None
    )
    client = tls_servers.connect(server, tls_material.client_context())
    client.sendall(b"combined\n")
    assert recv_exactly(client, 9) == b"COMBINED\n"
    assert common_name(client.getpeercert()) == "server-one"


def test_paths_may_be_str_or_pathlike(tls_servers, tls_material):
    server = tls_servers.start(
        echo_handler(),
        tls_certfile=str(tls_material.server_cert),
        tls_keyfile=tls_material.server_key,
    )
    client = tls_servers.connect(server, tls_material.client_context())
    client.sendall(b"x\n")
    assert recv_exactly(client, 2) == b"X\n"


# --------------------------------------------------------------------------------------------
# Transports and framings


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_stream_transport_serves_tls(tls_servers, tls_material, transport):
    handler = echo_handler()
    server = tls_servers.start(handler, transport, **server_tls(tls_material))
    client = tls_servers.connect(server, tls_material.client_context())
    for line in (b"one\n", b"two\n", b"three\n"):
        client.sendall(line)
        assert recv_exactly(client, len(line)) == line.upper()
    assert client.version() == "TLSv1.3"
    assert handler.seen.wait_connections(1)[0]["tls_version"] == "TLSv1.3"


def frame(framing, payload):
    return struct.pack(">I", len(payload)) + payload if framing == "length32" else payload


MESSAGES = [b"alpha\n", b"\n", b"a somewhat longer message\n", bytes(range(10)) + b"\n", b"z\n"]


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("framing", ["line", "length32"])
def test_framed_messages_split_across_records_arrive_whole(
    tls_servers, tls_material, transport, framing
):
    """Every byte its own TLS record (one ``sendall()`` per byte on the ssl socket)."""
    handler = echo_handler(framing)
    server = tls_servers.start(handler, transport, **server_tls(tls_material))
    client = tls_servers.connect(server, tls_material.client_context())
    wire = b"".join(frame(framing, m) for m in MESSAGES)
    for index in range(len(wire)):
        client.sendall(wire[index : index + 1])
    expected = b"".join(frame(framing, m.upper()) for m in MESSAGES)
    assert recv_exactly(client, len(expected)) == expected
    assert handler.seen.messages == MESSAGES


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("framing", ["line", "length32"])
def test_many_framed_messages_in_one_record_are_each_delivered(
    tls_servers, tls_material, transport, framing
):
    handler = echo_handler(framing)
    server = tls_servers.start(handler, transport, **server_tls(tls_material))
    client = tls_servers.connect(server, tls_material.client_context())
    messages = [b"message %d\n" % i for i in range(300)]
    wire = b"".join(frame(framing, m) for m in messages)
    assert len(wire) < 16384  # one sendall() of at most 16 KiB is one TLS record
    client.sendall(wire)
    expected = b"".join(frame(framing, m.upper()) for m in messages)
    assert recv_exactly(client, len(expected)) == expected
    assert handler.seen.messages == messages


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_raw_framing_echoes_every_byte_in_order(tls_servers, tls_material, transport):
    handler = echo_handler("raw", max_message_size=1000)
    server = tls_servers.start(handler, transport, **server_tls(tls_material))
    client = tls_servers.connect(server, tls_material.client_context())
    data = bytes(range(256)) * 20
    client.sendall(data[:1])  # a one-byte record
    client.sendall(data[1:])  # records cut at no message boundary
    assert recv_exactly(client, len(data)) == data.upper()
    assert b"".join(handler.seen.messages) == data
    assert all(0 < len(m) <= 1000 for m in handler.seen.messages)


def test_a_mebibyte_through_raw_framing_with_a_small_max_size(tls_servers, tls_material):
    handler = echo_handler("raw", max_message_size=4096)
    server = tls_servers.start(handler, **server_tls(tls_material))
    client = tls_servers.connect(server, tls_material.client_context())
    chunk = bytes(range(97, 123)) * 2521  # 65,546 bytes of lowercase letters
    received = bytearray()
    sent = 0
    while sent < 1 << 20:
        client.sendall(chunk)
        sent += len(chunk)
        received += recv_exactly(client, len(chunk))  # no reader thread: read what we sent
    assert bytes(received) == chunk.upper() * (sent // len(chunk))
    assert max(len(m) for m in handler.seen.messages) <= 4096
    assert sum(len(m) for m in handler.seen.messages) == sent
    # Counted as TLS records or as plaintext, either way at least what was sent; the engine
    # counts a write just after it returns, so the client may have the bytes a moment before.
    wait_for(lambda: server.stats()["bytes_out"] >= sent, f"bytes_out >= {sent}")
    assert server.stats()["bytes_in"] >= sent


@pytest.mark.parametrize("framing", ["line", "length32"])
def test_one_message_larger_than_a_tls_record_arrives_whole(tls_servers, tls_material, framing):
    handler = echo_handler(framing, max_message_size=300_000)
    server = tls_servers.start(handler, **server_tls(tls_material))
    client = tls_servers.connect(server, tls_material.client_context())
    message = b"b" * 200_000 + b"\n"  # over twelve 16 KiB records
    client.sendall(frame(framing, message))
    expected = frame(framing, message.upper())
    assert recv_exactly(client, len(expected)) == expected
    assert handler.seen.messages == [message]


def test_handler_threads_reply_over_tls(tls_servers, tls_material):
    handler = echo_handler()
    cls = type("Threaded", (ReactorTCPServer,), {"handler_threads": 2})
    server = tls_servers.start(handler, server_class=cls, **server_tls(tls_material))
    clients = [tls_servers.connect(server, tls_material.client_context()) for _ in range(3)]
    for round_ in range(20):
        for index, client in enumerate(clients):
            client.sendall(b"c%d r%d\n" % (index, round_))
        for index, client in enumerate(clients):
            expected = b"C%d R%d\n" % (index, round_)
            assert recv_exactly(client, len(expected)) == expected


def test_send_from_another_thread_reaches_an_idle_tls_client(tls_servers, tls_material):
    handler = echo_handler(reply=False)
    server = tls_servers.start(handler, **server_tls(tls_material))
    client = tls_servers.connect(server, tls_material.client_context())
    client.sendall(b"subscribe\n")
    wait_for(lambda: handler.seen.messages, "the first message")
    (connection,) = handler.seen.handles
    for index in range(5):  # pushed from this thread while the serving thread waits
        connection.send(b"push %d\n" % index)
        assert recv_exactly(client, 7) == b"push %d\n" % index


def test_many_clients_handshaking_at_once_are_all_served(tls_servers, tls_material):
    handler = echo_handler()
    server = tls_servers.start(handler, **server_tls(tls_material))
    count = 32
    raws = []
    for _ in range(count):  # every TCP connection first, then the handshakes interleave
        raw = socket.create_connection(server.server_address, timeout=TIMEOUT)
        tls_servers.clients.append(raw)
        raws.append(raw)
    results = [None] * count

    def talk(index):
        with tls_material.client_context().wrap_socket(
            raws[index], server_hostname="localhost"
        ) as client:
            client.sendall(b"client %d\n" % index)
            results[index] = recv_exactly(client, len(b"CLIENT %d\n" % index))

    errors = run_clients(count, talk, timeout=TIMEOUT * 2)
    assert not errors, errors
    assert results == [b"CLIENT %d\n" % i for i in range(count)]
    wait_for(lambda: server.stats()["tls_handshakes"] == count, f"{count} handshakes")


# --------------------------------------------------------------------------------------------
# Closing: close_notify both ways


def test_a_server_close_sends_close_notify(tls_servers, tls_material):
    handler = echo_handler(close_after=True)
    server = tls_servers.start(handler, **server_tls(tls_material))
    # suppress_ragged_eofs=False: an end of stream without close_notify raises SSLEOFError.
    client = tls_servers.connect(server, tls_material.client_context(), suppress_ragged_eofs=False)
    client.sendall(b"bye\n")
    assert read_to_end(client) == b"BYE\n"
    wait_for(lambda: handler.seen.finished == 1, "finish()")


def test_server_close_sends_close_notify_to_open_connections(tls_servers, tls_material):
    handler = echo_handler()
    server = tls_servers.start(handler, **server_tls(tls_material))
    client = tls_servers.connect(server, tls_material.client_context(), suppress_ragged_eofs=False)
    client.sendall(b"hi\n")
    assert recv_exactly(client, 3) == b"HI\n"
    assert tls_servers.stop(server) == []  # with the client still connected
    assert read_to_end(client) == b""
    assert handler.seen.finished == 1


def test_a_client_close_notify_delivers_the_last_unterminated_line(tls_servers, tls_material):
    handler = echo_handler(reply=False)
    server = tls_servers.start(handler, **server_tls(tls_material))
    client = tls_servers.connect(server, tls_material.client_context())
    client.sendall(b"whole\npartial")
    client.unwrap()  # sends close_notify and waits for the server's
    wait_for(lambda: handler.seen.finished == 1, "finish()")
    assert handler.seen.messages == [b"whole\n", b"partial"]


def test_an_idle_timeout_close_sends_close_notify(tls_servers, tls_material):
    handler = echo_handler()
    cls = type("Idle", (ReactorTCPServer,), {"idle_timeout": 0.2})
    server = tls_servers.start(handler, server_class=cls, **server_tls(tls_material))
    client = tls_servers.connect(server, tls_material.client_context(), suppress_ragged_eofs=False)
    client.sendall(b"then nothing\n")
    assert read_to_end(client) == b"THEN NOTHING\n"
    assert server.stats()["idle_timeouts"] == 1


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_a_client_resumes_its_session_on_a_new_connection(tls_servers, tls_material, version):
    handler = echo_handler()
    server = tls_servers.start(handler, **server_tls(tls_material))
    context = tls_material.client_context(version=VERSIONS[version])
    first = tls_servers.connect(server, context)
    first.sendall(b"one\n")
    assert recv_exactly(first, 4) == b"ONE\n"  # TLS 1.3: the tickets came before the reply
    session = first.session
    assert session is not None
    second = tls_servers.connect(server, context, session=session)
    second.sendall(b"two\n")
    assert recv_exactly(second, 4) == b"TWO\n"
    assert second.session_reused
    assert not first.session_reused
    assert server.stats()["tls_handshakes"] == 2


def test_a_reload_starts_a_fresh_session_cache(tls_servers, tls_material, tmp_path):
    cert, key = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copyfile(tls_material.server_cert, cert)
    shutil.copyfile(tls_material.server_key, key)
    server = tls_servers.start(echo_handler(), tls_certfile=cert, tls_keyfile=key)
    context = tls_material.client_context()
    first = tls_servers.connect(server, context)
    first.sendall(b"one\n")
    assert recv_exactly(first, 4) == b"ONE\n"

    shutil.copyfile(tls_material.second_server_cert, cert)
    shutil.copyfile(tls_material.second_server_key, key)
    server.reload_tls()  # from this thread while the server serves on another
    second = tls_servers.connect(server, context, session=first.session)
    second.sendall(b"two\n")
    assert recv_exactly(second, 4) == b"TWO\n"
    assert not second.session_reused  # the session belonged to the old configuration
    assert common_name(second.getpeercert()) == "server-two"
    first.sendall(b"still\n")  # the open connection is undisturbed
    assert recv_exactly(first, 6) == b"STILL\n"
    assert common_name(first.getpeercert()) == "server-one"


def test_a_client_half_close_still_gets_the_replies_to_its_last_messages(tls_servers, tls_material):
    """The client sends close_notify and goes on reading (a TLS half-close, which Python's
    ``SSLObject`` over memory BIOs can do): it gets every reply, the last unterminated line's
    too, then the server's close_notify, as a plain TCP client that shuts down its writing
    side gets the replies and then the end."""
    server = tls_servers.start(echo_handler(), **server_tls(tls_material))
    raw = socket.create_connection(server.server_address, timeout=TIMEOUT)
    tls_servers.clients.append(raw)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = tls_material.client_context().wrap_bio(incoming, outgoing, server_hostname="localhost")

    def pump(call):
        """``call()`` until it needs nothing more from the server; what it returned."""
        while True:
            try:
                result = call()
            except ssl.SSLWantReadError:
                raw.sendall(outgoing.read())
                chunk = raw.recv(1 << 16)
                if chunk:
                    incoming.write(chunk)
                else:
                    incoming.write_eof()
                continue
            raw.sendall(outgoing.read())
            return result

    pump(tls.do_handshake)
    tls.write(b"one\ntwo")
    with pytest.raises(ssl.SSLWantReadError):
        tls.unwrap()  # our close_notify is queued; the server's has not come yet
    raw.sendall(outgoing.read())
    received = bytearray()
    with pytest.raises(ssl.SSLZeroReturnError):  # the server's close_notify, not a bare EOF
        while True:
            received += pump(lambda: tls.read(1 << 16))
    assert bytes(received) == b"ONE\nTWO"


# --------------------------------------------------------------------------------------------
# openssl s_client


def s_client(port, *args, input_data=b"hello\n"):
    """Run ``openssl s_client`` against 127.0.0.1:port with our CA, sending ``input_data``
    and waiting for the server to close (``-ign_eof``); returns the CompletedProcess."""
    return subprocess.run(
        [
            required_tool("openssl"),
            "s_client",
            "-connect",
            f"{LOOPBACK}:{port}",
            "-servername",
            "localhost",
            "-verify_hostname",
            "localhost",
            "-verify_return_error",
            "-ign_eof",
            *args,
        ],
        input=input_data,
        capture_output=True,
        timeout=PROCESS_TIMEOUT,
        start_new_session=True,
        check=False,
    )


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_openssl_s_client_verifies_the_server_and_gets_the_echo(tls_servers, tls_material, version):
    handler = echo_handler(close_after=True)
    server = tls_servers.start(
        handler, **server_tls(tls_material, tls_alpn_protocols=["echo/1", "http/1.1"])
    )
    result = s_client(
        server.server_address[1],
        "-CAfile",
        str(tls_material.ca_cert),
        "-alpn",
        "http/1.1",
        f"-tls1_{version[-1]}",
    )
    out = result.stdout.decode(errors="replace")
    assert result.returncode == 0, out + result.stderr.decode(errors="replace")
    assert "HELLO\n" in out
    assert "Verify return code: 0 (ok)" in out
    assert re.search(rf"^New, TLSv{re.escape(version)}, Cipher is ", out, re.M), out
    assert "ALPN protocol: http/1.1" in out
    (seen,) = handler.seen.wait_connections(1)
    assert seen["tls_version"] == f"TLSv{version}"
    assert seen["alpn_protocol"] == "http/1.1"
    assert handler.seen.messages == [b"hello\n"]


class Interactive:
    """``openssl s_client`` in interactive mode (commands at the start of a line, such as
    ``K`` for a TLS 1.3 KeyUpdate), its stdout and stderr lines queued by reader threads so a
    test can wait for each answer instead of sleeping."""

    def __init__(self, port, *args):
        self.proc = subprocess.Popen(
            [required_tool("openssl"), "s_client", "-connect", f"{LOOPBACK}:{port}", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.lines = {"stdout": queue.Queue(), "stderr": queue.Queue()}
        self.seen = {"stdout": [], "stderr": []}
        self.readers = [
            threading.Thread(target=self._drain, args=(name,), daemon=True)
            for name in ("stdout", "stderr")
        ]
        for reader in self.readers:
            reader.start()

    def _drain(self, name):
        for line in getattr(self.proc, name):
            self.lines[name].put(line.decode(errors="replace").rstrip("\r\n"))
        self.lines[name].put(None)

    def send(self, line):
        self.proc.stdin.write(line)
        self.proc.stdin.flush()

    def wait_for_line(self, wanted, stream="stdout"):
        deadline = time.monotonic() + TIMEOUT
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines[stream].get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.seen[stream].append(line)
            if line == wanted:
                return
        raise AssertionError(f"no line {wanted!r} on {stream}; got {self.seen[stream]!r}")

    def all_lines(self, stream):
        """Every line of ``stream`` (once the process has ended and ``close()`` ran)."""
        while not self.lines[stream].empty():
            line = self.lines[stream].get()
            if line is not None:
                self.seen[stream].append(line)
        return self.seen[stream]

    def close(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=TIMEOUT)
        for reader in self.readers:
            reader.join(TIMEOUT)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()


@pytest.mark.parametrize("command", [b"K\n", b"k\n"], ids=["update-requested", "not-requested"])
def test_a_tls_1_3_key_update_from_openssl_keeps_the_connection_going(
    tls_servers, tls_material, command
):
    handler = echo_handler()
    server = tls_servers.start(handler, **server_tls(tls_material))
    client = Interactive(server.server_address[1], "-CAfile", str(tls_material.ca_cert), "-tls1_3")
    try:
        client.send(b"before\n")
        client.wait_for_line("BEFORE")
        client.send(command)  # KeyUpdate; K also asks the server to update its keys
        client.wait_for_line("KEYUPDATE", "stderr")
        client.send(b"after\n")
        client.wait_for_line("AFTER")
        client.send(b"Q\n")
        assert client.proc.wait(timeout=TIMEOUT) == 0
    finally:
        client.close()
    assert handler.seen.messages == [b"before\n", b"after\n"]


def test_tls_1_2_renegotiation_is_refused_and_the_server_goes_on(tls_servers, tls_material):
    handler = echo_handler()
    server = tls_servers.start(handler, **server_tls(tls_material))
    client = Interactive(server.server_address[1], "-CAfile", str(tls_material.ca_cert), "-tls1_2")
    try:
        client.send(b"before\n")
        client.wait_for_line("BEFORE")
        client.send(b"R\n")  # rustls does not renegotiate: a no_renegotiation alert
        assert client.proc.wait(timeout=TIMEOUT) != 0
    finally:
        client.close()
    assert any("no renegotiation" in line for line in client.all_lines("stderr"))
    other = tls_servers.connect(server, tls_material.client_context())
    other.sendall(b"next\n")
    assert recv_exactly(other, 5) == b"NEXT\n"


def test_openssl_s_client_with_a_client_certificate(tls_servers, tls_material):
    handler = echo_handler(close_after=True)
    server = tls_servers.start(
        handler, **server_tls(tls_material, tls_client_ca=tls_material.ca_cert)
    )
    result = s_client(
        server.server_address[1],
        "-CAfile",
        str(tls_material.ca_cert),
        "-cert",
        str(tls_material.client_cert),
        "-key",
        str(tls_material.client_key),
    )
    out = result.stdout.decode(errors="replace")
    assert result.returncode == 0, out + result.stderr.decode(errors="replace")
    assert "HELLO\n" in out
    assert handler.seen.wait_connections(1)[0]["peer_certificate"] == der_of(
        tls_material.client_cert
    )


def test_openssl_s_client_rejects_a_server_its_ca_did_not_sign(tls_servers, tls_material):
    # The server is verified against a CA bundle that is not the one that signed it:
    # s_client must refuse (so the "Verify return code: 0" above means something).
    handler = echo_handler(close_after=True)
    server = tls_servers.start(handler, **server_tls(tls_material))
    result = s_client(server.server_address[1], "-CAfile", str(tls_material.client_cert))
    out = result.stdout.decode(errors="replace")
    assert result.returncode != 0, out
    assert "HELLO" not in out
    assert handler.seen.messages == []


# --------------------------------------------------------------------------------------------
# curl to an HTTP-ish line handler


def http_handler():
    """A ``line`` handler that reads a request's head and answers its blank line with an
    HTTP/1.1 response naming the TLS version and ALPN protocol, then closes."""
    seen = Seen()

    class Http(MessageHandler):
        framing = "line"

        def setup(self):
            seen.add_connection(self.connection)

        def handle_message(self, line):
            seen.add_message(line)
            if line not in (b"\r\n", b"\n"):
                return None
            body = (
                f"hello over {self.connection.tls_version}, alpn {self.connection.alpn_protocol}\n"
            ).encode()
            self.send(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
            )
            self.close()
            return None

    Http.seen = seen
    return Http


def curl(port, material, *args):
    return subprocess.run(
        [
            required_tool("curl"),
            "--silent",
            "--show-error",
            "--verbose",
            "--max-time",
            str(PROCESS_TIMEOUT - 5),
            "--cacert",
            str(material.ca_cert),
            # localhost may resolve to ::1 first; the server is on 127.0.0.1 only.
            "--resolve",
            f"localhost:{port}:{LOOPBACK}",
            *args,
            f"https://localhost:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        start_new_session=True,
        check=False,
    )


def test_curl_fetches_a_response_over_tls(tls_servers, tls_material):
    handler = http_handler()
    server = tls_servers.start(handler, **server_tls(tls_material))
    result = curl(server.server_address[1], tls_material)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello over TLSv1.3, alpn None\n"
    assert handler.seen.messages[0] == b"GET / HTTP/1.1\r\n"
    assert handler.seen.messages[-1] == b"\r\n"


def test_curl_http1_1_over_tls_1_3(tls_servers, tls_material):
    handler = http_handler()
    server = tls_servers.start(handler, **server_tls(tls_material))
    result = curl(server.server_address[1], tls_material, "--http1.1", "--tlsv1.3")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello over TLSv1.3, alpn None\n"
    assert re.search(r"SSL connection using TLSv1\.3", result.stderr), result.stderr


def test_curl_over_tls_1_2(tls_servers, tls_material):
    handler = http_handler()
    server = tls_servers.start(handler, **server_tls(tls_material))
    result = curl(server.server_address[1], tls_material, "--tlsv1.2", "--tls-max", "1.2")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello over TLSv1.2, alpn None\n"


def test_curl_negotiates_http1_1_by_alpn(tls_servers, tls_material):
    handler = http_handler()
    server = tls_servers.start(handler, **server_tls(tls_material, tls_alpn_protocols=["http/1.1"]))
    # curl offers h2 and http/1.1; the server knows only http/1.1.
    result = curl(server.server_address[1], tls_material)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello over TLSv1.3, alpn http/1.1\n"
    assert re.search(r"ALPN.*server accepted (to use )?http/1\.1", result.stderr), result.stderr
    assert handler.seen.wait_connections(1)[0]["alpn_protocol"] == "http/1.1"


def test_curl_with_a_client_certificate_and_without(tls_servers, tls_material):
    handler = http_handler()
    server = tls_servers.start(
        handler, **server_tls(tls_material, tls_client_ca=tls_material.ca_cert)
    )
    port = server.server_address[1]
    mutual = curl(
        port,
        tls_material,
        "--cert",
        str(tls_material.client_cert),
        "--key",
        str(tls_material.client_key),
    )
    assert mutual.returncode == 0, mutual.stderr
    assert mutual.stdout == "hello over TLSv1.3, alpn None\n"
    assert handler.seen.wait_connections(1)[0]["peer_certificate"] == der_of(
        tls_material.client_cert
    )
    anonymous = curl(port, tls_material)
    assert anonymous.returncode != 0, anonymous
    assert anonymous.stdout == ""
    wait_for_failure(server, "certificate")


def test_curl_refuses_a_server_whose_ca_it_does_not_trust(tls_servers, tls_material):
    handler = http_handler()
    server = tls_servers.start(handler, **server_tls(tls_material))
    port = server.server_address[1]
    result = subprocess.run(
        [
            required_tool("curl"),
            "--silent",
            "--max-time",
            str(PROCESS_TIMEOUT - 5),
            "--resolve",
            f"localhost:{port}:{LOOPBACK}",
            f"https://localhost:{port}/",
        ],
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        start_new_session=True,
        check=False,
    )
    assert result.returncode == 60, result  # CURLE_PEER_FAILED_VERIFICATION
    assert handler.seen.messages == []


# --------------------------------------------------------------------------------------------
# Configuration: class attributes, keywords and errors at construction


def test_class_attributes_configure_tls(tls_servers, tls_material):
    cls = type(
        "Configured",
        (ReactorTCPServer,),
        {
            "tls_certfile": tls_material.server_cert,
            "tls_keyfile": tls_material.server_key,
            "tls_alpn_protocols": ("echo/1",),
            "tls_client_ca": tls_material.ca_cert,
        },
    )
    handler = echo_handler()
    server = tls_servers.start(handler, server_class=cls)
    client = tls_servers.connect(
        server, tls_material.client_context(alpn=["echo/1"], client_cert=True)
    )
    client.sendall(b"x\n")
    assert recv_exactly(client, 2) == b"X\n"
    assert common_name(client.getpeercert()) == "server-one"
    seen = handler.seen.wait_connections(1)[0]
    assert seen["alpn_protocol"] == "echo/1"
    assert seen["peer_certificate"] == der_of(tls_material.client_cert)


def test_keyword_arguments_override_class_attributes(tls_servers, tls_material):
    cls = type(
        "Configured",
        (ReactorTCPServer,),
        {"tls_certfile": tls_material.server_cert, "tls_keyfile": tls_material.server_key},
    )
    server = tls_servers.start(
        echo_handler(),
        server_class=cls,
        tls_certfile=tls_material.second_server_cert,
        tls_keyfile=tls_material.second_server_key,
    )
    assert server.tls_certfile == tls_material.second_server_cert
    assert cls.tls_certfile == tls_material.server_cert  # the class is untouched
    client = tls_servers.connect(server, tls_material.client_context())
    client.sendall(b"x\n")
    assert recv_exactly(client, 2) == b"X\n"
    assert common_name(client.getpeercert()) == "server-two"


def test_a_keyword_none_turns_off_tls_a_class_attribute_turned_on(tls_servers, tls_material):
    cls = type(
        "Configured",
        (ReactorTCPServer,),
        {"tls_certfile": tls_material.server_cert, "tls_keyfile": tls_material.server_key},
    )
    handler = echo_handler()
    server = tls_servers.start(handler, server_class=cls, tls_certfile=None)
    with socket.create_connection(server.server_address, timeout=TIMEOUT) as client:
        client.sendall(b"plain\n")
        assert recv_exactly(client, 6) == b"PLAIN\n"
    assert handler.seen.wait_connections(1)[0]["tls_version"] is None


def test_a_plain_reactor_server_reports_no_tls(tls_servers):
    handler = echo_handler()
    server = tls_servers.start(handler)
    with socket.create_connection(server.server_address, timeout=TIMEOUT) as client:
        client.sendall(b"plain\n")
        assert recv_exactly(client, 6) == b"PLAIN\n"
    seen = handler.seen.wait_connections(1)[0]
    assert seen == {"tls_version": None, "alpn_protocol": None, "peer_certificate": None}
    stats = server.stats()
    assert stats["tls_handshakes"] == 0
    assert set(stats["tls_handshake_failures"].values()) == {0}
    assert set(stats["tls_handshake_failures"]) == {"timeout", "closed", "protocol", "certificate"}


def test_bytes_in_counts_what_a_failed_handshake_read(tls_servers, tls_material):
    server = tls_servers.start(echo_handler(), **server_tls(tls_material))
    garbage = b"GET / HTTP/1.0\r\n\r\n"
    with socket.create_connection(server.server_address, timeout=TIMEOUT) as client:
        client.sendall(garbage)
        assert client.recv(100).startswith(b"\x15\x03")  # a TLS alert record, then the close
    wait_for_failure(server, "protocol")
    stats = server.stats()
    assert stats["bytes_out"] >= 7  # the alert
    assert stats["bytes_in"] >= len(garbage)


def test_tls_config_error_is_a_value_error_exported_by_the_package():
    assert issubclass(socketserver_rs.TLSConfigError, ValueError)
    assert socketserver_rs.TLSConfigError is socketserver_rs._core.TLSConfigError


def free_port():
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def not_pem(tmp_path):
    path = tmp_path / "not.pem"
    path.write_text("this is not a PEM file\n")
    return path


# (id, keyword arguments from (material, tmp_path), the path the message names, a key phrase)
BAD_CONFIGURATIONS = [
    (
        "missing-cert",
        lambda m, t: {"tls_certfile": t / "nope.crt", "tls_keyfile": m.server_key},
        lambda m, t: t / "nope.crt",
        "no such file",
    ),
    (
        "missing-key",
        lambda m, t: {"tls_certfile": m.server_cert, "tls_keyfile": t / "nope.key"},
        lambda m, t: t / "nope.key",
        "no such file",
    ),
    (
        "pem-without-key",
        lambda m, t: {"tls_certfile": m.server_cert, "tls_keyfile": None},
        lambda m, t: m.server_cert,
        "no private key",
    ),
    (
        "key-file-without-key",
        lambda m, t: {"tls_certfile": m.server_cert, "tls_keyfile": m.ca_cert},
        lambda m, t: m.ca_cert,
        "no private key",
    ),
    (
        "cert-file-without-cert",
        lambda m, t: {"tls_certfile": m.server_key, "tls_keyfile": m.server_key},
        lambda m, t: m.server_key,
        "no certificate",
    ),
    (
        "cert-file-not-pem",
        lambda m, t: {"tls_certfile": not_pem(t), "tls_keyfile": m.server_key},
        lambda m, t: t / "not.pem",
        "no certificate",
    ),
    (
        "key-does-not-match",
        lambda m, t: {"tls_certfile": m.server_cert, "tls_keyfile": m.unrelated_key},
        lambda m, t: m.unrelated_key,
        "does not match",
    ),
    (
        "directory-as-cert",
        lambda m, t: {"tls_certfile": t, "tls_keyfile": m.server_key},
        lambda m, t: t,
        "",
    ),
    (
        "client-ca-without-cert",
        lambda m, t: {**server_tls(m), "tls_client_ca": m.client_key},
        lambda m, t: m.client_key,
        "no certificate",
    ),
    (
        "missing-client-ca",
        lambda m, t: {**server_tls(m), "tls_client_ca": t / "nope-ca.crt"},
        lambda m, t: t / "nope-ca.crt",
        "no such file",
    ),
]


@pytest.mark.parametrize(
    ("make_kwargs", "named", "phrase"),
    [case[1:] for case in BAD_CONFIGURATIONS],
    ids=[case[0] for case in BAD_CONFIGURATIONS],
)
def test_bad_files_fail_at_construction_naming_the_file(
    tls_material, tmp_path, make_kwargs, named, phrase
):
    kwargs = make_kwargs(tls_material, tmp_path)
    port = free_port()
    before = open_fds()
    with pytest.raises(socketserver_rs.TLSConfigError) as caught:
        ReactorTCPServer((LOOPBACK, port), echo_handler(), **kwargs)
    message = str(caught.value)
    assert f"'{named(tls_material, tmp_path)}'" in message, message
    assert phrase in message.lower(), message
    assert isinstance(caught.value, ValueError)
    if phrase == "no such file":
        assert isinstance(caught.value.__cause__, FileNotFoundError)
    assert open_fds() == before
    with socket.socket() as again:  # nothing was left bound to the port
        again.bind((LOOPBACK, port))


@pytest.mark.parametrize("bad", ["1.1", "1.0", "TLSv1.3", "", ssl.TLSVersion.TLSv1_1])
def test_a_bad_min_version_fails_at_construction(tls_material, bad):
    port = free_port()
    before = open_fds()
    with pytest.raises(socketserver_rs.TLSConfigError, match="tls_min_version"):
        ReactorTCPServer(
            (LOOPBACK, port), echo_handler(), **server_tls(tls_material, tls_min_version=bad)
        )
    assert open_fds() == before
    with socket.socket() as again:
        again.bind((LOOPBACK, port))


def test_a_bad_configuration_in_class_attributes_fails_the_same_way(tls_material, tmp_path):
    cls = type(
        "Configured",
        (ReactorTCPServer,),
        {"tls_certfile": tls_material.server_cert, "tls_keyfile": tls_material.unrelated_key},
    )
    with pytest.raises(socketserver_rs.TLSConfigError, match="does not match"):
        cls((LOOPBACK, 0), echo_handler())


def test_udp_with_tls_is_refused_at_construction(tls_material):
    port = free_port()
    before = open_fds()
    with pytest.raises(ValueError, match=r"(?i)tls"):
        ReactorUDPServer((LOOPBACK, port), echo_handler(), **server_tls(tls_material))
    assert open_fds() == before
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind((LOOPBACK, port))
