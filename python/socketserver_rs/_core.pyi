# Hand-written stub for the Rust extension module socketserver_rs._core.
from typing import Any

class Engine:
    """The serving loop of one server: waiting, shutdown, signals, fast path."""

    shutdown_requested: bool

    def __new__(cls) -> Engine: ...
    def serve_forever(
        self, server: Any, poll_interval: float | None, fast: bool, service_actions: bool
    ) -> None: ...
    def handle_request(self, server: Any, fast: bool) -> Any: ...
    def shutdown(self) -> None: ...
