# Hand-written stub for the Rust extension module socketserver_rs._core.
from typing import Any

class Engine:
    """The serving loop of one server: waiting, shutdown, signals, fast path."""

    shutdown_requested: bool

    def __new__(cls) -> Engine: ...
    def serve_forever(
        self,
        server: Any,
        poll_interval: float | None,
        fast: bool,
        service_actions: bool,
        pool: WorkerPool | None = None,
    ) -> None: ...
    def handle_request(self, server: Any, fast: bool) -> Any: ...
    def shutdown(self) -> None: ...

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
