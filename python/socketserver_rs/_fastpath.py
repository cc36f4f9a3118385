"""When the Rust engine may take requests off the server socket itself.

The engine can accept a connection or receive a datagram without the GIL, in the same system
call stretch as the wait, but only where that is indistinguishable from calling the Python
hooks: none of them is overridden and the socket is a plain ``socket.socket`` (not, say, an
``ssl.SSLSocket`` that a user swapped in). Default hooks carry a marker, so the check is a few
attribute lookups per serving call and works for any subclass or mixin order.
"""

import socket

# The hooks on the path from "socket readable" to "request in hand".
_ACQUIRING_HOOKS = ("fileno", "get_request", "_handle_request_noblock")
_MARK = "_socketserver_rs_default"


def default_hook(kind=True):
    """Mark a hook as the stock implementation. For ``get_request`` ``kind`` is the socket
    type it reads (``SOCK_STREAM`` accepts, ``SOCK_DGRAM`` receives)."""

    def mark(function):
        setattr(function, _MARK, kind)
        return function

    return mark


def _stock(server, name):
    """The marker of ``server``'s hook ``name``, or None if the hook is not the stock one."""
    if name in getattr(server, "__dict__", ()):
        return None
    return getattr(getattr(type(server), name, None), _MARK, None)


def serving_plan(server):
    """Whether the engine may acquire ``server``'s requests itself. The engine asks at the
    start of a serving call and again whenever the server's instance attributes change (a
    hook assigned on the instance while serving)."""
    kinds = [_stock(server, name) for name in _ACQUIRING_HOOKS]
    if None in kinds:
        return False
    sock = getattr(server, "socket", None)
    return type(sock) is socket.socket and sock.type == kinds[1]
