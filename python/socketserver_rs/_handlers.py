"""Request handlers: the base template (setup, handle, finish) and the stream and datagram
handlers that give it file-like ``rfile`` and ``wfile``.
"""

import socket
from io import BufferedIOBase, BytesIO

from . import _core

__all__ = ["BaseRequestHandler", "DatagramRequestHandler", "StreamRequestHandler"]


class BaseRequestHandler:
    """One instance per request: the constructor calls ``setup()``, ``handle()`` and, even
    if ``handle()`` raised, ``finish()``.

    ``self.request`` is the connected socket (streams) or ``(data, server_socket)``
    (datagrams); ``self.client_address`` and ``self.server`` are what they say.
    """

    def __init__(self, request, client_address, server):
        self.request = request
        self.client_address = client_address
        self.server = server
        self.setup()
        try:
            self.handle()
        finally:
            self.finish()

    def setup(self):
        pass

    def handle(self):
        pass

    def finish(self):
        pass


class _SocketWriter(BufferedIOBase):
    """An unbuffered, write-only file on a socket: every ``write()`` sends all of its data
    at once (a signal cannot cut it short) and returns its length.

    On a plain ``socket.socket`` the native ``send_all`` does the work and keeps the GIL
    while the kernel takes the data without waiting; other sockets (``ssl.SSLSocket`` …)
    must go through their own ``sendall()``.
    """

    def __init__(self, sock):
        self._sock = sock
        self._native = type(sock) is socket.socket

    def writable(self):
        return True

    def write(self, b):
        if self._native:
            return _core.send_all(self._sock, b)
        self._sock.sendall(b)
        with memoryview(b) as view:
            return view.nbytes

    def fileno(self):
        return self._sock.fileno()


class StreamRequestHandler(BaseRequestHandler):
    """A handler for stream connections with ``self.rfile`` and ``self.wfile``.

    Class attributes: ``rbufsize`` (-1: default buffering for reads), ``wbufsize`` (0: each
    write is sent at once), ``timeout`` (applied to the connection if not None) and
    ``disable_nagle_algorithm`` (set TCP_NODELAY).
    """

    rbufsize = -1
    wbufsize = 0
    timeout = None
    disable_nagle_algorithm = False

    def setup(self):
        self.connection = self.request
        if self.timeout is not None:
            self.connection.settimeout(self.timeout)
        if self.disable_nagle_algorithm:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
        self.rfile = self.connection.makefile("rb", self.rbufsize)
        if self.wbufsize == 0:
            self.wfile = _SocketWriter(self.connection)
        else:
            self.wfile = self.connection.makefile("wb", self.wbufsize)

    def finish(self):
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
        self.packet, self.socket = self.request
        self.rfile = BytesIO(self.packet)
        self.wfile = BytesIO()

    def finish(self):
        self.socket.sendto(self.wfile.getvalue(), self.client_address)
