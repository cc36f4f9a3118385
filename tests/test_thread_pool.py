"""ThreadPoolMixIn and the ThreadPool*Server classes (socketserver_rs only: the stdlib has no
pool).

Workers are ordinary ``threading.Thread`` objects fed from a Rust queue: the pool grows on
demand up to ``max_workers``, idle workers retire after ``worker_idle_timeout``, and when
every worker is busy the engine stops accepting, so further clients wait in the kernel
backlog. ``server_close()``, ``block_on_close``, ``daemon_threads`` and exceptions in
handlers behave as they do for ``ThreadingMixIn``.
"""

import itertools
import os
import socket
import socketserver
import sys
import threading
import time

import pytest
import socketserver_rs as rs
from _behaviour_helpers import (
    CLIENT_TIMEOUT,
    LOOPBACK,
    STOP_TIMEOUT,
    call_with_timeout,
    is_stream,
    needs_unix,
    open_fds,
    recv_until_eof,
    run_clients,
    server_address,
    wait_for,
)

POOL_CLASSES = {
    "tcp": "ThreadPoolTCPServer",
    "udp": "ThreadPoolUDPServer",
    "unix_stream": "ThreadPoolUnixStreamServer",
    "unix_dgram": "ThreadPoolUnixDatagramServer",
}


def kinds(*names):
    return [
        pytest.param(name, marks=needs_unix) if name.startswith("unix") else name for name in names
    ]


ALL_KINDS = kinds("tcp", "udp", "unix_stream", "unix_dgram")
STREAM_KINDS = kinds("tcp", "unix_stream")

_names = itertools.count()


def close_bounded(server):
    """``server_close()`` on a helper thread: a hang fails the test instead of the run."""
    finished, _, error = call_with_timeout(server.server_close)
    if not finished:
        raise AssertionError(f"server_close() did not return within {STOP_TIMEOUT} s")
    if error is not None:
        raise error


@pytest.fixture
def pool_server(harness, unix_dir):
    """``make(kind, handler, **class_attrs)``: a ThreadPool server of ``kind`` (closed,
    bounded, at teardown) with ``class_attrs`` set on a throwaway subclass."""

    def make(kind, handler, **class_attrs):
        base = getattr(rs, POOL_CLASSES[kind])
        cls = type(base.__name__, (base,), class_attrs)
        address = server_address(kind, unix_dir, f"pool{next(_names)}.sock")
        server = cls(address, handler)
        server.timeout = CLIENT_TIMEOUT  # handle_request() never waits forever
        harness.callback(close_bounded, server)
        return server

    return make


def message_handler(kind, respond):
    """A handler calling ``respond(handler, message) -> reply`` for every message: each line
    of a (persistent) stream connection, or each datagram."""
    if is_stream(kind):

        class StreamHandler(rs.StreamRequestHandler):
            def handle(self):
                for line in self.rfile:
                    self.wfile.write(respond(self, line.rstrip(b"\n")) + b"\n")

        return StreamHandler

    class DatagramHandler(rs.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            sock.sendto(respond(self, data), self.client_address)

    return DatagramHandler


class Client:
    """One client of a server of ``kind``: a connection (stream) or a bound datagram socket
    whose messages are lines or datagrams."""

    def __init__(self, harness, server, kind, unix_dir):
        self.kind = kind
        self.server = server
        if is_stream(kind):
            self.sock = harness.connect(server)
            self.rfile = self.sock.makefile("rb")
            harness.callback(self.rfile.close)
        else:
            self.sock = harness.socket(server.address_family, socket.SOCK_DGRAM)
            if kind == "unix_dgram":
                self.sock.bind(os.path.join(str(unix_dir), f"client{next(_names)}.sock"))
            else:
                self.sock.bind((LOOPBACK, 0))

    def send(self, message):
        if is_stream(self.kind):
            self.sock.sendall(message + b"\n")
        else:
            self.sock.sendto(message, self.server.server_address)

    def receive(self):
        if is_stream(self.kind):
            return self.rfile.readline().rstrip(b"\n")
        return self.sock.recv(65536)

    def ask(self, message):
        self.send(message)
        return self.receive()

    def close(self):
        if is_stream(self.kind):
            self.rfile.close()
        self.sock.close()


def pool_of(server):
    return server._rs_worker_pool


# Serving ----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["serve_forever", "handle_request"])
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_pool_server_answers_sequential_requests_on_one_reused_worker_thread(
    kind, mode, harness, unix_dir, pool_server
):
    seen = []

    def respond(handler, message):
        seen.append((threading.get_ident(), threading.current_thread()))
        return b"echo:" + message

    server = pool_server(kind, message_handler(kind, respond))
    if mode == "serve_forever":
        harness.serve(server)
    for i in range(30):
        client = Client(harness, server, kind, unix_dir)
        client.send(b"m%d" % i)
        if mode == "handle_request":
            server.handle_request()
        assert client.receive() == b"echo:m%d" % i
        client.close()
        # Once the worker is back waiting for work, the next request goes to it. (Without
        # this wait, a request that arrives while the worker is still finishing the last
        # one legitimately starts a second worker: how many depends on CPU contention.)
        assert wait_for(lambda: pool_of(server).idle == pool_of(server).workers == 1)
    assert len(seen) == 30
    threads = {thread for _, thread in seen}
    assert len(threads) == 1, threads
    for ident, thread in seen:
        assert type(thread) is threading.Thread
        assert thread is not threading.main_thread()
        assert thread.ident == ident


def test_threading_local_is_per_worker_and_kept_across_its_requests(harness, pool_server):
    local = threading.local()
    barrier = threading.Barrier(2, timeout=CLIENT_TIMEOUT)
    seen = []

    def respond(handler, message):
        if message == b"together":
            barrier.wait()
        local.count = getattr(local, "count", 0) + 1
        local.owner = getattr(local, "owner", threading.get_ident())
        seen.append((threading.get_ident(), local.owner, local.count))
        return b"ok"

    server = pool_server("tcp", message_handler("tcp", respond), max_workers=2)
    harness.serve(server)
    # Two connections held at once make two workers; then each serves more messages.
    first, second = (Client(harness, server, "tcp", None) for _ in range(2))
    first.send(b"together")
    second.send(b"together")
    assert first.receive() == second.receive() == b"ok"
    for _ in range(3):
        assert first.ask(b"more") == b"ok"
        assert second.ask(b"more") == b"ok"
    by_thread = {}
    for ident, owner, count in seen:
        assert owner == ident, "a worker saw another worker's threading.local"
        by_thread.setdefault(ident, []).append(count)
    assert len(by_thread) == 2
    for counts in by_thread.values():
        assert counts == [1, 2, 3, 4]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_pool_grows_to_max_workers_and_serves_that_many_at_once(
    kind, harness, unix_dir, pool_server
):
    max_workers = 4
    # Each first message waits until max_workers handlers run at the same time.
    barrier = threading.Barrier(max_workers, timeout=CLIENT_TIMEOUT)
    seen = []

    def respond(handler, message):
        if message.startswith(b"first"):
            barrier.wait()
        seen.append((message, threading.current_thread()))
        return b"ok:" + message

    server = pool_server(kind, message_handler(kind, respond), max_workers=max_workers)
    harness.serve(server)
    clients = [Client(harness, server, kind, unix_dir) for _ in range(max_workers)]
    for i, client in enumerate(clients):
        client.send(b"first%d" % i)
    assert [client.receive() for client in clients] == [
        b"ok:first%d" % i for i in range(max_workers)
    ]
    assert len({thread for _, thread in seen}) == max_workers
    assert pool_of(server).workers == max_workers
    if is_stream(kind):
        # Persistent connections: each stays with its worker.
        for i, client in enumerate(clients):
            assert client.ask(b"again%d" % i) == b"ok:again%d" % i
        thread_of = {message: thread for message, thread in seen}
        for i in range(max_workers):
            assert thread_of[b"again%d" % i] is thread_of[b"first%d" % i]


@pytest.mark.parametrize("kind", STREAM_KINDS)
def test_full_pool_leaves_the_next_client_in_the_backlog_until_a_worker_frees_up(
    kind, harness, unix_dir, pool_server
):
    started = []
    release = {name: threading.Event() for name in (b"a", b"b", b"c")}

    def respond(handler, message):
        started.append(message)
        release[message].wait(2 * CLIENT_TIMEOUT)
        return b"done:" + message

    server = pool_server(kind, message_handler(kind, respond), max_workers=2)
    harness.serve(server)
    harness.callback(lambda: [event.set() for event in release.values()])
    a, b = Client(harness, server, kind, unix_dir), Client(harness, server, kind, unix_dir)
    a.send(b"a")
    b.send(b"b")
    assert wait_for(lambda: len(started) == 2)
    # The kernel completes the third connection (backlog), but the engine does not accept it
    # while both workers are busy: no handler call, nothing queued in the pool.
    c = Client(harness, server, kind, unix_dir)
    c.send(b"c")
    time.sleep(0.3)
    assert sorted(started) == [b"a", b"b"]
    assert pool_of(server).workers == 2
    assert pool_of(server).queued == 0
    release[b"c"].set()
    release[b"a"].set()
    assert a.receive() == b"done:a"
    a.close()
    assert c.receive() == b"done:c"
    assert started[2] == b"c"
    release[b"b"].set()
    assert b.receive() == b"done:b"
    assert pool_of(server).workers <= 2


def thread_cpu_seconds(thread):
    """CPU time (user + system) a thread has used so far, from /proc (Linux)."""
    with open(f"/proc/self/task/{thread.native_id}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
@pytest.mark.parametrize("kind", ALL_KINDS)
def test_full_pool_with_a_client_waiting_in_the_backlog_does_not_spin_the_serving_loop(
    kind, harness, unix_dir, pool_server
):
    """While the pool is full the engine stops accepting; it must then sleep until a worker
    frees up, not busy-loop on a listener that stays readable because a client waits in
    the backlog (or a datagram in the socket buffer). An idle loop uses next to no CPU in
    a second; a spinning one uses most of it."""
    started = []
    release = threading.Event()

    def respond(handler, message):
        started.append(message)
        release.wait(2 * CLIENT_TIMEOUT)
        return b"done:" + message

    server = pool_server(kind, message_handler(kind, respond), max_workers=1)
    serving = harness.serve(server)
    harness.callback(release.set)
    busy = Client(harness, server, kind, unix_dir)
    busy.send(b"busy")
    assert wait_for(lambda: started == [b"busy"])
    waiting = Client(harness, server, kind, unix_dir)
    waiting.send(b"waiting")
    time.sleep(0.1)
    before = thread_cpu_seconds(serving.thread)
    time.sleep(1.0)
    used = thread_cpu_seconds(serving.thread) - before
    release.set()
    assert busy.receive() == b"done:busy"
    busy.close()
    assert waiting.receive() == b"done:waiting"
    assert started == [b"busy", b"waiting"]
    assert used < 0.3, f"the serving loop used {used:.2f} s of CPU in 1 s while paused"


@pytest.mark.parametrize("kind", kinds("tcp", "udp"))
def test_idle_workers_retire_after_worker_idle_timeout(kind, harness, unix_dir, pool_server):
    barrier = threading.Barrier(3, timeout=CLIENT_TIMEOUT)
    threads = []

    def respond(handler, message):
        if message == b"together":
            barrier.wait()
        threads.append(threading.current_thread())
        return b"ok"

    server = pool_server(
        kind, message_handler(kind, respond), max_workers=3, worker_idle_timeout=0.2
    )
    harness.serve(server)
    clients = [Client(harness, server, kind, unix_dir) for _ in range(3)]
    for client in clients:
        client.send(b"together")
    assert [client.receive() for client in clients] == [b"ok"] * 3
    for client in clients:
        client.close()
    assert len(set(threads)) == 3
    assert wait_for(lambda: pool_of(server).workers == 0), pool_of(server).workers
    for thread in threads:
        thread.join(STOP_TIMEOUT)
        assert not thread.is_alive()
    assert not server._rs_workers.threads
    # The pool starts a new worker for the next request.
    client = Client(harness, server, kind, unix_dir)
    assert client.ask(b"later") == b"ok"
    client.close()
    assert threads[-1] not in threads[:-1]
    assert wait_for(lambda: pool_of(server).workers == 0)


@pytest.mark.parametrize("kind", STREAM_KINDS)
def test_requests_on_one_connection_are_answered_in_order(kind, harness, unix_dir, pool_server):
    server = pool_server(kind, message_handler(kind, lambda handler, message: message))
    harness.serve(server)
    client = Client(harness, server, kind, unix_dir)
    messages = [b"%d" % i for i in range(300)]
    client.sock.sendall(b"".join(message + b"\n" for message in messages))
    assert [client.receive() for _ in messages] == messages


# Errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_handler_exception_goes_to_handle_error_and_the_worker_keeps_serving(
    kind, harness, unix_dir, pool_server
):
    seen = []
    errors = []

    def respond(handler, message):
        seen.append((message, threading.current_thread()))
        if message == b"boom":
            raise ValueError("boom")
        return b"ok:" + message

    def handle_error(self, request, client_address):
        errors.append((sys.exc_info()[0], client_address, threading.current_thread()))

    server = pool_server(
        kind, message_handler(kind, respond), max_workers=1, handle_error=handle_error
    )
    harness.serve(server)
    failing = Client(harness, server, kind, unix_dir)
    failing.send(b"boom")
    if is_stream(kind):
        assert failing.receive() == b"", "the failed request's connection is shut down"
    assert wait_for(lambda: errors)
    after = Client(harness, server, kind, unix_dir)
    assert after.ask(b"next") == b"ok:next"
    [(error_type, client_address, error_thread)] = errors
    assert error_type is ValueError
    if is_stream(kind) and kind == "tcp":
        assert client_address == failing.sock.getsockname()
    worker = seen[0][1]
    assert error_thread is worker
    assert seen[1] == (b"next", worker), "the same worker went on serving"


def _threading_flavours():
    return ["stdlib ThreadingTCPServer", "rs ThreadingTCPServer", "rs ThreadPoolTCPServer"]


@pytest.mark.parametrize("flavour", _threading_flavours())
@pytest.mark.parametrize("exception", [KeyboardInterrupt, SystemExit])
def test_keyboard_interrupt_and_system_exit_in_a_worker_behave_as_in_threading_mixin(
    flavour, exception, harness, monkeypatch
):
    """As in ThreadingMixIn.process_request_thread, a BaseException that is not an
    Exception escapes ``except Exception`` (no handle_error), the request is still shut down
    in ``finally``, the exception ends up in threading.excepthook, and the serving loop is
    unaffected and goes on serving."""
    hooked = []
    monkeypatch.setattr(threading, "excepthook", lambda args: hooked.append(args.exc_type))
    module = socketserver if flavour.startswith("stdlib") else rs
    base = getattr(module, flavour.split()[1])

    class Handler(module.StreamRequestHandler):
        def handle(self):
            line = self.rfile.readline()
            if line == b"raise\n":
                raise exception()
            self.wfile.write(b"echo:" + line)

    class Server(base):
        # One worker: if its death cost the pool a worker for good, nothing would be served.
        max_workers = 1

        def __init__(self, *args):
            self.log = []
            super().__init__(*args)

        def handle_error(self, request, client_address):
            self.log.append("handle_error")

        def shutdown_request(self, request):
            self.log.append("shutdown_request")
            super().shutdown_request(request)

    server = Server((LOOPBACK, 0), Handler)
    harness.callback(close_bounded, server)
    serving = harness.serve(server)
    failing = harness.connect(server, b"raise\n")
    assert recv_until_eof(failing) == b"", "the request was shut down"
    assert wait_for(lambda: hooked)
    assert hooked == [exception]
    assert server.log == ["shutdown_request"]
    assert serving.thread.is_alive() and serving.error is None
    client = harness.connect(server, b"after\n")
    client.shutdown(socket.SHUT_WR)
    client.settimeout(2.0)
    assert recv_until_eof(client) == b"echo:after\n", "the server stopped serving"
    assert server.log == ["shutdown_request", "shutdown_request"]


@pytest.mark.parametrize("exception", [KeyboardInterrupt, SystemExit])
def test_worker_ended_by_keyboard_interrupt_or_system_exit_leaves_the_pool_count(
    exception, harness, pool_server, monkeypatch
):
    """A worker thread that a BaseException ended is no longer counted as a worker, so
    the pool's capacity is not lost: it can start a new one."""
    hooked = []
    monkeypatch.setattr(threading, "excepthook", lambda args: hooked.append(args.thread))

    class Handler(rs.BaseRequestHandler):
        def handle(self):
            raise exception()

    server = pool_server("tcp", Handler, max_workers=2)
    harness.serve(server)
    for _ in range(2):
        assert recv_until_eof(harness.connect(server)) == b""
    assert wait_for(lambda: len(hooked) == 2)
    for thread in hooked:
        thread.join(STOP_TIMEOUT)
    assert not server._rs_workers.threads
    assert wait_for(lambda: pool_of(server).workers == 0, 2.0), pool_of(server).workers


# Closing and shutting down ------------------------------------------------------------------


def blocking_server(pool_server, harness, **attrs):
    """A TCP pool server whose handler records start and end and waits for ``release``."""
    release = threading.Event()
    started, finished, threads = [], [], []

    class Handler(rs.StreamRequestHandler):
        def handle(self):
            name = self.rfile.readline().strip()
            threads.append(threading.current_thread())
            started.append(name)
            release.wait(2 * CLIENT_TIMEOUT)
            time.sleep(0.05)  # still busy for a moment after release
            finished.append(name)
            self.wfile.write(b"done:" + name)

    server = pool_server("tcp", Handler, **attrs)
    return server, release, started, finished, threads


@pytest.mark.parametrize("mode", ["serve_forever", "handle_request"])
def test_server_close_with_block_on_close_waits_for_running_and_queued_requests(
    mode, harness, pool_server
):
    # serve_forever admits only as many as there are workers; handle_request (which has no
    # backpressure) hands over more, which then queue for the busy worker.
    max_workers = 2 if mode == "serve_forever" else 1
    server, release, started, finished, threads = blocking_server(
        pool_server, harness, max_workers=max_workers
    )
    harness.callback(release.set)
    names = [b"r0", b"r1", b"r2"][: 3 if mode == "handle_request" else 2]
    clients = [harness.connect(server, name + b"\n") for name in names]
    if mode == "serve_forever":
        serving = harness.serve(server)
        assert wait_for(lambda: len(started) == 2)
        serving.stop()
    else:
        for _ in names:
            server.handle_request()
        assert wait_for(lambda: len(started) == 1 and pool_of(server).queued == 2)
    closer = threading.Thread(target=server.server_close, daemon=True)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive(), "server_close() returned while requests were unfinished"
    assert finished == []
    release.set()
    closer.join(STOP_TIMEOUT)
    assert not closer.is_alive(), "server_close() did not return"
    assert sorted(finished) == sorted(names)
    for thread in threads:
        assert not thread.is_alive()
    assert not server._rs_workers.threads
    assert pool_of(server).workers == 0
    for client, name in zip(clients, names, strict=True):
        assert recv_until_eof(client) == b"done:" + name


def test_server_close_without_block_on_close_returns_at_once(harness, pool_server):
    server, release, started, finished, threads = blocking_server(
        pool_server, harness, block_on_close=False
    )
    harness.callback(release.set)
    harness.serve(server)
    client = harness.connect(server, b"slow\n")
    assert wait_for(lambda: started)
    harness.callback(lambda: [thread.join(STOP_TIMEOUT) for thread in threads])
    finished_in_time, _, error = call_with_timeout(server.server_close, 2.0)
    assert finished_in_time and error is None
    assert finished == [], "server_close() waited for the running request"
    assert threads[0].is_alive()
    release.set()
    assert recv_until_eof(client) == b"done:slow"
    threads[0].join(STOP_TIMEOUT)
    assert not threads[0].is_alive(), "the worker did not exit after the pool closed"
    assert wait_for(lambda: pool_of(server).workers == 0)


@pytest.mark.parametrize("daemon", [False, True])
def test_daemon_threads_decides_whether_workers_are_daemons(daemon, harness, pool_server):
    server, release, _, _, threads = blocking_server(pool_server, harness, daemon_threads=daemon)
    release.set()
    harness.serve(server)
    client = harness.connect(server, b"d\n")
    assert recv_until_eof(client) == b"done:d"
    assert threads[0].daemon is daemon


def test_shutdown_returns_promptly_while_workers_are_busy(harness, pool_server):
    server, release, started, finished, _ = blocking_server(pool_server, harness, max_workers=2)
    harness.callback(release.set)
    serving = harness.serve(server)
    clients = [harness.connect(server, b"busy%d\n" % i) for i in range(2)]
    assert wait_for(lambda: len(started) == 2)
    returned, _, error = call_with_timeout(server.shutdown, STOP_TIMEOUT)
    assert returned and error is None
    assert serving.returned.wait(STOP_TIMEOUT)
    assert finished == [], "shutdown() waited for the busy workers"
    release.set()
    for i, client in enumerate(clients):
        assert recv_until_eof(client) == b"done:busy%d" % i


# Leaks ------------------------------------------------------------------------------------


def test_hundreds_of_connections_leak_no_descriptor_or_thread(harness, pool_server):
    server = pool_server(
        "tcp",
        message_handler("tcp", lambda handler, message: b"echo:" + message),
        max_workers=8,
        worker_idle_timeout=0.2,
    )
    harness.serve(server)
    # Warm up once, so descriptors the engine keeps for its lifetime exist already.
    warm = Client(harness, server, "tcp", None)
    assert warm.ask(b"warm") == b"echo:warm"
    warm.close()
    assert wait_for(lambda: pool_of(server).workers == 0)
    fds_before = open_fds()
    threads_before = threading.active_count()

    failures = []

    def client_loop(index):
        for i in range(40):
            with socket.create_connection(server.server_address, CLIENT_TIMEOUT) as sock:
                message = b"%d-%d" % (index, i)
                sock.sendall(message + b"\n")
                sock.shutdown(socket.SHUT_WR)
                if recv_until_eof(sock) != b"echo:" + message + b"\n":
                    failures.append(message)

    failures += run_clients(8, client_loop)
    assert failures == []
    # Retired workers finish; then the process is back where it was.
    assert wait_for(lambda: pool_of(server).workers == 0)
    assert wait_for(lambda: threading.active_count() == threads_before), (
        threading.active_count(),
        threads_before,
    )
    assert wait_for(lambda: open_fds() == fds_before), open_fds() ^ fds_before
