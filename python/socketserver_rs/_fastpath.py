"""When the Rust engine may take requests off the server socket itself.

The engine can accept a connection or receive a datagram without the GIL, in the same system
call stretch as the wait, but only where that is indistinguishable from calling the Python
hooks: none of them is overridden and the socket is a plain ``socket.socket`` (not, say, an
``ssl.SSLSocket`` that a user swapped in). Default hooks carry a marker, so the check is a few
attribute lookups per serving call and works for any subclass or mixin order.
"""

import socket
from collections.abc import Callable
from typing import Any, TypeVar

# The hooks on the path from "socket readable" to "request in hand".
_ACQUIRING_HOOKS = ("fileno", "get_request", "_handle_request_noblock")
_MARK = "_socketserver_rs_default"

_Hook = TypeVar("_Hook", bound=Callable[..., Any])


def default_hook(kind: object = True) -> Callable[[_Hook], _Hook]:
    """Mark a hook as the stock implementation. For ``get_request`` ``kind`` is the socket
    type it reads (``SOCK_STREAM`` accepts, ``SOCK_DGRAM`` receives)."""

    def mark(function: _Hook) -> _Hook:
        setattr(function, _MARK, kind)
        return function

    return mark


def _stock(server: object, name: str) -> object:
    """The marker of ``server``'s hook ``name``, or None if the hook is not the stock one."""
    if name in getattr(server, "__dict__", ()):
        return None
    return getattr(getattr(type(server), name, None), _MARK, None)


# serving_plan's answers, as the engine knows them.
SLOW, FAST, DIRECT = 0, 1, 2


def serving_plan(server: object) -> int:
    """How the engine may serve ``server``: ``SLOW`` (call ``_handle_request_noblock()``),
    ``FAST`` (accept or receive in Rust, then call the Python hooks) or ``DIRECT`` (a pool
    server whose ``verify_request``, ``process_request`` and ``service_actions`` are stock:
    requests go from the socket to the pool's workers with no Python on the serving thread).

    The engine asks at the start of a serving call and again whenever the server's instance
    attributes change (a hook assigned on the instance while serving)."""
    kinds = [_stock(server, name) for name in _ACQUIRING_HOOKS]
    if None in kinds:
        return SLOW
    sock = getattr(server, "socket", None)
    if type(sock) is not socket.socket or sock.type != kinds[1]:
        return SLOW
    direct = (
        _stock(server, "process_request") == "pool"
        and _stock(server, "verify_request") is not None
        and _stock(server, "service_actions") is not None
    )
    return DIRECT if direct else FAST


# stock_serving's answers, bits the engine tests.
STOCK_SERVICE_ACTIONS, STOCK_REQUEST_PATH = 1, 2


def stock_serving(server: object) -> int:
    """Which parts of the serial loop are stock, so that the engine may do them itself:
    ``STOCK_SERVICE_ACTIONS`` (the no-op: not called at all) and ``STOCK_REQUEST_PATH``
    (``verify_request``, ``process_request``, ``finish_request``, ``shutdown_request`` and
    ``close_request`` are the stock ones for the socket's type: the engine instantiates
    ``RequestHandlerClass`` and shuts the request down itself, and calls Python's
    ``_rs_request_failed`` only when the handler raises). Asked with ``serving_plan``."""
    bits = STOCK_SERVICE_ACTIONS if _stock(server, "service_actions") is not None else 0
    sock = getattr(server, "socket", None)
    kind = sock.type if type(sock) is socket.socket else None
    if (
        kind is not None
        and _stock(server, "verify_request") is not None
        and _stock(server, "process_request") is True
        and _stock(server, "finish_request") is not None
        and _stock(server, "shutdown_request") == kind
        and _stock(server, "close_request") == kind
    ):
        bits |= STOCK_REQUEST_PATH
    return bits


def stock_worker_path(server: object) -> int:
    """Whether a pool worker may serve a request itself, as ``serve_stock`` does on the
    serial path: 0 unless ``process_request_thread``, ``finish_request``,
    ``shutdown_request`` and ``close_request`` are all stock; otherwise the socket type
    whose stock shutdown applies (``SOCK_STREAM``: ``shutdown(SHUT_WR)`` and ``close()``;
    ``SOCK_DGRAM``: nothing). ``handle_error`` may be anything: it runs, from Python, only
    when the handler raises. Asked by the worker whenever the server's instance attributes
    change."""
    kind = _stock(server, "shutdown_request")
    for stock_kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        if (
            kind == stock_kind
            and _stock(server, "process_request_thread") is not None
            and _stock(server, "finish_request") is not None
            and _stock(server, "close_request") == stock_kind
        ):
            return int(stock_kind)
    return 0
