"""``server.stats()``: what an operator wants to know about a running server, as a dict.

The counters live in the Rust engine as atomics; bumping one costs an atomic add and reading
them takes no lock on the serving path. Every counter only grows, except the gauges (active
connections, pool workers, queue depth, parked connections), which say what is true now.
See docs/stats.md for the meaning of each key.
"""

import socket
from typing import Any

__all__ = ["format_stats", "reactor_stats", "server_stats"]


def _pool_stats(server: Any) -> dict[str, int] | None:
    workers = vars(server).get("_rs_workers")
    if workers is None:
        if not hasattr(server, "_rs_worker_pool"):
            return None
        return {"workers": 0, "busy": 0, "idle": 0, "queued": 0}
    started, idle, queued = workers.pool.gauges()
    return {"workers": started, "busy": max(0, started - idle), "idle": idle, "queued": queued}


def _common(server: Any, counters: dict[str, Any]) -> dict[str, Any]:
    stream = server.socket_type == socket.SOCK_STREAM
    stats: dict[str, Any] = {}
    if stream:
        stats["accepted"] = counters["acquired"]
        stats["active_connections"] = max(0, counters["acquired"] - counters["closed"])
    else:
        stats["received"] = counters["acquired"]
    stats["requests"] = counters["requests"]
    stats["handler_errors"] = counters["handler_errors"]
    stats["accept_errors"] = counters["accept_errors"]
    return stats


def server_stats(server: Any) -> dict[str, Any]:
    """The stats of a ``BaseServer`` (plain, threading, forking or pool)."""
    counters = server._rs_engine.counters()
    stats = _common(server, counters)
    pool = _pool_stats(server)
    if pool is not None:
        stats["pool"] = pool
        if server.socket_type == socket.SOCK_STREAM:
            stats["parked"] = counters["parked"]
            stats["first_byte_timeouts"] = counters["first_byte_timeouts"]
    return stats


def reactor_stats(server: Any) -> dict[str, Any]:
    """The stats of a reactor server."""
    counters = server._rs_reactor.counters()
    stats = _common(server, counters)
    for key in ("bytes_in", "bytes_out", "backpressure_pauses", "idle_timeouts"):
        stats[key] = counters[key]
    stats["tls_handshakes"] = counters["tls_handshakes"]
    stats["tls_handshake_failures"] = counters["tls_handshake_failures"]
    pool = _pool_stats(server)
    if pool is not None:
        stats["pool"] = pool
    return stats


def format_stats(stats: dict[str, Any]) -> str:
    """One log line: ``key=value`` pairs, nested dicts flattened with dots, zero accept
    error and TLS handshake failure classes left out."""
    parts = []
    for key, value in stats.items():
        if isinstance(value, dict):
            for inner, count in value.items():
                if key in ("accept_errors", "tls_handshake_failures") and not count:
                    continue
                parts.append(f"{key}.{inner}={count}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)
