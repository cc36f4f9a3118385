"""The server classes: ``BaseServer`` and its TCP, UDP and Unix-domain subclasses.

They keep the stdlib's shape (the same attributes, defaults and template-method hooks, called
in the same order) and hand every wait to a Rust ``Engine``: ``serve_forever()``,
``handle_request()`` and ``shutdown()`` are thin calls into it.
"""

import socket
import sys
import traceback
from typing import TYPE_CHECKING

from . import _activation, _core
from ._fastpath import default_hook
from ._stats import server_stats

# Types are given in PEP 484 type comments in this module (and in _mixins and _handlers):
# the classes here stand in for the stdlib's, whose methods carry no annotations, and
# `inspect.signature()` of every method must stay equal to the stdlib's (tests/test_api.py).
# Ruff does not read type comments: hence the noqa on imports only they use.
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Self, TypeAlias  # noqa: F401

    # An address as the socket module takes and returns it: (host, port) or an IPv6
    # 4-tuple, a path (str or bytes) for Unix sockets, None for an unbound datagram peer.
    Address: TypeAlias = Any
    # Whatever is called as RequestHandlerClass(request, client_address, server). Loose on
    # purpose: the stdlib's own handlers (http.server's …) are typed against the stdlib's
    # BaseServer, and must still be accepted.
    HandlerFactory: TypeAlias = Callable[..., object]

__all__ = ["BaseServer", "TCPServer", "UDPServer", "UnixDatagramServer", "UnixStreamServer"]


def print_request_error(client_address):
    # type: (Address) -> None
    """Print the exception being handled to ``sys.stderr``, between rules, naming the client:
    what every server's default ``handle_error()`` does."""
    rule = "-" * 40
    print(rule, file=sys.stderr)
    print("Exception occurred during processing of request from", client_address, file=sys.stderr)
    traceback.print_exc()
    print(rule, file=sys.stderr)


class BaseServer:
    """The base of every server: the request loop, its hooks and shutdown.

    Methods for the caller:

    - ``__init__(server_address, RequestHandlerClass)``
    - ``serve_forever(poll_interval=0.5)``
    - ``shutdown()``
    - ``handle_request()``  # when not using serve_forever
    - ``service_actions()``
    - ``server_close()``
    - ``fileno() -> int``   # for waiting on the server's socket

    Methods that may be overridden:

    - ``server_bind()``, ``server_activate()``
    - ``get_request() -> (request, client_address)``
    - ``handle_timeout()``
    - ``verify_request(request, client_address)``
    - ``server_close()``
    - ``process_request(request, client_address)``
    - ``shutdown_request(request)``, ``close_request(request)``
    - ``service_actions()``
    - ``handle_error(request, client_address)``

    Attributes subclasses may set: ``timeout`` (seconds ``handle_request()`` waits, None for
    no limit), ``address_family``, ``socket_type``, ``allow_reuse_address``,
    ``allow_reuse_port``.

    Instance attributes: ``server_address``, ``RequestHandlerClass``, ``socket``.

    Names starting with ``_rs_`` are this package's internals; the prefix keeps them clear
    of subclass and mixin names (``xmlrpc.server``'s dispatcher has a ``_dispatch``, say).
    """

    timeout = None  # type: float | None

    if TYPE_CHECKING:
        # Provided by subclasses (TCPServer and UDPServer define them), as in the stdlib.
        def get_request(self) -> tuple[Any, Address]: ...

    def __init__(self, server_address, RequestHandlerClass):
        # type: (Address, HandlerFactory) -> None
        self.server_address = server_address  # type: Address
        self.RequestHandlerClass = RequestHandlerClass
        self._rs_engine = _core.Engine()

    # The stdlib keeps its sticky shutdown flag in a name-mangled attribute; code that pokes
    # at it keeps working because it is the engine's flag under the same name.
    @property
    def __shutdown_request(self):
        # type: () -> bool
        return self._rs_engine.shutdown_requested

    @__shutdown_request.setter
    def __shutdown_request(self, value):
        # type: (object) -> None
        self._rs_engine.shutdown_requested = bool(value)

    def server_activate(self):
        # type: () -> None
        """Called by the constructor to start listening. May be overridden."""

    def serve_forever(self, poll_interval=0.5):
        # type: (float | None) -> None
        """Serve one request at a time until ``shutdown()`` is called.

        The wait happens in Rust with the GIL released and ends as soon as ``shutdown()`` is
        called. ``service_actions()`` runs after every request and at least every
        ``poll_interval`` seconds; with ``poll_interval=None`` it runs only after requests and
        an idle server never wakes up.
        """
        _activation.notify_quietly("READY=1")  # a no-op unless NOTIFY_SOCKET is set
        try:
            pool = getattr(self, "_rs_worker_pool", None)
            self._rs_engine.serve_forever(self, poll_interval, pool)
        finally:
            _activation.notify_quietly("STOPPING=1")

    @classmethod
    def from_socket(cls, sock, RequestHandlerClass, *args, **kwargs):
        # type: (type[Self], socket.socket, HandlerFactory, *Any, **Any) -> Self
        """A server on ``sock``, an already bound (usually listening) socket, instead of a
        newly bound one: from ``listen_fds()``, a supervisor, or the previous process of a
        restart. Not in the stdlib. The class is built with ``bind_and_activate=False``
        (extra arguments follow the handler class), takes ``sock`` as its ``socket``, and
        runs ``server_bind()``/``server_activate()`` without binding again or re-listening.
        """
        return _activation.from_socket(cls, sock, RequestHandlerClass, *args, **kwargs)

    def shutdown(self, timeout=None):
        # type: (float | None) -> None
        """Stop ``serve_forever()`` and wait until it has stopped.

        Called from another thread it returns as soon as the loop has ended. Called from the
        serving thread itself (from a handler of a non-threading server) it only asks the loop
        to stop after the current request, instead of deadlocking as the stdlib does.

        ``timeout`` (beyond the stdlib, which takes no argument): once the loop has stopped
        accepting, also wait up to that many seconds for the requests in flight on request
        threads or pool workers to finish (a graceful drain). None: return once the loop has
        stopped, as the stdlib does.
        """
        self._rs_engine.shutdown()
        if timeout is not None:
            self._rs_wait_idle(timeout)

    def _rs_wait_idle(self, timeout):
        # type: (float | None) -> bool
        """Wait up to ``timeout`` seconds for requests in flight; True once there are none.
        A server that serves on its loop's thread has none once the loop has stopped; the
        concurrency mixins override this."""
        return True

    @default_hook()
    def service_actions(self):
        # type: () -> None
        """Called by ``serve_forever()`` after each request and on idle wakeups.

        May be overridden by a subclass or mixin to do periodic work, such as reaping children.
        """

    def handle_request(self):
        # type: () -> object
        """Wait for one request and serve it.

        Waits at most ``min(self.socket.gettimeout(), self.timeout)`` (either may be None) and
        calls ``handle_timeout()`` if nothing came in that time.
        """
        return self._rs_engine.handle_request(self)

    @default_hook()
    def _handle_request_noblock(self):
        # type: () -> None
        """Serve the request the socket has ready; the engine calls this when it is readable.

        An ``OSError`` from ``get_request()`` is swallowed, as in the stdlib, but its errno is
        passed on to the engine, which backs off from a listener that keeps failing for lack
        of descriptors instead of spinning on it.
        """
        try:
            request, client_address = self.get_request()
        except OSError as error:
            self._rs_engine.note_acquire_error(error.errno)
            return
        self._rs_engine.note_acquired()
        self._rs_serve_acquired(request, client_address)

    def _rs_serve_acquired(self, request, client_address):
        # type: (Any, Address) -> None
        """Verify and process an acquired request; the engine's fast path calls this (and
        counts the request as acquired itself, saving a call back into it)."""
        if not self.verify_request(request, client_address):
            self.shutdown_request(request)
            return
        try:
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
        except BaseException:
            self.shutdown_request(request)
            raise

    def _rs_request_failed(self, request, client_address, error):
        # type: (Any, Address, BaseException) -> None
        """The engine served a request with stock hooks itself (see ``_fastpath``) and the
        handler raised ``error``: what ``_rs_serve_acquired`` does then, with ``error``
        being handled (``handle_error()`` reads it from ``sys.exc_info()``)."""
        try:
            raise error
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)
        except BaseException:
            self.shutdown_request(request)
            raise

    def handle_timeout(self):
        # type: () -> None
        """Called when ``handle_request()`` times out. May be overridden."""

    @default_hook()
    def verify_request(self, request, client_address):
        # type: (Any, Address) -> bool
        """Return True to serve the request, False to drop it. May be overridden."""
        return True

    @default_hook()
    def process_request(self, request, client_address):
        # type: (Any, Address) -> None
        """Handle the request, then shut it down. Overridden by the mixins."""
        self.finish_request(request, client_address)
        self.shutdown_request(request)

    def server_close(self):
        # type: () -> None
        """Clean up the server. May be overridden."""
        self._rs_engine.release()

    @default_hook()
    def finish_request(self, request, client_address):
        # type: (Any, Address) -> None
        """Handle the request by instantiating ``RequestHandlerClass``."""
        try:
            self.RequestHandlerClass(request, client_address, self)
        except BaseException:
            self._rs_engine.note_request(False)
            raise
        self._rs_engine.note_request(True)

    def stats(self):
        # type: () -> dict[str, Any]
        """Counters and gauges for operators (not in the stdlib): connections accepted (or
        datagrams received), active connections, requests served, handler errors, accept
        errors by errno class, and for pools the workers and queue. See docs/stats.md."""
        return server_stats(self)

    def shutdown_request(self, request):
        # type: (Any) -> None
        """End one request explicitly and clean up after it."""
        self.close_request(request)

    def close_request(self, request):
        # type: (Any) -> None
        """Clean up after one request."""

    def handle_error(self, request, client_address):
        # type: (Any, Address) -> None
        """Report an exception raised while processing a request, then carry on serving.

        The default prints the traceback to ``sys.stderr``. May be overridden.
        """
        print_request_error(client_address)

    def __enter__(self):
        # type: () -> Self
        """The server itself; leaving the ``with`` block calls ``server_close()``."""
        return self

    def __exit__(self, *exc_info):
        # type: (*object) -> None
        """Call ``server_close()``; exceptions from the block propagate."""
        self.server_close()


_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


# The default listen backlog of the stream servers. Not socket.SOMAXCONN (the stdlib's default
# from CPython 3.15 on; 5 before): that is the C library's constant, fixed when CPython was
# compiled (128 with musl and older glibc, 4096 with current glibc), so the same code would
# queue 32 times fewer clients on Alpine. The kernel lowers any backlog to its own limit
# (Linux: net.core.somaxconn, 4096 since 5.4; macOS and the BSDs: kern.ipc.somaxconn /
# kern.ipc.soacceptqueue), so asking for 4096 gets the machine's own limit (up to 4096),
# whatever libc Python was built with.
LISTEN_BACKLOG = 4096


class TCPServer(BaseServer):
    """A server on a stream socket (TCP by default).

    The constructor creates the socket and, unless ``bind_and_activate`` is false, binds it
    and starts listening; on failure the socket is closed before the error propagates.

    Two defaults differ from the stdlib, on purpose:

    - ``request_queue_size`` is 4096 (the stdlib's is 5, and ``socket.SOMAXCONN`` from 3.15
      on): with a backlog of 5, a burst of clients connecting at once mostly lands in SYN
      retries for a second or more. The kernel lowers it to its own limit. Set it to 5 to get
      the backlog of the stdlib before 3.15.
    - ``tcp_nodelay`` is true: accepted TCP connections get ``TCP_NODELAY``, as asyncio and
      uvloop set it, so a reply written in pieces (headers, then body) is not held back
      ~40 ms by Nagle's algorithm waiting for a delayed ACK. Set it to False to keep Nagle.
    """

    address_family = socket.AF_INET  # type: int
    socket_type = socket.SOCK_STREAM  # type: int
    request_queue_size = LISTEN_BACKLOG  # type: int
    allow_reuse_address = False  # type: bool
    allow_reuse_port = False  # type: bool
    tcp_nodelay = True  # type: bool

    def __init__(self, server_address, RequestHandlerClass, bind_and_activate=True):
        # type: (Address, HandlerFactory, bool) -> None
        BaseServer.__init__(self, server_address, RequestHandlerClass)
        self.socket = socket.socket(self.address_family, self.socket_type)
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                raise

    def server_bind(self):
        # type: () -> None
        """Apply the reuse options and bind the socket; records the bound address."""
        if _activation.is_adopted(self):  # from_socket(): bound already
            self.server_address = self.socket.getsockname()
            return
        if self.allow_reuse_address and hasattr(socket, "SO_REUSEADDR"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # SO_REUSEPORT only on IP sockets, as the stdlib does from 3.12.9 and 3.13.2 on: on a
        # Unix socket it never had an effect, and Linux refuses it there since 6.12.9 (and its
        # stable backports).
        if (
            self.allow_reuse_port
            and hasattr(socket, "SO_REUSEPORT")
            and self.address_family in _TCP_FAMILIES
        ):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()

    def server_activate(self):
        # type: () -> None
        """Start listening, with a backlog of ``request_queue_size``."""
        if _activation.is_adopted(self) and _activation.is_listening(self.socket):
            return  # from_socket(): keep the backlog its creator chose
        self.socket.listen(self.request_queue_size)

    def server_close(self):
        # type: () -> None
        """Close the listening socket (and the engine's own descriptors)."""
        self.socket.close()
        self._rs_engine.release()

    @default_hook()
    def fileno(self):
        # type: () -> int
        """The descriptor the engine waits on."""
        return self.socket.fileno()

    @default_hook(socket.SOCK_STREAM)
    def get_request(self):
        # type: () -> tuple[Any, Address]
        """Accept a connection: returns ``(socket, client_address)``."""
        request, client_address = self.socket.accept()
        if self.tcp_nodelay and request.family in _TCP_FAMILIES:
            try:
                request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass  # the peer may have reset already; the handler will find out
        return request, client_address

    @default_hook(socket.SOCK_STREAM)
    def shutdown_request(self, request):
        # type: (Any) -> None
        """Send our FIN, then close the connection."""
        try:
            # Closing alone may leave unsent data behind; shutting down the write side
            # first makes the peer see everything, then end of stream.
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the peer may be gone already
        self.close_request(request)

    @default_hook(socket.SOCK_STREAM)
    def close_request(self, request):
        # type: (Any) -> None
        """Close the connection's socket."""
        request.close()
        self._rs_engine.note_closed()


class UDPServer(TCPServer):
    """A server on a datagram socket: each datagram is one request.

    The request handed to the handler is ``(data, server_socket)``; datagrams longer than
    ``max_packet_size`` are truncated, as ``recvfrom()`` truncates them.
    """

    allow_reuse_address = False
    allow_reuse_port = False
    socket_type = socket.SOCK_DGRAM
    max_packet_size = 8192  # type: int

    @default_hook(socket.SOCK_DGRAM)
    def get_request(self):
        # type: () -> tuple[Any, Address]
        """Receive a datagram: returns ``((data, socket), client_address)``."""
        data, client_address = self.socket.recvfrom(self.max_packet_size)
        return (data, self.socket), client_address

    def server_activate(self):
        # type: () -> None
        """Datagram sockets do not listen."""

    @default_hook(socket.SOCK_DGRAM)
    def shutdown_request(self, request):
        # type: (Any) -> None
        """Nothing to shut down for a datagram."""
        self.close_request(request)

    @default_hook(socket.SOCK_DGRAM)
    def close_request(self, request):
        # type: (Any) -> None
        """Nothing to close: the socket is the server's."""


if hasattr(socket, "AF_UNIX"):

    class UnixStreamServer(TCPServer):
        """A stream server on a Unix-domain socket."""

        address_family = socket.AF_UNIX

    class UnixDatagramServer(UDPServer):
        """A datagram server on a Unix-domain socket."""

        address_family = socket.AF_UNIX
else:
    __all__ = [name for name in __all__ if not name.startswith("Unix")]
