"""Measurements: one server process per measurement, driven by loadgen (or wrk), with its CPU
time per request and the machine's other load; rounds interleave the rows. The in-process
sections (shutdown latency, idle cost) run servers.py's own measurements."""

import json
import os
import re
import subprocess
import time

from .processes import (
    BENCHES,
    PYTHON,
    REPO,
    SERVERS,
    Noise,
    Server,
    StartError,
    _live,
    child_setup,
    loadgen,
    loadgen_marked,
    log_tail,
    run_json,
    server_env,
    stop_process,
)
from .report import cell, fmt_num, fmt_ratio, table
from .scenarios import BURST_TIMEOUT, BURST_TIMEOUT_DEFAULT_BACKLOG

_socket_ids = iter(range(1_000_000))

# loadgen modes that keep their connections open for the whole run.
PERSISTENT_MODES = ("tcp", "unix", "line")


def measure_throughput(scenario, impl, settings, tmp, log):
    if scenario.family == "unix":
        address = str(tmp / f"{scenario.key}-{next(_socket_ids)}.sock")
    else:
        address = "127.0.0.1:0"
    server = Server(impl, address, log)
    try:
        target = server.wait_ready()
        args = [*scenario.loadgen, *impl.client, "--addr", target]
        if settings.warmup:
            loadgen(args, settings.warmup, settings.timeout)
        # The warm-up's connections are gone: persistent connections are opened afresh, and
        # the clock starts once each has made one round trip, so every server is measured
        # serving all of them. Without this, a thread-per-connection server that accepts
        # slowly under load (the stdlib's at 256) was measured serving about 170 of 256,
        # the rest timing out unserved, which made it look faster and its tail shorter.
        if scenario.loadgen[1] in PERSISTENT_MODES:
            args.append("--prime")
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


def measure_tls_idle(impl, settings, log):
    """``tls_idle_conns`` connections (TLS, or plain for the reference row) opened, each with
    one round trip, then held without traffic for ``tls_idle_hold`` seconds; the server's
    VmRSS is read once they are all up (loadgen prints HOLDING) and have been still for a
    moment."""
    server = Server(impl, "127.0.0.1:0", log)
    size = str(settings.size)
    held = {}

    def sample(line):
        held["conns"] = int(line.split()[1])
        time.sleep(min(1.0, settings.tls_idle_hold / 2))  # the last echoes and tickets settle
        held.update(server.status())

    try:
        target = server.wait_ready()
        if settings.warmup:  # loads the code paths (and the TLS ones) with a few connections
            warm = ["--mode", "line", "--conns", "64", "--size", size, *impl.client]
            loadgen([*warm, "--addr", target], settings.warmup, settings.timeout)
        before = server.status()
        noise = Noise(server)
        conns = str(settings.tls_idle_conns)
        args = ["--mode", "idle", "--conns", conns, "--size", size, *impl.client]
        hold, timeout = settings.tls_idle_hold, settings.tls_idle_timeout
        # loadgen's own bound: connecting and priming <= timeout, the hold, <= 1 s of grace.
        bound = hold + timeout + 20
        result = loadgen_marked(
            [*args, "--addr", target], hold, timeout, "HOLDING", sample, bound=bound
        )
        result["other_cpus"] = noise.other_cpus()
        result["loadavg"] = os.getloadavg()[0]
        if not server.alive():
            raise RuntimeError(f"server died: {log_tail(server.log)}")
    finally:
        server.stop()
    if "rss_kb" not in held:
        raise RuntimeError("loadgen never held its connections (no HOLDING line)")
    result["held"] = held["conns"]
    result["rss_before_kb"] = before.get("rss_kb")
    result["rss_kb"] = held["rss_kb"]
    result["hwm_kb"] = held.get("hwm_kb")
    result["threads"] = held.get("threads")
    return result


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
                start_new_session=True,  # as every server here (see Server)
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


def run_client(cmd, timeout):
    """Runs a load generator on the client's CPU and returns its standard output."""
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=child_setup("client")
    )
    if done.returncode != 0:
        name = os.path.basename(cmd[1] if cmd[0] == PYTHON else cmd[0])
        raise RuntimeError(f"{name} failed: {done.stderr.strip()[-400:]}")
    return done.stdout


def run_wrk(url, conns, seconds):
    """One ``wrk -t1`` run with ``conns`` keep-alive connections, on the client's CPU."""
    cmd = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "--timeout", "5s", url]
    return parse_wrk(run_client(cmd, seconds + 30))


def run_pyclient(address, mode, threads, seconds, server_pid):
    """One run of benches/pyclient.py (``threads`` blocking Python threads), on the client's
    CPU; its JSON as a dict, with the server's CPU per request added."""
    cmd = [
        PYTHON,
        str(BENCHES / "pyclient.py"),
        "--addr",
        address,
        "--mode",
        mode,
        "--threads",
        str(threads),
        "--seconds",
        str(seconds),
        "--server-pid",
        str(server_pid),
    ]
    result = json.loads(run_client(cmd, seconds + 120).strip().splitlines()[-1])
    if result["requests"]:
        result["cpu_us_per_req"] = result["server_cpu_seconds"] / result["requests"] * 1e6
    return result


def measure_http(impl, settings, log):
    server = Server(impl, "127.0.0.1:0", log)
    try:
        url = f"http://{server.wait_ready()}/"

        def wrk(seconds):
            return run_wrk(url, 16, seconds)

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
