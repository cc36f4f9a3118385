"""``StreamRequestHandler.wfile.write()`` (unbuffered, ``wbufsize = 0``) against the stdlib's.

socketserver_rs once sent natively here, keeping the GIL; it writes through ``sendall()`` as
the stdlib does since that measured slower under contention (benches/README.md). These tests
keep pinning what a writer must do, on both modules: return values, exception types and
errnos, timeouts (one deadline for the whole call), non-blocking sockets, signals during a
blocked write, and TLS connections.
"""

import array
import errno
import hashlib
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import types

import pytest
from _behaviour_helpers import (
    CLIENT_TIMEOUT,
    STOP_TIMEOUT,
    wait_for,
)
from _handler_outcome import outcome_server

# Small kernel buffers on both ends, so a few MB fill them many times over.
SMALL_BUFFER = 32 * 1024
LARGE = 8 * 1024 * 1024


def pattern(size):
    """``size`` bytes that are not all alike, so loss or reordering would show."""
    block = bytes(range(256)) * 256
    return (block * (size // len(block) + 1))[:size]


def shrink_send_buffer(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)


def small_client(harness, server):
    """A connected client with a small receive buffer (set before connecting)."""
    sock = harness.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.connect(server.server_address)
    return sock


def recv_exactly(sock, size, pause_first=0):
    """Read ``size`` bytes; sleep ``pause`` s after each of the first ``pause_first``
    reads (a slow reader)."""
    chunks = []
    total = 0
    reads = 0
    while total < size:
        chunk = sock.recv(min(65536, size - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        reads += 1
        if reads <= pause_first:
            time.sleep(0.02)
    return b"".join(chunks)


def recv_all(sock):
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# Return values and argument types -----------------------------------------------------------


def test_unbuffered_wfile_write_is_a_native_method_on_plain_sockets(rs, harness):
    """The premise of the native write: ``wfile.write`` is a built-in method (no Python frame
    per write), and the class's Python method sends the same way."""

    def body(handler):
        native = isinstance(handler.wfile.write, types.BuiltinMethodType)
        return (
            native,
            handler.wfile.write(b"native "),
            type(handler.wfile).write(handler.wfile, b"python"),
        )

    server, outcome = outcome_server(rs, harness, body)
    client = harness.connect(server)
    server.handle_request()
    received = recv_all(client)
    outcome.wait()
    assert outcome.error is None
    assert outcome.result == (True, 7, 6)
    assert received == b"native python"


def test_write_returns_the_byte_count_of_any_bytes_like_object(ss, harness):
    items = [
        b"bytes",
        bytearray(b"bytearray"),
        memoryview(b"-memoryview-")[1:-1],
        array.array("i", [1, 2, 3]),
        memoryview(bytearray(range(8))).cast("i"),
        b"",
    ]

    def body(handler):
        return [handler.wfile.write(item) for item in items]

    server, outcome = outcome_server(ss, harness, body)
    client = harness.connect(server)
    server.handle_request()
    received = recv_all(client)
    outcome.wait()
    assert outcome.error is None
    assert outcome.result == [5, 9, 10, 3 * array.array("i").itemsize, 8, 0]
    assert received == b"".join(bytes(memoryview(item)) for item in items)


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(lambda: "text", TypeError, id="str"),
        pytest.param(lambda: memoryview(b"abcdef")[::2], BufferError, id="non-contiguous"),
        pytest.param(lambda: 42, TypeError, id="int"),
        pytest.param(lambda: None, TypeError, id="None"),
    ],
)
def test_write_rejects_what_is_not_a_contiguous_buffer_like_the_stdlib(ss, harness, make, expected):
    def body(handler):
        handler.wfile.write(make())

    server, outcome = outcome_server(ss, harness, body)
    client = harness.connect(server)
    server.handle_request()
    assert recv_all(client) == b"", "nothing was sent"
    assert type(outcome.wait().error) is expected


@pytest.mark.parametrize("timeout", [None, 10.0])
def test_large_write_to_a_slow_reader_is_delivered_completely(ss, harness, timeout):
    data = pattern(LARGE)

    def body(handler):
        shrink_send_buffer(handler.connection)
        return handler.wfile.write(data)

    server, outcome = outcome_server(ss, harness, body, timeout=timeout)
    client = small_client(harness, server)
    serving = threading.Thread(target=server.handle_request, daemon=True)
    serving.start()
    time.sleep(0.1)  # the writer fills the buffers and waits
    received = recv_exactly(client, len(data) + 1, pause_first=20)
    serving.join(STOP_TIMEOUT)
    assert outcome.wait().error is None
    assert outcome.result == len(data)
    assert len(received) == len(data)
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()


# Timeouts and non-blocking sockets ----------------------------------------------------------


def test_write_to_a_client_that_never_reads_times_out_after_the_socket_timeout(ss, harness):
    data = pattern(LARGE)

    def body(handler):
        shrink_send_buffer(handler.connection)
        return handler.wfile.write(data)

    server, outcome = outcome_server(ss, harness, body, timeout=0.5)
    client = small_client(harness, server)
    serving = threading.Thread(target=server.handle_request, daemon=True)
    serving.start()
    outcome.wait()
    serving.join(STOP_TIMEOUT)
    client.close()
    assert type(outcome.error) is TimeoutError  # socket.timeout is TimeoutError
    assert isinstance(outcome.error, socket.timeout)
    assert 0.4 <= outcome.seconds < 5.0


def test_socket_timeout_is_one_deadline_for_the_whole_write(ss, harness):
    """A reader that keeps taking a little does not extend the deadline: since Python 3.5
    the timeout bounds the whole ``sendall()``, not each send."""

    data = pattern(LARGE)  # far more than a trickle reader takes in the timeout

    def body(handler):
        shrink_send_buffer(handler.connection)
        return handler.wfile.write(data)

    server, outcome = outcome_server(ss, harness, body, timeout=0.5)
    client = small_client(harness, server)
    serving = threading.Thread(target=server.handle_request, daemon=True)
    serving.start()
    # Read a trickle until the handler gives up (bounded).
    deadline = time.monotonic() + STOP_TIMEOUT
    while not outcome.done.is_set() and time.monotonic() < deadline:
        client.recv(4096)
        time.sleep(0.02)
    outcome.wait()
    serving.join(STOP_TIMEOUT)
    client.close()
    assert type(outcome.error) is TimeoutError
    assert 0.4 <= outcome.seconds < 3.0


def test_write_on_a_full_non_blocking_socket_raises_blocking_io_error(ss, harness):
    data = pattern(LARGE)

    def body(handler):
        shrink_send_buffer(handler.connection)
        handler.connection.settimeout(0)
        return handler.wfile.write(data)

    server, outcome = outcome_server(ss, harness, body)
    client = small_client(harness, server)
    server.handle_request()
    client.close()
    error = outcome.wait().error
    assert type(error) is BlockingIOError
    assert error.errno in (errno.EAGAIN, errno.EWOULDBLOCK)


# Broken and closed connections --------------------------------------------------------------


@pytest.mark.parametrize("reset", [False, True], ids=["peer-closed", "peer-reset"])
def test_write_after_the_peer_went_away_raises_a_connection_error_with_errno(ss, harness, reset):
    def body(handler):
        try:
            handler.rfile.read()  # until the peer's FIN
        except ConnectionResetError:
            pass  # or its reset
        for _ in range(500):
            handler.wfile.write(b"x" * 65536)
            time.sleep(0.005)
        return "the writes never failed"

    server, outcome = outcome_server(ss, harness, body)
    client = harness.connect(server, b"bye")
    if reset:
        # SO_LINGER with a zero timeout: close() sends a reset instead of a FIN.
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    server.handle_request()
    error = outcome.wait().error
    assert isinstance(error, (BrokenPipeError, ConnectionResetError)), outcome.result
    assert error.errno in (errno.EPIPE, errno.ECONNRESET)
    assert error.strerror == os.strerror(error.errno)


def test_write_on_a_closed_socket_raises_oserror_ebadf(ss, harness):
    def body(handler):
        # rfile holds a reference that would keep the descriptor open: close it as well.
        handler.rfile.close()
        handler.connection.close()
        return handler.wfile.write(b"late")

    server, outcome = outcome_server(ss, harness, body)
    client = harness.connect(server)
    server.handle_request()
    client.close()
    error = outcome.wait().error
    assert type(error) is OSError
    assert error.errno == errno.EBADF
    assert error.strerror == "Bad file descriptor"


# Signals ----------------------------------------------------------------------------------


@pytest.fixture
def sigusr1():
    """Install a SIGUSR1 handler for the test (main thread), restoring the old one after."""
    previous = signal.getsignal(signal.SIGUSR1)
    installed = []

    def install(handler):
        signal.signal(signal.SIGUSR1, handler)
        installed.append(handler)

    try:
        yield install
    finally:
        signal.signal(signal.SIGUSR1, previous)


def interrupt_blocked_writer(writer_ident, client, writing, kills=3):
    """Once the writer is blocked on a full buffer, signal it ``kills`` times, then read
    everything the server sends. Returns a dict filled with the reading."""
    reading = {}

    def run():
        try:
            assert writing.wait(STOP_TIMEOUT)
            time.sleep(0.2)  # the buffers are full by now; the writer waits for room
            for _ in range(kills):
                signal.pthread_kill(writer_ident, signal.SIGUSR1)
                time.sleep(0.05)
            reading["data"] = recv_all(client)
        except BaseException as error:
            reading["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, reading


def test_signal_during_a_blocked_write_runs_its_handler_and_does_not_cut_the_write(
    ss, harness, sigusr1
):
    calls = []
    sigusr1(lambda signum, frame: calls.append(threading.get_ident()))
    data = pattern(LARGE)
    writing = threading.Event()

    def body(handler):
        shrink_send_buffer(handler.connection)
        writing.set()
        return handler.wfile.write(data)

    server, outcome = outcome_server(ss, harness, body)
    client = small_client(harness, server)
    # The handler runs on this (the main) thread, so the signal interrupts the write itself.
    reader, reading = interrupt_blocked_writer(threading.get_ident(), client, writing)
    server.handle_request()
    reader.join(STOP_TIMEOUT)
    assert not reader.is_alive()
    assert outcome.wait().error is None
    assert outcome.result == len(data)
    assert "error" not in reading, reading.get("error")
    assert hashlib.sha256(reading["data"]).digest() == hashlib.sha256(data).digest()
    assert calls and set(calls) == {threading.get_ident()}


def test_exception_from_a_signal_handler_during_a_blocked_write_propagates(ss, harness, sigusr1):
    class Interrupted(Exception):
        pass

    def raise_interrupted(signum, frame):
        raise Interrupted

    sigusr1(raise_interrupted)
    writing = threading.Event()
    data = pattern(LARGE)

    def body(handler):
        shrink_send_buffer(handler.connection)
        writing.set()
        return handler.wfile.write(data)

    server, outcome = outcome_server(ss, harness, body)
    client = small_client(harness, server)
    reader, _ = interrupt_blocked_writer(threading.get_ident(), client, writing, kills=1)
    server.handle_request()
    reader.join(STOP_TIMEOUT)
    assert not reader.is_alive()
    assert type(outcome.wait().error) is Interrupted


def test_signal_to_a_writer_on_another_thread_does_not_cut_the_write(ss, harness, sigusr1):
    """The Python handler runs on the main thread; the interrupted writer just goes on."""
    calls = []
    sigusr1(lambda signum, frame: calls.append(threading.get_ident()))
    data = pattern(LARGE)
    writing = threading.Event()

    def body(handler):
        shrink_send_buffer(handler.connection)
        writing.set()
        return handler.wfile.write(data)

    server, outcome = outcome_server(ss, harness, body)
    client = small_client(harness, server)
    serving = threading.Thread(target=server.handle_request, daemon=True)
    serving.start()
    assert writing.wait(STOP_TIMEOUT)
    reader, reading = interrupt_blocked_writer(serving.ident, client, writing)
    # Give the main thread bytecode to run, so the handler gets its turn.
    assert wait_for(lambda: outcome.done.is_set() and not reader.is_alive(), 2 * STOP_TIMEOUT)
    serving.join(STOP_TIMEOUT)
    assert outcome.error is None
    assert outcome.result == len(data)
    assert hashlib.sha256(reading["data"]).digest() == hashlib.sha256(data).digest()
    assert wait_for(lambda: calls)
    assert set(calls) == {threading.get_ident()}


# TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for ``localhost``/127.0.0.1: ``(certfile, keyfile)``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command-line tool is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return str(cert), str(key)


def test_tls_wrapped_server_socket_still_serves_writes_completely(ss, harness, certificate):
    certfile, keyfile = certificate
    data = pattern(2 * 1024 * 1024)
    seen = {}

    def body(handler):
        seen["request_type"] = type(handler.request)
        request = handler.rfile.readline()
        return request, handler.wfile.write(data)

    server, outcome = outcome_server(ss, harness, body)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certfile, keyfile)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    client_context = ssl.create_default_context(cafile=certfile)

    # The handshake happens inside accept(), so the client must run alongside the server.
    reply = {}

    def client():
        try:
            with socket.create_connection(server.server_address, CLIENT_TIMEOUT) as raw:
                with client_context.wrap_socket(raw, server_hostname="localhost") as tls:
                    tls.sendall(b"hello\n")
                    reply["data"] = recv_exactly(tls, len(data))
        except BaseException as error:
            reply["error"] = error

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    server.handle_request()
    thread.join(STOP_TIMEOUT)
    assert not thread.is_alive()
    assert "error" not in reply, reply.get("error")
    assert outcome.wait().error is None
    assert outcome.result == (b"hello\n", len(data))
    assert issubclass(seen["request_type"], ssl.SSLSocket)
    assert hashlib.sha256(reply["data"]).digest() == hashlib.sha256(data).digest()
