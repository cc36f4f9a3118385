"""Pooled threading: a bounded, elastic set of worker threads instead of a thread per request.

Workers are ordinary ``threading.Thread`` objects (so ``threading.local``,
``current_thread()``, tracing and ``threading.excepthook`` behave as usual) fed from a Rust
queue. The pool grows on demand up to ``max_workers``; a worker idle for
``worker_idle_timeout`` seconds retires. When every worker is busy and the pool is full,
the engine stops accepting, so further clients wait in the kernel's backlog instead of
costing memory and threads here.
"""

import os
import socket
import threading
import weakref

from . import _core
from ._servers import TCPServer, UDPServer

__all__ = ["ThreadPoolMixIn", "ThreadPoolTCPServer", "ThreadPoolUDPServer"]

# Idle non-daemon workers would hold up interpreter exit until they retire, so every pool
# still open is closed when the interpreter starts shutting down; running requests finish.
_open_pools = weakref.WeakSet()


def _close_open_pools():
    for pool in list(_open_pools):
        pool.close()


# The hook that runs before non-daemon threads are joined (concurrent.futures uses it too).
threading._register_atexit(_close_open_pools)


class ThreadPoolMixIn:
    """Serve each request on a pooled worker thread.

    ``max_workers``: the most requests served at once (for stream servers, the most
    connections served at once). ``worker_idle_timeout``: seconds an idle worker waits for
    work before it exits. ``daemon_threads`` and ``block_on_close`` mean what they mean for
    ``ThreadingMixIn``: daemon workers do not keep the interpreter alive, and
    ``server_close()`` waits for queued and running requests when ``block_on_close`` is true.
    """

    max_workers = min(64, 8 * (os.cpu_count() or 1) + 16)
    worker_idle_timeout = 10.0
    daemon_threads = False
    block_on_close = True

    @property
    def _rs_worker_pool(self):
        # Made on first use: mixins get no say in the server's __init__ arguments.
        state = vars(self)
        pool = state.get("_rs_pool")
        if pool is None:
            pool = state["_rs_pool"] = _core.WorkerPool(self.max_workers)
            state["_rs_pool_workers"] = set()
            _open_pools.add(pool)
        return pool

    def process_request(self, request, client_address):
        """Hand the request to a worker, starting one if the pool may grow."""
        pool = self._rs_worker_pool
        if pool.submit((request, client_address)):
            self._rs_start_worker(pool)

    def _rs_start_worker(self, pool):
        worker = threading.Thread(target=self._rs_work, args=(pool,), daemon=self.daemon_threads)
        workers = self._rs_pool_workers
        workers.add(worker)
        try:
            worker.start()
        except BaseException:
            workers.discard(worker)
            pool.worker_gone()
            raise

    def _rs_work(self, pool):
        """A worker's life: serve queued requests until idle too long or the pool closes."""
        try:
            while (item := pool.take(self.worker_idle_timeout)) is not None:
                request, client_address = item
                del item  # keep no reference to a finished request while idle
                self.process_request_thread(request, client_address)
                del request, client_address
        except BaseException:
            # KeyboardInterrupt, SystemExit …: the thread ends as a ThreadingMixIn thread
            # would (threading.excepthook reports it), and the pool may start another.
            pool.worker_gone()
            raise
        finally:
            self._rs_pool_workers.discard(threading.current_thread())

    def process_request_thread(self, request, client_address):
        """Serve one request on a worker: ``finish_request()`` with error handling."""
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self):
        """Close the server and the pool; with ``block_on_close``, wait for the workers to
        finish the queued and running requests."""
        super().server_close()
        pool = vars(self).get("_rs_pool")
        if pool is None:
            return
        pool.close()
        if self.block_on_close:
            for worker in list(self._rs_pool_workers):
                worker.join()


class ThreadPoolTCPServer(ThreadPoolMixIn, TCPServer):
    pass


class ThreadPoolUDPServer(ThreadPoolMixIn, UDPServer):
    pass


if hasattr(socket, "AF_UNIX"):
    from ._servers import UnixDatagramServer, UnixStreamServer

    __all__ += ["ThreadPoolUnixDatagramServer", "ThreadPoolUnixStreamServer"]

    class ThreadPoolUnixStreamServer(ThreadPoolMixIn, UnixStreamServer):
        pass

    class ThreadPoolUnixDatagramServer(ThreadPoolMixIn, UnixDatagramServer):
        pass
