"""Silent and slow clients against a bounded pool, with ``dispatch_when_readable`` off and on.

The load from issue 11: a ``ThreadPoolTCPServer`` with 32 workers and a line-echo
``StreamRequestHandler`` whose ``timeout`` is 0.5 s, facing

- 50 *silent* clients: connect, send nothing, reconnect as soon as the server closes them;
- 50 *drippers*: connect, wait 0.3 s, send one byte, wait 0.3 s, send the newline, read the
  echo, hang up and start again (one byte every 0.3 s); their starts are spread evenly over
  the first 0.6 s, so they do not arrive in lockstep;
- one *probe*: every 0.1 s, a new connection sends one line and times the echo (3 s limit).

Reported per run: probe latency p50, p99 and max, probes that timed out, and the server's
busy workers (sampled every 20 ms in the server process: mean and max). The server runs as a
child process in its own session (``start_new_session=True``); the clients are threads here.

    python benches/starvation.py --runs 5 --seconds 8

Runs alternate off/on so that a change in machine load hits both alike. Every loop is
bounded by ``--seconds``; every socket has a timeout.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

SERVER = r"""
import json, sys, threading, time
import socketserver_rs as ss

dispatch = sys.argv[1] == "on"


class Echo(ss.StreamRequestHandler):
    timeout = 0.5

    def handle(self):
        try:
            for line in self.rfile:
                self.wfile.write(line)
        except (TimeoutError, OSError):
            pass  # a silent or vanished client: the handler gives up, as designed


class Server(ss.ThreadPoolTCPServer):
    max_workers = 32
    dispatch_when_readable = dispatch
    daemon_threads = True


server = Server(("127.0.0.1", 0), Echo)
samples = []


def sample():
    while True:
        samples.append(server.stats()["pool"]["busy"])
        time.sleep(0.02)


def report():
    sys.stdin.readline()  # the parent says when the measured window ends
    print(json.dumps(samples), flush=True)


threading.Thread(target=sample, daemon=True).start()
threading.Thread(target=report, daemon=True).start()
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def silent(port, stop):
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
                sock.recv(1)  # returns once the server closes us (or times out)
        except OSError:
            time.sleep(0.05)


def dripper(port, stop, delay):
    time.sleep(delay)  # clients do not arrive in lockstep
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
                time.sleep(0.3)
                sock.sendall(b"x")
                time.sleep(0.3)
                sock.sendall(b"\n")
                sock.recv(10)
        except OSError:
            time.sleep(0.05)


def probe(port, stop, latencies, timeouts):
    while not stop.is_set():
        started = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
                sock.sendall(b"probe\n")
                received = b""
                while not received.endswith(b"\n"):
                    chunk = sock.recv(64)
                    if not chunk:
                        raise ConnectionError("closed")
                    received += chunk
            latencies.append(time.perf_counter() - started)
        except OSError:
            timeouts.append(time.perf_counter() - started)
        time.sleep(0.1)


def percentile(values, fraction):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def one_run(mode, seconds, warmup):
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        port = int(proc.stdout.readline())
        stop = threading.Event()
        threads = [threading.Thread(target=silent, args=(port, stop)) for _ in range(50)]
        threads += [
            threading.Thread(target=dripper, args=(port, stop, 0.6 * i / 50)) for i in range(50)
        ]
        for thread in threads:
            thread.start()
        time.sleep(warmup)
        latencies, timeouts = [], []
        prober = threading.Thread(target=probe, args=(port, stop, latencies, timeouts))
        prober.start()
        time.sleep(seconds)
        proc.stdin.write("\n")
        proc.stdin.flush()
        busy = json.loads(proc.stdout.readline())
        stop.set()
        for thread in [prober, *threads]:
            thread.join(10)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    window = busy[-int(seconds / 0.02) :]
    return {
        "mode": mode,
        "probes": len(latencies),
        "timeouts": len(timeouts),
        "p50_ms": 1000 * percentile(latencies, 0.50) if latencies else None,
        "p99_ms": 1000 * percentile(latencies, 0.99) if latencies else None,
        "max_ms": 1000 * max(latencies + timeouts) if latencies or timeouts else None,
        "busy_mean": statistics.fmean(window),
        "busy_max": max(window),
    }


def summary(rows, key):
    values = [row[key] for row in rows if row[key] is not None]
    if not values:
        return "-"
    return f"{statistics.median(values):.0f} ({min(values):.0f}-{max(values):.0f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    args = parser.parse_args()
    results = {"off": [], "on": []}
    for run in range(args.runs):
        for mode in ("off", "on"):
            row = one_run(mode, args.seconds, args.warmup)
            results[mode].append(row)
            print(f"run {run + 1} {json.dumps(row)}", file=sys.stderr, flush=True)
    print(
        "| dispatch_when_readable | probes | timed out | p50 ms | p99 ms | max ms |"
        " workers busy, mean | workers busy, max |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode, rows in results.items():
        print(
            f"| {mode} | {summary(rows, 'probes')} | {summary(rows, 'timeouts')} | "
            f"{summary(rows, 'p50_ms')} | {summary(rows, 'p99_ms')} | {summary(rows, 'max_ms')} | "
            f"{summary(rows, 'busy_mean')} | {summary(rows, 'busy_max')} |"
        )
    print(f"\nmedian (min-max) over {args.runs} runs of {args.seconds:.0f} s each")


if __name__ == "__main__":
    main()
