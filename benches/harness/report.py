"""The report: medians over rounds, ratios, the markdown tables, the JSON of every raw
measurement, and merging in the tables of an earlier run."""

import json
import statistics


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
        # Persistent connections that made a round trip while the clock ran (fewest over the
        # rounds), out of those opened; None for connection-per-request and datagram loads.
        "served_min": min((r.get("conns_served") for r in runs), default=None, key=_or_zero),
        "conns": runs[0].get("conns") if runs else None,
    }


def _or_zero(value):
    return value or 0


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


def cell(text, limit=160):
    text = text.replace("|", "/").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
        if s["served_min"] is not None and s["conns"] and s["served_min"] < s["conns"]:
            failures += f" ({s['served_min']:,} of {s['conns']:,} connections served)"
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


def round_ratios(rows, label, base, key):
    """``label``'s ``key`` over ``base``'s, round by round (rounds interleave the rows, so each
    ratio compares measurements taken moments apart); rounds either row lacks are skipped."""
    by_label = {r.impl.label: r for r in rows}
    if label not in by_label or base not in by_label:
        return []
    pairs = zip(by_label[label].runs, by_label[base].runs, strict=False)
    return [a[key] / b[key] for a, b in pairs if a.get(key) and b.get(key)]


def ratio_stats(ratios):
    if not ratios:
        return None
    return {"median": median(ratios), "min": min(ratios), "max": max(ratios), "n": len(ratios)}


def fmt_ratio_range(stats):
    """``1.62x (1.50-1.70)``: the median of the per-round ratios and their range."""
    if stats is None:
        return "-"
    if stats["n"] < 2:
        return f"{stats['median']:.2f}x"
    return f"{stats['median']:.2f}x ({stats['min']:.2f}-{stats['max']:.2f})"


def target_lines(rows, targets, key, what):
    """One line per target of the issue: the median per-round ratio and whether it is met."""
    lines = []
    for t in targets:
        stats = ratio_stats(round_ratios(rows, t.row, t.base, key))
        bound = f"{'≤' if t.most else '≥'} {t.ratio:g}x"
        if stats is None:
            lines.append(f"- Target: {t.row} {what} {bound} {t.base}: not measured.")
            continue
        met = stats["median"] <= t.ratio if t.most else stats["median"] >= t.ratio
        over = (
            f"median and range of {stats['n']} per-round ratios" if stats["n"] > 1 else "one round"
        )
        lines.append(
            f"- Target: {t.row} {what} {bound} {t.base}: {fmt_ratio_range(stats)} "
            f"({over}), {'met' if met else 'NOT met'}."
        )
    return lines


def tls_table(rows, base, second, rate, targets, names=("uvloop ssl", "rs plain TCP")):
    """The TLS throughput rows: medians over rounds, and req/s (or handshakes/s) as the
    median of the per-round ratios against ``base`` and ``second`` (if any; in the header:
    ``names``), with their range."""
    summaries = {}
    for row in rows:
        if not row.runs:
            continue
        s = summarize_throughput(row)
        for name, other in (("vs_base", base), ("vs_second", second)):
            s[name] = ratio_stats(round_ratios(rows, row.impl.label, other, "rps"))
            s[name + "_cpu"] = ratio_stats(
                round_ratios(rows, row.impl.label, other, "server_cpu_us_per_req")
            )
        s["client_busy"] = median(
            [r["client_cpu_s"] / r["elapsed_s"] for r in row.runs if r.get("elapsed_s")]
        )
        summaries[row.impl.label] = s
    header = [
        "implementation",
        rate,
        "spread",
        f"{rate} x {names[0]} (min-max)",
        *([f"{rate} x {names[1]} (min-max)"] if second else []),
        "p50 µs",
        "p99 µs",
        "errors/timeouts",
        "server CPU µs/req",
        f"CPU/req x {names[0]}",
        "client CPU busy",
    ]
    lines = []
    for row in rows:
        s = summaries.get(row.impl.label)
        if s is None:
            lines.append([row.impl.label, "n/a", *[""] * (len(header) - 3), row.failure or ""])
            continue
        failures = f"{s['errors']}/{s['timeouts']}"
        if s["errors"] and s["first_error"]:
            failures += f" ({cell(s['first_error'][:40])})"
        lines.append(
            [
                row.impl.label,
                fmt_num(s["rps"], 0),
                fmt_spread(s["rps_spread"], s["rounds"]),
                fmt_ratio_range(s["vs_base"]),
                *([fmt_ratio_range(s["vs_second"])] if second else []),
                fmt_num(s["p50_us"]),
                fmt_num(s["p99_us"]),
                failures,
                fmt_num(s["cpu_us_per_req"]),
                fmt_ratio_range(s["vs_base_cpu"]),
                "-" if s["client_busy"] is None else f"{s['client_busy'] * 100:.0f}%",
            ]
        )
    text = table(header, lines)
    goals = target_lines(rows, targets, "rps", rate)
    if goals:
        text += "\n\n" + "\n".join(goals)
    return text, summaries


def tls_idle_table(rows, conns, base, targets, name="uvloop ssl"):
    """Server memory with ``conns`` idle connections: VmRSS once they are all up, absolute
    and as the median of the per-round ratios against ``base`` (``name`` in the header)."""
    summaries = {}
    for row in rows:
        runs = row.runs
        if not runs:
            continue
        rss = [r["rss_kb"] / 1024 for r in runs]
        before = [(r["rss_before_kb"] or 0) / 1024 for r in runs]
        held = min(r["held"] for r in runs)
        summaries[row.impl.label] = {
            "rss_mib": median(rss),
            "rss_min_mib": min(rss),
            "rss_max_mib": max(rss),
            "rss_before_mib": median(before),
            "kib_per_conn": median(
                [(r["rss_kb"] - (r["rss_before_kb"] or 0)) / max(1, r["held"]) for r in runs]
            ),
            "hwm_mib": median([(r["hwm_kb"] or 0) / 1024 for r in runs]),
            "held_min": held,
            "connect_s": median([r["connect_s"] for r in runs]),
            "threads": max(r["threads"] or 0 for r in runs),
            "errors": sum(r["errors"] for r in runs),
            "timeouts": sum(r["timeouts"] for r in runs),
            "vs_base": ratio_stats(round_ratios(rows, row.impl.label, base, "rss_kb")),
            "rounds": len(runs),
        }
    header = [
        "implementation",
        "connections held (min)",
        "up in (median s)",
        "server RSS MiB (min-max)",
        f"RSS x {name} (min-max)",
        "RSS before MiB",
        "KiB per connection",
        "peak RSS (VmHWM) MiB",
        "threads",
        "errors/timeouts",
    ]
    lines = []
    for row in rows:
        s = summaries.get(row.impl.label)
        if s is None:
            lines.append([row.impl.label, "n/a", *[""] * (len(header) - 3), row.failure or ""])
            continue
        spread = (
            f" ({fmt_num(s['rss_min_mib'])}-{fmt_num(s['rss_max_mib'])})" if s["rounds"] > 1 else ""
        )
        lines.append(
            [
                row.impl.label,
                f"{s['held_min']:,}/{conns:,}",
                fmt_num(s["connect_s"]),
                fmt_num(s["rss_mib"]) + spread,
                fmt_ratio_range(s["vs_base"]),
                fmt_num(s["rss_before_mib"]),
                fmt_num(s["kib_per_conn"]),
                fmt_num(s["hwm_mib"]),
                str(s["threads"]),
                f"{s['errors']}/{s['timeouts']}",
            ]
        )
    text = table(header, lines)
    goals = target_lines(rows, targets, "rss_kb", "server RSS")
    if goals:
        text += "\n\n" + "\n".join(goals)
    return text, summaries
