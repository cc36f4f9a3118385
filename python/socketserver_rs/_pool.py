"""Pooled threading: a bounded, elastic set of worker threads instead of a thread per request.

Workers are ordinary ``threading.Thread`` objects (so ``threading.local``,
``current_thread()``, tracing and ``threading.excepthook`` behave as usual) fed from a Rust
queue. The pool grows on demand up to ``max_workers``; a worker idle for
``worker_idle_timeout`` seconds retires. When every worker is busy and the pool is full,
the engine stops accepting, so further clients wait in the kernel's backlog instead of
costing memory and threads here.
"""

import math
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import _core
from ._fastpath import default_hook
from ._servers import BaseServer, TCPServer, UDPServer
from ._thread_start import start_thread

# The stdlib-named hooks (process_request …) take PEP 484 type comments, as in _servers.py,
# so that their runtime signatures stay the stdlib's; the rest is annotated. Ruff does not
# read type comments: hence the noqa on an import only they use.
if TYPE_CHECKING:
    from ._servers import Address  # noqa: F401

    # Seen as a server by type checkers (the hooks it calls are checked); a plain class at
    # run time, like the stdlib's mixins.
    _MixInBase = BaseServer
else:
    _MixInBase = object

__all__ = ["ThreadPoolMixIn", "ThreadPoolTCPServer", "ThreadPoolUDPServer"]

# Idle non-daemon workers would hold up interpreter exit until they retire, so every pool
# still open is closed when the interpreter starts shutting down; running work finishes.
_open_pools: weakref.WeakSet[_core.WorkerPool] = weakref.WeakSet()


def _close_open_pools() -> None:
    for pool in list(_open_pools):
        pool.close()


# The hook that runs before non-daemon threads are joined (concurrent.futures uses it too).
threading._register_atexit(_close_open_pools)  # type: ignore[attr-defined]


class Workers:
    """A ``WorkerPool`` queue and the threads serving it: each queued item is a tuple of
    arguments for ``serve``, called on a worker thread; or, given a pool ``server``, for its
    ``process_request_thread()`` (see ``WorkerPool.work``)."""

    def __init__(
        self,
        serve: Callable[..., object],
        max_workers: int,
        idle_timeout: float | None,
        daemon: bool,
        server: object = None,
    ) -> None:
        self.pool = _core.WorkerPool(max_workers)
        self.threads: set[threading.Thread] = set()
        self._serve = serve
        self._server = server
        self._idle_timeout = idle_timeout
        self._daemon = daemon
        _open_pools.add(self.pool)

    def submit(self, item: tuple[Any, ...]) -> None:
        """Queue ``item``, starting a worker if the pool may and needs to grow."""
        if self.pool.submit(item):
            self.start_worker()

    def start_worker(self) -> None:
        """Start the worker thread the pool just counted (the engine calls this too, when it
        queues requests itself)."""
        # The pool counted this worker already. Exactly one side settles that count, the
        # first to acquire ``claim``: the worker as it begins (it then leaves the pool as any
        # worker does), or this method when start() failed, perhaps after the launch.
        claim = threading.Lock()
        thread = threading.Thread(target=self._work, args=(claim,), daemon=self._daemon)
        self.threads.add(thread)
        try:
            start_thread(thread)
        except BaseException:
            if claim.acquire(blocking=False):
                self.threads.discard(thread)
                self.pool.worker_gone()
            raise

    def _work(self, claim: threading.Lock) -> None:
        """A worker's life: serve queued items until idle too long or the pool closes."""
        if not claim.acquire(blocking=False):
            return  # start_worker() gave the count back: its start() failed as this began
        pool = self.pool
        try:
            pool.work(self._serve, self._idle_timeout, self._server)
        except BaseException:
            # KeyboardInterrupt, SystemExit …: the thread ends as a ThreadingMixIn thread
            # would (threading.excepthook reports it), and the pool may start another.
            pool.worker_gone()
            raise
        finally:
            self.threads.discard(threading.current_thread())

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds until nothing is queued or running; True if so.
        Looks every 10 ms: only a draining server waits here."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pool = self.pool
        while pool.queued or pool.workers > pool.idle:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, wait: bool) -> None:
        """Take no more work; with ``wait``, join the workers once the queue is done.

        Daemon workers are never joined, as ``ThreadingMixIn`` never joins daemon request
        threads: a handler blocked on a silent client must not hold up ``server_close()``
        (and so Ctrl-C) when the user asked for threads the interpreter need not wait for.
        """
        self.pool.close()
        if wait:
            for thread in list(self.threads):
                if not thread.daemon:
                    thread.join()


class ThreadPoolMixIn(_MixInBase):
    """Serve each request on a pooled worker thread.

    ``max_workers``: the most requests served at once (for stream servers, the most
    connections served at once). ``worker_idle_timeout``: seconds an idle worker waits for
    work before it exits. ``daemon_threads`` and ``block_on_close`` mean what they mean for
    ``ThreadingMixIn``: daemon workers do not keep the interpreter alive, and
    ``server_close()`` waits for queued and running requests when ``block_on_close`` is true
    (daemon workers are never waited for).

    ``dispatch_when_readable`` (stream servers): an accepted connection waits in the engine,
    costing a descriptor but no worker, until its first bytes arrive; one silent for
    ``first_byte_timeout`` seconds (default: the handler class's ``timeout``; ``None`` for
    both: no limit) is closed without calling the handler. Leave it off for protocols where
    the server speaks first.
    """

    max_workers: int = min(64, 8 * (os.cpu_count() or 1) + 16)
    worker_idle_timeout: float | None = 10.0
    daemon_threads: bool = False
    block_on_close: bool = True
    dispatch_when_readable: bool = False
    first_byte_timeout: float | None = None

    @property
    def _rs_first_byte_wait(self) -> float | None:
        """For the engine: ``None`` dispatches connections at once; otherwise the seconds a
        parked connection may stay silent (``inf``: no limit). ``first_byte_timeout``, or
        else the handler class's ``timeout``. Datagrams always carry their bytes."""
        stream = getattr(self, "socket_type", socket.SOCK_STREAM) == socket.SOCK_STREAM
        if not self.dispatch_when_readable or not stream:
            return None
        timeout = self.first_byte_timeout
        if timeout is None:
            timeout = getattr(self.RequestHandlerClass, "timeout", None)
        if timeout is None:
            return math.inf
        timeout = float(timeout)
        if not timeout >= 0:
            raise ValueError(f"first_byte_timeout must be >= 0 or None, not {timeout!r}")
        return timeout

    @property
    def _rs_workers(self) -> Workers:
        # Made on first use: mixins get no say in the server's __init__ arguments.
        workers = vars(self).get("_rs_workers")
        if workers is None:
            workers = vars(self)["_rs_workers"] = Workers(
                self.process_request_thread,
                self.max_workers,
                self.worker_idle_timeout,
                self.daemon_threads,
                self,
            )
        return workers

    @property
    def _rs_worker_pool(self) -> _core.WorkerPool:
        """The queue the engine consults before accepting (backpressure)."""
        return self._rs_workers.pool

    @default_hook("pool")
    def process_request(self, request, client_address):
        # type: (Any, Address) -> None
        """Hand the request to a worker, starting one if the pool may grow; with
        ``dispatch_when_readable``, only once the client has sent its first bytes."""
        if self.dispatch_when_readable and self._rs_engine.park(request, client_address):
            return
        self._rs_workers.submit((request, client_address))

    @default_hook()
    def process_request_thread(self, request, client_address):
        # type: (Any, Address) -> None
        """Serve one request on a worker: ``finish_request()`` with error handling. While
        this and the hooks it calls are stock, workers do the same in Rust without calling it
        (see ``_fastpath.stock_worker_path``)."""
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def _rs_wait_idle(self, timeout):
        # type: (float | None) -> bool
        """Wait up to ``timeout`` seconds for queued and running requests to finish."""
        workers = vars(self).get("_rs_workers")
        return workers is None or workers.wait_idle(timeout)

    def server_close(self):
        # type: () -> None
        """Close the server and the pool; with ``block_on_close``, wait for the workers to
        finish the queued and running requests."""
        workers = vars(self).get("_rs_workers")
        if workers is not None:
            # A worker may be receiving from the socket itself: not once it is closed.
            workers.pool.stop_receiving()
        super().server_close()
        if workers is not None:
            workers.close(wait=self.block_on_close)


class ThreadPoolTCPServer(ThreadPoolMixIn, TCPServer):
    """A TCP server that serves each connection on a pooled worker thread."""


class ThreadPoolUDPServer(ThreadPoolMixIn, UDPServer):
    """A UDP server that handles each datagram on a pooled worker thread."""


if hasattr(socket, "AF_UNIX"):
    from ._servers import UnixDatagramServer, UnixStreamServer

    __all__ += ["ThreadPoolUnixDatagramServer", "ThreadPoolUnixStreamServer"]

    class ThreadPoolUnixStreamServer(ThreadPoolMixIn, UnixStreamServer):
        """A Unix-domain stream server that serves each connection on a pooled worker."""

    class ThreadPoolUnixDatagramServer(ThreadPoolMixIn, UnixDatagramServer):
        """A Unix-domain datagram server that handles each datagram on a pooled worker."""
