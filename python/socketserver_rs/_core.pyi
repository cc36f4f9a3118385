# Hand-written stub for the Rust extension module socketserver_rs._core.
from typing import Any

class Engine:
    """The serving loop of one server: waiting, shutdown, signals, fast path."""

    shutdown_requested: bool

    def __new__(cls) -> Engine: ...
    def serve_forever(
        self, server: Any, poll_interval: float | None, pool: WorkerPool | None = None
    ) -> None: ...
    def handle_request(self, server: Any) -> Any: ...
    def shutdown(self) -> None: ...
    def note_acquire_error(self, errno: int | None) -> None: ...

class WorkerPool:
    """A queue of requests for pooled worker threads, with the pool's sizing rules."""

    workers: int
    idle: int
    queued: int

    def __new__(cls, max_workers: int) -> WorkerPool: ...
    def submit(self, item: object) -> bool: ...
    def take(self, idle_timeout: float | None = None) -> Any: ...
    def worker_gone(self) -> None: ...
    def close(self) -> None: ...

def send_all(sock: Any, data: Any) -> int:
    """``sock.sendall(data)`` that keeps the GIL unless it has to wait; returns len(data)."""

class Reactor:
    """The loop of a reactor server: Rust-owned connections, Python per message."""

    connection_count: int
    shutdown_requested: bool

    def __new__(cls) -> Reactor: ...
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
        submit: Any = None,
    ) -> None: ...
    def shutdown(self) -> None: ...
    def close_all(self, server: Any) -> None: ...

class Connection:
    """A handler's link to its connection; usable from any thread."""

    def send(self, data: Any) -> None: ...
    def close(self) -> None: ...
    def batch_done(self) -> None: ...
