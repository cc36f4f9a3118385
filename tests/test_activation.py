"""Socket activation and inherited listeners: ``listen_fds()``, ``Server.from_socket()``,
``sd_notify`` and the CLI's ``--fd``. socketserver_rs only (the stdlib has none of it).

The activation tests use a real parent process that binds the sockets, moves them to
descriptors 3, 4 …, sets ``LISTEN_FDS``/``LISTEN_PID``/``LISTEN_FDNAMES`` and execs the
server (the same process id, as systemd does it), and systemd's own
``systemd-socket-activate`` where it is installed.
"""

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from _behaviour_helpers import LOOPBACK, read_line, wait_for
from _child_process import WITH_DEFAULT_SIGINT, child_env

pytestmark = pytest.mark.timeout(60)

LAUNCHER = r"""
import fcntl, json, os, socket, sys

spec = json.loads(sys.argv[1])
sockets = []
for family, kind, address in spec["sockets"]:
    sock = socket.socket(getattr(socket, family), getattr(socket, kind))
    sock.bind(tuple(address) if isinstance(address, list) else address)
    if kind == "SOCK_STREAM":
        sock.listen(16)
    sockets.append(sock)
print(json.dumps([sock.getsockname() for sock in sockets]), flush=True)
# Out of the way first, then onto 3, 4 … (dup2 leaves them inheritable).
high = [fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD, 100) for sock in sockets]
for sock in sockets:
    sock.close()
for index, fd in enumerate(high):
    os.dup2(fd, 3 + index)
    os.close(fd)
os.environ["LISTEN_FDS"] = str(len(high))
os.environ["LISTEN_PID"] = str(os.getpid())  # exec keeps the process id
if spec["names"]:
    os.environ["LISTEN_FDNAMES"] = ":".join(spec["names"])
os.execv(sys.executable, [sys.executable, *spec["argv"]])
"""

SERVER = r"""
import json, os, socket, sys, threading
import socketserver_rs as ss

passed = ss.listen_fds(with_names=True)
left = [name for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES") if name in os.environ]


class Echo(ss.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"stream:" + self.rfile.readline())


class Datagram(ss.DatagramRequestHandler):
    def handle(self):
        self.wfile.write(b"datagram:" + self.rfile.read())


class Message(ss.MessageHandler):
    framing = "line"

    def handle_message(self, message):
        return b"reactor:" + message


CLASSES = {
    "pool": (ss.ThreadPoolTCPServer, Echo),
    "udp": (ss.UDPServer, Datagram),
    "unix": (ss.ReactorUnixStreamServer, Message),
    "reactor": (ss.ReactorTCPServer, Message),
}
servers = []
for name, sock in passed:
    cls, handler = CLASSES[name]
    server = cls.from_socket(sock, handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    servers.append(server)
print(json.dumps({
    "names": [name for name, _ in passed],
    "fds": [sock.fileno() for _, sock in passed],
    "families": [sock.family.name for _, sock in passed],
    "types": [sock.type.name for _, sock in passed],
    "inheritable": [sock.get_inheritable() for _, sock in passed],
    "addresses": [server.server_address for server in servers],
    "left": left,
}), flush=True)
sys.stdin.read()  # until the test closes our stdin
for server in servers:
    server.shutdown()
    server.server_close()
"""


def launch(harness, sockets, argv, names=(), env=None, stdin=subprocess.PIPE):
    spec = {"sockets": sockets, "argv": argv, "names": list(names)}
    proc = harness.popen(
        [*WITH_DEFAULT_SIGINT, "-c", LAUNCHER, json.dumps(spec)],
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env or child_env(),
        start_new_session=True,
    )
    line = read_line(proc, 20.0)
    assert line, proc.stderr.read()
    return proc, json.loads(line)


def unix_listening(path):
    """Whether a socket bound at ``path`` listens (/proc/net/unix's __SO_ACCEPTCON flag): the
    path exists from bind(), and a connect() before listen() is refused."""
    with open("/proc/net/unix") as table:
        next(table)
        for line in table:
            fields = line.split()
            if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & 0x10000:
                return True
    return False


def stream_exchange(family, address, payload):
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(address)
        client.sendall(payload)
        received = b""
        while not received.endswith(b"\n"):
            chunk = client.recv(100)
            assert chunk, received
            received += chunk
        return received


def test_listen_fds_hands_a_real_child_its_sockets_and_every_family_serves_them(harness, unix_dir):
    path = os.path.join(unix_dir, "activated.sock")
    sockets = [
        ["AF_INET", "SOCK_STREAM", [LOOPBACK, 0]],
        ["AF_INET", "SOCK_DGRAM", [LOOPBACK, 0]],
        ["AF_UNIX", "SOCK_STREAM", path],
        ["AF_INET", "SOCK_STREAM", [LOOPBACK, 0]],
    ]
    names = ["pool", "udp", "unix", "reactor"]
    proc, bound = launch(harness, sockets, ["-c", SERVER], names)
    report = json.loads(read_line(proc, 20.0) or b"null")
    assert report is not None, proc.stderr.read()
    assert report["names"] == names
    assert report["fds"] == [3, 4, 5, 6]
    assert report["families"] == ["AF_INET", "AF_INET", "AF_UNIX", "AF_INET"]
    assert report["types"] == ["SOCK_STREAM", "SOCK_DGRAM", "SOCK_STREAM", "SOCK_STREAM"]
    assert report["inheritable"] == [False] * 4  # close-on-exec, as sd_listen_fds leaves them
    assert report["left"] == []  # the variables were cleared
    # The servers serve on the very sockets the parent bound.
    assert [tuple(a) for a in report["addresses"][:2]] == [tuple(a) for a in bound[:2]]
    assert stream_exchange(socket.AF_INET, tuple(bound[0]), b"a\n") == b"stream:a\n"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        client.sendto(b"b", tuple(bound[1]))
        assert client.recv(100) == b"datagram:b"
    assert stream_exchange(socket.AF_UNIX, path, b"c\n") == b"reactor:c\n"
    assert stream_exchange(socket.AF_INET, tuple(bound[3]), b"d\n") == b"reactor:d\n"
    proc.stdin.close()
    assert proc.wait(10) == 0, proc.stderr.read()


def test_listen_fds_ignores_descriptors_meant_for_another_process(rs, monkeypatch):
    monkeypatch.setenv("LISTEN_FDS", "1")
    monkeypatch.setenv("LISTEN_PID", str(os.getppid()))
    monkeypatch.setenv("LISTEN_FDNAMES", "x")
    assert rs.listen_fds() == []
    assert "LISTEN_FDS" not in os.environ and "LISTEN_PID" not in os.environ
    assert "LISTEN_FDNAMES" not in os.environ


def test_listen_fds_without_the_variables_is_empty(rs, monkeypatch):
    monkeypatch.delenv("LISTEN_FDS", raising=False)
    assert rs.listen_fds() == []


@pytest.mark.parametrize(
    ("fds", "pid", "message"),
    [("two", None, "LISTEN_FDS is not a number"), ("1", "me", "LISTEN_PID is not")],
)
def test_listen_fds_refuses_malformed_variables(rs, monkeypatch, fds, pid, message):
    monkeypatch.setenv("LISTEN_FDS", fds)
    if pid is not None:
        monkeypatch.setenv("LISTEN_PID", pid)
    with pytest.raises(ValueError, match=message):
        rs.listen_fds()


def test_listen_fds_refuses_a_descriptor_that_is_not_a_socket(rs, harness):
    # In a child: descriptor 3 there is a pipe, not a socket.
    code = (
        "import os, socketserver_rs as ss\n"
        "r, w = os.pipe()\n"
        "os.dup2(r, 3)\n"
        "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
        "try:\n"
        "    ss.listen_fds()\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert "descriptor 3, which is not a socket" in result.stdout, result.stderr


# from_socket -------------------------------------------------------------------------------


def test_from_socket_keeps_the_creators_backlog_and_address(rs, harness):
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    sock.listen(3)
    server = rs.TCPServer.from_socket(sock, rs.StreamRequestHandler)
    harness.callback(server.server_close)
    assert server.socket is sock
    assert server.server_address == sock.getsockname()


def test_from_socket_listens_on_a_bound_socket_that_does_not_yet(rs, harness):
    sock = socket.socket()
    sock.bind((LOOPBACK, 0))
    server = rs.TCPServer.from_socket(sock, rs.StreamRequestHandler)
    harness.callback(server.server_close)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


def test_from_socket_refuses_the_wrong_socket_type_and_unbound_sockets(rs, harness):
    udp = harness.socket(type=socket.SOCK_DGRAM)
    udp.bind((LOOPBACK, 0))
    with pytest.raises(ValueError, match="serves SOCK_STREAM sockets"):
        rs.ThreadPoolTCPServer.from_socket(udp, rs.StreamRequestHandler)
    with pytest.raises(ValueError, match="needs a bound socket"):
        rs.ReactorTCPServer.from_socket(harness.socket(), rs.MessageHandler)
    with pytest.raises(TypeError, match=r"socket\.socket"):
        rs.TCPServer.from_socket(3, rs.StreamRequestHandler)


# sd_notify -----------------------------------------------------------------------------------


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, monkeypatch, unix_dir):
    """A datagram socket standing in for the service manager; NOTIFY_SOCKET names it."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.settimeout(5)
    if request.param == "path":
        address = os.path.join(unix_dir, "notify.sock")
        receiver.bind(address)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
    else:
        name = f"socketserver_rs-test-{os.getpid()}-{id(receiver)}"
        receiver.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
    yield receiver
    receiver.close()


def test_sd_notify_sends_the_states_in_one_datagram(rs, notify_socket):
    assert rs.sd_notify("READY=1", "STATUS=serving") is True
    assert notify_socket.recv(100) == b"READY=1\nSTATUS=serving"


def test_sd_notify_without_notify_socket_does_nothing(rs, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert rs.sd_notify("READY=1") is False


def test_sd_notify_refuses_an_address_it_cannot_use(rs, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    with pytest.raises(ValueError, match="NOTIFY_SOCKET"):
        rs.sd_notify("READY=1")


@pytest.mark.parametrize("name", ["TCPServer", "ThreadPoolTCPServer", "ReactorTCPServer"])
def test_serving_says_ready_and_stopping(rs, harness, notify_socket, name):
    cls = getattr(rs, name)
    handler = rs.MessageHandler if name.startswith("Reactor") else rs.StreamRequestHandler
    server = harness.server(cls, (LOOPBACK, 0), handler)
    serving = harness.serve(server)
    assert notify_socket.recv(100) == b"READY=1"
    server.shutdown()
    assert wait_for(lambda: serving.returned.is_set(), 5)
    assert notify_socket.recv(100) == b"STOPPING=1"


# The command line ---------------------------------------------------------------------------


def read_stderr_until(proc, marker, timeout=10.0):
    """Lines of the child's stderr until one contains ``marker`` (binary pipe)."""
    fd = proc.stderr.fileno()
    deadline = time.monotonic() + timeout
    buffer = b""
    while time.monotonic() < deadline:
        for line in buffer.split(b"\n"):
            if marker in line:
                return line.decode()
        readable, _, _ = select.select([fd], [], [], 0.1)
        if readable:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buffer += chunk
    pytest.fail(f"no {marker!r} on stderr: {buffer!r}")


@pytest.mark.parametrize("family", ["threading", "pool", "reactor"])
def test_cli_echo_serves_an_inherited_socket_and_logs_stats(harness, family):
    argv = ["-m", "socketserver_rs", "echo", "--fd", "3", "--family", family]
    argv += ["--stats-interval", "0.2"]
    proc, bound = launch(harness, [["AF_INET", "SOCK_STREAM", [LOOPBACK, 0]]], argv)
    banner = read_line(proc, 20.0)
    assert b"uppercase echo on tcp" in banner, proc.stderr.read()
    assert stream_exchange(socket.AF_INET, tuple(bound[0]), b"hello\n") == b"HELLO\n"
    line = read_stderr_until(proc, b"accepted=1 ")
    assert " stats " in line and "requests=1" in line, line
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0


def test_cli_http_serves_an_inherited_socket(harness, tmp_path):
    (tmp_path / "hello.txt").write_text("hi there")
    argv = ["-m", "socketserver_rs", "http", "--fd", "3", "-d", str(tmp_path)]
    proc, bound = launch(harness, [["AF_INET", "SOCK_STREAM", [LOOPBACK, 0]]], argv)
    assert b"over HTTP" in read_line(proc, 20.0), proc.stderr.read()
    host, port = bound[0]
    with urllib.request.urlopen(f"http://{host}:{port}/hello.txt", timeout=5) as response:
        assert response.read() == b"hi there"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0


def test_cli_fd_errors(harness):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "socketserver_rs", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=child_env(),
        )

    not_open = run("echo", "--fd", "97")
    assert not_open.returncode == 1
    assert "descriptor 97 is not an open socket" in not_open.stderr
    both = run("echo", "--fd", "3", "--port", "1")
    assert both.returncode == 2
    assert "--fd serves the inherited socket" in both.stderr
    assert run("echo", "--stats-interval", "0").returncode == 2


@pytest.mark.skipif(
    shutil.which("systemd-socket-activate") is None,
    reason="systemd-socket-activate is not installed (Debian: package systemd)",
)
def test_systemd_socket_activate_starts_the_cli_with_readiness(harness, unix_dir):
    """systemd's own activation tool as the parent: it binds, passes descriptor 3 with a
    name and execs the server on the first connection; readiness goes to NOTIFY_SOCKET."""
    path = os.path.join(unix_dir, "sa.sock")
    notify_name = f"socketserver_rs-sa-{os.getpid()}"
    receiver = harness.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + notify_name)
    receiver.settimeout(10)
    argv = [
        "systemd-socket-activate",
        "-l",
        path,
        "--fdname=echo",
        "-E",
        "PYTHONUNBUFFERED=1",
        "-E",
        f"NOTIFY_SOCKET=@{notify_name}",
        sys.executable,
        "-m",
        "socketserver_rs",
        "echo",
        "--fd",
        "3",
        "--family",
        "pool",
    ]
    proc = harness.popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    assert wait_for(lambda: unix_listening(path), 10), proc.stderr.read()
    assert stream_exchange(socket.AF_UNIX, path, b"hi\n") == b"HI\n"
    assert receiver.recv(100) == b"READY=1"
    proc.send_signal(signal.SIGINT)
    assert proc.wait(10) == 0
    assert receiver.recv(100) == b"STOPPING=1"
