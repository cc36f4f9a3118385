"""``python -m socketserver_rs``: small servers for trying the package out.

Commands:

- ``echo`` (the default): answers with the uppercased input, over TCP, UDP, both at once on
  one port, or a Unix stream socket, on the server family of your choice (a thread per
  request, a thread pool, the reactor, or a child process per request); on the reactor, over
  TLS too (``--tls-cert``), where SIGHUP re-reads the certificate files.
- ``http``: serves a directory over HTTP, as ``python -m http.server`` does, with
  ``http.server`` running on socketserver_rs (through ``install()``).
- ``run``: runs a Python program (``-m MODULE``, ``-c CODE`` or a script) as ``python`` would,
  with ``import socketserver`` resolving to socketserver_rs (``_launcher``).

Without a command it runs ``echo`` with its defaults (TCP and UDP on 127.0.0.1:9999), and
options given without a command are ``echo``'s: ``python -m socketserver_rs --port 0``.
Ctrl-C stops either at once and exits with status 0; a bad option exits with status 2 and
an address that cannot be served with status 1.
"""

import argparse
import contextlib
import functools
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from typing import Any, Protocol, cast

import socketserver_rs as ss
from socketserver_rs import _cli_ops, _launcher

READ_SIZE = 64 * 1024
DEFAULT_HOST = "127.0.0.1"
DEFAULT_ECHO_PORT = 9999
DEFAULT_HTTP_PORT = 8000
# How long a child process gets to exit after SIGTERM before it is killed.
CHILD_EXIT_GRACE = 0.5

# --- echo: handlers -------------------------------------------------------------------------


def _peer(client_address: Any) -> str:
    """A client address for the log: ``host:port``, a Unix path, or ``-`` when unnamed."""
    if isinstance(client_address, tuple):
        return _host_port(client_address[0], client_address[1])
    return str(client_address) if client_address else "-"


def _log(protocol: str, client_address: Any, data: bytes) -> None:
    # One write per line, so lines from concurrent handler threads stay whole.
    sys.stdout.write(f"{protocol} {_peer(client_address)} {data!r}\n")
    sys.stdout.flush()


class UppercaseStreamHandler(ss.BaseRequestHandler):
    """TCP and Unix streams: read what the client sent first, send it back uppercased, close."""

    def handle(self) -> None:
        data = self.request.recv(READ_SIZE)
        _log("unix" if self.request.family == socket.AF_UNIX else "tcp", self.client_address, data)
        self.request.sendall(data.upper())


class UppercaseDatagramHandler(ss.BaseRequestHandler):
    """UDP: answer each datagram with its contents uppercased."""

    def handle(self) -> None:
        data, sock = self.request
        _log("udp", self.client_address, data)
        sock.sendto(data.upper(), self.client_address)


class UppercaseStreamMessageHandler(ss.MessageHandler):
    """Reactor streams: the first chunk read, uppercased, then the connection is closed."""

    framing = "raw"
    max_message_size = READ_SIZE

    def handle_message(self, message: bytes) -> None:
        unix = self.server.address_family == getattr(socket, "AF_UNIX", None)
        _log("unix" if unix else "tcp", self.client_address, message)
        self.send(message.upper())
        self.close()  # after what was sent: the client sees the reply, then end of stream


class UppercaseDatagramMessageHandler(ss.MessageHandler):
    """Reactor datagrams: each one answered with its contents uppercased."""

    framing = "raw"
    max_message_size = READ_SIZE

    def handle_message(self, message: bytes) -> bytes:
        _log("udp", self.client_address, message)
        return message.upper()


# --- echo: servers --------------------------------------------------------------------------

FAMILIES = ["threading", "pool", "reactor"] + (["forking"] if hasattr(os, "fork") else [])
TRANSPORTS = ["tcp", "udp"] + (["unix"] if hasattr(socket, "AF_UNIX") else []) + ["both"]

# family -> transport -> (server class name in socketserver_rs, handler class)
_ECHO_CLASSES: dict[str, dict[str, tuple[str, type]]] = {
    "threading": {
        "tcp": ("ThreadingTCPServer", UppercaseStreamHandler),
        "udp": ("ThreadingUDPServer", UppercaseDatagramHandler),
        "unix": ("ThreadingUnixStreamServer", UppercaseStreamHandler),
    },
    "pool": {
        "tcp": ("ThreadPoolTCPServer", UppercaseStreamHandler),
        "udp": ("ThreadPoolUDPServer", UppercaseDatagramHandler),
        "unix": ("ThreadPoolUnixStreamServer", UppercaseStreamHandler),
    },
    "reactor": {
        "tcp": ("ReactorTCPServer", UppercaseStreamMessageHandler),
        "udp": ("ReactorUDPServer", UppercaseDatagramMessageHandler),
        "unix": ("ReactorUnixStreamServer", UppercaseStreamMessageHandler),
    },
    "forking": {
        "tcp": ("ForkingTCPServer", UppercaseStreamHandler),
        "udp": ("ForkingUDPServer", UppercaseDatagramHandler),
        "unix": ("ForkingUnixStreamServer", UppercaseStreamHandler),
    },
}


class _Server(Protocol):
    """What the CLI needs of a server, whichever family it comes from."""

    server_address: Any
    socket: socket.socket

    def serve_forever(self, poll_interval: float | None = ...) -> None: ...
    def shutdown(self) -> None: ...
    def server_close(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...


def _echo_server(
    family: str,
    transport: str,
    address: Any,
    address_family: int,
    sock: socket.socket | None = None,
    workers: int | None = None,
    tls: dict[str, object] | None = None,
) -> _Server:
    """Make (and bind) the echo server of ``family`` for ``transport``; on ``sock``, an
    inherited bound socket, when given (``--fd``); pre-forked into ``workers`` processes
    under a supervising parent, when given (``--workers``); serving TLS with the ``tls_*``
    class attributes ``tls``, when given (``--tls-cert``: reactor streams only).

    The demo's settings are class attributes of a subclass, since the constructor binds:
    request threads and children never hold up Ctrl-C (daemon threads, no waiting for the
    pool or for children on close), and TCP may rebind a port left in TIME_WAIT.
    """
    class_name, handler = _ECHO_CLASSES[family][transport]
    base = getattr(ss, class_name)
    settings: dict[str, object] = {
        "daemon_threads": True,
        "block_on_close": False,
        "allow_reuse_address": transport == "tcp",
        "address_family": address_family,
        **(tls or {}),
    }
    bases: tuple[type, ...] = (base,)
    if workers is not None:  # `workers` pre-forked processes under a supervising parent
        bases, class_name = (ss.PreforkMixIn, base), "Prefork" + class_name
        settings["workers"] = workers
    cls: Any = type(class_name, bases, settings)
    if sock is not None:
        return cast(_Server, cls.from_socket(sock, handler))
    return cast(_Server, cls(address, handler))


def _inet_family(host: str) -> int:
    """AF_INET or AF_INET6, whichever ``host`` resolves to first."""
    return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _serve_in_child(server: _Server, others: Iterable[_Server]) -> int:
    """Fork a child process that serves ``server`` until it is signalled; returns its pid.

    Used for the second server of ``--family forking --transport both``, so that no thread
    runs while the servers fork their request children."""
    pid = os.fork()
    if pid:
        return pid
    status = 0
    try:
        for other in others:
            other.socket.close()  # the parent's listener is no business of this child
        server.serve_forever()
    except KeyboardInterrupt:
        pass  # Ctrl-C in a terminal reaches the whole process group: the parent reports it
    except BaseException:
        traceback.print_exc()
        status = 1
    finally:
        os._exit(status)


def _stop_children(pids: Iterable[int]) -> None:
    """SIGTERM each child process, then reap them all; any still alive after
    ``CHILD_EXIT_GRACE`` seconds is killed."""
    pending = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            pending.add(pid)
    deadline = time.monotonic() + CHILD_EXIT_GRACE
    while pending:
        for pid in list(pending):
            try:
                reaped, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                reaped = pid  # someone else reaped it
            if reaped:
                pending.discard(pid)
        if pending and time.monotonic() >= deadline:
            for pid in pending:
                with contextlib.suppress(ProcessLookupError, ChildProcessError):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
            return
        if pending:
            time.sleep(0.01)


def _tls_settings(args: argparse.Namespace) -> dict[str, object] | None:
    """The reactor's ``tls_*`` class attributes from ``--tls-*`` (None: no TLS)."""
    if args.tls_cert is None:
        return None
    settings: dict[str, object] = {"tls_certfile": args.tls_cert, "tls_keyfile": args.tls_key}
    if args.tls_client_ca is not None:
        settings["tls_client_ca"] = args.tls_client_ca
    if args.tls_alpn:
        settings["tls_alpn_protocols"] = tuple(args.tls_alpn)
    return settings


def _reload_tls_on_sighup(server: Any) -> Callable[[], None]:
    """Make SIGHUP call ``server.reload_tls()`` (new handshakes get the certificates now on
    disk, open connections keep theirs), with a one-line note either way; returns a function
    that restores the previous handler. The handler runs on the main thread between the
    engine's waits, and a failed reload leaves the old certificates serving."""

    def reload(signum: int, frame: object) -> None:
        try:
            server.reload_tls()
        except ValueError as error:  # TLSConfigError: the old configuration stays
            print(
                f"TLS reload failed, still serving the previous certificates: {error}",
                file=sys.stderr,
                flush=True,
            )
        else:
            print(f"reloaded TLS certificates from {server.tls_certfile}", flush=True)

    previous = signal.signal(signal.SIGHUP, reload)

    def restore() -> None:
        signal.signal(signal.SIGHUP, previous)

    return restore


def _run_echo(args: argparse.Namespace) -> int:
    family, transport = args.family, args.transport
    tls = _tls_settings(args)
    # Forking servers reap their children in service_actions(); the others need no wakeups.
    poll_interval = 0.5 if family == "forking" else None
    # Everything made is undone on the way out, in reverse order, however that happens.
    with contextlib.ExitStack() as cleanup:
        secondary = None
        try:
            if args.fd is not None:
                sock = _cli_ops.inherited_socket(args.fd)
                transport = _cli_ops.transport_of(sock)
                where = f"descriptor {args.fd}"
                primary = _echo_server(
                    family, transport, None, sock.family, sock, workers=args.workers, tls=tls
                )
                cleanup.callback(primary.server_close)
            elif transport == "unix":
                where = args.path
                primary = _echo_server(
                    family, "unix", args.path, socket.AF_UNIX, workers=args.workers, tls=tls
                )
                cleanup.callback(primary.server_close)
                cleanup.callback(_remove, args.path)
            else:
                where = _host_port(args.host, args.port)
                address_family = _inet_family(args.host)
                first = "udp" if transport == "udp" else "tcp"
                primary = _echo_server(
                    family,
                    first,
                    (args.host, args.port),
                    address_family,
                    workers=args.workers,
                    tls=tls,
                )
                cleanup.callback(primary.server_close)
                if transport == "both":
                    # UDP on the port TCP got (TCP picks one for --port 0).
                    address = primary.server_address[:2]
                    secondary = _echo_server(family, "udp", address, address_family)
                    cleanup.callback(secondary.server_close)
        except (OSError, ValueError) as error:
            print(f"cannot serve on {where}: {error}", file=sys.stderr)
            return 1

        servers = [s for s in (primary, secondary) if s is not None]
        cleanup.callback(_cli_ops.start_stats_log(servers, args.stats_interval))
        if family == "forking":
            # Request children still running (a client that stays connected …): read at exit,
            # since the server makes its set of children on the first fork.
            cleanup.callback(lambda: _stop_children(getattr(primary, "active_children", ()) or ()))
        if secondary is not None:
            if family == "forking":
                child = _serve_in_child(secondary, [primary])
                cleanup.callback(_stop_children, [child])
            else:
                serving = threading.Thread(
                    target=secondary.serve_forever, args=(poll_interval,), name="udp", daemon=True
                )
                serving.start()
                cleanup.callback(serving.join, 1.0)
                cleanup.callback(secondary.shutdown)

        if tls is not None and args.workers is None and hasattr(signal, "SIGHUP"):
            # (With --workers, the prefork parent's SIGHUP reload re-reads them itself.)
            cleanup.callback(_reload_tls_on_sighup(primary))
        print(_echo_banner(transport, primary, secondary, tls=tls is not None), flush=True)
        primary.serve_forever(poll_interval)
    return 0


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _echo_banner(
    transport: str, primary: _Server, secondary: _Server | None, *, tls: bool = False
) -> str:
    classes = " and ".join(type(s).__name__ for s in (primary, secondary) if s is not None)
    if tls:
        if transport == "unix":
            where = f"unix {primary.server_address}"
            connect = f"-unix {primary.server_address}"
        else:
            host, port = primary.server_address[:2]
            where = f"tcp {_host_port(host, port)}"
            connect = f"-connect {_host_port(host, port)}"
        how = f"`printf 'hello\\n' | openssl s_client -quiet {connect}`"
        return (
            f"uppercase echo on {where} with {classes} over TLS; try {how}; "
            "SIGHUP reloads the certificates; Ctrl-C stops"
        )
    if transport == "unix":
        path = primary.server_address
        where, how = f"unix {path}", f"`printf 'hello\\n' | nc -U {path}`"
    else:
        host, port = primary.server_address[:2]
        address = _host_port(host, port)
        if transport == "udp":
            where, how = f"udp {address}", f"`printf 'hello\\n' | nc -u -w1 {host} {port}`"
        else:
            where, how = f"tcp {address}", f"`printf 'hello\\n' | nc {host} {port}`"
            if transport == "both":
                where, how = f"tcp and udp {address}", f"{how} (UDP: nc -u -w1)"
    return f"uppercase echo on {where} with {classes}; try {how}; Ctrl-C stops"


# --- http -----------------------------------------------------------------------------------


def _run_http(args: argparse.Namespace) -> int:
    try:
        ss.install()  # http.server must be built on socketserver_rs: import it only now
    except RuntimeError as error:
        print(f"cannot serve HTTP on socketserver_rs: {error}", file=sys.stderr)
        return 1
    import http.server

    where = _host_port(args.bind, args.port)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=args.directory)
    if not issubclass(http.server.HTTPServer, ss.TCPServer):
        print("cannot serve HTTP: http.server is built on the stdlib socketserver", file=sys.stderr)
        return 1
    try:
        if args.fd is not None:
            where = f"descriptor {args.fd}"
            sock = _cli_ops.inherited_socket(args.fd)
            if _cli_ops.transport_of(sock) != "tcp":
                raise ValueError("HTTP needs a TCP socket")
            # Built on socketserver_rs by install(): it has from_socket().
            server_class = cast(Any, http.server.ThreadingHTTPServer)
            server = cast(_Server, server_class.from_socket(sock, handler))
        else:
            family = _inet_family(args.bind)

            class HTTPServer(http.server.ThreadingHTTPServer):
                address_family = family

            # Typed as the CLI sees servers: type checkers know http.server on the stdlib
            # only.
            server = cast(_Server, HTTPServer((args.bind, args.port), handler))
    except (OSError, ValueError) as error:
        print(f"cannot serve on {where}: {error}", file=sys.stderr)
        return 1
    stop_stats = _cli_ops.start_stats_log([server], args.stats_interval)
    try:
        address = _host_port(*server.server_address[:2])
        print(
            f"serving {os.path.abspath(args.directory)} over HTTP on {address} "
            f"(http.server's ThreadingHTTPServer on socketserver_rs); "
            f"try `curl http://{address}/`; Ctrl-C stops",
            flush=True,
        )
        server.serve_forever(poll_interval=None)
    finally:
        stop_stats()
        server.server_close()
    return 0


# --- options --------------------------------------------------------------------------------


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {port}")
    return port


def _workers(text: str) -> int:
    try:
        workers = int(text)
    except ValueError:
        workers = 0
    if workers < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, not {text!r}")
    return workers


def _directory(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"not a directory: {text!r}")
    return text


_COMMANDS = ("echo", "http")
_TOP_LEVEL_OPTIONS = ("-h", "--help", "--version")


def _parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="python -m socketserver_rs",
        description="Small servers running on socketserver_rs. Ctrl-C stops them.",
        epilog="Without a command, runs echo; options given without a command are echo's "
        "(python -m socketserver_rs --port 0). `python -m socketserver_rs COMMAND --help` "
        "describes a command's options.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {ss._distribution_version()}"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    echo = commands.add_parser(
        "echo",
        help="uppercase echo over TCP, UDP or a Unix socket (the default)",
        description="Answer every client with what it sent, uppercased: TCP and Unix stream "
        "clients get one reply to what they sent first, then the connection closes; UDP "
        "clients get one reply per datagram.",
    )
    echo.add_argument(
        "--transport",
        choices=TRANSPORTS,
        help="what to serve; both = TCP and UDP on one port (default: both; tcp with --tls-cert)",
    )
    echo.add_argument(
        "--family",
        choices=FAMILIES,
        default="threading",
        help="server family: a thread per request (Threading*Server), a thread pool "
        "(ThreadPool*Server), connections in Rust (Reactor*Server) or a child process per "
        "request (Forking*Server) (default: %(default)s)",
    )
    echo.add_argument(
        "--host", help=f"address to bind for tcp, udp and both (default: {DEFAULT_HOST})"
    )
    echo.add_argument(
        "--port",
        type=_port,
        help=f"port for tcp, udp and both (default: {DEFAULT_ECHO_PORT}; 0: any free port)",
    )
    echo.add_argument("--path", help="socket path for --transport unix (required there)")
    _cli_ops.add_options(echo)
    if hasattr(os, "fork"):
        echo.add_argument(
            "--workers",
            type=_workers,
            help="serve with N pre-forked worker processes under a supervising parent "
            "(PreforkMixIn); one transport only (default: one process)",
        )
    tls = echo.add_argument_group(
        "TLS",
        "serve the echo over TLS, terminated in the engine (--family reactor, --transport tcp "
        "or unix); SIGHUP re-reads the files",
    )
    tls.add_argument(
        "--tls-cert",
        metavar="PEM",
        help="certificate chain, leaf first (and the private key, unless --tls-key is given)",
    )
    tls.add_argument("--tls-key", metavar="PEM", help="private key of the certificate")
    tls.add_argument(
        "--tls-client-ca",
        metavar="PEM",
        help="CA bundle that clients must present a certificate signed by (mutual TLS)",
    )
    tls.add_argument(
        "--tls-alpn",
        metavar="PROTOCOL",
        nargs="+",
        action="extend",
        help="ALPN protocols to offer, in order of preference",
    )
    echo.set_defaults(run=_run_echo)

    http_command = commands.add_parser(
        "http",
        help="serve a directory over HTTP, like python -m http.server",
        description="Serve the files of a directory over HTTP with http.server's "
        "SimpleHTTPRequestHandler, on a ThreadingHTTPServer built on socketserver_rs.",
    )
    http_command.add_argument(
        "port",
        nargs="?",
        type=_port,
        default=DEFAULT_HTTP_PORT,
        help="port to listen on (default: %(default)s; 0: any free port)",
    )
    http_command.add_argument(
        "-b",
        "--bind",
        default=DEFAULT_HOST,
        metavar="ADDRESS",
        help="address to bind (default: %(default)s; http.server's default is every "
        "interface: pass --bind 0.0.0.0 or --bind :: for that)",
    )
    http_command.add_argument(
        "-d",
        "--directory",
        type=_directory,
        default=os.curdir,
        help="directory to serve (default: the current directory)",
    )
    _cli_ops.add_options(http_command)
    http_command.set_defaults(run=_run_http)
    commands.add_parser("run", help=_launcher.HELP, add_help=False)  # parsed by _launcher
    return parser, {"echo": echo, "http": http_command}


def _check_tls_options(echo: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Usage errors for ``--tls-*`` options the echo cannot serve."""
    given = [
        option
        for option, value in [
            ("--tls-key", args.tls_key),
            ("--tls-client-ca", args.tls_client_ca),
            ("--tls-alpn", args.tls_alpn),
        ]
        if value is not None
    ]
    if args.tls_cert is None:
        if given:
            echo.error(f"{given[0]} needs --tls-cert")
        return
    if args.family != "reactor":
        echo.error("--tls-cert needs --family reactor (TLS is terminated in the reactor engine)")
    if args.transport in ("udp", "both"):
        echo.error("--tls-cert needs a stream transport: --transport tcp or unix")


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser, commands = _parser()
    if not argv or (argv[0].startswith("-") and argv[0] not in _TOP_LEVEL_OPTIONS):
        argv = ["echo", *argv]
    args, extra = parser.parse_known_args(argv)
    if extra:  # reported with the usage of the command they were given to
        commands[args.command].error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "echo":
        echo = commands["echo"]
        args.workers = getattr(args, "workers", None)
        _check_tls_options(echo, args)
        if args.transport is None:
            args.transport = "tcp" if args.tls_cert is not None else "both"
        if args.workers is not None and (
            args.family == "forking" or (args.fd is None and args.transport == "both")
        ):
            echo.error(
                "--workers needs one transport (tcp, udp or unix) and a family other than forking"
            )
        if args.fd is not None:
            if args.path is not None or args.host is not None or args.port is not None:
                echo.error("--fd serves the inherited socket: no --host, --port or --path")
        elif args.transport == "unix":
            if args.path is None:
                echo.error("--transport unix needs --path")
            if args.host is not None or args.port is not None:
                echo.error("--host and --port are for tcp, udp and both, not unix")
        else:
            if args.path is not None:
                echo.error("--path is for --transport unix")
            args.host = DEFAULT_HOST if args.host is None else args.host
            args.port = DEFAULT_ECHO_PORT if args.port is None else args.port
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:  # replaces this process with the program, unless it errs
        return _launcher.main(argv[1:])
    args = _parse_args(argv)
    run = cast(Callable[[argparse.Namespace], int], args.run)
    try:
        return run(args)
    except KeyboardInterrupt:
        print("\nstopped", flush=True)
        return 0


if __name__ == "__main__":
    sys.exit(main())
