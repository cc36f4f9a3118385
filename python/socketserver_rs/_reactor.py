"""Reactor servers: Rust owns the connections, Python sees whole messages.

The stdlib's model costs a thread (or a process) per connection. Here the engine keeps every
connection non-blocking in one loop, reads and frames the input, calls the handler's
``handle_message()`` with each complete message (taking the GIL once per batch of ready
messages) and writes the returned reply itself. Idle connections cost a descriptor and a few
small buffers.

By default handlers run on the serving thread, one message at a time, so
``handle_message()`` must not block. For handlers that do block, set ``handler_threads``:
messages then go to a bounded pool of worker threads, still in order for each connection,
and replies are sent through ``send()``, which works from any thread.

Stream servers speak TLS when ``tls_certfile`` is set: the engine terminates it (rustls),
handlers see plaintext messages framed as without TLS, and a handler is made only once the
handshake has finished.

A server serves one ``serve_forever()`` call at a time: a second call while one runs (from
another thread, or from one of its handlers) raises ``RuntimeError`` and leaves the running
call, its connections and ``shutdown()`` as they were. After that call returns the server
can serve again.
"""

import enum
import os
import socket
import ssl
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Self

from . import _activation, _core
from ._fastpath import default_hook
from ._pool import Workers
from ._servers import LISTEN_BACKLOG, TCPServer, print_request_error
from ._stats import reactor_stats

__all__ = ["MessageHandler", "ReactorTCPServer", "ReactorUDPServer", "TLSConfigError"]

TLSConfigError = _core.TLSConfigError

_TLS_VERSIONS = {ssl.TLSVersion.TLSv1_2: "1.2", ssl.TLSVersion.TLSv1_3: "1.3"}
_TCP_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class _Inherit(enum.Enum):
    """A TLS keyword not given: the class attribute applies."""

    CLASS_ATTRIBUTE = enum.auto()


_FROM_CLASS = _Inherit.CLASS_ATTRIBUTE
_PathArg = str | os.PathLike[str] | None


class MessageHandler:
    """Handles the messages of one connection (for datagram servers: of one datagram).

    Class attributes:

    - ``framing``: how input is cut into messages. ``"raw"``: whatever one read returned;
      ``"line"``: up to and including ``b"\\n"`` (a last line without one is delivered when
      the client closes); ``"length32"``: a 4-byte big-endian length, then the payload,
      delivered without the prefix; replies and ``send()`` data get the prefix added.
    - ``max_message_size``: a longer message is reported to ``server.handle_error()`` and
      its connection closed (for datagrams: the datagram is dropped).

    Instance attributes: ``connection``, ``client_address``, ``server``.
    """

    framing: str = "raw"
    max_message_size: int = 65536

    def __init__(
        self, connection: _core.Connection, client_address: Any, server: "_ReactorServer"
    ) -> None:
        self.connection = connection
        self.client_address = client_address
        self.server = server

    @default_hook()
    def setup(self) -> None:
        """Called when the connection opens (for datagrams: before the message)."""

    def handle_message(self, message: bytes) -> Any:
        """Handle one message; return bytes to send back, or None."""
        return None

    @default_hook()
    def finish(self) -> None:
        """Called when the connection has closed (for datagrams: after the message)."""

    def send(self, data: Any) -> None:
        """Queue ``data`` for the client; usable from any thread."""
        self.connection.send(data)

    def close(self) -> None:
        """Close the connection once the data queued so far is written."""
        self.connection.close()


class _ReactorServer:
    """What the reactor servers share: socket set-up as ``TCPServer`` does it, the serving
    loop, shutdown and error reporting."""

    address_family: int = socket.AF_INET
    socket_type: int = socket.SOCK_STREAM
    request_queue_size: int = LISTEN_BACKLOG
    allow_reuse_address: bool = False
    allow_reuse_port: bool = False
    #: Seconds without input after which a connection is closed (None: never).
    idle_timeout: float | None = None
    #: Connections served at once; further clients wait in the backlog (None: no limit).
    max_connections: int | None = None
    #: Unsent output (bytes) past which a connection is not read until it drains.
    write_buffer_limit: int = 1 << 20
    #: Worker threads for handlers that block (0: handlers run on the serving thread).
    handler_threads: int = 0
    #: Seconds an idle handler thread waits for work before it exits.
    worker_idle_timeout: float | None = 10.0
    #: TLS (stream servers), on when ``tls_certfile`` is set. PEM certificate chain, leaf
    #: first (it may hold the private key too).
    tls_certfile: _PathArg = None
    #: PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC); None: in ``tls_certfile``.
    tls_keyfile: _PathArg = None
    #: PEM CA bundle: clients are asked for a certificate signed by one of these (mTLS).
    tls_client_ca: _PathArg = None
    #: With ``tls_client_ca``: a client without a valid certificate is refused (False: the
    #: certificate is optional, but one presented must verify).
    tls_require_client_cert: bool = True
    #: ALPN protocol names, in the server's order of preference.
    tls_alpn_protocols: Iterable[str] = ()
    #: The oldest TLS version accepted: "1.2" or "1.3" (or an ``ssl.TLSVersion``).
    tls_min_version: str | ssl.TLSVersion = "1.2"
    #: Seconds from accept to a finished handshake, after which the connection is closed.
    tls_handshake_timeout: float | None = 10.0

    def __init__(
        self,
        server_address: Any,
        RequestHandlerClass: type[MessageHandler],
        bind_and_activate: bool = True,
        *,
        tls_certfile: _PathArg | _Inherit = _FROM_CLASS,
        tls_keyfile: _PathArg | _Inherit = _FROM_CLASS,
        tls_client_ca: _PathArg | _Inherit = _FROM_CLASS,
        tls_require_client_cert: bool | _Inherit = _FROM_CLASS,
        tls_alpn_protocols: Iterable[str] | _Inherit = _FROM_CLASS,
        tls_min_version: str | ssl.TLSVersion | _Inherit = _FROM_CLASS,
        tls_handshake_timeout: float | _Inherit | None = _FROM_CLASS,
    ) -> None:
        self.server_address = server_address
        self.RequestHandlerClass = RequestHandlerClass
        self._rs_reactor = _core.Reactor()
        given = {
            "tls_certfile": tls_certfile,
            "tls_keyfile": tls_keyfile,
            "tls_client_ca": tls_client_ca,
            "tls_require_client_cert": tls_require_client_cert,
            "tls_alpn_protocols": tls_alpn_protocols,
            "tls_min_version": tls_min_version,
            "tls_handshake_timeout": tls_handshake_timeout,
        }
        for name, value in given.items():
            if value is not _FROM_CLASS:
                setattr(self, name, value)
        if self.tls_certfile is not None:
            # Before the socket exists: a configuration that cannot be used leaves nothing
            # open.
            if self.socket_type != socket.SOCK_STREAM:
                raise ValueError(f"{type(self).__name__} cannot use TLS: TLS needs a stream")
            self._rs_configure_tls()
        self.socket = socket.socket(self.address_family, self.socket_type)
        if bind_and_activate:
            try:
                self.server_bind()
                self.server_activate()
            except BaseException:
                self.server_close()
                raise

    if TYPE_CHECKING:

        def server_bind(self) -> None:
            """Apply the reuse options and bind the socket; records the bound address."""

    else:
        # Binding works exactly as for TCPServer (reuse options, recorded address).
        server_bind = TCPServer.server_bind

    def server_activate(self) -> None:
        """Listen (stream sockets); the reactor needs the socket non-blocking."""
        adopted_listening = _activation.is_adopted(self) and _activation.is_listening(self.socket)
        if self.socket_type == socket.SOCK_STREAM and not adopted_listening:
            self.socket.listen(self.request_queue_size)
        if self.socket_type == socket.SOCK_STREAM and self.address_family in _TCP_FAMILIES:
            # Accepted connections inherit TCP_NODELAY from the listener (Linux, macOS, the
            # BSDs), so it costs no call per connection. Without it a reply that follows
            # other unacknowledged output in a later write (a TLS 1.3 session ticket, a
            # send() from a handler thread) waits for the client's delayed ACK, ~40 ms.
            # asyncio and uvloop turn Nagle off too.
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socket.setblocking(False)

    def _rs_configure_tls(self) -> None:
        min_version = self.tls_min_version
        if isinstance(min_version, ssl.TLSVersion):
            min_version = _TLS_VERSIONS.get(min_version, min_version.name)
        alpn = self.tls_alpn_protocols
        if isinstance(alpn, str | bytes):
            raise TLSConfigError(
                f"tls_alpn_protocols: expected a sequence of protocol names, got {alpn!r}"
            )
        protocols = list(alpn)
        for protocol in protocols:
            if not isinstance(protocol, str):
                raise TLSConfigError(
                    f"tls_alpn_protocols: protocol names are str, got {protocol!r}"
                )
        timeout = self.tls_handshake_timeout
        if timeout is not None:
            try:
                timeout = float(timeout)
            except (TypeError, ValueError):
                raise TLSConfigError(
                    f"tls_handshake_timeout: expected a number of seconds or None, got {timeout!r}"
                ) from None
        certfile = _fspath("tls_certfile", self.tls_certfile)
        if certfile is None:
            raise TLSConfigError("tls_certfile: None; a TLS server needs a certificate")
        self._rs_reactor.configure_tls(
            certfile,
            _fspath("tls_keyfile", self.tls_keyfile),
            _fspath("tls_client_ca", self.tls_client_ca),
            bool(self.tls_require_client_cert),
            protocols,
            str(min_version),
            timeout,
        )

    def reload_tls(self) -> None:
        """Re-read the TLS files the ``tls_*`` attributes name now: connections accepted
        from now on use them, open ones keep theirs. On ``TLSConfigError`` the configuration
        in use stays."""
        if not self._rs_reactor.tls_enabled:
            raise ValueError(f"TLS is not enabled on this {type(self).__name__}")
        self._rs_configure_tls()

    def fileno(self) -> int:
        """The listening (or datagram) socket's descriptor."""
        return self.socket.fileno()

    def serve_forever(self, poll_interval: float | None = 0.5) -> None:
        """Serve until ``shutdown()``. ``poll_interval`` is accepted for compatibility; the
        reactor never needs to wake up on a timer.

        One call at a time: called while another call serves this server (from another
        thread, or from a handler) it raises ``RuntimeError`` and the running call goes on."""
        handler = self.RequestHandlerClass
        serving = False

        def started() -> None:
            nonlocal serving
            serving = True
            _activation.notify_quietly("READY=1")  # a no-op unless NOTIFY_SOCKET is set

        try:
            self._rs_serve(handler, started)
        finally:
            # A refused call tells the service manager nothing: another call is serving.
            if serving:
                _activation.notify_quietly("STOPPING=1")

    def _rs_serve(self, handler: type[MessageHandler], started: Callable[[], None]) -> None:
        self._rs_reactor.serve_forever(
            self,
            handler,
            datagram=self.socket_type == socket.SOCK_DGRAM,
            framing=handler.framing,
            max_message_size=handler.max_message_size,
            idle_timeout=self.idle_timeout,
            max_connections=self.max_connections,
            write_buffer_limit=self.write_buffer_limit,
            calls_setup=getattr(handler.setup, "_socketserver_rs_default", None) is None,
            calls_finish=getattr(handler.finish, "_socketserver_rs_default", None) is None,
            submit=self._rs_handler_workers.submit if self.handler_threads else None,
            started=started,
        )

    @classmethod
    def from_socket(
        cls,
        sock: socket.socket,
        RequestHandlerClass: type[MessageHandler],
        *args: Any,
        **kwargs: Any,
    ) -> Self:
        """A server on ``sock``, an already bound (usually listening) socket, instead of a
        newly bound one (see ``BaseServer.from_socket``). The reactor makes the socket
        non-blocking, which the process that passed it shares."""
        return _activation.from_socket(cls, sock, RequestHandlerClass, *args, **kwargs)

    @property
    def _rs_handler_workers(self) -> Workers:
        workers = vars(self).get("_rs_workers")
        if workers is None:
            workers = vars(self)["_rs_workers"] = Workers(
                self._rs_handle_batch, self.handler_threads, self.worker_idle_timeout, False
            )
        return workers

    def _rs_handle_batch(
        self, handler: MessageHandler, messages: list[bytes], one_shot: bool
    ) -> None:
        """On a handler thread: handle a connection's batch of messages in order (or, for a
        datagram, its one message between ``setup()`` and ``finish()``)."""
        connection = handler.connection
        handled = 0
        try:
            if one_shot:
                handler.setup()
            try:
                for message in messages:
                    reply = handler.handle_message(message)
                    if reply is not None:
                        connection.send(reply)
                    handled += 1
            finally:
                if one_shot:
                    handler.finish()
        except Exception:
            self._rs_reactor.note_handled(handled, 1)
            handled = 0
            self.handle_error(handler, handler.client_address)
            connection.close()
        finally:
            self._rs_reactor.note_handled(handled, 0)
            connection.batch_done()

    def shutdown(self, timeout: float | None = None) -> None:
        """Stop ``serve_forever()``: no more accepting, queued replies are written (for up to
        2 s), and it returns. Connections stay open until ``server_close()``.

        With ``timeout`` (a graceful drain), messages already read (datagrams already
        received) are still handled, on handler threads too, and their replies written, for
        up to ``timeout`` seconds."""
        self._rs_reactor.shutdown(timeout)

    def server_close(self) -> None:
        """Close every connection (each handler's ``finish()`` runs), the socket, and the
        handler threads (after the work they were given)."""
        try:
            workers = vars(self).get("_rs_workers")
            if workers is not None:
                workers.close(wait=True)
            self._rs_reactor.close_all(self)
        finally:
            self.socket.close()

    def stats(self) -> dict[str, Any]:
        """Counters and gauges for operators: connections accepted (or datagrams received),
        active connections, messages handled, handler errors, accept errors by errno class,
        bytes in and out, backpressure pauses, idle-timeout closes, TLS handshakes and
        their failures by reason. See docs/stats.md."""
        return reactor_stats(self)

    @property
    def connection_count(self) -> int:
        """Connections open while the server is not serving (kept across serving calls)."""
        return self._rs_reactor.connection_count

    def handle_error(self, handler: MessageHandler, client_address: Any) -> None:
        """Report an exception from a handler (or from framing its input); the server carries
        on and that connection is closed. Called as if from an ``except`` block."""
        print_request_error(client_address)

    def __enter__(self) -> Self:
        """The server itself; leaving the ``with`` block calls ``server_close()``."""
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Call ``server_close()``; exceptions from the block propagate."""
        self.server_close()


def _fspath(attribute: str, path: _PathArg) -> str | None:
    if path is None:
        return None
    try:
        return os.fsdecode(path)
    except TypeError:
        raise TLSConfigError(f"{attribute}: expected a path, got {path!r}") from None


class ReactorTCPServer(_ReactorServer):
    """A TCP server whose connections the Rust engine owns."""


class ReactorUDPServer(_ReactorServer):
    """A UDP server: each datagram is a message for a new handler; replies go to its sender."""

    socket_type = socket.SOCK_DGRAM


if hasattr(socket, "AF_UNIX"):
    __all__ += ["ReactorUnixStreamServer"]

    class ReactorUnixStreamServer(_ReactorServer):
        """A Unix-domain stream server whose connections the Rust engine owns."""

        address_family = socket.AF_UNIX
