"""Stopping a server: ``shutdown()`` (after, before and during ``serve_forever()``), and
signals (Ctrl-C) reaching a serving main thread, including when request threads are busy.

Signal scenarios run in a child interpreter (``python -c``) so SIGINT only hits the server.
"""

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time

import pytest
from _behaviour_helpers import (
    LOOPBACK,
    POLL,
    ServingThread,
    call_with_timeout,
    echo_handler,
    poke,
    python_child,
    read_line,
    recv_until_eof,
    server_records,
    wait_for,
)

# Bounded per test, well above what any test needs, so a hang fails fast.
pytestmark = pytest.mark.timeout(60)


def serving_server(ss, harness, cls=None, handler=None, poll_interval=POLL):
    server = harness.server(cls or ss.TCPServer, (LOOPBACK, 0), handler or echo_handler(ss))
    serving = harness.serve(server, poll_interval=poll_interval)
    assert harness.exchange(server, b"up") == b"echo:up"  # serving for sure
    return server, serving


# shutdown() from another thread -------------------------------------------------------------


def test_shutdown_returns_once_serve_forever_has_stopped(ss, harness):
    server, serving = serving_server(ss, harness)
    finished, _seconds, error = call_with_timeout(server.shutdown)
    assert finished and error is None
    assert serving.returned.wait(2.0)
    serving.thread.join(2.0)
    assert not serving.thread.is_alive()
    assert serving.error is None


def test_no_request_is_served_after_shutdown_returns(ss, harness):
    server, _serving = serving_server(ss, harness)
    finished, _, error = call_with_timeout(server.shutdown)
    assert finished and error is None
    served = len(server_records(server))
    client = harness.connect(server, b"late")
    time.sleep(0.2)
    assert len(server_records(server)) == served
    client.close()


def test_shutdown_before_serve_forever_starts_still_stops_it(ss, harness):
    """The request is sticky: a shutdown() issued first (from another thread, since the
    stdlib's blocks until a loop has run) makes the next serve_forever() return."""
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    shutdown_done = threading.Event()
    harness.thread(lambda: (server.shutdown(), shutdown_done.set()))
    assert wait_for(lambda: server._BaseServer__shutdown_request, timeout=2.0)
    assert not shutdown_done.is_set()  # waits for a loop to run and stop
    serving = ServingThread(server, POLL).start()
    assert serving.returned.wait(2.0), "serve_forever ignored the earlier shutdown()"
    assert shutdown_done.wait(2.0)
    assert serving.error is None


def test_serve_forever_can_run_again_after_shutdown(ss, harness):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    for round_ in range(3):
        serving = ServingThread(server, POLL).start()
        assert harness.exchange(server, b"%d" % round_) == b"echo:%d" % round_
        serving.stop()
        assert serving.error is None
    assert not server._BaseServer__shutdown_request


def test_shutdown_called_from_two_threads_returns_in_both(ss, harness):
    server, serving = serving_server(ss, harness)
    results = []
    threads = [
        harness.thread(lambda: results.append(call_with_timeout(server.shutdown))) for _ in range(2)
    ]
    for thread in threads:
        thread.join(5)
    assert [finished for finished, _, _ in results] == [True, True]
    assert serving.returned.wait(2.0)


def test_shutdown_after_serve_forever_raised_returns_at_once(ss, harness):
    class Server(ss.TCPServer):
        def service_actions(self):
            raise RuntimeError("service_actions failed")

    server = harness.server(Server, (LOOPBACK, 0), echo_handler(ss))
    serving = ServingThread(server, POLL).start()
    assert serving.returned.wait(2.0)
    assert isinstance(serving.error, RuntimeError)
    finished, _seconds, error = call_with_timeout(server.shutdown, 2.0)
    assert finished and error is None


def test_shutdown_of_a_threading_server_does_not_wait_for_busy_request_threads(ss, harness):
    release = threading.Event()
    started = threading.Event()

    class Handler(ss.BaseRequestHandler):
        def handle(self):
            started.set()
            release.wait(5)
            self.request.sendall(b"done")

    server = harness.server(ss.ThreadingTCPServer, (LOOPBACK, 0), Handler)
    harness.callback(release.set)
    serving = harness.serve(server, poll_interval=POLL)
    client = harness.connect(server, b"x")
    assert started.wait(5)
    finished, _, error = call_with_timeout(server.shutdown, 3.0)
    assert finished and error is None
    assert serving.returned.wait(2.0)
    release.set()
    assert recv_until_eof(client) == b"done"


def test_shutdown_waits_for_the_request_being_served(ss, harness):
    """serve_forever() on a plain server finishes the current request before it stops."""
    release = threading.Event()
    started = threading.Event()

    class Handler(ss.BaseRequestHandler):
        def handle(self):
            started.set()
            release.wait(5)
            self.request.sendall(b"finished")

    server = harness.server(ss.TCPServer, (LOOPBACK, 0), Handler)
    harness.callback(release.set)
    serving = harness.serve(server, poll_interval=POLL)
    client = harness.connect(server, b"x")
    assert started.wait(5)
    shutting = harness.thread(server.shutdown)
    time.sleep(0.1)
    assert shutting.is_alive()  # still serving the request
    release.set()
    shutting.join(5)
    assert not shutting.is_alive()
    assert serving.returned.is_set()
    assert recv_until_eof(client) == b"finished"


def test_shutdown_from_a_request_thread_of_a_threading_server_stops_serving(ss, harness):
    """The usual way to stop from inside: a ThreadingMixIn handler calls shutdown(), which
    waits on its own thread for the serving thread's loop to end."""

    class Handler(ss.BaseRequestHandler):
        def handle(self):
            self.request.recv(100)
            self.server.shutdown()
            self.request.sendall(b"stopped")

    # Daemon, unjoined request threads: a shutdown() that hangs must not hang teardown too.
    server = harness.server(
        ss.ThreadingTCPServer, (LOOPBACK, 0), Handler, daemon_threads=True, block_on_close=False
    )
    serving = harness.serve(server, poll_interval=POLL)
    assert harness.exchange(server, b"stop") == b"stopped"
    assert serving.returned.wait(2.0)
    assert serving.error is None


def test_setting_the_stdlib_shutdown_flag_attribute_stops_serve_forever(ss, harness):
    """Code written against the stdlib pokes ``_BaseServer__shutdown_request`` directly."""
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    assert server._BaseServer__shutdown_request is False
    server._BaseServer__shutdown_request = True
    serving = ServingThread(server, POLL).start()
    assert serving.returned.wait(2.0)
    assert serving.error is None
    assert server._BaseServer__shutdown_request is False  # reset when the loop ends


# Deliberate differences: socketserver_rs only -----------------------------------------------


def test_shutdown_from_a_handler_on_the_serving_thread_does_not_deadlock(rs, harness):
    """socketserver_rs only (documented difference): the stdlib's shutdown() called from a
    handler of a plain server waits for the loop it is running on, for ever. Ours asks the
    loop to stop after the current request."""

    class Handler(rs.BaseRequestHandler):
        def handle(self):
            self.request.recv(100)  # take the request, so closing cannot reset the client
            self.server.shutdown()
            self.request.sendall(b"stopping")

    server = harness.server(rs.TCPServer, (LOOPBACK, 0), Handler)
    serving = harness.serve(server, poll_interval=5.0)
    assert harness.exchange(server, b"x") == b"stopping"
    assert serving.returned.wait(2.0), "serve_forever did not stop after the handler's shutdown()"
    assert serving.error is None


def test_shutdown_returns_well_before_the_poll_interval(rs, harness):
    """socketserver_rs only (documented difference): shutdown() wakes the loop at once; the
    stdlib's takes up to poll_interval."""
    server, _serving = serving_server(rs, harness, poll_interval=5.0)
    finished, seconds, error = call_with_timeout(server.shutdown, 5.0)
    assert finished and error is None
    assert seconds < 1.0


def test_shutdown_returns_promptly_when_service_actions_is_overridden(rs, harness):
    """socketserver_rs only: with periodic service_actions the wait still ends at once."""

    class Server(rs.TCPServer):
        def service_actions(self):
            pass

    server, _serving = serving_server(rs, harness, cls=Server, poll_interval=5.0)
    finished, seconds, error = call_with_timeout(server.shutdown, 5.0)
    assert finished and error is None
    assert seconds < 1.0


def test_shutdown_stops_serve_forever_without_a_poll_interval(rs, harness):
    """socketserver_rs only: serve_forever(poll_interval=None) waits without a timeout;
    the stdlib's would then never notice shutdown() until a request came in."""
    server, _serving = serving_server(rs, harness, poll_interval=None)
    finished, seconds, error = call_with_timeout(server.shutdown, 5.0)
    assert finished and error is None
    assert seconds < 1.0


def test_shutdown_from_service_actions_on_the_serving_thread_does_not_deadlock(rs, harness):
    """socketserver_rs only (documented difference): as from a handler, a shutdown() on the
    serving thread asks the loop to stop instead of waiting for itself."""

    class Server(rs.TCPServer):
        def service_actions(self):
            self.shutdown()

    server = harness.server(Server, (LOOPBACK, 0), echo_handler(rs))
    serving = ServingThread(server, poll_interval=0.01).start()
    harness.callback(serving.stop)
    assert serving.returned.wait(2.0)
    assert serving.error is None


# Signals in this process --------------------------------------------------------------------


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers run only on the main thread",
)
def test_python_signal_handler_runs_while_serve_forever_waits(ss, harness):
    """A signal handler runs while the main thread waits in serve_forever() (not only when a
    request comes in), and the loop carries on serving afterwards."""
    ran = threading.Event()
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: ran.set())
    harness.callback(signal.signal, signal.SIGUSR1, previous)
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    replies = []

    def drive():
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGUSR1)
        if ran.wait(2.0):
            replies.append(harness.exchange(server, b"after"))
        server.shutdown()

    harness.thread(drive)
    server.serve_forever(poll_interval=30.0 if ss.__name__ == "socketserver_rs" else POLL)
    assert ran.is_set()
    assert replies == [b"echo:after"]


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers run only on the main thread",
)
def test_exception_raised_by_a_signal_handler_ends_serve_forever(ss, harness):
    class Stop(Exception):
        pass

    def on_signal(signum, frame):
        raise Stop

    previous = signal.signal(signal.SIGUSR1, on_signal)
    harness.callback(signal.signal, signal.SIGUSR1, previous)
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    returned = threading.Event()

    def drive():
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGUSR1)
        if not returned.wait(5.0):  # guard: never leave serve_forever running
            server.shutdown()

    harness.thread(drive)
    try:
        with pytest.raises(Stop):
            server.serve_forever(poll_interval=POLL)
    finally:
        returned.set()
    # the loop is over: shutdown() does not block
    finished, _, _ = call_with_timeout(server.shutdown, 2.0)
    assert finished


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers run only on the main thread",
)
def test_signal_during_handle_request_does_not_cut_its_timeout_short(ss, harness):
    """A signal whose handler returns normally wakes the wait early; handle_request() keeps
    waiting for the rest of its timeout and then calls handle_timeout() once."""
    ran = threading.Event()
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: ran.set())
    harness.callback(signal.signal, signal.SIGUSR1, previous)

    class Server(ss.TCPServer):
        timeouts = 0

        def handle_timeout(self):
            self.timeouts += 1

    server = harness.server(Server, (LOOPBACK, 0), echo_handler(ss), timeout=0.6)
    harness.thread(lambda: (time.sleep(0.1), os.kill(os.getpid(), signal.SIGUSR1)))
    started = time.monotonic()
    server.handle_request()
    elapsed = time.monotonic() - started
    assert ran.is_set()
    assert server.timeouts == 1
    assert 0.5 <= elapsed < 3.0


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers run only on the main thread",
)
def test_exception_raised_by_a_signal_handler_ends_handle_request(ss, harness):
    class Stop(Exception):
        pass

    def on_signal(signum, frame):
        raise Stop

    previous = signal.signal(signal.SIGUSR1, on_signal)
    harness.callback(signal.signal, signal.SIGUSR1, previous)

    class Server(ss.TCPServer):
        timeouts = 0

        def handle_timeout(self):
            self.timeouts += 1

    server = harness.server(Server, (LOOPBACK, 0), echo_handler(ss), timeout=3.0)
    harness.thread(lambda: (time.sleep(0.1), os.kill(os.getpid(), signal.SIGUSR1)))
    started = time.monotonic()
    with pytest.raises(Stop):
        server.handle_request()
    assert time.monotonic() - started < 2.0
    assert server.timeouts == 0


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(),
    reason="signal handlers run only on the main thread",
)
def test_serving_leaves_the_signal_wakeup_fd_as_it_found_it(ss, harness):
    wakeup_r, wakeup_w = socket.socketpair()
    harness.callback(wakeup_r.close)
    harness.callback(wakeup_w.close)
    wakeup_w.setblocking(False)
    previous = signal.set_wakeup_fd(wakeup_w.fileno())
    try:
        server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss), timeout=0.05)
        server.handle_request()
        harness.thread(lambda: (time.sleep(0.1), server.shutdown()))
        server.serve_forever(poll_interval=POLL)
    finally:
        current = signal.set_wakeup_fd(previous)
    assert current == wakeup_w.fileno()


def interrupting_thread_start(fired):
    """A trace function for the serving thread that raises KeyboardInterrupt once, where a
    signal handler's can land (and once did in CI): at the first instruction of
    ``Condition._acquire_restore`` while ``Thread.start()`` waits for the new thread. ``fired``
    records that it did."""
    restore = ("_acquire_restore", threading.__file__)
    start = ("start", threading.__file__)

    def where(frame):
        return (frame.f_code.co_name, frame.f_code.co_filename)

    def trace(frame, event, arg):
        if fired or event != "call" or where(frame) != restore:
            return None
        caller = frame.f_back
        while caller is not None and where(caller) != start:
            caller = caller.f_back
        if caller is None:
            return None
        fired.append(frame.f_code)
        raise KeyboardInterrupt  # propagates into the frame being called, as from a handler

    return trace


def serve_with_thread_start_interrupted(harness, server):
    """serve_forever() on a thread traced by ``interrupting_thread_start``; returns the
    thread, the list of interruptions fired and the list of what serve_forever() raised."""
    fired, raised = [], []

    def serve():
        sys.settrace(interrupting_thread_start(fired))
        try:
            server.serve_forever(POLL)
        except BaseException as error:
            raised.append(error)
        finally:
            sys.settrace(None)

    return harness.thread(serve), fired, raised


def send_a_request_that_gets_cut(server):
    """A request whose process_request() is interrupted: the loop shuts it down (as the
    stdlib's does on any exception from it), maybe with a reset before the client is done."""
    with socket.create_connection(server.server_address, timeout=5) as client:
        with contextlib.suppress(OSError):
            client.sendall(b"hi")
            client.shutdown(socket.SHUT_WR)
            recv_until_eof(client)


def test_ctrl_c_landing_inside_a_request_threads_start(ss, harness):
    """The stdlib loses this Ctrl-C: the interrupted wait leaves threading's Condition lock
    released, ``start()`` fails with "release unlocked lock", and the loop hands that
    RuntimeError to ``handle_error()`` and serves on. socketserver_rs raises the
    KeyboardInterrupt out of ``serve_forever()`` (a deliberate difference)."""
    errors = []

    class Server(ss.ThreadingTCPServer):
        daemon_threads = True

        def handle_error(self, request, client_address):
            errors.append(sys.exception())

    server = harness.server(Server, (LOOPBACK, 0), echo_handler(ss))
    serving, fired, raised = serve_with_thread_start_interrupted(harness, server)
    send_a_request_that_gets_cut(server)
    assert wait_for(lambda: fired), "Thread.start() no longer waits in _acquire_restore"
    if ss.__name__ == "socketserver_rs":
        serving.join(5.0)
        assert not serving.is_alive()
        assert len(raised) == 1 and type(raised[0]) is KeyboardInterrupt
        # The request thread may report the shut-down socket; the interruption is not reported.
        assert not [e for e in errors if isinstance(e.__context__, KeyboardInterrupt)], errors
    else:
        assert wait_for(lambda: errors)
        assert isinstance(errors[0], RuntimeError)
        assert isinstance(errors[0].__context__, KeyboardInterrupt)
        assert harness.exchange(server, b"again") == b"echo:again"  # still serving
        finished, _, error = call_with_timeout(server.shutdown)
        assert finished and error is None
        serving.join(5.0)
        assert raised == []


def test_ctrl_c_landing_inside_a_pool_workers_start(rs, harness):
    """The pool starts workers on the serving thread: a Ctrl-C inside that ``start()`` comes
    out of ``serve_forever()`` as well, and the pool's count of workers stays true (the
    launched worker either serves as one or, if the count was given back first, ends)."""

    class Server(rs.ThreadPoolTCPServer):
        daemon_threads = True
        max_workers = 4

    server = harness.server(Server, (LOOPBACK, 0), echo_handler(rs))
    serving, fired, raised = serve_with_thread_start_interrupted(harness, server)
    send_a_request_that_gets_cut(server)
    assert wait_for(lambda: fired), "Thread.start() no longer waits in _acquire_restore"
    serving.join(5.0)
    assert not serving.is_alive()
    assert len(raised) == 1 and type(raised[0]) is KeyboardInterrupt
    harness.serve(server)
    assert harness.exchange(server, b"again") == b"echo:again"
    workers = server._rs_workers

    def counted_right():
        return workers.pool.workers == sum(thread.is_alive() for thread in workers.threads)

    assert wait_for(counted_right), (workers.pool.workers, workers.threads)


# SIGINT in a child interpreter --------------------------------------------------------------

CHILD = r"""
import importlib, json, os, signal, sys, threading, time

module = importlib.import_module(sys.argv[1])
scenario = sys.argv[2]
poll_interval = float(sys.argv[3])
signal.alarm(30)  # hang guard: SIGALRM's default action ends this process
state = {}


def report(**fields):
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


class Busy(module.BaseRequestHandler):
    def handle(self):
        state["busy"] = True
        self.request.sendall(b"busy")
        if scenario == "thread_kill":
            # The signal lands on this request thread, not on the serving main thread; sent
            # once the main thread is out of Thread.start() (see dispatched() below).
            deadline = time.monotonic() + 5
            while not state.get("dispatched") and time.monotonic() < deadline:
                time.sleep(0.001)
            state["sent"] = time.monotonic()
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # busy in Python, bounded
            pass


if scenario in ("idle", "handle_request"):
    base, handler = module.TCPServer, module.BaseRequestHandler
elif scenario == "shutdown_wait":
    base, handler = module.TCPServer, Busy
else:
    base, handler = module.ThreadingTCPServer, Busy


def dispatched(self, request, client_address):
    # Say when the serving thread is back from Thread.start(). A SIGINT that lands inside
    # start()'s wait is lost by the stdlib ("release unlocked lock" goes to handle_error and
    # serving goes on; test_ctrl_c_landing_inside_a_request_threads_start pins it), so the
    # tests that expect KeyboardInterrupt from both modules signal only after this.
    base.process_request(self, request, client_address)
    state["dispatched"] = state.get("dispatched", 0) + 1
    report(event="dispatched")


attributes = {"daemon_threads": True, "block_on_close": False}
if base is module.ThreadingTCPServer:
    attributes["process_request"] = dispatched
Server = type("Server", (base,), attributes)

server = None
try:
    with Server(("127.0.0.1", 0), handler) as server:
        report(event="ready", port=server.server_address[1])
        if scenario == "handle_request":
            server.handle_request()
        elif scenario == "shutdown_wait":
            serving = threading.Thread(target=server.serve_forever, args=(poll_interval,))
            serving.daemon = True
            serving.start()
            while not state.get("busy"):
                time.sleep(0.01)
            report(event="shutting down")
            server.shutdown()
        else:
            server.serve_forever(poll_interval)
    report(event="returned")
except KeyboardInterrupt:
    report(
        event="KeyboardInterrupt",
        at=time.monotonic(),
        sent=state.get("sent"),
        fileno=server.socket.fileno() if server is not None else None,
    )
os._exit(0)  # daemon request threads may still be spinning
"""


def start_child(harness, ss, scenario, poll_interval):
    proc = python_child(harness, CHILD, ss.__name__, scenario, poll_interval)
    line = read_line(proc, 20.0)
    assert line, proc.stderr.read() if proc.poll() is not None else "child never got ready"
    ready = json.loads(line)
    assert ready["event"] == "ready"
    return proc, ready["port"]


def await_interrupt(proc, within):
    line = read_line(proc, within + 5.0)
    if not line:
        proc.kill()
        pytest.fail(f"no KeyboardInterrupt within {within + 5.0} s: {proc.stderr.read()!r}")
    outcome = json.loads(line)
    assert outcome["event"] == "KeyboardInterrupt", outcome
    proc.wait(5)
    return outcome


def bound(ss, poll_interval):
    """How long KeyboardInterrupt may take: under 1 s for socketserver_rs; for the stdlib
    just "it exits", which may take up to poll_interval."""
    return 1.0 if ss.__name__ == "socketserver_rs" else poll_interval + 5.0


def busy_client(server_port):
    client = socket.create_connection((LOOPBACK, server_port), timeout=5)
    assert client.recv(4) == b"busy"
    return client


def threaded_busy_client(proc, server_port):
    """A client whose request thread is busy, once the serving thread is back from
    starting that thread (the child's dispatched())."""
    client = busy_client(server_port)
    assert json.loads(read_line(proc, 10.0))["event"] == "dispatched"
    return client


@pytest.mark.parametrize("scenario", ["idle", "handle_request"])
def test_sigint_raises_keyboard_interrupt_out_of_a_waiting_server_and_closes_it(
    ss, harness, scenario
):
    poll_interval = 30.0
    proc, _ = start_child(harness, ss, scenario, poll_interval)
    time.sleep(0.2)  # let it enter the wait
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    outcome = await_interrupt(proc, bound(ss, poll_interval))
    assert outcome["at"] - sent < bound(ss, poll_interval)
    assert outcome["fileno"] == -1  # the with-block closed the server socket


def test_sigint_while_request_threads_are_busy_interrupts_serve_forever(ss, harness):
    poll_interval = 30.0 if ss.__name__ == "socketserver_rs" else 0.5
    proc, port = start_child(harness, ss, "busy", poll_interval)
    clients = [threaded_busy_client(proc, port) for _ in range(2)]
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    outcome = await_interrupt(proc, bound(ss, poll_interval))
    assert outcome["at"] - sent < bound(ss, poll_interval)
    for client in clients:
        client.close()


def test_sigint_landing_on_a_busy_request_thread_still_interrupts_serve_forever(ss, harness):
    """The kernel may deliver SIGINT to any thread; here a request thread gets it
    (pthread_kill) while it spins, and the main thread waits in serve_forever()."""
    poll_interval = 30.0 if ss.__name__ == "socketserver_rs" else 0.5
    proc, port = start_child(harness, ss, "thread_kill", poll_interval)
    client = threaded_busy_client(proc, port)
    outcome = await_interrupt(proc, bound(ss, poll_interval))
    assert outcome["sent"] is not None
    assert outcome["at"] - outcome["sent"] < bound(ss, poll_interval)
    client.close()


def test_sigint_interrupts_a_shutdown_waiting_for_a_busy_handler(ss, harness):
    poll_interval = 30.0 if ss.__name__ == "socketserver_rs" else 0.5
    proc, port = start_child(harness, ss, "shutdown_wait", poll_interval)
    client = busy_client(port)
    line = json.loads(read_line(proc, 10.0))
    assert line["event"] == "shutting down"
    time.sleep(0.2)  # let shutdown() start waiting
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    outcome = await_interrupt(proc, bound(ss, poll_interval))
    assert outcome["at"] - sent < bound(ss, poll_interval)
    client.close()


def test_shutdown_stops_serve_forever_after_a_concurrent_handle_request(ss, harness):
    """handle_request() called on another thread while serve_forever() runs (both wait on
    the same socket) must not stop shutdown() from reaching the serving loop."""
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    serving = harness.serve(server, poll_interval=POLL)
    assert harness.exchange(server, b"x") == b"echo:x"
    server.timeout = 0.1
    handled = harness.thread(server.handle_request)
    handled.join(5)
    assert not handled.is_alive()
    finished, _, error = call_with_timeout(server.shutdown)
    if not finished:
        poke(server)  # wake the loop so that no thread is left behind
        assert serving.returned.wait(5.0)
    assert finished, "shutdown() did not return"
    assert error is None
    assert serving.returned.wait(2.0)
