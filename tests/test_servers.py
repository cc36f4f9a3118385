"""Server construction, the requests and client addresses handlers receive, and the two
serving calls: ``handle_request()`` (timeouts, one request per call) and ``serve_forever()``
(``service_actions`` cadence, queued clients)."""

import os
import platform
import select
import socket
import sys
import threading
import time

import pytest
from _behaviour_helpers import (
    HAS_IPV6,
    LOOPBACK,
    LOOPBACK6,
    POLL,
    call_with_timeout,
    client_reply,
    client_send,
    echo_handler,
    is_stream,
    needs_unix,
    recv_until_eof,
    server_address,
    server_class,
    server_records,
    wait_for,
)
from socketserver_rs.testing import HalfClose, Recv, RecvAll, Send, compare

# Bounded per test, well above what any test needs, so a hang fails fast.
pytestmark = pytest.mark.timeout(60)

needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback (::1) on this host")

STREAM_KINDS = [
    "tcp",
    pytest.param("tcp6", marks=needs_ipv6),
    pytest.param("unix_stream", marks=needs_unix),
]
DATAGRAM_KINDS = [
    "udp",
    pytest.param("udp6", marks=needs_ipv6),
    pytest.param("unix_dgram", marks=needs_unix),
]
KINDS = STREAM_KINDS + DATAGRAM_KINDS


def make(harness, ss, kind, unix_dir, handler=None, **attrs):
    return harness.server(
        server_class(ss, kind),
        server_address(kind, unix_dir),
        handler or echo_handler(ss),
        **attrs,
    )


# Construction ------------------------------------------------------------------------------


def test_constructor_binds_listens_and_records_the_bound_address(ss, harness):
    handler = echo_handler(ss)
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), handler)
    host, port = server.server_address
    assert (host, port) == server.socket.getsockname()
    assert host == LOOPBACK and port != 0
    assert server.RequestHandlerClass is handler
    assert type(server.socket) is socket.socket
    assert server.socket.family == socket.AF_INET
    assert server.socket.type == socket.SOCK_STREAM
    assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    assert server.fileno() == server.socket.fileno()


def test_server_socket_is_blocking_without_timeout(ss, harness):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    assert server.socket.gettimeout() is None
    assert os.get_blocking(server.socket.fileno())


def test_bind_and_activate_false_leaves_the_socket_unbound_until_asked(ss, harness):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss), bind_and_activate=False)
    assert server.server_address == (LOOPBACK, 0)
    assert server.socket.getsockname() == ("0.0.0.0", 0)
    server.server_bind()
    assert server.server_address[1] != 0
    assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 0
    server.server_activate()
    assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


def test_udp_server_does_not_listen_and_records_the_bound_address(ss, harness):
    server = harness.server(ss.UDPServer, (LOOPBACK, 0), echo_handler(ss))
    assert server.socket.type == socket.SOCK_DGRAM
    assert server.server_address == server.socket.getsockname()


@pytest.mark.parametrize(
    ("attribute", "option"),
    [
        ("allow_reuse_address", "SO_REUSEADDR"),
        pytest.param(
            "allow_reuse_port",
            "SO_REUSEPORT",
            marks=pytest.mark.skipif(
                not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT here"
            ),
        ),
    ],
)
@pytest.mark.parametrize("setting", [False, True])
def test_reuse_attributes_set_the_socket_option_before_bind(
    ss, harness, attribute, option, setting
):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss), **{attribute: setting})
    value = server.socket.getsockopt(socket.SOL_SOCKET, getattr(socket, option))
    assert bool(value) is setting


# CPython's socketserver leaves SO_REUSEPORT off Unix sockets from 3.12.9 and 3.13.2 on.
STDLIB_SKIPS_REUSEPORT_ON_UNIX = sys.version_info >= (3, 13, 2) or (
    (3, 12, 9) <= sys.version_info < (3, 13)
)


@pytest.mark.skipif(
    not hasattr(socket, "SO_REUSEPORT"),
    reason="this platform has no SO_REUSEPORT, so there is no option for a server to leave off",
)
@pytest.mark.parametrize(
    "kind",
    [pytest.param("unix_stream", marks=needs_unix), pytest.param("unix_dgram", marks=needs_unix)],
)
def test_allow_reuse_port_on_a_unix_server_is_not_passed_to_the_kernel(ss, harness, unix_dir, kind):
    """As the stdlib from 3.12.9 and 3.13.2 on (a difference from 3.11's): SO_REUSEPORT is set
    on IP sockets only. On a Unix socket it never did anything, and Linux refuses it there
    from 6.12.9 on (EOPNOTSUPP), so setting it would make the constructor fail."""
    if ss.__name__ == "socketserver" and not STDLIB_SKIPS_REUSEPORT_ON_UNIX:
        pytest.skip(
            f"the socketserver of CPython {platform.python_version()} predates the fix (3.12.9, "
            "3.13.2): it sets SO_REUSEPORT on Unix sockets too, which this test asserts against"
        )
    server = make(harness, ss, kind, unix_dir, allow_reuse_port=True, allow_reuse_address=True)
    assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    assert server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 1
    assert server.server_address == server_address(kind, unix_dir)


def test_context_manager_returns_the_server_and_closes_its_socket(ss):
    with ss.TCPServer((LOOPBACK, 0), ss.BaseRequestHandler) as server:
        assert isinstance(server, ss.TCPServer)
        assert server.socket.fileno() >= 0
    assert server.socket.fileno() == -1


def test_context_manager_closes_the_socket_when_the_body_raises(ss):
    with pytest.raises(ZeroDivisionError):
        with ss.TCPServer((LOOPBACK, 0), ss.BaseRequestHandler) as server:
            1 / 0  # noqa: B018
    assert server.socket.fileno() == -1


@needs_unix
def test_unix_server_address_is_the_path_it_was_given(ss, harness, unix_dir):
    path = os.path.join(str(unix_dir), "srv")
    server = harness.server(ss.UnixStreamServer, path, echo_handler(ss))
    assert server.server_address == path
    assert os.path.exists(path)


# What the handler receives ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_client_address_is_what_the_stdlib_reports(ss, harness, unix_dir, kind):
    server = make(harness, ss, kind, unix_dir)
    client, client_name = client_send(harness, server, kind, b"hello", unix_dir)
    server.handle_request()
    assert client_reply(client, kind) == b"echo:hello"
    (record,) = server_records(server)
    if kind in ("tcp", "udp"):
        expected = (LOOPBACK, client_name[1])
    elif kind in ("tcp6", "udp6"):
        expected = (LOOPBACK6, client_name[1], 0, 0)
    elif kind == "unix_stream":
        expected = ""  # an unbound stream client: the stdlib gives an empty string
    else:
        expected = client_name  # a bound datagram client: its path
    assert record["client_address"] == expected
    assert type(record["client_address"]) is type(expected)
    assert record["data"] == b"hello"


@pytest.mark.parametrize("kind", STREAM_KINDS)
def test_stream_request_is_a_blocking_non_inheritable_socket(ss, harness, unix_dir, kind):
    server = make(harness, ss, kind, unix_dir)
    client, _ = client_send(harness, server, kind, b"x", unix_dir)
    server.handle_request()
    recv_until_eof(client)
    (record,) = server_records(server)
    request = record["request"]
    assert type(request) is socket.socket
    assert record["gettimeout"] is None
    assert record["os_blocking"] is True
    assert record["inheritable"] is False
    assert record["family"] == server.socket.family
    assert record["type"] == socket.SOCK_STREAM
    assert record["proto"] == server.socket.proto
    if kind != "unix_stream":
        assert record["peername"][:2] == client.getsockname()[:2]
    # shutdown_request() closed it after the handler returned
    assert request.fileno() == -1


@pytest.mark.parametrize("kind", DATAGRAM_KINDS)
def test_datagram_request_is_data_and_the_server_socket(ss, harness, unix_dir, kind):
    server = make(harness, ss, kind, unix_dir)
    client, _ = client_send(harness, server, kind, b"datagram", unix_dir)
    server.handle_request()
    assert client_reply(client, kind) == b"echo:datagram"
    (record,) = server_records(server)
    request = record["request"]
    assert type(request) is tuple and len(request) == 2
    assert request[0] == b"datagram" and type(request[0]) is bytes
    assert request[1] is server.socket
    # close_request() of a datagram server leaves the server socket open
    assert server.socket.fileno() >= 0


@needs_unix
def test_unix_stream_client_bound_to_a_path_is_reported_by_path(ss, harness, unix_dir):
    server = make(harness, ss, "unix_stream", unix_dir)
    client = harness.socket(socket.AF_UNIX)
    client_path = os.path.join(str(unix_dir), "bound-client")
    client.bind(client_path)
    client.connect(server.server_address)
    client.sendall(b"x")
    client.shutdown(socket.SHUT_WR)
    server.handle_request()
    assert recv_until_eof(client) == b"echo:x"
    assert server_records(server)[0]["client_address"] == client_path


@needs_unix
def test_unix_datagram_unbound_client_address_is_none(ss, harness, unix_dir):
    """An unbound Unix datagram sender has no address: the stdlib reports None."""
    server = make(harness, ss, "unix_dgram", unix_dir)
    client = harness.datagram_client(server, bind=False)
    client.sendto(b"anon", server.server_address)
    server.handle_request()
    (record,) = server_records(server)
    assert record["client_address"] is None
    assert record["data"] == b"anon"


@needs_unix
@pytest.mark.skipif(not os.uname().sysname == "Linux", reason="abstract namespace is Linux-only")
def test_unix_datagram_abstract_client_address_is_bytes(ss, harness, unix_dir):
    server = make(harness, ss, "unix_dgram", unix_dir)
    client = harness.datagram_client(server, bind=False)
    name = b"\0socketserver-behaviour-%d" % os.getpid()
    client.bind(name)
    client.sendto(b"abs", server.server_address)
    server.handle_request()
    assert client.recv(100) == b"echo:abs"
    assert server_records(server)[0]["client_address"] == name


def test_udp_datagram_longer_than_max_packet_size_is_truncated(ss, harness, unix_dir):
    server = make(harness, ss, "udp", unix_dir, max_packet_size=4)
    client, _ = client_send(harness, server, "udp", b"0123456789", unix_dir)
    server.handle_request()
    assert client.recv(100) == b"echo:0123"


def test_accepted_request_takes_the_default_socket_timeout(ss, harness):
    """socket.setdefaulttimeout() applies to accepted sockets, as socket.accept() does."""
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    client = harness.connect(server, b"t")
    client.shutdown(socket.SHUT_WR)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(3.0)
    try:
        server.handle_request()
    finally:
        socket.setdefaulttimeout(previous)
    assert recv_until_eof(client) == b"echo:t"
    assert server_records(server)[0]["gettimeout"] == 3.0


def test_accepted_request_is_blocking_even_when_the_listener_has_a_timeout(ss, harness):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    server.socket.settimeout(5.0)
    client = harness.connect(server, b"t")
    client.shutdown(socket.SHUT_WR)
    server.handle_request()
    assert recv_until_eof(client) == b"echo:t"
    record = server_records(server)[0]
    assert record["gettimeout"] is None
    assert record["os_blocking"] is True


# handle_request -----------------------------------------------------------------------------


class _Timeouts:
    """Counts handle_timeout() calls; returns a marker so the return value can be checked."""

    @staticmethod
    def server(ss, harness, **attrs):
        class Server(ss.TCPServer):
            timeouts = 0

            def handle_timeout(self):
                self.timeouts += 1
                return "timed out"

        return harness.server(Server, (LOOPBACK, 0), echo_handler(ss), **attrs)


def test_handle_request_calls_handle_timeout_once_when_nothing_arrives(ss, harness):
    server = _Timeouts.server(ss, harness, timeout=0.2)
    started = time.monotonic()
    server.handle_request()
    elapsed = time.monotonic() - started
    assert server.timeouts == 1
    assert 0.15 <= elapsed < 2.0


def test_handle_request_returns_what_handle_timeout_returns(ss, harness):
    server = _Timeouts.server(ss, harness, timeout=0.01)
    assert server.handle_request() == "timed out"


def test_handle_request_returns_none_after_serving_a_request(ss, harness):
    server = _Timeouts.server(ss, harness, timeout=2.0)
    client = harness.connect(server, b"r")
    client.shutdown(socket.SHUT_WR)
    assert server.handle_request() is None
    assert recv_until_eof(client) == b"echo:r"
    assert server.timeouts == 0


@pytest.mark.parametrize(
    ("socket_timeout", "server_timeout"),
    [(0.1, None), (None, 0.1), (0.1, 30.0), (30.0, 0.1)],
    ids=["socket-only", "server-only", "socket-smaller", "server-smaller"],
)
def test_handle_request_waits_the_smaller_of_socket_and_server_timeout(
    ss, harness, socket_timeout, server_timeout
):
    server = _Timeouts.server(ss, harness, timeout=server_timeout)
    if socket_timeout is not None:
        server.socket.settimeout(socket_timeout)
    started = time.monotonic()
    server.handle_request()
    elapsed = time.monotonic() - started
    assert server.timeouts == 1
    assert 0.05 <= elapsed < 2.0


def test_handle_request_with_zero_timeout_returns_at_once(ss, harness):
    server = _Timeouts.server(ss, harness, timeout=0)
    started = time.monotonic()
    server.handle_request()
    assert time.monotonic() - started < 2.0
    assert server.timeouts == 1


def test_handle_request_with_zero_timeout_serves_a_waiting_client(ss, harness):
    server = _Timeouts.server(ss, harness, timeout=0)
    client = harness.connect(server, b"z")
    client.shutdown(socket.SHUT_WR)
    # Once the listener is readable, a zero timeout still finds the connection ready.
    assert select.select([server.socket], [], [], 5.0)[0]
    server.handle_request()
    assert server.timeouts == 0
    assert recv_until_eof(client) == b"echo:z"


def test_handle_request_serves_a_client_that_connects_while_it_waits(ss, harness):
    server = _Timeouts.server(ss, harness, timeout=5.0)
    replies = []

    def late_client():
        time.sleep(0.1)
        replies.append(harness.exchange(server, b"late"))

    thread = harness.thread(late_client)
    server.handle_request()
    thread.join(5)
    assert replies == [b"echo:late"]
    assert server.timeouts == 0


@pytest.mark.parametrize("kind", KINDS)
def test_each_of_n_queued_clients_is_served_by_its_own_handle_request(ss, harness, unix_dir, kind):
    """Clients queued before serving are each seen: one request per handle_request() call
    (the trap: an edge-triggered wait reports a busy listener only once)."""
    server = make(harness, ss, kind, unix_dir, timeout=2.0)
    clients = [
        client_send(harness, server, kind, b"n%d" % i, unix_dir, f"c{i}.sock")[0] for i in range(4)
    ]
    for _ in clients:
        server.handle_request()
    replies = sorted(client_reply(client, kind) for client in clients)
    assert replies == [b"echo:n%d" % i for i in range(4)]
    assert len(server_records(server)) == 4


def test_handle_request_serves_exactly_one_request_per_call(ss, harness):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss), timeout=2.0)
    first = harness.connect(server, b"1")
    first.shutdown(socket.SHUT_WR)
    second = harness.connect(server, b"2")
    second.shutdown(socket.SHUT_WR)
    server.handle_request()
    assert len(server_records(server)) == 1
    server.handle_request()
    assert len(server_records(server)) == 2
    assert {recv_until_eof(first), recv_until_eof(second)} == {b"echo:1", b"echo:2"}


def test_handle_request_does_not_call_service_actions(ss, harness):
    class Server(ss.TCPServer):
        actions = 0

        def service_actions(self):
            self.actions += 1

    server = harness.server(Server, (LOOPBACK, 0), echo_handler(ss), timeout=0.05)
    client = harness.connect(server, b"s")
    client.shutdown(socket.SHUT_WR)
    server.handle_request()
    server.handle_request()  # times out
    assert server.actions == 0


# serve_forever ------------------------------------------------------------------------------


def _counting_service_actions(base):
    class Server(base):
        def service_actions(self):
            self.actions.append(time.monotonic())
            super().service_actions()

    Server.actions = None
    return Server


def test_serve_forever_calls_service_actions_at_least_every_poll_interval(ss, harness):
    server = harness.server(
        _counting_service_actions(ss.TCPServer), (LOOPBACK, 0), echo_handler(ss)
    )
    server.actions = []
    serving = harness.serve(server, poll_interval=POLL)
    assert wait_for(lambda: len(server.actions) >= 5, timeout=5.0)
    serving.stop()
    # Idle: about one call per poll_interval; a generous bound against a stalled loop.
    gaps = [b - a for a, b in zip(server.actions, server.actions[1:], strict=False)]
    assert max(gaps) < 1.0


def test_serve_forever_calls_service_actions_after_each_request(ss, harness):
    Server = type(
        "Server",
        (ss.TCPServer,),
        {
            "service_actions": lambda self: self.log.append("service_actions"),
            "process_request": lambda self, r, a: (
                self.log.append("request"),
                ss.TCPServer.process_request(self, r, a),
            ),
        },
    )
    server = harness.server(Server, (LOOPBACK, 0), echo_handler(ss))
    server.log = []
    serving = harness.serve(server, poll_interval=POLL)
    for i in range(3):
        assert harness.exchange(server, b"%d" % i) == b"echo:%d" % i
    assert wait_for(lambda: server.log.count("request") == 3 and server.log[-1] != "request")
    serving.stop()
    positions = [i for i, name in enumerate(server.log) if name == "request"]
    assert len(positions) == 3
    for position in positions:
        assert server.log[position + 1] == "service_actions"


def test_serve_forever_honours_a_service_actions_set_on_the_instance(ss, harness):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    calls = []
    server.service_actions = lambda: calls.append(1)
    harness.serve(server, poll_interval=POLL)
    assert wait_for(lambda: len(calls) >= 3)


def test_serve_forever_serves_clients_queued_before_it_starts(ss, harness, unix_dir):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    clients = [harness.connect(server, b"q%d" % i) for i in range(4)]
    for client in clients:
        client.shutdown(socket.SHUT_WR)
    harness.serve(server, poll_interval=POLL)
    assert sorted(recv_until_eof(c) for c in clients) == [b"echo:q%d" % i for i in range(4)]


@pytest.mark.parametrize("kind", KINDS)
def test_serve_forever_serves_sequential_clients(unix_dir, kind):
    # On both modules at once, through the plugin's compare(): the same ten clients, the same
    # replies, and no handle_error() call on either.
    def make_server(ss):
        return server_class(ss, kind)(
            server_address(kind, unix_dir, f"{ss.__name__}.sock"), echo_handler(ss)
        )

    if is_stream(kind):
        clients = [[Send(b"s%d" % i), HalfClose(), RecvAll()] for i in range(10)]
    else:
        clients = [[Send(b"s%d" % i), Recv()] for i in range(10)]
    transcript = compare(make_server, *clients)
    assert transcript.replies == tuple((b"echo:s%d" % i,) for i in range(10))
    assert transcript.errors == ()


def test_serve_forever_serves_concurrent_clients_of_a_threading_server(ss, harness):
    server = harness.server(ss.ThreadingTCPServer, (LOOPBACK, 0), echo_handler(ss))
    harness.serve(server, poll_interval=POLL)
    replies = []
    threads = [
        harness.thread(lambda i=i: replies.append(harness.exchange(server, b"c%d" % i)))
        for i in range(8)
    ]
    for thread in threads:
        thread.join(5)
    assert sorted(replies) == sorted(b"echo:c%d" % i for i in range(8))


def test_serve_forever_ignores_the_server_timeout(ss, harness):
    class Server(ss.TCPServer):
        timeout = 0.01
        timeouts = 0

        def handle_timeout(self):
            self.timeouts += 1

    server = harness.server(Server, (LOOPBACK, 0), echo_handler(ss))
    serving = harness.serve(server, poll_interval=POLL)
    time.sleep(0.2)
    assert harness.exchange(server, b"t") == b"echo:t"
    serving.stop()
    assert server.timeouts == 0


def test_serve_forever_runs_handlers_on_the_serving_thread_of_a_plain_server(ss, harness):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    serving = harness.serve(server, poll_interval=POLL)
    harness.exchange(server, b"x")
    assert server_records(server)[0]["thread"] is serving.thread


def test_serve_forever_accepts_poll_interval_as_keyword(ss, harness):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    done = threading.Event()

    def run():
        server.serve_forever(poll_interval=POLL)
        done.set()

    harness.thread(run)
    assert harness.exchange(server, b"k") == b"echo:k"
    finished, _, error = call_with_timeout(server.shutdown)
    assert finished and error is None
    assert done.wait(5)


# Address decoding corner cases ---------------------------------------------------------------


@needs_ipv6
def test_ipv4_client_of_a_dual_stack_server_is_an_ipv4_mapped_address(ss, harness):
    class DualStack(ss.TCPServer):
        address_family = socket.AF_INET6

        def server_bind(self):
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            super().server_bind()

    server = harness.server(DualStack, ("::", 0), echo_handler(ss), timeout=5.0)
    client = harness.socket(socket.AF_INET)
    client.connect((LOOPBACK, server.server_address[1]))
    client.sendall(b"v4")
    client.shutdown(socket.SHUT_WR)
    server.handle_request()
    assert recv_until_eof(client) == b"echo:v4"
    port = client.getsockname()[1]
    assert server_records(server)[0]["client_address"] == ("::ffff:127.0.0.1", port, 0, 0)


@needs_unix
@pytest.mark.skipif(not os.uname().sysname == "Linux", reason="abstract namespace is Linux-only")
def test_unix_stream_client_bound_to_an_abstract_name_is_reported_as_bytes(ss, harness, unix_dir):
    server = make(harness, ss, "unix_stream", unix_dir)
    client = harness.socket(socket.AF_UNIX)
    name = b"\0socketserver-behaviour-stream-%d" % os.getpid()
    client.bind(name)
    client.connect(server.server_address)
    client.sendall(b"a")
    client.shutdown(socket.SHUT_WR)
    server.handle_request()
    assert recv_until_eof(client) == b"echo:a"
    assert server_records(server)[0]["client_address"] == name


@needs_unix
def test_unix_client_path_that_is_not_utf8_is_decoded_with_surrogateescape(ss, harness, unix_dir):
    server = make(harness, ss, "unix_dgram", unix_dir)
    client = harness.datagram_client(server, bind=False)
    raw_path = os.fsencode(str(unix_dir)) + b"/caf\xe9"
    client.bind(raw_path)
    client.sendto(b"x", server.server_address)
    server.handle_request()
    assert client.recv(100) == b"echo:x"
    address = server_records(server)[0]["client_address"]
    assert address == os.fsdecode(raw_path)
    assert os.fsencode(address) == raw_path


# Serving from inside a handler --------------------------------------------------------------


def test_a_handler_can_serve_a_request_of_another_server(ss, harness):
    inner = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss, b"inner:"))
    inner.timeout = 5.0

    class Outer(ss.BaseRequestHandler):
        def handle(self):
            data = self.request.recv(100)
            self.server.inner_client.sendall(data)
            self.server.inner_client.shutdown(socket.SHUT_WR)
            inner.handle_request()
            self.request.sendall(b"outer:" + recv_until_eof(self.server.inner_client))

    outer = harness.server(ss.TCPServer, (LOOPBACK, 0), Outer, timeout=5.0)
    outer.inner_client = harness.connect(inner)
    client = harness.connect(outer, b"nested")
    client.shutdown(socket.SHUT_WR)
    outer.handle_request()
    assert recv_until_eof(client) == b"outer:inner:nested"


def test_handle_request_with_negative_timeout_times_out_at_once(ss, harness):
    server = _Timeouts.server(ss, harness, timeout=-1)
    started = time.monotonic()
    server.handle_request()
    assert time.monotonic() - started < 2.0
    assert server.timeouts == 1


# The BaseServer contract ---------------------------------------------------------------------


def test_base_server_subclass_with_its_own_fileno_and_get_request_serves(ss, harness):
    """BaseServer needs only fileno() and get_request() (no ``socket`` attribute) for
    serve_forever()."""

    class ListenerServer(ss.BaseServer):
        def __init__(self, handler):
            super().__init__((LOOPBACK, 0), handler)
            self.listener = socket.create_server((LOOPBACK, 0))
            self.server_address = self.listener.getsockname()
            self.address_family = socket.AF_INET

        def fileno(self):
            return self.listener.fileno()

        def get_request(self):
            return self.listener.accept()

        def shutdown_request(self, request):
            request.close()

        def server_close(self):
            self.listener.close()

    server = ListenerServer(echo_handler(ss))
    harness.callback(server.server_close)
    assert not hasattr(server, "socket")
    harness.serve(server, poll_interval=POLL)
    assert harness.exchange(server, b"base") == b"echo:base"


def test_shutdown_still_works_after_server_close_while_serve_forever_waits(ss, harness):
    """Closing the listener before shutdown() is a common mistake: serving must still stop
    when shutdown() comes, without an error."""
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    serving = harness.serve(server, poll_interval=POLL)
    assert harness.exchange(server, b"x") == b"echo:x"
    time.sleep(0.2)  # the loop is back to waiting
    server.server_close()
    time.sleep(0.1)
    finished, _, error = call_with_timeout(server.shutdown)
    assert finished and error is None
    assert serving.returned.wait(2.0)
    assert serving.error is None


def test_shutdown_still_works_after_a_handler_closed_the_server(ss, harness):
    """A handler that closes the server (a "quit" command, say) before someone calls
    shutdown(): the loop carries on until shutdown() without raising, as the stdlib's does."""

    class Handler(ss.BaseRequestHandler):
        def handle(self):
            self.request.recv(100)
            self.server.server_close()
            self.request.sendall(b"closed")

    server = harness.server(ss.TCPServer, (LOOPBACK, 0), Handler)
    serving = harness.serve(server, poll_interval=POLL)
    assert harness.exchange(server, b"quit") == b"closed"
    time.sleep(0.2)  # the loop goes round at least once more with the socket closed
    finished, _, error = call_with_timeout(server.shutdown)
    assert finished and error is None
    assert serving.returned.wait(2.0)
    assert serving.error is None


@needs_unix
@pytest.mark.skipif(not hasattr(socket, "SOCK_SEQPACKET"), reason="no SOCK_SEQPACKET here")
def test_unix_seqpacket_server_serves(ss, harness, unix_dir):
    """A socket_type the stock hooks were not written for still goes through get_request()."""

    class SeqPacketServer(ss.UnixStreamServer):
        socket_type = socket.SOCK_SEQPACKET

    path = os.path.join(str(unix_dir), "seq")
    server = harness.server(SeqPacketServer, path, echo_handler(ss), timeout=5.0)
    client = harness.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    client.connect(path)
    client.sendall(b"packet")
    server.handle_request()
    assert client.recv(100) == b"echo:packet"
    record = server_records(server)[0]
    assert record["client_address"] == ""
    assert record["type"] == socket.SOCK_SEQPACKET
