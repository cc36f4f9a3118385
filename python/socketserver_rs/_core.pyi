# Hand-written stub for the Rust extension module socketserver_rs._core (rust/lib.rs lists
# what it exports). `python -m mypy.stubtest socketserver_rs._core` (in `make lint`) checks
# it against the built module: names, signatures, which attributes are read-only (the
# `@property` ones), and that the classes cannot be subclassed (pyclasses without the
# `subclass` option, hence @final). It needs no allowlist.
#
# The engine calls Python hooks by attribute name on objects it is given, so those
# parameters are `Any`: a server is anything with the stdlib's hooks, not one class.
from collections.abc import Callable
from typing import Any, final

from typing_extensions import Buffer

__all__ = ["Connection", "Engine", "Reactor", "WorkerPool", "send_all"]

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
    def submit(self, item: object) -> bool: ...
    def take(self, idle_timeout: float | None = None) -> Any: ...
    def worker_gone(self) -> None: ...
    def close(self) -> None: ...

def send_all(sock: Any, data: Buffer) -> int:
    """``sock.sendall(data)`` that keeps the GIL unless it has to wait; returns len(data)."""

@final
class Reactor:
    """The loop of a reactor server: Rust-owned connections, Python per message."""

    def __new__(cls) -> Reactor: ...
    @property
    def connection_count(self) -> int: ...
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
    ) -> None: ...
    def shutdown(self) -> None: ...
    def close_all(self, server: Any) -> None: ...

# Made only by the reactor (no constructor from Python).
@final
class Connection:
    """A handler's link to its connection; usable from any thread."""

    def send(self, data: Buffer) -> None: ...
    def close(self) -> None: ...
    def batch_done(self) -> None: ...
