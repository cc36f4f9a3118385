"""socketserver_rs: the standard library's ``socketserver``, with its waiting done in Rust.

``import socketserver_rs as socketserver`` is all existing code needs: the same classes,
hooks, attributes and call order, with ``shutdown()`` and Ctrl-C answered at once and no
idle wakeups. ``socketserver_rs.install()`` makes stdlib modules built on ``socketserver``
(``http.server``, ``xmlrpc.server`` …) use it too.

The package ships a pytest plugin (``socketserver_rs.testing``), so pytest would rewrite the
asserts of every module here, and warn when the package was imported before it started (as
under ``python -m socketserver_rs run -m pytest``); there are no asserts to rewrite, hence
PYTEST_DONT_REWRITE.
"""

import functools
import os
import socket
import sys
import warnings

from ._activation import listen_fds, sd_notify
from ._handlers import BaseRequestHandler, DatagramRequestHandler, StreamRequestHandler
from ._mixins import ThreadingMixIn, ThreadingTCPServer, ThreadingUDPServer
from ._pool import ThreadPoolMixIn, ThreadPoolTCPServer, ThreadPoolUDPServer
from ._reactor import MessageHandler, ReactorTCPServer, ReactorUDPServer, TLSConfigError
from ._servers import BaseServer, TCPServer, UDPServer
from ._stdlib import install

__all__ = [
    "BaseRequestHandler",
    "BaseServer",
    "DatagramRequestHandler",
    "StreamRequestHandler",
    "TCPServer",
    "ThreadingMixIn",
    "ThreadingTCPServer",
    "ThreadingUDPServer",
    "UDPServer",
    # Beyond the stdlib: pooled threading, reactor servers, prefork workers, the opt-in
    # for stdlib consumers.
    "ThreadPoolMixIn",
    "ThreadPoolTCPServer",
    "ThreadPoolUDPServer",
    "MessageHandler",
    "ReactorTCPServer",
    "ReactorUDPServer",
    "TLSConfigError",
    "install",
    # Socket activation (systemd's LISTEN_FDS) and service-manager notifications.
    "listen_fds",
    "sd_notify",
]

if hasattr(os, "fork"):
    from ._mixins import ForkingMixIn, ForkingTCPServer, ForkingUDPServer
    from ._prefork import PreforkMixIn

    __all__ += ["ForkingMixIn", "ForkingTCPServer", "ForkingUDPServer", "PreforkMixIn"]

if hasattr(socket, "AF_UNIX"):
    from ._mixins import ThreadingUnixDatagramServer, ThreadingUnixStreamServer
    from ._pool import ThreadPoolUnixDatagramServer, ThreadPoolUnixStreamServer
    from ._reactor import ReactorUnixStreamServer
    from ._servers import UnixDatagramServer, UnixStreamServer

    __all__ += [
        "ThreadingUnixDatagramServer",
        "ThreadingUnixStreamServer",
        "ThreadPoolUnixDatagramServer",
        "ThreadPoolUnixStreamServer",
        "ReactorUnixStreamServer",
        "UnixDatagramServer",
        "UnixStreamServer",
    ]

if hasattr(os, "fork") and hasattr(socket, "AF_UNIX"):
    from ._mixins import ForkingUnixDatagramServer, ForkingUnixStreamServer

    __all__ += ["ForkingUnixDatagramServer", "ForkingUnixStreamServer"]

# Public objects say they live here, as the stdlib's say they live in ``socketserver``
# (repr, pickling and introspection-based checks all read ``__module__``).
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name

__version__: str


@functools.cache
def _distribution_version() -> str:
    """The installed distribution's version, read on first use: importing
    ``importlib.metadata`` takes longer than the rest of the package, and every process run
    through ``python -m socketserver_rs run`` imports the package at start-up."""
    from importlib import metadata

    try:
        return metadata.version("socketserver-rs")
    except metadata.PackageNotFoundError:  # running from a source tree without metadata
        return "0+unknown"


def __getattr__(name: str) -> str:
    """``__version__``: this distribution's version. From CPython 3.15 on, reading it warns as
    reading the stdlib's ``socketserver.__version__`` does (a ``DeprecationWarning`` on every
    read, pointing at the reader), so code swapped over sees what it saw;
    ``importlib.metadata.version("socketserver-rs")`` reads the version without one."""
    if name != "__version__":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if sys.version_info >= (3, 15):
        warnings.warn(
            "'__version__' is deprecated and slated for removal in Python 3.20",
            DeprecationWarning,
            stacklevel=2,
        )
    return _distribution_version()
