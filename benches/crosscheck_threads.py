"""Cross-check of the headline ratios with a threaded Python client and the socket API.

run.py measures with loadgen (one non-blocking Rust thread) and line-echo handlers; here the
client is benches/pyclient.py (1, 16 or 256 Python threads with blocking sockets) and the
handlers use the socket itself: ``recv()``/``sendall()`` of the uppercased bytes on
``BaseRequestHandler`` for streams, ``sendto()`` for datagrams, a raw ``MessageHandler`` on
the reactor and a ``Protocol`` on uvloop (``servers.py --handler upper``).

    .venv/bin/python benches/crosscheck_threads.py [--rounds 5] [--seconds 2]
        [--threads 1,16,256] [--modes tcp,udp,connect]

Servers run in a session of their own pinned to CPU 0, the client on CPU 1; rounds
interleave the rows and each ratio is taken within a round. A Python client runs out of CPU
long before the faster servers do: the table's "client CPU" column says when it was the
limit (near 1.00), and then the servers' CPU per request is the figure that compares them.
Writes ``results/crosscheck_threads.md``.
"""

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from harness.measure import run_pyclient
from harness.processes import Server, pin_server_and_client
from harness.report import fmt_num, fmt_ratio_range, ratio_stats, round_ratios, table
from harness.scenarios import Impl, Row

RESULTS = Path(__file__).resolve().parent / "results" / "crosscheck_threads.md"
HANDLER = ("--backlog", "1024", "--handler", "upper")


def rows(mode, threads):
    """(implementation, the row its ratio is taken against) for one mode."""
    pool = (*HANDLER, "--max-workers", str(threads))
    if mode == "udp":
        return [
            Impl("stdlib UDPServer", "stdlib", "UDPServer", "stdlib UDPServer", HANDLER),
            Impl("rs UDPServer", "rs", "UDPServer", "stdlib UDPServer", HANDLER),
            Impl("stdlib ThreadingUDPServer", "stdlib", "ThreadingUDPServer", "", HANDLER),
            Impl(
                "rs ThreadPoolUDPServer",
                "rs",
                "ThreadPoolUDPServer",
                "stdlib ThreadingUDPServer",
                pool,
            ),
            Impl("rs ReactorUDPServer", "rs", "ReactorUDPServer", "uvloop", HANDLER),
            Impl("uvloop", "uvloop", "udp-upper", "", ("--backlog", "1024")),
        ]
    if mode == "connect":
        return [
            Impl("stdlib TCPServer", "stdlib", "TCPServer", "", HANDLER),
            Impl("rs TCPServer", "rs", "TCPServer", "stdlib TCPServer", HANDLER),
            Impl("stdlib ThreadingTCPServer", "stdlib", "ThreadingTCPServer", "", HANDLER),
            Impl(
                "rs ThreadPoolTCPServer",
                "rs",
                "ThreadPoolTCPServer",
                "stdlib ThreadingTCPServer",
                pool,
            ),
        ]
    return [
        Impl("stdlib ThreadingTCPServer", "stdlib", "ThreadingTCPServer", "", HANDLER),
        Impl(
            "rs ThreadingTCPServer",
            "rs",
            "ThreadingTCPServer",
            "stdlib ThreadingTCPServer",
            HANDLER,
        ),
        Impl(
            "rs ThreadPoolTCPServer", "rs", "ThreadPoolTCPServer", "stdlib ThreadingTCPServer", pool
        ),
        Impl("rs ReactorTCPServer", "rs", "ReactorTCPServer", "uvloop", HANDLER),
        Impl("uvloop", "uvloop", "tcp-upper", "", ("--backlog", "1024")),
    ]


def measure(impl, mode, threads, seconds, log):
    server = Server(impl, "127.0.0.1:0", log)
    try:
        result = run_pyclient(server.wait_ready(), mode, threads, seconds, server.proc.pid)
    finally:
        server.stop()
    if result["requests"] == 0:
        raise RuntimeError(f"{impl.label}: no request answered")
    return result


def report(mode, threads, rows):
    header = [
        "implementation",
        "req/s (median)",
        "req/s x its baseline, per round",
        "CPU/req x its baseline, per round",
        "p99 ms (median)",
        "client CPU",
        "timeouts + errors",
    ]
    lines = []
    for row in rows:
        impl, results = row.impl, row.runs
        if impl.baseline:
            against = [
                fmt_ratio_range(ratio_stats(round_ratios(rows, impl.label, impl.baseline, key)))
                + f" vs {impl.baseline}"
                for key in ("rps", "cpu_us_per_req")
            ]
        else:
            against = ["(baseline)", "(baseline)"]
        lines.append(
            [
                impl.label,
                fmt_num(statistics.median(r["rps"] for r in results), 0),
                *against,
                fmt_num(statistics.median(r["p99_ms"] or 0 for r in results)),
                f"{statistics.median(r['client_cpu'] for r in results):.2f}",
                str(sum(r["timeouts"] + r["errors"] for r in results)),
            ]
        )
    title = f"### {mode}, {threads} client thread{'s' if threads > 1 else ''}\n\n"
    return title + table(header, lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", default="1,16,256")
    parser.add_argument("--modes", default="tcp,udp,connect")
    args = parser.parse_args()
    pin_server_and_client()
    load_before = os.getloadavg()[0]
    sections = []
    with tempfile.TemporaryFile("w+") as log:
        for mode in args.modes.split(","):
            for threads in (int(t) for t in args.threads.split(",")):
                measured = [Row(impl) for impl in rows(mode, threads)]
                for rnd in range(args.rounds):
                    shift = rnd % len(measured)
                    for row in measured[shift:] + measured[:shift]:
                        row.runs.append(measure(row.impl, mode, threads, args.seconds, log))
                section = report(mode, threads, measured)
                print(section, flush=True)
                sections.append(section)
    head = (
        "## Cross-check: a threaded Python client and socket-API handlers\n\n"
        f"`benches/crosscheck_threads.py --rounds {args.rounds} --seconds {args.seconds:g} "
        f"--threads {args.threads} --modes {args.modes}`; load average before: "
        f"{load_before:.2f}. Ratios are taken within each round (median, lowest-highest). "
        "'client CPU' is the client process's CPU seconds per second (1.00: the client was "
        "the limit, and CPU per request is the comparison that holds).\n\n"
    )
    RESULTS.write_text(head + "\n".join(sections))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
