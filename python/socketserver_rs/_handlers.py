"""Request handlers: the base template (setup, handle, finish) and the stream and datagram
handlers that give it file-like ``rfile`` and ``wfile``.
"""

import socket
from io import DEFAULT_BUFFER_SIZE, BufferedIOBase, BufferedReader, BytesIO
from typing import TYPE_CHECKING

from . import _core

# Types are in PEP 484 type comments, so that the runtime signatures stay the stdlib's
# (see _servers.py). Ruff does not read type comments: hence the noqa on their imports.
if TYPE_CHECKING:
    from typing import Any, BinaryIO  # noqa: F401

    from typing_extensions import Buffer  # noqa: F401

    from ._servers import Address, BaseServer  # noqa: F401

__all__ = ["BaseRequestHandler", "DatagramRequestHandler", "StreamRequestHandler"]


class BaseRequestHandler:
    """One instance per request: the constructor calls ``setup()``, ``handle()`` and, even
    if ``handle()`` raised, ``finish()``.

    ``self.request`` is the connected socket (streams) or ``(data, server_socket)``
    (datagrams); ``self.client_address`` and ``self.server`` are what they say.
    """

    def __init__(self, request, client_address, server):
        # type: (Any, Address, BaseServer) -> None
        self.request = request  # type: Any
        self.client_address = client_address  # type: Address
        self.server = server
        self.setup()
        try:
            self.handle()
        finally:
            self.finish()

    def setup(self):
        # type: () -> None
        """Runs before ``handle()``; the default does nothing."""

    def handle(self):
        # type: () -> None
        """Serve the request; the default does nothing. Override this."""

    def finish(self):
        # type: () -> None
        """Runs after ``handle()``, even when it raised; the default does nothing."""


class _SocketWriter(BufferedIOBase):
    """An unbuffered, write-only file on a socket: every ``write()`` sends all of its data
    with ``sendall()`` (a signal cannot cut it short) and returns its length, as the
    stdlib's ``_SocketWriter`` does.

    ``write()`` is native (``_core.SocketWriter``): it calls ``sendall()`` and counts the
    bytes without running Python code. ``sendall()`` releases the GIL around every
    ``send()``. A native send that kept it (the kernel nearly always takes a reply at once)
    was measured against this with 1, 16 and 256 connections, each server in a session of
    its own: not faster at 1 connection, and slower at 256, with more context switches per
    request (benches/README.md).
    """

    def __init__(self, sock):
        # type: (socket.socket) -> None
        self._sock = sock
        # The native write (sock.sendall(b), then the length of b) in the instance dict
        # shadows the method below: one Python frame and one memoryview less per write. No
        # reference cycle: the native object holds sock.sendall, not this file.
        self.write = _core.SocketWriter(sock).write  # type: ignore[method-assign]

    def writable(self):
        # type: () -> bool
        return True

    def write(self, b):
        # type: (Buffer) -> int
        self._sock.sendall(b)
        with memoryview(b) as view:
            return view.nbytes

    def fileno(self):
        # type: () -> int
        return self._sock.fileno()


def _reader(sock, bufsize):
    # type: (socket.socket, int | None) -> Any
    """``sock.makefile("rb", bufsize)``, with a native raw reader on a plain
    ``socket.socket`` (other sockets, ``ssl.SSLSocket`` …, read through their own
    ``recv_into()``): the same ``BufferedReader`` on top (none when ``bufsize`` is 0), the
    same reference on the socket, so that it stays open while the file is."""
    if type(sock) is not socket.socket:
        return sock.makefile("rb", bufsize)
    raw = _SocketReader(sock, "rb")
    # _io_refs is socket.socket's private count of open makefile() files (not in typeshed);
    # counting ours keeps the socket open while rfile is, as makefile() does.
    sock._io_refs += 1  # type: ignore[attr-defined]
    if bufsize is None or bufsize < 0:
        bufsize = DEFAULT_BUFFER_SIZE
    if bufsize == 0:
        return raw
    return BufferedReader(raw, bufsize)


class _SocketReader(socket.SocketIO):
    """``makefile()``'s raw reader (``SocketIO``) with a native ``readinto()``: after a
    read that filled the buffer it first reads with the GIL held, and otherwise waits and
    reads without it, honouring the socket's timeout as ``recv_into()`` does. ``fileno()``,
    ``name`` and the rest are ``SocketIO``'s own."""

    def __init__(self, sock, mode):
        # type: (socket.socket, str) -> None
        # typeshed types SocketIO's mode as a Literal; "rb" is one of its values at runtime.
        super().__init__(sock, mode)  # type: ignore[arg-type]
        self._native = _core.SocketReader(sock)
        # The native bound method in the instance dict shadows the method below, so that
        # BufferedReader's refills (and RawIOBase.read() when unbuffered) call straight into
        # Rust, with no Python frame per read. The native reader keeps SocketIO's closed and
        # timed-out checks itself, and holds the socket, not this file: no reference cycle, so
        # an rfile dropped unclosed is still closed (and the socket's _io_refs released) at once.
        self.readinto = self._native.readinto  # type: ignore[method-assign]

    def readinto(self, b):
        # type: (Buffer) -> int | None
        """What the instance's native ``readinto`` does, for callers that go through the
        class (``_SocketReader.readinto(raw, b)``)."""
        return self._native.readinto(b)

    def close(self):
        # type: () -> None
        self._native.close()
        super().close()


class StreamRequestHandler(BaseRequestHandler):
    """A handler for stream connections with ``self.rfile`` and ``self.wfile``.

    Class attributes: ``rbufsize`` (-1: default buffering for reads), ``wbufsize`` (0: each
    write is sent at once), ``timeout`` (applied to the connection if not None) and
    ``disable_nagle_algorithm`` (set TCP_NODELAY).
    """

    rbufsize = -1  # type: int
    wbufsize = 0  # type: int
    timeout = None  # type: float | None
    disable_nagle_algorithm = False  # type: bool

    def setup(self):
        # type: () -> None
        """Apply ``timeout`` and ``disable_nagle_algorithm`` to the connection and make
        ``rfile`` and ``wfile``."""
        self.connection = self.request  # type: Any
        if self.timeout is not None:
            self.connection.settimeout(self.timeout)
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        # Binary files, typed as the stdlib's are (BinaryIO), though neither makefile()'s
        # result nor _SocketWriter is nominally one.
        self.rfile = _reader(self.connection, self.rbufsize)  # type: BinaryIO
        if self.wbufsize == 0:
            self.wfile = _SocketWriter(self.connection)  # type: BinaryIO  # type: ignore[assignment]
        else:
            self.wfile = self.connection.makefile("wb", self.wbufsize)

    def finish(self):
        # type: () -> None
        """Flush ``wfile`` (a peer that went away is not an error here), then close both
        files."""
        if not self.wfile.closed:
            try:
                self.wfile.flush()
            except OSError:
                pass  # the peer went away; what is left in the buffer cannot be delivered
        self.wfile.close()
        self.rfile.close()


class DatagramRequestHandler(BaseRequestHandler):
    """A handler for datagrams: ``self.rfile`` reads the datagram, and what is written to
    ``self.wfile`` is sent back to the client as one datagram when the handler finishes."""

    def setup(self):
        # type: () -> None
        """Unpack the request into ``packet`` and ``socket``; ``rfile`` reads the packet."""
        self.packet, self.socket = self.request  # type: bytes, socket.socket
        self.rfile = BytesIO(self.packet)
        self.wfile = BytesIO()

    def finish(self):
        # type: () -> None
        """Send what was written to ``wfile`` back to the client, as one datagram."""
        self.socket.sendto(self.wfile.getvalue(), self.client_address)
