"""socketserver_rs's deliberate differences from the stdlib (socketserver_rs only, except
where the stdlib is the reference for the behaviour that an opt-out restores).

1. ``TCPServer.tcp_nodelay = True``: accepted TCP connections get ``TCP_NODELAY``, on the
   engine's fast path and on the Python ``get_request()`` path alike.
2. ``TCPServer.request_queue_size = 4096`` (the stdlib's is 5, and ``socket.SOMAXCONN`` from 3.15
   on), whatever ``socket.SOMAXCONN`` is.

Each test's docstring names the difference it pins.
"""

import errno
import os
import selectors
import socket
import socketserver
import sys
import time

import pytest
import socketserver_rs as rs
from _behaviour_helpers import (
    CLIENT_TIMEOUT,
    HAS_IPV6,
    LOOPBACK,
    LOOPBACK6,
    needs_unix,
    recv_until_eof,
)
from socketserver_rs._fastpath import SLOW, serving_plan

needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback here")


def nodelay_handler(module):
    """Records ``TCP_NODELAY`` of the connection (or the OSError reading it raised) on
    ``server.nodelay`` and answers ``ok``."""

    class Handler(module.BaseRequestHandler):
        def handle(self):
            try:
                value = self.request.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            except OSError as error:
                value = (type(error), error.errno)
            self.server.nodelay.append(value)
            self.request.recv(64)
            self.request.sendall(b"ok")

    return Handler


def overriding_get_request(base):
    """A subclass whose ``get_request`` is overridden (calling super()): no fast path."""

    class Overriding(base):
        def get_request(self):
            self.overridden_calls += 1
            return super().get_request()

    Overriding.overridden_calls = 0
    return Overriding


def serve_one_and_read(server, harness):
    """One client round trip, served by ``handle_request()``; returns the reply."""
    client = harness.connect(server, b"hi")
    client.shutdown(socket.SHUT_WR)
    server.handle_request()
    return recv_until_eof(client)


PATHS = ["fast path", "get_request overridden"]
SERVER_CLASSES = ["TCPServer", "ThreadingTCPServer", "ThreadPoolTCPServer"]


def tcp_server(harness, class_name, path, family=socket.AF_INET, **attrs):
    cls = getattr(rs, class_name)
    if path == "get_request overridden":
        cls = overriding_get_request(cls)
    attrs["address_family"] = family
    host = LOOPBACK6 if family == socket.AF_INET6 else LOOPBACK
    server = harness.server(cls, (host, 0), nodelay_handler(rs), timeout=CLIENT_TIMEOUT, **attrs)
    server.nodelay = []
    # Make sure each parametrisation really exercises the path it names.
    assert (serving_plan(server) != SLOW) is (path == "fast path")
    return server


# 1. TCP_NODELAY on accepted connections ----------------------------------------------------


@pytest.mark.parametrize("class_name", SERVER_CLASSES)
@pytest.mark.parametrize("path", PATHS)
def test_accepted_tcp_connections_have_tcp_nodelay_set_by_default(harness, path, class_name):
    """Difference: ``tcp_nodelay = True`` sets TCP_NODELAY on accepted TCP connections (the
    stdlib leaves Nagle's algorithm on unless the handler sets
    ``disable_nagle_algorithm``), whether the engine accepts or a ``get_request`` override
    calls ``super()``."""
    assert rs.TCPServer.tcp_nodelay is True
    server = tcp_server(harness, class_name, path)
    assert serve_one_and_read(server, harness) == b"ok"
    assert len(server.nodelay) == 1 and server.nodelay[0] != 0
    if path != "fast path":
        assert server.overridden_calls == 1


@needs_ipv6
@pytest.mark.parametrize("path", PATHS)
def test_accepted_tcp6_connections_have_tcp_nodelay_set_by_default(harness, path):
    """Difference: ``tcp_nodelay = True`` applies to IPv6 TCP connections too."""
    server = tcp_server(harness, "TCPServer", path, family=socket.AF_INET6)
    assert serve_one_and_read(server, harness) == b"ok"
    assert server.nodelay[0] != 0


@pytest.mark.parametrize("class_name", SERVER_CLASSES)
@pytest.mark.parametrize("path", PATHS)
def test_tcp_nodelay_false_leaves_nagle_on_like_the_stdlib(harness, path, class_name):
    """Difference (opt-out): ``tcp_nodelay = False`` leaves TCP_NODELAY off, as the stdlib
    does."""
    server = tcp_server(harness, class_name, path, tcp_nodelay=False)
    assert serve_one_and_read(server, harness) == b"ok"
    assert server.nodelay == [0]

    reference = harness.server(
        socketserver.TCPServer, (LOOPBACK, 0), nodelay_handler(socketserver), timeout=5.0
    )
    reference.nodelay = []
    assert serve_one_and_read(reference, harness) == b"ok"
    assert reference.nodelay == server.nodelay


@needs_unix
@pytest.mark.parametrize("path", PATHS)
def test_unix_stream_connections_are_not_affected_by_tcp_nodelay(harness, unix_dir, path):
    """Difference scope: ``tcp_nodelay`` only touches TCP connections; a Unix stream
    connection is served and looks exactly as under the stdlib (TCP_NODELAY cannot even be
    read on it)."""
    observed = {}
    for name, module in (("stdlib", socketserver), ("rs", rs)):
        cls = module.UnixStreamServer
        if path != "fast path" and module is rs:
            cls = overriding_get_request(cls)
        server = harness.server(
            cls, os.path.join(str(unix_dir), f"{name}.sock"), nodelay_handler(module), timeout=5.0
        )
        server.nodelay = []
        if module is rs:
            assert (serving_plan(server) != SLOW) is (path == "fast path")
        assert serve_one_and_read(server, harness) == b"ok"
        observed[name] = server.nodelay
    assert observed["rs"] == observed["stdlib"]
    [(error_type, error_errno)] = observed["rs"]
    assert issubclass(error_type, OSError)
    assert error_errno in (errno.EOPNOTSUPP, errno.ENOPROTOOPT)


# 2. request_queue_size = 4096 --------------------------------------------------------------


# The stdlib's default backlog: 5, and from CPython 3.15 on the C library's SOMAXCONN.
STDLIB_BACKLOG = getattr(socket, "SOMAXCONN", 5) if sys.version_info >= (3, 15) else 5


def test_request_queue_size_defaults_to_4096():
    """Difference: the listen backlog is 4096, on every libc; the stdlib's is 5 (before 3.15)
    or ``socket.SOMAXCONN`` (from 3.15 on), which is 128 on a CPython built against musl."""
    assert socketserver.TCPServer.request_queue_size == STDLIB_BACKLOG
    for cls in (
        rs.TCPServer,
        rs.ThreadingTCPServer,
        rs.ThreadPoolTCPServer,
        rs.UnixStreamServer,
        rs.ReactorTCPServer,
    ):
        assert cls.request_queue_size == 4096, cls


def listener_backlog(sock):
    """The accept queue's limit the kernel gave a listening TCP socket: Linux reports it in
    ``tcp_info.tcpi_sacked`` for listeners (and the queue's length in ``tcpi_unacked``)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    # tcp_info: eight one-byte fields, then u32 rto, ato, snd_mss, rcv_mss, unacked, sacked.
    return int.from_bytes(info[28:32], sys.byteorder)


@pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="only Linux reports a listener's accept-queue limit back (tcp_info.tcpi_sacked); "
    "macOS and the BSDs have no call that reads it",
)
def test_the_kernel_queues_up_to_its_own_limit_whatever_the_c_librarys_somaxconn(harness):
    """Difference: the kernel's accept queue for a default server is its own limit
    (``net.core.somaxconn``, at most the 4096 asked for), also where CPython's
    ``socket.SOMAXCONN`` says 128 (musl); ``request_queue_size = 5`` gives 5."""
    with open("/proc/sys/net/core/somaxconn") as limit:
        kernel_limit = int(limit.read())
    handler = nodelay_handler(rs)
    default = harness.server(rs.TCPServer, (LOOPBACK, 0), handler)
    reactor = harness.server(rs.ReactorTCPServer, (LOOPBACK, 0), rs.MessageHandler)
    restored = harness.server(rs.TCPServer, (LOOPBACK, 0), handler, request_queue_size=5)
    assert listener_backlog(default.socket) == min(4096, kernel_limit)
    assert listener_backlog(reactor.socket) == min(4096, kernel_limit)
    assert listener_backlog(restored.socket) == 5


def test_server_activate_listens_with_request_queue_size(harness):
    """Difference: ``server_activate()`` passes ``request_queue_size`` (4096 by default, or
    what a subclass sets) to ``listen()``."""
    backlogs = []

    class RecordingSocket(socket.socket):
        def listen(self, *args):
            backlogs.append(args)
            return super().listen(*args)

    for size in (None, 5):
        attrs = {} if size is None else {"request_queue_size": size}
        server = harness.server(
            rs.TCPServer, (LOOPBACK, 0), nodelay_handler(rs), bind_and_activate=False, **attrs
        )
        plain = server.socket
        server.socket = RecordingSocket(plain.family, plain.type)
        plain.close()
        server.server_bind()
        server.server_activate()
    assert backlogs == [(4096,), (5,)]


def connections_completed_without_accept(server, attempts=40, timeout=0.3):
    """Connect sequentially to ``server`` (which never accepts) until a connect times out;
    returns how many completed. With a full accept queue Linux drops the SYN, so the count
    is ``backlog + 1`` (capped at ``attempts``)."""
    clients = []
    try:
        for _ in range(attempts):
            sock = socket.socket(server.address_family, socket.SOCK_STREAM)
            clients.append(sock)
            sock.settimeout(timeout)
            try:
                sock.connect(server.server_address)
            except TimeoutError:
                return len(clients) - 1
        return len(clients)
    finally:
        for sock in clients:
            sock.close()


def test_request_queue_size_5_restores_the_stdlib_backlog(harness):
    """Difference (opt-out): with ``request_queue_size = 5`` the kernel queues as many
    unaccepted connections as under the stdlib's TCPServer with its default before 3.15, 5;
    with our default, far more."""
    handler = nodelay_handler(rs)
    stdlib_server = harness.server(
        socketserver.TCPServer, (LOOPBACK, 0), handler, request_queue_size=5
    )
    restored = harness.server(rs.TCPServer, (LOOPBACK, 0), handler, request_queue_size=5)
    default = harness.server(rs.TCPServer, (LOOPBACK, 0), handler)
    stdlib_count = connections_completed_without_accept(stdlib_server)
    assert stdlib_count < 40, "the stdlib's backlog of 5 should fill up"
    assert connections_completed_without_accept(restored) == stdlib_count
    assert connections_completed_without_accept(default) == 40


@pytest.mark.parametrize("class_name", ["ThreadingTCPServer", "ThreadPoolTCPServer"])
def test_a_burst_of_256_simultaneous_clients_all_complete_a_round_trip(harness, class_name):
    """Difference: with a backlog of 4096, 256 clients connecting at the same instant are
    all queued by the kernel and served. (With the stdlib's backlog of 5 most of them would
    have their SYNs dropped and sit in SYN retries for a second or more.)"""

    class Echo(rs.StreamRequestHandler):
        def handle(self):
            self.wfile.write(b"echo:" + self.rfile.readline())

    server = harness.server(getattr(rs, class_name), (LOOPBACK, 0), Echo)
    harness.serve(server)
    count = 256
    selector = selectors.DefaultSelector()
    harness.callback(selector.close)
    replies = {}
    # Every connect is started before any completes: one burst, from one thread.
    for i in range(count):
        sock = socket.socket()
        harness.callback(sock.close)
        sock.setblocking(False)
        assert sock.connect_ex(server.server_address) in (0, errno.EINPROGRESS)
        replies[sock] = b""
        selector.register(sock, selectors.EVENT_WRITE, i)
    pending = set(replies)
    failures = []
    # Generous bound: this is a correctness check, not a timing one.
    deadline = time.monotonic() + 10.0
    while pending and time.monotonic() < deadline:
        for key, events in selector.select(timeout=0.2):
            sock, i = key.fileobj, key.data
            if events & selectors.EVENT_WRITE:
                status = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if status:
                    failures.append((i, errno.errorcode.get(status, status)))
                    selector.unregister(sock)
                    pending.discard(sock)
                    continue
                sock.sendall(b"%d\n" % i)
                selector.modify(sock, selectors.EVENT_READ, i)
            else:
                chunk = sock.recv(64)
                replies[sock] += chunk
                if not chunk:
                    selector.unregister(sock)
                    pending.discard(sock)
    assert failures == []
    assert not pending, f"{len(pending)} of {count} clients did not finish within 10 s"
    for reply in replies.values():
        assert reply.startswith(b"echo:") and reply.endswith(b"\n"), reply
    assert sorted(int(reply[5:]) for reply in replies.values()) == list(range(count))


def test_a_hook_patched_on_the_class_while_serving_is_used_from_the_next_serving_call(harness):
    """Difference: the engine decides whether it may accept requests itself once per serving
    call (and again when the server's instance attributes change). A ``get_request`` patched
    onto the *class* while ``serve_forever()`` runs is therefore first used by the next
    serving call; the stdlib looks the hook up for every request."""

    class Handler(rs.StreamRequestHandler):
        def handle(self):
            self.wfile.write(b"echo:" + self.rfile.read())

    class Server(rs.TCPServer):
        pass

    server = harness.server(Server, (LOOPBACK, 0), Handler)
    serving = harness.serve(server)
    assert harness.exchange(server, b"a") == b"echo:a"
    calls = []
    stock = rs.TCPServer.get_request

    def counting_get_request(self):
        calls.append(1)
        return stock(self)

    Server.get_request = counting_get_request
    assert harness.exchange(server, b"b") == b"echo:b"
    assert calls == [], "the running serving call keeps its plan"
    serving.stop()
    harness.serve(server)
    assert harness.exchange(server, b"c") == b"echo:c"
    assert calls == [1], "the next serving call sees the patched hook"


@pytest.mark.parametrize(
    "hook", ["verify_request", "process_request", "finish_request", "shutdown_request"]
)
def test_a_request_hook_patched_on_the_class_while_serving_is_used_from_the_next_serving_call(
    harness, hook
):
    """Difference: with every hook from ``verify_request`` to ``close_request`` stock, the
    engine serves a request itself, decided as the fast path is (once per serving call, and
    again when the instance attributes change). One of them patched onto the *class* while
    ``serve_forever()`` runs is first called by the next serving call."""

    class Handler(rs.StreamRequestHandler):
        def handle(self):
            self.wfile.write(b"echo:" + self.rfile.read())

    class Server(rs.TCPServer):
        pass

    server = harness.server(Server, (LOOPBACK, 0), Handler)
    serving = harness.serve(server)
    assert harness.exchange(server, b"a") == b"echo:a"
    calls = []
    stock = getattr(rs.TCPServer, hook)

    def counting(self, *args):
        calls.append(1)
        return stock(self, *args)

    setattr(Server, hook, counting)
    assert harness.exchange(server, b"b") == b"echo:b"
    assert calls == [], "the running serving call keeps its plan"
    serving.stop()
    harness.serve(server)
    assert harness.exchange(server, b"c") == b"echo:c"
    assert calls == [1], "the next serving call sees the patched hook"


def test_a_datagram_taken_by_another_reader_does_not_block_the_loop(harness):
    """Difference: after a wakeup, the engine's fast path receives without waiting
    (``MSG_DONTWAIT``). When two servers share one datagram socket, both wake for each
    datagram and one gets it; the other goes back to waiting, so ``shutdown()`` stops it at
    once. The stdlib's loser blocks inside ``recvfrom()`` until some later datagram."""

    class Handler(rs.DatagramRequestHandler):
        def handle(self):
            self.wfile.write(b"echo:" + self.rfile.read())

    first = harness.server(rs.UDPServer, (LOOPBACK, 0), Handler)
    second = harness.server(rs.UDPServer, (LOOPBACK, 0), Handler, bind_and_activate=False)
    second.socket.close()
    second.socket = first.socket  # both serve the one socket
    serving = [harness.serve(first), harness.serve(second)]
    client = harness.datagram_client(first)
    for n in range(20):
        client.sendto(b"%d" % n, first.server_address)
        assert client.recv(64) == b"echo:%d" % n
    for loop in serving:
        started = time.monotonic()
        loop.stop(timeout=2.0)
        assert time.monotonic() - started < 2.0
