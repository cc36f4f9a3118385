"""A process that ends while daemon threads are still serving must exit cleanly.

When the main thread finishes, CPython finalizes the interpreter without waiting for daemon
threads. A daemon thread that needs the GIL at that moment (coming back from a wait in Rust, or
in Python code the engine called) is ended by CPython before 3.14 with ``pthread_exit()``,
whose unwinding ran through the Rust frames: the zig-linked manylinux wheels crashed at exit
every time. rust/finalize.rs explains the fix: such a thread now parks.

Each script below leaves daemon threads busy in one kind of wait (the engine's poll, the pool's
queue and the engine's direct loop, the reactor's poll, the native ``wfile`` waiting for room)
or in Python code the engine called (a handler, a hook, starting a pool worker), and lets the
main thread end. It must exit with status 0 and print nothing, every one of
``RUNS`` times. Where the stdlib has the same classes, it runs on both modules: the stdlib is
the oracle for "a daemon thread does not disturb exit". CI runs this file on every interpreter
and every wheel it installs. ``SOCKETSERVER_RS_EXIT_RUNS`` changes the number of runs.
"""

import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
from _child_process import child_env

RUNS = int(os.environ.get("SOCKETSERVER_RS_EXIT_RUNS", "20"))
AT_ONCE = 4  # children run in parallel, a few at a time
EXIT_LIMIT = 30.0  # seconds; a hang at exit fails (a loaded machine starts Python slowly)

# The script: a serving loop waking up every millisecond, in a daemon thread.
ENGINE = """
class H(ss.BaseRequestHandler):
    def handle(self): pass
srv = ss.TCPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.001}, daemon=True).start()
time.sleep(0.05)
"""

# The handler of a non-threading server runs on the serving daemon thread, called from the
# engine; here it is sleeping (GIL released) when the main thread ends.
HANDLER = """
entered = threading.Event()
class H(ss.BaseRequestHandler):
    def handle(self):
        entered.set()
        while True:
            time.sleep(0.0005)
srv = ss.TCPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.001}, daemon=True).start()
client = socket.create_connection(srv.server_address)
entered.wait(10)
time.sleep(0.01)
"""

# Clients that keep connecting, each in a daemon thread: every wait keeps coming back.
CLIENTS = """
def client(address, payload=b"x\\n"):
    while True:
        try:
            with socket.create_connection(address, timeout=5) as sock:
                sock.sendall(payload)
                sock.recv(64)
        except OSError:
            pass
def start_clients(address, count=3):
    for _ in range(count):
        threading.Thread(target=client, args=(address,), daemon=True).start()
"""

# A pool server with daemon workers: the engine's direct loop queues raw connections and the
# workers keep coming back from the Rust queue's wait. (Workers start in the first
# milliseconds only: on 3.12+, a worker started once shutdown has begun raises "can't create
# new thread at interpreter shutdown", as ThreadingMixIn's request threads do, and the
# traceback printed by that daemon thread would be cut off by the exit.)
POOL = (
    CLIENTS
    + """
class H(ss.StreamRequestHandler):
    def handle(self): self.wfile.write(self.rfile.readline())
class S(ss.ThreadPoolTCPServer):
    daemon_threads = True
    max_workers = 4
srv = S(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.001}, daemon=True).start()
start_clients(srv.server_address)
time.sleep(0.1)
"""
)

# A reactor server: one daemon thread in the reactor's poll, woken by every client line, and
# in the handler (Python called from the reactor, releasing the GIL in sleep) for each.
REACTOR = (
    CLIENTS
    + """
class H(ss.MessageHandler):
    framing = "line"
    def handle_message(self, line):
        time.sleep(0.0005)
        return line
srv = ss.ReactorTCPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, daemon=True).start()
start_clients(srv.server_address)
time.sleep(0.1)
"""
)

# A handler writing through wfile to a client that reads slowly: the writer keeps waiting for
# room in the socket buffer (natively, in socketserver_rs) and coming back.
WFILE = """
class H(ss.StreamRequestHandler):
    def handle(self):
        chunk = b"x" * 65536
        while True:
            self.wfile.write(chunk)
class S(ss.ThreadingTCPServer):
    daemon_threads = True
srv = S(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.001}, daemon=True).start()
def slow_reader():
    with socket.create_connection(srv.server_address) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        while sock.recv(4096):
            time.sleep(0.001)
threading.Thread(target=slow_reader, daemon=True).start()
time.sleep(0.1)
"""

# An atexit callback that runs after socketserver_rs's own exit hook (registered before the
# import) and stops a server whose serving thread is a daemon: shutdown() must not wait for a
# thread that may already be parked. It closes the server too, as a tidy program does: the run
# must print nothing, and in development mode an unclosed listener is a ResourceWarning.
SHUTDOWN_AT_EXIT = """
srv = None
atexit.register(lambda: (srv.shutdown(), srv.server_close()))
{import_module}
class H(ss.BaseRequestHandler):
    def handle(self): pass
srv = ss.TCPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, kwargs={{"poll_interval": 0.001}}, daemon=True).start()
time.sleep(0.05)
"""

# Non-daemon pool workers still drain their queue at exit (the pool closes before threads are
# joined); they come back from the queue wait while the interpreter waits for them and must
# not be parked. What the handler did after the main thread ended proves it ran to the end.
NON_DAEMON_POOL = """
started, done = threading.Event(), []
class H(ss.BaseRequestHandler):
    def handle(self):
        started.set()
        time.sleep(0.2)
        done.append(1)
srv = ss.ThreadPoolTCPServer(("127.0.0.1", 0), H)
threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.001}, daemon=True).start()
socket.create_connection(srv.server_address).close()
started.wait(10)
atexit.register(lambda: print("served" if done else "not served"))
"""

STDLIB_TOO = ["socketserver", "socketserver_rs"]


def script(body, module):
    import_module = f"import {module} as ss"
    prelude = "import atexit, socket, sys, threading, time\n"
    if "{import_module}" in body:
        return prelude + textwrap.dedent(body).format(import_module=import_module)
    return prelude + import_module + "\n" + textwrap.dedent(body)


def run_once(source):
    try:
        proc = subprocess.run(
            [sys.executable, "-c", source],
            capture_output=True,
            text=True,
            timeout=EXIT_LIMIT,
            env=child_env(),
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return f"still running after {EXIT_LIMIT} s"
    return proc.returncode, proc.stdout, proc.stderr


def run_many(source, expected_stdout=""):
    """Run ``source`` RUNS times; a list of the runs that did not exit cleanly."""
    with ThreadPoolExecutor(AT_ONCE) as pool:
        results = list(pool.map(run_once, [source] * RUNS))
    return [r for r in results if r != (0, expected_stdout, "")]


@pytest.mark.parametrize(
    ("body", "module"),
    [
        pytest.param(ENGINE, "socketserver", id="engine-stdlib"),
        pytest.param(ENGINE, "socketserver_rs", id="engine"),
        pytest.param(HANDLER, "socketserver", id="handler-stdlib"),
        pytest.param(HANDLER, "socketserver_rs", id="handler"),
        pytest.param(POOL, "socketserver_rs", id="pool"),
        pytest.param(REACTOR, "socketserver_rs", id="reactor"),
        pytest.param(WFILE, "socketserver", id="wfile-stdlib"),
        pytest.param(WFILE, "socketserver_rs", id="wfile"),
    ],
)
def test_exit_while_daemon_threads_serve_is_clean_every_time(body, module):
    failures = run_many(script(body, module))
    assert not failures, f"{len(failures)} of {RUNS} runs failed; first: {failures[0]}"


@pytest.mark.parametrize("module", STDLIB_TOO)
def test_shutdown_from_an_atexit_callback_after_the_exit_hook_returns(module):
    failures = run_many(script(SHUTDOWN_AT_EXIT, module))
    assert not failures, f"{len(failures)} of {RUNS} runs failed; first: {failures[0]}"


def test_non_daemon_pool_workers_still_finish_their_work_at_exit():
    failures = run_many(script(NON_DAEMON_POOL, "socketserver_rs"), expected_stdout="served\n")
    assert not failures, f"{len(failures)} of {RUNS} runs failed; first: {failures[0]}"
