"""Benchmark servers, one per process, all running the same handler code.

    python benches/servers.py IMPL KIND ADDRESS [--backlog N] [--max-workers N] [--lifetime S]
                              [--handler lines|readline|sendto|minihttp|upper]
                              [--tls-cert PEM --tls-key PEM]
    python benches/servers.py shutdown-latency IMPL [--tries N]
    python benches/servers.py idle IMPL KIND [--seconds S]

IMPL is ``stdlib`` (``socketserver``), ``rs`` (``socketserver_rs``), ``asyncio``, ``uvloop`` or
``mio`` (the native ``mio-echo`` binary from benches/loadgen, the ceiling). For ``stdlib`` and
``rs``, KIND names a server class (``TCPServer``, ``ThreadingUDPServer``,
``ThreadPoolUnixStreamServer``, ``ReactorTCPServer`` ...) or ``http:CLASS`` (an ``http.server``
handler on that class; ``http-stock:CLASS`` leaves Nagle on, as the handler ships); for the
others it is ``tcp``, ``udp`` or ``unix`` (an echo ``Protocol``), or ``tcp-streams`` (asyncio
streams: ``await reader.readline()``, ``writer.write()``, ``await writer.drain()``), or
``tcp-minihttp`` (the hand-written HTTP responder of ``--handler minihttp``), or
``tcp-upper``/``udp-upper`` (the uppercasing reply of ``--handler upper``). ADDRESS is
``127.0.0.1:PORT`` (port 0 picks a free one) or a filesystem path for Unix sockets.
``--handler readline`` gives the stream socketserver classes an explicit ``readline()`` loop
with Nagle off instead of the default ``for line in rfile`` handler; ``--handler minihttp`` a
hand-written HTTP/1.1 keep-alive responder (a fixed reply per request head), for the
cross-check with ``wrk`` (benches/crosscheck.py). ``--tls-cert`` (and
``--tls-key``) serve the same echo over TLS: on the reactor servers through their
``tls_certfile``/``tls_keyfile`` attributes (TLS in the engine), on asyncio and uvloop with
``ssl=`` an ``ssl.SSLContext`` holding that certificate.

A server prints ``READY <address>`` once it is listening and serves until it is killed, its
parent dies, or ``--lifetime`` seconds (default 900) have passed. The other two commands
measure in-process and print one JSON line.
"""

import argparse
import asyncio
import ctypes
import http.server
import json
import math
import os
import resource
import signal
import socket
import socketserver
import statistics
import sys
import threading
import time
from pathlib import Path

import socketserver_rs

MODULES = {"stdlib": socketserver, "rs": socketserver_rs}
REPO = Path(__file__).resolve().parent.parent


# --- the handlers: one source, each module's own base classes -------------------------------


def echo_handlers(mod):
    """The line-echo stream handler and the datagram echo handler, built on ``mod``."""

    class EchoLines(mod.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                self.wfile.write(line)

    class EchoDatagram(mod.DatagramRequestHandler):
        def handle(self):
            for line in self.rfile:
                self.wfile.write(line)

    return EchoLines, EchoDatagram


def sendto_handler(mod):
    """The plainest datagram echo: a ``BaseRequestHandler`` that ``sendto()``s the datagram
    back (no ``BytesIO`` pair)."""

    class SendtoEcho(mod.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            sock.sendto(data, self.client_address)

    return SendtoEcho


def readline_handler(mod):
    """An explicit ``readline()`` echo loop, with Nagle off as asyncio, uvloop and
    socketserver_rs have it: without that, a pipelined batch's second reply would wait for
    the client's delayed ACK."""

    class ReadlineEcho(mod.StreamRequestHandler):
        disable_nagle_algorithm = True

        def handle(self):
            readline, write = self.rfile.readline, self.wfile.write
            while True:
                line = readline()
                if not line:
                    break
                write(line)

    return ReadlineEcho


def echo_message_handler(mod, datagram):
    """The same echo for socketserver_rs's reactor servers, whose handlers see whole messages
    (lines on streams, datagrams as they come) and return the reply."""

    class EchoMessage(mod.MessageHandler):
        framing = "raw" if datagram else "line"

        def handle_message(self, message):
            return message

    return EchoMessage


# The fixed reply of the hand-written HTTP responders (benches/crosscheck.py drives them with
# wrk): other handler code than the echo, and another load generator than loadgen.
MINI_HTTP_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nhello, world\n"
)


def mini_http_handler(mod):
    """HTTP/1.1 keep-alive by hand on ``mod.StreamRequestHandler``: read the request's lines
    up to the blank one, then write the fixed reply (Nagle off, as for the readline echo)."""

    class MiniHTTP(mod.StreamRequestHandler):
        disable_nagle_algorithm = True

        def handle(self):
            readline, write = self.rfile.readline, self.wfile.write
            while line := readline(65537):
                if line == b"\r\n":
                    write(MINI_HTTP_RESPONSE)

    return MiniHTTP


def mini_http_message_handler(mod):
    """The same on the reactor: each line is a message; the blank one gets the reply."""

    class MiniHTTPMessage(mod.MessageHandler):
        framing = "line"

        def handle_message(self, message):
            return MINI_HTTP_RESPONSE if message == b"\r\n" else None

    return MiniHTTPMessage


# The handlers benches/crosscheck_threads.py drives with its threaded Python client: the socket
# API itself (no rfile/wfile, no line framing), and a reply that differs from the request.


def upper_handlers(mod):
    """``recv()``/``sendall()`` of the uppercased bytes on ``mod.BaseRequestHandler`` for
    streams, and ``sendto()`` of the uppercased datagram for datagrams."""

    class UpperStream(mod.BaseRequestHandler):
        def handle(self):
            recv, sendall = self.request.recv, self.request.sendall
            while data := recv(65536):
                sendall(data.upper())

    class UpperDatagram(mod.BaseRequestHandler):
        def handle(self):
            data, sock = self.request
            sock.sendto(data.upper(), self.client_address)

    return UpperStream, UpperDatagram


def upper_message_handler(mod):
    """The same on the reactor: whatever one read returned (or one datagram), uppercased."""

    class UpperMessage(mod.MessageHandler):
        framing = "raw"

        def handle_message(self, message):
            return message.upper()

    return UpperMessage


class UpperProtocol(asyncio.Protocol):
    """The same on asyncio and uvloop."""

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data.upper())


class UpperDatagramProtocol(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data.upper(), addr)


class MiniHTTPProtocol(asyncio.Protocol):
    """The same on asyncio and uvloop: one reply per complete request head."""

    def connection_made(self, transport):
        self.transport = transport
        self.pending = b""

    def data_received(self, data):
        data = self.pending + data if self.pending else data
        heads = data.count(b"\r\n\r\n")
        if heads:
            self.transport.write(MINI_HTTP_RESPONSE * heads)
            data = data[data.rfind(b"\r\n\r\n") + 4 :]
        self.pending = data


class HelloHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive: a fixed small body with a Content-Length; no access log.

    Headers and body go out in two writes; with Nagle on, the second waits for the client's
    delayed ACK (~40 ms on Linux), which would measure the TCP stack's timers, not the server.
    """

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    body = b"hello, world\n"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format, *args):
        pass


class StockHelloHandler(HelloHandler):
    """The same, with Nagle left on as ``StreamRequestHandler`` ships it."""

    disable_nagle_algorithm = False


# --- building servers ------------------------------------------------------------------------


def parse_address(text):
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and not text.startswith(("/", ".")):
        return (host.strip("[]"), int(port))
    return text


def format_address(address):
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address)


def socketserver_class(mod, kind, backlog=None, max_workers=None, tls=None):
    """The server class to run: ``mod.KIND`` with the benchmark's settings layered on; ``tls``
    is ``(certfile, keyfile)`` for a reactor server speaking TLS."""
    http_mode = kind.startswith(("http:", "http-stock:"))
    name = kind.split(":", 1)[1] if http_mode else kind
    if mod is socketserver and name == "ThreadingHTTPServer":
        base = http.server.ThreadingHTTPServer
    elif not hasattr(mod, name):
        raise SystemExit(f"{mod.__name__} has no {name}")
    else:
        base = getattr(mod, name)
    attrs = {"daemon_threads": True, "allow_reuse_address": True}
    if backlog is not None:
        attrs["request_queue_size"] = backlog
    if max_workers is not None:
        attrs["max_workers"] = max_workers
    if tls is not None:
        if not name.startswith("Reactor"):
            raise SystemExit("--tls-cert is for the reactor servers, asyncio and uvloop")
        if not hasattr(base, "tls_certfile"):
            raise SystemExit(f"{mod.__name__}.{name} has no TLS (tls_certfile) yet")
        attrs["tls_certfile"], attrs["tls_keyfile"] = tls
    if http_mode and base is not http.server.ThreadingHTTPServer:
        # What http.server.HTTPServer adds to a TCPServer, on this module's class.
        attrs["server_bind"] = http.server.HTTPServer.server_bind
    return type(f"Bench{name}", (base,), attrs)


def build_socketserver(
    mod, kind, address, backlog=None, max_workers=None, handler="lines", tls=None
):
    cls = socketserver_class(mod, kind, backlog, max_workers, tls)
    if handler == "minihttp":
        if cls.socket_type != socket.SOCK_STREAM or kind.startswith("http"):
            raise SystemExit("--handler minihttp is for the stream socketserver classes")
        handler = (mini_http_message_handler if kind.startswith("Reactor") else mini_http_handler)(
            mod
        )
    elif handler == "upper":
        if kind.startswith("http"):
            raise SystemExit("--handler upper is for the socketserver and reactor classes")
        if kind.startswith("Reactor"):
            handler = upper_message_handler(mod)
        else:
            stream, datagram = upper_handlers(mod)
            handler = datagram if cls.socket_type == socket.SOCK_DGRAM else stream
    elif handler == "readline" and not kind.startswith(("http", "Reactor")):
        if cls.socket_type != socket.SOCK_STREAM:
            raise SystemExit("--handler readline is for stream servers")
        handler = readline_handler(mod)
    elif handler == "sendto":
        if cls.socket_type != socket.SOCK_DGRAM:
            raise SystemExit("--handler sendto is for datagram servers")
        handler = sendto_handler(mod)
    elif kind.startswith("http:"):
        handler = HelloHandler
    elif kind.startswith("http-stock:"):
        handler = StockHelloHandler
    elif kind.startswith("Reactor"):
        handler = echo_message_handler(mod, cls.socket_type == socket.SOCK_DGRAM)
    else:
        stream, datagram = echo_handlers(mod)
        handler = datagram if cls.socket_type == socket.SOCK_DGRAM else stream
    if isinstance(address, str) and os.path.exists(address):
        os.unlink(address)
    return cls(address, handler)


def ready(address):
    print(f"READY {format_address(address)}", flush=True)


def serve_socketserver(mod, kind, address, backlog, max_workers, handler, tls=None):
    server = build_socketserver(mod, kind, address, backlog, max_workers, handler, tls)
    ready(server.server_address)
    with server:
        server.serve_forever()


class EchoLinesProtocol(asyncio.Protocol):
    """Echoes complete lines, as the stream handler does."""

    def connection_made(self, transport):
        self.transport = transport
        self.pending = b""

    def data_received(self, data):
        data = self.pending + data if self.pending else data
        end = data.rfind(b"\n") + 1
        if end:
            self.transport.write(data[:end])
        self.pending = data[end:]


async def echo_lines_stream(reader, writer):
    """The asyncio streams version of the readline handler."""
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(line)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


class EchoDatagramProtocol(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


def server_ssl_context(tls):
    """The ``ssl=`` of asyncio and uvloop servers: ``(certfile, keyfile)`` in an
    ``ssl.SSLContext`` with Python's server defaults (TLS 1.2 and up), or None."""
    if tls is None:
        return None
    import ssl

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls)
    return context


async def serve_asyncio(kind, address, backlog, tls=None):
    loop = asyncio.get_running_loop()
    backlog = backlog or 100
    context = server_ssl_context(tls)
    if context is not None and kind == "udp":
        raise SystemExit("--tls-cert is for stream servers")
    if kind == "tcp":
        server = await loop.create_server(
            EchoLinesProtocol,
            address[0],
            address[1],
            backlog=backlog,
            reuse_address=True,
            ssl=context,
        )
        ready(server.sockets[0].getsockname())
    elif kind == "tcp-minihttp":
        server = await loop.create_server(
            MiniHTTPProtocol, address[0], address[1], backlog=backlog, reuse_address=True
        )
        ready(server.sockets[0].getsockname())
    elif kind == "tcp-upper":
        server = await loop.create_server(
            UpperProtocol, address[0], address[1], backlog=backlog, reuse_address=True
        )
        ready(server.sockets[0].getsockname())
    elif kind == "udp-upper":
        transport, _ = await loop.create_datagram_endpoint(
            UpperDatagramProtocol, local_addr=address
        )
        ready(transport.get_extra_info("sockname"))
        await asyncio.Event().wait()
        return
    elif kind == "tcp-streams":
        server = await asyncio.start_server(
            echo_lines_stream,
            address[0],
            address[1],
            backlog=backlog,
            reuse_address=True,
            ssl=context,
        )
        ready(server.sockets[0].getsockname())
    elif kind == "unix":
        if os.path.exists(address):
            os.unlink(address)
        server = await loop.create_unix_server(
            EchoLinesProtocol, address, backlog=backlog, ssl=context
        )
        ready(address)
    elif kind == "udp":
        transport, _ = await loop.create_datagram_endpoint(EchoDatagramProtocol, local_addr=address)
        ready(transport.get_extra_info("sockname"))
        await asyncio.Event().wait()
        return
    else:
        raise SystemExit(
            "asyncio servers are tcp, tcp-streams, tcp-minihttp, tcp-upper, udp, udp-upper or "
            f"unix, not {kind!r}"
        )
    async with server:
        await server.serve_forever()


def exec_mio(kind, address, lifetime):
    bin_dir = Path(os.environ.get("BENCH_BIN_DIR", REPO / "target" / "release"))
    binary = bin_dir / "mio-echo"
    if not binary.exists():
        raise SystemExit(f"{binary} not found: cargo build --release -p loadgen")
    text = format_address(address)
    if isinstance(address, str) and os.path.exists(address):
        os.unlink(address)
    os.execv(binary, [str(binary), kind, text, "--max-seconds", str(lifetime)])


# --- in-process measurements -----------------------------------------------------------------


def shutdown_latency(impl, tries):
    """Time from ``shutdown()`` to ``serve_forever()`` returning, ``tries`` times; the waits
    before each shutdown are spread over the stdlib's 0.5 s poll interval."""
    mod = MODULES[impl]
    handler, _ = echo_handlers(mod)
    latencies = []
    for i in range(tries):
        server = mod.TCPServer(("127.0.0.1", 0), handler)
        returned = []

        def serve(server=server, returned=returned):
            server.serve_forever()
            returned.append(time.perf_counter())

        thread = threading.Thread(target=serve)
        thread.start()
        time.sleep(0.05 + 0.5 * i / tries)
        asked = time.perf_counter()
        server.shutdown()
        thread.join(5)
        server.server_close()
        if not returned:
            raise SystemExit("serve_forever() did not return within 5 s of shutdown()")
        latencies.append(returned[0] - asked)
    print(
        json.dumps(
            {
                "impl": impl,
                "tries": tries,
                "median_ms": statistics.median(latencies) * 1e3,
                "worst_ms": max(latencies) * 1e3,
                "all_ms": [round(x * 1e3, 3) for x in latencies],
            }
        ),
        flush=True,
    )


def idle_cost(impl, kind, seconds, poll_interval=0.5):
    """CPU time and context switches of a server idling in ``serve_forever()``."""
    server = build_socketserver(MODULES[impl], kind, ("127.0.0.1", 0))
    thread = threading.Thread(target=server.serve_forever, args=(poll_interval,))
    thread.start()
    try:
        time.sleep(0.5)  # let it settle into its wait
        before = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(seconds)
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        server.shutdown()
        thread.join(5)
        server.server_close()
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    switches = (after.ru_nvcsw + after.ru_nivcsw) - (before.ru_nvcsw + before.ru_nivcsw)
    print(
        json.dumps(
            {
                "impl": impl,
                "kind": kind,
                "seconds": seconds,
                "cpu_ms": cpu * 1e3,
                # The main thread's own sleep accounts for about one of these.
                "context_switches": switches,
            }
        ),
        flush=True,
    )


# --- process hygiene -------------------------------------------------------------------------


def die_with_parent():
    """Ask the kernel to kill us when the runner goes away (kept across exec)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def limit_lifetime(seconds):
    """Exit after ``seconds`` whatever happens: SIGALRM's default action ends the process.
    (Not a timer thread: the c10k scenario counts the server's threads.)"""
    signal.alarm(max(1, math.ceil(seconds)))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    die_with_parent()
    if argv and argv[0] == "shutdown-latency":
        p = argparse.ArgumentParser(prog="servers.py shutdown-latency")
        p.add_argument("impl", choices=sorted(MODULES))
        p.add_argument("--tries", type=int, default=9)
        args = p.parse_args(argv[1:])
        limit_lifetime(120)
        return shutdown_latency(args.impl, args.tries)
    if argv and argv[0] == "idle":
        p = argparse.ArgumentParser(prog="servers.py idle")
        p.add_argument("impl", choices=sorted(MODULES))
        p.add_argument("kind")
        p.add_argument("--seconds", type=float, default=10.0)
        p.add_argument(
            "--poll-interval",
            type=lambda text: None if text == "none" else float(text),
            default=0.5,
            help="serve_forever's poll_interval ('none' for None)",
        )
        args = p.parse_args(argv[1:])
        limit_lifetime(args.seconds + 60)
        return idle_cost(args.impl, args.kind, args.seconds, args.poll_interval)

    p = argparse.ArgumentParser(prog="servers.py", description=__doc__.split("\n\n")[0])
    p.add_argument("impl", choices=["stdlib", "rs", "asyncio", "uvloop", "mio"])
    p.add_argument("kind")
    p.add_argument("address", type=parse_address)
    p.add_argument("--backlog", type=int, help="listen backlog (default: the class's own)")
    p.add_argument("--max-workers", type=int, help="pool size for ThreadPool* classes")
    p.add_argument("--lifetime", type=float, default=900.0, help="exit after this long")
    p.add_argument(
        "--rfile",
        choices=["native", "makefile"],
        default="native",
        help="socketserver_rs stream handlers: the native rfile (default) or the stdlib's "
        "makefile('rb') (how it read before), for before/after rows",
    )
    p.add_argument(
        "--handler",
        choices=["lines", "readline", "sendto", "minihttp", "upper"],
        default="lines",
        help="stream handler: 'for line in rfile' (default) or a readline() loop, Nagle off, "
        "or a hand-written HTTP/1.1 responder (minihttp, also on the reactor); "
        "datagram handler: DatagramRequestHandler (default) or BaseRequestHandler + sendto(); "
        "upper: recv()/sendall() (streams) or sendto() (datagrams) of the uppercased bytes, "
        "on BaseRequestHandler, and a raw MessageHandler on the reactor",
    )
    p.add_argument("--tls-cert", help="serve TLS with this PEM certificate chain")
    p.add_argument("--tls-key", help="the PEM private key of --tls-cert")
    args = p.parse_args(argv)
    if args.tls_key and not args.tls_cert:
        p.error("--tls-key needs --tls-cert")
    tls = (args.tls_cert, args.tls_key) if args.tls_cert else None
    if tls and args.impl == "mio":
        p.error("mio-echo does not speak TLS")
    if isinstance(args.address, tuple) and not args.address[0].startswith("127."):
        if args.address[0] not in ("localhost", "::1"):
            raise SystemExit("benchmark servers listen on loopback addresses only")
    if args.impl == "mio":
        return exec_mio(args.kind, args.address, args.lifetime)
    limit_lifetime(args.lifetime)
    if args.rfile == "makefile":
        from socketserver_rs import _handlers

        _handlers._reader = lambda sock, bufsize: sock.makefile("rb", bufsize)
    if args.impl in MODULES:
        return serve_socketserver(
            MODULES[args.impl],
            args.kind,
            args.address,
            args.backlog,
            args.max_workers,
            args.handler,
            tls,
        )
    if args.impl == "uvloop":
        import uvloop

        return uvloop.run(serve_asyncio(args.kind, args.address, args.backlog, tls))
    return asyncio.run(serve_asyncio(args.kind, args.address, args.backlog, tls))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
