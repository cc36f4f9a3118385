"""Prefork benchmarks: ``python benches/prefork [--rounds 5] [--duration 3] [--only ...]``.

Scenarios (each measured in interleaved rounds, medians and spread reported):

- ``throughput``: a CPU-bound handler (~50 µs of pure Python per request, calibrated here) and
  the echo, over 16 persistent TCP connections (``loadgen --mode tcp``), for single-process
  servers and prefork at workers = 1, 2 and cpu_count.
- ``http``: the same CPU-bound work behind HTTP/1.1 (``wrk``, 16 connections): prefork
  ThreadPool + http.server against gunicorn sync and gthread workers, 2 workers each.
- ``crash``: kill -9 one of 2 children while ``loadgen --mode connect`` runs; failed requests
  and the time until the worker count is whole again.
- ``reload``: SIGHUP while ``loadgen --mode connect`` runs; refused/reset/failed requests.

Servers and load generator share the machine's cores (no pinning: prefork needs them all).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

from work import calibrate  # noqa: E402

LOADGEN = os.path.join(ROOT, "target", "release", "loadgen")
CPUS = (getattr(os, "process_cpu_count", None) or os.cpu_count)() or 1


# --- launching -----------------------------------------------------------------------------------


class Server:
    """A server process in its own session, killed (with all it forked) on close."""

    def __init__(self, argv, env=None, ready=re.compile(r"READY (\S+)")):
        self.proc = subprocess.Popen(
            argv,
            cwd=HERE,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines = []
        self.address = None
        deadline = time.monotonic() + 20
        for line in self.proc.stdout:
            self.lines.append(line)
            match = ready.search(line)
            if match:
                self.address = match.group(1)
                break
            if time.monotonic() > deadline:
                break
        if self.address is None:
            self.close()
            raise RuntimeError("server did not start:\n" + "".join(self.lines))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    def children(self):
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        fields = stat.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.proc.pid and fields[0] != "Z":
                    found.append(int(entry))
        return found

    def cpu_seconds(self):
        """CPU time (user + system) of the server: the parent and its live children."""
        total = 0
        for pid in [self.proc.pid, *self.children()]:
            try:
                with open(f"/proc/{pid}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def wait_children(self, count, timeout=10):
        deadline = time.monotonic() + timeout
        while len(self.children()) != count and time.monotonic() < deadline:
            time.sleep(0.005)

    def close(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ours(impl, handler, workers, burn_n):
    server = Server([sys.executable, "serve.py", impl, handler, str(workers), str(burn_n)])
    if impl.startswith("prefork"):
        server.wait_children(workers)
    return server


def gunicorn(worker_class, workers, burn_n):
    port = free_port()
    argv = [
        os.path.join(os.path.dirname(sys.executable), "gunicorn"),
        "--workers",
        str(workers),
        "--worker-class",
        worker_class,
        "--bind",
        f"127.0.0.1:{port}",
        "--backlog",
        "1024",
        "--log-level",
        "info",
        "wsgi_app:app",
    ]
    if worker_class == "gthread":
        argv += ["--threads", "8"]
    server = Server(
        argv, env={"BURN_N": str(burn_n)}, ready=re.compile(r"Listening at: http://(\S+)")
    )
    server.wait_children(workers)
    time.sleep(0.5)  # workers import the app after the fork
    return server


# --- measuring -----------------------------------------------------------------------------------


def loadgen(address, mode, duration, conns=16):
    out = subprocess.run(
        [
            LOADGEN,
            "--addr",
            address,
            "--mode",
            mode,
            "--conns",
            str(conns),
            "--duration",
            str(duration),
        ],
        capture_output=True,
        text=True,
        timeout=duration + 30,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def wrk(address, duration, conns=16):
    out = subprocess.run(
        # wrk takes whole seconds.
        ["wrk", "-t1", f"-c{conns}", f"-d{max(1, round(duration))}s", f"http://{address}/"],
        capture_output=True,
        text=True,
        timeout=duration + 30,
    ).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if found is None:
        raise RuntimeError(f"wrk failed:\n{out}")
    rps = float(found.group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "errors": errors + (int(non2xx.group(1)) if non2xx else 0)}


def summary(values):
    median = statistics.median(values)
    spread = (max(values) - min(values)) / median if median else 0.0
    return median, spread


def table(title, header, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(header) + " |")
    print("| " + " | ".join("---" if i == 0 else "---:" for i in range(len(header))) + " |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    sys.stdout.flush()


# --- scenarios -----------------------------------------------------------------------------------


def throughput(args, burn_n):
    worker_counts = sorted({1, 2, CPUS})
    configs = []
    for handler in ("cpu", "echo"):
        configs.append((handler, "single-pool", 1, "ThreadPoolTCPServer, one process"))
        for n in worker_counts:
            configs.append(
                (handler, "prefork-pool", n, f"Prefork + ThreadPoolTCPServer, workers={n}")
            )
        if handler == "echo":
            configs.append((handler, "single-reactor", 1, "ReactorTCPServer, one process"))
            for n in worker_counts:
                configs.append(
                    (handler, "prefork-reactor", n, f"Prefork + ReactorTCPServer, workers={n}")
                )
    results = {config: [] for config in configs}
    for round_index in range(args.rounds):
        shift = round_index % len(configs)
        for config in configs[shift:] + configs[:shift]:
            handler, impl, workers, _ = config
            server = ours(impl, handler, workers, burn_n)
            try:
                loadgen(server.address, "tcp", 0.3)  # warm-up
                cpu = server.cpu_seconds()
                result = loadgen(server.address, "tcp", args.duration)
                result["cpu_us"] = (server.cpu_seconds() - cpu) / max(1, result["requests"]) * 1e6
                results[config].append(result)
            finally:
                server.close()
    cpus = {}
    for handler in ("cpu", "echo"):
        rows = []
        base = None
        for config in configs:
            if config[0] != handler:
                continue
            rps, spread = summary([r["rps"] for r in results[config]])
            if config[1] == "prefork-pool" and config[2] == 1:
                base = rps
            errors = sum(r["errors"] + r["timeouts"] for r in results[config])
            p50 = statistics.median(r["latency_us"]["p50"] or 0 for r in results[config])
            cpu = statistics.median(r["cpu_us"] for r in results[config])
            cpus[(handler, config[1], config[2])] = cpu
            rows.append(
                [config[3], f"{rps:,.0f}", f"{spread:.0%}", f"{p50:.0f}", f"{cpu:.1f}", str(errors)]
            )
        for row in rows:
            rps = float(row[1].replace(",", ""))
            row.insert(2, f"{rps / base:.2f}x" if base else "")
        what = "CPU-bound handler (~50 µs Python per request)" if handler == "cpu" else "echo"
        table(
            f"throughput, {what}, 16 persistent connections",
            [
                "server",
                "req/s (median)",
                "x prefork workers=1",
                "spread",
                "p50 µs",
                "server CPU µs/request",
                "errors",
            ],
            rows,
        )
    projection(cpus)


def projection(cpus):
    """On paper, not measured: the ceiling of N workers on N free cores is N x (1 s / CPU
    per request), from the CPU per request measured here with one worker."""
    rows = []
    for handler, impl in (
        ("cpu", "prefork-pool"),
        ("echo", "prefork-pool"),
        ("echo", "prefork-reactor"),
    ):
        cpu = cpus.get((handler, impl, 1))
        if not cpu:
            continue
        name = {"prefork-pool": "ThreadPoolTCPServer", "prefork-reactor": "ReactorTCPServer"}[impl]
        rows.append(
            [f"{handler}, Prefork + {name}"] + [f"{n * 1e6 / cpu:,.0f}" for n in (1, 2, 4, 8, 16)]
        )
    table(
        "on paper: ceiling at N workers on N free cores (16-core machine), from the measured CPU "
        "per request at workers=1; assumes the load generator runs elsewhere and no shared "
        "bottleneck (one accept queue, memory bandwidth)",
        ["handler, server", "1", "2", "4", "8", "16"],
        rows,
    )


def http(args, burn_n):
    if shutil.which("wrk") is None:
        print("\n(http: wrk not found; skipped)")
        return
    configs = [
        ("ours", "Prefork + ThreadPoolTCPServer + http.server, workers=2"),
        ("sync", "gunicorn sync, workers=2"),
        ("gthread", "gunicorn gthread, workers=2, threads=8"),
    ]
    results = {config: [] for config in configs}
    for round_index in range(args.rounds):
        shift = round_index % len(configs)
        for config in configs[shift:] + configs[:shift]:
            kind = config[0]
            server = (
                ours("prefork-http", "cpu", 2, burn_n)
                if kind == "ours"
                else gunicorn(kind, 2, burn_n)
            )
            try:
                wrk(server.address, 1)
                results[config].append(wrk(server.address, args.duration))
            finally:
                server.close()
    rows = []
    base = summary([r["rps"] for r in results[configs[1]]])[0]
    for config in configs:
        rps, spread = summary([r["rps"] for r in results[config]])
        errors = sum(r["errors"] for r in results[config])
        rows.append([config[1], f"{rps:,.0f}", f"{rps / base:.2f}x", f"{spread:.0%}", str(errors)])
    table(
        "HTTP/1.1, ~50 µs handler work, wrk 16 connections",
        ["server", "req/s (median)", "x gunicorn sync", "spread", "socket errors + non-2xx"],
        rows,
    )


def listeners(args, burn_n):
    """The inherited listener against a SO_REUSEPORT socket per child: connection-per-request
    echo throughput with 2 workers, and failed requests across one SIGHUP reload."""
    configs = [
        ("prefork-pool", "one inherited listener"),
        ("prefork-pool-reuseport", "SO_REUSEPORT per child"),
    ]
    results = {config: [] for config in configs}
    for round_index in range(args.rounds):
        for config in configs[round_index % 2 :] + configs[: round_index % 2]:
            server = ours(config[0], "echo", 2, burn_n)
            try:
                loadgen(server.address, "connect", 0.3)
                results[config].append(loadgen(server.address, "connect", args.duration))
            finally:
                server.close()
    rows = []
    for config in configs:
        rps, spread = summary([r["rps"] for r in results[config]])
        errors = sum(r["errors"] + r["timeouts"] for r in results[config])
        rows.append([config[1], f"{rps:,.0f}", f"{spread:.0%}", str(errors)])
    table(
        "listener: connection per request, echo, 2 workers, 16 clients",
        ["children accept from", "req/s (median)", "spread", "failed requests"],
        rows,
    )
    fault(args, burn_n, "reload", impl="prefork-pool-reuseport")


def fault(args, burn_n, action, impl="prefork-pool"):
    """Run connection-per-request load for 4 s; at 1.5 s kill a child or SIGHUP the parent."""
    rows = []
    recoveries, failed, totals = [], [], []
    for _ in range(args.rounds):
        server = ours(impl, "echo", 2, burn_n)
        try:
            result = {}
            load = threading.Thread(
                target=lambda result=result, address=server.address: result.update(
                    loadgen(address, "connect", 4.0)
                )
            )
            load.start()
            time.sleep(1.5)
            before = server.children()
            started = time.monotonic()
            if action == "crash":
                victim = before[0]
                os.kill(victim, signal.SIGKILL)
                while True:
                    now = server.children()
                    if len(now) == 2 and victim not in now:
                        break
                    if time.monotonic() - started > 10:
                        break
                    time.sleep(0.0005)
            else:
                os.kill(server.proc.pid, signal.SIGHUP)
                while True:
                    now = server.children()
                    if len(now) == 2 and not set(now) & set(before):
                        break
                    if time.monotonic() - started > 10:
                        break
                    time.sleep(0.0005)
            recoveries.append((time.monotonic() - started) * 1000)
            load.join(60)
            failed.append(result["errors"] + result["timeouts"])
            totals.append(result["requests"])
        finally:
            server.close()
    what = "kill -9 one of 2 children" if action == "crash" else "SIGHUP reload of 2 children"
    if impl.endswith("-reuseport"):
        what += " (SO_REUSEPORT per child)"
    until = (
        "worker count whole again" if action == "crash" else "old children gone, new ones serving"
    )
    rec, _ = summary(recoveries)
    rows.append(
        [
            what,
            f"{rec:.1f} (max {max(recoveries):.1f})",
            f"{sum(failed)} of {sum(totals):,}",
            ", ".join(str(f) for f in failed),
        ]
    )
    table(
        f"{action} under load (connection per request, 16 clients, {args.rounds} rounds)",
        ["event", f"ms until {until} (median)", "failed requests, all rounds", "per round"],
        rows,
    )


def main():
    parser = argparse.ArgumentParser(prog="python benches/prefork")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--only", default="throughput,http,crash,reload,listeners")
    args = parser.parse_args()
    if not os.path.exists(LOADGEN):
        subprocess.run(
            ["cargo", "build", "--release", "--locked", "-p", "loadgen"], cwd=ROOT, check=True
        )
    burn_n = calibrate()
    load = os.getloadavg()
    print(
        f"# prefork benchmarks: {CPUS} CPUs, burn({burn_n}) ≈ 50 µs, load average before "
        f"{load[0]:.2f}; {args.rounds} rounds x {args.duration} s"
    )
    only = args.only.split(",")
    if "throughput" in only:
        throughput(args, burn_n)
    if "http" in only:
        http(args, burn_n)
    if "crash" in only:
        fault(args, burn_n, "crash")
    if "reload" in only:
        fault(args, burn_n, "reload")
    if "listeners" in only:
        listeners(args, burn_n)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
