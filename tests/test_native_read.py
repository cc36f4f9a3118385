"""``StreamRequestHandler.rfile`` on plain sockets (socketserver_rs reads through a native raw
reader, keeping the GIL unless it must wait) against the stdlib's ``makefile("rb")``.

Parametrised over (socketserver, socketserver_rs): what ``readline()``, ``read(n)``,
iteration and ``peek()`` return for every ``rbufsize`` (0 included), timeouts and the
timed-out state after them, non-blocking sockets, errors with their errnos, signals during a
blocked read, the socket staying open while ``rfile`` is (``_io_refs``), and TLS connections
(which keep the stdlib path) must all match.
"""

import errno
import gc
import hashlib
import io
import signal
import socket
import ssl
import struct
import threading
import time
import types

import pytest
from _behaviour_helpers import CLIENT_TIMEOUT, STOP_TIMEOUT, wait_for
from _handler_outcome import outcome_server

# The TLS certificate fixture is shared with the wfile tests.
from test_wfile import certificate, pattern  # noqa: F401

pytestmark = pytest.mark.timeout(60)


def serve(ss, harness, body, payload=b"", half_close=True, **handler_attrs):
    """Serve one connection that sends ``payload`` (then half-closes); the outcome."""
    server, outcome = outcome_server(ss, harness, body, **handler_attrs)
    client = harness.connect(server, payload)
    if half_close:
        client.shutdown(socket.SHUT_WR)
    server.handle_request()
    return outcome.wait()


def error_shape(error):
    return None if error is None else (type(error), getattr(error, "errno", None))


# The native path ------------------------------------------------------------------------


def test_plain_socket_reads_take_the_native_path(rs, harness):
    """Guards the premise of this file: on a plain socket, socketserver_rs's rfile reads
    natively (the other tests compare that path with the stdlib's)."""

    def body(handler):
        return type(handler.rfile), type(handler.rfile.raw).__name__

    outcome = serve(rs, harness, body, b"x\n")
    assert outcome.result == (io.BufferedReader, "_SocketReader")


@pytest.mark.parametrize("rbufsize", [0, -1])
def test_refills_call_the_native_readinto_and_the_class_method_reads_the_same(
    rs, harness, rbufsize
):
    """The premise of the native reader's speed: what BufferedReader (or, unbuffered,
    RawIOBase.read()) finds as ``raw.readinto`` is a built-in method, so a refill runs no
    Python frame; the Python method of the class reads from the same stream."""

    def body(handler):
        raw = handler.rfile if rbufsize == 0 else handler.rfile.raw
        first, second = bytearray(5), bytearray(5)
        return (
            isinstance(raw.readinto, types.BuiltinMethodType),
            raw.readinto(first),
            type(raw).readinto(raw, second),
            bytes(first + second),
        )

    outcome = serve(rs, harness, body, b"0123456789")
    assert outcome.error is None
    assert outcome.result == (True, 5, 5, b"0123456789")


@pytest.mark.parametrize("rbufsize", [0, -1])
def test_native_reader_is_a_socketio_like_makefiles(rs, harness, rbufsize):
    def body(handler):
        raw = handler.rfile if rbufsize == 0 else handler.rfile.raw
        return (
            isinstance(raw, socket.SocketIO),
            raw.mode,
            raw.name == handler.connection.fileno(),
            raw.readable(),
            raw.writable(),
            raw.seekable(),
        )

    outcome = serve(rs, harness, body, b"x\n", rbufsize=rbufsize)
    assert outcome.error is None
    assert outcome.result == (True, "rb", True, True, False, False)


# What the reads return --------------------------------------------------------------------

RBUFSIZES = [0, 1, 7, 64, -1, 1 << 20]
TEXT = b"first line\nsecond\n" + b"x" * 10_000 + b"\nno newline at the end"


@pytest.mark.parametrize("rbufsize", RBUFSIZES)
def test_readline_read_peek_and_iteration_return_what_the_stdlib_returns(ss, harness, rbufsize):
    def body(handler):
        rfile = handler.rfile
        # peek() exists with a buffer only (rbufsize 0 gives the raw reader); it consumes
        # nothing, so it is left out of the bytes read.
        peeked = rfile.peek(1)[:1] if rbufsize != 0 else None
        reads = [rfile.readline(), rfile.readline(5), rfile.read(3), rfile.read(4000)]
        lines = list(rfile)
        return peeked, reads, lines, rfile.read(), rfile.readline()

    outcome = serve(ss, harness, body, TEXT, rbufsize=rbufsize)
    assert outcome.error is None
    peeked, reads, lines, rest, after = outcome.result
    assert peeked in (None, b"f")
    assert reads[:3] == [b"first line\n", b"secon", b"d\nx"]
    assert b"".join(reads) + b"".join(lines) == TEXT
    assert lines[-1] == b"no newline at the end"
    assert (rest, after) == (b"", b"")


@pytest.mark.parametrize("rbufsize", [0, -1])
def test_readinto_fills_a_bytearray_and_rejects_a_read_only_buffer(ss, harness, rbufsize):
    def body(handler):
        buffer = bytearray(5)
        count = handler.rfile.readinto(buffer)
        try:
            handler.rfile.readinto(b"read-only")
        except Exception as error:
            rejected = type(error)
        else:
            rejected = None
        return count, bytes(buffer), rejected

    outcome = serve(ss, harness, body, b"hello world", rbufsize=rbufsize)
    assert outcome.error is None
    assert outcome.result == (5, b"hello", TypeError)


def test_a_large_transfer_arrives_whole_through_readline_and_read(ss, harness):
    data = pattern(4 * 1024 * 1024)
    lines = b"".join(b"%d\n" % i for i in range(10_000))

    def body(handler):
        got_lines = [handler.rfile.readline() for _ in range(10_000)]
        blob = handler.rfile.read(len(data))
        return hashlib.sha256(b"".join(got_lines)).digest(), hashlib.sha256(blob).digest()

    server, outcome = outcome_server(ss, harness, body)
    client = harness.connect(server)

    def send():
        client.sendall(lines)
        for start in range(0, len(data), 100_000):
            client.sendall(data[start : start + 100_000])

    harness.thread(send)
    server.handle_request()
    assert outcome.wait().error is None
    assert outcome.result == (hashlib.sha256(lines).digest(), hashlib.sha256(data).digest())


# Timeouts and non-blocking sockets --------------------------------------------------------


# rbufsize 0 and 4 fill every raw read here, so the wait comes after a read that filled the
# buffer (socketserver_rs then tries without waiting first); -1 after a short read.
@pytest.mark.parametrize("rbufsize", [0, 4, -1])
def test_read_times_out_after_the_handler_timeout_and_stays_timed_out(ss, harness, rbufsize):
    def body(handler):
        results = []
        for _ in range(2):
            started = time.monotonic()
            try:
                handler.rfile.readline()
            except OSError as error:
                results.append((type(error), str(error), time.monotonic() - started))
        return results

    outcome = serve(ss, harness, body, b"0123456789abcdef", half_close=False, timeout=0.3)
    assert outcome.error is None
    (first, message, waited), (second, second_message, _) = outcome.result
    assert first is TimeoutError and message == "timed out"
    assert 0.25 <= waited < 0.3 + 4.0
    assert second is OSError and second_message == "cannot read from timed out object"


@pytest.mark.parametrize("rbufsize", [0, -1])
def test_read_on_a_non_blocking_socket_with_nothing_there_returns_none(ss, harness, rbufsize):
    def body(handler):
        handler.connection.setblocking(False)
        return handler.rfile.read(10), handler.rfile.readinto(bytearray(4))

    outcome = serve(ss, harness, body, half_close=False)
    assert outcome.error is None
    assert outcome.result == (None, None)


def test_read_on_a_non_blocking_socket_returns_what_is_there(ss, harness):
    def body(handler):
        handler.connection.setblocking(False)
        assert wait_for(lambda: handler.rfile.peek(1))
        return handler.rfile.read1(100)

    outcome = serve(ss, harness, body, b"abc", half_close=False)
    assert outcome.error is None
    assert outcome.result == b"abc"


# Errors --------------------------------------------------------------------------------------


def test_read_after_a_reset_raises_connection_reset_with_its_errno(ss, harness):
    def body(handler):
        time.sleep(0.2)  # the client's reset has arrived by now
        handler.rfile.read(10)

    server, outcome = outcome_server(ss, harness, body)
    client = harness.connect(server)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.sendall(b"x")
    client.close()  # with linger 0: a reset
    server.handle_request()
    assert error_shape(outcome.wait().error) == (ConnectionResetError, errno.ECONNRESET)


@pytest.mark.parametrize("rbufsize", [0, -1])
def test_read_after_the_socket_is_really_closed_raises_ebadf(ss, harness, rbufsize):
    def body(handler):
        # detach() takes the descriptor away from the socket whatever _io_refs says.
        import os

        os.close(handler.connection.detach())
        handler.rfile.read(1)

    outcome = serve(ss, harness, body, b"data", rbufsize=rbufsize)
    assert error_shape(outcome.error) == (OSError, errno.EBADF)


def test_read_on_a_closed_rfile_raises_value_error(ss, harness):
    def body(handler):
        handler.rfile.close()
        handler.rfile.readline()

    outcome = serve(ss, harness, body, b"line\n")
    assert type(outcome.error) is ValueError


# The socket stays open while rfile is ---------------------------------------------------------


@pytest.mark.parametrize("rbufsize", [0, -1])
def test_closing_the_connection_leaves_it_open_until_rfile_closes(ss, harness, rbufsize):
    def body(handler):
        handler.connection.close()  # only marks it closed: rfile still refers to it
        still_open = handler.connection.fileno() != -1
        line = handler.rfile.readline()
        handler.rfile.close()  # the last reference: now it really closes
        return still_open, line, handler.connection.fileno()

    outcome = serve(ss, harness, body, b"line\nrest")
    assert outcome.error is None
    assert outcome.result == (True, b"line\n", -1)


@pytest.mark.parametrize("rbufsize", [0, -1])
def test_an_rfile_dropped_unclosed_releases_the_connection_at_once(ss, harness, rbufsize):
    """Dropping the last reference to rfile closes it there and then (no reference cycle
    waits for the garbage collector), and with it a connection closed meanwhile."""

    def body(handler):
        handler.connection.close()  # only marks it closed: rfile still refers to it
        line = handler.rfile.readline()
        gc.disable()
        try:
            handler.rfile = io.BytesIO()  # the last reference to the real rfile goes
            fileno = handler.connection.fileno()
        finally:
            gc.enable()
        return line, fileno

    outcome = serve(ss, harness, body, b"line\n", rbufsize=rbufsize)
    assert outcome.error is None
    assert outcome.result == (b"line\n", -1)


# Signals ---------------------------------------------------------------------------------------


@pytest.fixture
def sigusr1():
    """Install a SIGUSR1 handler for the test (main thread), restoring the old one after."""
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        yield lambda handler: signal.signal(signal.SIGUSR1, handler)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def signal_then_send(target_ident, client, reading, kills, payload):
    """Once the reader waits, signal it ``kills`` times, then send ``payload``."""

    def run():
        assert reading.wait(STOP_TIMEOUT)
        time.sleep(0.2)  # the reader is blocked in its wait by now
        for _ in range(kills):
            signal.pthread_kill(target_ident, signal.SIGUSR1)
            time.sleep(0.05)
        try:
            client.sendall(payload)
        except OSError:
            pass  # the reader went away (the handler raised)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("rbufsize", [0, 4, -1])
def test_signal_during_a_blocked_read_runs_its_handler_and_the_read_goes_on(
    ss, harness, sigusr1, rbufsize
):
    calls = []
    sigusr1(lambda signum, frame: calls.append(signum))
    reading = threading.Event()

    def body(handler):
        first = handler.rfile.read(4)  # fills a 4-byte buffer: the next read is eager
        reading.set()
        return first + handler.rfile.readline()

    server, outcome = outcome_server(ss, harness, body, rbufsize=rbufsize)
    client = harness.connect(server, b"full")
    # The handler runs on this (the main) thread, so the signal interrupts the read itself.
    sender = signal_then_send(threading.get_ident(), client, reading, 3, b"after\n")
    server.handle_request()
    sender.join(STOP_TIMEOUT)
    assert outcome.wait().error is None
    assert outcome.result == b"fullafter\n"
    assert calls == [signal.SIGUSR1] * 3


def test_exception_from_a_signal_handler_during_a_blocked_read_propagates(ss, harness, sigusr1):
    class Interrupted(Exception):
        pass

    def raise_interrupted(signum, frame):
        raise Interrupted

    sigusr1(raise_interrupted)
    reading = threading.Event()

    def body(handler):
        reading.set()
        return handler.rfile.readline()

    server, outcome = outcome_server(ss, harness, body)
    client = harness.connect(server)
    sender = signal_then_send(threading.get_ident(), client, reading, 1, b"late\n")
    server.handle_request()
    sender.join(STOP_TIMEOUT)
    assert type(outcome.wait().error) is Interrupted


def test_a_blocked_read_does_not_hold_the_gil(ss, harness):
    """While a handler waits for data, another Python thread keeps running."""
    reading = threading.Event()
    ticks = []

    def body(handler):
        reading.set()
        return handler.rfile.readline()

    server, outcome = outcome_server(ss, harness, body)
    client = harness.connect(server)

    def tick_then_send():
        assert reading.wait(STOP_TIMEOUT)
        deadline = time.monotonic() + 0.3
        while time.monotonic() < deadline:
            ticks.append(1)
            time.sleep(0.001)
        client.sendall(b"done\n")

    harness.thread(tick_then_send)
    server.handle_request()
    assert outcome.wait().result == b"done\n"
    assert len(ticks) > 20


# TLS keeps the stdlib path ---------------------------------------------------------------------


def test_tls_wrapped_connections_read_through_the_stdlib_socketio(ss, harness, certificate):  # noqa: F811
    certfile, keyfile = certificate

    def body(handler):
        return type(handler.rfile.raw), handler.rfile.readline(), handler.rfile.read(5)

    server, outcome = outcome_server(ss, harness, body)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certfile, keyfile)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    client_context = ssl.create_default_context(cafile=certfile)
    failures = []

    def client():
        try:
            with socket.create_connection(server.server_address, CLIENT_TIMEOUT) as raw:
                with client_context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"hello\nworld")
                    assert outcome.done.wait(STOP_TIMEOUT)
        except BaseException as error:
            failures.append(error)

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    server.handle_request()
    thread.join(STOP_TIMEOUT)
    assert not failures, failures
    assert outcome.wait().error is None
    assert outcome.result == (socket.SocketIO, b"hello\n", b"world")
