"""Errors: handler exceptions go to handle_error and serving goes on; SystemExit and
KeyboardInterrupt propagate; bad addresses raise what the stdlib raises, leaking nothing;
serving a closed server raises ValueError."""

import errno
import gc
import os
import socket
import sys

import pytest
from _behaviour_helpers import (
    HAS_UNIX,
    LOOPBACK,
    POLL,
    ServingThread,
    echo_handler,
    open_fds,
    recv_until_eof,
    server_records,
    wait_for,
)

# Bounded per test, well above what any test needs, so a hang fails fast.
pytestmark = pytest.mark.timeout(60)


def failing_handler(ss, exception, fail_on=b"fail"):
    """Echoes, except that a request whose data is ``fail_on`` raises ``exception``."""

    class Handler(ss.BaseRequestHandler):
        def handle(self):
            if isinstance(self.request, tuple):
                data, sock = self.request
            else:
                data = self.request.recv(100)
            self.server.handled.append(data)
            if data == fail_on:
                raise exception
            if isinstance(self.request, tuple):
                sock.sendto(b"echo:" + data, self.client_address)
            else:
                self.request.sendall(b"echo:" + data)

    return Handler


def error_recording(cls):
    class Server(cls):
        def __init__(self, *args, **kwargs):
            self.handled = []
            self.errors = []
            self.shut_down = []
            super().__init__(*args, **kwargs)

        def handle_error(self, request, client_address):
            self.errors.append((sys.exc_info()[0], client_address, request))

        def shutdown_request(self, request):
            self.shut_down.append(request)
            super().shutdown_request(request)

    return Server


def send(harness, server, payload):
    client = harness.connect(server, payload)
    client.shutdown(socket.SHUT_WR)
    return client


# Handler exceptions -------------------------------------------------------------------------


def test_handler_exception_calls_handle_error_and_the_server_keeps_serving(ss, harness):
    server = harness.server(
        error_recording(ss.TCPServer), (LOOPBACK, 0), failing_handler(ss, ValueError("x"))
    )
    server.timeout = 5.0
    failing = send(harness, server, b"fail")
    server.handle_request()
    ((exc_type, address, request),) = server.errors
    assert exc_type is ValueError
    assert address == failing.getsockname()
    assert request in server.shut_down
    assert recv_until_eof(failing) == b""
    ok = send(harness, server, b"ok")
    server.handle_request()
    assert recv_until_eof(ok) == b"echo:ok"


def test_handler_exceptions_under_serve_forever_do_not_stop_it(ss, harness):
    server = harness.server(
        error_recording(ss.TCPServer), (LOOPBACK, 0), failing_handler(ss, OSError("x"))
    )
    serving = harness.serve(server, poll_interval=POLL)
    for _ in range(3):
        assert harness.exchange(server, b"fail") == b""
        assert harness.exchange(server, b"ok") == b"echo:ok"
    assert [exc_type for exc_type, _, _ in server.errors] == [OSError] * 3
    assert serving.thread.is_alive()


def test_udp_handler_exception_calls_handle_error_and_the_server_keeps_serving(ss, harness):
    server = harness.server(
        error_recording(ss.UDPServer), (LOOPBACK, 0), failing_handler(ss, KeyError("x"))
    )
    server.timeout = 5.0
    client = harness.datagram_client(server)
    client.sendto(b"fail", server.server_address)
    server.handle_request()
    client.sendto(b"ok", server.server_address)
    server.handle_request()
    assert client.recv(100) == b"echo:ok"
    ((exc_type, address, (data, sock)),) = server.errors
    assert exc_type is KeyError
    assert address == client.getsockname()
    assert (data, sock) == (b"fail", server.socket)


def test_default_handle_error_prints_the_traceback_and_client_address(ss, harness, capsys):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), failing_handler(ss, ValueError("boom")))
    server.handled = []
    server.timeout = 5.0
    client = send(harness, server, b"fail")
    server.handle_request()
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert lines[0] == "-" * 40
    assert lines[1] == (
        f"Exception occurred during processing of request from {client.getsockname()!r}"
    )
    assert lines[2] == "Traceback (most recent call last):"
    assert "ValueError: boom" in err
    assert lines[-1] == "-" * 40


@pytest.mark.parametrize("exception", [SystemExit(3), KeyboardInterrupt()], ids=repr)
def test_system_exit_and_keyboard_interrupt_propagate_out_of_handle_request(ss, harness, exception):
    server = harness.server(
        error_recording(ss.TCPServer), (LOOPBACK, 0), failing_handler(ss, exception)
    )
    server.timeout = 5.0
    client = send(harness, server, b"fail")
    with pytest.raises(type(exception)):
        server.handle_request()
    assert server.errors == []  # not an error to report: it propagates
    assert len(server.shut_down) == 1  # but the request was still shut down
    assert server.shut_down[0].fileno() == -1
    assert recv_until_eof(client) == b""
    # The server is still usable afterwards.
    ok = send(harness, server, b"ok")
    server.handle_request()
    assert recv_until_eof(ok) == b"echo:ok"


@pytest.mark.parametrize("exception", [SystemExit(3), KeyboardInterrupt()], ids=repr)
def test_system_exit_and_keyboard_interrupt_propagate_out_of_serve_forever(ss, harness, exception):
    server = harness.server(
        error_recording(ss.TCPServer), (LOOPBACK, 0), failing_handler(ss, exception)
    )
    serving = ServingThread(server, POLL).start()
    harness.callback(serving.stop)
    assert harness.exchange(server, b"fail") == b""
    assert serving.returned.wait(2.0)
    assert type(serving.error) is type(exception)
    assert len(server.shut_down) == 1


def test_exception_in_verify_request_propagates_out_of_handle_request(ss, harness):
    class Server(ss.TCPServer):
        def verify_request(self, request, client_address):
            self.pending = request
            raise LookupError("verify failed")

    server = harness.server(Server, (LOOPBACK, 0), echo_handler(ss), timeout=5.0)
    send(harness, server, b"v")
    with pytest.raises(LookupError):
        server.handle_request()
    assert server_records(server) == []
    server.pending.close()


def test_exception_in_handle_timeout_propagates_out_of_handle_request(ss, harness):
    class Server(ss.TCPServer):
        timeout = 0.01

        def handle_timeout(self):
            raise TimeoutError("no request")

    server = harness.server(Server, (LOOPBACK, 0), echo_handler(ss))
    with pytest.raises(TimeoutError, match="no request"):
        server.handle_request()


def test_exception_in_service_actions_propagates_out_of_serve_forever(ss, harness):
    class Server(ss.TCPServer):
        calls = 0

        def service_actions(self):
            self.calls += 1
            if self.calls == 3:
                raise ArithmeticError("service_actions failed")

    server = harness.server(Server, (LOOPBACK, 0), echo_handler(ss))
    with pytest.raises(ArithmeticError):
        server.serve_forever(poll_interval=0.01)
    assert server.calls == 3


def test_oserror_from_get_request_is_swallowed(ss, harness):
    class Server(ss.TCPServer):
        def get_request(self):
            request, _address = super().get_request()
            request.close()
            raise ConnectionAbortedError(errno.ECONNABORTED, "aborted")

    server = harness.server(Server, (LOOPBACK, 0), echo_handler(ss), timeout=5.0)
    client = send(harness, server, b"g")
    assert server.handle_request() is None
    assert server_records(server) == []
    try:
        reply = recv_until_eof(client)
    except ConnectionResetError:
        reply = b""
    assert reply == b""


def test_non_oserror_from_get_request_propagates(ss, harness):
    class Server(ss.TCPServer):
        def get_request(self):
            request, _address = super().get_request()
            self.pending = request
            raise RuntimeError("get_request failed")

    server = harness.server(Server, (LOOPBACK, 0), echo_handler(ss), timeout=5.0)
    send(harness, server, b"g")
    with pytest.raises(RuntimeError, match="get_request failed"):
        server.handle_request()
    server.pending.close()


# Bad addresses ------------------------------------------------------------------------------


def bad_address_cases(unix_dir):
    """``(server class name, address, expected exception, expected errno or None)``."""
    taken = socket.socket()
    taken.bind((LOOPBACK, 0))
    taken.listen()
    cases = [
        ("TCPServer", (LOOPBACK, -1), OverflowError, None),
        ("TCPServer", (LOOPBACK, 65536), OverflowError, None),
        ("UDPServer", (LOOPBACK, -1), OverflowError, None),
        ("TCPServer", taken.getsockname(), OSError, errno.EADDRINUSE),
        ("TCPServer", ("host.invalid", 0), socket.gaierror, None),
        ("TCPServer", "127.0.0.1:0", TypeError, None),
        ("TCPServer", (LOOPBACK,), TypeError, None),
        ("UDPServer", ["127.0.0.1", 0], TypeError, None),
    ]
    if HAS_UNIX:
        long_path = os.path.join(str(unix_dir), "x" * 200)
        in_use = os.path.join(str(unix_dir), "in-use")
        open(in_use, "w").close()
        cases += [
            ("UnixStreamServer", long_path, OSError, None),
            ("UnixDatagramServer", long_path, OSError, None),
            ("UnixStreamServer", in_use, OSError, errno.EADDRINUSE),
            ("UnixStreamServer", (LOOPBACK, 0), TypeError, None),
            (
                "UnixStreamServer",
                os.path.join(str(unix_dir), "missing", "s"),
                OSError,
                errno.ENOENT,
            ),
        ]
    return taken, cases


def test_bad_addresses_raise_what_the_stdlib_raises(ss, harness, unix_dir):
    taken, cases = bad_address_cases(unix_dir)
    harness.callback(taken.close)
    for class_name, address, exc_type, err in cases:
        with pytest.raises(exc_type) as info:
            getattr(ss, class_name)(address, ss.BaseRequestHandler)
        if err is not None:
            assert info.value.errno == err, (class_name, address)
    # the specific messages users see
    with pytest.raises(OverflowError, match="port must be 0-65535"):
        ss.TCPServer((LOOPBACK, -1), ss.BaseRequestHandler)
    if HAS_UNIX:
        with pytest.raises(OSError, match="AF_UNIX path too long"):
            ss.UnixStreamServer(os.path.join(str(unix_dir), "x" * 200), ss.BaseRequestHandler)


def test_failed_construction_leaks_no_file_descriptor(ss, harness, unix_dir):
    taken, cases = bad_address_cases(unix_dir)
    harness.callback(taken.close)
    gc.collect()
    before = open_fds()
    for _ in range(5):
        for class_name, address, exc_type, _ in cases:
            with pytest.raises(exc_type):
                getattr(ss, class_name)(address, ss.BaseRequestHandler)
    gc.collect()
    assert open_fds() == before


def test_failed_server_bind_closes_the_socket(ss):
    made = []

    class Server(ss.TCPServer):
        def server_bind(self):
            made.append(self.socket)
            raise PermissionError(errno.EACCES, "not allowed")

    with pytest.raises(PermissionError):
        Server((LOOPBACK, 0), ss.BaseRequestHandler)
    (sock,) = made
    assert sock.fileno() == -1


def test_failed_server_activate_closes_the_socket(ss):
    made = []

    class Server(ss.TCPServer):
        def server_activate(self):
            made.append(self.socket)
            raise KeyboardInterrupt  # anything at all, even a BaseException

    with pytest.raises(KeyboardInterrupt):
        Server((LOOPBACK, 0), ss.BaseRequestHandler)
    (sock,) = made
    assert sock.fileno() == -1


# Serving a closed server --------------------------------------------------------------------


def test_serve_forever_on_a_closed_server_raises_value_error(ss, harness):
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    server.server_close()
    with pytest.raises(ValueError) as info:
        server.serve_forever(poll_interval=POLL)
    assert str(info.value) == "Invalid file descriptor: -1"


def test_handle_request_on_a_closed_server_raises_value_error(ss, harness):
    server = harness.server(ss.UDPServer, (LOOPBACK, 0), echo_handler(ss))
    server.server_close()
    with pytest.raises(ValueError) as info:
        server.handle_request()
    assert str(info.value) == "Invalid file descriptor: -1"


def test_shutdown_after_serve_forever_failed_on_a_closed_server_does_not_block(ss, harness):
    from _behaviour_helpers import call_with_timeout

    server = harness.server(ss.TCPServer, (LOOPBACK, 0), echo_handler(ss))
    server.server_close()
    with pytest.raises(ValueError):
        server.serve_forever(poll_interval=POLL)
    finished, _, error = call_with_timeout(server.shutdown, 2.0)
    assert finished and error is None


def test_serving_calls_leak_no_file_descriptor(ss, harness):
    """Many handle_request() and serve_forever() calls, then close and drop the server:
    the process has exactly the descriptors it had before."""
    gc.collect()
    before = open_fds()
    server = ss.TCPServer((LOOPBACK, 0), echo_handler(ss))
    try:
        server.timeout = 0.01
        for _ in range(10):
            server.handle_request()
        for _ in range(3):
            serving = ServingThread(server, POLL).start()
            client = send(harness, server, b"x")
            assert recv_until_eof(client) == b"echo:x"
            client.close()
            serving.stop()
    finally:
        server.server_close()
    del server, serving
    assert wait_for(lambda: (gc.collect(), open_fds() == before)[1], timeout=2.0)


# Running out of file descriptors -------------------------------------------------------------

EMFILE_CHILD = r"""
import importlib, json, os, resource, socket, sys, threading, time

module = importlib.import_module(sys.argv[1])
signal_alarm = __import__("signal").alarm(30)  # hang guard
state = {"actions": 0, "served": False}


class Handler(module.BaseRequestHandler):
    def handle(self):
        state["data"] = self.request.recv(100).decode()
        state["served"] = True
        served.set()


class Server(module.TCPServer):
    def service_actions(self):
        state["actions"] += 1


served = threading.Event()
server = Server(("127.0.0.1", 0), Handler)
server.timeout = 0
server.handle_request()  # warm up: any per-server resources exist before the limit bites
client = socket.create_connection(server.server_address, timeout=5)
client.sendall(b"waiting")

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
filler = []
try:
    while len(filler) < 1024:
        filler.append(os.open(os.devnull, os.O_RDONLY))
except OSError:
    pass
exhausted = {}


def free_one_then_stop():
    time.sleep(0.5)
    exhausted["actions"] = state["actions"]
    os.close(filler.pop())
    served.wait(5)
    server.shutdown()


threading.Thread(target=free_one_then_stop, daemon=True).start()
server.serve_forever(0.05)
for fd in filler:
    os.close(fd)
server.server_close()
print(json.dumps({"served": state["served"], "data": state.get("data"),
                  "actions_while_exhausted": exhausted.get("actions")}))
"""


def run_emfile_child(harness, module):
    from _behaviour_helpers import python_child

    proc = python_child(harness, EMFILE_CHILD, module.__name__)
    try:
        out, err = proc.communicate(timeout=20)
    except Exception:
        proc.kill()
        raise
    assert proc.returncode == 0, err.decode()
    import json

    return json.loads(out.decode().strip().splitlines()[-1])


def test_client_waiting_while_descriptors_are_exhausted_is_served_once_one_is_free(ss, harness):
    result = run_emfile_child(harness, ss)
    assert result["served"] is True
    assert result["data"] == "waiting"


def test_accept_failing_for_lack_of_descriptors_does_not_spin(rs, harness):
    """socketserver_rs only (design rule 7): while accept() fails with EMFILE the loop backs
    off instead of retrying at once (the stdlib's loop spins, calling service_actions() on
    every turn). Half a second at poll_interval=0.05 is about ten idle wakeups; a spinning
    loop makes tens of thousands."""
    result = run_emfile_child(harness, rs)
    assert result["served"] is True
    assert result["actions_while_exhausted"] < 500
