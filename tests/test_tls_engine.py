"""TLS on reactor stream servers, as the engine does it (issue 14): echo over TCP and Unix
sockets in every framing, hostile clients (silent, garbage, hanging up mid-handshake, no
client certificate), the handshake failure counters, close_notify, backpressure, idle
timeouts, handler threads, certificate reload (``reload_tls()`` and prefork SIGHUP) and
descriptor hygiene. socketserver_rs only: the stdlib has no reactor.

Python's ``ssl`` module is the client; certificates come from the ``tls_material`` session
fixture (``_tls_material.py``). Tests against other clients (``openssl s_client``, ``curl``)
and of construction errors live in their own files.

Every wait is bounded; every server is shut down and closed by the ``serve`` fixture, and
child processes are killed by their PID if a test fails.
"""

import ast
import contextlib
import os
import select
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from socketserver_rs import MessageHandler, ReactorTCPServer, TLSConfigError

HAS_UNIX = hasattr(socket, "AF_UNIX")
if HAS_UNIX:
    from socketserver_rs import ReactorUnixStreamServer

LOOPBACK = "127.0.0.1"
TIMEOUT = 5.0
STOP_TIMEOUT = 5.0
HAS_PROC_FD = os.path.isdir("/proc/self/fd")

FAMILIES = [
    "tcp",
    pytest.param("unix", marks=pytest.mark.skipif(not HAS_UNIX, reason="no AF_UNIX")),
]


class Events:
    """What handlers did, with bounded waiting."""

    def __init__(self):
        self.cond = threading.Condition()
        self.log = []

    def add(self, *event):
        with self.cond:
            self.log.append(event)
            self.cond.notify_all()

    def count(self, kind):
        with self.cond:
            return sum(1 for event in self.log if event[0] == kind)

    def of(self, kind):
        with self.cond:
            return [event[1:] for event in self.log if event[0] == kind]


def make_handler(framing="line", **attrs):
    """An echo handler (replies upper-cased) that records its life cycle in ``events``."""
    events = Events()

    class Handler(MessageHandler):
        def __init__(self, connection, client_address, server):
            events.add("made")
            super().__init__(connection, client_address, server)

        def setup(self):
            conn = self.connection
            events.add(
                "setup", conn.tls_version, conn.alpn_protocol, conn.peer_certificate is not None
            )

        def handle_message(self, message):
            events.add("message", message)
            if message.strip() == b"bye":
                self.close()
                return None
            if message.startswith(b"quiet"):
                return None
            return message.upper()

        def finish(self):
            events.add("finish")

    Handler.framing = framing
    Handler.events = events
    for name, value in attrs.items():
        setattr(Handler, name, value)
    return Handler


class Served:
    def __init__(self, server, family, material):
        self.server = server
        self.family = family
        self.material = material
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)
        self.thread.start()
        self.sockets = []

    def raw(self):
        """A plain socket connected to the server (no TLS)."""
        if self.family == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(TIMEOUT)
            sock.connect(self.server.server_address)
        else:
            sock = socket.create_connection(self.server.server_address, timeout=TIMEOUT)
        self.sockets.append(sock)
        return sock

    def tls(self, context=None, **options):
        """A TLS client that has finished its handshake."""
        context = context or self.material.client_context(**options)
        sock = context.wrap_socket(self.raw(), server_hostname="localhost")
        self.sockets.append(sock)
        return sock

    def stats(self):
        return self.server.stats()

    def wait_stats(self, predicate, what, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while not predicate(self.stats()):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}: {self.stats()}")
            time.sleep(0.01)

    def stop(self):
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self.server.shutdown()
        self.thread.join(STOP_TIMEOUT)
        self.server.server_close()
        assert not self.thread.is_alive()


@pytest.fixture
def serve(tls_material, tmp_path):
    started = []

    def start(family, handler, **kwargs):
        """Serve ``handler`` over TLS; ``tls_*`` keywords go to the constructor, other
        keywords become class attributes of the server."""
        tls = {name: kwargs.pop(name) for name in list(kwargs) if name.startswith("tls_")}
        tls.setdefault("tls_certfile", tls_material.server_cert)
        tls.setdefault("tls_keyfile", tls_material.server_key)
        base = ReactorUnixStreamServer if family == "unix" else ReactorTCPServer
        server_class = type("Server", (base,), kwargs)
        address = str(tmp_path / f"s{len(started)}") if family == "unix" else (LOOPBACK, 0)
        server = server_class(address, handler, **tls)
        served = Served(server, family, tls_material)
        started.append(served)
        return served

    yield start
    for served in started:
        served.stop()


def frame(framing, payload):
    if framing == "length32":
        return struct.pack(">I", len(payload)) + payload
    return payload


def recv_exactly(sock, size):
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


def read_until_closed(sock):
    """Everything until end of stream; an ``SSLEOFError`` (no close_notify) propagates."""
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def failures(served):
    return served.stats()["tls_handshake_failures"]


def open_fds():
    return len(os.listdir("/proc/self/fd"))


# --------------------------------------------------------------------------------------------
# The data path


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("framing", ["raw", "line", "length32"])
def test_echo_over_tls_keeps_the_framing(serve, family, framing):
    handler = make_handler(framing, max_message_size=1 << 20)
    served = serve(family, handler)
    client = served.tls()
    payloads = [b"hello\n", bytes(range(256)) * 40 + b"\n", b"x" * 70000 + b"\n"]
    for payload in payloads:
        client.sendall(frame(framing, payload))
        expected = frame(framing, payload.upper())
        assert recv_exactly(client, len(expected)) == expected
    if framing == "line":
        # Many messages in one write, and one split over many records.
        client.sendall(b"a\nb\nc\n")
        assert recv_exactly(client, 6) == b"A\nB\nC\n"
        for piece in (b"sp", b"li", b"t\n"):
            client.sendall(piece)
        assert recv_exactly(client, 6) == b"SPLIT\n"
    (setup,) = handler.events.of("setup")
    assert setup == ("TLSv1.3", None, False)
    stats = served.stats()
    assert stats["tls_handshakes"] == 1
    assert sum(failures(served).values()) == 0


def test_the_connection_handle_reports_version_alpn_and_client_certificate(serve, tls_material):
    handler = make_handler()
    served = serve(
        "tcp",
        handler,
        tls_client_ca=tls_material.ca_cert,
        tls_alpn_protocols=["h2", "echo"],
    )
    client = served.tls(alpn=["echo"], client_cert=True, version=ssl.TLSVersion.TLSv1_2)
    client.sendall(b"ping\n")
    assert recv_exactly(client, 5) == b"PING\n"
    assert handler.events.of("setup") == [("TLSv1.2", "echo", True)]
    assert client.version() == "TLSv1.2" and client.selected_alpn_protocol() == "echo"


def test_a_peer_close_notify_ends_the_stream_and_is_answered_with_close_notify(serve):
    handler = make_handler()
    served = serve("tcp", handler)
    client = served.tls()
    client.sendall(b"one\nquiet: last line without newline")
    assert recv_exactly(client, 4) == b"ONE\n"
    # unwrap() sends our close_notify and waits for the server's: it raises if the server
    # closed the TCP stream without one.
    plain = client.unwrap()
    assert handler.events.of("message")[-1] == (b"quiet: last line without newline",)
    plain.settimeout(TIMEOUT)
    assert plain.recv(100) == b""  # the server closed the socket after its close_notify
    plain.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_server_side_close_sends_close_notify(serve, family):
    handler = make_handler()
    served = serve(family, handler)
    client = served.tls()
    client.sendall(b"hi\nbye\n")
    # A clean end: recv() returns b"" (an end without close_notify raises SSLEOFError).
    assert read_until_closed(client) == b"HI\n"
    served.wait_stats(lambda s: s["active_connections"] == 0, "the close")


@pytest.mark.parametrize("how", ["reset", "fin_without_close_notify"])
def test_a_peer_that_vanishes_mid_stream_is_closed_quietly(serve, how, capsys):
    handler = make_handler()
    served = serve("tcp", handler)
    client = served.tls()
    client.sendall(b"one\n")
    assert recv_exactly(client, 4) == b"ONE\n"
    raw = socket.socket(fileno=client.detach())  # the TCP socket, without TLS's goodbye
    if how == "reset":
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    served.wait_stats(lambda s: s["active_connections"] == 0, "the close")
    assert handler.events.count("finish") == 1
    assert served.stats()["handler_errors"] == 0
    assert "Traceback" not in capsys.readouterr().err
    other = served.tls()
    other.sendall(b"two\n")
    assert recv_exactly(other, 4) == b"TWO\n"


def test_idle_timeout_holds_over_tls_and_closes_with_close_notify(serve):
    idle = 0.3
    handler = make_handler()
    served = serve("tcp", handler, idle_timeout=idle)
    silent = served.tls()
    active = served.tls()
    started = time.monotonic()
    # (A readable socket proves nothing here: TLS 1.3 session tickets follow the handshake.)
    while served.stats()["idle_timeouts"] == 0:
        assert time.monotonic() - started < TIMEOUT, "the idle connection was never closed"
        active.sendall(b"ping\n")
        assert recv_exactly(active, 5) == b"PING\n"
        time.sleep(0.02)
    assert time.monotonic() - started >= idle * 0.8
    assert read_until_closed(silent) == b""  # with a close_notify: no SSLEOFError
    active.sendall(b"still here\n")
    assert recv_exactly(active, 11) == b"STILL HERE\n"
    assert served.stats()["idle_timeouts"] == 1


def test_handler_threads_over_tls_answer_every_client_in_order(serve):
    handler = make_handler()
    served = serve("tcp", handler, handler_threads=4)
    clients = [served.tls() for _ in range(4)]
    results = {}

    def talk(index, client):
        lines = [b"c%d m%d\n" % (index, i) for i in range(200)]
        client.sendall(b"".join(lines))
        expected = b"".join(lines).upper()
        results[index] = recv_exactly(client, len(expected)) == expected

    threads = [threading.Thread(target=talk, args=item) for item in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 2)
    assert results == {0: True, 1: True, 2: True, 3: True}
    # A worker counts its batch after sending the replies.
    served.wait_stats(lambda s: s["requests"] == 800, "every message counted")


def test_a_client_that_never_reads_cannot_make_a_tls_server_buffer_without_bound(serve):
    reply_size = 32 * 1024
    count = 3000  # ~96 MiB of replies asked for
    limit = 256 * 1024

    class Big(MessageHandler):
        framing = "line"

        def handle_message(self, message):
            head = message.strip() + b":"
            return head + b"y" * (reply_size - len(head) - 1) + b"\n"

    served = serve("tcp", Big, write_buffer_limit=limit)
    slow = served.tls()
    slow.sendall(b"".join(b"%d\n" % i for i in range(count)))
    # The server answers until the output passes the limit, then stops reading: what it
    # has handled is bounded by the limit plus what the kernel buffers hold.
    served.wait_stats(lambda s: s["backpressure_pauses"] >= 1, "a backpressure pause")
    # Once the kernel's buffers are full too, the server handles nothing more.
    handled, deadline = -1, time.monotonic() + 10
    while (now := served.stats()["requests"]) != handled:
        assert time.monotonic() < deadline, "the server kept handling for a silent client"
        handled = now
        time.sleep(0.3)
    assert handled < count // 3, f"{handled} of {count} replies were made for a silent client"
    # Another client is served meanwhile.
    other = served.tls()
    other.sendall(b"ping\n")
    assert recv_exactly(other, reply_size).startswith(b"ping:")
    # Once the client reads, every reply comes, in order.
    slow.settimeout(10)
    buffer = bytearray()
    for i in range(count):
        while len(buffer) < reply_size:
            chunk = slow.recv(1 << 20)
            assert chunk, f"EOF after {i} replies"
            buffer += chunk
        assert buffer.startswith(b"%d:" % i)
        del buffer[:reply_size]
    assert served.stats()["requests"] == count + 1


# --------------------------------------------------------------------------------------------
# Hostile clients and the failure counters


def test_a_client_that_never_finishes_the_handshake_is_closed_without_a_python_call(serve):
    handler = make_handler()
    served = serve("tcp", handler, tls_handshake_timeout=0.3)
    silent = served.raw()
    started = time.monotonic()
    assert silent.recv(100) == b""  # closed by the server
    waited = time.monotonic() - started
    assert 0.2 <= waited < 3.0, waited
    served.wait_stats(lambda s: s["tls_handshake_failures"]["timeout"] == 1, "the count")
    assert handler.events.log == []  # no handler made, no setup, no finish
    stats = served.stats()
    assert stats["accepted"] == 1 and stats["active_connections"] == 0
    assert stats["tls_handshakes"] == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_garbage_instead_of_a_client_hello_closes_that_connection_only(serve, family):
    handler = make_handler()
    served = serve(family, handler)
    good = served.tls()
    good.sendall(b"before\n")
    assert recv_exactly(good, 7) == b"BEFORE\n"
    bad = served.raw()
    bad.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    bad.settimeout(TIMEOUT)
    with contextlib.suppress(ConnectionResetError):
        while bad.recv(4096):  # an alert, then the end
            pass
    served.wait_stats(lambda s: s["tls_handshake_failures"]["protocol"] == 1, "the failure")
    good.sendall(b"after\n")
    assert recv_exactly(good, 6) == b"AFTER\n"
    assert handler.events.count("made") == 1


def test_a_peer_that_hangs_up_mid_handshake_counts_as_closed(serve):
    handler = make_handler()
    served = serve("tcp", handler)
    client = served.raw()
    client.sendall(b"\x16\x03\x01\x00\xff")  # the start of a handshake record
    client.close()
    served.wait_stats(lambda s: s["tls_handshake_failures"]["closed"] == 1, "the failure")
    assert handler.events.log == []


def test_no_shared_version_counts_as_protocol(serve, tls_material):
    served = serve("tcp", make_handler(), tls_min_version=ssl.TLSVersion.TLSv1_3)
    with pytest.raises(ssl.SSLError):
        served.tls(version=ssl.TLSVersion.TLSv1_2)
    served.wait_stats(lambda s: s["tls_handshake_failures"]["protocol"] == 1, "the failure")
    assert served.tls().version() == "TLSv1.3"


def test_a_missing_client_certificate_counts_as_certificate(serve, tls_material):
    handler = make_handler()
    served = serve("tcp", handler, tls_client_ca=tls_material.ca_cert)
    # TLS 1.3: the client's side of the handshake is done before the server checks it.
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        client = served.tls()
        client.sendall(b"hi\n")
        client.recv(100)
    served.wait_stats(lambda s: s["tls_handshake_failures"]["certificate"] == 1, "the failure")
    assert handler.events.log == []
    with_cert = served.tls(client_cert=True)
    with_cert.sendall(b"hi\n")
    assert recv_exactly(with_cert, 3) == b"HI\n"


def test_an_optional_client_certificate_may_be_left_out(serve, tls_material):
    handler = make_handler()
    served = serve(
        "tcp", handler, tls_client_ca=tls_material.ca_cert, tls_require_client_cert=False
    )
    for client_cert in (False, True):
        client = served.tls(client_cert=client_cert)
        client.sendall(b"hi\n")
        assert recv_exactly(client, 3) == b"HI\n"
    assert [present for (_, _, present) in handler.events.of("setup")] == [False, True]


def test_handshakes_count_toward_max_connections(serve):
    handler = make_handler()
    served = serve("tcp", handler, max_connections=2)
    silent = [served.raw(), served.raw()]
    served.wait_stats(lambda s: s["accepted"] == 2, "two accepts")
    waiting = served.raw()  # completes in the kernel's backlog
    context = served.material.client_context()
    waiting.settimeout(0.5)
    with pytest.raises(TimeoutError):
        context.wrap_socket(waiting, server_hostname="localhost")
    silent[0].close()
    client = served.tls()
    client.sendall(b"in\n")
    assert recv_exactly(client, 3) == b"IN\n"


@pytest.mark.skipif(not HAS_PROC_FD, reason="counts descriptors in /proc/self/fd")
def test_failed_handshakes_leave_no_descriptor_behind(serve):
    served = serve("tcp", make_handler(), tls_handshake_timeout=0.5)
    served.tls().close()  # warm up: the poller and the first connection exist
    served.wait_stats(lambda s: s["active_connections"] == 0, "the warm-up close")
    before = open_fds()
    rounds = 150
    for i in range(rounds):
        sock = socket.create_connection(served.server.server_address, timeout=TIMEOUT)
        if i % 3 == 0:
            sock.sendall(b"garbage garbage garbage\r\n\r\n")
        elif i % 3 == 1:
            sock.sendall(b"\x16\x03\x01")
        sock.close()
    silent = [served.raw() for _ in range(5)]  # closed by the handshake timeout
    served.wait_stats(
        lambda s: sum(s["tls_handshake_failures"].values()) == rounds + 5, "every failure"
    )
    for sock in silent:
        sock.close()
    served.sockets.clear()
    assert served.stats()["active_connections"] == 0
    assert open_fds() <= before


@pytest.mark.skipif(not HAS_PROC_FD, reason="counts descriptors in /proc/self/fd")
def test_server_close_closes_connections_still_handshaking(tls_material):
    before = open_fds()
    server = ReactorTCPServer(
        (LOOPBACK, 0),
        make_handler(),
        tls_certfile=tls_material.server_cert,
        tls_keyfile=tls_material.server_key,
    )
    served = Served(server, "tcp", tls_material)
    silent = [socket.create_connection(server.server_address, timeout=TIMEOUT) for _ in range(4)]
    served.wait_stats(lambda s: s["accepted"] == 4, "the accepts")
    served.stop()
    for sock in silent:
        sock.settimeout(TIMEOUT)
        assert sock.recv(100) == b""
        sock.close()
    assert open_fds() <= before
    assert server.stats()["active_connections"] == 0


# --------------------------------------------------------------------------------------------
# Certificate reload


def peer_name(sock):
    subject = dict(item[0] for item in sock.getpeercert()["subject"])
    return subject["commonName"]


def test_reload_tls_serves_new_handshakes_with_the_new_certificate(serve, tls_material):
    served = serve("tcp", make_handler())
    first = served.tls()
    assert peer_name(first) == "server-one"
    served.server.tls_certfile = tls_material.second_server_cert
    served.server.tls_keyfile = tls_material.second_server_key
    served.server.reload_tls()
    second = served.tls()
    assert peer_name(second) == "server-two"
    # The open connection is not disturbed.
    first.sendall(b"still\n")
    assert recv_exactly(first, 6) == b"STILL\n"
    # A failed reload keeps the configuration in use.
    served.server.tls_keyfile = tls_material.unrelated_key
    with pytest.raises(TLSConfigError, match="does not match"):
        served.server.reload_tls()
    assert peer_name(served.tls()) == "server-two"
    # (The client may be done before the server has read its Finished.)
    served.wait_stats(lambda s: s["tls_handshakes"] == 3, "three handshakes")


def test_reload_tls_reaches_a_connection_made_while_a_backlog_is_being_accepted(
    serve, tls_material
):
    # The reactor accepts a backlog in batches. A reload that lands mid-batch must still reach
    # every connection made after reload_tls() returned: the certificate in use was once read
    # once per batch, so a client that connected just after a reload could get the old one.
    stalled, release = threading.Event(), threading.Event()

    class StallingHandler(MessageHandler):
        def handle_message(self, message):
            stalled.set()  # the loop thread is held here: new clients queue in the backlog
            release.wait(TIMEOUT)
            return b"ok\n"

    served = serve(
        "tcp",
        StallingHandler,
        tls_certfile=tls_material.rsa_server_cert,  # RSA: each handshake costs the loop ~1 ms
        tls_keyfile=tls_material.rsa_server_key,
    )
    staller = served.tls()
    staller.sendall(b"stall\n")
    assert stalled.wait(TIMEOUT)
    context = tls_material.client_context()
    backlog = []
    for _ in range(150):
        sock = context.wrap_socket(
            served.raw(), server_hostname="localhost", do_handshake_on_connect=False
        )
        sock.setblocking(False)
        with pytest.raises(ssl.SSLWantReadError):
            sock.do_handshake()  # the ClientHello is sent: the loop has crypto to do for it
        backlog.append(sock)
    release.set()
    served.wait_stats(lambda s: s["accepted"] >= 3, "the backlog's first accepts", TIMEOUT)
    served.server.tls_certfile = tls_material.second_server_cert
    served.server.tls_keyfile = tls_material.second_server_key
    served.server.reload_tls()
    assert served.stats()["accepted"] < 1 + len(backlog), "the batch ended before the reload"
    assert peer_name(served.tls()) == "server-two"
    assert recv_exactly(staller, 3) == b"ok\n"
    for sock in backlog:
        sock.close()


def test_reload_tls_without_tls_is_a_value_error():
    with ReactorTCPServer((LOOPBACK, 0), make_handler()) as server:
        with pytest.raises(ValueError, match="TLS is not enabled"):
            server.reload_tls()


PREFORK_SERVER = str(Path(__file__).with_name("_prefork_server.py"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="prefork needs fork")
def test_prefork_sighup_reloads_the_certificates(tls_material, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    shutil.copy(tls_material.server_cert, cert)
    shutil.copy(tls_material.server_key, key)
    proc = subprocess.Popen(
        [
            sys.executable,
            PREFORK_SERVER,
            "reactor",
            "1",
            f"tls_certfile={str(cert)!r}",
            f"tls_keyfile={str(key)!r}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert select.select([proc.stdout], [], [], 30)[0], "the server did not start"
        line = proc.stdout.readline().decode()
        assert line.startswith("READY "), (line, proc.stderr.read() if proc.poll() else b"")
        address = ast.literal_eval(line.split(" ", 1)[1])
        context = tls_material.client_context()

        def name_served():
            with socket.create_connection(address, timeout=TIMEOUT) as raw:
                with context.wrap_socket(raw, server_hostname="localhost") as sock:
                    sock.sendall(b"hi\n")
                    assert sock.recv(100).endswith(b" hi\n")
                    return peer_name(sock)

        def wait_for_name(expected):
            deadline = time.monotonic() + 15
            while (name := name_served()) != expected:
                assert time.monotonic() < deadline, f"still {name} after SIGHUP"
                time.sleep(0.1)

        assert name_served() == "server-one"
        shutil.copy(tls_material.second_server_cert, cert)
        shutil.copy(tls_material.second_server_key, key)
        proc.send_signal(signal.SIGHUP)
        wait_for_name("server-two")
        # A broken file: the reload fails, is reported, and the workers keep serving.
        key.write_text("not a key\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert name_served() == "server-two"
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        stderr = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
    assert "reloading TLS certificates failed" in stderr, stderr
    assert "tls_keyfile" in stderr and str(key) in stderr, stderr
