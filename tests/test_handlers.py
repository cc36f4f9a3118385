"""Request handlers: the setup/handle/finish template, StreamRequestHandler's rfile/wfile,
timeout and Nagle settings, and DatagramRequestHandler's replies."""

import array
import io
import os
import socket
import threading

import pytest
from _behaviour_helpers import (
    LOOPBACK,
    needs_unix,
    recv_until_eof,
)
from socketserver_rs.testing import HalfClose, Recv, RecvAll, Send, compare

# Bounded per test, well above what any test needs, so a hang fails fast.
pytestmark = pytest.mark.timeout(60)


# The modules compare() runs a test on, by name.
MODULE_NAMES = ("socketserver", "socketserver_rs")


def serve_one(harness, server, payload=b"", half_close=True):
    """Connect a client, send ``payload``, serve one request; return the client's reading
    of the reply (until EOF)."""
    client = harness.connect(server, payload)
    if half_close:
        client.shutdown(socket.SHUT_WR)
    server.handle_request()
    return recv_until_eof(client)


# BaseRequestHandler -------------------------------------------------------------------------


def test_handler_gets_request_client_address_and_server_then_runs_setup_handle_finish(ss, harness):
    seen = []

    class Handler(ss.BaseRequestHandler):
        def setup(self):
            seen.append(("setup", self.request, self.client_address, self.server))

        def handle(self):
            seen.append("handle")

        def finish(self):
            seen.append("finish")

    server = harness.server(ss.TCPServer, (LOOPBACK, 0), Handler, timeout=5.0)
    client = harness.connect(server)
    server.handle_request()
    (_, request, client_address, handler_server), *rest = seen
    assert rest == ["handle", "finish"]
    assert isinstance(request, socket.socket)
    assert client_address == client.getsockname()
    assert handler_server is server


# The tests below with no ``ss`` argument run on both modules at once, through the plugin's
# compare(): the same scripted clients must see the same replies and closes from each, and
# handle_error() must be called for the same exceptions; they then check what both did.


def test_handler_finish_runs_even_when_handle_raises():
    seen = {}

    def make_server(ss):
        log = seen[ss.__name__] = []

        class Handler(ss.BaseRequestHandler):
            def handle(self):
                raise RuntimeError("handle failed")

            def finish(self):
                log.append("finish")

        class Server(ss.TCPServer):
            def handle_error(self, request, client_address):
                log.append("handle_error")

        return Server((LOOPBACK, 0), Handler)

    transcript = compare(make_server, [RecvAll()])
    assert seen == {name: ["finish", "handle_error"] for name in MODULE_NAMES}
    assert transcript.errors == ("RuntimeError: handle failed",)
    assert transcript.replies == ((b"",),)


def test_handler_skips_handle_and_finish_when_setup_raises():
    seen = {}

    def make_server(ss):
        log = seen[ss.__name__] = []

        class Handler(ss.BaseRequestHandler):
            def setup(self):
                raise RuntimeError("setup failed")

            def handle(self):
                log.append("handle")

            def finish(self):
                log.append("finish")

        class Server(ss.TCPServer):
            def handle_error(self, request, client_address):
                log.append("handle_error")

        return Server((LOOPBACK, 0), Handler)

    transcript = compare(make_server, [RecvAll()])
    assert seen == {name: ["handle_error"] for name in MODULE_NAMES}
    assert transcript.errors == ("RuntimeError: setup failed",)


def test_base_handler_methods_are_no_ops(ss):
    handler = ss.BaseRequestHandler.__new__(ss.BaseRequestHandler)
    assert handler.setup() is None
    assert handler.handle() is None
    assert handler.finish() is None


# StreamRequestHandler -----------------------------------------------------------------------


def make_stream_server(ss, harness, handle, address=None, server_cls=None, **handler_attrs):
    attrs = dict(handler_attrs)

    def wrapped(self):
        self.server.handlers.append(self)
        return handle(self)

    attrs["handle"] = wrapped
    handler = type("Handler", (ss.StreamRequestHandler,), attrs)
    server = harness.server(server_cls or ss.TCPServer, address or (LOOPBACK, 0), handler)
    server.timeout = 5.0
    server.handlers = []
    return server


def test_stream_handler_rfile_is_buffered_and_wfile_is_an_unbuffered_socket_writer(ss, harness):
    types = {}

    def handle(self):
        types["rfile"] = type(self.rfile)
        types["wfile"] = self.wfile
        types["connection_is_request"] = self.connection is self.request
        types["wfile_fileno"] = self.wfile.fileno() == self.request.fileno()
        types["writable"] = self.wfile.writable()
        self.wfile.write(self.rfile.readline())

    server = make_stream_server(ss, harness, handle)
    assert serve_one(harness, server, b"line\nrest") == b"line\n"
    assert types["rfile"] is io.BufferedReader
    assert isinstance(types["wfile"], io.BufferedIOBase)
    assert type(types["wfile"]).__name__ == "_SocketWriter"
    assert types["connection_is_request"] is True
    assert types["wfile_fileno"] is True
    assert types["writable"] is True


def test_stream_handler_with_rbufsize_zero_reads_through_a_raw_socketio(ss, harness):
    types = {}

    def handle(self):
        types["rfile"] = type(self.rfile)
        self.wfile.write(self.rfile.read(4))

    server = make_stream_server(ss, harness, handle, rbufsize=0)
    assert serve_one(harness, server, b"abcd") == b"abcd"
    # socketserver_rs's is a SocketIO subclass with a native readinto() (a documented
    # difference; tests/test_native_read.py compares the two).
    assert issubclass(types["rfile"], socket.SocketIO)


def test_stream_handler_with_wbufsize_buffers_writes_and_finish_flushes_them(ss, harness):
    types = {}

    def handle(self):
        types["wfile"] = type(self.wfile)
        self.wfile.write(b"buffered")  # no flush: finish() must send it

    server = make_stream_server(ss, harness, handle, wbufsize=-1)
    assert serve_one(harness, server) == b"buffered"
    assert types["wfile"] is io.BufferedWriter


@pytest.mark.parametrize(
    "payload",
    [b"bytes", bytearray(b"bytearray"), memoryview(b"view"), array.array("i", [1, 2, 3])],
    ids=["bytes", "bytearray", "memoryview", "int-array"],
)
def test_wfile_write_returns_the_byte_count(ss, harness, payload):
    counts = []

    def handle(self):
        counts.append(self.wfile.write(payload))

    server = make_stream_server(ss, harness, handle)
    reply = serve_one(harness, server)
    expected = memoryview(payload).nbytes
    assert counts == [expected]
    assert reply == bytes(memoryview(payload).cast("B"))


def test_wfile_write_sends_at_once_without_a_flush(ss, harness):
    """The handler writes, then waits for the client's answer to what it wrote: a write that
    stayed in a buffer would leave both sides waiting (bounded by the timeouts)."""
    answers = []

    def handle(self):
        self.wfile.write(b"question\n")
        answers.append(self.rfile.readline())

    server = make_stream_server(ss, harness, handle, timeout=5.0)
    client = harness.connect(server)
    results = []

    def talk():
        line = client.makefile("rb").readline()
        results.append(line)
        client.sendall(b"answer to " + line)
        client.shutdown(socket.SHUT_WR)

    thread = harness.thread(talk)
    server.handle_request()
    thread.join(5)
    assert results == [b"question\n"]
    assert answers == [b"answer to question\n"]


def test_stream_handler_timeout_is_set_on_the_connection(ss, harness):
    seen = {}

    class Server(ss.TCPServer):
        def handle_error(self, request, client_address):
            import sys

            seen["error"] = sys.exc_info()[0]

    def handle(self):
        seen["timeout"] = self.connection.gettimeout()
        self.rfile.readline()  # the client sends nothing

    handler = type(
        "Handler",
        (ss.StreamRequestHandler,),
        {"timeout": 0.2, "handle": handle},
    )
    server = harness.server(Server, (LOOPBACK, 0), handler, timeout=5.0)
    client = harness.connect(server)
    server.handle_request()
    assert seen["timeout"] == 0.2
    assert seen["error"] is TimeoutError
    assert recv_until_eof(client) == b""


def test_stream_handler_without_timeout_leaves_the_connection_blocking(ss, harness):
    seen = {}

    def handle(self):
        seen["timeout"] = self.connection.gettimeout()

    server = make_stream_server(ss, harness, handle)
    serve_one(harness, server)
    assert seen["timeout"] is None


@pytest.mark.parametrize("disable", [False, True])
def test_disable_nagle_algorithm_controls_tcp_nodelay(ss, harness, disable):
    """With the server's ``tcp_nodelay`` opt-out off (socketserver_rs sets TCP_NODELAY on
    accepted connections by default, a deliberate difference pinned in
    test_deliberate_differences.py; the stdlib has no such attribute), the handler's
    ``disable_nagle_algorithm`` alone decides."""
    seen = {}

    def handle(self):
        seen["nodelay"] = self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    server = make_stream_server(ss, harness, handle, disable_nagle_algorithm=disable)
    server.tcp_nodelay = False
    serve_one(harness, server)
    assert bool(seen["nodelay"]) is disable


def test_disable_nagle_algorithm_sets_tcp_nodelay_whatever_the_server_default(ss, harness):
    seen = {}

    def handle(self):
        seen["nodelay"] = self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

    server = make_stream_server(ss, harness, handle, disable_nagle_algorithm=True)
    serve_one(harness, server)
    assert seen["nodelay"]


def test_stream_handler_finish_closes_rfile_and_wfile(ss, harness):
    def handle(self):
        self.wfile.write(b"x")

    server = make_stream_server(ss, harness, handle)
    serve_one(harness, server)
    (handler,) = server.handlers
    assert handler.rfile.closed
    assert handler.wfile.closed


def stream_server_on(handle, **handler_attrs):
    """For compare(): ``make_server(ss)`` giving a TCPServer whose StreamRequestHandler runs
    ``handle``."""

    def make_server(ss):
        handler = type("Handler", (ss.StreamRequestHandler,), {"handle": handle, **handler_attrs})
        return ss.TCPServer((LOOPBACK, 0), handler)

    return make_server


def test_stream_handler_finish_tolerates_a_wfile_closed_by_the_handler():
    def handle(self):
        self.wfile.write(b"bye")
        self.wfile.close()

    transcript = compare(stream_server_on(handle, wbufsize=-1), [HalfClose(), RecvAll()])
    assert transcript.replies == ((b"bye",),)
    assert transcript.errors == ()


def test_stream_handler_reads_lines_and_answers_each():
    def handle(self):
        for _ in range(10):
            line = self.rfile.readline()
            if not line:
                break
            self.wfile.write(line.upper())

    client = [Send(b"one\ntwo\nthree\n"), HalfClose(), RecvAll()]
    transcript = compare(stream_server_on(handle), client)
    assert transcript.replies == ((b"ONE\nTWO\nTHREE\n",),)


def test_stream_handler_handles_a_large_transfer():
    blob = os.urandom(1 << 20)

    def handle(self):
        data = self.rfile.read(len(blob))
        self.wfile.write(data[::-1])

    client = [Send(blob), HalfClose(), RecvAll(limit=len(blob) + 1)]
    transcript = compare(stream_server_on(handle), client, timeout=10.0)
    assert transcript.replies == ((blob[::-1],),)


@needs_unix
def test_stream_handler_works_on_a_unix_stream_server(ss, harness, unix_dir):
    def handle(self):
        self.wfile.write(b"unix:" + self.rfile.readline())

    server = make_stream_server(
        ss,
        harness,
        handle,
        address=os.path.join(str(unix_dir), "s"),
        server_cls=ss.UnixStreamServer,
    )
    assert serve_one(harness, server, b"hi\n") == b"unix:hi\n"
    assert server.handlers[0].client_address == ""


def test_stream_handler_on_a_threading_server_serves_clients_concurrently(ss, harness):
    barrier = threading.Barrier(3, timeout=5)

    def handle(self):
        barrier.wait()  # all three handlers must be running at once
        self.wfile.write(self.rfile.readline())

    handler = type("Handler", (ss.StreamRequestHandler,), {"handle": handle})
    server = harness.server(ss.ThreadingTCPServer, (LOOPBACK, 0), handler)
    harness.serve(server)
    replies = []
    threads = [
        harness.thread(lambda i=i: replies.append(harness.exchange(server, b"%d\n" % i)))
        for i in range(3)
    ]
    for thread in threads:
        thread.join(5)
    assert sorted(replies) == [b"0\n", b"1\n", b"2\n"]


# DatagramRequestHandler ---------------------------------------------------------------------


def datagram_server(ss, harness, cls, address, handle):
    handler = type("Handler", (ss.DatagramRequestHandler,), {"handle": handle})
    server = harness.server(cls, address, handler)
    server.timeout = 5.0
    return server


def test_datagram_handler_replies_with_what_was_written_to_wfile(ss, harness):
    seen = {}

    def handle(self):
        seen["packet"] = self.packet
        seen["socket_is_server_socket"] = self.socket is self.server.socket
        seen["rfile"] = type(self.rfile)
        seen["wfile"] = type(self.wfile)
        self.wfile.write(b"reply:" + self.rfile.read())

    server = datagram_server(ss, harness, ss.UDPServer, (LOOPBACK, 0), handle)
    client = harness.datagram_client(server)
    client.sendto(b"query", server.server_address)
    server.handle_request()
    data, sender = client.recvfrom(100)
    assert data == b"reply:query"
    assert sender == server.server_address
    assert seen == {
        "packet": b"query",
        "socket_is_server_socket": True,
        "rfile": io.BytesIO,
        "wfile": io.BytesIO,
    }


def test_datagram_handler_sends_an_empty_datagram_when_nothing_was_written():
    def make_server(ss):
        handler = type("Handler", (ss.DatagramRequestHandler,), {"handle": lambda self: None})
        return ss.UDPServer((LOOPBACK, 0), handler)

    transcript = compare(make_server, [Send(b"silence"), Recv(100)])
    assert transcript.replies == ((b"",),)


@needs_unix
def test_datagram_handler_replies_to_a_bound_unix_datagram_client(unix_dir):
    def handle(self):
        self.wfile.write(self.rfile.read().upper())

    def make_server(ss):
        handler = type("Handler", (ss.DatagramRequestHandler,), {"handle": handle})
        return ss.UnixDatagramServer(os.path.join(str(unix_dir), f"d-{ss.__name__}"), handler)

    # compare() binds the client to a path of its own, so that the reply can reach it.
    transcript = compare(make_server, [Send(b"unix datagram"), Recv(100)])
    assert transcript.replies == ((b"UNIX DATAGRAM",),)


def test_datagram_handler_on_a_threading_udp_server(ss, harness):
    def handle(self):
        self.wfile.write(threading.current_thread().name.encode())

    server = datagram_server(ss, harness, ss.ThreadingUDPServer, (LOOPBACK, 0), handle)
    client = harness.datagram_client(server)
    client.sendto(b"x", server.server_address)
    server.handle_request()
    assert client.recv(100) != threading.current_thread().name.encode()
