"""Cross-check of the headline ratios with another load generator and other handler code.

run.py measures with our own load generator (loadgen) and an echo handler. Here the client is
``wrk`` (HTTP/1.1 keep-alive, C, one thread) and the handler a hand-written HTTP responder
(``servers.py --handler minihttp``: read the request's lines up to the blank one, write a
fixed reply), on the stdlib's ``ThreadingTCPServer``, ours, our ``ThreadPoolTCPServer`` sized
to the connections, our ``ReactorTCPServer`` (a line-framed ``MessageHandler``) and a uvloop
``Protocol``, at 1, 16 and 256 connections. Servers run in a session of their own, pinned to
CPU 0, wrk to CPU 1, as in run.py; rounds interleave the rows, and each ratio is taken within
a round, so the machine's drift cancels.

    .venv/bin/python benches/crosscheck.py [--rounds 5] [--seconds 3] [--conns 1,16,256]

Writes ``results/crosscheck.md``. Needs wrk (Debian: ``apt-get install wrk``) and uvloop.
wrk cannot hold its requests until every connection is served (loadgen's ``--prime``), so a
server that accepts slowly shows it here as wrk's timeouts and a lower rate.
"""

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from harness.measure import run_wrk
from harness.processes import Noise, Server, pin_server_and_client
from harness.report import fmt_num, fmt_ratio_range, ratio_stats, round_ratios, table
from harness.scenarios import Impl, Row

STDLIB = "stdlib ThreadingTCPServer"
UVLOOP = "uvloop (Protocol)"
REACTOR = "rs ReactorTCPServer (MessageHandler)"
POOL = "rs ThreadPoolTCPServer"
RESULTS = Path(__file__).resolve().parent / "results" / "crosscheck.md"


def rows(conns):
    handler = ("--backlog", "1024", "--handler", "minihttp")
    return [
        Impl(STDLIB, "stdlib", "ThreadingTCPServer", STDLIB, handler),
        Impl("rs ThreadingTCPServer", "rs", "ThreadingTCPServer", STDLIB, handler),
        Impl(POOL, "rs", "ThreadPoolTCPServer", STDLIB, (*handler, "--max-workers", str(conns))),
        Impl(REACTOR, "rs", "ReactorTCPServer", STDLIB, handler),
        Impl(UVLOOP, "uvloop", "tcp-minihttp", STDLIB, ("--backlog", "1024")),
    ]


def measure(impl, conns, seconds, log):
    server = Server(impl, "127.0.0.1:0", log)
    try:
        url = f"http://{server.wait_ready()}/"
        run_wrk(url, conns, 1)  # warm-up
        noise = Noise(server)
        cpu0 = server.cpu_seconds()
        result = run_wrk(url, conns, seconds)
        cpu1 = server.cpu_seconds()
        result["other_cpus"] = noise.other_cpus()
        if result["requests"] == 0:
            raise RuntimeError("no request answered")
    finally:
        server.stop()
    result["cpu_us_per_req"] = (cpu1 - cpu0) / result["requests"] * 1e6
    return result


def report(conns, rows):
    header = [
        "implementation",
        "req/s (median)",
        "x stdlib, per round",
        "CPU/req x stdlib",
        "p99 ms (median)",
        "timeouts + errors",
    ]
    lines = []

    def ratio(label, base, key):
        return ratio_stats(round_ratios(rows, label, base, key))

    for row in rows:
        label, results = row.impl.label, row.runs
        lines.append(
            [
                label,
                fmt_num(statistics.median(r["rps"] for r in results), 0),
                fmt_ratio_range(ratio(label, STDLIB, "rps")),
                f"{ratio(label, STDLIB, 'cpu_us_per_req')['median']:.2f}x",
                fmt_num(statistics.median(r["p99_ms"] or 0 for r in results)),
                str(sum(r["timeouts"] + r["errors"] for r in results)),
            ]
        )
    reactor = fmt_ratio_range(ratio(REACTOR, UVLOOP, "rps"))
    pool = fmt_ratio_range(ratio(POOL, STDLIB, "rps"))
    noise = max(r["other_cpus"] for row in rows for r in row.runs)
    return (
        f"### {conns} connection{'s' if conns > 1 else ''} (wrk -t1 -c{conns})\n\n"
        + table(header, lines)
        + f"\n\nReactor against uvloop, per round: {reactor}. Pool against the stdlib's "
        f"ThreadingTCPServer, per round: {pool}. Other processes kept at most {noise:.2f} "
        "CPUs busy.\n"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--conns", default="1,16,256")
    args = parser.parse_args()
    pin_server_and_client()
    sections = []
    with tempfile.TemporaryFile("w+") as log:
        for conns in (int(c) for c in args.conns.split(",")):
            measured = [Row(impl) for impl in rows(conns)]
            for rnd in range(args.rounds):
                shift = rnd % len(measured)
                for row in measured[shift:] + measured[:shift]:
                    row.runs.append(measure(row.impl, conns, args.seconds, log))
            section = report(conns, measured)
            print(section, flush=True)
            sections.append(section)
    head = (
        "## Cross-check: wrk and a hand-written HTTP responder\n\n"
        f"`benches/crosscheck.py --rounds {args.rounds} --seconds {args.seconds} --conns "
        f"{args.conns}`; load average before: {os.getloadavg()[0]:.2f}. Ratios are taken "
        "within each round (median, lowest-highest).\n\n"
    )
    RESULTS.write_text(head + "\n".join(sections))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
