"""Reactor servers (``ReactorTCPServer``, ``ReactorUnixStreamServer``, ``ReactorUDPServer``)
over real loopback sockets. socketserver_rs only: the stdlib has no reactor.

The framer itself is unit-tested in Rust (``rust/framing.rs``) and property-tested through a
server in ``test_framing_properties.py``; here each behaviour is checked end to end: framing
edge cases as clients really produce them (byte-by-byte writes, many messages per write, EOF
in the middle of a message), limits, errors, the handler life cycle, cross-thread
``send()``/``close()``, backpressure against a client that never reads, idle timeouts,
connection limits, ``shutdown()``/``server_close()`` and ``KeyboardInterrupt``.

Every wait is bounded; every server is shut down and closed by the ``reactor`` fixture, and
the one child process (the backpressure test, which needs the server's own RSS) is killed
by its PID if the test fails.
"""

import contextlib
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest
from socketserver_rs import MessageHandler, ReactorTCPServer, ReactorUDPServer

HAS_UNIX = hasattr(socket, "AF_UNIX")
if HAS_UNIX:
    from socketserver_rs import ReactorUnixStreamServer

LOOPBACK = "127.0.0.1"
# How long a client waits for anything before the test fails.
TIMEOUT = 5.0
# How long shutdown()/join() may take before we call it a hang.
STOP_TIMEOUT = 5.0

# Every byte value but the newline, then a newline: one line, and one length32 payload.
BINARY_LINE = bytes(b for b in range(256) if b != 10) + b"\n"

STREAM_FAMILIES = [
    "tcp",
    pytest.param("unix", marks=pytest.mark.skipif(not HAS_UNIX, reason="no AF_UNIX")),
]


# --------------------------------------------------------------------------------------------
# Recording handlers and servers


class Recorder:
    """Thread-safe event log: ``(kind, handler, *details)`` tuples, with bounded waiting."""

    def __init__(self):
        self.cond = threading.Condition()
        self.events = []

    def add(self, kind, *details):
        with self.cond:
            self.events.append((kind, *details))
            self.cond.notify_all()

    def of(self, kind):
        with self.cond:
            return [event[1:] for event in self.events if event[0] == kind]

    def count(self, kind):
        return len(self.of(kind))

    def wait_for(self, predicate, what, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}; events: {self.events!r}")
                self.cond.wait(left)

    def wait_count(self, kind, n, timeout=TIMEOUT):
        self.wait_for(lambda: self.count(kind) >= n, f"{n} {kind!r} event(s)", timeout)

    def messages(self, handler=None):
        return [m for h, m in self.of("message") if handler is None or h is handler]

    def handlers(self):
        """Handlers in the order their setup() ran."""
        return [event[0] for event in self.of("setup")]

    def errors(self):
        """``(handler, client_address, exception)`` for each handle_error() call."""
        return self.of("error")


def make_handler(framing="line", max_message_size=65536, on_message=None, base=MessageHandler):
    """A handler class recording setup/message/finish into its own ``recorder``. Replies with
    ``on_message(self, message)`` if given, else with the message uppercased."""
    recorder = Recorder()

    class Handler(base):
        def setup(self):
            recorder.add("setup", self)

        def handle_message(self, message):
            recorder.add("message", self, message)
            if on_message is None:
                return message.upper()
            return on_message(self, message)

        def finish(self):
            recorder.add("finish", self)

    Handler.framing = framing
    Handler.max_message_size = max_message_size
    Handler.recorder = recorder
    return Handler


def recording(server_base, **attributes):
    """A server class whose handle_error() records the handler, the client address and the
    exception being handled (``sys.exception()``, as it is inside handle_error)."""

    def handle_error(self, handler, client_address):
        self.RequestHandlerClass.recorder.add("error", handler, client_address, sys.exception())

    return type(server_base.__name__, (server_base,), {"handle_error": handle_error, **attributes})


def frame(framing, payload):
    """``payload`` as it goes on the wire for ``framing``."""
    if framing == "length32":
        return struct.pack(">I", len(payload)) + payload
    return payload


# --------------------------------------------------------------------------------------------
# Running servers and clients, bounded


class Served:
    """A server with serve_forever() on a thread of its own, and the clients of a test."""

    def __init__(self, server, family):
        self.server = server
        self.family = family
        self.thread = None
        self.raised = []  # what escaped serve_forever()
        self.clients = []

    @property
    def recorder(self):
        return self.server.RequestHandlerClass.recorder

    def start(self):
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()
        return self

    def _serve(self):
        try:
            self.server.serve_forever()
        except BaseException as exc:
            self.raised.append(exc)

    def shutdown(self):
        """shutdown() on a helper thread, so a hang fails the test; returns once serving
        has stopped."""
        caller = threading.Thread(target=self.server.shutdown, daemon=True)
        caller.start()
        caller.join(STOP_TIMEOUT)
        assert not caller.is_alive(), "shutdown() did not return"
        self.thread.join(STOP_TIMEOUT)
        assert not self.thread.is_alive(), "serve_forever() did not return after shutdown()"

    def connect(self):
        if self.family == "udp":
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            client.bind((LOOPBACK, 0))
        elif self.family == "unix":
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.clients.append(client)
        client.settimeout(TIMEOUT)
        client.connect(self.server.server_address)
        return client

    def client_address(self, client):
        """The client_address the server reports for ``client``."""
        return "" if self.family == "unix" else client.getsockname()

    def close(self):
        for client in self.clients:
            client.close()
        if self.thread is not None and self.thread.is_alive():
            caller = threading.Thread(target=self.server.shutdown, daemon=True)
            caller.start()
            caller.join(STOP_TIMEOUT)
            self.thread.join(STOP_TIMEOUT)
        self.server.server_close()


class Reactors:
    def __init__(self, unix_dir):
        self.unix_dir = unix_dir
        self.served = []

    def start(self, family, handler, *, serve=True, **server_attributes):
        if family == "tcp":
            server = recording(ReactorTCPServer, **server_attributes)((LOOPBACK, 0), handler)
        elif family == "unix":
            path = os.path.join(str(self.unix_dir), f"reactor{len(self.served)}.sock")
            server = recording(ReactorUnixStreamServer, **server_attributes)(path, handler)
        elif family == "udp":
            server = recording(ReactorUDPServer, **server_attributes)((LOOPBACK, 0), handler)
        else:
            raise ValueError(family)
        served = Served(server, family)
        self.served.append(served)
        return served.start() if serve else served

    def close(self):
        for served in self.served:
            served.close()


@pytest.fixture
def reactor(unix_dir):
    owner = Reactors(unix_dir)
    try:
        yield owner
    finally:
        owner.close()


def recv_exactly(sock, n, timeout=TIMEOUT):
    sock.settimeout(timeout)
    data = bytearray()
    while len(data) < n:
        try:
            chunk = sock.recv(min(n - len(data), 1 << 20))
        except TimeoutError:
            raise AssertionError(f"timed out after {len(data)} of {n} bytes: {bytes(data[:200])!r}")
        if not chunk:
            raise AssertionError(f"EOF after {len(data)} of {n} bytes: {bytes(data[:200])!r}")
        data += chunk
    return bytes(data)


def read_until_closed(sock, timeout=TIMEOUT):
    """Everything the server still sends, up to its close (EOF or reset). Fails if the
    connection stays open."""
    sock.settimeout(timeout)
    data = bytearray()
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except ConnectionResetError:
            return bytes(data)
        except TimeoutError:
            raise AssertionError(f"connection still open after {timeout}s (got {bytes(data)!r})")
        if not chunk:
            return bytes(data)
        data += chunk


def readable_within(sock, seconds):
    return bool(select.select([sock], [], [], seconds)[0])


def exchange(sock, framing, payload, reply=None):
    """Send one message and check its reply (the payload uppercased by default)."""
    sock.sendall(frame(framing, payload))
    expected = frame(framing, payload.upper() if reply is None else reply)
    assert recv_exactly(sock, len(expected)) == expected


# --------------------------------------------------------------------------------------------
# Echo and framing over real stream sockets


@pytest.mark.parametrize("family", STREAM_FAMILIES)
@pytest.mark.parametrize("framing", ["raw", "line", "length32"])
def test_stream_server_echoes_each_message(reactor, family, framing):
    handler = make_handler(framing, on_message=lambda self, m: m)
    served = reactor.start(family, handler)
    client = served.connect()
    for payload in [b"hello\n", b"a second message\n", BINARY_LINE]:
        wire = frame(framing, payload)
        client.sendall(wire)
        assert recv_exactly(client, len(wire)) == wire
    if framing != "raw":  # raw messages are whatever each read returned
        assert handler.recorder.messages() == [b"hello\n", b"a second message\n", BINARY_LINE]


def server_side_of(client):
    """A duplicate of the socket in this process whose peer is ``client`` (the server's end
    of the connection), found through ``/proc/self/fd``."""
    for name in os.listdir("/proc/self/fd"):
        try:
            candidate = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue  # not a socket, or closed since the listing
        try:
            if candidate.type == socket.SOCK_STREAM and candidate.getpeername() == (
                client.getsockname()
            ):
                return candidate
        except OSError:
            pass  # a listener or an unconnected socket has no peer
        candidate.close()
    raise AssertionError(f"no server-side socket for {client.getsockname()}")


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds sockets via /proc")
def test_tcp_connections_have_nagle_off_like_asyncio_and_uvloop(reactor):
    # With Nagle on, a reply written after other unacknowledged output (a TLS session
    # ticket, an earlier send() from a handler thread) waits for the client's delayed ACK.
    served = reactor.start("tcp", make_handler("line", on_message=lambda self, m: m))
    client = served.connect()
    client.sendall(b"ping\n")
    assert recv_exactly(client, 5) == b"ping\n"
    with server_side_of(client) as server_end:
        assert server_end.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    assert served.server.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@pytest.mark.parametrize("family", STREAM_FAMILIES)
@pytest.mark.parametrize("framing", ["line", "length32"])
def test_a_message_written_byte_by_byte_arrives_whole(reactor, family, framing):
    handler = make_handler(framing)
    served = reactor.start(family, handler)
    client = served.connect()
    payloads = [b"split across many tiny writes\n", b"next\n"]
    for byte in b"".join(frame(framing, p) for p in payloads):
        client.send(bytes([byte]))
        time.sleep(0.002)
    expected = b"".join(frame(framing, p.upper()) for p in payloads)
    assert recv_exactly(client, len(expected)) == expected
    assert handler.recorder.messages() == payloads


@pytest.mark.parametrize("family", STREAM_FAMILIES)
@pytest.mark.parametrize("framing", ["line", "length32"])
def test_many_messages_in_one_write_are_delivered_one_by_one_in_order(reactor, family, framing):
    handler = make_handler(framing)
    served = reactor.start(family, handler)
    client = served.connect()
    payloads = [b"message %d\n" % i for i in range(2000)]
    client.sendall(b"".join(frame(framing, p) for p in payloads))
    expected = b"".join(frame(framing, p.upper()) for p in payloads)
    assert recv_exactly(client, len(expected)) == expected
    assert handler.recorder.messages() == payloads


def _exactly(framing, size):
    return b"x" * (size - 1) + b"\n" if framing == "line" else b"y" * size


@pytest.mark.parametrize("family", STREAM_FAMILIES)
@pytest.mark.parametrize("framing", ["line", "length32"])
def test_a_message_of_exactly_max_message_size_is_delivered(reactor, family, framing):
    handler = make_handler(framing, max_message_size=64)
    served = reactor.start(family, handler)
    client = served.connect()
    payload = _exactly(framing, 64)
    exchange(client, framing, payload)
    assert handler.recorder.messages() == [payload]
    assert handler.recorder.errors() == []


@pytest.mark.parametrize("family", STREAM_FAMILIES)
@pytest.mark.parametrize(
    "framing, wire",
    [
        ("line", _exactly("line", 65)),
        ("line", b"z" * 1000),  # an endless line: refused without waiting for its newline
        ("length32", frame("length32", _exactly("length32", 65))),
        ("length32", struct.pack(">I", 65)),  # refused from the prefix alone
    ],
    ids=["line", "endless_line", "length32", "length32_prefix_only"],
)
def test_a_message_over_max_message_size_is_reported_and_closes_only_its_connection(
    reactor, family, framing, wire
):
    handler = make_handler(framing, max_message_size=64)
    served = reactor.start(family, handler)
    victim = served.connect()
    handler.recorder.wait_count("setup", 1)
    bystander = served.connect()
    handler.recorder.wait_count("setup", 2)
    victim_handler, _ = handler.recorder.handlers()

    victim.sendall(wire)
    handler.recorder.wait_count("error", 1)
    [(reported_handler, address, exc)] = handler.recorder.errors()
    assert reported_handler is victim_handler
    assert address == served.client_address(victim)
    assert isinstance(exc, ValueError)
    assert "max_message_size" in str(exc)

    assert read_until_closed(victim) == b""
    handler.recorder.wait_count("finish", 1)
    assert [h for (h,) in handler.recorder.of("finish")] == [victim_handler]
    assert handler.recorder.messages(victim_handler) == []
    # The server carries on: the other connection and new ones are served.
    exchange(bystander, framing, _exactly(framing, 64))
    exchange(served.connect(), framing, b"new client\n")
    assert served.thread.is_alive()
    assert len(handler.recorder.errors()) == 1


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_messages_before_an_oversized_one_in_the_same_write_are_delivered(reactor, family):
    handler = make_handler("line", max_message_size=16)
    served = reactor.start(family, handler)
    client = served.connect()
    client.sendall(b"first\nsecond\n" + b"q" * 40 + b"\n")
    assert read_until_closed(client) == b"FIRST\nSECOND\n"
    assert handler.recorder.messages() == [b"first\n", b"second\n"]
    handler.recorder.wait_count("error", 1)


@pytest.mark.parametrize("family", STREAM_FAMILIES)
@pytest.mark.parametrize(
    "framing, wire, messages",
    [
        ("line", b"\n\n\n", [b"\n", b"\n", b"\n"]),
        ("line", b"a\n\nb\n", [b"a\n", b"\n", b"b\n"]),
        ("length32", struct.pack(">I", 0) * 3, [b"", b"", b""]),
    ],
    ids=["empty_lines", "empty_line_between", "length32_empty"],
)
def test_empty_messages_are_delivered(reactor, family, framing, wire, messages):
    handler = make_handler(framing, on_message=lambda self, m: b"<" + m)
    served = reactor.start(family, handler)
    client = served.connect()
    client.sendall(wire)
    expected = b"".join(frame(framing, b"<" + m) for m in messages)
    assert recv_exactly(client, len(expected)) == expected
    assert handler.recorder.messages() == messages


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_eof_in_the_middle_of_a_line_delivers_the_unterminated_last_line(reactor, family):
    handler = make_handler("line")
    served = reactor.start(family, handler)
    client = served.connect()
    client.sendall(b"one\ntwo")
    client.shutdown(socket.SHUT_WR)
    # Its reply is written, then the connection closes.
    assert read_until_closed(client) == b"ONE\nTWO"
    assert handler.recorder.messages() == [b"one\n", b"two"]
    handler.recorder.wait_count("finish", 1)
    assert handler.recorder.errors() == []


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_end_of_stream_after_the_last_reply_is_seen(reactor, family):
    # The reactor stops reading a connection after a short read (the socket had nothing more
    # queued) instead of reading again for EWOULDBLOCK; an end of stream that comes alone,
    # after the reply, must still be noticed, and so must one that follows many requests.
    handler = make_handler("line")
    served = reactor.start(family, handler)
    client = served.connect()
    for i in range(200):
        client.sendall(b"m%d\n" % i)
        assert recv_exactly(client, len(b"M%d\n" % i)) == b"M%d\n" % i
    client.shutdown(socket.SHUT_WR)
    assert read_until_closed(client) == b""
    handler.recorder.wait_count("finish", 1)
    assert len(handler.recorder.messages()) == 200
    assert handler.recorder.errors() == []


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_an_unterminated_last_line_of_exactly_max_message_size_is_delivered_at_eof(reactor, family):
    # Not longer than max_message_size, so not an error: the limit is on message size, and a
    # last line without a newline is a message once the client closes.
    handler = make_handler("line", max_message_size=8)
    served = reactor.start(family, handler)
    client = served.connect()
    client.sendall(b"12345678")
    client.shutdown(socket.SHUT_WR)
    assert read_until_closed(client) == b"12345678"
    assert handler.recorder.errors() == []
    assert handler.recorder.messages() == [b"12345678"]


@pytest.mark.parametrize("family", STREAM_FAMILIES)
@pytest.mark.parametrize(
    "cut", [b"\x00\x00", struct.pack(">I", 10) + b"abc"], ids=["in_prefix", "in_payload"]
)
def test_eof_in_the_middle_of_a_length32_message_is_reported_as_truncated(reactor, family, cut):
    handler = make_handler("length32")
    served = reactor.start(family, handler)
    client = served.connect()
    client.sendall(frame("length32", b"complete") + cut)
    client.shutdown(socket.SHUT_WR)
    # The complete message is answered; the cut one is reported, and the connection closes.
    assert read_until_closed(client) == frame("length32", b"COMPLETE")
    handler.recorder.wait_count("error", 1)
    [(reported_handler, address, exc)] = handler.recorder.errors()
    assert reported_handler is handler.recorder.handlers()[0]
    assert address == served.client_address(client)
    assert isinstance(exc, ValueError)
    assert re.search(r"middle of a message|truncat", str(exc)), str(exc)
    assert handler.recorder.messages() == [b"complete"]
    handler.recorder.wait_count("finish", 1)


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_length32_replies_and_sends_carry_the_length_prefix(reactor, family):
    def on_message(self, message):
        self.send(b"sent:" + message)
        return b"xyz"

    handler = make_handler("length32", on_message=on_message)
    served = reactor.start(family, handler)
    client = served.connect()
    client.sendall(frame("length32", b"hi"))
    expected = struct.pack(">I", 7) + b"sent:hi" + struct.pack(">I", 3) + b"xyz"
    assert recv_exactly(client, len(expected)) == expected


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_raw_framing_delivers_bytes_as_they_were_read(reactor, family):
    handler = make_handler("raw")
    served = reactor.start(family, handler)
    client = served.connect()
    for i, chunk in enumerate([b"abc", b"no newline needed", b"\x00\xff\n\n"], start=1):
        client.sendall(chunk)
        handler.recorder.wait_count("message", i)
        assert recv_exactly(client, len(chunk)) == chunk.upper()
    assert handler.recorder.messages() == [b"abc", b"no newline needed", b"\x00\xff\n\n"]


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_raw_messages_are_never_longer_than_max_message_size(reactor, family):
    handler = make_handler("raw", max_message_size=4)
    served = reactor.start(family, handler)
    client = served.connect()
    data = bytes(range(48, 48 + 70))
    client.sendall(data)
    assert recv_exactly(client, len(data)) == data.upper()
    messages = handler.recorder.messages()
    assert b"".join(messages) == data
    assert all(0 < len(m) <= 4 for m in messages), messages
    assert handler.recorder.errors() == []


# --------------------------------------------------------------------------------------------
# Handler errors and life cycle


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_a_handler_exception_is_reported_and_closes_only_its_connection(reactor, family):
    def on_message(self, message):
        if message == b"boom\n":
            raise RuntimeError("handler failed")
        return message.upper()

    handler = make_handler("line", on_message=on_message)
    served = reactor.start(family, handler)
    victim = served.connect()
    exchange(victim, "line", b"fine\n")
    bystander = served.connect()
    exchange(bystander, "line", b"also fine\n")
    victim_handler = handler.recorder.handlers()[0]

    victim.sendall(b"boom\nnever handled\n")
    assert read_until_closed(victim) == b""
    handler.recorder.wait_count("error", 1)
    [(reported_handler, address, exc)] = handler.recorder.errors()
    assert reported_handler is victim_handler
    assert address == served.client_address(victim)
    assert isinstance(exc, RuntimeError)
    assert str(exc) == "handler failed"
    handler.recorder.wait_count("finish", 1)
    assert [h for (h,) in handler.recorder.of("finish")] == [victim_handler]
    assert handler.recorder.messages(victim_handler) == [b"fine\n", b"boom\n"]

    exchange(bystander, "line", b"still served\n")
    exchange(served.connect(), "line", b"new client\n")
    assert served.thread.is_alive()


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_an_exception_in_setup_is_reported_and_closes_that_connection(reactor, family):
    class handler(make_handler("line")):
        def setup(self):
            first = self.recorder.count("setup") == 0
            super().setup()
            if first:
                raise OSError("setup failed")

    served = reactor.start(family, handler)
    victim = served.connect()
    assert read_until_closed(victim) == b""
    handler.recorder.wait_count("error", 1)
    [(_, address, exc)] = handler.recorder.errors()
    assert address == served.client_address(victim)
    assert isinstance(exc, OSError)
    assert str(exc) == "setup failed"
    exchange(served.connect(), "line", b"next client\n")
    # As in the stdlib, finish() is not called for a handler whose setup() failed.
    assert handler.recorder.count("finish") == 0


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_setup_and_finish_run_once_per_connection_when_clients_disconnect(reactor, family):
    handler = make_handler("line")
    served = reactor.start(family, handler)
    for i in range(3):
        with served.connect() as client:
            exchange(client, "line", b"client %d\n" % i)
            exchange(client, "line", b"again\n")
    handler.recorder.wait_count("finish", 3)
    handlers = handler.recorder.handlers()
    assert len(handlers) == 3 and len(set(map(id, handlers))) == 3
    assert [h for (h,) in handler.recorder.of("finish")] == handlers
    # Each handler: setup, its messages, finish, in that order.
    for h in handlers:
        mine = [event[0] for event in handler.recorder.events if event[1] is h]
        assert mine == ["setup", "message", "message", "finish"]


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_close_from_the_handler_writes_what_was_sent_then_closes_and_calls_finish(reactor, family):
    def on_message(self, message):
        if message == b"bye\n":
            self.send(b"BYE\n")
            self.close()
            return None
        return message.upper()

    handler = make_handler("line", on_message=on_message)
    served = reactor.start(family, handler)
    client = served.connect()
    exchange(client, "line", b"hello\n")
    client.sendall(b"bye\nafter close\n")
    assert read_until_closed(client) == b"BYE\n"
    handler.recorder.wait_count("finish", 1)
    time.sleep(0.05)
    assert handler.recorder.count("finish") == 1
    assert handler.recorder.messages() == [b"hello\n", b"bye\n"]
    assert handler.recorder.errors() == []


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_server_close_closes_every_connection_and_calls_finish_once_each(reactor, family):
    handler = make_handler("line")
    served = reactor.start(family, handler)
    clients = [served.connect() for _ in range(3)]
    for client in clients:
        exchange(client, "line", b"hi\n")
    served.shutdown()
    assert handler.recorder.count("finish") == 0  # shutdown() leaves connections open
    served.server.server_close()
    for client in clients:
        assert read_until_closed(client) == b""
    assert sorted(map(id, (h for (h,) in handler.recorder.of("finish")))) == sorted(
        map(id, handler.recorder.handlers())
    )
    assert handler.recorder.count("finish") == 3


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_server_close_during_serving_closes_the_connections_when_serving_stops(reactor, family):
    """server_close() from another thread while serve_forever() runs, then shutdown(): the
    connections the serving call holds are closed, each finish() called once, when it
    returns; none is left open in a server that nobody will close again."""
    handler = make_handler("line")
    served = reactor.start(family, handler)
    clients = [served.connect() for _ in range(3)]
    for client in clients:
        exchange(client, "line", b"hi\n")
    fds_before = len(os.listdir("/proc/self/fd"))
    served.server.server_close()
    served.shutdown()
    for client in clients:
        assert read_until_closed(client) == b""
    assert handler.recorder.count("finish") == 3
    assert served.server.connection_count == 0
    assert len(os.listdir("/proc/self/fd")) <= fds_before - 3  # the server's ends are closed
    assert handler.recorder.errors() == []


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_an_exception_in_finish_is_reported_and_the_server_carries_on(reactor, family):
    class handler(make_handler("line")):
        def finish(self):
            super().finish()
            raise RuntimeError("finish failed")

    served = reactor.start(family, handler)
    with served.connect() as client:
        exchange(client, "line", b"hi\n")
        victim_handler = handler.recorder.handlers()[0]
        victim_address = served.client_address(client)
    handler.recorder.wait_count("error", 1)
    [(reported_handler, address, exc)] = handler.recorder.errors()
    assert reported_handler is victim_handler
    assert address == victim_address
    assert isinstance(exc, RuntimeError) and str(exc) == "finish failed"
    exchange(served.connect(), "line", b"next\n")
    assert served.thread.is_alive()


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_a_client_that_vanishes_mid_line_gets_finish_and_no_error(reactor, family):
    handler = make_handler("line")
    served = reactor.start(family, handler)
    client = served.connect()
    exchange(client, "line", b"hi\n")
    if family == "tcp":  # an abortive close: RST instead of FIN
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.sendall(b"unfinished line without newline")
    client.close()
    handler.recorder.wait_count("finish", 1)
    exchange(served.connect(), "line", b"next\n")
    assert handler.recorder.errors() == []


@pytest.mark.parametrize("family", STREAM_FAMILIES)
@pytest.mark.parametrize("kind", [bytearray, memoryview], ids=["bytearray", "memoryview"])
def test_replies_and_sends_may_be_any_bytes_like_object(reactor, family, kind):
    def on_message(self, message):
        self.send(kind(b"sent "))
        return kind(message.upper())

    handler = make_handler("line", on_message=on_message)
    served = reactor.start(family, handler)
    client = served.connect()
    client.sendall(b"x\n")
    assert recv_exactly(client, 7) == b"sent X\n"


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_a_reply_that_is_not_bytes_like_is_reported_and_closes_the_connection(reactor, family):
    def on_message(self, message):
        return "a str, not bytes\n" if message == b"bad\n" else message.upper()

    handler = make_handler("line", on_message=on_message)
    served = reactor.start(family, handler)
    client = served.connect()
    exchange(client, "line", b"good\n")
    client.sendall(b"bad\n")
    assert read_until_closed(client) == b""
    handler.recorder.wait_count("error", 1)
    [(reported_handler, _, exc)] = handler.recorder.errors()
    assert reported_handler is handler.recorder.handlers()[0]
    assert isinstance(exc, TypeError)
    exchange(served.connect(), "line", b"next\n")


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_shutdown_called_from_a_handler_stops_serving_without_deadlock(reactor, family):
    def on_message(self, message):
        if message == b"stop\n":
            self.server.shutdown()
            return b"stopping\n"
        return message.upper()

    handler = make_handler("line", on_message=on_message)
    served = reactor.start(family, handler)
    client = served.connect()
    client.sendall(b"stop\n")
    served.thread.join(STOP_TIMEOUT)
    assert not served.thread.is_alive(), "serve_forever() did not stop"
    assert served.raised == []
    assert recv_exactly(client, 9) == b"stopping\n"  # flushed before serve_forever returned


# --------------------------------------------------------------------------------------------
# send() and close() from other threads; ordering


@pytest.mark.parametrize("family", STREAM_FAMILIES)
@pytest.mark.parametrize("framing", ["line", "length32"])
def test_send_from_another_thread_is_delivered(reactor, family, framing):
    timers = []

    def on_message(self, message):
        timer = threading.Timer(0.1, self.send, (b"later " + message,))
        timers.append(timer)
        timer.start()
        return b"now " + message

    handler = make_handler(framing, on_message=on_message)
    served = reactor.start(family, handler)
    client = served.connect()
    client.sendall(frame(framing, b"x\n"))
    expected = frame(framing, b"now x\n") + frame(framing, b"later x\n")
    assert recv_exactly(client, len(expected)) == expected
    # And the connection is still usable afterwards.
    client.sendall(frame(framing, b"y\n"))
    expected = frame(framing, b"now y\n") + frame(framing, b"later y\n")
    assert recv_exactly(client, len(expected)) == expected
    for timer in timers:
        timer.join(TIMEOUT)


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_close_from_another_thread_closes_the_connection(reactor, family):
    timers = []

    def on_message(self, message):
        timer = threading.Timer(0.1, self.close)
        timers.append(timer)
        timer.start()
        return b"closing soon\n"

    handler = make_handler("line", on_message=on_message)
    served = reactor.start(family, handler)
    client = served.connect()
    bystander = served.connect()
    client.sendall(b"please close\n")
    assert read_until_closed(client) == b"closing soon\n"
    handler.recorder.wait_count("finish", 1)
    assert handler.recorder.of("finish")[0][0] is handler.recorder.of("message")[0][0]
    bystander.sendall(b"ping\n")
    assert recv_exactly(bystander, len(b"closing soon\n")) == b"closing soon\n"
    for timer in timers:
        timer.join(TIMEOUT)


@pytest.mark.parametrize("family", STREAM_FAMILIES)
@pytest.mark.parametrize("framing", ["raw", "line", "length32"])
def test_send_in_handle_message_comes_before_the_returned_reply(reactor, family, framing):
    def on_message(self, message):
        self.send(b"a1;")
        self.send(b"a2;")
        return b"b;"

    handler = make_handler(framing, on_message=on_message)
    served = reactor.start(family, handler)
    client = served.connect()
    one = b"".join(frame(framing, part) for part in (b"a1;", b"a2;", b"b;"))
    for i in range(3):
        client.sendall(frame(framing, b"m%d\n" % i))
        assert recv_exactly(client, len(one)) == one


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_send_after_the_connection_closed_is_ignored(reactor, family):
    kept = []

    def on_message(self, message):
        kept.append(self)
        return message.upper()

    handler = make_handler("line", on_message=on_message)
    served = reactor.start(family, handler)
    with served.connect() as client:
        exchange(client, "line", b"hi\n")
    handler.recorder.wait_count("finish", 1)
    kept[0].send(b"nobody listens\n")
    kept[0].close()
    # A new connection (which may reuse the old one's slot) does not receive it.
    fresh = served.connect()
    exchange(fresh, "line", b"fresh\n")
    assert not readable_within(fresh, 0.2)
    assert handler.recorder.errors() == []


# --------------------------------------------------------------------------------------------
# Backpressure: a client that never reads (the server runs in a child to measure its RSS)

_BACKPRESSURE_SERVER = r"""
import sys
import socketserver_rs

REPLY = int(sys.argv[1])

class Handler(socketserver_rs.MessageHandler):
    framing = "line"

    def handle_message(self, message):
        if message.startswith(b"echo "):
            return message
        head = message.rstrip(b"\n") + b":"
        return head + b"x" * (REPLY - len(head) - 1) + b"\n"

class Server(socketserver_rs.ReactorTCPServer):
    handler_threads = int(sys.argv[2])

server = Server(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    pass
finally:
    server.server_close()
"""


def _rss_bytes(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@contextlib.contextmanager
def _child_server(*args):
    proc = subprocess.Popen(
        [sys.executable, "-c", _BACKPRESSURE_SERVER, *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        if not select.select([proc.stdout], [], [], 30)[0]:
            raise AssertionError("child server did not start")
        line = proc.stdout.readline()
        assert line.strip().isdigit(), (
            line,
            proc.stderr.read() if proc.poll() is not None else b"",
        )
        yield proc, int(line)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        proc.stdout.close()
        proc.stderr.close()


def _read_numbered_replies(sock, count, size):
    """Read ``count`` replies of ``size`` bytes, checking they come numbered 0, 1, … ."""
    sock.settimeout(10)
    buffer = bytearray()
    chunk = bytearray(1 << 20)
    seen = 0
    while seen < count:
        n = sock.recv_into(chunk)
        assert n, f"EOF after {seen} of {count} replies"
        buffer += memoryview(chunk)[:n]
        while len(buffer) >= size:
            head = b"%d:" % seen
            assert buffer.startswith(head), (seen, bytes(buffer[:20]))
            assert buffer[size - 1] == ord("\n")
            del buffer[:size]
            seen += 1
    assert not buffer
    assert not readable_within(sock, 0.05)


@pytest.mark.parametrize("handler_threads", [0, 4], ids=["loop_thread", "handler_threads"])
@pytest.mark.parametrize("writes", ["one_write", "paced_writes"])
def test_a_client_that_never_reads_cannot_make_the_server_buffer_without_bound(
    writes, handler_threads
):
    reply_size = 32 * 1024
    count = 6000  # ~192 MiB of replies asked for by a ~34 KB burst of requests
    allowed_growth = 64 * 1024 * 1024
    with _child_server(reply_size, handler_threads) as (proc, port):
        address = (LOOPBACK, port)
        with socket.create_connection(address, timeout=TIMEOUT) as warm:
            warm.sendall(b"echo warm\n")
            assert recv_exactly(warm, 10) == b"echo warm\n"
            warm.sendall(b"0\n")
            assert len(recv_exactly(warm, reply_size)) == reply_size
        baseline = _rss_bytes(proc.pid)

        with socket.create_connection(address, timeout=TIMEOUT) as slow:
            requests = [b"%d\n" % i for i in range(count)]
            if writes == "one_write":
                slow.sendall(b"".join(requests))
            else:
                for start in range(0, count, 50):
                    slow.sendall(b"".join(requests[start : start + 50]))
                    time.sleep(0.002)
            # Meanwhile another client is served, and the server's memory stays bounded.
            peak = baseline
            with socket.create_connection(address, timeout=TIMEOUT) as other:
                until = time.monotonic() + 1.0
                while time.monotonic() < until:
                    other.sendall(b"echo ping\n")
                    assert recv_exactly(other, 10) == b"echo ping\n"
                    peak = max(peak, _rss_bytes(proc.pid))
                    time.sleep(0.02)
            growth = peak - baseline
            assert growth < allowed_growth, (
                f"server RSS grew by {growth / 2**20:.0f} MiB while a client that never reads "
                f"asked for {count * reply_size / 2**20:.0f} MiB of replies"
            )
            # Once the client reads, every reply arrives, in order.
            _read_numbered_replies(slow, count, reply_size)
        assert proc.poll() is None, proc.stderr.read()


# --------------------------------------------------------------------------------------------
# Server limits: idle timeout, max connections


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_idle_timeout_closes_silent_connections_and_keeps_active_ones(reactor, family):
    idle = 0.3
    handler = make_handler("line")
    served = reactor.start(family, handler, idle_timeout=idle)
    silent = served.connect()
    handler.recorder.wait_count("setup", 1)
    started = time.monotonic()
    active = served.connect()
    handler.recorder.wait_count("setup", 2)
    silent_handler, _ = handler.recorder.handlers()
    while not readable_within(silent, 0.05):
        assert time.monotonic() - started < TIMEOUT, "the silent connection was never closed"
        exchange(active, "line", b"ping\n")
    closed_after = time.monotonic() - started
    assert read_until_closed(silent) == b""
    assert closed_after >= idle * 0.8, f"closed after {closed_after:.2f}s, idle_timeout={idle}"
    handler.recorder.wait_count("finish", 1)
    assert [h for (h,) in handler.recorder.of("finish")] == [silent_handler]
    # The active connection outlives several more timeouts while it keeps talking.
    until = time.monotonic() + 2 * idle
    while time.monotonic() < until:
        exchange(active, "line", b"still here\n")
        time.sleep(0.05)
    assert handler.recorder.count("finish") == 1
    assert handler.recorder.errors() == []


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_max_connections_holds_a_further_client_until_one_disconnects(reactor, family):
    handler = make_handler("line")
    served = reactor.start(family, handler, max_connections=2)
    first, second = served.connect(), served.connect()
    exchange(first, "line", b"one\n")
    exchange(second, "line", b"two\n")
    third = served.connect()  # completes in the kernel's backlog
    third.sendall(b"three\n")
    assert not readable_within(third, 0.5), "a third client was served with max_connections=2"
    assert handler.recorder.count("setup") == 2
    exchange(second, "line", b"two still served\n")
    first.close()
    assert recv_exactly(third, 6) == b"THREE\n"
    assert handler.recorder.count("setup") == 3
    # Now full again: a fourth waits until another leaves.
    fourth = served.connect()
    fourth.sendall(b"four\n")
    assert not readable_within(fourth, 0.3)
    second.close()
    assert recv_exactly(fourth, 5) == b"FOUR\n"


# --------------------------------------------------------------------------------------------
# shutdown(), serving again, server_close(), KeyboardInterrupt


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_shutdown_with_open_connections_flushes_replies_and_serving_resumes(reactor, family):
    big = 8 * 1024 * 1024

    def on_message(self, message):
        if message == b"big\n":
            return b"B" * (big - 1) + b"\n"
        return message.upper()

    handler = make_handler("line", on_message=on_message)
    served = reactor.start(family, handler)
    a, b = served.connect(), served.connect()
    exchange(a, "line", b"hello\n")
    exchange(b, "line", b"hello\n")
    # A reply too big for the socket buffers is queued; the client reads only once
    # shutdown() has been asked for, so the rest is written during shutdown's flush.
    a.sendall(b"big\n")
    handler.recorder.wait_count("message", 3)
    stopper = threading.Thread(target=served.shutdown, daemon=True)
    stopper.start()
    time.sleep(0.05)
    reply = recv_exactly(a, big, timeout=10)
    assert reply == b"B" * (big - 1) + b"\n"
    stopper.join(STOP_TIMEOUT + 1)
    assert not stopper.is_alive() and not served.thread.is_alive()
    assert served.raised == []
    # The connections stay open, and nothing closed them.
    assert served.server.connection_count == 2
    assert handler.recorder.count("finish") == 0
    assert not readable_within(a, 0.1) and not readable_within(b, 0.01)
    # A client that arrives while not serving waits in the backlog.
    c = served.connect()
    c.sendall(b"waiting\n")
    # serve_forever() again: old connections keep working, the waiting client is served.
    served.start()
    exchange(a, "line", b"again\n")
    exchange(b, "line", b"again\n")
    assert recv_exactly(c, 8) == b"WAITING\n"
    served.shutdown()
    assert served.server.connection_count == 3
    served.server.server_close()
    for client in (a, b, c):
        assert read_until_closed(client) == b""
    assert handler.recorder.count("finish") == 3
    assert handler.recorder.errors() == []


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_shutdown_returns_promptly_with_idle_connections_open(reactor, family):
    handler = make_handler("line")
    served = reactor.start(family, handler)
    clients = [served.connect() for _ in range(5)]
    for client in clients:
        exchange(client, "line", b"hi\n")
    started = time.monotonic()
    served.shutdown()
    # Nothing is queued, so there is nothing to flush: no reason to take the 2 s allowance.
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize("family", [*STREAM_FAMILIES, "udp"])
def test_keyboard_interrupt_from_a_handler_propagates_out_of_serve_forever(reactor, family):
    def on_message(self, message):
        if message.startswith(b"stop"):
            raise KeyboardInterrupt
        return message.upper()

    handler = make_handler("line", on_message=on_message)
    served = reactor.start(family, handler)
    client = served.connect()
    if family == "udp":
        client.send(b"hi\n")
        assert client.recv(100) == b"HI\n"
        client.send(b"stop\n")
    else:
        exchange(client, "line", b"hi\n")
        client.sendall(b"stop\n")
    served.thread.join(STOP_TIMEOUT)
    assert not served.thread.is_alive(), "serve_forever() kept running"
    assert len(served.raised) == 1 and isinstance(served.raised[0], KeyboardInterrupt)
    assert handler.recorder.errors() == []  # not handed to handle_error
    served.server.server_close()
    if family != "udp":
        assert read_until_closed(client) == b""


# --------------------------------------------------------------------------------------------
# handler_threads: handlers that block run on worker threads


def _blocking_handler(delay):
    """A line handler that blocks ``delay`` seconds per message, recording when each message
    is done and how many handle_message() calls overlap (overall and per connection)."""
    state = {"running": 0, "most": 0, "overlap_on_one_connection": False, "busy": set()}
    lock = threading.Lock()

    def on_message(self, message):
        with lock:
            if id(self) in state["busy"]:
                state["overlap_on_one_connection"] = True
            state["busy"].add(id(self))
            state["running"] += 1
            state["most"] = max(state["most"], state["running"])
        try:
            time.sleep(delay)
            self.recorder.add("done", self, threading.current_thread())
            return message.upper()
        finally:
            with lock:
                state["running"] -= 1
                state["busy"].discard(id(self))

    handler = make_handler("line", on_message=on_message)
    return handler, state


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_handler_threads_serve_connections_in_parallel_each_in_order(reactor, family):
    handler, state = _blocking_handler(0.03)
    served = reactor.start(family, handler, handler_threads=4)
    clients = [served.connect() for _ in range(4)]
    for i, client in enumerate(clients):
        client.sendall(b"".join(b"c%d m%d\n" % (i, n) for n in range(5)))
    for i, client in enumerate(clients):
        expected = b"".join(b"C%d M%d\n" % (i, n) for n in range(5))
        assert recv_exactly(client, len(expected)) == expected
    assert state["most"] >= 2, "handlers never ran in parallel"
    assert not state["overlap_on_one_connection"], "one connection's messages overlapped"
    for h in handler.recorder.handlers():
        got = handler.recorder.messages(h)
        i = int(got[0].split()[0][1:])
        assert got == [b"c%d m%d\n" % (i, n) for n in range(5)]
    assert all(thread is not served.thread for _, thread in handler.recorder.of("done"))
    assert handler.recorder.errors() == []


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_handler_threads_half_closed_client_gets_every_reply_and_finish_comes_last(reactor, family):
    handler, _ = _blocking_handler(0.2)
    served = reactor.start(family, handler, handler_threads=2)
    client = served.connect()
    client.sendall(b"one\ntwo\nthree")
    client.shutdown(socket.SHUT_WR)
    assert read_until_closed(client) == b"ONE\nTWO\nTHREE"
    handler.recorder.wait_count("finish", 1)
    kinds = [event[0] for event in handler.recorder.events]
    assert kinds == ["setup", "message", "done", "message", "done", "message", "done", "finish"]
    assert handler.recorder.errors() == []


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_handler_threads_exception_is_reported_and_closes_only_its_connection(reactor, family):
    def on_message(self, message):
        time.sleep(0.01)
        if message == b"boom\n":
            raise RuntimeError("worker handler failed")
        return message.upper()

    handler = make_handler("line", on_message=on_message)
    served = reactor.start(family, handler, handler_threads=2)
    victim = served.connect()
    exchange(victim, "line", b"fine\n")
    bystander = served.connect()
    exchange(bystander, "line", b"fine too\n")
    victim_handler = handler.recorder.handlers()[0]
    victim.sendall(b"boom\nnever handled\n")
    assert read_until_closed(victim) == b""
    handler.recorder.wait_count("error", 1)
    [(reported_handler, address, exc)] = handler.recorder.errors()
    assert reported_handler is victim_handler
    assert address == served.client_address(victim)
    assert isinstance(exc, RuntimeError) and str(exc) == "worker handler failed"
    handler.recorder.wait_count("finish", 1)
    assert handler.recorder.messages(victim_handler) == [b"fine\n", b"boom\n"]
    exchange(bystander, "line", b"still served\n")


@pytest.mark.parametrize("family", STREAM_FAMILIES)
def test_handler_threads_send_then_return_keeps_the_order(reactor, family):
    def on_message(self, message):
        self.send(b"first;")
        return b"second\n"

    handler = make_handler("line", on_message=on_message)
    served = reactor.start(family, handler, handler_threads=3)
    client = served.connect()
    client.sendall(b"a\nb\nc\n")
    expected = b"first;second\n" * 3
    assert recv_exactly(client, len(expected)) == expected


# --------------------------------------------------------------------------------------------
# UDP


def test_udp_replies_go_to_the_sender(reactor):
    handler = make_handler("raw")
    served = reactor.start("udp", handler)
    clients = [served.connect() for _ in range(3)]
    for round_ in range(3):
        for i, client in enumerate(clients):
            client.send(b"client %d round %d" % (i, round_))
        for i, client in enumerate(clients):
            assert client.recv(100) == b"CLIENT %d ROUND %d" % (i, round_)
    handler.recorder.wait_count("message", 9)
    for handler_, message in handler.recorder.of("message"):
        assert handler_.client_address == clients[int(message.split()[1])].getsockname()


def test_udp_each_datagram_gets_setup_message_finish_in_order(reactor):
    handler = make_handler("raw")
    served = reactor.start("udp", handler)
    client = served.connect()
    for i in range(3):
        client.send(b"d%d" % i)
        assert client.recv(100) == b"D%d" % i
    handler.recorder.wait_count("finish", 3)
    kinds = [event[0] for event in handler.recorder.events]
    assert kinds == ["setup", "message", "finish"] * 3
    assert len({id(event[1]) for event in handler.recorder.events}) == 3


def test_udp_datagram_over_max_message_size_is_reported_and_dropped(reactor):
    handler = make_handler("raw", max_message_size=100)
    served = reactor.start("udp", handler)
    client = served.connect()
    client.send(b"a" * 100)
    assert client.recv(200) == b"A" * 100
    client.send(b"b" * 101)
    handler.recorder.wait_count("error", 1)
    [(_, address, exc)] = handler.recorder.errors()
    assert address == client.getsockname()
    assert isinstance(exc, ValueError)
    assert "max_message_size" in str(exc)
    assert not readable_within(client, 0.1)  # dropped: no reply
    client.send(b"c" * 10)
    assert client.recv(200) == b"C" * 10
    assert handler.recorder.messages() == [b"a" * 100, b"c" * 10]
    assert served.thread.is_alive()


def test_udp_handler_exception_is_reported_and_the_server_carries_on(reactor):
    def on_message(self, message):
        if message == b"boom":
            raise RuntimeError("udp handler failed")
        return message.upper()

    handler = make_handler("raw", on_message=on_message)
    served = reactor.start("udp", handler)
    client = served.connect()
    client.send(b"boom")
    handler.recorder.wait_count("error", 1)
    [(reported_handler, address, exc)] = handler.recorder.errors()
    assert reported_handler is handler.recorder.handlers()[0]
    assert address == client.getsockname()
    assert isinstance(exc, RuntimeError)
    # finish() still runs for the failed datagram, as BaseRequestHandler's does.
    handler.recorder.wait_count("finish", 1)
    client.send(b"fine")
    assert client.recv(100) == b"FINE"


def test_udp_send_from_another_thread_reaches_the_sender(reactor):
    timers = []

    def on_message(self, message):
        timer = threading.Timer(0.1, self.send, (b"later " + message,))
        timers.append(timer)
        timer.start()
        return b"now " + message

    handler = make_handler("raw", on_message=on_message)
    served = reactor.start("udp", handler)
    client, other = served.connect(), served.connect()
    client.send(b"x")
    assert client.recv(100) == b"now x"
    assert client.recv(100) == b"later x"
    assert not readable_within(other, 0.05)
    for timer in timers:
        timer.join(TIMEOUT)


def test_udp_serves_many_clients_at_once(reactor):
    handler = make_handler("raw")
    served = reactor.start("udp", handler)
    clients = [served.connect() for _ in range(32)]
    failures = []

    def talk(index, client):
        try:
            for n in range(20):
                payload = b"c%d-n%d" % (index, n)
                client.send(payload)
                assert client.recv(100) == payload.upper()
        except BaseException as exc:  # reported below
            failures.append((index, exc))

    threads = [threading.Thread(target=talk, args=(i, c)) for i, c in enumerate(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 2)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert handler.recorder.count("message") == 32 * 20
