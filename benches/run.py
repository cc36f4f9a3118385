"""Benchmark socketserver_rs against the stdlib socketserver and peers; see benches/README.md.

    .venv/bin/python benches/run.py            # the full suite (about 8 minutes)
    .venv/bin/python benches/run.py --quick    # a smoke run (under a minute)
    .venv/bin/python benches/run.py --only tcp16,shutdown --rounds 5

Every server runs in its own process (benches/servers.py), started afresh for each
measurement; the native load generator (benches/loadgen) drives it over loopback, bounded in
time and request count. Rounds interleave the implementations, the tables report medians over
rounds, ratios against the stdlib counterpart, and the server's CPU time per request from
/proc/<pid>/stat. Results also go to benches/results/latest.{md,json}.
"""

import argparse
import datetime
import json
import os
import platform
import re
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCHES = Path(__file__).resolve().parent
REPO = BENCHES.parent
SERVERS = BENCHES / "servers.py"
RESULTS = BENCHES / "results"
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Servers run on CPU 0 and load generators on CPU 1 (when there are two): one core each, and
# a single connection's round trip always crosses cores instead of depending on where the
# scheduler happened to put the two processes. --no-pin turns this off.
PIN = {"server": None, "client": None}


# Servers and load generators may hold 10,000 connections (c10k): their descriptor limit is
# raised to this (the hard limit too, when we may), in the child before it runs.
NOFILE = 32768


def raise_nofile(want=NOFILE):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):
            want = hard  # not root: as far as the hard limit goes
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def child_setup(role):
    """What runs in a server's or load generator's process before it starts: the CPU it is
    pinned to (if any) and a descriptor limit that fits 10,000 connections."""
    cpus = PIN[role]

    def setup():
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        raise_nofile()

    return setup


SCENARIOS = [
    "tcp1",
    "tcp16",
    "tcp256",
    "connect16",
    "udp16",
    "unix16",
    "line16",
    "line16p4",
    "c10k",
    "burst",
    "shutdown",
    "idle",
    "http",
]


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
)


@dataclass(frozen=True)
class Impl:
    """One row: a server implementation and the stdlib row it is compared with."""

    label: str
    impl: str  # servers.py IMPL
    kind: str  # servers.py KIND
    baseline: str
    args: tuple = ()


@dataclass
class Row:
    impl: Impl
    runs: list = field(default_factory=list)
    failure: str | None = None


# --- what exists on this machine -------------------------------------------------------------


def available_rs_names():
    try:
        import socketserver_rs
    except Exception as error:  # a broken build still lets the stdlib and peer rows run
        print(f"note: socketserver_rs does not import ({error}); its rows are n/a")
        return set()
    return set(dir(socketserver_rs))


def measured_package():
    """Which socketserver_rs the servers import: this checkout (with its git revision) or
    an installed copy elsewhere."""
    try:
        import socketserver_rs
    except Exception:
        return "socketserver_rs (does not import)"
    where = Path(socketserver_rs.__file__).resolve().parent
    if where.is_relative_to(REPO):
        return f"this checkout at git {git_revision()}"
    return f"socketserver_rs {socketserver_rs.__version__} installed at {where}"


def uvloop_available():
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def unavailable(impl, rs_names, has_uvloop):
    """Why a row cannot run here, or None."""
    if impl.impl == "rs":
        name = impl.kind.split(":", 1)[-1]
        if name not in rs_names:
            return f"socketserver_rs has no {name} yet"
    if impl.impl == "uvloop" and not has_uvloop:
        return "uvloop is not installed (pip install uvloop)"
    return None


# --- processes -------------------------------------------------------------------------------

_live = set()


class StartError(Exception):
    pass


class Server:
    """A benchmark server process; always stop() it (it also dies with us: PDEATHSIG).

    Its stderr goes to a file of its own, appended to the run's log when it stops."""

    def __init__(self, impl, address, log):
        cmd = [PYTHON, str(SERVERS), impl.impl, impl.kind, address, *impl.args]
        self.run_log = log
        log = self.log = tempfile.TemporaryFile("w+")
        self.run_log.write(f"=== {impl.label}: {' '.join(cmd[1:])}\n")
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=server_env(),
            cwd=REPO,
            preexec_fn=child_setup("server"),
        )
        _live.add(self.proc)
        self.address = None

    def wait_ready(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith("READY"):
                    self.address = line.split(None, 1)[1].strip()
                    return self.address
                if not line and self.proc.poll() is not None:
                    break
            elif self.proc.poll() is not None:
                break
        detail = log_tail(self.log)
        self.stop()
        raise StartError(f"did not start: {detail}")

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

    def status(self):
        """Resident set (now and peak, kB) and thread count from /proc/<pid>/status."""
        wanted = {"VmRSS": "rss_kb", "VmHWM": "hwm_kb", "Threads": "threads"}
        found = {}
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in wanted:
                        found[wanted[key]] = int(value.split()[0])
        except (OSError, ValueError):
            pass
        return found

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        stop_process(self.proc)
        if not self.log.closed:
            self.log.seek(0)
            shutil.copyfileobj(self.log, self.run_log)
            self.log.close()


def stop_process(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe:
            pipe.close()
    _live.discard(proc)


def stop_all():
    for proc in list(_live):
        stop_process(proc)


class Noise:
    """How busy the rest of the machine was during a measurement: CPU time used by everyone
    (/proc/stat) minus the server's and the load generator's, in CPUs kept busy."""

    def __init__(self, server):
        self.server = server
        self.wall = time.monotonic()
        self.busy = machine_busy_seconds()
        self.mine = server.cpu_seconds() + children_cpu_seconds()

    def other_cpus(self):
        wall = time.monotonic() - self.wall
        busy = machine_busy_seconds() - self.busy
        mine = self.server.cpu_seconds() + children_cpu_seconds() - self.mine
        return max(0.0, busy - mine) / wall if wall > 0 else None


def machine_busy_seconds():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def children_cpu_seconds():
    """CPU time of the load generators run so far (they are waited for, so they count)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def server_env():
    env = dict(os.environ)
    env["BENCH_BIN_DIR"] = str(BIN_DIR)
    env.pop("PYTHONDEVMODE", None)
    return env


def log_tail(log, lines=2):
    """The last lines a server wrote, made fit for one table cell."""
    if log.closed:
        return "(log closed)"
    log.flush()
    log.seek(0)
    text = log.read()
    tail = [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return cell(" / ".join(tail) or "(no output)")


def cell(text, limit=160):
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def build_loadgen():
    print("building benches/loadgen (cargo build --release --locked -p loadgen) ...")
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "-p", "loadgen"], cwd=REPO, check=True
    )


def target_dir():
    return Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))


BIN_DIR = target_dir() / "release"
LOADGEN = BIN_DIR / "loadgen"


def loadgen(args, duration, timeout, watch=None, bound=None):
    """Runs the load generator and returns its JSON line as a dict. ``watch()`` is called every
    50 ms while it runs; it is killed after ``bound`` seconds (default: duration + timeout +
    60; loadgen bounds itself well within that)."""
    cmd = [str(LOADGEN), *args, "--duration", f"{duration:g}", "--timeout", f"{timeout:g}"]
    bound = duration + timeout + 60 if bound is None else bound
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=child_setup("client"),
    )
    _live.add(proc)
    try:
        if watch is not None:
            deadline = time.monotonic() + bound
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(cmd, bound)
                watch()
                time.sleep(0.05)
        out, err = proc.communicate(timeout=bound)
    finally:
        stop_process(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed: {err.strip()}")
    return json.loads(out.strip().splitlines()[-1])


# --- throughput scenarios --------------------------------------------------------------------

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
            "unix16",
            "Unix stream, 16 persistent connections",
            "unix",
            lg("unix", 16),
            socketserver_rows("unix", single=False),
        ),
        line_scenario(size, 1),
        line_scenario(size, 4),
    ]


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


_socket_ids = iter(range(1_000_000))


def measure_throughput(scenario, impl, settings, tmp, log):
    if scenario.family == "unix":
        address = str(tmp / f"{scenario.key}-{next(_socket_ids)}.sock")
    else:
        address = "127.0.0.1:0"
    server = Server(impl, address, log)
    try:
        target = server.wait_ready()
        args = [*scenario.loadgen, "--addr", target]
        if settings.warmup:
            loadgen(args, settings.warmup, settings.timeout)
        noise = Noise(server)
        cpu0 = server.cpu_seconds()
        result = loadgen(args, settings.duration, settings.timeout)
        cpu1 = server.cpu_seconds()
        result["other_cpus"] = noise.other_cpus()
        result["loadavg"] = os.getloadavg()[0]
        if not server.alive():
            raise RuntimeError(f"server died: {log_tail(server.log)}")
    finally:
        server.stop()
    result["server_cpu_s"] = cpu1 - cpu0
    n = result["requests"]
    result["server_cpu_us_per_req"] = (cpu1 - cpu0) / n * 1e6 if n else None
    return result


def run_rounds(rows, rounds, measure):
    """Runs every row once per round; the order rotates from round to round."""
    live = [r for r in rows if r.failure is None]
    for rnd in range(rounds):
        shift = rnd % len(live) if live else 0
        for row in live[shift:] + live[:shift]:
            if row.failure is not None:
                continue
            try:
                row.runs.append(measure(row.impl))
            except StartError as error:
                row.failure = cell(str(error))
            except Exception as error:
                row.failure = cell(f"{type(error).__name__}: {error}")


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def summarize_throughput(row):
    runs = row.runs
    lat = [r["latency_us"] for r in runs]
    rates = [r["rps"] for r in runs]
    return {
        "rps": median(rates),
        "rps_spread": (max(rates) - min(rates)) / median(rates) if median(rates) else None,
        "p50_us": median([x["p50"] for x in lat]),
        "p99_us": median([x["p99"] for x in lat]),
        "p999_us": median([x["p999"] for x in lat]),
        "errors": sum(r["errors"] for r in runs),
        "timeouts": sum(r["timeouts"] for r in runs),
        "cpu_us_per_req": median([r["server_cpu_us_per_req"] for r in runs]),
        "client_cpu_s": median([r["client_cpu_s"] for r in runs]),
        "first_error": next((r["first_error"] for r in runs if r["first_error"]), None),
        "rounds": len(runs),
    }


# --- formatting ------------------------------------------------------------------------------


def fmt_num(value, digits=None):
    if value is None:
        return "-"
    if digits is not None:
        return f"{value:,.{digits}f}"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def fmt_spread(spread, rounds):
    """Max minus min over rounds, relative to the median: how far one round can be off."""
    if spread is None or rounds < 2:
        return "-"
    return f"{spread * 100:.0f}%"


def fmt_ratio(value, base):
    if value is None or not base:
        return "-"
    return f"{value / base:.2f}x"


def table(header, lines):
    out = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|",
    ]
    out += ["| " + " | ".join(str(c) for c in line) + " |" for line in lines]
    return "\n".join(out)


def throughput_table(rows, second=None, second_name="uvloop streams"):
    """One row per implementation; with ``second`` (a row label), every row also gets its
    req/s and CPU per request as ratios against that row."""
    summaries = {r.impl.label: summarize_throughput(r) for r in rows if r.runs}
    other = summaries.get(second, {}) if second else None
    header = [
        "implementation",
        "req/s",
        "spread",
        "req/s x stdlib",
        *([f"req/s x {second_name}"] if second else []),
        "p50 µs",
        "p99 µs",
        "p99.9 µs",
        "errors/timeouts",
        "server CPU µs/req",
        "CPU/req x stdlib",
        *([f"CPU/req x {second_name}"] if second else []),
    ]
    lines = []
    for row in rows:
        label = row.impl.label
        if label not in summaries:
            lines.append([label, "n/a", *[""] * (len(header) - 3), row.failure or ""])
            continue
        s = summaries[label]
        base = summaries.get(row.impl.baseline, {})
        failures = f"{s['errors']}/{s['timeouts']}"
        if s["errors"] and s["first_error"]:
            failures += f" ({s['first_error'][:40]})"
        line = [
            label,
            fmt_num(s["rps"], 0),
            fmt_spread(s["rps_spread"], s["rounds"]),
            fmt_ratio(s["rps"], base.get("rps")),
        ]
        if second:
            line.append(fmt_ratio(s["rps"], other.get("rps")))
        line += [
            fmt_num(s["p50_us"]),
            fmt_num(s["p99_us"]),
            fmt_num(s["p999_us"]),
            failures,
            fmt_num(s["cpu_us_per_req"]),
            fmt_ratio(s["cpu_us_per_req"], base.get("cpu_us_per_req")),
        ]
        if second:
            line.append(fmt_ratio(s["cpu_us_per_req"], other.get("cpu_us_per_req")))
        lines.append(line)
    return table(header, lines), summaries


# --- the other scenarios ---------------------------------------------------------------------


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


def measure_burst(impl, settings, log):
    timeout = BURST_TIMEOUT if "--backlog" in impl.args else BURST_TIMEOUT_DEFAULT_BACKLOG
    server = Server(impl, "127.0.0.1:0", log)
    try:
        target = server.wait_ready()
        args = [
            "--mode",
            "connect",
            "--conns",
            "256",
            "--max-requests",
            "256",
            "--size",
            str(settings.size),
            "--addr",
            target,
        ]
        loadgen(["--mode", "tcp", "--conns", "1", "--addr", target], 0.1, 2.0)  # warm
        result = loadgen(args, timeout + 5.0, timeout)
    finally:
        server.stop()
    return result


def burst_table(rows):
    summaries = {}
    for row in rows:
        if row.runs:
            maxes = [r["latency_us"]["max"] for r in row.runs]
            summaries[row.impl.label] = {
                "max_ms": median([m / 1e3 if m is not None else None for m in maxes]),
                "worst_ms": max((m for m in maxes if m is not None), default=0) / 1e3,
                "p50_ms": median([(r["latency_us"]["p50"] or 0) / 1e3 for r in row.runs]),
                "completed": min(r["requests"] for r in row.runs),
                "errors": sum(r["errors"] for r in row.runs),
                "timeouts": sum(r["timeouts"] for r in row.runs),
                "rounds": len(row.runs),
            }
    lines = []
    for row in rows:
        s = summaries.get(row.impl.label)
        if s is None:
            lines.append([row.impl.label, "n/a", "", "", "", "", row.failure or ""])
            continue
        base = summaries.get(row.impl.baseline, {})
        if s["timeouts"] or base.get("timeouts"):
            # Some clients never got through: the slowest one that did is no fair figure.
            slowest, ratio = "timed out" if s["timeouts"] else fmt_num(s["max_ms"]), "-"
        else:
            slowest, ratio = fmt_num(s["max_ms"]), fmt_ratio(s["max_ms"], base.get("max_ms"))
        worst = "timed out" if s["timeouts"] else fmt_num(s["worst_ms"])
        lines.append(
            [
                row.impl.label,
                f"{s['completed']}/256",
                slowest,
                ratio,
                worst,
                fmt_num(s["p50_ms"]),
                f"{s['errors']}/{s['timeouts']}",
            ]
        )
    header = [
        "implementation",
        "round trips done (min)",
        "slowest ms (median)",
        "slowest x stdlib",
        "slowest ms (worst round)",
        "p50 ms",
        "errors/timeouts",
    ]
    return table(header, lines), summaries


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


def measure_c10k(impl, settings, log):
    """``c10k_conns`` connections, each sending a line and waiting for its echo, over and over,
    for ``c10k_seconds``; the server's /proc status is sampled every 50 ms meanwhile."""
    server = Server(impl, "127.0.0.1:0", log)
    peak = {"threads": 0, "rss_kb": 0}

    def watch():
        now = server.status()
        peak["threads"] = max(peak["threads"], now.get("threads", 0))
        peak["rss_kb"] = max(peak["rss_kb"], now.get("rss_kb", 0))

    size = str(settings.size)
    try:
        target = server.wait_ready()
        if settings.warmup:  # warms the code paths with a few connections, not the 10,000
            warm = ["--mode", "line", "--conns", "64", "--size", size, "--addr", target]
            loadgen(warm, settings.warmup, settings.timeout)
        before = server.status()
        noise = Noise(server)
        cpu0 = server.cpu_seconds()
        conns = str(settings.c10k_conns)
        args = ["--mode", "line", "--conns", conns, "--size", size, "--prime"]
        seconds, timeout = settings.c10k_seconds, settings.c10k_timeout
        # loadgen's own bound: connecting and priming <= timeout, measuring, <= 1 s of grace.
        bound = seconds + timeout + 20
        result = loadgen([*args, "--addr", target], seconds, timeout, watch=watch, bound=bound)
        watch()
        after = server.status()
        cpu1 = server.cpu_seconds()
        result["other_cpus"] = noise.other_cpus()
        result["loadavg"] = os.getloadavg()[0]
        if not server.alive():
            raise RuntimeError(f"server died: {log_tail(server.log)}")
    finally:
        server.stop()
    result["rss_before_kb"] = before.get("rss_kb")
    result["threads_before"] = before.get("threads")
    result["peak_rss_kb"] = max(after.get("hwm_kb", 0), peak["rss_kb"])  # VmHWM: the true peak
    result["peak_threads"] = peak["threads"]
    result["server_cpu_s"] = cpu1 - cpu0
    n = result["requests"]
    result["server_cpu_us_per_req"] = (cpu1 - cpu0) / n * 1e6 if n else None
    return result


def c10k_table(rows, conns):
    summaries = {}
    for row in rows:
        if not row.runs:
            continue
        s = summarize_throughput(row)
        runs = row.runs
        s.update(
            {
                "served_min": min(r["conns_served"] or 0 for r in runs),
                "ready_min": min(r["conns_ready"] or 0 for r in runs),
                "connect_s": median([r["connect_s"] for r in runs]),
                "peak_rss_mib": median([r["peak_rss_kb"] / 1024 for r in runs]),
                "peak_rss_max_mib": max(r["peak_rss_kb"] for r in runs) / 1024,
                "rss_before_mib": median([(r["rss_before_kb"] or 0) / 1024 for r in runs]),
                "rss_growth_mib": median(
                    [(r["peak_rss_kb"] - (r["rss_before_kb"] or 0)) / 1024 for r in runs]
                ),
                "peak_threads": max(r["peak_threads"] for r in runs),
            }
        )
        summaries[row.impl.label] = s
    header = [
        "implementation",
        "req/s",
        "spread",
        "req/s x uvloop",
        "p50 ms",
        "p99 ms",
        "errors/timeouts",
        "ready before the clock (min; s)",
        "connections served (min)",
        "server peak RSS MiB",
        "RSS x uvloop",
        "RSS growth MiB",
        "server threads (peak)",
        "server CPU µs/req",
        "CPU/req x uvloop",
    ]
    lines = []
    for row in rows:
        s = summaries.get(row.impl.label)
        if s is None:
            lines.append([row.impl.label, "n/a", *[""] * (len(header) - 3), row.failure or ""])
            continue
        base = summaries.get(row.impl.baseline, {})
        failures = f"{s['errors']}/{s['timeouts']}"
        if s["errors"] and s["first_error"]:
            failures += f" ({s['first_error'][:40]})"
        ms = {k: None if s[k] is None else s[k] / 1e3 for k in ("p50_us", "p99_us")}
        lines.append(
            [
                row.impl.label,
                fmt_num(s["rps"], 0),
                fmt_spread(s["rps_spread"], s["rounds"]),
                fmt_ratio(s["rps"], base.get("rps")),
                fmt_num(ms["p50_us"]),
                fmt_num(ms["p99_us"]),
                failures,
                f"{s['ready_min']:,} ({fmt_num(s['connect_s'])} s)",
                f"{s['served_min']:,}/{conns:,}",
                fmt_num(s["peak_rss_mib"]),
                fmt_ratio(s["peak_rss_mib"], base.get("peak_rss_mib")),
                fmt_num(s["rss_growth_mib"]),
                f"{s['peak_threads']:,}",
                fmt_num(s["cpu_us_per_req"]),
                fmt_ratio(s["cpu_us_per_req"], base.get("cpu_us_per_req")),
            ]
        )
    return table(header, lines), summaries


def run_json(cmd, timeout):
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=server_env(), cwd=REPO
    )
    _live.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop_process(proc)
    if proc.returncode != 0:
        raise RuntimeError(err.strip().splitlines()[-1] if err.strip() else "failed")
    return json.loads(out.strip().splitlines()[-1])


def shutdown_section(settings, rs_names):
    results = {}
    for impl in ("stdlib", "rs"):
        if impl == "rs" and "TCPServer" not in rs_names:
            results[impl] = {"failure": "socketserver_rs does not import"}
            continue
        cmd = [
            PYTHON,
            str(SERVERS),
            "shutdown-latency",
            impl,
            "--tries",
            str(settings.shutdown_tries),
        ]
        try:
            results[impl] = run_json(cmd, 120)
        except Exception as error:
            results[impl] = {"failure": str(error)}
    base = results["stdlib"]
    lines = []
    for impl, label in (("stdlib", "stdlib TCPServer"), ("rs", "rs TCPServer")):
        r = results[impl]
        if "failure" in r:
            lines.append([label, "n/a", "", "", r["failure"]])
            continue
        lines.append(
            [
                label,
                fmt_num(r["median_ms"]),
                fmt_num(r["worst_ms"]),
                fmt_ratio(r["worst_ms"], base.get("worst_ms")),
                "",
            ]
        )
    header = ["implementation", "median ms", "worst ms", "worst x stdlib", "note"]
    return table(header, lines), results


def idle_section(settings, rs_names):
    # (implementation, class, poll_interval): the default 0.5 s wakes both up twice a second
    # (service_actions() must run); with None, socketserver_rs never wakes up while idle.
    kinds = [
        ("stdlib", "TCPServer", "0.5"),
        ("rs", "TCPServer", "0.5"),
        ("rs", "TCPServer", "none"),
        ("stdlib", "UDPServer", "0.5"),
        ("rs", "UDPServer", "0.5"),
        ("stdlib", "ThreadingTCPServer", "0.5"),
        ("rs", "ThreadingTCPServer", "0.5"),
        ("rs", "ThreadPoolTCPServer", "0.5"),
    ]
    procs = {}
    results = {}
    try:
        for impl, kind, interval in kinds:
            if impl == "rs" and kind not in rs_names:
                results[(impl, kind, interval)] = {"failure": f"socketserver_rs has no {kind}"}
                continue
            cmd = [
                PYTHON,
                str(SERVERS),
                "idle",
                impl,
                kind,
                "--seconds",
                f"{settings.idle_seconds:g}",
                "--poll-interval",
                interval,
            ]
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=server_env(),
                cwd=REPO,
            )
            _live.add(proc)
            procs[(impl, kind, interval)] = proc
        for key, proc in procs.items():
            try:
                out, err = proc.communicate(timeout=settings.idle_seconds + 60)
                if proc.returncode != 0:
                    raise RuntimeError((err.strip().splitlines() or ["failed"])[-1])
                results[key] = json.loads(out.strip().splitlines()[-1])
            except Exception as error:
                results[key] = {"failure": str(error)}
    finally:
        for proc in procs.values():
            stop_process(proc)
    lines = []
    for impl, kind, interval in kinds:
        r = results[(impl, kind, interval)]
        name = f"{impl} {kind}" + (", poll_interval=None" if interval == "none" else "")
        if "failure" in r:
            lines.append([name, "n/a", "", "", r["failure"]])
            continue
        base_kind = "ThreadingTCPServer" if kind.startswith("ThreadPool") else kind
        base = results.get(("stdlib", base_kind, "0.5"), {})
        lines.append(
            [
                name,
                fmt_num(r["cpu_ms"]),
                str(r["context_switches"]),
                fmt_ratio(r["cpu_ms"], base.get("cpu_ms")),
                "",
            ]
        )
    header = [
        "implementation",
        f"CPU ms in {settings.idle_seconds:g} s",
        "context switches",
        "CPU x stdlib",
        "note",
    ]
    return table(header, lines), {f"{i} {k} {p}": v for (i, k, p), v in results.items()}


WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(text):
    def latency(pct):
        m = re.search(rf"^\s*{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        return float(m.group(1)) * WRK_UNITS[m.group(2)] if m else None

    stats = re.search(
        r"^\s*Latency\s+([\d.]+)(us|ms|s)\s+[\d.]+\w+\s+([\d.]+)(us|ms|s)", text, re.M
    )
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
    total = re.search(r"^\s*(\d+) requests in", text, re.M)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = sum(int(x) for x in sock.groups()[:3]) if sock else 0
    return {
        "rps": float(rps.group(1)) if rps else None,
        "requests": int(total.group(1)) if total else 0,
        "p50_ms": latency(50),
        "p99_ms": latency(99),
        "mean_ms": float(stats.group(1)) * WRK_UNITS[stats.group(2)] if stats else None,
        "max_ms": float(stats.group(3)) * WRK_UNITS[stats.group(4)] if stats else None,
        "errors": errors + (int(non2xx.group(1)) if non2xx else 0),
        "timeouts": int(sock.group(4)) if sock else 0,
    }


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


def measure_http(impl, settings, log):
    server = Server(impl, "127.0.0.1:0", log)
    try:
        url = f"http://{server.wait_ready()}/"

        def wrk(seconds):
            cmd = ["wrk", "-t1", "-c16", f"-d{seconds}s", "--latency", "--timeout", "5s", url]
            done = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                timeout=seconds + 30,
                preexec_fn=child_setup("client"),
            )
            if done.returncode != 0:
                raise RuntimeError(f"wrk failed: {done.stderr.strip()}")
            return parse_wrk(done.stdout)

        wrk(1)  # warm-up
        noise = Noise(server)
        cpu0 = server.cpu_seconds()
        result = wrk(settings.http_seconds)
        cpu1 = server.cpu_seconds()
        result["other_cpus"] = noise.other_cpus()
    finally:
        server.stop()
    n = result["requests"]
    result["cpu_us_per_req"] = (cpu1 - cpu0) / n * 1e6 if n else None
    return result


def http_table(rows):
    summaries = {}
    for row in rows:
        if row.runs:
            summaries[row.impl.label] = {
                "rps": median([r["rps"] for r in row.runs]),
                "p50_ms": median([r["p50_ms"] for r in row.runs]),
                "p99_ms": median([r["p99_ms"] for r in row.runs]),
                "mean_ms": median([r["mean_ms"] for r in row.runs]),
                "errors": sum(r["errors"] for r in row.runs),
                "timeouts": sum(r["timeouts"] for r in row.runs),
                "cpu_us_per_req": median([r["cpu_us_per_req"] for r in row.runs]),
                "rounds": len(row.runs),
            }
    lines = []
    for row in rows:
        s = summaries.get(row.impl.label)
        if s is None:
            lines.append([row.impl.label, "n/a", "", "", "", "", "", "", row.failure or ""])
            continue
        base = summaries.get(row.impl.baseline, {})
        lines.append(
            [
                row.impl.label,
                fmt_num(s["rps"], 0),
                fmt_ratio(s["rps"], base.get("rps")),
                fmt_num(s["p50_ms"]),
                fmt_num(s["p99_ms"]),
                fmt_num(s["mean_ms"]),
                f"{s['errors']}/{s['timeouts']}",
                fmt_num(s["cpu_us_per_req"]),
                fmt_ratio(s["cpu_us_per_req"], base.get("cpu_us_per_req")),
            ]
        )
    header = [
        "implementation",
        "req/s",
        "req/s x stdlib",
        "p50 ms",
        "p99 ms",
        "mean ms",
        "errors/timeouts",
        "server CPU µs/req",
        "CPU/req x stdlib",
    ]
    return table(header, lines), summaries


# --- the run ---------------------------------------------------------------------------------


def with_runs(rows, summaries):
    """Summaries plus every raw measurement and failure, for latest.json."""
    return {
        row.impl.label: {
            "summary": summaries.get(row.impl.label),
            "baseline": row.impl.baseline,
            "server": [row.impl.impl, row.impl.kind, *row.impl.args],
            "failure": row.failure,
            "runs": row.runs,
        }
        for row in rows
    }


def git_revision():
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "rust", "python"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return rev + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


EARLIER = "*From the earlier run of "


def merge_previous(out, sections, report):
    """Adds the scenarios of the previous latest.{md,json} in ``out`` that this run did not
    measure to ``sections`` and ``report``, each marked with the date of the run it was
    measured in. Returns their keys and one paragraph per earlier run they come from."""
    old = json.loads((out / "latest.json").read_text())
    old_md = (out / "latest.md").read_text().splitlines()
    old_meta = old.get("meta", {})
    blocks, title, runs, date = {}, None, {}, None
    for line in old_md:
        if line.startswith("## "):
            title = line[3:]
            blocks[title] = [line]
        elif line.startswith(("Total time", "This run measured")):
            title = None
        elif title is not None:
            blocks[title].append(line)
        elif line.startswith("Earlier run of "):
            runs[line[len("Earlier run of ") :].partition(": ")[0]] = line
        elif date is None and line.startswith("Measured "):
            date, _, what = line[len("Measured ") :].partition(": ")
            what = what.split(" Medians over rounds")[0]
            runs[date] = f"Earlier run of {date}: {what}"
    run_of_old = {k: old_meta.get(k) for k in ("date", "git", "socketserver_rs", "settings")}
    kept, used = [], []
    for key, scenario in old.get("scenarios", {}).items():
        block = blocks.get(scenario.get("title"))
        if key in report["scenarios"] or not block:
            continue
        while block and not block[-1].strip():
            block.pop()
        marks = [ln for ln in block if ln.startswith(EARLIER)]
        if marks:
            when = marks[0][len(EARLIER) :].split("*", 1)[0]
        else:
            when = date
            block[1:1] = ["", f"{EARLIER}{when}* (described at the top)."]
        if when not in used:
            used.append(when)
        scenario.setdefault("measured", run_of_old)
        report["scenarios"][key] = scenario
        sections[key] = [*block, ""]
        kept.append(key)
    if kept:
        earlier = {k: v for k, v in old_meta.items() if k != "merged_from"}
        report["meta"]["merged_from"] = [earlier, *old_meta.get("merged_from", [])]
    intro = [runs[w] for w in used if w in runs]
    return kept, intro


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one short round of everything")
    p.add_argument("--rounds", type=int, help="rounds per scenario (default 3)")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 2)")
    p.add_argument("--only", help="comma-separated scenarios: " + ",".join(SCENARIOS))
    p.add_argument("--no-build", action="store_true", help="do not run cargo build")
    p.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin servers to CPU 0 and load generators to CPU 1",
    )
    p.add_argument(
        "--label", help="says what is measured, in the report (default: where the package is)"
    )
    p.add_argument("--out", type=Path, default=RESULTS, help="where latest.{md,json} go")
    p.add_argument(
        "--merge",
        action="store_true",
        help="keep the scenarios this run does not measure from the previous latest.{md,json} "
        "in --out (each marked with the run it comes from)",
    )
    p.add_argument(
        "--c10k-conns", type=int, help="connections in c10k (default 10000, at most 10000)"
    )
    p.add_argument("--c10k-seconds", type=float, help="seconds per c10k measurement (default 5)")
    args = p.parse_args(argv)
    settings = QUICK if args.quick else FULL
    changes = {}
    if args.rounds:
        changes["rounds"] = changes["burst_rounds"] = max(1, args.rounds)
    if args.duration:
        changes["duration"] = args.duration
    if args.c10k_conns:
        if not 1 <= args.c10k_conns <= 10_000:
            p.error("--c10k-conns must be within 1..10000")
        changes["c10k_conns"] = args.c10k_conns
    if args.c10k_seconds:
        changes["c10k_seconds"] = args.c10k_seconds
    if changes:
        settings = Settings(**{**settings.__dict__, **changes})
    only = set(SCENARIOS)
    if args.only:
        only = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = only - set(SCENARIOS)
        if unknown:
            p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    return args, settings, only


def main(argv=None):
    args, settings, only = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    if not args.no_build:
        build_loadgen()
    if not LOADGEN.exists():
        raise SystemExit(f"{LOADGEN} is missing: cargo build --release -p loadgen")

    cpus = sorted(os.sched_getaffinity(0))
    if not args.no_pin and len(cpus) >= 2:
        PIN["server"], PIN["client"] = {cpus[0]}, {cpus[1]}
    rs_names = available_rs_names()
    has_uvloop = uvloop_available()
    when = datetime.datetime.now().astimezone()
    meta = {
        "date": when.isoformat(timespec="seconds"),
        "git": git_revision(),
        "socketserver_rs": args.label or measured_package(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "settings": settings.__dict__,
        "uvloop": has_uvloop,
        "wrk": bool(shutil.which("wrk")),
        "quick": args.quick,
        "pinning": {k: sorted(v) if v else None for k, v in PIN.items()},
    }
    md = [
        "# socketserver_rs benchmarks: latest run",
        "",
        f"Measured {when:%Y-%m-%d %H:%M %Z}: {meta['socketserver_rs']}, Python {meta['python']}, "
        f"Linux {meta['kernel']}, {meta['cpus']} CPUs (load average at start "
        f"{meta['loadavg_at_start'][0]:.2f}). {settings.rounds} round(s) x "
        f"{settings.duration:g} s per row, {settings.size}-byte messages. "
        "Medians over rounds; the ratios matter, not the absolute numbers "
        "(method: benches/README.md).",
        "",
    ]
    report = {"meta": meta, "scenarios": {}}
    sections = {}  # scenario key -> its markdown block

    def emit(key, title, text, data, note=""):
        others = [
            run.get("other_cpus")
            for row in data.values()
            if isinstance(row, dict)
            for run in row.get("runs", ())
        ]
        others = [x for x in others if x is not None]
        if others:
            note += (
                f" Other processes kept {statistics.median(others):.2f} CPUs busy "
                f"during these measurements (median; max {max(others):.2f})."
            )
        loads = [
            run["loadavg"]
            for row in data.values()
            if isinstance(row, dict)
            for run in row.get("runs", ())
            if run.get("loadavg") is not None
        ]
        if loads:
            note += (
                f" Load average (1 min) after each measurement: median "
                f"{statistics.median(loads):.1f}, range {min(loads):.1f} to {max(loads):.1f}."
            )
        block = [f"## {title}", ""]
        if note:
            block += [note, ""]
        block += [text, ""]
        print("\n".join(block), flush=True)
        sections[key] = block
        report["scenarios"][key] = {"title": title, "results": data, "note": note}

    def rows_for(impls):
        rows = [Row(i) for i in impls]
        for row in rows:
            row.failure = unavailable(row.impl, rs_names, has_uvloop)
        return rows

    tmp = Path(tempfile.mkdtemp(prefix="ssrs-bench-"))
    args.out.mkdir(parents=True, exist_ok=True)
    log = open(args.out / "servers.log", "w+")  # closed in finally
    previous_term = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"server logs: {log.name}\n", flush=True)
    try:
        for scenario in throughput_scenarios(settings.size):
            if scenario.key not in only:
                continue
            rows = rows_for(scenario.rows)
            run_rounds(
                rows,
                settings.rounds,
                lambda impl, sc=scenario: measure_throughput(sc, impl, settings, tmp, log),
            )
            text, data = throughput_table(rows, scenario.second)
            data = with_runs(rows, data)
            emit(
                scenario.key,
                scenario.title,
                text,
                data,
                " ".join(x for x in (scenario.note, scenario.ratios) if x),
            )
        if "c10k" in only:
            conns = settings.c10k_conns
            rows = rows_for(c10k_rows())
            run_rounds(rows, settings.rounds, lambda impl: measure_c10k(impl, settings, log))
            text, data = c10k_table(rows, conns)
            data = with_runs(rows, data)
            emit(
                "c10k",
                f"{conns:,} concurrent connections, ping-pong",
                text,
                data,
                f"Each of {conns:,} connections writes a {settings.size}-byte line, waits for "
                f"its echo and repeats, for {settings.c10k_seconds:g} s per round (per-request "
                f"timeout {settings.c10k_timeout:g} s). Before the clock starts, every "
                "connection is opened and completes one round trip (loadgen --prime), within "
                "that timeout: 'ready before the clock' gives how many made it (lowest over "
                "rounds) and how long that took (median). Servers listen with a backlog of "
                f"4096 (the kernel's somaxconn here); descriptor limits raised to {NOFILE}. "
                "Connections served: connections that completed at least one round trip while "
                "the clock ran (lowest over rounds). Peak RSS: VmHWM of the server "
                "process (median over rounds); RSS growth: peak RSS minus the RSS just before "
                f"the {conns:,} connections (after a 64-connection warm-up); threads: the "
                "highest `Threads:` seen in /proc/<pid>/status, sampled every 50 ms. The load "
                "average counts runnable threads, so the stdlib row's thousands of threads "
                "inflate it for the rows measured after it: 'other processes' is the better "
                "noise figure here. Server CPU per request includes "
                "accepting and closing the connections. Ratios against "
                f"{C10K_BASE}.",
            )
        if "burst" in only:
            rows = rows_for(burst_rows(args.quick))
            run_rounds(rows, settings.burst_rounds, lambda impl: measure_burst(impl, settings, log))
            text, data = burst_table(rows)
            data = with_runs(rows, data)
            emit(
                "burst",
                "256 simultaneous connects, one round trip each",
                text,
                data,
                "Each of 256 clients connects at once, writes one line and reads its echo; "
                "the slowest of them is the figure. With the stdlib's default backlog "
                "(request_queue_size = 5) the kernel drops most SYNs of the burst and the "
                "clients retry after 1 s, 3 s, ...: the default-backlog rows count the round "
                f"trips done within {BURST_TIMEOUT_DEFAULT_BACKLOG:g} s.",
            )
        if "shutdown" in only:
            text, data = shutdown_section(settings, rs_names)
            emit(
                "shutdown",
                "shutdown() until serve_forever() returns",
                text,
                data,
                f"{settings.shutdown_tries} tries per implementation, in-process, with the "
                "call placed at different points of the stdlib's 0.5 s poll interval.",
            )
        if "idle" in only:
            text, data = idle_section(settings, rs_names)
            emit(
                "idle",
                f"Idle serve_forever() for {settings.idle_seconds:g} s",
                text,
                data,
                "getrusage() of the whole server process while nothing connects; context "
                "switches count wake-ups (the measuring thread's own sleep adds one).",
            )
        if "http" in only:
            title = "http.server, HTTP/1.1 keep-alive, wrk -t1 -c16"
            if shutil.which("wrk"):
                rows = rows_for(http_rows())
                run_rounds(rows, settings.rounds, lambda impl: measure_http(impl, settings, log))
                text, data = http_table(rows)
                data = with_runs(rows, data)
                emit(
                    "http",
                    title,
                    text,
                    data,
                    f"BaseHTTPRequestHandler returning 13 bytes, {settings.http_seconds} s "
                    "per round, with disable_nagle_algorithm = True. The 'Nagle on' rows "
                    "run the handler as shipped: its headers and body leave in two writes, "
                    "and on the stdlib the second waits for the client's delayed ACK "
                    "(~40 ms); socketserver_rs sets TCP_NODELAY on accepted connections "
                    "by default (tcp_nodelay = True).",
                )
            else:
                emit("http", title, "skipped: wrk is not installed (apt-get install wrk)", {})
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        stop_all()
        log.close()
        elapsed = time.monotonic() - started
        meta["elapsed_s"] = round(elapsed, 1)
        total = f"Total time: {elapsed:.0f} s."
        if args.merge:
            try:
                kept, intro = merge_previous(args.out, sections, report)
            except Exception as error:  # the new tables are written whatever happens
                print(f"note: could not merge the previous results ({error})")
                kept, intro = [], []
            if kept:
                md += [
                    f"This run measured {', '.join(k for k in SCENARIOS if k in only)}; the "
                    f"other tables ({', '.join(kept)}) are kept from earlier runs, each "
                    "marked with the run it comes from.",
                    "",
                ]
                for paragraph in intro:
                    md += [paragraph, ""]
                total = f"Total time of this run: {elapsed:.0f} s."
        order = {k: i for i, k in enumerate(SCENARIOS)}
        for key in sorted(sections, key=lambda k: order.get(k, len(order))):
            md.extend(sections[key])
        report["scenarios"] = {
            k: report["scenarios"][k]
            for k in sorted(report["scenarios"], key=lambda k: order.get(k, len(order)))
        }
        md += [total, ""]
        (args.out / "latest.md").write_text("\n".join(md))
        (args.out / "latest.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"total {elapsed:.0f} s; wrote {args.out / 'latest.md'} and latest.json")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
