"""Prefork workers: every core serving the same listener, under a supervising parent.

``PreforkMixIn`` goes first in the bases of any server class of this package::

    class Server(socketserver_rs.PreforkMixIn, socketserver_rs.ThreadPoolTCPServer):
        workers = 4

The constructor binds and listens in the parent, as usual. ``serve_forever()`` in the parent
forks ``workers`` children, each running the class's ordinary serving loop on the inherited
listener, and supervises them until ``shutdown()`` or a signal. The parent serves nothing.

This module is the policy (what signals mean, when to respawn, whom to stop); the waiting and
the bookkeeping (child exits, signals, shutdown requests, heartbeats) are the Rust
``Supervisor``'s, in one wait with the GIL released.
"""

import os
import random
import signal
import sys
import threading
import time
import traceback
from typing import TYPE_CHECKING, Any

from . import _activation, _core

if TYPE_CHECKING:
    from ._servers import BaseServer

    _MixInBase = BaseServer
else:
    _MixInBase = object

__all__ = ["PreforkMixIn"]


def default_workers() -> int:
    """The CPUs this process may use (``os.process_cpu_count()`` where Python has it)."""
    count = getattr(os, "process_cpu_count", os.cpu_count)()
    return count or 1


# Heartbeat slots on the board: children alive at once (a reload doubles them for a while).
_SLOTS = 1024
# A child that ends within this many seconds of its start failed to start: its replacement
# waits, doubling from _BACKOFF_FIRST up to _BACKOFF_MAX, so a broken worker is no fork loop.
_QUICK_DEATH = 1.0
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 5.0
# SIGINT: seconds children get to exit at once before they are killed.
_QUICK_STOP = 1.0
# The longest the supervisor sleeps; shorter when it cannot hear SIGCHLD (not on the main
# thread), so a dead child is still replaced within 100 ms.
_TICK = 1.0
_TICK_WITHOUT_SIGNALS = 0.05
# Signals the parent acts on, blocked around fork() so a child never runs the parent's
# handlers; a child ignores the ones that mean something only to the parent.
_PARENT_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGTERM", "SIGHUP", "SIGTTIN", "SIGTTOU", "SIGCHLD", "SIGINT")
    if hasattr(signal, name)
)
_CHILD_IGNORES = tuple(
    getattr(signal, name) for name in ("SIGHUP", "SIGTTIN", "SIGTTOU") if hasattr(signal, name)
)


class _Child:
    """One forked worker, as the parent sees it."""

    __slots__ = ("index", "kill_at", "pid", "slot", "started", "stopping")

    def __init__(self, pid: int, index: int, slot: int) -> None:
        self.pid = pid
        self.index = index
        self.slot = slot
        self.started = time.monotonic()
        self.stopping = False
        self.kill_at: float | None = None


class _Arbiter:
    """The parent's supervising loop for one ``serve_forever()`` call."""

    def __init__(self, server: "PreforkMixIn", poll_interval: float | None) -> None:
        self.server = server
        self.poll_interval = poll_interval
        self.supervisor = server._rs_supervisor
        self.target = server.workers
        self.children: dict[int, _Child] = {}
        self.free_slots = list(range(_SLOTS - 1, -1, -1))
        # index -> (consecutive failed starts, earliest next start)
        self.backoff: dict[int, tuple[int, float]] = {}
        self.pending_signals: list[int] = []
        self.stopping = False
        self.pid = os.getpid()

    # -- signals -------------------------------------------------------------------------

    def _note_signal(self, signum: int, frame: object) -> None:
        self.pending_signals.append(signum)

    def _install_signals(self) -> dict[int, Any] | None:
        if threading.current_thread() is not threading.main_thread():
            return None  # only the main thread may; shutdown() still works
        previous = {}
        # SIGINT too: KeyboardInterrupt raised at any bytecode of this loop could drop the
        # statuses of children the wait has just reaped. It is raised below, once they are
        # all stopped and accounted for.
        for name in ("SIGTERM", "SIGHUP", "SIGTTIN", "SIGTTOU", "SIGCHLD", "SIGINT"):
            signum = getattr(signal, name, None)
            # A signal the process was started ignoring (nohup, a background job) stays so.
            if signum is not None and signal.getsignal(signum) != signal.SIG_IGN:
                previous[signum] = signal.signal(signum, self._note_signal)
        return previous

    def _act_on_signals(self) -> None:
        while self.pending_signals:
            signum = self.pending_signals.pop(0)
            if signum == signal.SIGINT:
                self.stop_at_once()
                raise KeyboardInterrupt
            if signum == signal.SIGTERM:
                self.begin_stop(self.server.graceful_timeout)
            elif self.stopping:
                continue  # no reloading or resizing on the way out
            elif signum == getattr(signal, "SIGHUP", None):
                self.reload()
            elif signum == getattr(signal, "SIGTTIN", None):
                self.target += 1
            elif signum == getattr(signal, "SIGTTOU", None):
                self.target = max(1, self.target - 1)
            # SIGCHLD only wakes the wait, which reaps.

    # -- children ------------------------------------------------------------------------

    def live(self) -> list[_Child]:
        return [child for child in self.children.values() if not child.stopping]

    def spawn(self, index: int) -> None:
        if not self.free_slots:
            raise RuntimeError(f"more than {_SLOTS} prefork children alive at once")
        slot = self.free_slots.pop()
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _PARENT_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                try:
                    self.server._rs_child_main(index, slot, self.pid, self.poll_interval, blocked)
                finally:
                    os._exit(1)  # a child never runs the supervising code fork() copied
            self.supervisor.watch_child(pid, slot)
        except BaseException:
            self.free_slots.append(slot)
            raise
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self.children[pid] = _Child(pid, index, slot)

    def signal_child(self, child: _Child, signum: int) -> None:
        if not self.supervisor.is_watching(child.pid):
            return  # reaped already: its pid may belong to another process by now
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass  # already gone; the wait reaps it

    def retire(self, child: _Child, timeout: float | None) -> None:
        """Gracefully stop ``child``: it stops accepting and finishes what it has."""
        if child.stopping:
            return
        child.stopping = True
        child.kill_at = None if timeout is None else time.monotonic() + timeout
        self.signal_child(child, signal.SIGTERM)

    def reaped(self, pid: int, status: int | None) -> None:
        child = self.children.pop(pid, None)
        if child is None:
            return
        self.free_slots.append(child.slot)
        code = os.waitstatus_to_exitcode(status) if status is not None else 0
        now = time.monotonic()
        if now - child.started >= _QUICK_DEATH:
            self.backoff.pop(child.index, None)  # this index has started fine
        elif not child.stopping:
            # Died on its own right after its start: the first replacement starts at once,
            # the next ones wait, doubling, so a worker that cannot start makes no fork loop.
            failures = self.backoff.get(child.index, (0, 0.0))[0] + 1
            delay = (
                0.0 if failures == 1 else min(_BACKOFF_FIRST * 2 ** (failures - 1), _BACKOFF_MAX)
            )
            self.backoff[child.index] = (failures, now + delay)
        try:
            self.server.worker_exit(child.index, code)
        except Exception:
            traceback.print_exc()

    def reload(self) -> None:
        """New children first, then a graceful stop of the old ones; the listener stays.
        A TLS server re-reads its certificates first, so the new children serve them; if
        that fails, the error goes to stderr and the children are replaced all the same,
        with the certificates they had."""
        reload_tls = getattr(self.server, "reload_tls", None)
        if reload_tls is not None and getattr(self.server, "tls_certfile", None) is not None:
            try:
                reload_tls()
            except ValueError as err:
                print(
                    f"socketserver_rs: reloading TLS certificates failed, keeping the old "
                    f"ones: {err}",
                    file=sys.stderr,
                )
        old = self.live()
        for child in old:
            self.spawn(child.index)
        for child in old:
            self.retire(child, self.server.graceful_timeout)

    def fill(self) -> None:
        """Start children for missing indices (respecting backoff); stop surplus ones."""
        live = self.live()
        taken = {child.index for child in live}
        for child in sorted(live, key=lambda c: -c.index):
            if len(taken) <= self.target:
                break
            self.retire(child, self.server.graceful_timeout)
            taken.discard(child.index)
        now = time.monotonic()
        for index in range(self.target):
            if index in taken:
                continue
            _, not_before = self.backoff.get(index, (0, 0.0))
            if now >= not_before:
                self.spawn(index)

    def check_heartbeats(self) -> None:
        timeout = self.server.worker_timeout
        if timeout is None:
            return
        by_slot = {child.slot: child for child in self.live()}
        for slot in self.supervisor.stale(list(by_slot), timeout):
            child = by_slot[slot]
            print(
                f"socketserver_rs: worker {child.index} (pid {child.pid}) silent for more than "
                f"{timeout} s; killing it",
                file=sys.stderr,
            )
            self.signal_child(child, signal.SIGKILL)
            child.stopping = True  # on its way out: replaced now, with no backoff

    def kill_overdue(self) -> None:
        now = time.monotonic()
        for child in self.children.values():
            if child.stopping and child.kill_at is not None and now >= child.kill_at:
                self.signal_child(child, signal.SIGKILL)
                child.kill_at = None

    def begin_stop(self, timeout: float | None) -> None:
        self.stopping = True
        for child in self.children.values():
            if not child.stopping:
                self.retire(child, timeout)

    def next_timeout(self, tick: float) -> float:
        now = time.monotonic()
        moments = [now + tick]
        moments += [c.kill_at for c in self.children.values() if c.kill_at is not None]
        if not self.stopping:
            moments += [at for _, at in self.backoff.values() if at > now]
            if self.server.worker_timeout is not None:
                moments.append(now + self.server.worker_timeout / 4)
        return max(0.0, min(moments) - now)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        supervisor = self.supervisor
        supervisor.begin()
        previous = self._install_signals()
        tick = _TICK if previous is not None else _TICK_WITHOUT_SIGNALS
        ready = False
        try:
            while True:
                if supervisor.stop_requested and not self.stopping:
                    self.begin_stop(self.server._rs_stop_timeout())
                self._act_on_signals()
                if self.stopping and ready:
                    _activation.notify_quietly("STOPPING=1")  # as the stop begins, once
                    ready = False
                if not self.stopping:
                    self.fill()
                    self.check_heartbeats()
                    if not ready:
                        # The parent speaks for the service (the children do not).
                        _activation.notify_quietly("READY=1")
                        ready = True
                self.kill_overdue()
                if self.stopping and not self.children:
                    return
                for pid, status in supervisor.wait(self.next_timeout(tick)):
                    self.reaped(pid, status)
        except BaseException:
            if ready:
                _activation.notify_quietly("STOPPING=1")
            if self.children:
                self.stop_at_once()
            raise
        finally:
            if previous is not None:
                for signum, handler in previous.items():
                    signal.signal(signum, handler)
            supervisor.end()

    def stop_at_once(self) -> None:
        """Ctrl-C or an error in the parent: children stop now (SIGINT), then are killed."""
        for child in self.children.values():
            self.signal_child(child, signal.SIGINT)
        deadline = time.monotonic() + _QUICK_STOP
        while self.children:
            left = deadline - time.monotonic()
            if left <= 0:
                for child in self.children.values():
                    self.signal_child(child, signal.SIGKILL)
                deadline = float("inf")
            for pid, status in self.supervisor.wait(min(max(left, 0.0), 0.05)):
                self.reaped(pid, status)
            for child in list(self.children.values()):
                if not self.supervisor.is_watching(child.pid):
                    self.reaped(child.pid, None)  # reaped, its status lost to an exception


class PreforkMixIn(_MixInBase):
    """Serve with ``workers`` pre-forked child processes sharing the listening socket.

    Class attributes:

    - ``workers``: children to run (default: the CPUs this process may use).
    - ``worker_timeout``: seconds a child's serving loop may go without reporting in before
      it is killed and replaced (None: no hang detection). The loop reports in around every
      wait, so a handler that blocks the serving loop for that long counts as a hang; pooled
      and threaded handlers do not block the loop.
    - ``graceful_timeout``: seconds a stopping child gets to finish its in-flight requests.
    - ``max_requests``: a child retires (gracefully) after serving this many requests, plus a
      random 0..``max_requests_jitter``; 0 means never. Counted in ``finish_request()``;
      reactor servers count handled messages (datagrams) in their engine.

    Hooks: ``worker_init(worker_index)`` runs in each child before it serves;
    ``worker_exit(worker_index, status)`` runs in the parent when a child has ended (status:
    the exit code, negative for a signal, as ``os.waitstatus_to_exitcode`` gives it).

    Signals to the parent (when ``serve_forever()`` runs on the main thread): SIGTERM stops
    gracefully, SIGINT at once, SIGHUP reloads (a TLS reactor server re-reads its
    certificates, then new children start and the old ones stop gracefully), SIGTTIN /
    SIGTTOU add or remove a worker. ``shutdown(timeout=None)`` from another thread stops
    gracefully (``timeout`` overriding ``graceful_timeout``) and returns once every child
    has ended.
    """

    workers: int = default_workers()
    worker_timeout: float | None = 30.0
    graceful_timeout: float = 30.0
    max_requests: int = 0
    max_requests_jitter: int = 0

    @property
    def _rs_supervisor(self) -> _core.Supervisor:
        # Made on first use (mixins get no say in the constructor): a shutdown() before
        # serve_forever() marks it, and that serve_forever() returns at once.
        supervisor = vars(self).get("_rs_supervisor")
        if supervisor is None:
            supervisor = vars(self)["_rs_supervisor"] = _core.Supervisor(_SLOTS)
        return supervisor

    def worker_init(self, worker_index: int) -> None:
        """Called in each child before it serves (reseed, open connections …)."""

    def worker_exit(self, worker_index: int, status: int) -> None:
        """Called in the parent when the child ``worker_index`` has ended with ``status``."""

    def serve_forever(self, poll_interval=0.5):
        # type: (float | None) -> None
        """Fork the workers and supervise them until ``shutdown()`` or a signal."""
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be a positive integer, not {self.workers!r}")
        _Arbiter(self, poll_interval).run()

    def shutdown(self, timeout=None):
        # type: (float | None) -> None
        """Stop gracefully: children stop accepting and finish their requests (for up to
        ``timeout`` seconds, or ``graceful_timeout``), then are killed. Returns once every
        child has ended. In a child, it is that child's own server's ``shutdown()``."""
        if vars(self).get("_rs_worker_index") is not None:
            super().shutdown(timeout)
            return
        vars(self)["_rs_shutdown_timeout"] = timeout
        supervisor = self._rs_supervisor
        supervisor.request_stop()
        supervisor.wait_stopped()

    def _rs_stop_timeout(self) -> float | None:
        timeout = vars(self).pop("_rs_shutdown_timeout", None)
        return self.graceful_timeout if timeout is None else timeout

    def finish_request(self, request, client_address):
        # type: (Any, Any) -> None
        """Serve the request; in a child with ``max_requests``, count it."""
        super().finish_request(request, client_address)
        left = vars(self).get("_rs_requests_left")
        if left is not None and next(left) <= 0:
            # Retire as SIGTERM makes a child retire: finish in-flight work, then exit.
            os.kill(os.getpid(), signal.SIGTERM)

    # -- in the child --------------------------------------------------------------------

    def _rs_child_stop(self, signum: int, frame: object) -> None:
        # Runs on the serving thread: only set the sticky flag the loop looks at after the
        # signal woke it (shutdown() there would wait for a loop that may not have started).
        # It never raises: an exception raised by a signal could land anywhere, even in the
        # child's last lines before os._exit(), and carry the child up into the parent's
        # supervising code that fork() copied (a terminal's Ctrl-C and the parent's own SIGINT
        # reach a child one after the other).
        server: Any = self
        at_once = signum == signal.SIGINT
        if at_once:
            vars(self)["_rs_stop_at_once"] = True
        if hasattr(server, "_rs_engine"):
            server._rs_engine.shutdown_requested = True
        else:
            server._rs_reactor.request_stop(0.0 if at_once else self.graceful_timeout)

    def _rs_child_main(
        self,
        index: int,
        slot: int,
        parent: int,
        poll_interval: float | None,
        mask: set[int | signal.Signals],
    ) -> None:
        """A child's whole life; never returns."""
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGTERM, self._rs_child_stop)
            signal.signal(signal.SIGINT, self._rs_child_stop)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            for signum in _CHILD_IGNORES:
                signal.signal(signum, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            # The parent alone talks to the service manager (sd_notify(3)'s
            # unset_environment, for the serving loop's READY=1 / STOPPING=1).
            os.environ.pop("NOTIFY_SOCKET", None)
            timeout = self.worker_timeout
            beat_every = None if timeout is None else min(max(timeout / 4, 0.05), 1.0)
            if not self._rs_supervisor.enter_child(parent, slot, beat_every):
                os._exit(1)
            vars(self)["_rs_worker_index"] = index
            vars(self).pop("_rs_supervisor", None)
            if self.max_requests:
                limit = self.max_requests + random.randint(0, max(0, self.max_requests_jitter))
                if hasattr(self, "_rs_engine"):
                    vars(self)["_rs_requests_left"] = iter(range(limit - 1, -(2**62), -1))
                else:  # a reactor counts its messages itself
                    reactor: Any = self
                    reactor._rs_reactor.retire_after(limit, self.graceful_timeout)
            random.seed()
            self.worker_init(index)
            super().serve_forever(poll_interval)
            if not vars(self).get("_rs_stop_at_once"):
                self._rs_drain(self.graceful_timeout)
            code = 0
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except Exception:
                    pass
            os._exit(code)

    def _rs_drain(self, timeout: float | None) -> None:
        wait_idle = getattr(self, "_rs_wait_idle", None)
        if wait_idle is not None:
            wait_idle(timeout)
