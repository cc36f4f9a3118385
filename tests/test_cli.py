"""``python -m socketserver_rs``: the uppercase echo demo on TCP and UDP, run for real.

The demo runs as a child process (``--port 0`` unless a test says otherwise; the port comes
from the line it prints), is talked to over TCP and UDP, and is stopped with SIGINT, as a
person stops it with Ctrl-C: it must exit within a second, with status 0 and no traceback.
"""

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

STARTUP_TIMEOUT = 20.0
IO_TIMEOUT = 10.0
STOP_LIMIT = 1.0  # how quickly Ctrl-C must end the demo
BANNER = re.compile(r"tcp and udp 127\.0\.0\.1:(\d+);")


def _child_env():
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONWARNINGS", None)
    return env


# A shell without job control starts background jobs with SIGINT ignored, and an ignored
# signal stays ignored across exec: then Python never installs its Ctrl-C handler. Children
# that get SIGINT therefore start through this trampoline, which resets SIGINT to its default
# and execs the real command in the same process (a preexec_fn would do it after fork(), which
# is unsafe while the reader threads run).
WITH_DEFAULT_SIGINT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])",
]


def _drain(stream, sink, lines):
    for line in stream:
        sink.append(line)
        lines.put(line)
    lines.put(None)


class Demo:
    """``python -m socketserver_rs`` in a child process, its output collected as it comes."""

    def __init__(self, *args, cwd):
        self.proc = subprocess.Popen(
            [*WITH_DEFAULT_SIGINT, "-m", "socketserver_rs", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_child_env(),
        )
        self.stdout_lines = []
        self.stderr_lines = []
        self._lines = queue.Queue()
        self._readers = [
            threading.Thread(
                target=_drain, args=(self.proc.stdout, self.stdout_lines, self._lines), daemon=True
            ),
            threading.Thread(
                target=_drain,
                args=(self.proc.stderr, self.stderr_lines, queue.Queue()),
                daemon=True,
            ),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def stdout(self):
        return "".join(self.stdout_lines)

    @property
    def stderr(self):
        return "".join(self.stderr_lines)

    def output(self):
        return f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"

    def wait_until_serving(self):
        """Wait for the line the demo prints once both servers are bound; ``(port, line)``."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"the demo exited before serving:\n{self.output()}")
            if match := BANNER.search(line):
                return int(match.group(1)), line
        pytest.fail(f"the demo did not start serving in {STARTUP_TIMEOUT} s:\n{self.output()}")

    def interrupt(self):
        """Send SIGINT and wait for the process to end; how long it took."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=STOP_LIMIT + 9)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the demo was still running 10 s after SIGINT:\n{self.output()}")
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


@pytest.fixture
def start_demo(tmp_path):
    """Start the demo; every one started is killed at teardown if it is still running."""
    started = []

    def start(*args):
        demo = Demo(*args, cwd=tmp_path)
        started.append(demo)
        return demo

    yield start
    for demo in started:
        demo.kill()


def run_demo(*args, timeout=STARTUP_TIMEOUT):
    """Run the demo with arguments that make it exit by itself; the ``CompletedProcess``."""
    return subprocess.run(
        [sys.executable, "-m", "socketserver_rs", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_child_env(),
    )


def tcp_exchange(port, payload):
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(payload)
        chunks = []
        while chunk := sock.recv(4096):  # the demo answers once, then closes
            chunks.append(chunk)
    return b"".join(chunks)


def udp_exchange(port, payload):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.sendto(payload, ("127.0.0.1", port))
        reply, sender = sock.recvfrom(65536)
    assert sender == ("127.0.0.1", port)
    return reply


def free_port_for_tcp_and_udp():
    """A port that is free for both TCP and UDP on 127.0.0.1 right now."""
    for _ in range(50):
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("found no port free for both TCP and UDP")


def assert_stops_cleanly_on_sigint(demo):
    elapsed = demo.interrupt()
    assert demo.proc.returncode == 0, demo.output()
    assert elapsed < STOP_LIMIT, f"took {elapsed:.2f} s to stop\n{demo.output()}"
    assert "Traceback" not in demo.stderr, demo.output()
    assert "KeyboardInterrupt" not in demo.stderr, demo.output()
    assert "stopped\n" in demo.stdout_lines, demo.output()


# --- serving ---------------------------------------------------------------------------------


def test_demo_answers_tcp_and_udp_in_capitals_then_stops_on_sigint(start_demo):
    demo = start_demo("--port", "0")
    port, _ = demo.wait_until_serving()

    assert tcp_exchange(port, b"hello over tcp\n") == b"HELLO OVER TCP\n"
    assert udp_exchange(port, b"hello over udp\n") == b"HELLO OVER UDP\n"

    assert_stops_cleanly_on_sigint(demo)
    assert "tcp 127.0.0.1:" in demo.stdout and "b'hello over tcp\\n'" in demo.stdout
    assert "udp 127.0.0.1:" in demo.stdout and "b'hello over udp\\n'" in demo.stdout


def test_demo_serves_on_the_port_given(start_demo):
    port = free_port_for_tcp_and_udp()
    demo = start_demo("--host", "127.0.0.1", "--port", str(port))
    served_port, _ = demo.wait_until_serving()

    assert served_port == port
    assert tcp_exchange(port, b"abc") == b"ABC"
    assert udp_exchange(port, b"xyz") == b"XYZ"
    assert_stops_cleanly_on_sigint(demo)


def test_demo_prints_one_line_on_how_to_talk_to_it(start_demo):
    demo = start_demo("--port", "0")
    port, line = demo.wait_until_serving()

    assert f"nc 127.0.0.1 {port}" in line
    assert "nc -u" in line
    assert demo.stdout_lines == [line]
    assert_stops_cleanly_on_sigint(demo)


def test_demo_serves_a_tcp_client_while_another_stays_connected(start_demo):
    demo = start_demo("--port", "0")
    port, _ = demo.wait_until_serving()

    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT):
        # The first client sends nothing; its handler thread waits, the server does not.
        assert tcp_exchange(port, b"second\n") == b"SECOND\n"
        assert udp_exchange(port, b"third\n") == b"THIRD\n"
        # Ctrl-C must not wait for the silent client either.
        assert_stops_cleanly_on_sigint(demo)


def test_demo_answers_many_datagrams_in_a_row(start_demo):
    demo = start_demo("--port", "0")
    port, _ = demo.wait_until_serving()

    for number in range(20):
        assert udp_exchange(port, b"d%d" % number) == b"D%d" % number
    assert_stops_cleanly_on_sigint(demo)


def test_idle_demo_stops_promptly_on_sigint(start_demo):
    demo = start_demo("--port", "0")
    demo.wait_until_serving()
    time.sleep(0.3)  # let both loops settle into their waits

    assert_stops_cleanly_on_sigint(demo)


@pytest.mark.skipif(shutil.which("nc") is None, reason="needs nc (netcat-openbsd)")
def test_the_printed_nc_commands_work(start_demo):
    demo = start_demo("--port", "0")
    port, _ = demo.wait_until_serving()

    tcp = subprocess.run(
        f"printf 'hello\\n' | nc 127.0.0.1 {port}",
        shell=True,
        capture_output=True,
        timeout=IO_TIMEOUT,
    )
    udp = subprocess.run(
        f"printf 'hello\\n' | nc -u -w1 127.0.0.1 {port}",
        shell=True,
        capture_output=True,
        timeout=IO_TIMEOUT,
    )

    assert tcp.stdout == b"HELLO\n", tcp
    assert udp.stdout == b"HELLO\n", udp
    assert_stops_cleanly_on_sigint(demo)


# --- options ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["--bogus"], ["--port"], ["--port", "http"], ["--port", "70000"], ["--port", "-1"], ["x"]],
    ids=["unknown", "missing-value", "not-a-number", "too-large", "negative", "positional"],
)
def test_bad_option_exits_with_status_2_and_usage(args):
    result = run_demo(*args)

    assert result.returncode == 2, result
    assert result.stderr.startswith("usage: python -m socketserver_rs"), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_help_describes_the_options_and_exits_0():
    result = run_demo("--help")

    assert result.returncode == 0, result
    assert "--host" in result.stdout and "--port" in result.stdout
    assert "9999" in result.stdout and "127.0.0.1" in result.stdout


def test_port_in_use_exits_1_with_a_message():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_demo("--port", str(port))

    assert result.returncode == 1, result
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
