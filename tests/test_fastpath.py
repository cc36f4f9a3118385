"""The fast path (socketserver_rs accepting/receiving in Rust when no acquiring hook is
overridden and ``server.socket`` is a plain ``socket.socket``) must be indistinguishable from
the slow path (``get_request()`` in Python).

The comparison tests run every variant on both modules: the stdlib has only one path, so it
is the oracle for what each variant must observe. Tests marked "implementation detail" check
which path socketserver_rs actually took and run on it alone.
"""

import os
import socket

import pytest
from _behaviour_helpers import (
    LOOPBACK,
    POLL,
    SERVED_HOOKS,
    SOCKET_KINDS,
    client_reply,
    client_send,
    collapse_service_actions,
    echo_handler,
    needs_fork,
    needs_unix,
    recording,
    recording_handler,
    recv_until_eof,
    server_address,
    server_class,
    server_records,
    wait_for,
)

# Bounded per test, well above what any test needs, so a hang fails fast.
pytestmark = pytest.mark.timeout(60)

KINDS = SOCKET_KINDS

# One request in the serial loop: its hooks, then service_actions() (see
# collapse_service_actions).
SERVED = [*SERVED_HOOKS, "service_actions"]


class PlainSubclassSocket(socket.socket):
    """A socket.socket subclass, as a user wrapping the listener would install."""


def get_request_calling_super(cls):
    class Server(cls):
        def get_request(self):
            self.get_request_calls = getattr(self, "get_request_calls", 0) + 1
            return super().get_request()

    return Server


def fileno_calling_super(cls):
    class Server(cls):
        def fileno(self):
            return super().fileno()

    return Server


def apply_variant(server, variant):
    """Per-instance variants: a get_request set on the instance, or a replaced socket."""
    if variant == "instance_get_request":
        stock = server.get_request

        def get_request():
            server.get_request_calls = getattr(server, "get_request_calls", 0) + 1
            return stock()

        server.get_request = get_request
    elif variant == "socket_subclass":
        old = server.socket
        server.socket = PlainSubclassSocket(old.family, old.type, old.proto, fileno=old.detach())
    return server


VARIANTS = {
    "stock": lambda cls: cls,
    "get_request_super": get_request_calling_super,
    "fileno_super": fileno_calling_super,
    "instance_get_request": lambda cls: cls,
    "socket_subclass": lambda cls: cls,
}


def make(harness, ss, kind, unix_dir, variant, handler=None, record=False, **attrs):
    cls = server_class(ss, kind)
    if record:
        cls = recording(cls)
    cls = VARIANTS[variant](cls)
    server = harness.server(
        cls, server_address(kind, unix_dir), handler or echo_handler(ss), **attrs
    )
    return apply_variant(server, variant)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_path_gives_handlers_the_same_request_address_and_data(
    ss, harness, unix_dir, kind, variant
):
    server = make(harness, ss, kind, unix_dir, variant, timeout=5.0)
    client, client_name = client_send(harness, server, kind, b"payload", unix_dir)
    server.handle_request()
    assert client_reply(client, kind) == b"echo:payload"
    (record,) = server_records(server)
    assert record["data"] == b"payload"
    if kind == "tcp":
        assert record["client_address"] == (LOOPBACK, client_name[1])
    elif kind == "udp":
        assert record["client_address"] == (LOOPBACK, client_name[1])
    elif kind == "unix_stream":
        assert record["client_address"] == ""
    else:
        assert record["client_address"] == client_name
    if kind in ("tcp", "unix_stream"):
        assert type(record["request"]) is socket.socket
        assert record["gettimeout"] is None
        assert record["os_blocking"] is True
        assert record["inheritable"] is False
        if kind == "tcp":
            # Every path treats TCP_NODELAY alike: the stdlib leaves Nagle on; socketserver_rs
            # sets TCP_NODELAY when its tcp_nodelay is true (a deliberate difference).
            assert bool(record["nodelay"]) is bool(getattr(server, "tcp_nodelay", False))
    else:
        _data, sock = record["request"]
        assert sock is server.socket
    if variant in ("get_request_super", "instance_get_request"):
        assert server.get_request_calls == 1


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_path_calls_the_hooks_in_the_same_order(ss, harness, unix_dir, kind, variant):
    server = make(harness, ss, kind, unix_dir, variant, handler=recording_handler(ss), record=True)
    serving = harness.serve(server, poll_interval=POLL)
    for i in range(2):
        client, _ = client_send(harness, server, kind, b"h", unix_dir, f"c{i}.sock")
        assert client_reply(client, kind) == b"echo:h"
    serving.stop()
    assert collapse_service_actions(server.log) == SERVED * 2


@pytest.mark.parametrize("variant", ["stock", "socket_subclass"])
def test_every_path_serves_many_clients_under_serve_forever(ss, harness, unix_dir, variant):
    server = make(harness, ss, "tcp", unix_dir, variant)
    harness.serve(server, poll_interval=POLL)
    for i in range(20):
        assert harness.exchange(server, b"%d" % i) == b"echo:%d" % i


@pytest.mark.parametrize("variant", ["stock", "get_request_super"])
def test_empty_datagram_is_a_request_with_empty_data(ss, harness, unix_dir, variant):
    server = make(harness, ss, "udp", unix_dir, variant, timeout=5.0)
    client, _ = client_send(harness, server, "udp", b"", unix_dir)
    server.handle_request()
    assert client.recv(100) == b"echo:"
    assert server_records(server)[0]["data"] == b""


@pytest.mark.parametrize("variant", ["stock", "get_request_super"])
def test_max_packet_size_read_at_each_call(ss, harness, unix_dir, variant):
    server = make(harness, ss, "udp", unix_dir, variant, timeout=5.0)
    for size in (3, 6, 65536):
        server.max_packet_size = size
        client, _ = client_send(harness, server, "udp", b"0123456789", unix_dir)
        server.handle_request()
        assert client.recv(100) == b"echo:" + b"0123456789"[:size]


@pytest.mark.parametrize("variant", ["stock", "get_request_super"])
def test_large_datagram_arrives_whole_when_max_packet_size_allows(ss, harness, unix_dir, variant):
    server = make(harness, ss, "udp", unix_dir, variant, timeout=5.0, max_packet_size=65536)
    payload = os.urandom(60000)
    _client, _ = client_send(harness, server, "udp", payload, unix_dir)
    server.handle_request()
    assert server_records(server)[0]["data"] == payload


def test_a_listening_socket_replaced_between_calls_is_used_by_the_next_call(ss, harness):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss), timeout=5.0)
    client = harness.connect(server, b"first")
    client.shutdown(socket.SHUT_WR)
    server.handle_request()
    assert recv_until_eof(client) == b"echo:first"

    replacement = socket.socket()
    replacement.bind((LOOPBACK, 0))
    replacement.listen()
    server.socket.close()
    server.socket = replacement
    server.server_address = replacement.getsockname()
    client = harness.connect(server, b"second")
    client.shutdown(socket.SHUT_WR)
    server.handle_request()
    assert recv_until_eof(client) == b"echo:second"

    serving = harness.serve(server, poll_interval=POLL)
    assert harness.exchange(server, b"third") == b"echo:third"
    serving.stop()


def test_socket_replaced_by_a_subclass_while_not_serving_is_served(ss, harness):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    serving = harness.serve(server, poll_interval=POLL)
    assert harness.exchange(server, b"plain") == b"echo:plain"
    serving.stop()
    apply_variant(server, "socket_subclass")
    assert type(server.socket) is PlainSubclassSocket
    harness.serve(server, poll_interval=POLL)
    assert harness.exchange(server, b"subclass") == b"echo:subclass"
    assert type(server_records(server)[-1]["request"]) is socket.socket


# Implementation details: socketserver_rs only ----------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_serving_plan_is_fast_only_for_stock_hooks_on_a_plain_socket(rs, harness, variant):
    """Implementation detail (socketserver_rs only): which serving calls may take the fast
    path."""
    from socketserver_rs._fastpath import SLOW, serving_plan

    server = make(harness, rs, "tcp", None, variant)
    assert (serving_plan(server) != SLOW) is (variant == "stock")


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_fast_path_does_not_call_get_request(rs, harness, unix_dir, monkeypatch, kind):
    """Implementation detail (socketserver_rs only): with stock hooks the engine acquires the
    request itself. The stock get_request is wrapped (keeping its marker, so the server still
    counts as stock) to see that it is not called, while a subclass's super() call is."""
    from socketserver_rs import _fastpath

    base = server_class(rs, kind)
    stock = base.get_request
    calls = []

    def counting(self):
        calls.append(type(self).__name__)
        return stock(self)

    setattr(counting, _fastpath._MARK, getattr(stock, _fastpath._MARK))
    monkeypatch.setattr(base, "get_request", counting)

    fast = make(harness, rs, kind, unix_dir, "stock", timeout=5.0)
    client, _ = client_send(harness, fast, kind, b"fast", unix_dir)
    fast.handle_request()
    assert client_reply(client, kind) == b"echo:fast"
    assert calls == []

    slow = make(harness, rs, kind, unix_dir, "get_request_super", timeout=5.0)
    client, _ = client_send(harness, slow, kind, b"slow", unix_dir)
    slow.handle_request()
    assert client_reply(client, kind) == b"echo:slow"
    assert calls == ["Server"]


# Settings changed while serve_forever() runs --------------------------------------------------
#
# The stdlib reads every attribute and hook at the moment it uses it, so a change made by a
# handler (or another thread) applies from the next request on. A serving plan decided once
# per serve_forever() call must not freeze them.


def test_max_packet_size_changed_while_serving_applies_to_the_next_datagram(ss, harness):
    class Handler(ss.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            self.server.max_packet_size = 3
            sock.sendto(b"echo:" + data, self.client_address)

    server = harness.server(ss.UDPServer, (LOOPBACK, 0), Handler)
    harness.serve(server, poll_interval=POLL)
    client = harness.datagram_client(server)
    client.sendto(b"0123456789", server.server_address)
    assert client.recv(100) == b"echo:0123456789"
    client.sendto(b"0123456789", server.server_address)
    assert client.recv(100) == b"echo:012"


# Every datagram server family, by the engine path it takes (serial, a request thread or a
# child per datagram, a pool worker): `ss` class name and, where the stdlib has no such
# class, the stdlib class that is its oracle (ThreadingMixIn for the pools).
DATAGRAM_SERVERS = {
    "serial": ("UDPServer", "UDPServer"),
    "threading": ("ThreadingUDPServer", "ThreadingUDPServer"),
    "forking": ("ForkingUDPServer", "ForkingUDPServer"),
    "pool": ("ThreadPoolUDPServer", "ThreadingUDPServer"),
    "unix": ("UnixDatagramServer", "UnixDatagramServer"),
    "unix-pool": ("ThreadPoolUnixDatagramServer", "ThreadingUnixDatagramServer"),
}
PLATFORM_MARKS = {"forking": needs_fork, "unix": needs_unix, "unix-pool": needs_unix}
DATAGRAM_FAMILIES = [pytest.param(f, marks=PLATFORM_MARKS.get(f, ())) for f in DATAGRAM_SERVERS]


@pytest.mark.parametrize("where", ["instance", "class"])
@pytest.mark.parametrize("family", DATAGRAM_FAMILIES)
def test_max_packet_size_lowered_while_serving_truncates_the_next_datagram(
    ss, harness, unix_dir, family, where
):
    """``get_request()`` reads ``max_packet_size`` for every datagram, right before
    ``recvfrom()``: a change made by another thread while the loop waits applies to the next
    datagram, which ``recvfrom()`` with the smaller buffer truncates. Changed twice, so the
    second change leaves the instance's ``__dict__`` the same size."""
    ours, oracle = DATAGRAM_SERVERS[family]
    cls = getattr(ss, oracle if ss.__name__ == "socketserver" else ours)
    kind = "unix_dgram" if family.startswith("unix") else "udp"
    # On a throwaway subclass (see Harness.server), so a change on the class stays here.
    address = server_address(kind, unix_dir)
    server = harness.server(cls, address, echo_handler(ss), max_packet_size=8192)
    harness.serve(server, poll_interval=POLL)
    client = harness.datagram_client(server, address=os.path.join(str(unix_dir), "c.sock"))
    payload = b"0123456789"

    def exchange():
        client.sendto(payload, server.server_address)
        return client.recv(100)

    assert exchange() == b"echo:" + payload
    owner = server if where == "instance" else type(server)
    for size in (6, 3, 8192):
        owner.max_packet_size = size
        assert exchange() == b"echo:" + payload[:size], f"max_packet_size = {size}"


def test_get_request_assigned_on_the_instance_while_serving_is_used(ss, harness):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    harness.serve(server, poll_interval=POLL)
    assert harness.exchange(server, b"before") == b"echo:before"
    calls = []
    stock = server.get_request

    def get_request():
        calls.append(1)
        return stock()

    server.get_request = get_request
    assert harness.exchange(server, b"after") == b"echo:after"
    assert calls == [1]


def test_service_actions_assigned_on_the_instance_while_serving_is_called(ss, harness):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    harness.serve(server, poll_interval=POLL)
    assert harness.exchange(server, b"before") == b"echo:before"
    calls = []
    server.service_actions = lambda: calls.append(1)
    assert wait_for(lambda: len(calls) >= 2, timeout=2.0)


# A serial datagram server that has just served a datagram receives the next one without
# waiting first (socketserver_rs): a burst already queued must still be served one request
# at a time, each with every hook and service_actions() after it, and a shutdown request made
# by a handler must stop the loop before the datagrams behind it.


@pytest.mark.parametrize("variant", ["stock", "get_request_super"])
def test_queued_datagrams_each_get_every_hook_and_service_actions(ss, harness, variant):
    server = make(harness, ss, "udp", None, variant, handler=recording_handler(ss), record=True)
    client = harness.datagram_client(server)
    for i in range(8):
        client.sendto(b"%d" % i, server.server_address)
    harness.serve(server, poll_interval=POLL)
    replies = sorted(client.recv(100) for _ in range(8))
    assert replies == sorted(b"echo:%d" % i for i in range(8))
    assert wait_for(lambda: server.log.count("service_actions") >= 8, timeout=2.0)
    assert collapse_service_actions(server.log)[: 8 * len(SERVED)] == SERVED * 8


@pytest.mark.parametrize("variant", ["stock", "get_request_super"])
def test_shutdown_requested_by_a_handler_leaves_the_queued_datagrams_unserved(ss, harness, variant):
    handled = []

    class Handler(ss.BaseRequestHandler):
        def handle(self):
            handled.append(self.request[0])
            if len(handled) == 3:
                # What shutdown() sets; calling shutdown() here would deadlock the stdlib.
                self.server._BaseServer__shutdown_request = True

    server = make(harness, ss, "udp", None, variant, handler=Handler)
    client = harness.datagram_client(server)
    for i in range(6):
        client.sendto(b"%d" % i, server.server_address)
    serving = harness.serve(server, poll_interval=POLL)
    assert serving.returned.wait(5.0)
    assert serving.error is None
    assert handled == [b"0", b"1", b"2"]
    # The rest are still queued: the next serving call gets them.
    server._BaseServer__shutdown_request = False
    server.handle_request()
    assert handled[-1] == b"3"


# With every hook from verify_request() to close_request() stock, socketserver_rs makes the
# handler and shuts the request down in Rust (implementation detail: _fastpath.stock_serving).
# What the hooks would have done must still happen: handle_error() with the exception being
# handled, the connection shut down, the class attribute read at every request.


@pytest.mark.parametrize("kind", ["tcp", "udp"])
def test_a_failing_handler_reaches_handle_error_with_its_exception(ss, harness, kind):
    import sys

    seen = []

    class Handler(ss.BaseRequestHandler):
        def handle(self):
            if isinstance(self.request, tuple):
                data, sock = self.request
            else:
                data = self.request.recv(100)
            if data == b"fail":
                raise ValueError("boom")
            reply = b"echo:" + data
            if isinstance(self.request, tuple):
                sock.sendto(reply, self.client_address)
            else:
                self.request.sendall(reply)

    class Server(server_class(ss, kind)):
        def handle_error(self, request, client_address):
            seen.append((sys.exc_info()[0], client_address is not None))

    server = harness.server(Server, (LOOPBACK, 0), Handler)
    harness.serve(server, poll_interval=POLL)
    if kind == "tcp":
        client = harness.connect(server, b"fail")
        assert recv_until_eof(client) == b""  # shut down after handle_error()
        assert harness.exchange(server, b"next") == b"echo:next"
    else:
        client = harness.datagram_client(server)
        client.sendto(b"fail", server.server_address)
        client.sendto(b"next", server.server_address)
        assert client.recv(100) == b"echo:next"
    assert seen == [(ValueError, True)]


def test_request_handler_class_replaced_while_serving_serves_the_next_request(ss, harness):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    harness.serve(server, poll_interval=POLL)
    assert harness.exchange(server, b"a") == b"echo:a"
    server.RequestHandlerClass = echo_handler(ss, prefix=b"new:")
    assert harness.exchange(server, b"b") == b"new:b"


def test_keyboard_interrupt_in_a_handler_closes_the_connection_and_ends_serving(ss, harness):
    class Handler(ss.BaseRequestHandler):
        def handle(self):
            self.request.recv(100)
            raise KeyboardInterrupt

    server = harness.server(ss.TCPServer, (LOOPBACK, 0), Handler)
    serving = harness.serve(server, poll_interval=POLL)
    client = harness.connect(server, b"x")
    assert recv_until_eof(client) == b""
    assert serving.returned.wait(5.0)
    assert isinstance(serving.error, KeyboardInterrupt)


def test_stock_serving_names_what_the_engine_may_do_itself(rs, harness):
    """Implementation detail: which servers the engine serves without the Python hooks."""
    from socketserver_rs._fastpath import STOCK_REQUEST_PATH, STOCK_SERVICE_ACTIONS, stock_serving

    both = STOCK_SERVICE_ACTIONS | STOCK_REQUEST_PATH
    for cls in (rs.TCPServer, rs.UDPServer):
        assert stock_serving(harness.server(cls, (LOOPBACK, 0), echo_handler(rs))) == both
    threading = harness.server(rs.ThreadingUDPServer, (LOOPBACK, 0), echo_handler(rs))
    assert stock_serving(threading) == STOCK_SERVICE_ACTIONS  # its own process_request

    class Verifying(rs.TCPServer):
        def verify_request(self, request, client_address):
            return True

    assert stock_serving(harness.server(Verifying, (LOOPBACK, 0), echo_handler(rs))) == (
        STOCK_SERVICE_ACTIONS
    )
    server = harness.server(rs.UDPServer, (LOOPBACK, 0), echo_handler(rs))
    server.service_actions = lambda: None
    assert stock_serving(server) == STOCK_REQUEST_PATH
    # A datagram server with a stream server's shutdown_request is not stock.
    mixed = type("Mixed", (rs.UDPServer,), {"shutdown_request": rs.TCPServer.shutdown_request})
    assert not stock_serving(harness.server(mixed, (LOOPBACK, 0), echo_handler(rs))) & (
        STOCK_REQUEST_PATH
    )


def test_stock_worker_path_names_the_pools_a_worker_serves_itself(rs, harness):
    """Implementation detail: which pool servers' workers serve requests without the hooks."""
    import socket

    from socketserver_rs._fastpath import stock_worker_path

    def server(cls, **namespace):
        return harness.server(type("S", (cls,), namespace), (LOOPBACK, 0), echo_handler(rs))

    assert stock_worker_path(server(rs.ThreadPoolTCPServer)) == socket.SOCK_STREAM
    assert stock_worker_path(server(rs.ThreadPoolUDPServer)) == socket.SOCK_DGRAM
    # handle_error runs from Python only on failure: overriding it keeps the stock path.
    assert stock_worker_path(server(rs.ThreadPoolUDPServer, handle_error=print)) == (
        socket.SOCK_DGRAM
    )
    for hook in ("process_request_thread", "finish_request", "shutdown_request", "close_request"):
        overridden = server(rs.ThreadPoolUDPServer, **{hook: lambda self, *args: None})
        assert stock_worker_path(overridden) == 0, hook
        on_instance = server(rs.ThreadPoolTCPServer)
        setattr(on_instance, hook, lambda *args: None)
        assert stock_worker_path(on_instance) == 0, hook
    # A datagram server with a stream server's shutdown_request is not stock.
    mixed = server(rs.ThreadPoolUDPServer, shutdown_request=rs.TCPServer.shutdown_request)
    assert stock_worker_path(mixed) == 0
