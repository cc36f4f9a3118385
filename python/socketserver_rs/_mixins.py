"""Concurrency mixins (a thread or a child process per request) and the classes composed
from them, as the stdlib composes them.
"""

import os
import socket
import threading
from typing import TYPE_CHECKING

from ._servers import BaseServer, TCPServer, UDPServer
from ._thread_start import start_thread

# Types are in PEP 484 type comments, so that the runtime signatures stay the stdlib's
# (see _servers.py). Ruff does not read type comments: hence the noqa on their imports.
if TYPE_CHECKING:
    from typing import Any  # noqa: F401

    from ._servers import Address  # noqa: F401

    # A type checker sees the mixins as servers, so the hooks they call (finish_request …)
    # and override are checked; at run time they are plain classes, as in the stdlib.
    _MixInBase = BaseServer
else:
    _MixInBase = object

__all__ = ["ThreadingMixIn", "ThreadingTCPServer", "ThreadingUDPServer"]


class _Threads(list[threading.Thread]):
    """The non-daemon request threads ``server_close()`` will join; finished ones are
    dropped whenever a new one is added, so a long-running server does not accumulate them."""

    def append(self, thread):
        # type: (threading.Thread) -> None
        self.reap()
        if thread.daemon:
            return
        super().append(thread)

    def pop_all(self):
        # type: () -> list[threading.Thread]
        taken = self[:]
        del self[:]
        return taken

    def join(self):
        # type: () -> None
        for thread in self.pop_all():
            thread.join()

    def reap(self):
        # type: () -> None
        self[:] = [thread for thread in self if thread.is_alive()]


class _NoThreads:
    """Stands in for ``_Threads`` when ``block_on_close`` is false: nothing is kept."""

    def append(self, thread):
        # type: (threading.Thread) -> None
        pass

    def join(self):
        # type: () -> None
        pass


class _InFlight:
    """Requests handed to request threads and not yet finished, for ``shutdown(timeout)``."""

    def __init__(self):
        # type: () -> None
        self.count = 0
        self.changed = threading.Condition()

    def begin(self):
        # type: () -> threading.Lock
        """Count one request in; returns its claim for ``end()``, a fresh lock: the first
        to acquire it (the request thread, or a failed ``start()``) counts the request out."""
        with self.changed:
            self.count += 1
        return threading.Lock()

    def end(self, claim):
        # type: (threading.Lock) -> None
        if not claim.acquire(blocking=False):
            return  # counted out already
        with self.changed:
            self.count -= 1
            if self.count == 0:
                self.changed.notify_all()

    def wait_idle(self, timeout):
        # type: (float | None) -> bool
        with self.changed:
            return self.changed.wait_for(lambda: self.count == 0, timeout)


class ThreadingMixIn(_MixInBase):
    """Serve each request in a new thread.

    ``daemon_threads``: whether request threads are daemons (the interpreter does not wait
    for them at exit). ``block_on_close``: whether ``server_close()`` joins the request
    threads still running.
    """

    daemon_threads = False  # type: bool
    block_on_close = True  # type: bool
    _threads = _NoThreads()  # type: _Threads | _NoThreads

    def process_request_thread(self, request, client_address):
        # type: (Any, Address) -> None
        """The body of a request thread: ``finish_request()`` with error handling."""
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def _rs_request_thread(self, claim, request, client_address):
        # type: (threading.Lock, Any, Address) -> None
        """What a request thread runs: ``process_request_thread()``, then the request is
        counted out of the ones in flight, even if an override did not call the stock one."""
        try:
            self.process_request_thread(request, client_address)
        finally:
            self._rs_in_flight.end(claim)

    @property
    def _rs_in_flight(self):
        # type: () -> _InFlight
        in_flight = vars(self).get("_rs_in_flight")
        if in_flight is None:
            in_flight = vars(self)["_rs_in_flight"] = _InFlight()
        return in_flight

    def process_request(self, request, client_address):
        # type: (Any, Address) -> None
        """Start a thread to serve the request."""
        if self.block_on_close:
            vars(self).setdefault("_threads", _Threads())
        claim = self._rs_in_flight.begin()
        thread = threading.Thread(
            target=self._rs_request_thread, args=(claim, request, client_address)
        )
        thread.daemon = self.daemon_threads
        self._threads.append(thread)
        try:
            start_thread(thread)
        except BaseException:
            # The thread may never run; if it does, its own end() finds the claim taken.
            self._rs_in_flight.end(claim)
            raise

    def _rs_wait_idle(self, timeout):
        # type: (float | None) -> bool
        """Wait up to ``timeout`` seconds for the request threads to finish."""
        return self._rs_in_flight.wait_idle(timeout)

    def server_close(self):
        # type: () -> None
        """Close the server, then join the request threads if ``block_on_close``."""
        super().server_close()
        self._threads.join()


class ThreadingUDPServer(ThreadingMixIn, UDPServer):
    """A UDP server that handles each datagram in a new thread."""


class ThreadingTCPServer(ThreadingMixIn, TCPServer):
    """A TCP server that serves each connection in a new thread."""


if hasattr(os, "fork"):
    __all__ += ["ForkingMixIn", "ForkingTCPServer", "ForkingUDPServer"]

    class ForkingMixIn(_MixInBase):
        """Serve each request in a child process.

        ``max_children``: above this many live children, a new request first waits for one
        to exit. ``block_on_close``: whether ``server_close()`` waits for every child.
        Children are reaped in ``service_actions()`` and ``handle_timeout()``.
        """

        timeout = 300  # type: float | None
        active_children = None  # type: set[int] | None
        max_children = 40  # type: int
        block_on_close = True  # type: bool

        def collect_children(self, *, blocking=False):
            # type: (bool) -> None
            """Reap finished children; with ``blocking``, wait for all of them."""
            if self.active_children is None:
                return
            # Over the limit: wait for any child at all until we are under it again.
            while len(self.active_children) >= self.max_children:
                try:
                    pid, _ = os.waitpid(-1, 0)
                    self.active_children.discard(pid)
                except ChildProcessError:
                    self.active_children.clear()  # none left, whatever we thought
                except OSError:
                    break
            # Then reap our own children, without waiting unless asked to.
            flags = 0 if blocking else os.WNOHANG
            for pid in self.active_children.copy():
                try:
                    reaped, _ = os.waitpid(pid, flags)
                    self.active_children.discard(reaped)
                except ChildProcessError:
                    self.active_children.discard(pid)  # someone else reaped it
                except OSError:
                    pass

        def handle_timeout(self):
            # type: () -> None
            """Reap children when ``handle_request()`` times out."""
            self.collect_children()

        def service_actions(self):
            # type: () -> None
            """Reap children between requests and on idle wakeups."""
            self.collect_children()

        def process_request(self, request, client_address):
            # type: (Any, Address) -> None
            """Fork; the child serves the request and exits, the parent closes its copy."""
            pid = os.fork()
            if pid:
                if self.active_children is None:
                    self.active_children = set()
                self.active_children.add(pid)
                self.close_request(request)
                return
            status = 1
            try:
                self.finish_request(request, client_address)
                status = 0
            except Exception:
                self.handle_error(request, client_address)
            finally:
                try:
                    self.shutdown_request(request)
                finally:
                    os._exit(status)

        def server_close(self):
            # type: () -> None
            """Close the server, then reap children (waiting if ``block_on_close``)."""
            super().server_close()
            self.collect_children(blocking=self.block_on_close)

    class ForkingUDPServer(ForkingMixIn, UDPServer):
        """A UDP server that handles each datagram in a child process."""

    class ForkingTCPServer(ForkingMixIn, TCPServer):
        """A TCP server that serves each connection in a child process."""


if hasattr(socket, "AF_UNIX"):
    from ._servers import UnixDatagramServer, UnixStreamServer

    __all__ += ["ThreadingUnixDatagramServer", "ThreadingUnixStreamServer"]

    class ThreadingUnixStreamServer(ThreadingMixIn, UnixStreamServer):
        """A Unix-domain stream server that serves each connection in a new thread."""

    class ThreadingUnixDatagramServer(ThreadingMixIn, UnixDatagramServer):
        """A Unix-domain datagram server that handles each datagram in a new thread."""

    if hasattr(os, "fork"):
        __all__ += ["ForkingUnixDatagramServer", "ForkingUnixStreamServer"]

        class ForkingUnixStreamServer(ForkingMixIn, UnixStreamServer):
            """A Unix-domain stream server that serves each connection in a child process."""

        class ForkingUnixDatagramServer(ForkingMixIn, UnixDatagramServer):
            """A Unix-domain datagram server that handles each datagram in a child process."""
