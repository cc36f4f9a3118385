"""``examples/reactor_line_server.py``, run for real.

The server runs as a child process on a free port (port 0; the port comes from the line it
prints when it starts), is driven by ``examples/line_client.py`` and by plain sockets, and
is stopped with SIGINT, as a person stops it with Ctrl-C: it must exit promptly, with
status 0 and no traceback. Every wait is bounded; teardown kills (by PID) whatever a test
started that is still running.
"""

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SERVER = EXAMPLES / "reactor_line_server.py"
CLIENT = EXAMPLES / "line_client.py"

STARTUP_TIMEOUT = 20.0  # a cold interpreter on a loaded machine can be slow to start
CLIENT_TIMEOUT = 20.0
STOP_LIMIT = 5.0  # generous: proves Ctrl-C does not hang, not how fast it is
BANNER = re.compile(r"serving lines on 127\.0\.0\.1:(\d+) ")


def _child_env():
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONWARNINGS", None)
    return env


def _restore_default_sigint():
    # A shell without job control starts background jobs with SIGINT ignored, and an ignored
    # signal stays ignored across exec: then Python would never install its Ctrl-C handler.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class ServerProcess:
    def __init__(self):
        self.proc = subprocess.Popen(
            [sys.executable, "-u", str(SERVER), "127.0.0.1", "0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_child_env(),
            preexec_fn=_restore_default_sigint,
        )
        self.stdout_lines = []
        self.stderr_lines = []
        self._lines = queue.Queue()
        self._readers = [
            threading.Thread(target=self._drain, args=(self.proc.stdout, self.stdout_lines, True)),
            threading.Thread(target=self._drain, args=(self.proc.stderr, self.stderr_lines, False)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()

    def _drain(self, stream, sink, announce):
        for line in stream:
            sink.append(line)
            if announce:
                self._lines.put(line)
        if announce:
            self._lines.put(None)

    def wait_for_line(self, pattern, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r}; output: {self.output()}")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"server exited before {pattern!r}; output: {self.output()}")
            match = re.search(pattern, line)
            if match:
                return match

    def port(self):
        return int(self.wait_for_line(BANNER, STARTUP_TIMEOUT).group(1))

    def interrupt(self):
        """SIGINT (Ctrl-C); returns the exit status and how long the exit took."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            status = self.proc.wait(STOP_LIMIT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {STOP_LIMIT}s after SIGINT: {self.output()}")
        for reader in self._readers:
            reader.join(5)
        return status, time.monotonic() - started

    def output(self):
        return f"\n--- stdout ---\n{''.join(self.stdout_lines)}--- stderr ---\n" + "".join(
            self.stderr_lines
        )

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        for reader in self._readers:
            reader.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def server():
    process = ServerProcess()
    try:
        yield process
    finally:
        process.kill()


def run_line_client(port, lines):
    proc = subprocess.Popen(
        [sys.executable, str(CLIENT), "127.0.0.1", str(port)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_child_env(),
    )
    try:
        stdout, stderr = proc.communicate("".join(line + "\n" for line in lines), CLIENT_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    return proc.returncode, stdout, stderr


def recv_line(sock):
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        assert chunk, f"EOF after {bytes(data)!r}"
        data += chunk
    return bytes(data)


def test_line_client_gets_each_line_back_uppercased(server):
    assert CLIENT.exists(), "examples/line_client.py is missing"
    port = server.port()
    lines = ["hello", "Mixed Case 123", "", "ünïcode"]
    status, stdout, stderr = run_line_client(port, lines)
    assert status == 0, stderr
    # bytes.upper(): ASCII letters only, as the server works on bytes.
    assert stdout.splitlines() == [line.encode().upper().decode() for line in lines]
    server.wait_for_line(r"disconnected", CLIENT_TIMEOUT)
    status, _ = server.interrupt()
    assert status == 0, server.output()
    assert "Traceback" not in server.output()


def test_several_clients_are_served_at_once_on_one_thread(server):
    port = server.port()
    clients = [socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) for _ in "abc"]
    try:
        for round_ in range(3):
            for i, client in enumerate(clients):
                client.sendall(b"client %d round %d\r\n" % (i, round_))
            for i, client in enumerate(clients):
                assert recv_line(client) == b"CLIENT %d ROUND %d\n" % (i, round_)
        # One write with several lines, and a line split over writes.
        clients[0].sendall(b"one\ntwo\nthr")
        clients[0].sendall(b"ee\n")
        assert [recv_line(clients[0]) for _ in range(3)] == [b"ONE\n", b"TWO\n", b"THREE\n"]
    finally:
        for client in clients:
            client.close()


def test_ctrl_c_stops_the_server_at_once_with_clients_connected(server):
    port = server.port()
    idle = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
    try:
        idle.sendall(b"ping\n")
        assert recv_line(idle) == b"PING\n"
        status, _ = server.interrupt()
        assert status == 0, server.output()
        output = server.output()
        assert "Traceback" not in output, output
        assert "KeyboardInterrupt" not in "".join(server.stderr_lines), output
        assert server.stdout_lines[-1].strip() == "stopped", output
        # Closing the server closed the connection, and finish() ran for it.
        assert idle.recv(100) == b""
        assert any("disconnected" in line for line in server.stdout_lines), output
    finally:
        idle.close()


def test_ctrl_c_with_no_client_ever_connected_exits_cleanly(server):
    server.port()
    status, _ = server.interrupt()
    assert status == 0, server.output()
    assert "Traceback" not in server.output()
    assert server.stderr_lines == [], server.output()
