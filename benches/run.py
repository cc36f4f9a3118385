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
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from harness.chart import draw
from harness.measure import (
    idle_section,
    measure_burst,
    measure_c10k,
    measure_http,
    measure_throughput,
    measure_tls_idle,
    run_rounds,
    shutdown_section,
)
from harness.processes import (
    BENCHES,
    LOADGEN,
    NOFILE,
    PIN,
    build_loadgen,
    git_revision,
    measured_package,
    pin_server_and_client,
    stop_all,
)
from harness.report import (
    burst_table,
    c10k_table,
    http_table,
    merge_previous,
    throughput_table,
    tls_idle_table,
    tls_table,
    with_runs,
)
from harness.scenarios import (
    BURST_TIMEOUT_DEFAULT_BACKLOG,
    C10K_BASE,
    FULL,
    GROUPS,
    QUICK,
    SCENARIOS,
    TLS_IDLE_TARGETS,
    TLS_RS_PLAIN,
    TLS_UVLOOP,
    Row,
    Settings,
    available_rs_names,
    burst_rows,
    c10k_rows,
    http_rows,
    throughput_scenarios,
    tls_idle_rows,
    tls_scenarios,
    unavailable,
    uvloop_available,
)
from harness.tls import make_material

RESULTS = BENCHES / "results"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="one short round of everything")
    p.add_argument(
        "--rounds", type=int, help="rounds per scenario (default 3; the TLS scenarios 5)"
    )
    p.add_argument("--duration", type=float, help="seconds per measurement (default 2)")
    p.add_argument(
        "--only",
        help="comma-separated scenarios: "
        + ",".join(SCENARIOS)
        + "; or groups: "
        + ", ".join(f"{k} (= {','.join(v)})" for k, v in GROUPS.items()),
    )
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
    p.add_argument(
        "--tls-idle-conns",
        type=int,
        help="connections in tlsidle (default 10000, at most 10000)",
    )
    args = p.parse_args(argv)
    settings = QUICK if args.quick else FULL
    changes = {}
    if args.rounds:
        changes["rounds"] = changes["burst_rounds"] = max(1, args.rounds)
        changes["tls_rounds"] = changes["rounds"]
    if args.duration:
        changes["duration"] = args.duration
    if args.c10k_conns:
        if not 1 <= args.c10k_conns <= 10_000:
            p.error("--c10k-conns must be within 1..10000")
        changes["c10k_conns"] = args.c10k_conns
    if args.c10k_seconds:
        changes["c10k_seconds"] = args.c10k_seconds
    if args.tls_idle_conns:
        if not 1 <= args.tls_idle_conns <= 10_000:
            p.error("--tls-idle-conns must be within 1..10000")
        changes["tls_idle_conns"] = args.tls_idle_conns
    if changes:
        settings = Settings(**{**settings.__dict__, **changes})
    only = set(SCENARIOS)
    if args.only:
        only = {s.strip() for s in args.only.split(",") if s.strip()}
        for group, members in GROUPS.items():
            if group in only:
                only = (only - {group}) | set(members)
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

    if not args.no_pin:
        pin_server_and_client()
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
        tls_keys = [k for k in GROUPS["tls"] if k in only]
        material, why = None, None
        if tls_keys:
            try:
                material = make_material(tmp / "tls")
            except Exception as error:  # e.g. no cryptography: the other scenarios still run
                why = f"skipped: no certificates ({type(error).__name__}: {error})"
        for scenario in tls_scenarios(settings.size, material) if material else ():
            if scenario.key not in only:
                continue
            rows = rows_for(scenario.rows)
            run_rounds(
                rows,
                settings.tls_rounds,
                lambda impl, sc=scenario: measure_throughput(sc, impl, settings, tmp, log),
            )
            text, data = tls_table(
                rows, TLS_UVLOOP, scenario.second, scenario.rate, scenario.targets
            )
            data = with_runs(rows, data)
            emit(
                scenario.key,
                scenario.title,
                text,
                data,
                f"{settings.tls_rounds} round(s) x {settings.duration:g} s per row. "
                f"{scenario.note} Ratios: the median of the per-round ratios (rounds interleave "
                "the rows), with their range, against uvloop with ssl="
                + (" and against our plain-TCP reactor." if scenario.second else "."),
            )
        if "tlsidle" in only and material:
            conns = settings.tls_idle_conns
            rows = rows_for(tls_idle_rows(material))
            run_rounds(
                rows, settings.tls_rounds, lambda impl: measure_tls_idle(impl, settings, log)
            )
            text, data = tls_idle_table(rows, conns, TLS_UVLOOP, TLS_IDLE_TARGETS)
            data = with_runs(rows, data)
            emit(
                "tlsidle",
                f"TLS, {conns:,} idle connections: server memory",
                text,
                data,
                f"{settings.tls_rounds} round(s). "
                f"{conns:,} connections are opened (TLS 1.3, full handshake; plain TCP for "
                f"{TLS_RS_PLAIN}), each echoes one {settings.size}-byte line, then all are held "
                f"without traffic for {settings.tls_idle_hold:g} s (loadgen --mode idle; up to "
                f"{settings.tls_idle_timeout:g} s to get them up, backlog 4096, descriptor "
                f"limits raised to {NOFILE} or the hard limit). Server RSS: VmRSS from "
                "/proc/<pid>/status once every connection is up and has been still for "
                f"{min(1.0, settings.tls_idle_hold / 2):g} s (absolute, nothing subtracted); "
                "RSS before: after a 64-connection warm-up, before the idle connections; KiB "
                "per connection: the difference over the connections held; peak: VmHWM, the "
                "handshakes' transient included. Ratios: the median of the per-round ratios, "
                "with their range.",
            )
        for key in tls_keys if why else ():
            emit(key, key, why, {})
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
        try:
            if draw(report, args.out / "latest.svg"):
                print(f"drew {args.out / 'latest.svg'}")
        except Exception as error:  # the tables are written whatever happens to the chart
            print(f"note: could not draw the chart ({type(error).__name__}: {error})")
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"total {elapsed:.0f} s; wrote {args.out / 'latest.md'} and latest.json")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        stop_all()
        sys.exit(130)
