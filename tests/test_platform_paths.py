"""The platform layer's two implementations (rust/sys/): Linux's fast paths and the portable
ones that macOS and the BSDs run, which ``SOCKETSERVER_RS_PORTABLE=1`` forces on Linux.

Each check runs a child process, since the choice is made once, when the native module is
imported. The child serves real clients over the engine (TCP and UDP) and the reactor (TCP
and UDP), and reports what the kernel saw: how its listener is registered in the epoll set
(``/proc/self/fdinfo``: level-triggered on the Linux path, mio's edge-triggered registration
on the portable one) and, under ``strace``, which system calls accepted and received.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import socketserver_rs
from _child_process import child_env

linux_only = pytest.mark.skipif(
    sys.platform != "linux", reason="the Linux fast paths, and /proc, exist on Linux only"
)

CHILD = r"""
import json, os, socket, threading
import socketserver_rs as ss
from socketserver_rs import _core

EPOLLET = 1 << 31


def registrations(fd):
    # The event masks `fd` is registered with in this process's epoll sets.
    masks = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/self/fdinfo/{name}") as info:
                lines = info.readlines()
        except OSError:
            continue  # closed meanwhile
        for line in lines:
            fields = line.split()
            if fields[:1] == ["tfd:"] and int(fields[1]) == fd:
                masks.append(int(fields[3], 16))
    return masks


class Upper(ss.StreamRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.readline().upper())


class UpperDatagram(ss.DatagramRequestHandler):
    def handle(self):
        self.wfile.write(self.rfile.read().upper())


class UpperMessage(ss.MessageHandler):
    framing = "line"

    def handle_message(self, message):
        return message.upper()


def serve(server, exchange):
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        replies = [exchange(server.server_address) for _ in range(3)]
        return replies, registrations(server.fileno())
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


def over_tcp(address):
    with socket.create_connection(address, timeout=10) as client:
        client.sendall(b"ping\n")
        return client.makefile("rb").readline().decode()


def over_udp(address):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        client.sendto(b"ping", address)
        return client.recv(64).decode()


report = {"paths": _core.platform_paths()}
for name, server, exchange in [
    ("tcp", ss.TCPServer(("127.0.0.1", 0), Upper), over_tcp),
    ("udp", ss.UDPServer(("127.0.0.1", 0), UpperDatagram), over_udp),
    ("reactor_tcp", ss.ReactorTCPServer(("127.0.0.1", 0), UpperMessage), over_tcp),
    ("reactor_udp", ss.ReactorUDPServer(("127.0.0.1", 0), UpperMessage), over_udp),
]:
    replies, masks = serve(server, exchange)
    report[name] = {
        "replies": replies,
        "edge_triggered": [bool(mask & EPOLLET) for mask in masks],
    }
print(json.dumps(report))
"""


def run_child(portable, *, strace_log=None):
    env = child_env()
    env.pop("SOCKETSERVER_RS_PORTABLE", None)
    if portable is not None:
        env["SOCKETSERVER_RS_PORTABLE"] = portable
    command = [sys.executable, "-c", CHILD]
    if strace_log is not None:
        # Only the calls that differ between the paths; -f: the serving threads too.
        calls = "accept,accept4,recvmmsg,recvmsg"
        command = ["strace", "-f", "-qq", "-e", f"trace={calls}", "-o", strace_log, *command]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def test_the_paths_in_use_are_reported():
    expected = "linux" if sys.platform == "linux" else "portable"
    if os.environ.get("SOCKETSERVER_RS_PORTABLE") == "1":
        expected = "portable"
    assert socketserver_rs._core.platform_paths() == expected


@linux_only
@pytest.mark.parametrize(
    ("portable", "paths", "edge_triggered"),
    [(None, "linux", False), ("0", "linux", False), ("", "linux", False), ("1", "portable", True)],
    ids=["unset", "0", "empty", "1"],
)
def test_the_variable_chooses_how_the_listener_is_registered(portable, paths, edge_triggered):
    report = run_child(portable)
    assert report.pop("paths") == paths
    for name, served in report.items():
        expected = "PING\n" if name.endswith("tcp") else "PING"
        assert served["replies"] == [expected] * 3, name
        # Registered once, in the serving call's own epoll set; level-triggered on the Linux
        # path, edge-triggered (and re-armed before each wait) on the portable one.
        assert served["edge_triggered"] == [edge_triggered], name


def strace_works():
    if shutil.which("strace") is None:
        return False
    probe = subprocess.run(
        ["strace", "-qq", "-e", "trace=none", sys.executable, "-c", "pass"],
        capture_output=True,
        timeout=30,
    )
    return probe.returncode == 0


@linux_only
@pytest.mark.skipif(
    not strace_works(), reason="needs strace, allowed to trace (ptrace) in this environment"
)
@pytest.mark.parametrize(("portable", "paths"), [(None, "linux"), ("1", "portable")])
def test_the_variable_chooses_the_system_calls(tmp_path, portable, paths):
    log = tmp_path / "strace.log"
    report = run_child(portable, strace_log=str(log))
    assert report["paths"] == paths
    calls = {
        name: len(re.findall(rf"\b{name}\(", log.read_text()))
        for name in ("accept4", "accept", "recvmmsg", "recvmsg")
    }
    # The engine accepts 3 clients and the reactor 3 more; the reactor receives 3 datagrams.
    # Python itself accepts nothing here (its clients only connect).
    if paths == "linux":
        assert calls["accept4"] >= 6 and calls["accept"] == 0, calls
        assert calls["recvmmsg"] >= 3 and calls["recvmsg"] == 0, calls
    else:
        assert calls["accept"] >= 6 and calls["accept4"] == 0, calls
        assert calls["recvmsg"] >= 3 and calls["recvmmsg"] == 0, calls


def test_an_invalid_value_fails_the_import_with_a_clear_error():
    env = child_env()
    env["SOCKETSERVER_RS_PORTABLE"] = "yes"
    done = subprocess.run(
        [sys.executable, "-c", "import socketserver_rs"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "ValueError: SOCKETSERVER_RS_PORTABLE must be '1'" in done.stderr
    assert "'yes'" in done.stderr or '"yes"' in done.stderr
