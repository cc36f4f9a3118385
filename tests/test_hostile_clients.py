"""Hostile and broken clients, against every server family.

Clients that reset in the middle of a request or of a reply, half-close, connect and never
send, trickle a byte at a time, send random bytes, send the largest datagrams UDP allows;
SIGINT while handlers run; ``shutdown()`` while many clients hammer the server.

Families: ``TCPServer``, ``ThreadingTCPServer`` (and the UDP counterparts) are run for both
``socketserver`` (the oracle) and ``socketserver_rs``; ``ThreadPool*`` and ``Reactor*`` exist
only in ``socketserver_rs``. Where the stdlib has the class, the expectation asserted is what
the stdlib does, and it must hold for both modules.

Real loopback sockets only. Every wait is bounded; the harness closes every client, server
and child process (by the PID it started) at teardown.
"""

import json
import random
import selectors
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from dataclasses import dataclass

import pytest
import socketserver_rs
from _behaviour_helpers import (
    CLIENT_TIMEOUT,
    LOOPBACK,
    call_with_timeout,
    python_child,
    read_line,
    recv_until_eof,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

MODULES = {"stdlib": socketserver, "rs": socketserver_rs}
# The largest UDP payload over IPv4: 65,535 - 20 (IP header) - 8 (UDP header).
MAX_UDP_PAYLOAD = 65_507


# Families -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    impl: str  # "stdlib" or "rs"
    name: str  # the server class's name in that module

    def __str__(self):
        return f"{self.impl}-{self.name}"

    @property
    def module(self):
        return MODULES[self.impl]

    @property
    def cls(self):
        return getattr(self.module, self.name)

    @property
    def reactor(self):
        return self.name.startswith("Reactor")

    @property
    def serial(self):
        """Serves one request at a time on the serving thread (no threads, no reactor)."""
        return self.name in ("TCPServer", "UDPServer")


def families(*names):
    """Both modules for classes the stdlib has; socketserver_rs alone for the others."""
    out = []
    for name in names:
        if hasattr(socketserver, name):
            out.append(Family("stdlib", name))
        out.append(Family("rs", name))
    return out


HANDLER_STREAM = families("TCPServer", "ThreadingTCPServer", "ThreadPoolTCPServer")
STREAM = [*HANDLER_STREAM, Family("rs", "ReactorTCPServer")]
CONCURRENT_HANDLER_STREAM = [f for f in HANDLER_STREAM if not f.serial]
HANDLER_DATAGRAM = families("UDPServer", "ThreadingUDPServer", "ThreadPoolUDPServer")


# A thread-safe event log ---------------------------------------------------------------------


class Log:
    """What handlers and ``handle_error`` saw: ``(kind, fields)`` pairs, with bounded waits."""

    def __init__(self):
        self.cond = threading.Condition()
        self.events = []

    def add(self, kind, **fields):
        fields["at"] = time.monotonic()
        with self.cond:
            self.events.append((kind, fields))
            self.cond.notify_all()

    def of(self, kind):
        with self.cond:
            return [fields for k, fields in self.events if k == kind]

    def count(self, kind):
        return len(self.of(kind))

    def wait_count(self, kind, n, timeout=CLIENT_TIMEOUT):
        deadline = time.monotonic() + timeout
        with self.cond:
            while sum(1 for k, _ in self.events if k == kind) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {n} {kind!r}: {self.events!r}")
                self.cond.wait(left)
        return self.of(kind)


def recording_server_class(family, log, **attributes):
    """``family.cls`` with a ``handle_error`` that logs the exception being handled."""

    def handle_error(self, request, client_address):
        exc_type, exc, _ = sys.exc_info()
        log.add("error", address=client_address, type=exc_type, message=str(exc))

    return type(family.name, (family.cls,), {"handle_error": handle_error, **attributes})


def echo(line):
    return b"echo:" + line


def line_server(
    harness,
    family,
    *,
    reply=echo,
    handler_timeout=None,
    line_limit=None,
    max_message_size=65536,
    **attributes,
):
    """A line-echo server of ``family``, serving on a thread; ``server.log`` records each
    connection's start (``setup``), each line (``message``), its end (``finish``) and each
    ``handle_error`` call (``error``).

    Handler families use a ``StreamRequestHandler`` reading lines (``timeout`` =
    ``handler_timeout``; a line longer than ``line_limit`` raises ValueError); the reactor
    uses a line-framed ``MessageHandler`` with ``max_message_size``.
    """
    log = Log()
    if family.reactor:

        class Handler(family.module.MessageHandler):
            framing = "line"

            def setup(self):
                log.add("setup", address=self.client_address)

            def handle_message(self, message):
                log.add("message", address=self.client_address, data=message)
                return reply(message)

            def finish(self):
                log.add("finish", address=self.client_address)

        Handler.max_message_size = max_message_size
    else:

        class Handler(family.module.StreamRequestHandler):
            timeout = handler_timeout

            def handle(self):
                log.add("setup", address=self.client_address)
                size = -1 if line_limit is None else line_limit + 1
                for _ in range(1_000_000):  # bounded: far more lines than any test sends
                    line = self.rfile.readline(size)
                    if not line:
                        return
                    if line_limit is not None and len(line) > line_limit:
                        raise ValueError(f"line longer than {line_limit} bytes")
                    log.add("message", address=self.client_address, data=line)
                    self.wfile.write(reply(line))

            def finish(self):
                try:
                    super().finish()
                finally:
                    log.add("finish", address=self.client_address)

    server = recording_server_class(family, log, **attributes)((LOOPBACK, 0), Handler)
    harness.callback(server.server_close)
    server.log = log
    harness.serve(server)
    return server


def client(harness, server, payload=None, *, nodelay=False, rcvbuf=None):
    sock = harness.socket()
    if nodelay:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(server.server_address)
    if payload is not None:
        sock.sendall(payload)
    return sock


def exchange(harness, server, payload=b"hello\n"):
    """A well-behaved client: connect, send, half-close, read the whole reply."""
    sock = client(harness, server, payload)
    sock.shutdown(socket.SHUT_WR)
    return recv_until_eof(sock)


def reset(sock):
    """Abort the connection: SO_LINGER with a zero timeout makes close() send an RST."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_until_closed(sock, timeout=CLIENT_TIMEOUT):
    """Everything the server still sends before it closes (EOF or reset)."""
    sock.settimeout(timeout)
    data = bytearray()
    for _ in range(100_000):
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)


def addresses(events):
    return [event["address"] for event in events]


# Resets --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", STREAM, ids=str)
def test_client_resetting_in_the_middle_of_a_request_is_handled_and_others_are_served(
    family, harness
):
    """The handler reading the request gets ``ConnectionResetError``, which goes to
    ``handle_error`` (stdlib semantics: it is an exception from the handler), the connection
    is closed, and the next client is served. The reactor reads for the handler, so there a
    reset just ends the connection: ``finish()`` runs, the unfinished request is never
    delivered as a message, and ``handle_error`` is not called (no handler code failed)."""
    server = line_server(harness, family)
    hostile = client(harness, server, b"GET /a-request-that-never-ends")
    hostile_address = hostile.getsockname()
    server.log.wait_count("setup", 1)
    time.sleep(0.05)  # let the partial request reach the server's read
    reset(hostile)

    if family.reactor:
        assert addresses(server.log.wait_count("finish", 1)) == [hostile_address]
    else:
        errors = server.log.wait_count("error", 1)
        assert [e["type"] for e in errors] == [ConnectionResetError]
        assert addresses(errors) == [hostile_address]
        server.log.wait_count("finish", 1)
    assert exchange(harness, server, b"hello\n") == b"echo:hello\n"
    assert exchange(harness, server, b"again\n") == b"echo:again\n"
    assert [e["data"] for e in server.log.of("message")] == [b"hello\n", b"again\n"]
    if family.reactor:
        assert server.log.of("error") == []
    else:
        assert server.log.count("error") == 1


@pytest.mark.parametrize("family", STREAM, ids=str)
def test_client_resetting_while_its_reply_is_written_is_handled_and_others_are_served(
    family, harness
):
    """A 16 MiB reply to a client that reads a little and resets: the handler's write
    fails (``ConnectionResetError`` or ``BrokenPipeError``, whichever the kernel reports,
    as in the stdlib) and goes to ``handle_error``; the reactor drops the queued output and
    closes the connection. Either way the next client is served."""
    big = b"x" * (16 << 20) + b"\n"
    server = line_server(
        harness, family, reply=lambda line: big if line == b"big\n" else echo(line)
    )
    hostile = client(harness, server, b"big\n", rcvbuf=65536)
    hostile_address = hostile.getsockname()
    assert hostile.recv(65536)  # the reply is on its way
    reset(hostile)

    if family.reactor:
        assert addresses(server.log.wait_count("finish", 1)) == [hostile_address]
        assert server.log.of("error") == []
    else:
        errors = server.log.wait_count("error", 1)
        assert errors[0]["type"] in (ConnectionResetError, BrokenPipeError), errors
        assert addresses(errors) == [hostile_address]
    assert exchange(harness, server, b"next\n") == b"echo:next\n"


# Half-closed clients --------------------------------------------------------------------------


@pytest.mark.parametrize("family", STREAM, ids=str)
def test_half_closed_clients_still_get_their_replies(family, harness):
    """shutdown(SHUT_WR) right after the request: every line is answered, the last one
    even without its newline (the stdlib's rfile yields it at EOF), then the server
    closes."""
    server = line_server(harness, family)
    for n in range(3):
        sock = client(harness, server, b"one\ntwo\nlast %d" % n)
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b"echo:one\necho:two\necho:last %d" % n
    assert server.log.of("error") == []


@pytest.mark.parametrize("family", STREAM, ids=str)
def test_half_closed_client_that_reads_slowly_gets_a_large_reply(family, harness):
    """The client half-closes at once and only then starts reading a reply much larger
    than the socket buffers: the server must keep writing to a half-closed peer."""
    big = bytes(range(256)) * 4096 + b"\n"  # 1 MiB
    server = line_server(harness, family, reply=lambda line: big)
    sock = client(harness, server, b"give me a lot\n", rcvbuf=65536)
    sock.shutdown(socket.SHUT_WR)
    time.sleep(0.1)  # the server fills the buffers and has to wait for us
    assert recv_until_eof(sock, limit=4 << 20) == big
    assert server.log.of("error") == []


# Silent clients and StreamRequestHandler.timeout ----------------------------------------------


@pytest.mark.parametrize("family", CONCURRENT_HANDLER_STREAM, ids=str)
def test_silent_client_times_out_while_others_are_served_promptly(family, harness):
    """A client connects and never sends; ``StreamRequestHandler.timeout`` makes its read
    raise ``TimeoutError``, which goes to ``handle_error`` as in the stdlib, and its
    connection is closed. Meanwhile a well-behaved client is served at once."""
    timeout = 1.0
    server = line_server(harness, family, handler_timeout=timeout)
    silent = client(harness, server)
    silent_address = silent.getsockname()
    server.log.wait_count("setup", 1)
    started = time.monotonic()

    assert exchange(harness, server, b"quick\n") == b"echo:quick\n"
    served_after = time.monotonic() - started
    assert served_after < timeout / 2, f"served after {served_after:.3f} s"
    assert server.log.of("error") == []

    errors = server.log.wait_count("error", 1, timeout=timeout + CLIENT_TIMEOUT)
    timed_out_after = errors[0]["at"] - started
    assert [e["type"] for e in errors] == [TimeoutError]
    assert addresses(errors) == [silent_address]
    assert timed_out_after >= timeout * 0.8, timed_out_after
    assert read_until_closed(silent) == b""


@pytest.mark.parametrize("family", families("TCPServer"), ids=str)
def test_silent_client_blocks_a_serial_tcp_server_until_its_handler_times_out(family, harness):
    """``TCPServer`` handles one request at a time on the serving thread, in the stdlib and
    here alike: a silent client holds everyone else up until its handler's timeout fires
    (``TimeoutError`` to ``handle_error``); then the waiting client is served."""
    timeout = 0.5
    server = line_server(harness, family, handler_timeout=timeout)
    silent = client(harness, server)
    silent_address = silent.getsockname()
    server.log.wait_count("setup", 1)
    started = time.monotonic()

    assert exchange(harness, server, b"waiting\n") == b"echo:waiting\n"
    served_after = time.monotonic() - started
    errors = server.log.of("error")
    assert [e["type"] for e in errors] == [TimeoutError]
    assert addresses(errors) == [silent_address]
    assert served_after >= timeout * 0.8, f"served after {served_after:.3f} s: did not block"
    assert errors[0]["at"] <= server.log.of("message")[0]["at"]
    assert read_until_closed(silent) == b""


# Trickle clients -----------------------------------------------------------------------------


def trickle(sock, data, gap):
    """Send ``data`` one byte at a time, ``gap`` seconds apart."""
    for byte in data:
        sock.send(bytes([byte]))
        time.sleep(gap)


@pytest.mark.parametrize("family", STREAM, ids=str)
def test_trickle_clients_get_whole_replies_and_do_not_hold_up_others(family, harness):
    """Three clients each send a line one byte per segment (TCP_NODELAY, 20 ms apart):
    each gets exactly its echo. On the concurrent families a well-behaved client is served
    while they are still trickling; ``TCPServer`` serves one connection at a time, so there
    the clients take turns (checked only for correct replies)."""
    server = line_server(harness, family)
    gap = 0.02
    lines = [b"trickle number %d, slowly\n" % n for n in range(3)]
    replies = {}
    done_at = {}

    def trickler(n):
        sock = client(harness, server, nodelay=True)
        trickle(sock, lines[n], gap)
        sock.shutdown(socket.SHUT_WR)
        replies[n] = recv_until_eof(sock)
        done_at[n] = time.monotonic()

    if family.serial:
        for n in range(len(lines)):
            trickler(n)
    else:
        threads = [harness.thread(trickler, n) for n in range(len(lines))]
        server.log.wait_count("setup", len(lines))
        assert exchange(harness, server, b"quick\n") == b"echo:quick\n"
        served_at = time.monotonic()
        for thread in threads:
            thread.join(len(lines[0]) * gap + CLIENT_TIMEOUT)
        assert len(done_at) == len(lines)
        assert served_at < min(done_at.values()), "held up until the tricklers were done"
    assert replies == {n: echo(line) for n, line in enumerate(lines)}
    assert server.log.of("error") == []


# Random bytes ----------------------------------------------------------------------------------


def send_while_reading(sock, data):
    """Send ``data`` on a helper thread while reading everything back until EOF (so neither
    side's buffers can fill up and deadlock us); returns what was read."""
    sender_error = []

    def send():
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError as error:
            sender_error.append(error)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = recv_until_eof(sock, limit=4 * len(data) + 65536)
    sender.join(CLIENT_TIMEOUT)
    assert not sender.is_alive()
    assert sender_error == []
    return received


def lines_of(data):
    """``data`` cut after each newline byte, newlines kept, as ``readline()`` cuts it
    (``bytes.splitlines`` would also cut at carriage returns and other line breaks)."""
    *lines, rest = data.split(b"\n")
    return [line + b"\n" for line in lines] + ([rest] if rest else [])


@pytest.mark.parametrize("family", STREAM, ids=str)
def test_random_bytes_to_a_line_server_are_echoed_line_by_line_exactly(family, harness):
    """256 KiB of random bytes (every byte value, newlines at random places) come back as
    exactly the lines the stdlib's ``rfile`` cuts them into, each echoed."""
    data = random.Random(20240611).randbytes(256 * 1024)
    expected = b"".join(echo(line) for line in lines_of(data))
    server = line_server(harness, family)
    assert send_while_reading(client(harness, server), data) == expected
    assert server.log.of("error") == []


@pytest.mark.parametrize("family", STREAM, ids=str)
def test_random_bytes_without_a_newline_overflow_the_line_limit_and_close_only_that_client(
    family, harness
):
    """Random bytes with no newline in them, far past the limit on a line (the handler's
    own ``readline`` limit; the reactor's ``max_message_size``): ``handle_error`` gets a
    ValueError, that connection is closed with nothing echoed, and a client connected
    before, and one connecting after, are served as usual."""
    limit = 1024
    garbage = random.Random(7).randbytes(64 * 1024).replace(b"\n", b"x")
    server = line_server(harness, family, line_limit=limit, max_message_size=limit)
    # On TCPServer a connection left open would hold up the hostile one: half-close it.
    bystander = client(harness, server, b"before\n")
    if family.serial:
        bystander.shutdown(socket.SHUT_WR)
        assert recv_until_eof(bystander) == b"echo:before\n"
    else:
        assert bystander.recv(100) == b"echo:before\n"

    hostile = client(harness, server)
    hostile_address = hostile.getsockname()
    try:
        hostile.sendall(garbage)
    except (ConnectionResetError, BrokenPipeError):
        pass  # the server may close (with our bytes unread, so with a reset) before we finish
    assert read_until_closed(hostile) == b""

    errors = server.log.wait_count("error", 1)
    assert [e["type"] for e in errors] == [ValueError]
    assert addresses(errors) == [hostile_address]
    if family.reactor:
        assert "max_message_size" in errors[0]["message"]
    if not family.serial:
        bystander.sendall(b"after\n")
        assert bystander.recv(100) == b"echo:after\n"
    assert exchange(harness, server, b"newcomer\n") == b"echo:newcomer\n"
    assert server.log.count("error") == 1


# Reactor idle timeout --------------------------------------------------------------------------


def test_reactor_idle_timeout_closes_silent_and_stalled_connections_while_others_are_served(
    harness,
):
    """``idle_timeout`` against a crowd: ten clients that never send and one that sends half
    a line and stalls (slowloris) are closed after about ``idle_timeout``; meanwhile a
    chatty client and one trickling a byte every ``idle_timeout / 4`` stay connected and
    get every reply."""
    idle = 0.4
    family = Family("rs", "ReactorTCPServer")
    server = line_server(harness, family, idle_timeout=idle)
    silent = [client(harness, server) for _ in range(10)]
    silent.append(client(harness, server, b"GET /never-finished HTTP/1.1"))
    server.log.wait_count("setup", len(silent))
    started = time.monotonic()

    closed_at = {}

    def watch():
        with selectors.DefaultSelector() as selector:
            for sock in silent:
                selector.register(sock, selectors.EVENT_READ)
            deadline = started + idle * 1.25 + CLIENT_TIMEOUT
            while len(closed_at) < len(silent) and time.monotonic() < deadline:
                for key, _ in selector.select(0.05):
                    if read_until_closed(key.fileobj, timeout=1.0) == b"":
                        closed_at[key.fileobj] = time.monotonic() - started
                    selector.unregister(key.fileobj)

    watcher = harness.thread(watch)
    chatty = client(harness, server, nodelay=True)
    trickler = client(harness, server, nodelay=True)
    line = b"one byte at a time\n"
    for n, byte in enumerate(line):  # about 2 * idle + 3 idle / 4 in all
        chatty.sendall(b"chat %d\n" % n)
        assert chatty.recv(100) == b"echo:chat %d\n" % n
        trickler.send(bytes([byte]))
        time.sleep(idle / 4)
    assert trickler.recv(100) == echo(line)
    watcher.join(CLIENT_TIMEOUT)

    assert len(closed_at) == len(silent), "some silent connections were never closed"
    assert min(closed_at.values()) >= idle * 0.8, closed_at
    assert max(closed_at.values()) <= idle * 1.25 + 1.0, closed_at
    assert server.log.count("finish") == len(silent)  # the chatty and trickling ones live on
    chatty.sendall(b"still here\n")
    assert chatty.recv(100) == b"echo:still here\n"
    assert server.log.of("error") == []


# Datagrams up to 65,507 bytes --------------------------------------------------------------------


DATAGRAM_SIZES = [0, 1, 1000, 8191, 8192, 8193, 40000, MAX_UDP_PAYLOAD]


def datagram_server(harness, family, **attributes):
    """A server of a handler datagram family recording each datagram's data (in order) and
    replying with its length, so the client can wait for each one."""
    log = Log()

    class Handler(family.module.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            log.add("message", address=self.client_address, data=data)
            sock.sendto(b"%d" % len(data), self.client_address)

    server = recording_server_class(family, log, **attributes)((LOOPBACK, 0), Handler)
    harness.callback(server.server_close)
    server.log = log
    harness.serve(server)
    return server


def big_datagram_client(harness):
    sock = harness.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sock.bind((LOOPBACK, 0))
    return sock


def delivered(harness, server, payloads):
    """Send each payload and wait for its reply; returns what the handler received."""
    sock = big_datagram_client(harness)
    for payload in payloads:
        sock.sendto(payload, server.server_address)
        sock.recv(100)
    return [event["data"] for event in server.log.of("message")]


@pytest.mark.parametrize("max_packet_size", [None, 1000, MAX_UDP_PAYLOAD])
@pytest.mark.parametrize("family", HANDLER_DATAGRAM, ids=str)
def test_datagrams_up_to_65507_bytes_are_truncated_at_max_packet_size_as_in_the_stdlib(
    family, max_packet_size, harness
):
    """The handler gets the first ``max_packet_size`` bytes of each datagram (the default
    is 8192), exactly as ``recvfrom(max_packet_size)`` in the stdlib's ``get_request``."""
    attributes = {} if max_packet_size is None else {"max_packet_size": max_packet_size}
    server = datagram_server(harness, family, **attributes)
    limit = server.max_packet_size
    rng = random.Random(65507)
    payloads = [rng.randbytes(size) for size in DATAGRAM_SIZES]
    assert delivered(harness, server, payloads) == [p[:limit] for p in payloads]
    assert server.log.of("error") == []


@pytest.mark.parametrize("name", ["UDPServer", "ThreadingUDPServer"])
def test_both_modules_deliver_the_same_bytes_from_oversized_datagrams(name, harness):
    """The oracle, side by side: the same datagrams to the stdlib's server and ours give
    the handlers byte-for-byte the same data."""
    rng = random.Random(8192)
    payloads = [rng.randbytes(size) for size in DATAGRAM_SIZES]
    seen = {}
    for impl in MODULES:
        server = datagram_server(harness, Family(impl, name))
        seen[impl] = delivered(harness, server, payloads)
    assert seen["rs"] == seen["stdlib"]


def test_reactor_udp_delivers_datagrams_up_to_65507_bytes_whole(harness):
    """``ReactorUDPServer`` with ``max_message_size`` 65,507 delivers every datagram whole,
    the largest UDP allows included, and replies to each."""
    log = Log()

    class Handler(socketserver_rs.MessageHandler):
        max_message_size = MAX_UDP_PAYLOAD

        def handle_message(self, message):
            log.add("message", address=self.client_address, data=message)
            return b"%d" % len(message)

    family = Family("rs", "ReactorUDPServer")
    server = recording_server_class(family, log)((LOOPBACK, 0), Handler)
    harness.callback(server.server_close)
    harness.serve(server)
    rng = random.Random(1)
    payloads = [rng.randbytes(size) for size in DATAGRAM_SIZES]
    sock = big_datagram_client(harness)
    for payload in payloads:
        sock.sendto(payload, server.server_address)
        assert sock.recv(100) == b"%d" % len(payload)
    assert [event["data"] for event in log.of("message")] == payloads
    assert log.of("error") == []


# SIGINT while handlers run ---------------------------------------------------------------------

SIGINT_CHILD = r"""
import json, os, signal, sys, threading, time

import socketserver_rs as module

family = sys.argv[1]
signal.alarm(30)  # hang guard: SIGALRM's default action ends this process
BUSY = 5.0  # how long each handler spins in Python (bounded)


lock = threading.Lock()


def report(**fields):
    with lock:
        sys.stdout.write(json.dumps(fields) + "\n")
        sys.stdout.flush()


def spin():
    deadline = time.monotonic() + BUSY
    while time.monotonic() < deadline:
        pass


if family.startswith("ReactorTCPServer"):

    class Handler(module.MessageHandler):
        framing = "line"

        def handle_message(self, message):
            report(event="busy")
            spin()

    base = module.ReactorTCPServer
    attributes = {"handler_threads": 4 if family.endswith("+handler_threads") else 0}
else:

    class Handler(module.BaseRequestHandler):
        def handle(self):
            self.request.recv(100)
            report(event="busy")
            spin()

    base = getattr(module, family)
    attributes = {"daemon_threads": True, "block_on_close": False}

Server = type("Server", (base,), attributes)
server = Server(("127.0.0.1", 0), Handler)
report(event="ready", port=server.server_address[1])
try:
    server.serve_forever()
    report(event="returned")
except KeyboardInterrupt:
    report(event="KeyboardInterrupt", at=time.monotonic())
os._exit(0)  # handlers may still be spinning
"""


@pytest.mark.parametrize(
    ("family", "busy_clients"),
    [
        ("ThreadingTCPServer", 3),
        ("ThreadPoolTCPServer", 3),
        ("ReactorTCPServer", 1),  # handlers run on the serving thread: one at a time
        ("ReactorTCPServer+handler_threads", 3),
    ],
)
def test_sigint_while_handlers_run_raises_keyboard_interrupt_within_a_second(
    family, busy_clients, harness
):
    """socketserver_rs only: Ctrl-C reaches ``serve_forever()`` as KeyboardInterrupt within
    a second while handlers are busy in Python, whether they run on request threads, pool
    workers, the reactor's serving thread or its handler threads."""
    proc = python_child(harness, SIGINT_CHILD, family)
    line = read_line(proc, 20.0)
    assert line, proc.stderr.read() if proc.poll() is not None else "child never got ready"
    port = json.loads(line)["port"]
    busy = []
    for _ in range(busy_clients):
        sock = harness.socket()
        sock.connect((LOOPBACK, port))
        sock.sendall(b"work\n")
        busy.append(sock)
    for _ in busy:  # each handler says so on stdout once it is running
        line = read_line(proc, 5.0)
        assert line and json.loads(line)["event"] == "busy", line
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    line = read_line(proc, 6.0)
    assert line, f"no KeyboardInterrupt: {proc.stderr.read() if proc.poll() is not None else ''}"
    outcome = json.loads(line)
    assert outcome["event"] == "KeyboardInterrupt", outcome
    took = outcome["at"] - sent
    print(f"\n[SIGINT] rs {family}: KeyboardInterrupt {took * 1000:.1f} ms after the signal")
    assert took < 1.0, f"KeyboardInterrupt after {took:.3f} s"
    assert proc.wait(5) == 0


# Shutdown under load ---------------------------------------------------------------------------

HAMMER = r"""
import socket, sys, threading, time

port, kind, workers, duration = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
deadline = time.monotonic() + duration
done = [0] * workers


def stream(n):
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
                sock.sendall(b"hammer\n")
                sock.recv(100)
                done[n] += 1
        except OSError:
            time.sleep(0.005)


def datagram(n):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                sock.sendto(b"hammer\n", ("127.0.0.1", port))
                sock.recv(100)
                done[n] += 1
            except OSError:
                time.sleep(0.005)


threads = [threading.Thread(target=stream if kind == "stream" else datagram, args=(n,))
           for n in range(workers)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(sum(done), flush=True)
"""

LOAD_FAMILIES = [
    *STREAM,
    Family("rs", "ReactorTCPServer+handler_threads"),
    *HANDLER_DATAGRAM,
    Family("rs", "ReactorUDPServer"),
]


def loaded_server(family, counter):
    """A one-request echo server of ``family`` counting what it serves in ``counter``."""
    module = family.module
    name = family.name.split("+")[0]
    base = getattr(module, name)
    attributes = {"handle_error": lambda self, request, address: None}
    if family.name.endswith("+handler_threads"):
        attributes["handler_threads"] = 4
    if name.startswith("Reactor"):

        class Handler(module.MessageHandler):
            framing = "line" if base.socket_type == socket.SOCK_STREAM else "raw"

            def handle_message(self, message):
                next(counter)
                return message

    elif base.socket_type == socket.SOCK_STREAM:

        class Handler(module.StreamRequestHandler):
            def handle(self):
                self.wfile.write(self.rfile.readline())
                next(counter)

    else:

        class Handler(module.BaseRequestHandler):
            def handle(self):
                data, sock = self.request
                sock.sendto(data, self.client_address)
                next(counter)

    return type(name, (base,), attributes)((LOOPBACK, 0), Handler)


@pytest.mark.parametrize("family", LOAD_FAMILIES, ids=str)
def test_shutdown_under_load_returns_promptly_and_server_close_leaves_no_thread(family, harness):
    """Sixteen clients (in another process) hammer the server with one-request connections
    (or datagrams); ``shutdown()`` returns promptly (socketserver_rs: under 2 s; the stdlib
    within the poll interval) and ``server_close()`` joins what ``block_on_close`` says it
    joins: afterwards no thread of the server is left."""
    baseline = set(threading.enumerate())
    counter = _Counter()
    server = loaded_server(family, counter)
    harness.callback(server.server_close)
    serving = harness.serve(server)
    kind = "stream" if server.socket_type == socket.SOCK_STREAM else "datagram"
    hammer = python_child(harness, HAMMER, server.server_address[1], kind, 16, 20.0)
    assert wait_for(lambda: counter.value >= 300, timeout=10.0), (
        f"only {counter.value} requests served under load"
    )

    finished, took, error = call_with_timeout(server.shutdown, timeout=10.0)
    assert finished, "shutdown() did not return"
    assert error is None, error
    print(f"\n[shutdown] {family}: shutdown() took {took * 1000:.1f} ms under load")
    if family.impl == "rs":
        assert took < 2.0, f"shutdown() took {took:.3f} s under load"
    serving.thread.join(5.0)
    assert not serving.thread.is_alive()

    finished, _, error = call_with_timeout(server.server_close, timeout=15.0)
    assert finished, "server_close() did not return"
    assert error is None, error
    left = [t for t in threading.enumerate() if t not in baseline and t.is_alive()]
    assert left == [], f"threads left after server_close(): {left}"
    hammer.kill()


class _Counter:
    """``next(counter)`` from any thread; ``counter.value`` is the count so far."""

    def __init__(self):
        self._lock = threading.Lock()
        self.value = 0

    def __next__(self):
        with self._lock:
            self.value += 1
            return self.value
