"""Syscalls per request of one benchmark server: ``strace -f -c`` attached to every thread of
a warmed-up server (benches/servers.py, in a session of its own) while loadgen sends a fixed
number of requests; prints the counts divided by the requests served.

    .venv/bin/python benches/syscalls.py IMPL KIND MODE [--conns 16] [--requests 5000]
        [--handler lines|readline|sendto] [--max-workers N] [--tracer strace|perf]
    e.g. benches/syscalls.py rs TCPServer connect; benches/syscalls.py stdlib UDPServer udp

IMPL may also be asyncio, uvloop or mio (KIND ``tcp``, as benches/servers.py takes them), for
comparing the reactor with its peers: benches/syscalls.py uvloop tcp tcp.

Needs strace (and ptrace permission) and a built loadgen (make bench builds it). Every step
is bounded in time; the server and strace are stopped by PID.

``--tracer perf`` counts with ``perf stat`` on the kernel's syscall tracepoints instead
(needs perf and access to the tracepoints): strace stops the thread at every system call,
which slows the server down enough to change how its threads take turns, and so how often
they wait; perf counts without stopping anything. Threads started after it attaches are not
counted: the warm-up starts the pool's workers first.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHES = Path(__file__).resolve().parent
REPO = BENCHES.parent
LOADGEN = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "release" / "loadgen"


def stop(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def per_request(summary, served):
    """``strace -c`` output as {syscall: calls per request}."""
    counts = {}
    for line in summary.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            counts[parts[-1]] = int(parts[3]) / served
    return counts


# The system calls perf counts one by one (every tracepoint for every thread would take perf
# many seconds to open); the rest are counted together as "other".
PERF_SYSCALLS = (
    "futex epoll_wait epoll_pwait epoll_ctl poll ppoll recvfrom recvmsg sendto sendmsg read "
    "write accept4 getsockname setsockopt shutdown close clone3 mmap munmap mprotect madvise "
    "rt_sigprocmask gettid getpid sched_yield"
).split()


def per_request_perf(summary, served):
    """``perf stat -x,`` output as {syscall: calls per request}."""
    counts, total = {}, 0
    for line in summary.splitlines():
        parts = line.split(",")
        if len(parts) < 3 or not parts[0].isdigit():
            continue
        if parts[2] == "raw_syscalls:sys_enter":
            total = int(parts[0])
        elif int(parts[0]):
            counts[parts[2].removeprefix("syscalls:sys_enter_")] = int(parts[0]) / served
    other = total / served - sum(counts.values())
    if other > 0:
        counts["other"] = other
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("impl", choices=["stdlib", "rs", "asyncio", "uvloop", "mio"])
    p.add_argument("kind")
    p.add_argument("mode", choices=["tcp", "connect", "udp", "line"])
    p.add_argument("--conns", type=int, default=16)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--handler", choices=["lines", "readline", "sendto"], default="lines")
    p.add_argument("--max-workers", type=int)
    p.add_argument("--tracer", choices=["strace", "perf"], default="strace")
    args = p.parse_args(argv)
    server_cmd = [sys.executable, str(BENCHES / "servers.py"), args.impl, args.kind]
    server_cmd += ["127.0.0.1:0", "--backlog", "1024", "--lifetime", "120"]
    server_cmd += ["--handler", args.handler]
    if args.max_workers:
        server_cmd += ["--max-workers", str(args.max_workers)]
    server = subprocess.Popen(
        server_cmd, stdout=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True
    )
    out = Path(tempfile.mkstemp(prefix="ssrs-strace-")[1])
    try:
        ready = server.stdout.readline().split()
        if not ready or ready[0] != "READY":
            raise SystemExit("the server did not start")
        load = [str(LOADGEN), "--mode", args.mode, "--conns", str(args.conns)]
        load += ["--addr", ready[1], "--timeout", "5"]
        subprocess.run(
            [*load, "--max-requests", "500", "--duration", "20"], capture_output=True, timeout=60
        )
        tids = os.listdir(f"/proc/{server.pid}/task")
        if args.tracer == "perf":
            events = ",".join(f"syscalls:sys_enter_{name}" for name in PERF_SYSCALLS)
            command = ["perf", "stat", "-x,", "-o", str(out), "-e", "raw_syscalls:sys_enter"]
            command += ["-e", events, "-t", ",".join(tids)]
        else:
            command = ["strace", "-f", "-c", "-o", str(out)]
            command += [a for t in tids for a in ("-p", t)]
        tracer = subprocess.Popen(command, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            time.sleep(3.0)  # attached (perf takes a while to open its events)
            done = subprocess.run(
                [*load, "--max-requests", str(args.requests), "--duration", "60"],
                capture_output=True,
                text=True,
                timeout=90,
            )
            time.sleep(0.3)
        finally:
            stop(tracer, signal.SIGINT)
        served = json.loads(done.stdout.strip().splitlines()[-1])["requests"]
        parse = per_request_perf if args.tracer == "perf" else per_request
        counts = parse(out.read_text(), max(1, served))
    finally:
        stop(server)
        server.stdout.close()
        out.unlink(missing_ok=True)
    print(f"{args.impl} {args.kind} {args.mode} ({args.handler}, {args.tracer}): {served} requests")
    ordered = sorted(counts.items(), key=lambda kv: -kv[1])
    print(
        f"{sum(counts.values()):.2f} syscalls/request: "
        + ", ".join(f"{name} {n:.2f}" for name, n in ordered if n >= 0.01)
    )


if __name__ == "__main__":
    main()
