"""Helpers for the behaviour tests (test_api, test_servers, test_hook_order, test_handlers,
test_shutdown_and_signals, test_mixins, test_fastpath, test_errors).

Everything here works for both ``socketserver`` and ``socketserver_rs``: classes that must
derive from the module under test are built by factories that take the module.

Every wait is bounded: clients have a socket timeout, threads are joined with a timeout, and
``shutdown()`` is called on a helper thread so a hang fails the test instead of the run.
"""

import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

LOOPBACK = "127.0.0.1"
LOOPBACK6 = "::1"
# How long a client waits for anything before the test fails.
CLIENT_TIMEOUT = 5.0
# How long shutdown()/join() may take before we call it a hang. The stdlib's shutdown takes
# up to poll_interval (tests use 0.05 s for it), so this is generous for both modules.
STOP_TIMEOUT = 5.0
# poll_interval for stdlib-parametrised serve_forever runs: short, so shutdown is quick.
POLL = 0.05

HAS_UNIX = hasattr(socket, "AF_UNIX")
HAS_FORK = hasattr(os, "fork")
# Marks for tests that need AF_UNIX sockets or os.fork.
needs_unix = pytest.mark.skipif(
    not HAS_UNIX, reason="no AF_UNIX on this platform (Windows): no Unix-socket servers exist there"
)
needs_fork = pytest.mark.skipif(
    not HAS_FORK, reason="no os.fork on this platform (Windows): no Forking* servers exist there"
)
# The socket kinds a test of every server family runs on (see server_class).
SOCKET_KINDS = [
    "tcp",
    "udp",
    pytest.param("unix_stream", marks=needs_unix),
    pytest.param("unix_dgram", marks=needs_unix),
]


def ipv6_loopback_available():
    """Whether ``::1`` can be bound here (containers often run without IPv6)."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind((LOOPBACK6, 0))
    except OSError:
        return False
    return True


HAS_IPV6 = ipv6_loopback_available()


def open_fds():
    """The set of this process's open descriptors (Linux)."""
    return set(os.listdir("/proc/self/fd"))


def wait_for(predicate, timeout=STOP_TIMEOUT, interval=0.005):
    """Poll ``predicate`` until true or ``timeout``; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def call_with_timeout(function, timeout=STOP_TIMEOUT):
    """Run ``function()`` on a helper thread; return ``(finished, seconds, error)``.

    Used for ``shutdown()``: the stdlib's deadlocks in some cases, and a test must fail,
    not hang. A thread still running after ``timeout`` is a daemon, so it cannot hold up exit.
    """
    outcome = {}

    def run():
        started = time.monotonic()
        try:
            function()
        except BaseException as error:
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=run, daemon=True, name=f"call:{function!r}")
    thread.start()
    thread.join(timeout)
    return not thread.is_alive(), outcome.get("seconds"), outcome.get("error")


def run_clients(count, client, timeout=3 * STOP_TIMEOUT):
    """Run ``client(index)`` for each index below ``count``, on as many threads at once, and
    wait for them all (each join bounded by ``timeout``); fails if one still runs. Returns
    the exceptions the clients raised."""
    errors = []

    def run(index):
        try:
            client(index)
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not any(thread.is_alive() for thread in threads), "a client is still running"
    return errors


def poke(server):
    """Send ``server`` a request (a connection or an empty datagram), ignoring failures: it
    wakes a loop that missed a shutdown() so that it sees the request flag and stops."""
    try:
        with socket.socket(server.socket.family, server.socket.type) as sock:
            sock.settimeout(1.0)
            if server.socket.type == socket.SOCK_STREAM:
                sock.connect(server.server_address)
            else:
                sock.sendto(b"", server.server_address)
    except (OSError, AttributeError):
        pass


class ServingThread:
    """``server.serve_forever(poll_interval)`` on a daemon thread, with bounded stopping."""

    def __init__(self, server, poll_interval=POLL):
        self.server = server
        self.poll_interval = poll_interval
        self.error = None
        self.returned = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="serve_forever")

    def _run(self):
        try:
            self.server.serve_forever(self.poll_interval)
        except BaseException as error:
            self.error = error
        finally:
            self.returned.set()

    def start(self):
        self.thread.start()
        return self

    def stop(self, timeout=STOP_TIMEOUT):
        """Shut the loop down (if it still runs) and join the thread; fail on a hang (after
        poking the loop with a request, so no thread is left waiting for ever)."""
        if self.thread.is_alive():
            finished, _, error = call_with_timeout(self.server.shutdown, timeout)
            if not finished:
                poke(self.server)
                self.thread.join(timeout)
                raise AssertionError(f"shutdown() did not return within {timeout} s")
            if error is not None:
                raise error
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"serve_forever() did not return within {timeout} s")


class Harness:
    """Owns what a test opens (servers, serving threads, sockets, threads, processes) and
    closes it all at teardown, last opened first."""

    def __init__(self):
        self._stack = contextlib.ExitStack()

    def close(self):
        self._stack.close()

    def callback(self, function, *args, **kwargs):
        self._stack.callback(function, *args, **kwargs)

    # servers -------------------------------------------------------------------------------

    def server(self, cls, address, handler, *, bind_and_activate=True, **class_attrs):
        """``cls(address, handler)``, with ``class_attrs`` set on a throwaway subclass (so
        attributes read during construction, such as ``allow_reuse_address``, apply)."""
        if class_attrs:
            cls = type(cls.__name__, (cls,), class_attrs)
        server = cls(address, handler, bind_and_activate=bind_and_activate)
        self._stack.callback(server.server_close)
        return server

    def serve(self, server, poll_interval=POLL):
        """Start ``serve_forever`` on a thread; it is shut down and joined at teardown."""
        serving = ServingThread(server, poll_interval).start()
        self._stack.callback(serving.stop)
        # A serve_forever() that fails at once should fail the test with its own error, not
        # with a client timing out later.
        if serving.returned.wait(0.005) and serving.error is not None:
            raise serving.error
        return serving

    # threads and processes -----------------------------------------------------------------

    def thread(self, target, *args, name=None):
        """Start a daemon thread running ``target(*args)``; joined (bounded) at teardown."""
        thread = threading.Thread(target=target, args=args, daemon=True, name=name)
        thread.start()
        self._stack.callback(thread.join, STOP_TIMEOUT)
        return thread

    def popen(self, argv, **kwargs):
        """A child process that is killed and reaped at teardown if still running."""
        proc = subprocess.Popen(argv, **kwargs)

        def reap():
            if proc.poll() is None:
                proc.kill()
            proc.wait(STOP_TIMEOUT)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()

        self._stack.callback(reap)
        return proc

    def reap_fork(self, pid):
        """At teardown, make sure forked child ``pid`` is gone and reaped."""

        def reap():
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(pid, os.WNOHANG) == (0, 0):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)

        self._stack.callback(reap)

    # clients -------------------------------------------------------------------------------

    def socket(self, family=socket.AF_INET, type=socket.SOCK_STREAM):
        sock = socket.socket(family, type)
        sock.settimeout(CLIENT_TIMEOUT)
        self._stack.callback(sock.close)
        return sock

    def connect(self, server, payload=None):
        """A stream client connected to ``server`` (sending ``payload`` if given)."""
        sock = self.socket(server.address_family, socket.SOCK_STREAM)
        sock.connect(server.server_address)
        if payload is not None:
            sock.sendall(payload)
        return sock

    def exchange(self, server, payload=b"ping"):
        """Connect, send ``payload``, half-close, and return everything the server sent."""
        sock = self.connect(server, payload)
        sock.shutdown(socket.SHUT_WR)
        return recv_until_eof(sock)

    def datagram_client(self, server, bind=True, address=None):
        """A datagram socket of ``server``'s family; bound (to an ephemeral port, or for Unix
        to ``address``) unless ``bind`` is false."""
        sock = self.socket(server.address_family, socket.SOCK_DGRAM)
        if bind:
            if server.address_family == socket.AF_UNIX:
                sock.bind(address)
            else:
                sock.bind((server.server_address[0], 0))
        return sock


def recv_until_eof(sock, limit=1 << 20):
    chunks = []
    total = 0
    while total < limit:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


# Server and handler factories for the module under test ------------------------------------


def server_class(ss, kind):
    """The plain server class of ``ss`` for ``kind``: tcp, tcp6, udp, udp6, unix_stream,
    unix_dgram."""
    base = {
        "tcp": ss.TCPServer,
        "tcp6": ss.TCPServer,
        "udp": ss.UDPServer,
        "udp6": ss.UDPServer,
        "unix_stream": getattr(ss, "UnixStreamServer", None),
        "unix_dgram": getattr(ss, "UnixDatagramServer", None),
    }[kind]
    if kind.endswith("6"):
        return type(base.__name__ + "6", (base,), {"address_family": socket.AF_INET6})
    return base


def is_stream(kind):
    return kind in ("tcp", "tcp6", "unix_stream")


def server_address(kind, unix_dir, name="server.sock"):
    if kind.startswith("unix"):
        return os.path.join(str(unix_dir), name)
    if kind.endswith("6"):
        return (LOOPBACK6, 0)
    return (LOOPBACK, 0)


def echo_handler(ss, prefix=b"echo:"):
    """A BaseRequestHandler that answers ``prefix + data`` on streams and datagrams (to
    datagram clients that have an address) and records each request on
    ``server.records``."""

    class EchoHandler(ss.BaseRequestHandler):
        def handle(self):
            record = {
                "client_address": self.client_address,
                "request": self.request,
                "thread": threading.current_thread(),
                "pid": os.getpid(),
            }
            if isinstance(self.request, tuple):
                data, sock = self.request
                record["data"] = data
                server_records(self.server).append(record)
                if self.client_address:
                    sock.sendto(prefix + data, self.client_address)
            else:
                data = self.request.recv(65536)
                record["data"] = data
                record["gettimeout"] = self.request.gettimeout()
                record["os_blocking"] = os.get_blocking(self.request.fileno())
                record["inheritable"] = self.request.get_inheritable()
                record["family"] = self.request.family
                record["type"] = self.request.type
                record["proto"] = self.request.proto
                record["peername"] = self.request.getpeername()
                if self.request.family in (socket.AF_INET, socket.AF_INET6):
                    record["nodelay"] = self.request.getsockopt(
                        socket.IPPROTO_TCP, socket.TCP_NODELAY
                    )
                server_records(self.server).append(record)
                self.request.sendall(prefix + data)

    return EchoHandler


def server_records(server):
    """The list the handlers of ``server`` append to (created on first use)."""
    records = vars(server).get("records")
    if records is None:
        records = vars(server).setdefault("records", [])
    return records


def client_send(harness, server, kind, payload=b"ping", unix_dir=None, client_name="c.sock"):
    """Open a client for ``server`` and send ``payload``; returns ``(sock, expected_address)``
    where the address is what the server should report as ``client_address``."""
    if is_stream(kind):
        sock = harness.connect(server, payload)
        sock.shutdown(socket.SHUT_WR)
        expected = sock.getsockname()
        return sock, expected
    if kind == "unix_dgram":
        path = os.path.join(str(unix_dir), client_name)
        sock = harness.datagram_client(server, address=path)
    else:
        sock = harness.datagram_client(server)
    sock.sendto(payload, server.server_address)
    return sock, sock.getsockname()


def client_reply(sock, kind):
    if is_stream(kind):
        return recv_until_eof(sock)
    return sock.recv(65536)


# Hook recording ----------------------------------------------------------------------------

# The hooks (server's and handler's) one request goes through, in the stdlib's order.
SERVED_HOOKS = [
    "verify_request",
    "process_request",
    "finish_request",
    "setup",
    "handle",
    "finish",
    "shutdown_request",
    "close_request",
]
SERVER_HOOKS = (
    "verify_request",
    "process_request",
    "finish_request",
    "shutdown_request",
    "close_request",
    "service_actions",
    "handle_timeout",
    "handle_error",
)


def recording(server_cls):
    """A subclass of ``server_cls`` whose hooks append their names to ``self.log`` and then
    do what the stock hook does (``handle_error`` only records, to keep stderr quiet)."""

    def make(name):
        def hook(self, *args):
            self.log.append(name)
            if name == "handle_error":
                return None
            return getattr(super(Recording, self), name)(*args)

        hook.__name__ = name
        return hook

    namespace = {name: make(name) for name in SERVER_HOOKS}

    def __init__(self, *args, **kwargs):
        self.log = []
        server_cls.__init__(self, *args, **kwargs)

    namespace["__init__"] = __init__
    Recording = type("Recording" + server_cls.__name__, (server_cls,), namespace)
    return Recording


def recording_handler(ss, fail=None):
    """A BaseRequestHandler recording setup/handle/finish on ``server.log`` and echoing the
    request; ``fail`` (an exception instance) is raised from ``handle()`` after recording."""

    class RecordingHandler(ss.BaseRequestHandler):
        def setup(self):
            self.server.log.append("setup")

        def handle(self):
            self.server.log.append("handle")
            if isinstance(self.request, tuple):
                data, sock = self.request
                if fail is None and self.client_address:
                    sock.sendto(b"echo:" + data, self.client_address)
            else:
                data = self.request.recv(65536)
                if fail is None:
                    self.request.sendall(b"echo:" + data)
            if fail is not None:
                raise fail

        def finish(self):
            self.server.log.append("finish")

    return RecordingHandler


def collapse_service_actions(log):
    """``log`` without leading ``service_actions`` (idle wakeups before the first request
    depend on timing) and with runs of them collapsed to one."""
    result = []
    for name in log:
        if name == "service_actions" and (not result or result[-1] == "service_actions"):
            continue
        result.append(name)
    return result


# Subprocess helpers ------------------------------------------------------------------------


def read_line(proc, timeout):
    """One line from ``proc.stdout`` (binary), or ``b''`` if none arrives within ``timeout``."""
    deadline = time.monotonic() + timeout
    buffer = b""
    fd = proc.stdout.fileno()
    while not buffer.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            break
        chunk = os.read(fd, 1)
        if not chunk:
            break
        buffer += chunk
    return buffer


def python_child(harness, script, *args):
    """Run ``script`` (Python source) in a new interpreter with ``args`` on the command line;
    binary pipes for stdout and stderr."""
    return harness.popen(
        [sys.executable, "-c", script, *map(str, args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
