"""Soak: many connection-per-request echoes per server family, then check nothing leaked.

    python benches/soak.py [--count N] [--forking-count N] [--families A,B,...]
                           [--time-limit S] [--conns N] [--impl rs|stdlib] [--no-build]

Opt-in (the test suite does not run it; ``make soak`` does). For each family a server runs
in its own process (``soak.py --serve IMPL FAMILY``, a line-echo handler); the native load
generator (``benches/loadgen``, mode ``connect``: connect, one 64-byte line, read the echo,
close; ``udp`` for datagram families) sends it ``--count`` requests (default 100,000;
``ForkingTCPServer`` gets ``--forking-count``, default 5,000, since every request is a
fork). Each family stops at its count or after ``--time-limit`` seconds, whichever comes
first.

Before (after a warm-up, once the server has settled) and after (once it has settled again,
up to 15 s) it reads from ``/proc/<pid>``: open descriptors (``fd/``), threads (``status``
``Threads``), child processes (any process whose parent is the server, zombies included) and
resident memory (``status`` ``VmRSS``). Checks, per family: descriptors back to the
baseline ±2, threads back to the baseline, no child left, RSS growth under ``--rss-limit``
MB (default 20), and no request failed or timed out (datagram families: at most one
datagram in 10,000 lost). Prints one table; exits 1 if any check
failed, 2 if a server could not be run at all.

Loopback only; every server process is started in a session of its own and killed (with
any children it forked) when its family is done.
"""

import argparse
import json
import os
import signal
import socket
import socketserver
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LOADGEN = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "loadgen"

FAMILIES = [
    "TCPServer",
    "ThreadingTCPServer",
    "ThreadPoolTCPServer",
    "ForkingTCPServer",
    "ReactorTCPServer",
    "UDPServer",
    "ThreadPoolUDPServer",
    "ReactorUDPServer",
]
SETTLE_SECONDS = 15.0
FD_SLACK = 2


# --- the server process ----------------------------------------------------------------------


def serve(impl, family):
    """Run one echo server of ``family`` until SIGINT/SIGTERM, the parent's death, or an hour."""
    import ctypes

    if impl == "stdlib":
        import socketserver as module
    else:
        import socketserver_rs as module

    try:  # die with the parent (PR_SET_PDEATHSIG)
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    signal.alarm(3600)  # hard upper bound on this process's life
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    base = getattr(module, family, None)
    if base is None:
        raise SystemExit(f"{module.__name__} has no {family}")
    datagram = base.socket_type == socket.SOCK_DGRAM
    if family.startswith("Reactor"):

        class Handler(module.MessageHandler):
            framing = "raw" if datagram else "line"

            def handle_message(self, message):
                return message

    elif datagram:

        class Handler(module.DatagramRequestHandler):
            def handle(self):
                for line in self.rfile:
                    self.wfile.write(line)

    else:

        class Handler(module.StreamRequestHandler):
            def handle(self):
                for line in self.rfile:
                    self.wfile.write(line)

    attributes = {
        "allow_reuse_address": True,
        "request_queue_size": 1024,
        # Pool workers retire after a second idle, so the thread count settles quickly.
        "worker_idle_timeout": 1.0,
    }
    server = type(family, (base,), attributes)(("127.0.0.1", 0), Handler)
    host, port = server.server_address[:2]
    print(f"READY {host}:{port}", flush=True)
    with server:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


# --- reading /proc ---------------------------------------------------------------------------


def status_field(pid, name):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {name} in /proc/{pid}/status")


def children_of(pid):
    """PIDs of every process whose parent is ``pid`` (zombies included)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def snapshot(pid):
    return {
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
        "threads": status_field(pid, "Threads"),
        "children": len(children_of(pid)),
        "rss_kb": status_field(pid, "VmRSS"),
    }


def settle(pid, threads, timeout=SETTLE_SECONDS, fds=None):
    """Wait (bounded) until the server is back to ``threads`` threads, has no child and,
    if given, has ``fds`` ±FD_SLACK descriptors; returns the last snapshot."""
    deadline = time.monotonic() + timeout
    while True:
        now = snapshot(pid)
        settled = (
            now["threads"] <= threads
            and now["children"] == 0
            and (fds is None or abs(now["fds"] - fds) <= FD_SLACK)
        )
        if settled or time.monotonic() >= deadline:
            return now
        time.sleep(0.1)


# --- driving ---------------------------------------------------------------------------------


def run_loadgen(mode, address, conns, requests, duration):
    cmd = [
        str(LOADGEN),
        "--mode",
        mode,
        "--addr",
        address,
        "--conns",
        str(conns),
        "--max-requests",
        str(requests),
        "--duration",
        f"{duration:g}",
        "--timeout",
        "2",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    if done.returncode != 0:
        raise RuntimeError(f"loadgen failed: {done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


class Server:
    """A ``--serve`` child in a session of its own, stopped (with anything it forked)."""

    def __init__(self, impl, family, log):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", impl, family],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            start_new_session=True,
        )
        try:
            self.address = self._wait_ready(20.0)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout):
        import selectors

        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                raise RuntimeError(f"server did not get ready within {timeout} s")
        line = self.proc.stdout.readline().strip()
        if not line.startswith("READY "):
            try:
                status = self.proc.wait(5)
            except subprocess.TimeoutExpired:
                status = "none yet"
            raise RuntimeError(f"server did not start (exit status {status}; see its stderr)")
        return line.split()[1]

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the session we created: ours only
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self.proc.stdout.close()


def soak_family(impl, family, args, log):
    forking = family.startswith("Forking")
    count = args.forking_count if forking else args.count
    conns = min(args.conns, 8) if forking else args.conns
    datagram = "UDP" in family
    mode = "udp" if datagram else "connect"
    row = {"family": family, "target": count, "notes": []}
    server = Server(impl, family, log)
    try:
        idle = snapshot(server.pid)
        warmup = max(100, min(2000, count // 10))
        run_loadgen(mode, server.address, conns, warmup, args.time_limit)
        settle(server.pid, idle["threads"])  # warm-up threads and children are gone
        time.sleep(0.2)
        before = snapshot(server.pid)
        started = time.monotonic()
        result = run_loadgen(mode, server.address, conns, count, args.time_limit)
        row["seconds"] = time.monotonic() - started
        after = settle(server.pid, before["threads"], fds=before["fds"])
    finally:
        server.stop()
    row.update(before=before, after=after, load=result)
    if result["elapsed_s"] >= args.time_limit:
        row["notes"].append(f"time limit hit at {result['requests']:,} requests")
    if forking:
        row["notes"].append(f"fewer requests: each one forks ({count:,})")
    # UDP promises no delivery, even on loopback: a loss in 10,000 is noted, not failed.
    # Streams must lose nothing.
    lost_ok = result["requests"] // 10_000 if datagram else 0
    if result["timeouts"] and result["timeouts"] <= lost_ok:
        row["notes"].append(f"{result['timeouts']} datagram(s) lost, tolerated")
    growth_mb = (after["rss_kb"] - before["rss_kb"]) / 1024
    row["checks"] = {
        "fds": abs(after["fds"] - before["fds"]) <= FD_SLACK,
        "threads": after["threads"] == before["threads"],
        "children": after["children"] == 0,
        "rss": growth_mb < args.rss_limit,
        "errors": result["errors"] == 0 and result["timeouts"] <= lost_ok,
    }
    row["rss_growth_mb"] = growth_mb
    return row


def print_table(rows, impl):
    print()
    print(f"soak: {impl}, connection-per-request echoes (UDP: one datagram per request)")
    print()
    header = (
        "| family | requests | s | req/s | errors | fds before→after | threads before→after "
        "| children after | RSS MB before→after (Δ) | result |"
    )
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for row in rows:
        if "error" in row or "skipped" in row:
            reason = row.get("error") or row["skipped"]
            print(f"| {row['family']} | | | | | | | | | n/a: {reason} |")
            continue
        b, a, load = row["before"], row["after"], row["load"]
        failed = [name for name, ok in row["checks"].items() if not ok]
        result = "ok" if not failed else "FAIL: " + ", ".join(failed)
        if row["notes"]:
            result += " (" + "; ".join(row["notes"]) + ")"
        print(
            f"| {row['family']} | {load['requests']:,} | {row['seconds']:.1f} "
            f"| {load['rps']:,.0f} | {load['errors']}+{load['timeouts']} "
            f"| {b['fds']}→{a['fds']} | {b['threads']}→{a['threads']} | {a['children']} "
            f"| {b['rss_kb'] / 1024:.1f}→{a['rss_kb'] / 1024:.1f} ({row['rss_growth_mb']:+.1f}) "
            f"| {result} |"
        )
    print()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--count", type=int, default=100_000, help="requests per family")
    p.add_argument("--forking-count", type=int, default=5_000, help="requests for ForkingTCPServer")
    p.add_argument("--families", default=",".join(FAMILIES), help="comma-separated classes")
    p.add_argument("--time-limit", type=float, default=120.0, help="seconds per family, at most")
    p.add_argument("--conns", type=int, default=16, help="concurrent clients")
    p.add_argument("--impl", choices=["rs", "stdlib"], default="rs")
    p.add_argument("--rss-limit", type=float, default=20.0, help="MB of RSS growth allowed")
    p.add_argument("--no-build", action="store_true", help="do not run cargo build for loadgen")
    p.add_argument("--serve", nargs=2, metavar=("IMPL", "FAMILY"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        serve(*args.serve)
        return 0

    if not args.no_build:
        print("building benches/loadgen (cargo build --release --locked -p loadgen) ...")
        subprocess.run(
            ["cargo", "build", "--release", "--locked", "-p", "loadgen"], cwd=REPO, check=True
        )
    if not LOADGEN.exists():
        raise SystemExit(f"{LOADGEN} is missing: cargo build --release --locked -p loadgen")

    rows = []
    log_path = Path(tempfile.gettempdir()) / f"soak-servers-{os.getpid()}.log"
    with open(log_path, "w") as log:
        for family in [f.strip() for f in args.families.split(",") if f.strip()]:
            if args.impl == "stdlib" and not hasattr(socketserver, family):
                rows.append({"family": family, "skipped": "not in the stdlib"})
                continue
            print(f"soak {args.impl} {family} ...", flush=True)
            try:
                rows.append(soak_family(args.impl, family, args, log))
            except (RuntimeError, subprocess.TimeoutExpired, OSError) as error:
                rows.append({"family": family, "error": str(error)})
            log.flush()
    print_table(rows, args.impl)
    print(f"server stderr: {log_path}")
    if any("error" in row for row in rows):
        return 2
    return 1 if any(not all(row.get("checks", {}).values()) for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
