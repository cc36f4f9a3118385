"""The scripts in ``examples/``, run for real.

Each server runs as a child process on a free port (port 0; the port comes from the line it
prints when it starts), is driven by its own client script, and is stopped with SIGINT, as a
person stops it with Ctrl-C: it must exit within two seconds, with status 0 and no traceback.
Every wait is bounded, and teardown kills whatever a test started that is still running.
"""

import queue
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _child_process import WITH_DEFAULT_SIGINT, CollectsOutput, child_env

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

STARTUP_TIMEOUT = 20.0  # a cold interpreter on a loaded CI machine can be slow to start
CLIENT_TIMEOUT = 20.0
STOP_LIMIT = 2.0  # how quickly Ctrl-C must end a server
BANNER = re.compile(r" on 127\.0\.0\.1:(\d+) ")


class ServerProcess(CollectsOutput):
    """An example server in a child process, with its output collected as it comes."""

    def __init__(self, script, *args):
        self.proc = subprocess.Popen(
            [*WITH_DEFAULT_SIGINT, "-u", str(EXAMPLES / script), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        self._collect_output()

    def wait_for_line(self, pattern, timeout=STARTUP_TIMEOUT):
        """The match of the first stdout line (from now on) that matches ``pattern``."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"server exited before printing {pattern!r}:\n{self.output()}")
            if match := re.search(pattern, line):
                return match
        pytest.fail(f"server printed no line matching {pattern!r} in {timeout} s:\n{self.output()}")

    def wait_until_ready(self, tcp=True):
        """Wait for the startup line, then (TCP) until a connection is accepted; the port."""
        port = int(self.wait_for_line(BANNER).group(1))
        if tcp:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or self.proc.poll() is not None:
                        pytest.fail(f"server on port {port} never accepted:\n{self.output()}")
                    time.sleep(0.05)
        return port

    def interrupt(self):
        """Send SIGINT and wait for the process to end; how long it took."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=STOP_LIMIT + 8)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server still running 10 s after SIGINT:\n{self.output()}")
        elapsed = time.monotonic() - started
        self.join_readers()
        return elapsed

    def join_readers(self):
        for reader in self._readers:
            reader.join(timeout=5)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.join_readers()
        self.proc.stdout.close()
        self.proc.stderr.close()

    def output(self):
        return f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"


@pytest.fixture
def start_server():
    """Start an example server; every one started is killed at teardown if still running."""
    started = []

    def start(script, *args):
        server = ServerProcess(script, "127.0.0.1", "0", *args)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


def run_example(script, *args, stdin_text=None, timeout=CLIENT_TIMEOUT):
    """Run an example script to completion; the ``CompletedProcess``."""
    try:
        return subprocess.run(
            [sys.executable, str(EXAMPLES / script), *map(str, args)],
            input=stdin_text,
            stdin=None if stdin_text is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env(),
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(
            f"{script} did not finish in {timeout} s: {expired.stdout!r} {expired.stderr!r}"
        )


def assert_stops_cleanly_on_sigint(server):
    elapsed = server.interrupt()
    assert server.proc.returncode == 0, server.output()
    assert elapsed < STOP_LIMIT, f"took {elapsed:.2f} s to stop\n{server.output()}"
    assert "Traceback" not in server.stderr, server.output()
    assert "KeyboardInterrupt" not in server.stderr, server.output()
    assert "stopped\n" in server.stdout_lines, server.output()


def assert_ran_cleanly(result):
    details = f"--- stdout ---\n{result.stdout}--- stderr ---\n{result.stderr}"
    assert result.returncode == 0, details
    assert "Traceback" not in result.stderr, details


# --- (a) TCP uppercase server and its client ------------------------------------------------


def test_tcp_server_sends_the_message_back_in_capitals(start_server):
    server = start_server("tcp_uppercase_server.py")
    port = server.wait_until_ready()

    result = run_example("tcp_client.py", "hello, socketserver", "127.0.0.1", port)

    assert_ran_cleanly(result)
    assert "received: HELLO, SOCKETSERVER" in result.stdout
    server.wait_for_line(r"sent b'hello, socketserver'")
    assert_stops_cleanly_on_sigint(server)


def test_tcp_server_serves_one_client_after_another(start_server):
    server = start_server("tcp_uppercase_server.py")
    port = server.wait_until_ready()

    for word in ("first", "second", "third"):
        result = run_example("tcp_client.py", word, "127.0.0.1", port)
        assert_ran_cleanly(result)
        assert f"received: {word.upper()}" in result.stdout

    assert_stops_cleanly_on_sigint(server)


# --- (b) UDP uppercase server and its client ------------------------------------------------


def test_udp_server_answers_a_datagram_in_capitals(start_server):
    server = start_server("udp_uppercase_server.py")
    port = server.wait_until_ready(tcp=False)

    result = run_example("udp_client.py", "datagram one", "127.0.0.1", port)

    assert_ran_cleanly(result)
    assert "received: DATAGRAM ONE" in result.stdout
    server.wait_for_line(r"sent b'datagram one'")
    assert_stops_cleanly_on_sigint(server)


def test_udp_client_reports_a_missing_server_instead_of_hanging():
    # A bound socket that never answers stands in for a server that is not there.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        result = run_example("udp_client.py", "anyone?", "127.0.0.1", port, "--timeout", "0.3")

    assert result.returncode == 1
    assert "no reply" in result.stderr
    assert "Traceback" not in result.stderr


# --- (c) threading server that runs by itself -----------------------------------------------


def test_threaded_server_answers_three_clients_from_three_threads_then_stops():
    result = run_example("threaded_server.py")

    assert_ran_cleanly(result)
    replies = re.findall(r"^(.+): hello (\d)$", result.stdout, re.MULTILINE)
    assert [number for _, number in replies] == ["1", "2", "3"], result.stdout
    names = [name for name, _ in replies]
    assert len(set(names)) == 3, names  # a new thread for every request
    assert "MainThread" not in names and "serve_forever" not in names
    assert result.stdout.rstrip().endswith("server stopped")


# --- (d) threading line server and its interactive client -----------------------------------


def test_line_client_sends_each_stdin_line_and_prints_each_reply(start_server):
    server = start_server("line_server.py")
    port = server.wait_until_ready()

    result = run_example(
        "line_client.py", "127.0.0.1", port, stdin_text="one\ntwo words\r\nMiXeD 3\nlast"
    )

    assert_ran_cleanly(result)
    assert result.stdout.splitlines() == ["ONE", "TWO WORDS", "MIXED 3", "LAST"]
    assert_stops_cleanly_on_sigint(server)


def test_line_client_exits_at_end_of_input_without_sending(start_server):
    server = start_server("line_server.py")
    port = server.wait_until_ready()

    result = run_example("line_client.py", "127.0.0.1", port, stdin_text="")

    assert_ran_cleanly(result)
    assert result.stdout == ""
    assert_stops_cleanly_on_sigint(server)


def test_line_server_serves_connections_concurrently(start_server):
    server = start_server("line_server.py")
    port = server.wait_until_ready()

    # Two connections stay open at once and take turns: one thread per connection.
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as first,
        socket.create_connection(("127.0.0.1", port), timeout=10) as second,
    ):
        first_replies, second_replies = first.makefile("rb"), second.makefile("rb")
        for round_ in range(3):
            first.sendall(b"a%d\n" % round_)
            second.sendall(b"b%d\n" % round_)
            assert second_replies.readline() == b"B%d\n" % round_
            assert first_replies.readline() == b"A%d\n" % round_
        first_replies.close()
        second_replies.close()

    assert_stops_cleanly_on_sigint(server)


def test_line_server_stops_on_sigint_with_a_client_still_connected(start_server):
    server = start_server("line_server.py")
    port = server.wait_until_ready()

    with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
        idle.sendall(b"still here\n")
        assert idle.makefile("rb").readline() == b"STILL HERE\n"
        assert_stops_cleanly_on_sigint(server)


# --- every server: Ctrl-C while idle --------------------------------------------------------


@pytest.mark.parametrize(
    "script", ["tcp_uppercase_server.py", "udp_uppercase_server.py", "line_server.py"]
)
def test_idle_server_exits_cleanly_and_promptly_on_sigint(start_server, script):
    server = start_server(script)
    server.wait_until_ready(tcp=script != "udp_uppercase_server.py")
    time.sleep(0.2)  # let it settle into its wait

    assert_stops_cleanly_on_sigint(server)
