"""``python -m socketserver_rs``: its commands (``echo``, ``http``), run for real.

Each server runs as a child process in a session of its own (``--port 0`` unless a test says
otherwise; the address comes from the line it prints once serving), is talked to by real
clients over TCP, UDP, Unix sockets or HTTP, and is stopped with SIGINT, as a person stops it
with Ctrl-C: it must exit within a second, with status 0 and no traceback. Teardown kills
whatever a test started (the child's whole session) that is still running.
"""

import errno
import http.client
import importlib.metadata
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from _behaviour_helpers import needs_unix
from _child_process import WITH_DEFAULT_SIGINT, CollectsOutput, child_env

STARTUP_TIMEOUT = 20.0
IO_TIMEOUT = 10.0
STOP_LIMIT = 1.0  # how quickly Ctrl-C must end a server
PROG = "python -m socketserver_rs"

FAMILIES = ["threading", "pool", "reactor"] + (["forking"] if hasattr(os, "fork") else [])
HAS_UNIX = hasattr(socket, "AF_UNIX")
needs_proc = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc")

# The class names each family serves with, by transport.
CLASSES = {
    "threading": ("ThreadingTCPServer", "ThreadingUDPServer", "ThreadingUnixStreamServer"),
    "pool": ("ThreadPoolTCPServer", "ThreadPoolUDPServer", "ThreadPoolUnixStreamServer"),
    "reactor": ("ReactorTCPServer", "ReactorUDPServer", "ReactorUnixStreamServer"),
    "forking": ("ForkingTCPServer", "ForkingUDPServer", "ForkingUnixStreamServer"),
}

# What each command prints once it is serving: the address to talk to is in it.
ECHO_BOTH = re.compile(r"uppercase echo on tcp and udp 127\.0\.0\.1:(\d+) with (\w+) and (\w+);")
ECHO_ONE = re.compile(r"uppercase echo on (tcp|udp) 127\.0\.0\.1:(\d+) with (\w+);")
ECHO_UNIX = re.compile(r"uppercase echo on unix (\S+) with (\w+);")
HTTP = re.compile(r"over HTTP on 127\.0\.0\.1:(\d+) ")
ANY_BANNER = re.compile(r"^(uppercase echo on|serving .* over HTTP on) ")


class Demo(CollectsOutput):
    """``python -m socketserver_rs ARGS`` in a child process (the leader of a new session),
    its output collected as it comes."""

    def __init__(self, *args, cwd):
        self.proc = subprocess.Popen(
            [*WITH_DEFAULT_SIGINT, "-m", "socketserver_rs", *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            start_new_session=True,
        )
        self._collect_output()

    def output(self):
        return f"--- stdout ---\n{self.stdout}--- stderr ---\n{self.stderr}"

    def wait_until_serving(self, banner):
        """Wait for the line that matches ``banner`` (printed once everything is bound);
        returns the match."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:
                pytest.fail(f"the server exited before serving:\n{self.output()}")
            if match := banner.search(line):
                return match
            if ANY_BANNER.search(line):
                pytest.fail(f"unexpected banner {line!r} (wanted {banner.pattern!r})")
        pytest.fail(f"the server did not start serving in {STARTUP_TIMEOUT} s:\n{self.output()}")

    def interrupt(self, *, whole_group=False):
        """Send SIGINT (to the process, or to its whole session's process group as a
        terminal's Ctrl-C does) and wait for the process to end; how long it took."""
        started = time.monotonic()
        if whole_group:
            os.killpg(self.proc.pid, signal.SIGINT)
        else:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=STOP_LIMIT + 9)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 10 s after SIGINT:\n{self.output()}")
        elapsed = time.monotonic() - started
        self.join_readers()
        return elapsed

    def join_readers(self):
        for reader in self._readers:
            reader.join(timeout=5)

    def kill(self):
        """Kill the child's session (the child and anything it forked), then reap it."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the session is empty: everything in it has exited
        self.proc.wait(timeout=10)
        self.join_readers()
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def start_demo(tmp_path):
    """Start ``python -m socketserver_rs``; every one started is killed at teardown."""
    started = []

    def start(*args):
        demo = Demo(*args, cwd=tmp_path)
        started.append(demo)
        return demo

    yield start
    for demo in started:
        demo.kill()


def run_cli(*args, timeout=STARTUP_TIMEOUT):
    """Run the CLI with arguments that make it exit by itself; the ``CompletedProcess``."""
    return subprocess.run(
        [sys.executable, "-m", "socketserver_rs", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
    )


def recv_all(sock):
    chunks = []
    while chunk := sock.recv(4096):  # the echo answers once, then closes
        chunks.append(chunk)
    return b"".join(chunks)


def tcp_exchange(port, payload):
    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT) as sock:
        sock.sendall(payload)
        return recv_all(sock)


def udp_exchange(port, payload):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.sendto(payload, ("127.0.0.1", port))
        reply, sender = sock.recvfrom(65536)
    assert sender == ("127.0.0.1", port)
    return reply


def unix_exchange(path, payload):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(IO_TIMEOUT)
        sock.connect(path)
        sock.sendall(payload)
        return recv_all(sock)


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


def processes_in(directory):
    """Pids of the processes whose working directory is ``directory`` (every process a
    test's server forks inherits the test's ``tmp_path`` as its working directory)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/cwd") == str(directory):
                    found.append(int(entry))
            except OSError:
                pass  # gone, or not ours to look at
    return found


def wait_for_processes_in(directory, count):
    """Wait (bounded) until exactly ``count`` processes work in ``directory``; their pids."""
    deadline = time.monotonic() + IO_TIMEOUT
    while len(found := processes_in(directory)) != count and time.monotonic() < deadline:
        time.sleep(0.01)
    return found


def assert_stops_cleanly_on_sigint(demo, *, whole_group=False):
    elapsed = demo.interrupt(whole_group=whole_group)
    assert demo.proc.returncode == 0, demo.output()
    assert elapsed < STOP_LIMIT, f"took {elapsed:.2f} s to stop\n{demo.output()}"
    assert "Traceback" not in demo.stderr, demo.output()
    assert "KeyboardInterrupt" not in demo.stderr, demo.output()
    assert "stopped\n" in demo.stdout_lines, demo.output()


def assert_usage_error(result, usage):
    """Exit status 2, usage and a one-line error on stderr, nothing on stdout."""
    assert result.returncode == 2, result
    assert result.stderr.startswith(f"usage: {usage}"), result.stderr
    assert f"{usage}: error: " in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


# --- echo: the default command -----------------------------------------------------------------


def test_no_command_serves_the_uppercase_echo_on_tcp_and_udp_then_stops_on_sigint(start_demo):
    demo = start_demo("--port", "0")
    banner = demo.wait_until_serving(ECHO_BOTH)
    port = int(banner.group(1))
    assert banner.group(2, 3) == ("ThreadingTCPServer", "ThreadingUDPServer")

    assert tcp_exchange(port, b"hello over tcp\n") == b"HELLO OVER TCP\n"
    assert udp_exchange(port, b"hello over udp\n") == b"HELLO OVER UDP\n"

    assert_stops_cleanly_on_sigint(demo)
    assert "tcp 127.0.0.1:" in demo.stdout and "b'hello over tcp\\n'" in demo.stdout
    assert "udp 127.0.0.1:" in demo.stdout and "b'hello over udp\\n'" in demo.stdout


def test_no_command_serves_on_the_port_given(start_demo):
    port = free_port_for_tcp_and_udp()
    demo = start_demo("--host", "127.0.0.1", "--port", str(port))
    served_port = int(demo.wait_until_serving(ECHO_BOTH).group(1))

    assert served_port == port
    assert tcp_exchange(port, b"abc") == b"ABC"
    assert udp_exchange(port, b"xyz") == b"XYZ"
    assert_stops_cleanly_on_sigint(demo)


def test_echo_prints_one_line_on_how_to_talk_to_it(start_demo):
    demo = start_demo("echo", "--port", "0")
    banner = demo.wait_until_serving(ECHO_BOTH)
    port, line = banner.group(1), banner.string

    assert f"nc 127.0.0.1 {port}" in line
    assert "nc -u" in line
    assert demo.stdout_lines == [line]
    assert_stops_cleanly_on_sigint(demo)


@pytest.mark.parametrize("family", FAMILIES)
def test_echo_serves_tcp_and_udp_with_each_family(start_demo, tmp_path, family):
    demo = start_demo("echo", "--family", family, "--port", "0")
    banner = demo.wait_until_serving(ECHO_BOTH)
    port = int(banner.group(1))
    assert banner.group(2, 3) == CLASSES[family][:2]

    for number in range(3):
        assert tcp_exchange(port, b"tcp %d\n" % number) == b"TCP %d\n" % number
        assert udp_exchange(port, b"udp %d" % number) == b"UDP %d" % number

    assert_stops_cleanly_on_sigint(demo)
    if family == "forking" and os.path.isdir("/proc/self"):
        assert wait_for_processes_in(tmp_path, 0) == [], "a child process outlived the server"


@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize("family", FAMILIES)
def test_echo_serves_one_transport_with_each_family(start_demo, family, transport):
    demo = start_demo("echo", "--transport", transport, "--family", family, "--port", "0")
    banner = demo.wait_until_serving(ECHO_ONE)
    protocol, port, class_name = banner.group(1), int(banner.group(2)), banner.group(3)
    assert protocol == transport
    assert class_name == CLASSES[family][0 if transport == "tcp" else 1]

    if transport == "tcp":
        assert tcp_exchange(port, b"only tcp\n") == b"ONLY TCP\n"
        assert f"nc 127.0.0.1 {port}`" in banner.string
    else:
        assert udp_exchange(port, b"only udp") == b"ONLY UDP"
        assert f"nc -u -w1 127.0.0.1 {port}`" in banner.string
    assert_stops_cleanly_on_sigint(demo)


@needs_unix
@pytest.mark.parametrize("family", FAMILIES)
def test_echo_serves_a_unix_socket_with_each_family_and_removes_it(start_demo, unix_dir, family):
    path = os.path.join(str(unix_dir), "echo.sock")
    demo = start_demo("echo", "--transport", "unix", "--path", path, "--family", family)
    banner = demo.wait_until_serving(ECHO_UNIX)
    assert banner.group(1, 2) == (path, CLASSES[family][2])
    assert f"nc -U {path}`" in banner.string

    assert unix_exchange(path, b"over a unix socket\n") == b"OVER A UNIX SOCKET\n"
    assert unix_exchange(path, b"again") == b"AGAIN"

    assert_stops_cleanly_on_sigint(demo)
    assert "unix - b'over a unix socket\\n'" in demo.stdout
    assert not os.path.exists(path), "the socket file was left behind"


@pytest.mark.parametrize("family", FAMILIES)
def test_echo_serves_a_tcp_client_while_another_stays_connected(start_demo, tmp_path, family):
    demo = start_demo("echo", "--family", family, "--port", "0")
    port = int(demo.wait_until_serving(ECHO_BOTH).group(1))

    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT):
        # The first client sends nothing; its handler waits, the server does not.
        assert tcp_exchange(port, b"second\n") == b"SECOND\n"
        assert udp_exchange(port, b"third\n") == b"THIRD\n"
        # Ctrl-C must not wait for the silent client either.
        assert_stops_cleanly_on_sigint(demo)
        if family == "forking" and os.path.isdir("/proc/self"):
            # With the client still connected, its request child would wait on forever.
            assert wait_for_processes_in(tmp_path, 0) == [], "a request child outlived it"


@needs_proc
@pytest.mark.skipif("forking" not in FAMILIES, reason="needs os.fork")
def test_forking_echo_stops_cleanly_when_ctrl_c_reaches_the_whole_process_group(
    start_demo, tmp_path
):
    """A terminal's Ctrl-C signals every process of the foreground group: the server, the
    child serving UDP and any request child. Only the server reports it."""
    demo = start_demo("echo", "--family", "forking", "--port", "0")
    port = int(demo.wait_until_serving(ECHO_BOTH).group(1))
    assert tcp_exchange(port, b"a\n") == b"A\n"
    assert udp_exchange(port, b"b") == b"B"
    # Once the request children have exited: the server and the child serving UDP.
    assert len(wait_for_processes_in(tmp_path, 2)) == 2

    with socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT):
        # A request child now waits for this silent client. Let it get past fork(): a SIGINT
        # landing in a child's first microseconds interrupts Python's own after-fork code,
        # which then reports an "exception ignored" (on the stdlib alike).
        assert len(wait_for_processes_in(tmp_path, 3)) == 3
        time.sleep(0.2)
        assert_stops_cleanly_on_sigint(demo, whole_group=True)
    assert demo.stdout.count("stopped") == 1, demo.output()
    assert wait_for_processes_in(tmp_path, 0) == []


def test_echo_answers_many_datagrams_in_a_row(start_demo):
    demo = start_demo("--port", "0")
    port = int(demo.wait_until_serving(ECHO_BOTH).group(1))

    for number in range(20):
        assert udp_exchange(port, b"d%d" % number) == b"D%d" % number
    assert_stops_cleanly_on_sigint(demo)


@pytest.mark.parametrize("family", FAMILIES)
def test_idle_echo_stops_promptly_on_sigint(start_demo, family):
    demo = start_demo("echo", "--family", family, "--port", "0")
    demo.wait_until_serving(ECHO_BOTH)
    time.sleep(0.3)  # let the loops settle into their waits

    assert_stops_cleanly_on_sigint(demo)


@pytest.mark.skipif(shutil.which("nc") is None, reason="needs nc (netcat-openbsd)")
def test_the_printed_nc_commands_work(start_demo):
    demo = start_demo("--port", "0")
    port = int(demo.wait_until_serving(ECHO_BOTH).group(1))

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


def test_echo_port_in_use_exits_1_with_a_message():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--port", str(port))

    assert result.returncode == 1, result
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


@needs_unix
def test_echo_unix_path_in_use_exits_1_and_leaves_the_file(unix_dir):
    path = os.path.join(str(unix_dir), "taken.sock")
    with socket.socket(socket.AF_UNIX) as taken:
        taken.bind(path)
        result = run_cli("echo", "--transport", "unix", "--path", path)

    assert result.returncode == 1, result
    assert f"cannot serve on {path}" in result.stderr
    assert "Traceback" not in result.stderr
    assert os.path.exists(path), "the CLI removed a socket file it did not create"


# --- http --------------------------------------------------------------------------------------


@pytest.fixture
def site(tmp_path):
    """A directory with a text file and a binary file in it."""
    root = tmp_path / "site"
    (root / "docs").mkdir(parents=True)
    (root / "hello.txt").write_bytes(b"hello from socketserver_rs\n")
    (root / "docs" / "blob.bin").write_bytes(bytes(range(256)) * 64)
    return root


def fetch(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=IO_TIMEOUT) as reply:
        return reply.status, reply.headers, reply.read()


def core_module_is_loaded(pid):
    """Whether process ``pid`` has socketserver_rs's extension module mapped."""
    with open(f"/proc/{pid}/maps") as maps:
        return any("_core.abi3" in line for line in maps)


def test_http_serves_files_from_the_directory_to_urllib(start_demo, site):
    demo = start_demo("http", "0", "--bind", "127.0.0.1", "--directory", str(site))
    banner = demo.wait_until_serving(HTTP)
    port = int(banner.group(1))
    assert "on socketserver_rs" in banner.string and str(site) in banner.string

    status, headers, body = fetch(port, "/hello.txt")
    assert (status, body) == (200, b"hello from socketserver_rs\n")
    assert headers["Content-Type"].startswith("text/plain")
    assert fetch(port, "/docs/blob.bin")[2] == bytes(range(256)) * 64
    status, _, listing = fetch(port, "/")
    assert status == 200 and b"hello.txt" in listing and b"docs/" in listing
    with pytest.raises(urllib.error.HTTPError) as missing:
        fetch(port, "/nothing-here")
    assert missing.value.code == 404
    missing.value.close()  # the error holds the response and its socket open
    if os.path.isdir("/proc/self"):
        assert core_module_is_loaded(demo.proc.pid)

    assert_stops_cleanly_on_sigint(demo)
    assert '"GET /hello.txt HTTP/1.1" 200' in demo.stderr  # http.server's request log


def test_http_serves_the_working_directory_by_default(start_demo, tmp_path):
    (tmp_path / "here.txt").write_bytes(b"cwd")
    demo = start_demo("http", "0")  # the child's working directory is tmp_path
    port = int(demo.wait_until_serving(HTTP).group(1))

    assert fetch(port, "/here.txt")[2] == b"cwd"
    assert_stops_cleanly_on_sigint(demo)


def test_http_keeps_connections_alive_and_still_stops_at_once(start_demo, site):
    demo = start_demo("http", "0", "-d", str(site))
    port = int(demo.wait_until_serving(HTTP).group(1))

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=IO_TIMEOUT)
    try:
        for _ in range(3):  # HTTP/1.1: one connection, several requests
            connection.request("GET", "/hello.txt")
            reply = connection.getresponse()
            assert (reply.status, reply.read()) == (200, b"hello from socketserver_rs\n")
        # The connection stays open, its handler thread waiting for the next request.
        assert_stops_cleanly_on_sigint(demo)
    finally:
        connection.close()


def test_http_port_in_use_exits_1_with_a_message(site):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("http", str(port), "--directory", str(site))

    assert result.returncode == 1, result
    assert f"cannot serve on 127.0.0.1:{port}" in result.stderr
    assert os.strerror(errno.EADDRINUSE) in result.stderr
    assert "Traceback" not in result.stderr


# --- options and help --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        (["--bogus"], f"{PROG} echo"),
        (["--port"], f"{PROG} echo"),
        (["--port", "http"], f"{PROG} echo"),
        (["--port", "70000"], f"{PROG} echo"),
        (["--port", "-1"], f"{PROG} echo"),
        (["x"], PROG),
        (["echo", "--transport", "carrier-pigeon"], f"{PROG} echo"),
        (["echo", "--family", "greenlets"], f"{PROG} echo"),
        (["echo", "--transport", "unix"], f"{PROG} echo"),
        (["echo", "--path", "x.sock"], f"{PROG} echo"),
        (["echo", "--transport", "unix", "--path", "x.sock", "--port", "1"], f"{PROG} echo"),
        (["echo", "surplus"], f"{PROG} echo"),
        (["http", "not-a-port"], f"{PROG} http"),
        (["http", "65536"], f"{PROG} http"),
        (["http", "--directory", "/nonexistent/socketserver_rs"], f"{PROG} http"),
        (["http", "8000", "8001"], f"{PROG} http"),
        (["http", "--port", "8000"], f"{PROG} http"),
    ],
    ids=[
        "unknown",
        "missing-value",
        "not-a-number",
        "too-large",
        "negative",
        "unknown-command",
        "unknown-transport",
        "unknown-family",
        "unix-without-path",
        "path-without-unix",
        "port-with-unix",
        "echo-positional",
        "http-port-not-a-number",
        "http-port-too-large",
        "http-missing-directory",
        "http-two-ports",
        "http-port-option",
    ],
)
def test_bad_options_exit_with_status_2_and_usage(args, usage):
    assert_usage_error(run_cli(*args), usage)


def test_help_lists_the_commands_and_exits_0():
    result = run_cli("--help")

    assert result.returncode == 0, result
    assert result.stdout.startswith(f"usage: {PROG}")
    assert "echo" in result.stdout and "http" in result.stdout
    assert "Without a command, runs echo" in result.stdout


@pytest.mark.parametrize("command", [[], ["echo"], ["http"]])
def test_short_help_is_the_long_help(command):
    short, long = run_cli(*command, "-h"), run_cli(*command, "--help")
    assert short.returncode == long.returncode == 0
    assert short.stdout == long.stdout


def test_echo_help_describes_its_options_and_defaults():
    result = run_cli("echo", "--help")

    assert result.returncode == 0, result
    assert result.stdout.startswith(f"usage: {PROG} echo")
    options = ("--transport", "--family", "--host", "--port", "--path", "--tls-cert", "--tls-key")
    for option in (*options, "--tls-client-ca", "--tls-alpn"):
        assert option in result.stdout
    for choice in ("tcp", "udp", "unix", "both", *FAMILIES):
        assert choice in result.stdout
    assert "9999" in result.stdout and "127.0.0.1" in result.stdout


def test_http_help_describes_its_options_and_defaults():
    result = run_cli("http", "--help")

    assert result.returncode == 0, result
    assert result.stdout.startswith(f"usage: {PROG} http")
    for option in ("--directory", "--bind", "port"):
        assert option in result.stdout
    assert "8000" in result.stdout and "127.0.0.1" in result.stdout


def test_version_is_the_installed_distribution_version():
    result = run_cli("--version")

    assert result.returncode == 0, result
    assert result.stdout.strip() == f"{PROG} {importlib.metadata.version('socketserver-rs')}"
    assert result.stderr == ""  # no warning, on 3.15 either, where reading __version__ warns


# --- echo --workers: prefork ---------------------------------------------------------------------

ECHO_PREFORK_TCP = re.compile(r"uppercase echo on tcp 127\.0\.0\.1:(\d+) with Prefork\w+TCPServer;")


@needs_proc
@pytest.mark.skipif(not hasattr(os, "fork"), reason="prefork needs os.fork")
@pytest.mark.parametrize("family", ["threading", "pool", "reactor"])
def test_echo_with_workers_serves_from_that_many_children_and_stops_on_ctrl_c(
    start_demo, tmp_path, family
):
    demo = start_demo(
        "echo", "--transport", "tcp", "--port", "0", "--family", family, "--workers", "2"
    )
    port = int(demo.wait_until_serving(ECHO_PREFORK_TCP).group(1))
    # The parent and its two children all work in the test's directory.
    assert len(wait_for_processes_in(tmp_path, 3)) == 3, demo.output()
    for _ in range(3):
        assert tcp_exchange(port, b"hello\n") == b"HELLO\n"
    assert_stops_cleanly_on_sigint(demo, whole_group=True)
    assert wait_for_processes_in(tmp_path, 0) == []


@needs_proc
@pytest.mark.skipif(not hasattr(os, "fork"), reason="prefork needs os.fork")
def test_echo_with_workers_stops_gracefully_on_sigterm(start_demo, tmp_path):
    demo = start_demo("echo", "--transport", "tcp", "--port", "0", "--workers", "2")
    port = int(demo.wait_until_serving(ECHO_PREFORK_TCP).group(1))
    assert tcp_exchange(port, b"x\n") == b"X\n"
    demo.proc.send_signal(signal.SIGTERM)
    assert demo.proc.wait(timeout=STOP_LIMIT + 9) == 0, demo.output()
    demo.join_readers()
    assert "Traceback" not in demo.stderr, demo.output()
    assert wait_for_processes_in(tmp_path, 0) == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="prefork needs os.fork")
@pytest.mark.parametrize(
    "args",
    [
        ["--workers", "0", "--transport", "tcp"],
        ["--workers", "two", "--transport", "tcp"],
        ["--workers", "2"],  # --transport both: two servers
        ["--workers", "2", "--transport", "tcp", "--family", "forking"],
    ],
)
def test_echo_workers_refuses_what_it_cannot_do(args):
    assert_usage_error(run_cli("echo", *args), "python -m socketserver_rs echo")


# --- echo over TLS (reactor) ---------------------------------------------------------------------

ECHO_TLS = re.compile(
    r"uppercase echo on tcp 127\.0\.0\.1:(\d+) with (\w+) over TLS; try `printf 'hello\\n' \| "
    r"openssl s_client -quiet -connect 127\.0\.0\.1:\d+`"
)
ECHO_TLS_UNIX = re.compile(r"uppercase echo on unix (\S+) with (\w+) over TLS;")


def wait_for_output(demo, text, *, stream="stdout"):
    """Wait (bounded) until ``text`` appears in the child's ``stream``; returns that output."""
    deadline = time.monotonic() + IO_TIMEOUT
    while text not in (output := getattr(demo, stream)):
        if time.monotonic() >= deadline or demo.proc.poll() is not None:
            pytest.fail(f"{text!r} never appeared on {stream}:\n{demo.output()}")
        time.sleep(0.01)
    return output


def tls_connect(material, port=None, *, path=None, **context_options):
    """A TLS client of the echo (handshake done)."""
    if path is not None:
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        raw.settimeout(IO_TIMEOUT)
        raw.connect(path)
    else:
        raw = socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT)
    try:
        return material.client_context(**context_options).wrap_socket(
            raw, server_hostname="localhost"
        )
    except BaseException:
        raw.close()
        raise


def served_name(client):
    return dict(item[0] for item in client.getpeercert()["subject"])["commonName"]


def tls_exchange(client, payload):
    """Send ``payload`` on a TLS client of the echo; its reply, up to the close."""
    with client:
        client.sendall(payload)
        return recv_all(client)


def install_certificate(directory, cert, key):
    """Put ``cert`` and ``key`` at ``directory``/server.{crt,key}, each replaced atomically,
    as a certificate renewal does; the two paths."""
    paths = []
    for source, name in ((cert, "server.crt"), (key, "server.key")):
        staged = directory / f".{name}.new"
        shutil.copyfile(source, staged)
        os.replace(staged, directory / name)
        paths.append(str(directory / name))
    return paths


def test_echo_serves_tls_and_reloads_the_certificate_on_sighup(start_demo, tmp_path, tls_material):
    cert, key = install_certificate(tmp_path, tls_material.server_cert, tls_material.server_key)
    demo = start_demo(
        "echo", "--family", "reactor", "--port", "0", "--tls-cert", cert, "--tls-key", key
    )
    port = int(demo.wait_until_serving(ECHO_TLS).group(1))
    held = tls_connect(tls_material, port)  # open across the reload, handshake done
    assert served_name(held) == "server-one"
    client = tls_connect(tls_material, port)
    assert served_name(client) == "server-one" and client.version() == "TLSv1.3"
    assert tls_exchange(client, b"hello\n") == b"HELLO\n"

    install_certificate(tmp_path, tls_material.second_server_cert, tls_material.second_server_key)
    demo.proc.send_signal(signal.SIGHUP)
    wait_for_output(demo, f"reloaded TLS certificates from {cert}\n")
    client = tls_connect(tls_material, port)
    assert served_name(client) == "server-two"
    assert tls_exchange(client, b"renewed\n") == b"RENEWED\n"
    assert tls_exchange(held, b"still here\n") == b"STILL HERE\n"  # undisturbed

    # A broken renewal is reported; the certificate loaded last goes on serving.
    install_certificate(tmp_path, tls_material.server_cert, tls_material.unrelated_key)
    demo.proc.send_signal(signal.SIGHUP)
    wait_for_output(
        demo, "TLS reload failed, still serving the previous certificates: ", stream="stderr"
    )
    assert key in demo.stderr and "does not match" in demo.stderr, demo.output()
    client = tls_connect(tls_material, port)
    assert served_name(client) == "server-two"
    assert tls_exchange(client, b"x\n") == b"X\n"
    assert_stops_cleanly_on_sigint(demo)


def test_echo_tls_with_a_combined_pem_alpn_and_client_certificates(start_demo, tls_material):
    demo = start_demo(
        "echo",
        "--family",
        "reactor",
        "--port",
        "0",
        "--tls-cert",
        str(tls_material.server_combined),
        "--tls-client-ca",
        str(tls_material.ca_cert),
        "--tls-alpn",
        "echo/1",
        "h2",
    )
    port = int(demo.wait_until_serving(ECHO_TLS).group(1))
    client = tls_connect(tls_material, port, alpn=["h2", "echo/1"], client_cert=True)
    assert client.selected_alpn_protocol() == "echo/1"  # the server's preference
    assert tls_exchange(client, b"mutual\n") == b"MUTUAL\n"
    # No client certificate: refused (in the handshake, or at the first read in TLS 1.3).
    with pytest.raises((ssl.SSLError, ConnectionError)):
        client = tls_connect(tls_material, port)
        tls_exchange(client, b"anonymous\n")
    assert_stops_cleanly_on_sigint(demo)


@needs_unix
def test_echo_serves_tls_on_a_unix_socket(start_demo, unix_dir, tls_material):
    path = os.path.join(str(unix_dir), "tls-echo.sock")
    demo = start_demo(
        "echo",
        "--family",
        "reactor",
        "--transport",
        "unix",
        "--path",
        path,
        "--tls-cert",
        str(tls_material.server_cert),
        "--tls-key",
        str(tls_material.server_key),
    )
    assert demo.wait_until_serving(ECHO_TLS_UNIX).groups() == (path, "ReactorUnixStreamServer")
    assert tls_exchange(tls_connect(tls_material, path=path), b"unix\n") == b"UNIX\n"
    assert_stops_cleanly_on_sigint(demo)
    assert not os.path.exists(path)


def test_echo_tls_with_a_missing_certificate_exits_1_naming_the_file(tmp_path):
    missing = str(tmp_path / "missing.crt")
    result = run_cli("echo", "--family", "reactor", "--port", "0", "--tls-cert", missing)
    assert result.returncode == 1, result
    assert f"cannot serve on 127.0.0.1:0: tls_certfile '{missing}'" in result.stderr, result
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--tls-cert", "c.pem"],  # the default family, threading
        ["--tls-cert", "c.pem", "--family", "pool"],
        ["--tls-cert", "c.pem", "--family", "reactor", "--transport", "udp"],
        ["--tls-cert", "c.pem", "--family", "reactor", "--transport", "both"],
        ["--tls-key", "k.pem", "--family", "reactor"],
        ["--tls-client-ca", "ca.pem", "--family", "reactor"],
        ["--tls-alpn", "h2", "--family", "reactor"],
        ["--tls-alpn", "--tls-cert", "c.pem", "--family", "reactor"],
    ],
    ids=[
        "threading",
        "pool",
        "udp",
        "both",
        "key-without-cert",
        "client-ca-without-cert",
        "alpn-without-cert",
        "alpn-without-protocol",
    ],
)
def test_echo_tls_options_refuse_what_they_cannot_do(args):
    result = run_cli("echo", *args)
    assert_usage_error(result, "python -m socketserver_rs echo")
    assert "tls" in result.stderr.splitlines()[-1].lower(), result.stderr


@needs_proc
@pytest.mark.skipif(not hasattr(os, "fork"), reason="prefork needs os.fork")
def test_echo_tls_with_workers_reloads_the_certificate_on_sighup(
    start_demo, tmp_path, tls_material
):
    cert, key = install_certificate(tmp_path, tls_material.server_cert, tls_material.server_key)
    demo = start_demo(
        "echo",
        "--family",
        "reactor",
        "--transport",
        "tcp",
        "--port",
        "0",
        "--workers",
        "2",
        "--tls-cert",
        cert,
        "--tls-key",
        key,
    )
    banner = re.compile(r"uppercase echo on tcp 127\.0\.0\.1:(\d+) with Prefork\w+ over TLS;")
    port = int(demo.wait_until_serving(banner).group(1))
    client = tls_connect(tls_material, port)
    assert served_name(client) == "server-one"
    assert tls_exchange(client, b"one\n") == b"ONE\n"

    install_certificate(tmp_path, tls_material.second_server_cert, tls_material.second_server_key)
    demo.proc.send_signal(signal.SIGHUP)
    # The new generation of workers serves the new certificate; the old ones drain and stop.
    deadline = time.monotonic() + IO_TIMEOUT
    while True:
        client = tls_connect(tls_material, port)
        if served_name(client) == "server-two":
            break
        client.close()
        assert time.monotonic() < deadline, f"still server-one after SIGHUP:\n{demo.output()}"
        time.sleep(0.05)
    assert tls_exchange(client, b"two\n") == b"TWO\n"
    assert_stops_cleanly_on_sigint(demo, whole_group=True)
    assert wait_for_processes_in(tmp_path, 0) == []
