"""A closed-loop load client in plain Python threads: another load generator than loadgen.

    python benches/pyclient.py --addr HOST:PORT --mode tcp|udp|connect --threads N
                               [--seconds S] [--size BYTES] [--timeout S] [--server-pid PID]

loadgen is one non-blocking Rust thread; this is what a user's own test script does: N
threads, each with a blocking socket of its own, each sending a request and waiting for the
whole reply before it sends the next. ``tcp`` keeps one connection per thread, ``udp`` one
connected datagram socket per thread, ``connect`` opens a connection per request (connect,
send, read the reply, close). The server must answer each request with its bytes uppercased
(``servers.py --handler upper``); a reply that differs counts as an error.

Every thread first makes one round trip; the clock starts when all have. Prints one JSON
line: requests, seconds, rps, p50_ms, p99_ms, timeouts, errors, client_cpu (this process's
CPU seconds per second of the window) and, with ``--server-pid``, server_cpu_seconds over the
same window.
"""

import argparse
import json
import os
import socket
import statistics
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid="self"):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def parse_address(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def request_bytes(thread_id, seq, size):
    """A lowercase request of ``size`` bytes that names its thread and sequence number, so a
    late reply to an earlier (timed-out) datagram is told apart from the awaited one."""
    head = f"t{thread_id}n{seq}-".encode()
    return head + b"a" * max(size - len(head), 0)


def read_exactly(sock, n):
    parts, got = [], 0
    while got < n:
        part = sock.recv(n - got)
        if not part:
            raise ConnectionError("the server closed the connection mid-reply")
        parts.append(part)
        got += len(part)
    return b"".join(parts)


class Worker:
    """One client thread: its socket, its latencies and its failures."""

    def __init__(self, thread_id, args):
        self.thread_id = thread_id
        self.args = args
        self.address = parse_address(args.addr)
        self.latencies = []
        self.timeouts = 0
        self.errors = 0
        self.sock = None
        self.seq = 0

    def open(self):
        family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
        kind = socket.SOCK_DGRAM if self.args.mode == "udp" else socket.SOCK_STREAM
        sock = socket.socket(family, kind)
        sock.settimeout(self.args.timeout)
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect(self.address)
        return sock

    def round_trip(self):
        """One request and its reply; raises on a timeout or a wrong reply."""
        self.seq += 1
        request = request_bytes(self.thread_id, self.seq, self.args.size)
        expected = request.upper()
        if self.args.mode == "connect":
            with self.open() as sock:
                sock.sendall(request)
                reply = read_exactly(sock, len(expected))
        elif self.args.mode == "tcp":
            self.sock.sendall(request)
            reply = read_exactly(self.sock, len(expected))
        else:
            self.sock.send(request)
            reply = self.sock.recv(65536)
            while reply != expected and reply.startswith(f"T{self.thread_id}N".encode()):
                reply = self.sock.recv(65536)  # a late reply to a timed-out datagram
        if reply != expected:
            raise ValueError(f"wrong reply {reply[:40]!r}")

    def prime(self):
        if self.args.mode != "connect":
            self.sock = self.open()
        self.round_trip()

    def run(self, start, deadline):
        start.wait()
        clock = time.perf_counter
        now = clock()
        while now < deadline[0]:
            try:
                self.round_trip()
            except TimeoutError:
                self.timeouts += 1
                if self.args.mode == "tcp":
                    self.sock.close()  # the reply may still come: start over on a new one
                    self.sock = self.open()
            except (OSError, ValueError):
                self.errors += 1
                if self.args.mode == "tcp":
                    self.sock.close()
                    self.sock = self.open()
            else:
                done = clock()
                if done < deadline[0]:
                    self.latencies.append(done - now)
                now = done
                continue
            now = clock()

    def close(self):
        if self.sock is not None:
            self.sock.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--addr", required=True)
    p.add_argument("--mode", choices=["tcp", "udp", "connect"], default="tcp")
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--timeout", type=float, default=2.0)
    p.add_argument("--server-pid", type=int)
    args = p.parse_args()
    if not 1 <= args.threads <= 1024:
        p.error("--threads is 1 to 1024")

    workers = [Worker(i, args) for i in range(args.threads)]
    for worker in workers:
        worker.prime()  # one at a time: a serial server is not flooded before the clock
    start = threading.Event()
    deadline = [float("inf")]
    threads = [threading.Thread(target=w.run, args=(start, deadline)) for w in workers]
    for thread in threads:
        thread.start()
    server0 = process_cpu_seconds(args.server_pid) if args.server_pid else None
    client0 = process_cpu_seconds()
    began = time.perf_counter()
    deadline[0] = began + args.seconds
    start.set()
    time.sleep(args.seconds)
    elapsed = time.perf_counter() - began
    server1 = process_cpu_seconds(args.server_pid) if args.server_pid else None
    client1 = process_cpu_seconds()
    for thread in threads:
        thread.join(args.timeout + 10)
    for worker in workers:
        worker.close()

    latencies = sorted(x for w in workers for x in w.latencies)
    n = len(latencies)
    result = {
        "mode": args.mode,
        "threads": args.threads,
        "requests": n,
        "seconds": elapsed,
        "rps": n / elapsed,
        "p50_ms": statistics.median(latencies) * 1e3 if n else None,
        "p99_ms": latencies[min(n - 1, int(n * 0.99))] * 1e3 if n else None,
        "timeouts": sum(w.timeouts for w in workers),
        "errors": sum(w.errors for w in workers),
        "client_cpu": (client1 - client0) / elapsed,
    }
    if server0 is not None:
        result["server_cpu_seconds"] = server1 - server0
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
