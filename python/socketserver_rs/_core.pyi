# Hand-written stub for the Rust extension module socketserver_rs._core (rust/lib.rs lists
# what it exports). `python -m mypy.stubtest socketserver_rs._core` (in `make lint`) checks
# it against the built module: names, signatures, which attributes are read-only (the
# `@property` ones), and that the classes cannot be subclassed (pyclasses without the
# `subclass` option, hence @final). It needs no allowlist.
#
# The engine calls Python hooks by attribute name on objects it is given, so those
# parameters are `Any`: a server is anything with the stdlib's hooks, not one class.
from collections.abc import Callable
from typing import Any, Literal, final

from typing_extensions import Buffer

__all__ = [
    "Connection",
    "Engine",
    "Reactor",
    "SocketReader",
    "SocketWriter",
    "Supervisor",
    "TLSConfigError",
    "WorkerPool",
    "platform_paths",
]

@final
class Engine:
    """The serving loop of one server: waiting, shutdown, signals, fast path."""

    # The stdlib's sticky shutdown flag (`BaseServer._BaseServer__shutdown_request`).
    shutdown_requested: bool

    def __new__(cls) -> Engine: ...
    @property
    def parked(self) -> int: ...
    def serve_forever(
        self, server: Any, poll_interval: float | None, pool: WorkerPool | None = None
    ) -> None: ...
    def handle_request(self, server: Any) -> Any: ...
    def shutdown(self) -> None: ...
    def release(self) -> None: ...
    def note_acquire_error(self, errno: int | None) -> None: ...
    def park(self, request: Any, client_address: Any) -> bool: ...
    def note_acquired(self) -> None: ...
    def note_closed(self) -> None: ...
    def note_request(self, ok: bool) -> None: ...
    def counters(self) -> dict[str, Any]: ...

@final
class WorkerPool:
    """A queue of requests for pooled worker threads, with the pool's sizing rules."""

    def __new__(cls, max_workers: int) -> WorkerPool: ...
    @property
    def workers(self) -> int: ...
    @property
    def idle(self) -> int: ...
    @property
    def queued(self) -> int: ...
    def gauges(self) -> tuple[int, int, int]: ...
    def submit(self, item: object) -> bool: ...
    def work(
        self,
        serve: Callable[..., object],
        idle_timeout: float | None = None,
        server: object = None,
    ) -> None: ...
    def worker_gone(self) -> None: ...
    def stop_receiving(self) -> None: ...
    def close(self) -> None: ...

@final
class SocketReader:
    """The native half of one ``rfile``'s raw reader: ``readinto()`` is
    ``sock.recv_into(buffer)`` that, after a read that filled the buffer, first tries with
    the GIL held, with ``SocketIO.readinto()``'s closed and timed-out checks."""

    def __new__(cls, sock: Any) -> SocketReader: ...
    def readinto(self, b: Buffer) -> int | None:
        """``None`` when a non-blocking socket has nothing to read (as
        ``SocketIO.readinto()``)."""

    def close(self) -> None: ...

@final
class SocketWriter:
    """The native ``write()`` of an unbuffered ``wfile``: ``sock.sendall(b)``, then
    ``len(memoryview(b).cast("B"))``."""

    def __new__(cls, sock: Any) -> SocketWriter: ...
    def write(self, b: Buffer) -> int: ...

@final
class Reactor:
    """The loop of a reactor server: Rust-owned connections, Python per message."""

    def __new__(cls) -> Reactor: ...
    @property
    def connection_count(self) -> int: ...
    def note_handled(self, handled: int, failed: int) -> None: ...
    def counters(self) -> dict[str, Any]: ...
    @property
    def shutdown_requested(self) -> bool: ...
    def serve_forever(
        self,
        server: Any,
        handler_class: Any,
        *,
        datagram: bool,
        framing: str,
        max_message_size: int,
        idle_timeout: float | None,
        max_connections: int | None,
        write_buffer_limit: int,
        calls_setup: bool,
        calls_finish: bool,
        submit: Callable[[tuple[Any, list[bytes], bool]], object] | None = None,
        started: Callable[[], object] | None = None,
    ) -> None: ...
    def shutdown(self, timeout: float | None = None) -> None: ...
    def request_stop(self, timeout: float | None = None) -> None: ...
    def retire_after(self, requests: int, timeout: float | None = None) -> None: ...
    def close_all(self, server: Any) -> None: ...
    @property
    def tls_enabled(self) -> bool: ...
    def configure_tls(
        self,
        certfile: str,
        keyfile: str | None,
        client_ca: str | None,
        require_client_cert: bool,
        alpn_protocols: list[str],
        min_version: str,
        handshake_timeout: float | None,
    ) -> None:
        """Load the TLS files and use them for connections accepted from now on (raises
        ``TLSConfigError``, keeping the configuration in use, if they cannot be used)."""

# Made only by the reactor (no constructor from Python).
@final
class Connection:
    """A handler's link to its connection; usable from any thread."""

    def send(self, data: Buffer) -> None: ...
    def close(self) -> None: ...
    def batch_done(self) -> None: ...
    @property
    def tls_version(self) -> str | None:
        """``"TLSv1.2"`` or ``"TLSv1.3"``; None without TLS."""
    @property
    def alpn_protocol(self) -> str | None: ...
    @property
    def peer_certificate(self) -> bytes | None:
        """DER of the client's certificate, when it presented one."""

class TLSConfigError(ValueError):
    """A TLS configuration that cannot be used: the message names the attribute, the file
    and the problem."""

def platform_paths() -> Literal["linux", "portable"]:
    """Which platform paths this process uses: ``"linux"`` or ``"portable"``.

    Chosen once, when the module is imported: ``"portable"`` on macOS and the BSDs, and on
    Linux when ``SOCKETSERVER_RS_PORTABLE=1`` is set; ``"linux"`` otherwise.
    """

@final
class Supervisor:
    """The prefork parent's wait (child exits, signals, shutdown) and heartbeat board."""
    def __new__(cls, slots: int) -> Supervisor: ...
    @property
    def stop_requested(self) -> bool: ...
    def begin(self) -> None: ...
    def end(self) -> None: ...
    def watch_child(self, pid: int, slot: int) -> None: ...
    def is_watching(self, pid: int) -> bool: ...
    def wait(self, timeout: float | None) -> list[tuple[int, int | None]]: ...
    def request_stop(self) -> None: ...
    def wait_stopped(self) -> None: ...
    def stale(self, slots: list[int], timeout: float) -> list[int]: ...
    def enter_child(self, parent: int, slot: int, beat_every: float | None) -> bool: ...
