"""Graceful drain: ``shutdown(timeout)`` stops accepting at once, then waits up to ``timeout``
for the requests in flight (request threads, pool workers, reactor handler threads).

The stdlib's ``shutdown()`` takes no argument; called that way, both modules behave alike (it
does not wait for request threads: see test_shutdown_and_signals.py). With a timeout it is
ours alone, so these tests run on socketserver_rs only."""

import socket
import socketserver
import threading
import time

import pytest
import socketserver_rs

pytestmark = pytest.mark.timeout(60)

CLIENT_TIMEOUT = 10.0


class SlowHandler(socketserver_rs.StreamRequestHandler):
    """Reads one line, waits for the test's ``release`` event (or ``delay``), replies."""

    def handle(self):
        line = self.rfile.readline()
        self.server.started.set()
        self.server.release.wait(self.server.delay)
        self.wfile.write(b"done " + line)
        self.server.finished.append(line)


def make_server(base):
    class Server(base):
        allow_reuse_address = True

    server = Server(("127.0.0.1", 0), SlowHandler)
    server.started = threading.Event()
    server.release = threading.Event()
    server.delay = 0.5
    server.finished = []
    return server


def serving(server):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": None})
    thread.start()
    return thread


def send(address, payload, replies):
    with socket.create_connection(address, timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(payload)
        replies.append(sock.makefile("rb").readline())


BASES = [socketserver_rs.ThreadingTCPServer, socketserver_rs.ThreadPoolTCPServer]


@pytest.mark.parametrize("base", BASES, ids=lambda b: b.__name__)
def test_shutdown_with_a_timeout_waits_for_the_request_in_flight(base):
    server = make_server(base)
    loop = serving(server)
    replies = []
    client = threading.Thread(target=send, args=(server.server_address, b"a\n", replies))
    try:
        client.start()
        assert server.started.wait(CLIENT_TIMEOUT)
        started = time.monotonic()
        server.shutdown(timeout=20)
        # It returned because the request finished, not because the timeout ran out.
        assert server.finished == [b"a\n"]
        assert time.monotonic() - started < 15
        loop.join(5)
        assert not loop.is_alive()
        client.join(CLIENT_TIMEOUT)
        assert replies == [b"done a\n"]
    finally:
        server.release.set()
        server.server_close()


@pytest.mark.parametrize("base", BASES, ids=lambda b: b.__name__)
def test_shutdown_with_a_timeout_gives_up_on_requests_that_take_longer(base):
    server = make_server(base)
    server.delay = 30
    loop = serving(server)
    client = threading.Thread(target=send, args=(server.server_address, b"b\n", []))
    try:
        client.start()
        assert server.started.wait(CLIENT_TIMEOUT)
        started = time.monotonic()
        server.shutdown(timeout=0.3)
        took = time.monotonic() - started
        assert 0.25 <= took < 5, took
        assert server.finished == []  # still running: shutdown() did not wait for it
    finally:
        server.release.set()
        client.join(CLIENT_TIMEOUT)
        server.server_close()
        loop.join(5)


@pytest.mark.parametrize("base", BASES, ids=lambda b: b.__name__)
def test_shutdown_with_a_timeout_returns_at_once_when_nothing_is_in_flight(base):
    server = make_server(base)
    loop = serving(server)
    try:
        started = time.monotonic()
        server.shutdown(timeout=10)
        assert time.monotonic() - started < 2
    finally:
        server.server_close()
        loop.join(5)


@pytest.mark.parametrize("base", BASES, ids=lambda b: b.__name__)
def test_shutdown_with_a_timeout_sees_requests_end_under_an_overridden_process_request_thread(
    base,
):
    class Server(base):
        def process_request_thread(self, request, client_address):
            # Serves the request without calling the stock process_request_thread().
            try:
                self.finish_request(request, client_address)
            finally:
                self.shutdown_request(request)

    server = make_server(Server)
    server.release.set()  # the handler answers at once
    loop = serving(server)
    replies = []
    try:
        send(server.server_address, b"o\n", replies)
        assert replies == [b"done o\n"]
        started = time.monotonic()
        server.shutdown(timeout=CLIENT_TIMEOUT)
        # Nothing is left in flight: no reason to wait out the timeout.
        assert time.monotonic() - started < CLIENT_TIMEOUT / 2
        assert server.finished == [b"o\n"]
    finally:
        server.server_close()
        loop.join(5)


def test_the_stdlib_shutdown_takes_no_timeout_ours_adds_one():
    with pytest.raises(TypeError):
        socketserver.TCPServer.shutdown(object(), timeout=1)  # type: ignore[call-arg]
    server = socketserver_rs.TCPServer(("127.0.0.1", 0), SlowHandler)
    try:
        loop = serving(server)
        server.shutdown(timeout=1)  # a plain server's request runs on the loop's thread
        loop.join(5)
        assert not loop.is_alive()
    finally:
        server.server_close()


class SlowMessages(socketserver_rs.MessageHandler):
    framing = "line"

    def handle_message(self, message):
        self.server.started.set()
        self.server.release.wait(self.server.delay)
        return b"done " + message


def slow_messages_server(delay):
    """A reactor TCP server on two handler threads whose handler holds each message for
    ``delay`` seconds, or until the test sets ``release``."""

    class Server(socketserver_rs.ReactorTCPServer):
        handler_threads = 2

    server = Server(("127.0.0.1", 0), SlowMessages)
    server.started = threading.Event()
    server.release = threading.Event()
    server.delay = delay
    return server


def test_reactor_shutdown_with_a_timeout_answers_the_messages_already_read():
    server = slow_messages_server(delay=0.5)
    loop = serving(server)
    replies = []
    client = threading.Thread(target=send, args=(server.server_address, b"c\n", replies))
    try:
        client.start()
        assert server.started.wait(CLIENT_TIMEOUT)
        server.shutdown(timeout=20)
        client.join(CLIENT_TIMEOUT)
        assert replies == [b"done c\n"]
    finally:
        server.server_close()
        loop.join(5)


class Echo(socketserver_rs.MessageHandler):
    framing = "line"

    def handle_message(self, message):
        return b"echo " + message


def wait_until(condition, timeout=CLIENT_TIMEOUT):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.mark.parametrize("first_part", [b"", b"par"], ids=["nothing-sent", "half-a-line"])
def test_reactor_shutdown_with_a_timeout_answers_a_request_still_on_its_way(first_part):
    # A client the reactor has accepted but whose request has not (all) arrived when the
    # drain begins: a prefork reload stops old children at any such moment.
    server = socketserver_rs.ReactorTCPServer(("127.0.0.1", 0), Echo)
    loop = serving(server)
    stopper = None
    try:
        with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as client:
            client.sendall(first_part)
            wait_until(lambda: server.stats()["active_connections"] == 1)
            stopper = threading.Thread(target=server.shutdown, kwargs={"timeout": 20})
            stopper.start()
            time.sleep(0.2)  # the drain has begun; the rest of the request comes now
            client.sendall(b"tial\n" if first_part else b"late\n")
            reply = client.makefile("rb").readline()
        assert reply == (b"echo partial\n" if first_part else b"echo late\n")
        stopper.join(CLIENT_TIMEOUT)
        assert not stopper.is_alive()
    finally:
        server.server_close()
        loop.join(5)
        if stopper is not None:
            stopper.join(CLIENT_TIMEOUT)


def test_reactor_shutdown_with_a_timeout_does_not_wait_for_idle_connections():
    server = socketserver_rs.ReactorTCPServer(("127.0.0.1", 0), Echo)
    loop = serving(server)
    try:
        with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as client:
            client.sendall(b"one\n")
            reader = client.makefile("rb")
            assert reader.readline() == b"echo one\n"
            started = time.monotonic()
            server.shutdown(timeout=20)  # the connection is idle between requests
            assert time.monotonic() - started < 5
            server.server_close()
            assert reader.readline() == b""  # closed by server_close(), as without a drain
    finally:
        server.server_close()
        loop.join(5)


def test_reactor_shutdown_without_a_timeout_does_not_wait_for_handler_threads():
    # Held until released: a shutdown() that waited for it would take CLIENT_TIMEOUT.
    server = slow_messages_server(delay=CLIENT_TIMEOUT)
    loop = serving(server)
    replies = []
    client = threading.Thread(target=send, args=(server.server_address, b"d\n", replies))
    try:
        client.start()
        assert server.started.wait(CLIENT_TIMEOUT)
        started = time.monotonic()
        server.shutdown()
        took = time.monotonic() - started
        assert took < CLIENT_TIMEOUT / 2, took
    finally:
        server.release.set()
        server.server_close()
        loop.join(5)
        client.join(CLIENT_TIMEOUT)


class SlowDatagrams(socketserver_rs.MessageHandler):
    def handle_message(self, message):
        self.server.started.set()
        time.sleep(0.5)
        return b"done " + message


def test_reactor_udp_shutdown_with_a_timeout_answers_the_datagrams_already_received():
    class Server(socketserver_rs.ReactorUDPServer):
        handler_threads = 2

    server = Server(("127.0.0.1", 0), SlowDatagrams)
    server.started = threading.Event()
    loop = serving(server)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(CLIENT_TIMEOUT)
            client.sendto(b"e", server.server_address)
            assert server.started.wait(CLIENT_TIMEOUT)
            server.shutdown(timeout=20)
            # shutdown() returned once the handler was done and its reply sent.
            client.settimeout(0.5)
            assert client.recv(100) == b"done e"
    finally:
        server.server_close()
        loop.join(5)
