"""What a pool worker runs for each request, held against ``ThreadingMixIn``'s request thread.

A ``ThreadPoolMixIn`` worker serves a request itself, in Rust, while ``process_request_thread``
and the hooks it calls are the stock ones (see ``_fastpath.stock_worker_path``). These tests
check that this is invisible: each hook overridden on the class or on the instance (before or
while serving) is still called, in ``ThreadingMixIn``'s order and on the request's thread; a
handler exception reaches ``handle_error()`` and serving goes on; shutdown while workers are
busy; nothing leaks. Every test runs on the stdlib's ``Threading*Server`` (the oracle), ours,
and ``ThreadPool*Server``, over TCP and UDP.
"""

import socket
import socketserver
import sys
import threading
import time
import types

import pytest
import socketserver_rs
from _behaviour_helpers import (
    CLIENT_TIMEOUT,
    STOP_TIMEOUT,
    call_with_timeout,
    open_fds,
    recv_until_eof,
    run_clients,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

FLAVOURS = {
    "stdlib-threading": (socketserver, "Threading"),
    "rs-threading": (socketserver_rs, "Threading"),
    "rs-pool": (socketserver_rs, "ThreadPool"),
}
KINDS = ["tcp", "udp"]
# The hooks between the hand-off to a request thread and the end of the request.
WORKER_HOOKS = ["process_request_thread", "finish_request", "shutdown_request", "close_request"]


@pytest.fixture(params=list(FLAVOURS))
def flavour(request):
    return request.param


def module_of(flavour):
    return FLAVOURS[flavour][0]


def server_base(flavour, kind):
    module, prefix = FLAVOURS[flavour]
    return getattr(module, prefix + {"tcp": "TCPServer", "udp": "UDPServer"}[kind])


def echo_handler(module, fail_on=b"fail"):
    """Echoes ``echo:`` + data; raises ``ValueError`` for the payload ``fail_on``. Records the
    thread it ran on, and a ``threading.local`` value it finds there, on ``server.seen``."""
    local = threading.local()

    class Echo(module.BaseRequestHandler):
        def handle(self):
            if isinstance(self.request, tuple):
                data, sock = self.request
            else:
                data = self.request.recv(65536)
            self.server.seen.append((threading.current_thread(), getattr(local, "mark", None)))
            local.mark = threading.get_ident()
            self.server.log.append("handle")
            if data == fail_on:
                raise ValueError("handler failed on purpose")
            if isinstance(self.request, tuple):
                sock.sendto(b"echo:" + data, self.client_address)
            else:
                self.request.sendall(b"echo:" + data)

    return Echo


def make_server(harness, flavour, kind, overrides=(), **attrs):
    """A server of ``flavour`` and ``kind`` whose class overrides the hooks in ``overrides``
    with recording versions that call the stock one; ``handle_error`` records the exception
    being handled (and prints nothing)."""
    base = server_base(flavour, kind)
    namespace = {hook: recorder(hook) for hook in overrides}

    def handle_error(self, request, client_address):
        self.log.append("handle_error")
        self.errors.append((sys.exc_info()[1], threading.current_thread()))

    namespace["handle_error"] = handle_error
    cls = type("Recording" + base.__name__, (base,), namespace)
    server = harness.server(cls, ("127.0.0.1", 0), echo_handler(module_of(flavour)), **attrs)
    server.log, server.seen, server.errors, server.threads = [], [], [], []
    return server


def recorder(hook):
    """A class-level override of ``hook`` that logs its name and thread, then does the stock
    work."""

    def override(self, *args):
        self.log.append(hook)
        self.threads.append(threading.current_thread())
        return getattr(super(type(self), self), hook)(*args)

    override.__name__ = hook
    return override


def ask(harness, server, kind, payload):
    """One request; returns the reply (for TCP, everything up to the server's end of stream)."""
    if kind == "tcp":
        sock = harness.connect(server, payload)
        sock.shutdown(socket.SHUT_WR)
        return recv_until_eof(sock)
    sock = harness.socket(server.address_family, socket.SOCK_DGRAM)
    sock.sendto(payload, server.server_address)
    return sock.recv(65536)


def request_done(server, flavour, threads_before):
    """Whether every request so far has run its last hook: its thread has ended (threading
    servers) or its worker is idle again (pools)."""
    if flavour == "rs-pool":
        pool = server._rs_worker_pool
        return pool.workers > 0 and pool.idle == pool.workers
    return set(threading.enumerate()) <= threads_before


def join_requests(server):
    """Wait for every request thread to finish, so the logs are complete."""
    server.shutdown()
    server.server_close()  # block_on_close: joins request threads / waits for the pool


@pytest.mark.parametrize("kind", KINDS)
def test_every_worker_hook_runs_in_threading_mixin_order_on_the_request_thread(
    harness, flavour, kind
):
    server = make_server(harness, flavour, kind, overrides=WORKER_HOOKS)
    harness.serve(server)
    per_request = ["process_request_thread", "finish_request", "handle"]
    per_request += ["shutdown_request", "close_request"]
    for i in range(3):
        assert ask(harness, server, kind, b"%d" % i) == b"echo:%d" % i
        # The reply leaves before the request's last hooks run: wait for them, so the next
        # request's hooks cannot interleave.
        logged = len(per_request) * (i + 1)
        assert wait_for(lambda n=logged: len(server.log) == n)
    join_requests(server)
    assert server.log == per_request * 3
    serving = {thread.name for thread in server.threads} | {t.name for t, _ in server.seen}
    assert "serve_forever" not in serving
    assert threading.main_thread() not in server.threads


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("hook", WORKER_HOOKS)
@pytest.mark.parametrize("where", ["class", "instance", "instance-while-serving"])
def test_a_worker_hook_overridden_alone_is_called_for_every_request(
    harness, flavour, kind, hook, where
):
    server = make_server(harness, flavour, kind, overrides=[hook] if where == "class" else [])
    stock = getattr(server, hook)
    if where != "class":

        def override(self, *args):
            self.log.append(hook)
            self.threads.append(threading.current_thread())
            return stock(*args)

    if where == "instance":
        setattr(server, hook, types.MethodType(override, server))
    harness.serve(server)
    if where == "instance-while-serving":
        # Served with stock hooks first; then the instance attribute must win from the next
        # request on.
        threads = set(threading.enumerate())
        assert ask(harness, server, kind, b"before") == b"echo:before"
        assert wait_for(lambda: request_done(server, flavour, threads))
        setattr(server, hook, types.MethodType(override, server))
    served = len(server.log)
    after = hook in ("shutdown_request", "close_request")
    for i in range(3):
        assert ask(harness, server, kind, b"%d" % i) == b"echo:%d" % i
        # The reply leaves before shutdown_request() runs: wait for this request's hooks.
        assert wait_for(
            lambda n=i + 1: (
                server.log.count("handle") == served + n
                and server.log.count(hook) >= n
                and (not after or server.log[-1] == hook)
            )
        )
    join_requests(server)
    assert server.log[served:] == (["handle", hook] if after else [hook, "handle"]) * 3
    assert threading.main_thread() not in server.threads


@pytest.mark.parametrize("kind", KINDS)
def test_handler_exception_reaches_handle_error_on_the_request_thread_and_serving_goes_on(
    harness, flavour, kind
):
    # Only handle_error is overridden: on the pool, the worker serves with stock hooks.
    server = make_server(harness, flavour, kind)
    harness.serve(server)
    if kind == "tcp":
        # The failed request is still shut down: the client sees the end of the stream.
        assert ask(harness, server, kind, b"fail") == b""
    else:
        sock = harness.socket(server.address_family, socket.SOCK_DGRAM)
        sock.sendto(b"fail", server.server_address)
    assert wait_for(lambda: len(server.errors) == 1)
    for i in range(3):
        assert ask(harness, server, kind, b"%d" % i) == b"echo:%d" % i
    join_requests(server)
    ((error, thread),) = server.errors
    assert isinstance(error, ValueError) and str(error) == "handler failed on purpose"
    assert thread is not threading.main_thread() and thread.name != "serve_forever"
    assert server.log == ["handle", "handle_error"] + ["handle"] * 3
    if flavour != "stdlib-threading":
        stats = server.stats()
        assert (stats["requests"], stats["handler_errors"]) == (3, 1)


def test_pool_worker_keeps_its_threading_local_across_stock_served_requests(harness):
    server = make_server(harness, "rs-pool", "udp", max_workers=1)
    harness.serve(server)
    for i in range(4):
        assert ask(harness, server, "udp", b"%d" % i) == b"echo:%d" % i
    join_requests(server)
    threads = {thread for thread, _ in server.seen}
    assert len(threads) == 1 and threading.main_thread() not in threads
    (worker,) = threads
    # The first request found nothing; every later one found the mark its thread left.
    assert [mark for _, mark in server.seen] == [None] + [worker.ident] * 3


@pytest.mark.parametrize("kind", KINDS)
def test_shutdown_while_requests_are_busy_then_server_close_waits_for_them(harness, flavour, kind):
    release = threading.Event()
    harness.callback(release.set)
    started, finished = [], []
    module = module_of(flavour)

    class Blocking(module.BaseRequestHandler):
        def handle(self):
            started.append(threading.current_thread())
            release.wait(STOP_TIMEOUT)
            finished.append(threading.current_thread())
            if isinstance(self.request, tuple):
                data, sock = self.request
                sock.sendto(b"done:" + data, self.client_address)
            else:
                self.request.sendall(b"done:" + self.request.recv(100))

    server = harness.server(server_base(flavour, kind), ("127.0.0.1", 0), Blocking)
    serving = harness.serve(server)
    clients = []
    for i in range(2):
        if kind == "tcp":
            client = harness.connect(server, b"%d" % i)
        else:
            client = harness.socket(server.address_family, socket.SOCK_DGRAM)
            client.sendto(b"%d" % i, server.server_address)
        clients.append(client)
    assert wait_for(lambda: len(started) == 2)
    returned, _, error = call_with_timeout(server.shutdown, STOP_TIMEOUT)
    assert returned and error is None
    assert serving.returned.wait(STOP_TIMEOUT)
    assert finished == []
    if kind == "udp":
        # server_close() closes the socket the replies go out on (as the stdlib's does):
        # let the handlers answer first.
        release.set()
        replies = sorted(client.recv(100) for client in clients)
    closer = threading.Thread(target=server.server_close)
    closer.start()
    if kind == "tcp":
        closer.join(0.2)
        assert closer.is_alive(), "server_close() did not wait for the running requests"
        release.set()
        replies = sorted(recv_until_eof(client) for client in clients)
    closer.join(STOP_TIMEOUT)
    assert not closer.is_alive()
    assert len(finished) == 2 and not any(thread.is_alive() for thread in finished)
    assert replies == [b"done:0", b"done:1"]


@pytest.mark.parametrize("kind", KINDS)
def test_hundreds_of_requests_leave_no_thread_or_descriptor_behind(harness, flavour, kind):
    server = make_server(harness, flavour, kind)
    serving = harness.serve(server)
    assert ask(harness, server, kind, b"warm") == b"echo:warm"
    fds_before = open_fds()
    threads_before = set(threading.enumerate())
    failures = []

    def client_loop(index):
        with socket.socket(server.address_family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(CLIENT_TIMEOUT)
            for i in range(50):
                message = b"%d-%d" % (index, i)
                if kind == "tcp":
                    with socket.create_connection(server.server_address, CLIENT_TIMEOUT) as c:
                        c.sendall(message)
                        c.shutdown(socket.SHUT_WR)
                        reply = recv_until_eof(c)
                else:
                    sock.sendto(message, server.server_address)
                    reply = sock.recv(100)
                if reply != b"echo:" + message:
                    failures.append((message, reply))

    failures += run_clients(4, client_loop)
    assert failures == []
    server.shutdown()
    assert serving.returned.wait(STOP_TIMEOUT)
    server.server_close()
    # Request threads and pool workers are all gone once server_close() returns
    # (block_on_close); what remains is what ran before, minus the serving thread.
    assert wait_for(lambda: set(threading.enumerate()) <= threads_before)
    assert open_fds() <= fds_before
    if flavour != "stdlib-threading":
        # Every datagram counted once as received, wherever it was received. Read after
        # server_close(): shutdown() does not wait for request threads, and one may still be
        # between sending its reply and counting its request done.
        stats = server.stats()
        received = stats["accepted" if kind == "tcp" else "received"]
        assert received == stats["requests"] == 201


def send_request(harness, server, kind, payload):
    """Send one request without waiting for the reply; returns the client socket."""
    if kind == "tcp":
        sock = harness.connect(server, payload)
        sock.shutdown(socket.SHUT_WR)
    else:
        sock = harness.socket(server.address_family, socket.SOCK_DGRAM)
        sock.sendto(payload, server.server_address)
    return sock


def reply_of(sock, kind):
    return recv_until_eof(sock) if kind == "tcp" else sock.recv(65536)


@pytest.mark.parametrize("kind", KINDS)
def test_after_shutdown_nothing_is_served_until_serve_forever_runs_again(harness, flavour, kind):
    # Pool workers that receive datagrams themselves stop doing so before shutdown() returns.
    server = make_server(harness, flavour, kind)
    serving = harness.serve(server)
    for i in range(20):
        assert ask(harness, server, kind, b"%d" % i) == b"echo:%d" % i
    server.shutdown()
    assert serving.returned.wait(STOP_TIMEOUT)
    waiting = [send_request(harness, server, kind, b"late%d" % i) for i in range(3)]
    time.sleep(0.3)
    assert server.log.count("handle") == 20, "a request was served after shutdown() returned"
    harness.serve(server)
    replies = sorted(reply_of(sock, kind) for sock in waiting)
    assert replies == [b"echo:late%d" % i for i in range(3)]


@pytest.mark.parametrize("kind", KINDS)
def test_handle_request_serves_one_request_even_with_more_waiting(harness, flavour, kind):
    server = make_server(harness, flavour, kind, timeout=STOP_TIMEOUT)
    # One serve_forever() first: a pool's workers may have received datagrams themselves.
    serving = harness.serve(server)
    assert ask(harness, server, kind, b"warm") == b"echo:warm"
    server.shutdown()
    assert serving.returned.wait(STOP_TIMEOUT)
    waiting = [send_request(harness, server, kind, b"%d" % i) for i in range(3)]
    time.sleep(0.1)  # all three queued before the one handle_request()
    server.handle_request()
    assert wait_for(lambda: server.log.count("handle") == 2)
    time.sleep(0.3)
    assert server.log.count("handle") == 2, "handle_request() served more than one request"
    server.handle_request()
    server.handle_request()
    assert sorted(reply_of(sock, kind) for sock in waiting) == [b"echo:%d" % i for i in range(3)]


class _SlowHookLookup(type):
    """Looking ``finish_request`` up on the class sleeps a little, so that the worker asking
    whether the stock path applies lets the GIL go right in the middle of the question."""

    def __getattribute__(cls, name):
        if name == "finish_request":
            time.sleep(0.01)
        return super().__getattribute__(name)


def test_workers_asking_about_the_stock_path_at_once_all_serve(harness, flavour):
    """A pool's new workers each ask (in Python) whether their hooks are still stock. One
    worker once held a lock while asking, and a second one, given the GIL meanwhile, blocked
    on that lock with the GIL held: both hung. Eight clients at once on a fresh server all get
    their answers."""
    base = server_base(flavour, "tcp")
    cls = _SlowHookLookup("SlowLookup" + base.__name__, (base,), {})
    server = harness.server(
        cls, ("127.0.0.1", 0), echo_handler(module_of(flavour)), request_queue_size=64
    )
    server.log, server.seen, server.errors, server.threads = [], [], [], []
    harness.serve(server)
    replies = {}

    def client(index):
        payload = b"client-%d" % index
        replies[index] = ask(harness, server, "tcp", payload)

    assert run_clients(8, client, timeout=2 * STOP_TIMEOUT) == []
    assert replies == {i: b"echo:client-%d" % i for i in range(8)}
