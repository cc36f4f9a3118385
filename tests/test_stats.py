"""``server.stats()`` against known traffic, for every family: connections accepted or
datagrams received, active connections, requests served, handler errors, accept errors by
errno class (EMFILE from a child process out of descriptors), pool workers and queue,
parked connections, and the reactor's bytes, backpressure pauses and idle-timeout closes.
socketserver_rs only (the stdlib has no stats)."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from _behaviour_helpers import LOOPBACK, read_line, wait_for

pytestmark = pytest.mark.timeout(60)

STREAM_CLASSES = [
    "TCPServer",
    "ThreadingTCPServer",
    "ThreadPoolTCPServer",
    "ThreadPoolTCPServer+get_request",  # an overridden hook: the Python serving path
]
DATAGRAM_CLASSES = ["UDPServer", "ThreadingUDPServer", "ThreadPoolUDPServer"]


def server_class(rs, name):
    base, _, variant = name.partition("+")
    cls = getattr(rs, base)
    attrs = {"handle_error": lambda self, request, address: None}
    if variant == "get_request":
        attrs["get_request"] = lambda self: cls.get_request(self)
    return type(base, (cls,), attrs)


def stream_handler(rs, hold=None):
    class Echo(rs.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                if line == b"boom\n":
                    raise ValueError("boom")
                if line == b"hold\n" and hold is not None:
                    hold.wait(10)
                self.wfile.write(line)

    return Echo


def line_exchange(server, payload):
    with socket.create_connection(server.server_address, timeout=5) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        while client.recv(100):
            pass


@pytest.mark.parametrize("name", STREAM_CLASSES)
def test_stream_server_counts(rs, harness, name):
    hold = threading.Event()
    server = harness.server(server_class(rs, name), (LOOPBACK, 0), stream_handler(rs, hold))
    harness.serve(server)
    for _ in range(5):
        line_exchange(server, b"a\nb\n")
    for _ in range(2):
        line_exchange(server, b"boom\n")
    assert wait_for(lambda: server.stats()["active_connections"] == 0, 5)
    stats = server.stats()
    assert stats["accepted"] == 7
    assert stats["requests"] == 5
    assert stats["handler_errors"] == 2
    assert sum(stats["accept_errors"].values()) == 0
    assert "received" not in stats

    # One connection held open: active while it lasts.
    held = socket.create_connection(server.server_address, timeout=5)
    harness.callback(held.close)
    held.sendall(b"hold\n")
    assert wait_for(lambda: server.stats()["active_connections"] == 1, 5)
    hold.set()
    held.close()
    assert wait_for(lambda: server.stats()["active_connections"] == 0, 5)
    assert server.stats()["accepted"] == 8


@pytest.mark.parametrize("name", DATAGRAM_CLASSES)
def test_datagram_server_counts(rs, harness, name):
    class Reply(rs.DatagramRequestHandler):
        def handle(self):
            data = self.rfile.read()
            if data == b"boom":
                raise ValueError("boom")
            self.wfile.write(data)

    server = harness.server(server_class(rs, name), (LOOPBACK, 0), Reply)
    harness.serve(server)
    client = harness.socket(type=socket.SOCK_DGRAM)
    client.settimeout(5)
    for _ in range(4):
        client.sendto(b"x", server.server_address)
        assert client.recv(10) == b"x"
    client.sendto(b"boom", server.server_address)
    # A handler is counted once it has returned, which is after its reply went out.
    assert wait_for(lambda: server.stats()["handler_errors"] == 1, 5)
    assert wait_for(lambda: server.stats()["requests"] == 4, 5)
    stats = server.stats()
    assert stats["received"] == 5
    assert stats["handler_errors"] == 1
    assert "accepted" not in stats and "active_connections" not in stats


def test_pool_workers_busy_and_idle(rs, harness):
    hold = threading.Event()
    harness.callback(hold.set)
    server = harness.server(
        rs.ThreadPoolTCPServer, (LOOPBACK, 0), stream_handler(rs, hold), max_workers=3
    )
    assert server.stats()["pool"] == {"workers": 0, "busy": 0, "idle": 0, "queued": 0}
    harness.serve(server)
    clients = []
    for _ in range(2):
        client = socket.create_connection(server.server_address, timeout=5)
        harness.callback(client.close)
        client.sendall(b"hold\n")
        clients.append(client)
    assert wait_for(lambda: server.stats()["pool"]["busy"] == 2, 5)
    hold.set()
    for client in clients:
        assert client.recv(10) == b"hold\n"
        client.close()
    assert wait_for(lambda: server.stats()["pool"] == {**server.stats()["pool"], "busy": 0}, 5)
    pool = server.stats()["pool"]
    assert pool["idle"] == pool["workers"] == 2
    assert pool["queued"] == 0


def test_parked_connections_and_first_byte_timeouts(rs, harness):
    server = harness.server(
        rs.ThreadPoolTCPServer,
        (LOOPBACK, 0),
        stream_handler(rs),
        dispatch_when_readable=True,
        first_byte_timeout=0.3,
    )
    harness.serve(server)
    silent = [socket.create_connection(server.server_address, timeout=5) for _ in range(3)]
    for client in silent:
        harness.callback(client.close)
    assert wait_for(lambda: server.stats()["parked"] == 3, 5)
    assert server.stats()["active_connections"] == 3
    assert server.stats()["pool"]["busy"] == 0
    for client in silent:
        assert client.recv(10) == b""  # closed after the first-byte timeout
    assert wait_for(lambda: server.stats()["first_byte_timeouts"] == 3, 5)
    stats = server.stats()
    assert stats["parked"] == 0
    assert stats["active_connections"] == 0
    assert stats["requests"] == 0


# The reactor ---------------------------------------------------------------------------------


def reactor_server(rs, harness, cls=None, **attrs):
    class Echo(rs.MessageHandler):
        framing = "line"

        def handle_message(self, message):
            if message.strip() == b"boom":
                raise ValueError("boom")
            if message.strip() == b"big":
                return b"x" * 200_000
            return message

    server = harness.server(
        cls or rs.ReactorTCPServer,
        (LOOPBACK, 0),
        Echo,
        handle_error=lambda self, handler, address: None,
        **attrs,
    )
    harness.serve(server)
    return server


@pytest.mark.parametrize("handler_threads", [0, 2])
def test_reactor_stream_counts_messages_and_bytes(rs, harness, handler_threads):
    server = reactor_server(rs, harness, handler_threads=handler_threads)
    for _ in range(3):
        with socket.create_connection(server.server_address, timeout=5) as client:
            client.sendall(b"hello\nworld\n")
            received = b""
            while len(received) < 12:
                received += client.recv(100)
            assert received == b"hello\nworld\n"
    with socket.create_connection(server.server_address, timeout=5) as client:
        client.sendall(b"boom\n")
        assert client.recv(10) == b""  # a failed handler's connection is closed
    assert wait_for(lambda: server.stats()["active_connections"] == 0, 5)
    stats = server.stats()
    assert stats["accepted"] == 4
    assert stats["requests"] == 6
    assert stats["handler_errors"] == 1
    assert stats["bytes_in"] == 3 * 12 + 5
    assert stats["bytes_out"] == 3 * 12
    assert stats["idle_timeouts"] == 0


def test_reactor_idle_timeout_closes_are_counted(rs, harness):
    server = reactor_server(rs, harness, idle_timeout=0.2)
    clients = [socket.create_connection(server.server_address, timeout=5) for _ in range(2)]
    for client in clients:
        harness.callback(client.close)
        assert client.recv(10) == b""
    assert wait_for(lambda: server.stats()["idle_timeouts"] == 2, 5)
    assert server.stats()["active_connections"] == 0


def test_reactor_backpressure_pauses_are_counted(rs, harness):
    server = reactor_server(rs, harness, write_buffer_limit=64 * 1024)
    client = socket.socket()
    harness.callback(client.close)
    # A small receive buffer, and no reading: replies pile up in the server.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.settimeout(5)
    client.connect(server.server_address)
    client.sendall(b"big\n" * 20)
    assert wait_for(lambda: server.stats()["backpressure_pauses"] >= 1, 5)


def test_reactor_datagram_counts(rs, harness):
    server = reactor_server(rs, harness, cls=rs.ReactorUDPServer)
    client = harness.socket(type=socket.SOCK_DGRAM)
    client.settimeout(5)
    for _ in range(3):
        client.sendto(b"ping", server.server_address)
        assert client.recv(10) == b"ping"
    client.sendto(b"boom", server.server_address)
    assert wait_for(lambda: server.stats()["handler_errors"] == 1, 5)
    stats = server.stats()
    assert stats["received"] == 4
    assert stats["requests"] == 3
    assert stats["bytes_in"] == 16
    assert stats["bytes_out"] == 12


# EMFILE ---------------------------------------------------------------------------------------

EMFILE_CHILD = r"""
import errno, json, os, resource, signal, socket, sys, threading, time
import socketserver_rs as ss

signal.alarm(30)  # hang guard
name, _, variant = sys.argv[1].partition("+")
if name.startswith("Reactor"):
    class Handler(ss.MessageHandler):
        framing = "line"
        def handle_message(self, message):
            return message
else:
    class Handler(ss.StreamRequestHandler):
        def handle(self):
            self.wfile.write(self.rfile.readline())
attrs = {}
if variant == "get_request":
    base = getattr(ss, name)
    attrs["get_request"] = lambda self: base.get_request(self)
server = type(name, (getattr(ss, name),), attrs)(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
time.sleep(0.2)
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
filler = []
while True:
    try:
        filler.append(os.open(os.devnull, os.O_RDONLY))
    except OSError as error:
        assert error.errno == errno.EMFILE
        break
print(json.dumps({"port": server.server_address[1]}), flush=True)
sys.stdin.readline()  # the parent's client waits in the backlog
time.sleep(0.3)  # the server keeps failing to accept it
for fd in filler:
    os.close(fd)
time.sleep(0.5)  # now it is accepted and served
print(json.dumps(server.stats()), flush=True)
"""


@pytest.mark.parametrize(
    "name", ["TCPServer", "TCPServer+get_request", "ThreadPoolTCPServer", "ReactorTCPServer"]
)
def test_emfile_on_accept_is_counted(harness, name):
    proc = harness.popen(
        [sys.executable, "-c", EMFILE_CHILD, name],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    line = read_line(proc, 20.0)
    assert line, proc.stderr.read()
    port = json.loads(line)["port"]
    client = harness.socket()
    client.settimeout(10)
    client.connect((LOOPBACK, port))  # completes in the backlog
    client.sendall(b"hi\n")
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    assert client.recv(10) == b"hi\n"
    line = read_line(proc, 10.0)
    assert line, proc.stderr.read()
    stats = json.loads(line)
    assert stats["accept_errors"]["EMFILE"] >= 1, stats
    assert stats["accepted"] == 1
    proc.wait(10)


def test_stats_reading_does_not_wait_for_a_busy_server(rs, harness):
    """stats() reads atomics: it answers while every worker is busy and the serving thread
    is waiting, without waiting for either."""
    hold = threading.Event()
    harness.callback(hold.set)
    server = harness.server(
        rs.ThreadPoolTCPServer, (LOOPBACK, 0), stream_handler(rs, hold), max_workers=1
    )
    harness.serve(server)
    client = socket.create_connection(server.server_address, timeout=5)
    harness.callback(client.close)
    client.sendall(b"hold\n")
    assert wait_for(lambda: server.stats()["pool"]["busy"] == 1, 5)
    started = time.monotonic()
    for _ in range(1000):
        server.stats()
    assert time.monotonic() - started < 5.0


@pytest.mark.parametrize(
    "name", ["UnixStreamServer", "ThreadPoolUnixStreamServer", "ReactorUnixStreamServer"]
)
def test_unix_stream_server_counts(rs, harness, unix_dir, name):
    if name.startswith("Reactor"):

        class Handler(rs.MessageHandler):
            framing = "line"

            def handle_message(self, message):
                return message

    else:
        Handler = stream_handler(rs)
    path = os.path.join(unix_dir, "stats.sock")
    server = harness.server(getattr(rs, name), path, Handler)
    harness.serve(server)
    for _ in range(3):
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(5)
            client.connect(path)
            client.sendall(b"hi\n")
            assert client.recv(10) == b"hi\n"
    assert wait_for(lambda: server.stats()["active_connections"] == 0, 5)
    stats = server.stats()
    assert stats["accepted"] == 3
    assert stats["requests"] == 3


def test_forking_server_counts_connections_in_the_parent(rs, harness):
    """Handlers run in the children: the parent sees connections, not requests."""
    server = harness.server(rs.ForkingTCPServer, (LOOPBACK, 0), stream_handler(rs))
    harness.serve(server)
    for _ in range(2):
        line_exchange(server, b"a\n")
    assert wait_for(lambda: server.stats()["active_connections"] == 0, 5)
    stats = server.stats()
    assert stats["accepted"] == 2
    assert stats["requests"] == 0
