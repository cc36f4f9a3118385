"""The chart of a run: per scenario, requests/s of every row (socketserver_rs, the stdlib,
asyncio, uvloop and the Rust ceiling, mio-echo), the median over rounds with a bar from the
slowest to the fastest round. One panel per scenario, each on its own scale, since their
rates differ by 100x. Written as SVG next to latest.md.

    .venv/bin/python benches/harness/chart.py [results/latest.json [out.svg]]   # redraw
"""

import json
import statistics
import sys
from pathlib import Path

# Scenarios that have a requests/s per round, in the order of the tables.
CHARTED = ["tcp1", "tcp16", "tcp256", "connect16", "udp16", "udp16s", "unix16", "line16"]
CHARTED += ["line16p4", "rl1", "rl16", "rl256"]
CHARTED += ["c10k", "http", "tls1", "tls16", "tls256", "tlsconnect16"]

COLOURS = {
    "rs": "#d95f02",  # ours
    "stdlib": "#7f7f7f",
    "asyncio": "#7570b3",
    "uvloop": "#1f78b4",
    "mio": "#1b9e77",  # the native ceiling
}
LEGEND = {
    "rs": "socketserver_rs",
    "stdlib": "stdlib socketserver",
    "asyncio": "asyncio",
    "uvloop": "uvloop",
    "mio": "mio-echo (Rust ceiling)",
}


def family(label, server):
    """Which colour a row gets: what it runs on (servers.py's IMPL, else its label)."""
    impl = server[0] if server else label.split()[0]
    return impl if impl in COLOURS else "rs" if label.startswith("rs ") else "stdlib"


def bars(scenario):
    """(label, family, median, min, max) of every row that has rounds with a rate."""
    out = []
    for label, row in scenario.get("results", {}).items():
        if not isinstance(row, dict):
            continue
        rates = [r["rps"] for r in row.get("runs", ()) if r.get("rps")]
        if rates:
            med = statistics.median(rates)
            out.append((label, family(label, row.get("server")), med, min(rates), max(rates)))
    return out


def draw(report, path):
    """Writes the chart of ``report`` (latest.json's content) to ``path``; returns False when
    matplotlib is missing or no scenario has rates (nothing is written then)."""
    try:
        import matplotlib

        matplotlib.use("svg")
        matplotlib.rcParams["svg.fonttype"] = "none"  # text as text: a small, searchable SVG
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed (pip install matplotlib): no chart")
        return False
    scenarios = report.get("scenarios", {})
    panels = [(k, scenarios[k]) for k in CHARTED if k in scenarios and bars(scenarios[k])]
    if not panels:
        return False
    heights = [len(bars(s)) * 0.28 + 0.7 for _, s in panels]
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(8.5, sum(heights) + 0.8),
        gridspec_kw={"height_ratios": heights},
        squeeze=False,
    )
    seen = set()
    for ax, (key, scenario) in zip(axes[:, 0], panels, strict=True):
        rows = bars(scenario)
        y = range(len(rows))
        for i, (_label, fam, med, lo, hi) in enumerate(rows):
            ax.barh(
                i,
                med,
                color=COLOURS[fam],
                xerr=[[med - lo], [hi - med]],
                error_kw={"ecolor": "black", "elinewidth": 0.8, "capsize": 2},
                label=LEGEND[fam] if fam not in seen else None,
            )
            seen.add(fam)
            ax.text(hi, i, f"  {med:,.0f}", va="center", fontsize=7)
        ax.set_yticks(list(y), [r[0] for r in rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(f"{scenario.get('title', key)} ({key})", fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=7)
        ax.set_xlim(0, max(r[4] for r in rows) * 1.22)
        ax.xaxis.set_major_formatter(
            matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:,.0f}k")
        )
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
    meta = report.get("meta", {})
    fig.suptitle(
        "requests/s, median over rounds; bars: slowest to fastest round "
        f"({meta.get('date', '?')}, {meta.get('cpus', '?')} CPUs, "
        f"load average at start {(meta.get('loadavg_at_start') or [0])[0]:.1f})",
        fontsize=8,
    )
    fig.legend(loc="lower center", ncol=len(seen), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 0.98))
    fig.savefig(path, format="svg", metadata={"Date": None})
    plt.close(fig)
    return True


def main(argv):
    results = Path(__file__).resolve().parent.parent / "results"
    source = Path(argv[0]) if argv else results / "latest.json"
    target = Path(argv[1]) if len(argv) > 1 else source.with_suffix(".svg")
    if not draw(json.loads(source.read_text()), target):
        raise SystemExit("no chart drawn")
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1:])
