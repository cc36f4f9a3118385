"""Test your handlers on both the stdlib's ``socketserver`` and socketserver_rs (a pytest plugin).

Installed with the package and registered through the ``pytest11`` entry point; it only adds
a command-line option and fixtures, so a test suite that uses none of them is unaffected.

- ``socketserver_module``, a fixture: the stdlib ``socketserver`` (test id ``stdlib``) or
  ``socketserver_rs`` (``rs``); a test that takes it runs once per module.
  ``--socketserver=stdlib|rs|both`` (default ``both``) selects the modules.
- ``serving(server)``, a context manager: runs ``serve_forever()`` on a thread and yields the
  bound address; on exit calls ``shutdown()`` and ``server_close()``, each bounded in time,
  and re-raises in the test the first exception that escaped a handler (reached
  ``handle_error()``) or ``serve_forever()`` itself. ``socketserver_serve`` is the fixture
  form: ``address = socketserver_serve(server)``, stopped at teardown.
- ``compare(make_server, *clients)``: builds a server on each module with
  ``make_server(module)``, drives it with the same scripted clients (``Send``, ``Recv``,
  ``RecvAll``, ``HalfClose``) and asserts that the clients saw the same replies and closes
  and that ``handle_error()`` was called for the same exceptions; returns that
  ``Transcript``.

See docs/testing.md for a worked example.
"""

import contextlib
import importlib.machinery
import importlib.util
import os
import socket
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, Protocol, TypeAlias

import pytest

__all__ = [
    "DEFAULT_TIMEOUT",
    "MODULE_IDS",
    "HalfClose",
    "Recv",
    "RecvAll",
    "Send",
    "Step",
    "Transcript",
    "compare",
    "serving",
    "socketserver_modules",
]

# Test ids of the two modules, in the order tests run on them.
MODULE_IDS = ("stdlib", "rs")
# Seconds that stopping a server, a client's read or a request may take before the test fails.
DEFAULT_TIMEOUT = 5.0
# serve_forever()'s poll_interval here: the stdlib's shutdown() waits up to that long.
POLL_INTERVAL = 0.05


class Server(Protocol):
    """What ``serving()`` and ``compare()`` need of a server, from either module."""

    server_address: Any
    socket: socket.socket

    def serve_forever(self, poll_interval: float = ...) -> None: ...
    def shutdown(self) -> None: ...
    def server_close(self) -> None: ...
    def handle_error(self, request: Any, client_address: Any) -> None: ...
    def close_request(self, request: Any) -> None: ...


# --- the two modules ------------------------------------------------------------------------

_stdlib_module: ModuleType | None = None


def stdlib_socketserver() -> ModuleType:
    """The standard library's ``socketserver`` module, even where ``import socketserver``
    gives socketserver_rs (after ``install()``, or under ``python -m socketserver_rs run``):
    then a copy is loaded from the stdlib's directory, without touching ``sys.modules``."""
    global _stdlib_module
    rs = socketserver_rs_module()
    if sys.modules.get("socketserver") is not rs:
        import socketserver  # the stdlib's: the swap is not in place

        return socketserver
    if _stdlib_module is None:
        spec = importlib.machinery.PathFinder.find_spec(
            "socketserver", [sysconfig.get_paths()["stdlib"]]
        )
        if spec is None or spec.loader is None:
            raise RuntimeError("cannot find the standard library's socketserver module")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _stdlib_module = module
    return _stdlib_module


def socketserver_rs_module() -> ModuleType:
    """The ``socketserver_rs`` package."""
    return sys.modules[__package__ or "socketserver_rs"]


def socketserver_modules(selection: str = "both") -> list[tuple[str, ModuleType]]:
    """``(id, module)`` for ``selection``: ``stdlib``, ``rs`` or ``both``."""
    if selection not in ("stdlib", "rs", "both"):
        raise ValueError(f"socketserver selection must be stdlib, rs or both, not {selection!r}")
    modules = {"stdlib": stdlib_socketserver, "rs": socketserver_rs_module}
    return [(name, modules[name]()) for name in MODULE_IDS if selection in (name, "both")]


# --- serving --------------------------------------------------------------------------------


def _is_stock_handle_error(server: object) -> bool:
    """True if ``server``'s ``handle_error`` is one of the modules' own (which print the
    traceback to stderr), not an override."""
    module = getattr(getattr(type(server), "handle_error", None), "__module__", None) or ""
    return module == "socketserver" or module.startswith("socketserver_rs.")


class _Running:
    """``server.serve_forever()`` on a daemon thread, with its errors collected.

    ``handle_error`` and ``close_request`` are wrapped on the instance (and put back at the
    end): the first records the exception being handled (and calls an overriding
    ``handle_error``; the default one's printing is left out, since the test reports the
    error), the second counts finished requests, for ``wait_for_requests()`` (reactor
    servers have no ``close_request``: their requests are not counted)."""

    def __init__(self, server: Server, poll_interval: float, timeout: float) -> None:
        self.server = server
        self.timeout = timeout
        self.errors: list[BaseException] = []
        self.finished = 0
        self._changed = threading.Condition()
        self.escaped: BaseException | None = None  # what escaped serve_forever()
        self.counts_requests = hasattr(server, "close_request")
        hooks = ("handle_error", "close_request") if self.counts_requests else ("handle_error",)
        self._saved = {name: vars(server).get(name) for name in hooks}
        handle_error = server.handle_error
        stock = _is_stock_handle_error(server)

        def recording_handle_error(request: Any, client_address: Any) -> None:
            error = sys.exc_info()[1]
            if error is None:
                error = RuntimeError("handle_error() was called with no exception being handled")
            with self._changed:
                self.errors.append(error)
            if not stock:
                handle_error(request, client_address)

        vars(server)["handle_error"] = recording_handle_error
        if self.counts_requests:
            close_request = server.close_request

            def counting_close_request(request: Any) -> None:
                try:
                    close_request(request)
                finally:
                    with self._changed:
                        self.finished += 1
                        self._changed.notify_all()

            vars(server)["close_request"] = counting_close_request
        self._thread = threading.Thread(
            target=self._serve, args=(poll_interval,), name="serving", daemon=True
        )
        self._thread.start()

    def _serve(self, poll_interval: float) -> None:
        try:
            self.server.serve_forever(poll_interval)
        except BaseException as error:
            self.escaped = error

    def wait_for_requests(self, count: int) -> None:
        """Wait until ``count`` requests have been closed; fail after the timeout."""
        deadline = time.monotonic() + self.timeout
        with self._changed:
            while self.finished < count:
                left = deadline - time.monotonic()
                if not self._thread.is_alive() and self.escaped is not None:
                    raise self.escaped
                if left <= 0 or not self._thread.is_alive():
                    raise AssertionError(
                        f"the server finished {self.finished} of {count} requests "
                        f"within {self.timeout} s"
                    )
                self._changed.wait(min(left, 0.1))

    def stop(self) -> None:
        """Shut the loop down and close the server, within ``timeout`` each; then put the
        instance's hooks back."""
        __tracebackhide__ = True
        try:
            if self._thread.is_alive():
                stopper = threading.Thread(target=self.server.shutdown, daemon=True)
                stopper.start()
                stopper.join(self.timeout)
                if stopper.is_alive():
                    raise AssertionError(f"shutdown() did not return within {self.timeout} s")
            self._thread.join(self.timeout)
            if self._thread.is_alive():
                raise AssertionError(f"serve_forever() did not return within {self.timeout} s")
        finally:
            closer = threading.Thread(target=self.server.server_close, daemon=True)
            closer.start()
            closer.join(self.timeout)
            for name, value in self._saved.items():
                if value is None:
                    vars(self.server).pop(name, None)
                else:
                    vars(self.server)[name] = value
            if closer.is_alive():
                raise AssertionError(f"server_close() did not return within {self.timeout} s")

    def first_error(self) -> BaseException | None:
        """What escaped ``serve_forever()``, else the first exception of a request."""
        with self._changed:
            return self.escaped or (self.errors[0] if self.errors else None)


@contextlib.contextmanager
def serving(
    server: Any, *, poll_interval: float = POLL_INTERVAL, timeout: float = DEFAULT_TIMEOUT
) -> Iterator[Any]:
    """Serve ``server`` on a thread for the ``with`` block; yields ``server.server_address``.

    On the way out: ``shutdown()`` and ``server_close()`` (each must return within
    ``timeout`` seconds, or the test fails), then the first exception that escaped
    ``serve_forever()`` or reached ``handle_error()`` is raised in the test, with its own
    traceback; the default ``handle_error()`` does not print it to stderr meanwhile.
    Exceptions raised in a ``ForkingMixIn`` server's child processes stay in those processes.
    """
    __tracebackhide__ = True
    running = _Running(server, poll_interval, timeout)
    try:
        yield server.server_address
    finally:
        running.stop()
        error = running.first_error()
        if error is not None:
            raise error


# --- compare --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send ``data``: all of it on a stream, one datagram on a datagram socket."""

    data: bytes


@dataclass(frozen=True)
class Recv:
    """Receive: on a stream, exactly ``size`` bytes (fewer only if the server closed); on a
    datagram socket, one datagram of up to ``size`` bytes."""

    size: int = 65536


@dataclass(frozen=True)
class RecvAll:
    """Receive on a stream until the server closes it (at most ``limit`` bytes)."""

    limit: int = 1 << 24


@dataclass(frozen=True)
class HalfClose:
    """Shut down the writing half of a stream (the server reads end of file)."""


Step: TypeAlias = Send | Recv | RecvAll | HalfClose
# What a client observed at one step: bytes received (b"" when a stream was closed), or
# "<reset>", "<timeout>", or "<ErrorName>" for a send that failed.
Observed: TypeAlias = bytes | str


@dataclass(frozen=True)
class Transcript:
    """What happened to the scripted clients of one server.

    ``replies`` has one tuple per client with one item per ``Recv``/``RecvAll`` (and one per
    failing ``Send``): the bytes received, ``b""`` for a stream the server closed, or
    ``"<reset>"``, ``"<timeout>"``, ``"<BrokenPipeError>"`` …; ``errors`` has
    ``"Type: message"`` for each exception that reached ``handle_error()``, in order."""

    replies: tuple[tuple[Observed, ...], ...]
    errors: tuple[str, ...]


def _receive_exactly(sock: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    missing = size
    while missing > 0:
        chunk = sock.recv(min(missing, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        missing -= len(chunk)
    return b"".join(chunks)


def _receive_all(sock: socket.socket, limit: int) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while total < limit:
        chunk = sock.recv(min(limit - total, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def _play(
    server: Server, steps: Sequence[Step], timeout: float, scratch: str, index: int
) -> tuple[list[Observed], int]:
    """Run one client's ``steps`` against ``server``; returns what it observed and how many
    requests it made (one per connection, one per datagram)."""
    stream = server.socket.type == socket.SOCK_STREAM
    family = server.socket.family
    observed: list[Observed] = []
    with socket.socket(family, server.socket.type) as sock:
        sock.settimeout(timeout)
        if stream:
            sock.connect(server.server_address)
        elif family == getattr(socket, "AF_UNIX", None):
            sock.bind(os.path.join(scratch, f"client-{index}"))  # so that replies can come
        requests = 1 if stream else 0
        for step in steps:
            try:
                if isinstance(step, Send):
                    if stream:
                        sock.sendall(step.data)
                    else:
                        sock.sendto(step.data, server.server_address)
                        requests += 1
                elif isinstance(step, Recv):
                    observed.append(
                        _receive_exactly(sock, step.size) if stream else sock.recv(step.size)
                    )
                elif isinstance(step, RecvAll):
                    if not stream:
                        raise TypeError("RecvAll is for stream servers")
                    observed.append(_receive_all(sock, step.limit))
                elif isinstance(step, HalfClose):
                    if not stream:
                        raise TypeError("HalfClose is for stream servers")
                    sock.shutdown(socket.SHUT_WR)
                else:
                    raise TypeError(f"not a client step: {step!r}")
            except TimeoutError:
                observed.append("<timeout>")
            except ConnectionResetError:
                observed.append("<reset>")
            except OSError as error:
                observed.append(f"<{type(error).__name__}>")
    return observed, requests


def _transcript(
    make_server: Callable[[ModuleType], Any],
    module: ModuleType,
    clients: Sequence[Sequence[Step]],
    timeout: float,
) -> Transcript:
    server = make_server(module)
    if not hasattr(server, "close_request"):
        server.server_close()
        raise TypeError(f"compare() cannot tell when a request of {type(server).__name__} ends")
    running = _Running(server, POLL_INTERVAL, timeout)
    replies = []
    try:
        with tempfile.TemporaryDirectory(prefix="ssrs") as scratch:
            requests = 0
            for index, steps in enumerate(clients):
                observed, made = _play(server, steps, timeout, scratch, index)
                replies.append(tuple(observed))
                requests += made
                # The request is over (closed, after handle_error()) before the next client.
                running.wait_for_requests(requests)
    finally:
        running.stop()
    if running.escaped is not None:
        raise running.escaped
    errors = tuple(f"{type(error).__name__}: {error}" for error in running.errors)
    return Transcript(tuple(replies), errors)


def compare(
    make_server: Callable[[ModuleType], Any],
    *clients: Sequence[Step],
    modules: Literal["both"] | Sequence[ModuleType] = "both",
    timeout: float = DEFAULT_TIMEOUT,
) -> Transcript:
    """Serve the same clients on each module's server and assert they saw the same thing.

    ``make_server(module)`` returns a new server (bound, listening) whose handler is built on
    ``module``'s classes; it is called once per module (give a Unix socket a new path each
    time). Each client in ``clients`` is a sequence of steps (``Send``, ``Recv``,
    ``RecvAll``, ``HalfClose``) played on a new socket, one client after another, each
    request finished (closed) before the next client starts. Raises ``AssertionError``,
    showing both transcripts, if the replies, the closes or the ``handle_error()`` calls
    differ; returns the transcript otherwise. ``ForkingMixIn`` and reactor servers are not
    supported (their requests end elsewhere).
    """
    __tracebackhide__ = True
    chosen = [m for _, m in socketserver_modules()] if modules == "both" else list(modules)
    transcripts = [
        (module, _transcript(make_server, module, clients, timeout)) for module in chosen
    ]
    (first_module, first), *others = transcripts
    for module, transcript in others:
        if transcript != first:
            raise AssertionError(
                f"{module.__name__} and {first_module.__name__} differ:\n"
                f"  {first_module.__name__}: {first}\n  {module.__name__}: {transcript}"
            )
    return first


# --- the pytest plugin ----------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--socketserver=stdlib|rs|both``."""
    parser.getgroup("socketserver_rs").addoption(
        "--socketserver",
        choices=("stdlib", "rs", "both"),
        default="both",
        help="run tests that take the socketserver_module fixture on the stdlib's "
        "socketserver, on socketserver_rs, or on both (default: both)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``socketserver_module`` over the selected modules, unless the test does
    it itself (``@pytest.mark.parametrize("socketserver_module", ...)``)."""
    own = any(
        "socketserver_module" in _argnames(marker.args[0])
        for marker in metafunc.definition.iter_markers("parametrize")
        if marker.args
    )
    if "socketserver_module" in metafunc.fixturenames and not own:
        selection = str(metafunc.config.getoption("socketserver"))
        names = [name for name, _ in socketserver_modules(selection)]
        metafunc.parametrize("socketserver_module", names, indirect=True, ids=names)


def _argnames(names: object) -> list[str]:
    """The argument names of a ``parametrize`` marker: "a, b" or a sequence of names."""
    if isinstance(names, str):
        return [name.strip() for name in names.split(",")]
    return [str(name) for name in names] if isinstance(names, list | tuple) else []


@pytest.fixture
def socketserver_module(request: pytest.FixtureRequest) -> ModuleType:
    """The module under test: the stdlib ``socketserver`` (id ``stdlib``) or
    ``socketserver_rs`` (id ``rs``), as ``--socketserver`` selects."""
    return dict(socketserver_modules())[request.param]


@pytest.fixture
def socketserver_serve() -> Iterator[Callable[..., Any]]:
    """``serve(server, **options)``: ``serving(server, **options)`` until the test ends;
    returns the bound address. Errors from handlers fail the test at teardown."""
    with contextlib.ExitStack() as stack:

        def serve(server: Any, **options: Any) -> Any:
            return stack.enter_context(serving(server, **options))

        yield serve
