"""Property tests of the reactor's framing, through a real ``ReactorTCPServer``.

Hypothesis draws lists of messages, encodes them for the framing, cuts the byte stream at
random points into separate writes and sends it over a fresh loopback connection; the
server must receive exactly those messages, in order. Every message is acknowledged, so
the client knows when the server has seen them all without closing the connection.

One server per framing serves the whole module (a new connection per example), so the
examples are cheap; ``max_message_size`` is small, so messages at and near the limit come up
often. The Rust framer's own unit tests are in ``rust/framing.rs``, and ``fuzz/`` fuzzes it.
"""

import itertools
import socket
import struct
import sys
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from socketserver_rs import MessageHandler, ReactorTCPServer

LIMIT = 64  # max_message_size of every server here
TIMEOUT = 5.0
ACK = b"."

PROPERTY_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class RecordingHandler(MessageHandler):
    max_message_size = LIMIT

    def handle_message(self, message):
        self.server.received.setdefault(self.client_address, []).append(message)
        return self.reply(message)

    def reply(self, message):
        return ACK


class RecordingServer(ReactorTCPServer):
    def __init__(self, *args, **kwargs):
        self.received = {}
        self.errors = []
        super().__init__(*args, **kwargs)

    def handle_error(self, handler, client_address):
        self.errors.append((client_address, repr(sys.exception())))


def _handler(framing):
    attributes = {"framing": framing}
    if framing == "raw":
        attributes["reply"] = lambda self, message: message  # echo: the client counts bytes
    return type(f"{framing.title()}Recorder", (RecordingHandler,), attributes)


@pytest.fixture(scope="module")
def servers():
    """One running server per framing, shut down and closed at the end of the module."""
    running = {}
    try:
        for framing in ("raw", "line", "length32"):
            server = RecordingServer(("127.0.0.1", 0), _handler(framing))
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            running[framing] = (server, thread)
            thread.start()
        yield {framing: server for framing, (server, _) in running.items()}
    finally:
        for server, thread in running.values():
            if thread.is_alive():
                stopper = threading.Thread(target=server.shutdown, daemon=True)
                stopper.start()
                stopper.join(TIMEOUT)
                thread.join(TIMEOUT)
            server.server_close()


def encode(framing, messages):
    if framing == "line":
        return b"".join(m + b"\n" for m in messages)
    if framing == "length32":
        return b"".join(struct.pack(">I", len(m)) + m for m in messages)
    return b"".join(messages)


def split(data, cuts):
    """``data`` cut at the given offsets (any order, duplicates ignored)."""
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


def draw_pieces(draw, wire):
    """``wire`` cut at up to 20 points drawn within it."""
    cuts = draw(st.lists(st.integers(min_value=0, max_value=len(wire)), max_size=20))
    return split(wire, cuts)


def connect(server):
    client = socket.create_connection(server.server_address, timeout=TIMEOUT)
    client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def recv_exactly(sock, n):
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


def send_in_pieces(sock, pieces):
    for piece in pieces:
        sock.sendall(piece)
        time.sleep(0.001)  # give the server a chance to read each piece on its own


def acks(framing, count):
    return (struct.pack(">I", len(ACK)) + ACK if framing == "length32" else ACK) * count


# Line messages: no newline inside; with the newline they are at most LIMIT bytes.
line_messages = st.lists(
    st.binary(max_size=LIMIT - 1).map(lambda m: m.replace(b"\n", b"")), max_size=25
)
# length32 payloads: any bytes, up to and including LIMIT.
length32_messages = st.lists(st.binary(max_size=LIMIT), max_size=25)


@PROPERTY_SETTINGS
@given(messages=line_messages, data=st.data())
def test_line_framing_delivers_exactly_the_lines_sent_however_the_stream_is_split(
    servers, messages, data
):
    server = servers["line"]
    with connect(server) as client:
        send_in_pieces(client, draw_pieces(data.draw, encode("line", messages)))
        assert recv_exactly(client, len(acks("line", len(messages)))) == acks("line", len(messages))
        received = server.received.pop(client.getsockname(), [])
    assert received == [m + b"\n" for m in messages]
    assert server.errors == []


@PROPERTY_SETTINGS
@given(messages=length32_messages, data=st.data())
def test_length32_framing_delivers_exactly_the_payloads_sent_however_the_stream_is_split(
    servers, messages, data
):
    server = servers["length32"]
    with connect(server) as client:
        send_in_pieces(client, draw_pieces(data.draw, encode("length32", messages)))
        expected_acks = acks("length32", len(messages))
        assert recv_exactly(client, len(expected_acks)) == expected_acks
        received = server.received.pop(client.getsockname(), [])
    assert received == messages
    assert server.errors == []


@PROPERTY_SETTINGS
@given(stream=st.binary(min_size=1, max_size=1000), data=st.data())
def test_raw_framing_delivers_the_bytes_in_order_in_reads_of_at_most_the_limit(
    servers, stream, data
):
    server = servers["raw"]
    with connect(server) as client:
        send_in_pieces(client, draw_pieces(data.draw, stream))
        assert recv_exactly(client, len(stream)) == stream
        received = server.received.pop(client.getsockname(), [])
    assert b"".join(received) == stream
    assert all(0 < len(m) <= LIMIT for m in received)
    assert server.errors == []


@PROPERTY_SETTINGS
@given(
    framing=st.sampled_from(["line", "length32"]),
    first=st.lists(st.binary(max_size=LIMIT - 1), max_size=10),
    second=st.lists(st.binary(max_size=LIMIT - 1), max_size=10),
    data=st.data(),
)
def test_interleaved_writes_on_two_connections_keep_each_connections_messages_apart(
    servers, framing, first, second, data
):
    if framing == "line":
        first = [m.replace(b"\n", b"") for m in first]
        second = [m.replace(b"\n", b"") for m in second]
    server = servers[framing]
    with connect(server) as a, connect(server) as b:
        pieces_a = draw_pieces(data.draw, encode(framing, first))
        pieces_b = draw_pieces(data.draw, encode(framing, second))
        for i in range(max(len(pieces_a), len(pieces_b))):
            for client, pieces in ((a, pieces_a), (b, pieces_b)):
                if i < len(pieces):
                    client.sendall(pieces[i])
            time.sleep(0.001)
        for client, messages in ((a, first), (b, second)):
            expected_acks = acks(framing, len(messages))
            assert recv_exactly(client, len(expected_acks)) == expected_acks
        got_a = server.received.pop(a.getsockname(), [])
        got_b = server.received.pop(b.getsockname(), [])
    suffix = b"\n" if framing == "line" else b""
    assert got_a == [m + suffix for m in first]
    assert got_b == [m + suffix for m in second]
    assert server.errors == []
