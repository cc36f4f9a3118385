"""``ThreadPoolMixIn.dispatch_when_readable``: accepted connections wait in the engine, with
no worker, until their first bytes arrive; silent ones are closed after the first-byte
timeout without calling the handler. socketserver_rs only (the stdlib has no pool).

Every scenario runs on both of the engine's paths: ``direct`` (stock hooks: connections go
from the socket to the pool without Python on the serving thread) and ``python`` (a hook is
overridden, so Python's ``process_request()`` hands the connection to the engine).
"""

import socket
import threading
import time

import pytest
from _behaviour_helpers import LOOPBACK, wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=["direct", "python"])
def path(request):
    return request.param


def pool_server(rs, harness, path, handler_timeout=None, **attrs):
    """A serving ThreadPoolTCPServer with ``dispatch_when_readable`` (unless overridden) and
    a line-echo handler; returns (server, calls: the client ports the handler saw,
    closed: the requests shutdown_request() was called for)."""
    calls = []
    closed = []

    class Echo(rs.StreamRequestHandler):
        timeout = handler_timeout

        def handle(self):
            calls.append(self.client_address[1])
            for line in self.rfile:
                self.wfile.write(line)

    class Server(rs.ThreadPoolTCPServer):
        def shutdown_request(self, request):
            closed.append(request)
            super().shutdown_request(request)

    if path == "python":
        # Any override of an accepting hook takes the engine off its direct path.
        Server.verify_request = lambda self, request, client_address: True

    attrs.setdefault("dispatch_when_readable", True)
    server = harness.server(Server, (LOOPBACK, 0), Echo, **attrs)
    harness.serve(server)
    return server, calls, closed


def connect(harness, server):
    client = harness.socket()
    client.settimeout(5)
    client.connect(server.server_address)
    return client


def echo(client, payload=b"ping\n"):
    client.sendall(payload)
    received = b""
    while not received.endswith(b"\n"):
        chunk = client.recv(100)
        assert chunk, "connection closed before the echo"
        received += chunk
    return received


def busy_workers(server):
    pool = server._rs_workers.pool
    return pool.workers - pool.idle


def test_silent_clients_do_not_occupy_workers(rs, harness, path):
    server, calls, _ = pool_server(rs, harness, path, handler_timeout=30, max_workers=2)
    silent = [connect(harness, server) for _ in range(6)]
    assert wait_for(lambda: server._rs_engine.parked == 6, 5)  # accepted and parked
    # Two workers, six silent clients: a speaking client is still served at once.
    speaker = connect(harness, server)
    started = time.monotonic()
    assert echo(speaker) == b"ping\n"
    assert time.monotonic() - started < 2.0
    assert len(calls) == 1
    assert busy_workers(server) <= 1
    speaker.close()  # frees its worker
    # The silent ones are still connected and get served as soon as they speak (two
    # workers: two of them at a time).
    for client in silent[:2]:
        assert echo(client, b"late\n") == b"late\n"
    assert len(calls) == 3
    for client in silent:
        client.close()


def test_a_client_that_speaks_before_the_timeout_is_served(rs, harness, path):
    server, calls, _ = pool_server(rs, harness, path, handler_timeout=2.0)
    client = connect(harness, server)
    time.sleep(0.5)  # silent for a while, but less than the timeout
    assert echo(client) == b"ping\n"
    assert calls == [client.getsockname()[1]]


@pytest.mark.parametrize("where", ["handler", "server"])
def test_a_silent_client_is_closed_after_the_timeout_without_a_handler_call(
    rs, harness, path, where
):
    if where == "handler":
        server, calls, closed = pool_server(rs, harness, path, handler_timeout=0.3)
    else:
        # first_byte_timeout wins over the handler's (longer) timeout.
        server, calls, closed = pool_server(
            rs, harness, path, handler_timeout=30, first_byte_timeout=0.3
        )
    client = connect(harness, server)
    started = time.monotonic()
    assert client.recv(10) == b""  # closed by the server
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 3.0, elapsed
    assert calls == []
    if path == "python":
        # Python made the request, so the server's own shutdown_request() closed it.
        assert len(closed) == 1
    # The server carries on.
    assert echo(connect(harness, server)) == b"ping\n"


def test_without_any_timeout_a_silent_client_waits_parked(rs, harness, path):
    server, calls, _ = pool_server(rs, harness, path, max_workers=1)
    client = connect(harness, server)
    client.settimeout(0.5)
    with pytest.raises(TimeoutError):
        client.recv(10)  # not closed
    assert calls == []
    assert busy_workers(server) == 0
    client.settimeout(5)
    assert echo(client) == b"ping\n"


def test_a_client_that_hangs_up_silently_reaches_the_handler_as_end_of_stream(rs, harness, path):
    server, calls, _ = pool_server(rs, harness, path, handler_timeout=30)
    client = connect(harness, server)
    port = client.getsockname()[1]
    client.close()
    assert wait_for(lambda: calls == [port], 5)


def test_parked_clients_are_handed_to_workers_when_serving_stops(rs, harness, path):
    server, calls, _ = pool_server(rs, harness, path, handler_timeout=30)
    client = connect(harness, server)
    time.sleep(0.2)
    server.shutdown()
    # As with dispatch_when_readable off: a worker serves the connection.
    assert echo(client) == b"ping\n"
    assert len(calls) == 1


GREETING = b"220 hello\n"


def speaks_first_server(rs, harness, **attrs):
    class Greeter(rs.StreamRequestHandler):
        def handle(self):
            self.wfile.write(GREETING)
            for line in self.rfile:
                self.wfile.write(line)

    server = harness.server(rs.ThreadPoolTCPServer, (LOOPBACK, 0), Greeter, **attrs)
    harness.serve(server)
    return server


def test_server_speaks_first_protocols_work_with_the_default(rs, harness):
    assert rs.ThreadPoolTCPServer.dispatch_when_readable is False
    server = speaks_first_server(rs, harness)
    client = connect(harness, server)
    assert client.recv(100) == GREETING  # without sending anything


def test_with_dispatch_when_readable_a_greeting_waits_for_the_client(rs, harness):
    """Why it is off by default: the handler only runs once the client has spoken."""
    server = speaks_first_server(rs, harness, dispatch_when_readable=True)
    client = connect(harness, server)
    client.settimeout(0.5)
    with pytest.raises(TimeoutError):
        client.recv(100)
    client.settimeout(5)
    client.sendall(b"x\n")
    received = b""
    while len(received) < len(GREETING) + 2:
        received += client.recv(100)
    assert received == GREETING + b"x\n"


def test_datagram_pool_servers_ignore_it(rs, harness):
    got = threading.Event()

    class Reply(rs.DatagramRequestHandler):
        def handle(self):
            got.set()
            self.wfile.write(b"ok")

    server = harness.server(
        rs.ThreadPoolUDPServer, (LOOPBACK, 0), Reply, dispatch_when_readable=True
    )
    harness.serve(server)
    client = harness.socket(type=socket.SOCK_DGRAM)
    client.settimeout(5)
    client.sendto(b"x", server.server_address)
    assert client.recv(10) == b"ok"


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_a_negative_or_nan_first_byte_timeout_is_refused(rs, harness, bad):
    server = harness.server(
        rs.ThreadPoolTCPServer,
        (LOOPBACK, 0),
        rs.StreamRequestHandler,
        dispatch_when_readable=True,
        first_byte_timeout=bad,
    )
    with pytest.raises(ValueError, match="first_byte_timeout"):
        server.serve_forever(0.05)


def test_parked_clients_are_closed_when_serving_fails(rs, harness):
    """serve_forever() ending with an exception (here from service_actions(); Ctrl-C is the
    usual one) closes the parked connections instead of handing them to workers."""
    calls = []
    failing = threading.Event()

    class Echo(rs.StreamRequestHandler):
        def handle(self):
            calls.append(self.client_address)

    class Server(rs.ThreadPoolTCPServer):
        dispatch_when_readable = True

        def service_actions(self):
            if failing.is_set():
                raise RuntimeError("serving fails")

    server = harness.server(Server, (LOOPBACK, 0), Echo)
    serving = harness.serve(server, poll_interval=0.05)
    client = connect(harness, server)
    assert wait_for(lambda: server._rs_engine.parked == 1, 5)
    failing.set()
    assert serving.returned.wait(5)
    assert isinstance(serving.error, RuntimeError)
    assert client.recv(10) == b""  # closed, never served
    assert calls == []
    assert server._rs_engine.parked == 0
