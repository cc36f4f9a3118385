"""``ThreadPoolMixIn`` keeps ``ThreadingMixIn``'s promises: ``daemon_threads`` and
``block_on_close`` decide what ``server_close()`` waits for, and Ctrl-C ends a process whose
handlers are blocked on connected clients when the request threads are daemons.

Each behaviour runs on the stdlib's ``ThreadingTCPServer`` (the oracle), ours, and
``ThreadPoolTCPServer``. The Ctrl-C scenarios run the server as a real child process that
exits normally (no ``os._exit``): the interpreter's own exit path is part of what is tested.
"""

import json
import signal
import socketserver
import subprocess
import sys
import threading
import time

import pytest
import socketserver_rs
from _behaviour_helpers import LOOPBACK, read_line, wait_for

pytestmark = pytest.mark.timeout(60)

# (module, class name): ThreadingTCPServer in both modules, and the pool.
KINDS = {
    "stdlib-threading": (socketserver, "ThreadingTCPServer"),
    "rs-threading": (socketserver_rs, "ThreadingTCPServer"),
    "rs-pool": (socketserver_rs, "ThreadPoolTCPServer"),
}


@pytest.fixture(params=list(KINDS))
def kind(request):
    return KINDS[request.param]


# Ctrl-C in a child process ------------------------------------------------------------------

CHILD = r"""
import importlib, json, signal, sys, threading

module = importlib.import_module(sys.argv[1])
base = getattr(module, sys.argv[2])
poll_interval = float(sys.argv[3])
# A shell without job control may start us with SIGINT ignored: we need Python's handler.
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.alarm(30)  # hang guard: SIGALRM's default action ends this process
handler_threads = []


def report(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Echo(module.StreamRequestHandler):
    def handle(self):
        handler_threads.append(threading.get_ident())
        for line in self.rfile:  # blocks in recv() while the client is silent
            self.wfile.write(line)


def control():
    # "worker" on stdin: aim SIGINT at the request thread, not at the main thread.
    for command in sys.stdin:
        if command.strip() == "worker":
            signal.pthread_kill(handler_threads[0], signal.SIGINT)


def process_request(self, request, client_address):
    # Said once the serving thread is back from starting the request's thread: a SIGINT
    # inside Thread.start() is another test's subject (test_shutdown_and_signals.py).
    base.process_request(self, request, client_address)
    report(event="dispatched")


attributes = {"daemon_threads": True}
if sys.argv[2] == "ThreadingTCPServer":  # the pool keeps its stock process_request
    attributes["process_request"] = process_request
Server = type("Server", (base,), attributes)
threading.Thread(target=control, daemon=True).start()
with Server(("127.0.0.1", 0), Echo) as server:
    report(event="ready", port=server.server_address[1])
    try:
        server.serve_forever(poll_interval)
    except KeyboardInterrupt:
        report(event="KeyboardInterrupt")
# Leaving the with-block ran server_close(); the interpreter now exits normally.
"""


@pytest.mark.parametrize("target", ["process", "worker"])
def test_ctrl_c_ends_a_daemon_threads_server_whose_handler_is_blocked_on_a_client(
    kind, harness, target
):
    module, class_name = kind
    # Ours wakes at once wherever the signal lands; the stdlib notices a signal delivered to
    # another thread when its poll_interval ends, so it gets a short one.
    poll_interval = 30.0 if module is socketserver_rs else 0.2
    proc = harness.popen(
        [sys.executable, "-c", CHILD, module.__name__, class_name, str(poll_interval)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    line = read_line(proc, 20.0)
    assert line, proc.stderr.read() if proc.poll() is not None else "child never got ready"
    port = json.loads(line)["port"]

    client = harness.socket()
    client.settimeout(5)
    client.connect((LOOPBACK, port))
    client.sendall(b"hi\n")
    assert client.recv(10) == b"hi\n"  # the handler now waits in recv() for the next line
    if class_name == "ThreadingTCPServer":
        assert json.loads(read_line(proc, 5.0))["event"] == "dispatched"
    else:
        time.sleep(0.1)  # the pool's serving thread is back in its wait

    sent = time.monotonic()
    if target == "process":
        proc.send_signal(signal.SIGINT)
    else:
        proc.stdin.write(b"worker\n")
        proc.stdin.flush()
    try:
        proc.wait(5.0)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the process did not exit: {proc.stderr.read()!r}")
    elapsed = time.monotonic() - sent
    assert json.loads(read_line(proc, 1.0))["event"] == "KeyboardInterrupt"
    assert proc.returncode == 0, proc.stderr.read()
    assert elapsed < 1.0, f"exited {elapsed:.2f} s after SIGINT"


# What server_close() waits for ---------------------------------------------------------------


def blocked_server(harness, kind, **class_attrs):
    """A serving server of ``kind`` with one client connected and its handler blocked
    reading from it; returns (server, client, the handler thread's daemon flag)."""
    module, class_name = kind
    seen = {}

    class Echo(module.StreamRequestHandler):
        def handle(self):
            seen["daemon"] = threading.current_thread().daemon
            for line in self.rfile:
                self.wfile.write(line)

    server = harness.server(getattr(module, class_name), (LOOPBACK, 0), Echo, **class_attrs)
    harness.serve(server)
    client = harness.connect(server, b"hi\n")
    client.settimeout(5)
    assert client.recv(10) == b"hi\n"
    return server, client, seen["daemon"]


def closing(harness, server):
    """Call ``server_close()`` on a thread; the event is set when it returns."""
    returned = threading.Event()

    def close():
        server.shutdown()
        server.server_close()
        returned.set()

    harness.thread(close)
    return returned


@pytest.mark.parametrize("daemon_threads", [False, True])
def test_request_threads_are_daemons_exactly_when_daemon_threads_is_set(
    kind, harness, daemon_threads
):
    _, client, daemon = blocked_server(harness, kind, daemon_threads=daemon_threads)
    assert daemon is daemon_threads
    client.close()


def test_server_close_waits_for_a_running_non_daemon_handler(kind, harness):
    server, client, _ = blocked_server(harness, kind)
    returned = closing(harness, server)
    assert not returned.wait(0.5), "server_close() returned while a handler was running"
    client.close()  # the handler's loop ends
    assert returned.wait(5)


def test_server_close_does_not_wait_for_a_daemon_handler(kind, harness):
    server, client, _ = blocked_server(harness, kind, daemon_threads=True)
    returned = closing(harness, server)
    assert returned.wait(5), "server_close() waited for a daemon request thread"
    client.close()


def test_server_close_does_not_wait_without_block_on_close(kind, harness):
    server, client, _ = blocked_server(harness, kind, block_on_close=False)
    returned = closing(harness, server)
    assert returned.wait(5), "server_close() waited although block_on_close is false"
    # The handler is still serving its client after server_close().
    client.sendall(b"still\n")
    assert client.recv(10) == b"still\n"
    client.close()


def test_block_on_close_changed_while_a_handler_runs(kind, harness):
    """A deliberate difference: ThreadingMixIn decides when a request thread starts whether
    server_close() will join it; a pool's workers outlive requests, so it reads
    block_on_close when server_close() runs."""
    server, client, _ = blocked_server(harness, kind)
    server.block_on_close = False
    returned = closing(harness, server)
    if kind[1] == "ThreadingTCPServer":
        assert not returned.wait(0.5)
        client.close()
        assert returned.wait(5)
    else:
        assert wait_for(returned.is_set, 5)
        client.close()


def test_daemon_threads_set_on_the_instance_before_serving_applies(kind, harness):
    module, class_name = kind
    seen = []

    class Record(module.BaseRequestHandler):
        def handle(self):
            seen.append(threading.current_thread().daemon)

    server = harness.server(getattr(module, class_name), (LOOPBACK, 0), Record)
    server.daemon_threads = True
    harness.serve(server)
    harness.connect(server, b"x").close()
    assert wait_for(lambda: seen, 5)
    assert seen == [True]
