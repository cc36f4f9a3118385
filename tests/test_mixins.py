"""ThreadingMixIn and ForkingMixIn, and serving from a process that inherited a server
object through os.fork() (the engine must not share its poller with the parent)."""

import contextlib
import os
import signal
import socket
import threading
import time

import pytest
from _behaviour_helpers import (
    LOOPBACK,
    POLL,
    ServingThread,
    echo_handler,
    needs_fork,
    needs_unix,
    recv_until_eof,
    server_records,
    wait_for,
)
from socketserver_rs.testing import HalfClose, Recv, RecvAll, Send, compare

# Bounded per test, well above what any test needs, so a hang fails fast.
pytestmark = pytest.mark.timeout(60)


def blocking_handler(ss, started, release):
    class Handler(ss.BaseRequestHandler):
        def handle(self):
            self.server.handler_threads.append(threading.current_thread())
            started.release()
            release.wait(5)
            self.server.finished.append(threading.current_thread())
            self.request.sendall(b"done")

    return Handler


def threading_server(ss, harness, handler, **attrs):
    server = harness.server(ss.ThreadingTCPServer, (LOOPBACK, 0), handler, **attrs)
    server.handler_threads = []
    server.finished = []
    server.timeout = 5.0
    return server


# ThreadingMixIn -----------------------------------------------------------------------------


def test_threading_server_serves_each_request_on_a_new_thread(ss, harness):
    server = threading_server(ss, harness, echo_handler(ss))
    for i in range(3):
        client = harness.connect(server, b"%d" % i)
        client.shutdown(socket.SHUT_WR)
        server.handle_request()
        assert recv_until_eof(client) == b"echo:%d" % i
    threads = [record["thread"] for record in server_records(server)]
    assert len(set(threads)) == 3
    assert threading.current_thread() not in threads


@pytest.mark.parametrize("daemon", [False, True])
def test_daemon_threads_decides_whether_request_threads_are_daemons(ss, harness, daemon):
    server = threading_server(ss, harness, echo_handler(ss), daemon_threads=daemon)
    client = harness.connect(server, b"d")
    client.shutdown(socket.SHUT_WR)
    server.handle_request()
    recv_until_eof(client)
    (record,) = server_records(server)
    assert record["thread"].daemon is daemon


def test_block_on_close_makes_server_close_join_request_threads(ss, harness):
    started, release = threading.Semaphore(0), threading.Event()
    server = threading_server(ss, harness, blocking_handler(ss, started, release))
    harness.callback(release.set)
    clients = []
    for _ in range(2):
        clients.append(harness.connect(server, b"x"))
        server.handle_request()
    assert started.acquire(timeout=5) and started.acquire(timeout=5)
    threading.Timer(0.2, release.set).start()
    server.server_close()
    assert len(server.finished) == 2  # both handlers ran to the end before close returned
    for thread in server.handler_threads:
        assert not thread.is_alive()


def test_block_on_close_false_makes_server_close_return_while_threads_run(ss, harness):
    started, release = threading.Semaphore(0), threading.Event()
    server = threading_server(
        ss, harness, blocking_handler(ss, started, release), block_on_close=False
    )
    harness.callback(release.set)
    client = harness.connect(server, b"x")
    server.handle_request()
    assert started.acquire(timeout=5)
    finished_before = len(server.finished)
    server.server_close()
    assert finished_before == len(server.finished) == 0
    assert server.handler_threads[0].is_alive()
    release.set()
    assert recv_until_eof(client) == b"done"
    server.handler_threads[0].join(5)


def test_finished_request_threads_are_reaped_from_the_join_list(ss, harness):
    server = threading_server(ss, harness, echo_handler(ss))
    for i in range(6):
        client = harness.connect(server, b"%d" % i)
        client.shutdown(socket.SHUT_WR)
        server.handle_request()
        recv_until_eof(client)
        record_thread = server_records(server)[-1]["thread"]
        record_thread.join(5)
    # Each new request drops finished threads before adding its own.
    assert len(server._threads) <= 1
    server.server_close()
    assert len(server._threads) == 0


def test_daemon_request_threads_are_not_kept_for_joining(ss, harness):
    server = threading_server(ss, harness, echo_handler(ss), daemon_threads=True)
    client = harness.connect(server, b"x")
    client.shutdown(socket.SHUT_WR)
    server.handle_request()
    recv_until_eof(client)
    assert list(server._threads) == []


def test_threading_server_handler_exception_goes_to_handle_error_on_the_request_thread(ss, harness):
    errors = []

    class Handler(ss.BaseRequestHandler):
        def handle(self):
            raise ValueError("in thread")

    class Server(ss.ThreadingTCPServer):
        def handle_error(self, request, client_address):
            import sys

            errors.append((threading.current_thread(), sys.exc_info()[0], client_address))

    server = harness.server(Server, (LOOPBACK, 0), Handler)
    server.timeout = 5.0
    client = harness.connect(server)
    server.handle_request()
    server.server_close()
    ((thread, exc_type, address),) = errors
    assert thread is not threading.current_thread()
    assert exc_type is ValueError
    assert address == client.getsockname()


# These run on both modules at once, through the plugin's compare(): the same clients get the
# same replies from each, and handle_error() is called on neither.


@needs_unix
@pytest.mark.parametrize("kind", ["stream", "datagram"])
def test_threading_unix_servers_serve(unix_dir, kind):
    def make_server(ss):
        path = os.path.join(str(unix_dir), f"t-{ss.__name__}")
        cls = ss.ThreadingUnixStreamServer if kind == "stream" else ss.ThreadingUnixDatagramServer
        return cls(path, echo_handler(ss))

    if kind == "stream":
        transcript = compare(make_server, [Send(b"u"), HalfClose(), RecvAll()])
    else:  # compare() binds a Unix datagram client to a path, so that the reply can come
        transcript = compare(make_server, [Send(b"u"), Recv(100)])
    assert transcript.replies == ((b"echo:u",),)
    assert transcript.errors == ()


def test_threading_udp_server_serves():
    def make_server(ss):
        return ss.ThreadingUDPServer((LOOPBACK, 0), echo_handler(ss))

    client = [step for i in range(3) for step in (Send(b"%d" % i), Recv(100))]
    transcript = compare(make_server, client)
    assert transcript.replies == ((b"echo:0", b"echo:1", b"echo:2"),)
    assert transcript.errors == ()


# ForkingMixIn -------------------------------------------------------------------------------


class PidHandlerMixin:
    """Replies with the pid of the process serving the request."""

    def handle(self):
        if isinstance(self.request, tuple):
            _data, sock = self.request
            time.sleep(self.server.handler_delay)
            sock.sendto(b"%d" % os.getpid(), self.client_address)
        else:
            self.request.recv(100)
            time.sleep(self.server.handler_delay)
            self.request.sendall(b"%d" % os.getpid())


def pid_handler(ss):
    return type("PidHandler", (PidHandlerMixin, ss.BaseRequestHandler), {})


def forking_server(ss, harness, cls=None, delay=0.0, **attrs):
    server = harness.server(cls or ss.ForkingTCPServer, (LOOPBACK, 0), pid_handler(ss), **attrs)
    server.handler_delay = delay
    server.timeout = 5.0

    def reap_leftovers():
        for pid in list(server.active_children or ()):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

    harness.callback(reap_leftovers)
    return server


def is_reaped(pid):
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


@needs_fork
def test_forking_server_serves_each_request_in_a_child_process(ss, harness):
    server = forking_server(ss, harness)
    pids = []
    for _ in range(2):
        client = harness.connect(server, b"p")
        client.shutdown(socket.SHUT_WR)
        server.handle_request()
        pids.append(int(recv_until_eof(client)))
    assert os.getpid() not in pids
    assert len(set(pids)) == 2
    # handle_request() alone never reaps: both children are still tracked.
    assert set(pids) == server.active_children


@needs_fork
def test_forking_server_close_reaps_every_child(ss, harness):
    server = forking_server(ss, harness, delay=0.1)
    pids = []
    clients = []
    for _ in range(3):
        client = harness.connect(server, b"p")
        client.shutdown(socket.SHUT_WR)
        server.handle_request()
        clients.append(client)
    pids = [int(recv_until_eof(client)) for client in clients]
    server.server_close()
    assert not server.active_children
    assert all(is_reaped(pid) for pid in pids)


@needs_fork
def test_forking_serve_forever_reaps_children_in_service_actions(ss, harness):
    server = forking_server(ss, harness)
    harness.serve(server, poll_interval=POLL)
    pids = [int(harness.exchange(server, b"p")) for _ in range(3)]
    assert wait_for(lambda: not server.active_children, timeout=5.0)
    assert all(is_reaped(pid) for pid in pids)


@needs_fork
def test_forking_handle_request_timeout_reaps_children(ss, harness):
    server = forking_server(ss, harness)
    client = harness.connect(server, b"p")
    client.shutdown(socket.SHUT_WR)
    server.handle_request()
    pid = int(recv_until_eof(client))
    server.timeout = 0.05
    assert wait_for(lambda: (server.handle_request(), not server.active_children)[1], timeout=5)
    assert is_reaped(pid)


@needs_fork
def test_forking_serve_forever_keeps_at_most_max_children(ss, harness):
    """Over max_children, service_actions() waits for children to exit before the loop
    takes the next request (handle_request() alone never reaps, as in the stdlib)."""

    class Server(ss.ForkingTCPServer):
        max_children = 2
        most = 0

        def process_request(self, request, client_address):
            super().process_request(request, client_address)
            self.most = max(self.most, len(self.active_children))

    server = forking_server(ss, harness, cls=Server, delay=0.2)
    clients = [harness.connect(server, b"p") for _ in range(4)]
    for client in clients:
        client.shutdown(socket.SHUT_WR)
    harness.serve(server, poll_interval=POLL)
    replies = {int(recv_until_eof(client)) for client in clients}
    assert len(replies) == 4
    assert 1 <= server.most <= 2


@needs_fork
def test_forking_server_close_without_block_on_close_does_not_wait(ss, harness):
    server = forking_server(ss, harness, delay=0.6, block_on_close=False)
    client = harness.connect(server, b"p")
    client.shutdown(socket.SHUT_WR)
    server.handle_request()
    started = time.monotonic()
    server.server_close()
    assert time.monotonic() - started < 0.5
    assert len(server.active_children) == 1
    recv_until_eof(client)


@needs_fork
def test_forking_udp_server_replies_from_a_child(ss, harness):
    server = forking_server(ss, harness, cls=ss.ForkingUDPServer)
    client = harness.datagram_client(server)
    client.sendto(b"p", server.server_address)
    server.handle_request()
    assert int(client.recv(100)) != os.getpid()
    server.server_close()
    assert not server.active_children


@needs_fork
@needs_unix
def test_forking_unix_stream_server_serves_from_a_child(rs, harness, unix_dir):
    """socketserver_rs only on Python < 3.12: ForkingUnixStreamServer is a documented extra
    there (the stdlib gained it in 3.12)."""
    server = harness.server(
        rs.ForkingUnixStreamServer, os.path.join(str(unix_dir), "f"), pid_handler(rs)
    )
    server.handler_delay = 0
    server.timeout = 5.0
    client = harness.connect(server, b"p")
    client.shutdown(socket.SHUT_WR)
    server.handle_request()
    assert int(recv_until_eof(client)) != os.getpid()
    server.server_close()
    assert not server.active_children


# Serving from a forked process --------------------------------------------------------------


def wait_child(pid, timeout=10.0):
    """The exit status of child ``pid``; kills it if it has not exited within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"forked child {pid} did not exit within {timeout} s")


def fork_child(harness, body):
    """Fork; the child runs ``body()`` (True for success) and exits through os._exit with
    0 or 1, whatever happens. Returns the child's pid (reaped at teardown if need be)."""
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            signal.alarm(10)  # hang guard: SIGALRM's default action ends the child
            code = 0 if body() else 1
        finally:
            os._exit(code)
    harness.reap_fork(pid)
    return pid


@needs_fork
def test_child_serves_with_a_server_it_inherited_and_the_parent_serves_after(ss, harness):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss), timeout=5.0)
    # The parent serves first, so its engine (if any) has made its poller.
    assert_exchange_via_handle_request(harness, server, b"before")

    def child():
        client = socket.create_connection(server.server_address, timeout=5)
        client.sendall(b"child")
        client.shutdown(socket.SHUT_WR)
        server.handle_request()
        return recv_until_eof(client) == b"echo:child"

    assert wait_child(fork_child(harness, child)) == 0
    assert_exchange_via_handle_request(harness, server, b"after")
    serving = harness.serve(server, poll_interval=POLL)
    assert harness.exchange(server, b"after, serving") == b"echo:after, serving"
    serving.stop()


def assert_exchange_via_handle_request(harness, server, payload):
    client = harness.connect(server, payload)
    client.shutdown(socket.SHUT_WR)
    server.handle_request()
    assert recv_until_eof(client) == b"echo:" + payload


@needs_fork
def test_child_runs_serve_forever_on_an_inherited_server(ss, harness):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss), timeout=5.0)
    serving = ServingThread(server, POLL).start()
    assert harness.exchange(server, b"parent") == b"echo:parent"
    serving.stop()

    def child():
        replies = []

        def drive():
            replies.append(
                recv_until_eof(
                    _send_and_half_close(socket.create_connection(server.server_address, 5))
                )
            )
            server.shutdown()

        threading.Thread(target=drive, daemon=True).start()
        server.serve_forever(POLL)
        return replies == [b"echo:x"]

    assert wait_child(fork_child(harness, child)) == 0
    harness.serve(server, poll_interval=POLL)
    assert harness.exchange(server, b"parent again") == b"echo:parent again"


def _send_and_half_close(sock, payload=b"x"):
    sock.sendall(payload)
    sock.shutdown(socket.SHUT_WR)
    return sock


@needs_fork
def test_fork_while_the_parent_is_serving_leaves_both_working(ss, harness):
    """Fork from the main thread while another thread waits in serve_forever(): the child
    serves on its copy; the parent's loop keeps serving and still stops on shutdown()."""
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss), timeout=5.0)
    serving = harness.serve(server, poll_interval=POLL)
    assert harness.exchange(server, b"before") == b"echo:before"
    # The parent's loop competes for connections with the child: give the child its own
    # listener to serve on, so the test does not depend on who accepts first.
    other = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss), timeout=5.0)
    assert_exchange_via_handle_request(harness, other, b"other before")

    def child():
        client = socket.create_connection(other.server_address, timeout=5)
        client.sendall(b"child")
        client.shutdown(socket.SHUT_WR)
        other.handle_request()
        return recv_until_eof(client) == b"echo:child"

    assert wait_child(fork_child(harness, child)) == 0
    for i in range(3):
        assert harness.exchange(server, b"after%d" % i) == b"echo:after%d" % i
    assert_exchange_via_handle_request(harness, other, b"other after")
    serving.stop()
    assert serving.error is None


def os_threads():
    return len(os.listdir("/proc/self/task"))


def test_serving_starts_no_background_os_threads(ss, harness):
    """Forking a multi-threaded process is unsafe: serving must not start threads of its own
    (only the thread the test runs serve_forever() on)."""
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss), timeout=0.01)
    # Threads of earlier tests may still be exiting at the OS level after threading has
    # forgotten them: start counting once the OS agrees with threading.
    assert wait_for(lambda: os_threads() == threading.active_count(), timeout=5.0)
    before = os_threads()
    server.handle_request()
    assert os_threads() == before
    serving = ServingThread(server, POLL).start()
    harness.callback(serving.stop)
    assert harness.exchange(server, b"x") == b"echo:x"
    assert os_threads() == before + 1
    serving.stop()
    assert wait_for(lambda: os_threads() == before, timeout=2.0)
