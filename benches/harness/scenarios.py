"""What is measured: the settings of a run, the scenarios, and the rows (server
implementations, each with the stdlib row it is compared with) of every scenario."""

from dataclasses import dataclass, field

SCENARIOS = [
    "tcp1",
    "tcp16",
    "tcp256",
    "connect16",
    "udp16",
    "udp16s",
    "unix16",
    "line16",
    "line16p4",
    "rl1",
    "rl16",
    "rl256",
    "c10k",
    "burst",
    "shutdown",
    "idle",
    "http",
    "tls1",
    "tls16",
    "tls256",
    "tlsconnect16",
    "tlsidle",
]


# Names --only accepts for several scenarios at once.
GROUPS = {"tls": ["tls1", "tls16", "tls256", "tlsconnect16", "tlsidle"]}


@dataclass(frozen=True)
class Settings:
    rounds: int
    duration: float
    warmup: float
    timeout: float
    burst_rounds: int
    shutdown_tries: int
    idle_seconds: float
    http_seconds: int
    size: int
    c10k_conns: int
    c10k_seconds: float
    c10k_timeout: float
    tls_rounds: int  # the TLS scenarios: issue 14 asks for the spread over 5 runs
    tls_idle_conns: int
    tls_idle_hold: float
    tls_idle_timeout: float


FULL = Settings(
    rounds=3,
    duration=2.0,
    warmup=0.3,
    timeout=2.0,
    burst_rounds=3,
    shutdown_tries=9,
    idle_seconds=10.0,
    http_seconds=3,
    size=64,
    c10k_conns=10_000,
    c10k_seconds=5.0,
    c10k_timeout=5.0,
    tls_rounds=5,
    tls_idle_conns=10_000,
    tls_idle_hold=3.0,
    tls_idle_timeout=60.0,
)


QUICK = Settings(
    rounds=1,
    duration=0.3,
    warmup=0.1,
    timeout=2.0,
    burst_rounds=1,
    shutdown_tries=3,
    idle_seconds=2.0,
    http_seconds=1,
    size=64,
    c10k_conns=1_000,
    c10k_seconds=0.5,
    c10k_timeout=5.0,
    tls_rounds=1,
    tls_idle_conns=500,
    tls_idle_hold=1.0,
    tls_idle_timeout=30.0,
)


@dataclass(frozen=True)
class Impl:
    """One row: a server implementation and the stdlib row it is compared with."""

    label: str
    impl: str  # servers.py IMPL
    kind: str  # servers.py KIND
    baseline: str
    args: tuple = ()
    client: tuple = ()  # loadgen options of this row only (the TLS rows' --tls-ca)


@dataclass
class Row:
    impl: Impl
    runs: list = field(default_factory=list)
    failure: str | None = None


def available_rs_names():
    try:
        import socketserver_rs
    except Exception as error:  # a broken build still lets the stdlib and peer rows run
        print(f"note: socketserver_rs does not import ({error}); its rows are n/a")
        return set()
    return set(dir(socketserver_rs))


def uvloop_available():
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def rs_has_tls():
    """Whether socketserver_rs's reactor servers take a certificate (TLS in the engine)."""
    try:
        import socketserver_rs
    except Exception:
        return False
    return hasattr(getattr(socketserver_rs, "ReactorTCPServer", None), "tls_certfile")


def unavailable(impl, rs_names, has_uvloop):
    """Why a row cannot run here, or None."""
    if impl.impl == "rs":
        name = impl.kind.split(":", 1)[-1]
        if name not in rs_names:
            return f"socketserver_rs has no {name} yet"
        if "--tls-cert" in impl.args and not rs_has_tls():
            return f"socketserver_rs's {name} has no TLS (tls_certfile) yet"
    if impl.impl == "uvloop" and not has_uvloop:
        return "uvloop is not installed (pip install uvloop)"
    return None


FAMILIES = {
    "tcp": ("TCPServer", "ThreadingTCPServer", "ThreadPoolTCPServer", "ReactorTCPServer"),
    "udp": ("UDPServer", "ThreadingUDPServer", "ThreadPoolUDPServer", "ReactorUDPServer"),
    "unix": (
        "UnixStreamServer",
        "ThreadingUnixStreamServer",
        "ThreadPoolUnixStreamServer",
        "ReactorUnixStreamServer",
    ),
}


def socketserver_rows(family, single=True, pool_args=(), backlog=1024, peers=True):
    one, threaded, pooled, reactor = FAMILIES[family]
    extra = ("--backlog", str(backlog)) if backlog else ()
    rows = []
    if single:
        rows += [
            Impl(f"stdlib {one}", "stdlib", one, f"stdlib {one}", extra),
            Impl(f"rs {one}", "rs", one, f"stdlib {one}", extra),
        ]
    base = f"stdlib {threaded}"
    pool_label = f"rs {pooled}" + (f" (max_workers={pool_args[1]})" if pool_args else "")
    rows += [
        Impl(base, "stdlib", threaded, base, extra),
        Impl(f"rs {threaded}", "rs", threaded, base, extra),
        Impl(pool_label, "rs", pooled, base, extra + tuple(pool_args)),
        Impl(f"rs {reactor} (MessageHandler)", "rs", reactor, base, extra),
    ]
    if peers:
        rows += [
            Impl("asyncio", "asyncio", family, base, extra),
            Impl("uvloop", "uvloop", family, base, extra),
            Impl("mio-echo (Rust)", "mio", family, base),
        ]
    return rows


@dataclass
class Scenario:
    key: str
    title: str
    family: str
    loadgen: list
    rows: list
    note: str = ""
    ratios: str = (
        "Ratios: rs X against stdlib X; rs ThreadPool*, rs Reactor*, asyncio, "
        "uvloop and mio-echo against the stdlib Threading* server."
    )
    # A second baseline: every row also gets ratios against this one.
    second: str | None = None


def throughput_scenarios(size):
    def lg(mode, conns):
        return ["--mode", mode, "--conns", str(conns), "--size", str(size)]

    return [
        Scenario(
            "tcp1", "TCP, 1 persistent connection", "tcp", lg("tcp", 1), socketserver_rows("tcp")
        ),
        Scenario(
            "tcp16",
            "TCP, 16 persistent connections",
            "tcp",
            lg("tcp", 16),
            socketserver_rows("tcp", single=False),
            "TCPServer rows are left out: it serves one connection at a time.",
        ),
        Scenario(
            "tcp256",
            "TCP, 256 persistent connections",
            "tcp",
            lg("tcp", 256),
            socketserver_rows("tcp", single=False, pool_args=("--max-workers", "256")),
            "The pool is sized to the connection count: with fewer workers than "
            "persistent connections, the rest wait in the backlog by design.",
        ),
        Scenario(
            "connect16",
            "TCP, connection per request, 16 concurrent workers",
            "tcp",
            lg("connect", 16),
            socketserver_rows("tcp"),
        ),
        Scenario(
            "udp16", "UDP, 16 outstanding datagrams", "udp", lg("udp", 16), socketserver_rows("udp")
        ),
        Scenario(
            "udp16s",
            "UDP, 16 outstanding datagrams, BaseRequestHandler with sendto()",
            "udp",
            lg("udp", 16),
            sendto_rows(),
            "Handler: `data, sock = self.request; sock.sendto(data, self.client_address)` on "
            "each module's BaseRequestHandler (no BytesIO pair).",
        ),
        Scenario(
            "unix16",
            "Unix stream, 16 persistent connections",
            "unix",
            lg("unix", 16),
            socketserver_rows("unix", single=False),
        ),
        line_scenario(size, 1),
        line_scenario(size, 4),
        *(readline_scenario(size, conns) for conns in (1, 16, 256)),
    ]


def sendto_rows():
    """The datagram servers with a BaseRequestHandler that sendto()s the datagram back."""
    extra = ("--handler", "sendto")
    rows = []
    for name, base in (("UDPServer", "UDPServer"), ("ThreadingUDPServer", "ThreadingUDPServer")):
        rows.append(Impl(f"stdlib {name}", "stdlib", name, f"stdlib {base}", extra))
        rows.append(Impl(f"rs {name}", "rs", name, f"stdlib {base}", extra))
    rows.append(
        Impl(
            "rs ThreadPoolUDPServer",
            "rs",
            "ThreadPoolUDPServer",
            "stdlib ThreadingUDPServer",
            extra,
        )
    )
    return rows


LINE_STDLIB = "stdlib ThreadingTCPServer (readline)"


LINE_UVLOOP = "uvloop streams (readline)"


def line_rows():
    """Newline-framed echo as each API spells it: a readline() loop on the threading servers,
    a line-framed MessageHandler on the reactor, asyncio streams on asyncio and uvloop."""
    b = ("--backlog", "1024")
    readline = (*b, "--handler", "readline")
    base = LINE_STDLIB
    return [
        Impl(base, "stdlib", "ThreadingTCPServer", base, readline),
        Impl("rs ThreadingTCPServer (readline)", "rs", "ThreadingTCPServer", base, readline),
        Impl("rs ReactorTCPServer (MessageHandler, line)", "rs", "ReactorTCPServer", base, b),
        Impl("asyncio streams (readline)", "asyncio", "tcp-streams", base, b),
        Impl(LINE_UVLOOP, "uvloop", "tcp-streams", base, b),
        Impl("uvloop (Protocol)", "uvloop", "tcp", base, b),
        Impl("mio-echo (Rust)", "mio", "tcp", base),
    ]


def line_scenario(size, pipeline):
    args = ["--mode", "line", "--conns", "16", "--size", str(size)]
    if pipeline > 1:
        args += ["--pipeline", str(pipeline)]
    batch = (
        f"Each connection writes {pipeline} lines at once and waits for their {pipeline} "
        "echoes; every line is one request and one latency sample. "
        if pipeline > 1
        else "Each connection writes one line and waits for its echo. "
    )
    handlers = (
        "Handlers: `while line := rfile.readline(): wfile.write(line)` with Nagle off on "
        'the threading servers; a MessageHandler with framing = "line" returning the line; '
        "`await reader.readline()`, `writer.write()`, `await writer.drain()` on asyncio "
        "and uvloop streams; uvloop's echo Protocol and mio-echo (bytes) for reference."
    )
    return Scenario(
        "line16" if pipeline == 1 else f"line16p{pipeline}",
        "Line framing, 16 persistent connections"
        + (f", {pipeline} lines pipelined" if pipeline > 1 else ""),
        "tcp",
        args,
        line_rows(),
        batch + handlers,
        f"Ratios against {LINE_STDLIB} (x stdlib) and against {LINE_UVLOOP} (x uvloop streams).",
        second=LINE_UVLOOP,
    )


def readline_scenario(size, conns):
    """The stream handler as users write it (a readline() loop, Nagle off) on the thread
    servers, with socketserver_rs's native rfile and with the stdlib's makefile() rfile
    (the way it read before; servers.py --rfile makefile), and on the pool sized to the
    connections."""
    b = ("--backlog", "1024", "--handler", "readline")
    base = LINE_STDLIB
    rows = [
        Impl(base, "stdlib", "ThreadingTCPServer", base, b),
        Impl("rs ThreadingTCPServer (readline)", "rs", "ThreadingTCPServer", base, b),
        Impl(
            "rs ThreadingTCPServer (readline, makefile() rfile)",
            "rs",
            "ThreadingTCPServer",
            base,
            (*b, "--rfile", "makefile"),
        ),
        Impl(
            f"rs ThreadPoolTCPServer (readline, max_workers={conns})",
            "rs",
            "ThreadPoolTCPServer",
            base,
            (*b, "--max-workers", str(conns)),
        ),
    ]
    return Scenario(
        f"rl{conns}",
        f"readline() echo, {conns} persistent connection{'s' if conns > 1 else ''}",
        "tcp",
        ["--mode", "line", "--conns", str(conns), "--size", str(size)],
        rows,
        "Handler: `while line := rfile.readline(): wfile.write(line)` with Nagle off. "
        "The makefile() row reads through the stdlib's SocketIO (socketserver_rs before its "
        "native rfile).",
        f"Ratios against {LINE_STDLIB}.",
    )


BURST_TIMEOUT = 20.0  # with a backlog that holds the burst


BURST_TIMEOUT_DEFAULT_BACKLOG = 3.0  # SYNs dropped at 0 s are retried at 1 s and 3 s


def burst_rows(quick):
    """Backlog 1024 for every class; the stdlib default backlog (5) for the threading pair,
    where most of the burst waits for SYN retransmits (full runs only: it takes seconds)."""
    rows = []
    extra = ("--backlog", "1024")
    for name in ("TCPServer", "ThreadingTCPServer"):
        base = f"stdlib {name}, backlog 1024"
        rows += [
            Impl(base, "stdlib", name, base, extra),
            Impl(f"rs {name}, backlog 1024", "rs", name, base, extra),
        ]
    rows.append(
        Impl(
            "rs ThreadPoolTCPServer, backlog 1024",
            "rs",
            "ThreadPoolTCPServer",
            "stdlib ThreadingTCPServer, backlog 1024",
            extra,
        )
    )
    if not quick:
        stdlib_default, rs_default = default_backlogs()
        base = f"stdlib ThreadingTCPServer, default backlog ({stdlib_default})"
        rows += [
            Impl(base, "stdlib", "ThreadingTCPServer", base),
            Impl(
                f"rs ThreadingTCPServer, default backlog ({rs_default})",
                "rs",
                "ThreadingTCPServer",
                base,
            ),
        ]
    return rows


def default_backlogs():
    import socketserver

    try:
        import socketserver_rs

        rs_default = socketserver_rs.TCPServer.request_queue_size
    except Exception:
        rs_default = "?"
    return socketserver.TCPServer.request_queue_size, rs_default


C10K_BASE = "uvloop (Protocol)"


def c10k_rows():
    """Ping-pong over many connections: the servers built for it, and the stdlib's
    thread-per-connection server, which gets the same load and the same time bound."""
    b = ("--backlog", "4096")
    base = C10K_BASE
    return [
        Impl("rs ReactorTCPServer (MessageHandler, line)", "rs", "ReactorTCPServer", base, b),
        Impl(base, "uvloop", "tcp", base, b),
        Impl("asyncio (Protocol)", "asyncio", "tcp", base, b),
        Impl(
            "stdlib ThreadingTCPServer (readline)",
            "stdlib",
            "ThreadingTCPServer",
            base,
            (*b, "--handler", "readline"),
        ),
        Impl("mio-echo (Rust)", "mio", "tcp", base),
    ]


def http_rows():
    base = "stdlib ThreadingHTTPServer"
    stock = "stdlib ThreadingHTTPServer, Nagle on"
    b = ("--backlog", "1024")
    return [
        Impl(base, "stdlib", "http:ThreadingHTTPServer", base, b),
        Impl("rs ThreadingTCPServer", "rs", "http:ThreadingTCPServer", base, b),
        Impl("rs ThreadPoolTCPServer", "rs", "http:ThreadPoolTCPServer", base, b),
        Impl(stock, "stdlib", "http-stock:ThreadingHTTPServer", stock, b),
        Impl("rs ThreadingTCPServer, Nagle on", "rs", "http-stock:ThreadingTCPServer", stock, b),
    ]


# --- TLS on reactor servers (issue 14) ------------------------------------------------------

TLS_RS = "rs ReactorTCPServer (MessageHandler, line, TLS)"
TLS_RS_PLAIN = "rs ReactorTCPServer (MessageHandler, line, plain TCP)"
TLS_UVLOOP = "uvloop (Protocol, ssl=)"
TLS_ASYNCIO = "asyncio (Protocol, ssl=)"


@dataclass(frozen=True)
class Target:
    """A target of the issue: ``row`` at least (or, with ``most``, at most) ``ratio`` times
    ``base``, on the median of the per-round ratios."""

    row: str
    base: str
    ratio: float
    most: bool = False


@dataclass
class TlsScenario:
    key: str
    title: str
    loadgen: list
    rows: list
    note: str
    rate: str = "req/s"  # what one loadgen request is, in the table's header
    targets: tuple = ()
    second: str | None = TLS_RS_PLAIN  # every row also gets ratios against this one
    family: str = "tcp"


def tls_rows(material, backlog=1024, plain=True):
    """Our reactor with TLS in the engine, uvloop and asyncio with ``ssl=`` (all with the same
    ECDSA P-256 certificate and the line echo), and our plain-TCP reactor for reference."""
    b = ("--backlog", str(backlog))
    cert = ("--tls-cert", str(material.server_cert), "--tls-key", str(material.server_key))
    client = ("--tls-ca", str(material.ca_cert))
    base = TLS_UVLOOP
    rows = [
        Impl(TLS_RS, "rs", "ReactorTCPServer", base, (*b, *cert), client),
        Impl(TLS_UVLOOP, "uvloop", "tcp", base, (*b, *cert), client),
        Impl(TLS_ASYNCIO, "asyncio", "tcp", base, (*b, *cert), client),
    ]
    if plain:
        rows.append(Impl(TLS_RS_PLAIN, "rs", "ReactorTCPServer", base, b))
    return rows


TLS_HANDLERS = (
    'Same echo everywhere: a MessageHandler with framing = "line" returning the line on the '
    "reactor (TLS terminated in the engine, tls_certfile/tls_keyfile), the echo Protocol on "
    "uvloop and asyncio given ssl= an ssl.SSLContext(PROTOCOL_TLS_SERVER) with the same "
    "certificate (ECDSA P-256, signed by a CA made at bench time). The client (loadgen, "
    "rustls with ring) offers TLS 1.3 only, verifies the certificate for 'localhost' and never "
    "resumes a session."
)


def tls_scenarios(size, material):
    def echo(conns):
        targets = ()
        if conns == 16:
            targets = (Target(TLS_RS, TLS_UVLOOP, 1.5), Target(TLS_RS, TLS_RS_PLAIN, 0.8))
        return TlsScenario(
            f"tls{conns}",
            f"TLS 1.3 echo, {conns} persistent connection{'s' if conns > 1 else ''}",
            ["--mode", "line", "--conns", str(conns), "--size", str(size), "--prime"],
            tls_rows(material),
            f"Each connection writes a {size}-byte line and waits for its echo; every "
            "connection is opened and completes its handshake and one round trip before the "
            "clock starts (loadgen --prime; server CPU per request includes those "
            f"handshakes). {TLS_HANDLERS}",
            targets=targets,
        )

    return [
        *(echo(conns) for conns in (1, 16, 256)),
        TlsScenario(
            "tlsconnect16",
            "TLS 1.3 full handshakes, connection per request, 16 concurrent workers",
            ["--mode", "connect", "--conns", "16", "--size", str(size)],
            tls_rows(material, plain=False),
            "Each worker connects, does a full handshake (no resumption), writes one line, "
            "reads its echo, sends close_notify and closes: one request is one handshake "
            "(plain TCP without a handshake: connect16). The client verifies two ECDSA "
            "signatures per handshake to the server's one: with 'client CPU busy' near 100% "
            "the client set the pace, and the server CPU per handshake compares the servers. "
            + TLS_HANDLERS,
            rate="handshakes/s",
            targets=(Target(TLS_RS, TLS_UVLOOP, 1.2),),
            second=None,
        ),
    ]


def tls_idle_rows(material):
    return tls_rows(material, backlog=4096)


TLS_IDLE_TARGETS = (Target(TLS_RS, TLS_UVLOOP, 1.0, most=True),)
