"""Command-line options for running the CLI's servers in production: ``--fd N`` (serve on
an inherited listening socket, e.g. from systemd socket activation) and
``--stats-interval SECONDS`` (log ``server.stats()`` periodically). Kept apart from
``__main__`` so each command only adds the options and calls these helpers."""

import argparse
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

from ._activation import LISTEN_FDS_START, listen_fds
from ._stats import format_stats

__all__ = ["add_options", "inherited_socket", "start_stats_log", "transport_of"]


def _descriptor(text: str) -> int:
    try:
        fd = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a file descriptor number: {text!r}") from None
    if fd < 0:
        raise argparse.ArgumentTypeError(f"file descriptors are >= 0, not {fd}")
    return fd


def _interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"the interval must be > 0, not {text}")
    return seconds


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--fd`` and ``--stats-interval`` to a command's parser."""
    parser.add_argument(
        "--fd",
        type=_descriptor,
        metavar="N",
        help="serve on the already bound socket inherited as descriptor N instead of "
        "binding one (systemd socket activation passes 3); its family and type are read "
        "from it",
    )
    parser.add_argument(
        "--stats-interval",
        type=_interval,
        metavar="SECONDS",
        help="log the server's stats() to stderr every SECONDS, one line each time",
    )


def inherited_socket(fd: int) -> socket.socket:
    """The socket on descriptor ``fd``. If systemd passed it (``LISTEN_FDS``), the
    activation variables are consumed, as ``sd_listen_fds()`` would."""
    count = os.environ.get("LISTEN_FDS", "")
    if count.isdigit() and LISTEN_FDS_START <= fd < LISTEN_FDS_START + int(count):
        for passed in listen_fds():
            if passed.fileno() == fd:
                return cast(socket.socket, passed)
    try:
        sock = socket.socket(fileno=fd)
    except OSError as error:
        raise ValueError(f"descriptor {fd} is not an open socket: {error.strerror}") from None
    sock.set_inheritable(False)
    return sock


def transport_of(sock: socket.socket) -> str:
    """``tcp``, ``udp`` or ``unix`` (a Unix stream socket), as the echo command names them."""
    unix = getattr(socket, "AF_UNIX", None)
    if sock.type == socket.SOCK_STREAM:
        return "unix" if sock.family == unix else "tcp"
    if sock.type == socket.SOCK_DGRAM and sock.family != unix:
        return "udp"
    kind = socket.SocketKind(sock.type).name
    raise ValueError(f"cannot serve on descriptor {sock.fileno()}: a {sock.family.name} {kind}")


def start_stats_log(servers: Iterable[Any], interval: float | None) -> Callable[[], None]:
    """Log ``stats()`` of ``servers`` every ``interval`` seconds on a daemon thread, one
    line per interval (``stats ClassName key=value … | ClassName …``); returns a function
    that stops it. ``interval`` None: nothing is logged."""
    stop = threading.Event()
    if interval is None:
        return stop.set
    servers = list(servers)

    def log() -> None:
        while not stop.wait(interval):
            parts = [f"{type(s).__name__} {format_stats(s.stats())}" for s in servers]
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            print(f"{stamp} stats {' | '.join(parts)}", file=sys.stderr, flush=True)

    threading.Thread(target=log, name="stats-log", daemon=True).start()
    return stop.set
