"""Resource exhaustion: running out of file descriptors, and leaks over many requests.

**EMFILE.** Each scenario runs in a child interpreter with a low ``RLIMIT_NOFILE``. The child
serves on a thread, fills every free descriptor, and the test (another process, so its
clients cost the child nothing) connects clients that now wait in the listen backlog. For
about a second the child measures the CPU time of the serving thread (its per-thread CPU
clock, ``pthread_getcpuclockid``, which needs no descriptor to read) and of the whole
process; then it frees the descriptors and times how long the server takes, on its own, to
serve every waiting client. ``pytest -s`` prints the figures.

socketserver_rs backs off (5 ms doubling to 100 ms) while ``accept()`` fails for lack of
descriptors, so the serving thread must stay near idle and recovery takes at most about
100 ms; the stdlib's loop retries at once, so it spins a core, which is measured the same
way for comparison.

**Leaks.** Many requests, half of them raising in the handler, on every family in this
process: afterwards no descriptor or thread is left that was not there before, and
``ForkingTCPServer``/``ForkingUDPServer`` children are all reaped.
"""

import gc
import json
import os
import random
import socket
import socketserver
import subprocess
import sys
import threading
import time

import pytest
import socketserver_rs
from _behaviour_helpers import (
    CLIENT_TIMEOUT,
    LOOPBACK,
    open_fds,
    read_line,
    recv_until_eof,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

MODULES = {"stdlib": socketserver, "rs": socketserver_rs}

# Descriptor limit in the child: well above what an idle interpreter and a server hold
# (about 15), so the fill is small and quick.
NOFILE_LIMIT = 64
# Clients left waiting in the backlog while the child has no descriptor to spare.
WAITING_CLIENTS = 4
# How long the child measures CPU while exhausted.
MEASURE_SECONDS = 1.0
# socketserver_rs while exhausted: CPU seconds per wall second, serving thread and process.
MAX_CPU_SHARE = 0.2
# From freeing descriptors to every waiting client served.
MAX_RECOVERY_SECONDS = 2.0

EMFILE_CHILD = r"""
import errno, importlib, json, os, resource, socket, sys, threading, time

import signal

signal.alarm(30)  # hang guard: SIGALRM's default action ends this process
module = importlib.import_module(sys.argv[1])
family, limit, waiting = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
measure = float(sys.argv[5])
lock = threading.Lock()
served = []  # (monotonic time, line) per request
all_served = threading.Event()


def note(line):
    with lock:
        served.append((time.monotonic(), line))
        if len(served) == 1 + waiting:  # the warm-up request, then the waiting clients
            all_served.set()


def report(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


if family.startswith("Reactor"):

    class Handler(module.MessageHandler):
        framing = "line"

        def handle_message(self, message):
            note(message)
            return b"echo:" + message

else:

    class Handler(module.StreamRequestHandler):
        def handle(self):
            line = self.rfile.readline()
            note(line)
            self.wfile.write(b"echo:" + line)


name, _, variant = family.partition("+")
attributes = {"handle_error": lambda self, request, address: None}
if variant == "get_request":
    # An overridden get_request() takes the Python path (no accept in Rust).
    base_get_request = getattr(module, name).get_request
    attributes["get_request"] = lambda self: base_get_request(self)
Server = type(name, (getattr(module, name),), attributes)
server = Server(("127.0.0.1", 0), Handler)
serving = threading.Thread(target=server.serve_forever, args=(0.05,), name="serving")
serving.start()


def open_fd_count():
    return len(os.listdir("/proc/self/fd"))


# Warm up before the limit bites: whatever a server creates on first use exists by now.
time.sleep(0.1)  # serve_forever() has set itself up
idle_fds = open_fd_count()
with socket.create_connection(server.server_address, timeout=5) as warm:
    warm.sendall(b"warm-up\n")
    assert warm.recv(100) == b"echo:warm-up\n"
# The server closes its end of the warm-up connection after replying: wait for that, or
# the descriptor it frees after the fill would let clients in while "exhausted".
deadline = time.monotonic() + 2
while open_fd_count() > idle_fds and time.monotonic() < deadline:
    time.sleep(0.005)

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, soft), hard))
filler = []
for _ in range(4096):
    try:
        filler.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as error:
        assert error.errno == errno.EMFILE, error
        break
report(event="exhausted", port=server.server_address[1], filled=len(filler))

sys.stdin.buffer.readline()  # the parent's clients are connected and waiting
clock = time.pthread_getcpuclockid(serving.ident)
wall0, thread0, process0 = time.monotonic(), time.clock_gettime(clock), time.process_time()
time.sleep(measure)
wall1, thread1, process1 = time.monotonic(), time.clock_gettime(clock), time.process_time()
served_while_exhausted = len(served) - 1

freed = time.monotonic()
for fd in filler:
    os.close(fd)
recovered = all_served.wait(10)
recovery = served[-1][0] - freed if recovered else None
server.shutdown()
serving.join(10)
server.server_close()
wall = wall1 - wall0
report(
    event="done",
    thread_cpu_share=(thread1 - thread0) / wall,
    process_cpu_share=(process1 - process0) / wall,
    served_while_exhausted=served_while_exhausted,
    recovery_seconds=recovery,
    served=[line.decode() for _, line in served[1:]],
)
"""


def start_emfile_child(harness, impl, family, measure):
    """Start the child; returns it and its port once it has filled its descriptors."""
    proc = harness.popen(
        [
            sys.executable,
            "-c",
            EMFILE_CHILD,
            MODULES[impl].__name__,
            family,
            str(NOFILE_LIMIT),
            str(WAITING_CLIENTS),
            str(measure),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    line = read_line(proc, 20.0)
    if not line:
        proc.kill()
        pytest.fail(f"child did not get exhausted: {proc.stderr.read().decode()}")
    ready = json.loads(line)
    assert ready["event"] == "exhausted", ready
    assert ready["filled"] > 0, ready
    return proc, ready["port"]


def emfile_scenario(harness, impl, family):
    """Exhaust, connect the waiting clients, let the child measure, free, recover; returns
    the child's figures and each client's reply."""
    # Free the descriptors at a random point of the back-off cycle, so the recovery times
    # printed sample the whole range rather than one phase of it.
    measure = MEASURE_SECONDS + random.uniform(0.0, 0.1)
    proc, port = start_emfile_child(harness, impl, family, measure)
    clients = []
    for n in range(WAITING_CLIENTS):
        sock = harness.socket()
        sock.connect((LOOPBACK, port))  # completes in the kernel: the backlog takes it
        sock.sendall(b"waiting %d\n" % n)
        clients.append(sock)
    time.sleep(0.05)  # let the server try (and fail) to accept them
    proc.stdin.write(b"go\n")
    proc.stdin.flush()

    line = read_line(proc, measure + 15.0)
    if not line:
        proc.kill()
        pytest.fail(f"child gave no result: {proc.stderr.read().decode()}")
    result = json.loads(line)
    assert result["event"] == "done", result
    assert proc.wait(10) == 0, proc.stderr.read().decode()
    replies = [recv_until_eof_or_reply(sock) for sock in clients]
    print(
        f"\n[EMFILE] {impl} {family}: {measure:.2f} s exhausted, serving thread "
        f"{result['thread_cpu_share']:.3f} CPU s/s, process {result['process_cpu_share']:.3f} "
        f"CPU s/s; recovery "
        + (
            f"{result['recovery_seconds'] * 1000:.1f} ms"
            if result["recovery_seconds"] is not None
            else "never (10 s)"
        )
    )
    return result, replies


def recv_until_eof_or_reply(sock):
    sock.settimeout(CLIENT_TIMEOUT)
    try:
        return recv_until_eof(sock)
    except TimeoutError:
        return b"<no reply>"


def expected_replies():
    return [b"echo:waiting %d\n" % n for n in range(WAITING_CLIENTS)]


@pytest.mark.parametrize(
    "family",
    [
        "TCPServer",
        "TCPServer+get_request",
        "ThreadingTCPServer",
        "ThreadPoolTCPServer",
        "ReactorTCPServer",
    ],
)
def test_exhausted_descriptors_do_not_spin_and_the_server_recovers_by_itself(family, harness):
    """socketserver_rs: while every descriptor is taken and clients wait, the serving thread
    (and the process) stays near idle, nobody is served; once descriptors are free again the
    server serves every waiting client by itself, within a bounded time.
    ``TCPServer+get_request`` overrides ``get_request()``, so accepting happens in Python and
    the back-off is driven by the errno that ``_handle_request_noblock`` passes on."""
    result, replies = emfile_scenario(harness, "rs", family)
    assert result["served_while_exhausted"] == 0, result
    assert result["thread_cpu_share"] < MAX_CPU_SHARE, result
    assert result["process_cpu_share"] < MAX_CPU_SHARE, result
    assert result["recovery_seconds"] is not None, "waiting clients never served"
    assert result["recovery_seconds"] < MAX_RECOVERY_SECONDS, result
    assert sorted(replies) == expected_replies()


@pytest.mark.parametrize("family", ["TCPServer", "ThreadingTCPServer"])
def test_stdlib_spins_while_descriptors_are_exhausted(family, harness):
    """The comparison, measured the same way: the stdlib's serving loop retries the failing
    accept() at once, burning a core for as long as descriptors stay exhausted (it does
    serve the waiting clients as soon as they are free)."""
    result, replies = emfile_scenario(harness, "stdlib", family)
    assert result["thread_cpu_share"] > MAX_CPU_SHARE, result
    assert result["recovery_seconds"] is not None
    assert sorted(replies) == expected_replies()


# Leaks over many requests with handler exceptions ---------------------------------------------

REQUESTS = 200
FORKING_REQUESTS = 60


def leak_families():
    out = []
    for name in (
        "TCPServer",
        "ThreadingTCPServer",
        "ForkingTCPServer",
        "UDPServer",
        "ThreadingUDPServer",
        "ForkingUDPServer",
    ):
        out += [pytest.param(impl, name, id=f"{impl}-{name}") for impl in MODULES]
    for name in (
        "ThreadPoolTCPServer",
        "ThreadPoolUDPServer",
        "ReactorTCPServer",
        "ReactorUDPServer",
    ):
        out.append(pytest.param("rs", name, id=f"rs-{name}"))
    return out


def leak_server(impl, name, errors):
    """A server of ``name`` whose handler replies ``ok:<pid>`` to ``ok`` and, to ``fail``,
    replies ``raising:<pid>`` and then raises RuntimeError; ``errors`` counts the
    ``handle_error`` calls (in this process; forked children count their own)."""
    module = MODULES[impl]
    base = getattr(module, name)
    datagram = base.socket_type == socket.SOCK_DGRAM

    def answer(data):
        word = b"raising" if data.strip() == b"fail" else b"ok"
        return word + b":%d\n" % os.getpid()

    def check(data):
        if data.strip() == b"fail":
            raise RuntimeError("the handler failed, on purpose")

    if name.startswith("Reactor"):

        class Handler(module.MessageHandler):
            framing = "raw" if datagram else "line"

            def handle_message(self, message):
                self.send(answer(message))
                check(message)

    elif datagram:

        class Handler(module.BaseRequestHandler):
            def handle(self):
                data, sock = self.request
                sock.sendto(answer(data), self.client_address)
                check(data)

    else:

        class Handler(module.StreamRequestHandler):
            def handle(self):
                data = self.rfile.readline()
                self.wfile.write(answer(data))
                check(data)

    def handle_error(self, request, client_address):
        errors.append(sys.exc_info()[0])

    cls = type(name, (base,), {"handle_error": handle_error})
    return cls((LOOPBACK, 0), Handler)


def request(server, payload):
    """One request from a fresh client, closed before returning: the reply."""
    if server.socket_type == socket.SOCK_DGRAM:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(CLIENT_TIMEOUT)
            sock.sendto(payload, server.server_address)
            return sock.recv(100)
    with socket.create_connection(server.server_address, timeout=CLIENT_TIMEOUT) as sock:
        sock.sendall(payload)
        with sock.makefile("rb") as replies:  # the reply line; then we close
            return replies.readline()


def child_of_ours(pid):
    """Whether ``pid`` is still a process (zombie or not) whose parent is this process."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
    except FileNotFoundError:
        return False
    return int(fields[1]) == os.getpid()


@pytest.mark.parametrize(("impl", "name"), leak_families())
def test_many_requests_with_handler_exceptions_leak_no_descriptor_thread_or_child(impl, name):
    """Every other request raises in the handler. After ``server_close()`` the process has
    no descriptor or thread that it did not have before the server existed, every failure
    went to ``handle_error``, and every forked child has been reaped."""
    gc.collect()
    fds_before = open_fds()
    threads_before = set(threading.enumerate())
    errors = []
    forking = name.startswith("Forking")
    count = FORKING_REQUESTS if forking else REQUESTS

    server = leak_server(impl, name, errors)
    serving = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    serving.start()
    replies = []
    try:
        for n in range(count):
            payload = b"fail\n" if n % 2 else b"ok\n"
            replies.append(request(server, payload))
    finally:
        server.shutdown()
        serving.join(10)
        server.server_close()
    assert not serving.is_alive()

    words = [reply.split(b":")[0] for reply in replies]
    assert words == [b"raising" if n % 2 else b"ok" for n in range(count)]
    if not forking:  # a forked child's handle_error runs in the child
        assert wait_for(lambda: len(errors) == count // 2, timeout=2.0), len(errors)
        assert set(errors) == {RuntimeError}
    else:
        pids = {int(reply.split(b":")[1]) for reply in replies}
        assert os.getpid() not in pids and len(pids) == count
        assert server.active_children is None or len(server.active_children) == 0
        assert [pid for pid in pids if child_of_ours(pid)] == []

    # Compared as "nothing new": a descriptor or thread left over from an earlier test may
    # go away meanwhile, which is not a leak of ours.
    del server
    assert wait_for(lambda: (gc.collect(), open_fds() <= fds_before)[1], timeout=2.0), (
        f"descriptors opened and not closed: {sorted(open_fds() - fds_before)}"
    )
    assert wait_for(lambda: set(threading.enumerate()) <= threads_before, timeout=2.0), (
        f"threads left: {set(threading.enumerate()) - threads_before}"
    )
