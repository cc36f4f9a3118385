"""One serving call at a time on a reactor server, over real loopback sockets.

A reactor server's connections live in the engine between serving calls, and each call takes
them (and the poller) for as long as it runs. A second ``serve_forever()`` while one runs,
from another thread or from a handler, is refused with ``RuntimeError``; the running call,
its connections and ``shutdown()`` go on as if it had not been made. socketserver_rs only:
the stdlib has no reactor (its classic servers, and ours, let overlapping calls both serve).

Every wait is bounded: a call that should have been refused but serves instead fails the
test, and the servers are shut down and closed by the fixture.
"""

import os
import socket
import sys
import threading
import time

import pytest
from _behaviour_helpers import needs_unix
from socketserver_rs import MessageHandler, ReactorTCPServer, ReactorUDPServer

if hasattr(socket, "AF_UNIX"):
    from socketserver_rs import ReactorUnixStreamServer

LOOPBACK = "127.0.0.1"
# How long a client, a join or an expected event waits before the test fails.
TIMEOUT = 5.0
ALREADY_SERVING = "already serving"

FAMILIES = [
    "tcp",
    pytest.param("unix", marks=needs_unix),
    "udp",
]


class Events:
    """A thread-safe log of what handlers and ``handle_error()`` saw, with bounded waits."""

    def __init__(self):
        self.cond = threading.Condition()
        self.log = []

    def add(self, kind, *details):
        with self.cond:
            self.log.append((kind, *details))
            self.cond.notify_all()

    def of(self, kind):
        with self.cond:
            return [event[1:] for event in self.log if event[0] == kind]

    def wait_count(self, kind, n):
        deadline = time.monotonic() + TIMEOUT
        with self.cond:
            while len([e for e in self.log if e[0] == kind]) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {n} {kind!r}: {self.log!r}")
                self.cond.wait(left)


def make_server(family, unix_dir, on_message=None, **attributes):
    """A reactor server of ``family`` whose line handler replies with the message uppercased
    (or with ``on_message(handler, message)``) and records setup, finish and errors."""
    events = Events()

    class Handler(MessageHandler):
        framing = "line"

        def setup(self):
            events.add("setup", self)

        def handle_message(self, message):
            if on_message is not None:
                return on_message(self, message)
            return message.upper()

        def finish(self):
            events.add("finish", self)

    def handle_error(self, handler, client_address):
        events.add("error", handler, sys.exception())

    namespace = {"handle_error": handle_error, **attributes}
    if family == "tcp":
        server = type("Server", (ReactorTCPServer,), namespace)((LOOPBACK, 0), Handler)
    elif family == "unix":
        path = os.path.join(unix_dir, "reactor.sock")
        server = type("Server", (ReactorUnixStreamServer,), namespace)(path, Handler)
    else:
        server = type("Server", (ReactorUDPServer,), namespace)((LOOPBACK, 0), Handler)
    server.events = events
    server.family = family
    return server


def connect(server):
    if server.family == "udp":
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind((LOOPBACK, 0))
    else:
        client = socket.socket(socket.AF_UNIX if server.family == "unix" else socket.AF_INET)
    client.settimeout(TIMEOUT)
    client.connect(server.server_address)
    return client


def exchange(client, line):
    """Send one line, return the reply line."""
    client.sendall(line)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = client.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


class Call:
    """``serve_forever()`` on a thread of its own, with what it raised."""

    def __init__(self, server, start=None):
        self.server = server
        self.start_together = start  # a Barrier, for calls made at once
        self.raised = None
        self.returned = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        if self.start_together is not None:
            self.start_together.wait(TIMEOUT)
        try:
            self.server.serve_forever()
            self.returned = True
        except BaseException as exc:
            self.raised = exc

    def join(self, what):
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), f"{what} did not return"


@pytest.fixture
def servers():
    made = []
    yield made
    for server in made:
        # Stops every call still serving (a call that wrongly served too takes one each).
        for _ in range(4):
            stopper = threading.Thread(target=server.shutdown, daemon=True)
            stopper.start()
            stopper.join(1.0)
        server.server_close()


@pytest.mark.parametrize("family", FAMILIES)
def test_a_serving_call_from_another_thread_is_refused_and_the_running_one_goes_on(
    servers, family, unix_dir
):
    server = make_server(family, unix_dir)
    servers.append(server)
    running = Call(server)
    client = connect(server)
    assert exchange(client, b"one\n") == b"ONE\n"

    second = Call(server)
    second.join("the second serve_forever()")
    assert isinstance(second.raised, RuntimeError), second.raised
    assert ALREADY_SERVING in str(second.raised)
    assert f"thread {running.thread.ident}" in str(second.raised)

    # The running call still serves the connection it had, and a new one.
    assert exchange(client, b"two\n") == b"TWO\n"
    other = connect(server)
    assert exchange(other, b"three\n") == b"THREE\n"
    server.shutdown()  # one shutdown() stops it: the refused call did not clear the request
    running.join("serve_forever() after shutdown()")
    assert running.returned and running.raised is None
    if family != "udp":
        assert server.connection_count == 2  # kept for the next call, none dropped
        assert server.events.of("finish") == []
    server.server_close()
    if family != "udp":
        assert len(server.events.of("finish")) == 2  # once per connection, at the end
        assert len({id(handler) for (handler,) in server.events.of("finish")}) == 2
    assert server.events.of("error") == []
    client.close()
    other.close()


@pytest.mark.parametrize("handler_threads", [0, 2])
@pytest.mark.parametrize("family", FAMILIES)
def test_a_serving_call_from_a_handler_is_reported_to_handle_error(
    servers, family, handler_threads, unix_dir
):
    def on_message(handler, message):
        if message == b"nest\n":
            handler.server.serve_forever()
            return b"nested call returned\n"
        return message.upper()

    server = make_server(family, unix_dir, on_message, handler_threads=handler_threads)
    servers.append(server)
    running = Call(server)
    nesting = connect(server)
    nesting.sendall(b"nest\n")
    server.events.wait_count("error", 1)
    [(handler, error)] = server.events.of("error")
    assert isinstance(handler, MessageHandler)  # the handler whose call was refused
    assert isinstance(error, RuntimeError), error
    assert ALREADY_SERVING in str(error)
    if handler_threads:
        assert f"thread {running.thread.ident}" in str(error)
    else:
        assert "this thread" in str(error)
    if family != "udp":
        # As for any handler error, that connection is closed (and its finish() runs).
        assert nesting.recv(100) == b""
        server.events.wait_count("finish", 1)
    # The server goes on serving.
    client = connect(server)
    assert exchange(client, b"still\n") == b"STILL\n"
    server.shutdown()
    running.join("serve_forever() after shutdown()")
    assert running.returned and running.raised is None
    nesting.close()
    client.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_serve_shutdown_and_serve_again_after_a_refused_call(servers, family, unix_dir):
    server = make_server(family, unix_dir)
    servers.append(server)
    client = connect(server)
    for round_ in range(3):
        running = Call(server)
        assert exchange(client, b"round %d\n" % round_) == b"ROUND %d\n" % round_
        refused = Call(server)
        refused.join("the refused serve_forever()")
        assert isinstance(refused.raised, RuntimeError), refused.raised
        server.shutdown()
        running.join("serve_forever() after shutdown()")
        assert running.returned
    if family != "udp":
        assert len(server.events.of("setup")) == 1  # the same connection all along
    assert server.events.of("error") == []
    client.close()


def test_a_new_call_right_after_shutdown_returns_is_not_refused(servers, unix_dir):
    # shutdown() returns once the loop has let go of the server, not merely stopped.
    server = make_server("tcp", unix_dir)
    servers.append(server)
    client = connect(server)
    for round_ in range(20):
        running = Call(server)
        assert exchange(client, b"r%d\n" % round_) == b"R%d\n" % round_
        server.shutdown()
        follower = Call(server)  # at once: no join of the first call's thread
        assert exchange(client, b"f%d\n" % round_) == b"F%d\n" % round_
        server.shutdown()
        follower.join("the follower's serve_forever()")
        running.join("the first serve_forever()")
        assert follower.raised is None and running.raised is None
    client.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_of_threads_racing_to_serve_exactly_one_serves(servers, family, unix_dir):
    contenders = 4
    server = make_server(family, unix_dir)
    servers.append(server)
    client = connect(server)
    for round_ in range(5):
        start = threading.Barrier(contenders)
        calls = [Call(server, start) for _ in range(contenders)]
        assert exchange(client, b"race %d\n" % round_) == b"RACE %d\n" % round_
        deadline = time.monotonic() + TIMEOUT
        while sum(call.raised is not None for call in calls) < contenders - 1:
            assert time.monotonic() < deadline, [call.raised for call in calls]
            time.sleep(0.01)
        server.shutdown()
        for call in calls:
            call.join("a racing serve_forever()")
        refused = [call.raised for call in calls if call.raised is not None]
        assert [call.returned for call in calls].count(True) == 1
        assert len(refused) == contenders - 1
        assert all(isinstance(exc, RuntimeError) for exc in refused), refused
        assert all(ALREADY_SERVING in str(exc) for exc in refused)
    assert server.events.of("error") == []
    client.close()


@needs_unix  # NOTIFY_SOCKET, the service manager's end, is a Unix datagram socket
def test_a_refused_call_tells_the_service_manager_nothing(servers, unix_dir, monkeypatch):
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.settimeout(TIMEOUT)
    address = os.path.join(unix_dir, "notify.sock")
    manager.bind(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    server = make_server("tcp", unix_dir)
    servers.append(server)
    running = Call(server)
    assert manager.recv(100) == b"READY=1"
    refused = Call(server)
    refused.join("the refused serve_forever()")
    assert isinstance(refused.raised, RuntimeError), refused.raised
    server.shutdown()
    running.join("serve_forever() after shutdown()")
    # The service is stopping once, when the call that served ends; nothing came in between.
    assert manager.recv(100) == b"STOPPING=1"
    manager.setblocking(False)
    with pytest.raises(BlockingIOError):
        manager.recv(100)
    manager.close()
