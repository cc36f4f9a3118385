"""Full TLS handshakes per second measured with another client: OpenSSL's ``s_time``.

The ``tlsconnect16`` scenario measures handshakes with our own load generator (rustls). This
cross-checks its ratio with a different TLS stack on the client side: ``openssl s_time -new``
opens a connection, does a full handshake (no resumption), closes, and repeats, one at a
time; ``--clients N`` runs N of them at once. The servers are the harness's own TLS rows
(ours, uvloop and asyncio with ``ssl=``; the same echo handler and ECDSA P-256 certificate),
each started in a session of its own. Rounds interleave the servers; the ratio against
uvloop is the median of the per-round ratios, with their range.

    python benches/tls_s_time.py --clients 1,16 --rounds 5 --seconds 3
"""

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.processes import Server
from harness.scenarios import TLS_UVLOOP, tls_rows
from harness.tls import make_material

CONNECTIONS = re.compile(rb"(\d+) connections in [\d.]+s")


def handshakes_per_second(address, ca_file, clients, seconds):
    """Handshakes/s of ``clients`` concurrent ``s_time`` processes against ``address``."""
    command = ["openssl", "s_time", "-connect", address, "-new", "-time", str(seconds)]
    command += ["-CAfile", ca_file, "-verify", "1"]
    started = time.monotonic()
    runs = [
        subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for _ in range(clients)
    ]
    total = 0
    for run in runs:
        out, _ = run.communicate(timeout=seconds + 30)
        found = CONNECTIONS.search(out)
        if found is None:
            raise SystemExit(f"s_time printed no count: {out[-300:]!r}")
        total += int(found.group(1))
    # s_time reports whole seconds of real time; its own clock stops at `seconds`.
    return total / (time.monotonic() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,16", help="comma-separated concurrencies")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch, open(Path(scratch) / "servers.log", "w") as log:
        material = make_material(Path(scratch) / "tls")
        rows = tls_rows(material, plain=False)
        servers = {row.label: Server(row, "127.0.0.1:0", log) for row in rows}
        try:
            addresses = {label: server.wait_ready() for label, server in servers.items()}
            for clients in (int(c) for c in options.clients.split(",")):
                rates = {label: [] for label in servers}
                for _ in range(options.rounds):
                    for label, address in addresses.items():
                        rate = handshakes_per_second(
                            address, str(material.ca_cert), clients, options.seconds
                        )
                        rates[label].append(rate)
                rounds = f"{options.rounds} rounds x {options.seconds} s"
                print(f"\n{clients} s_time client(s), {rounds}")
                print("| server | handshakes/s (median) | x uvloop ssl, median (min-max) |")
                print("|---|---:|---:|")
                for label, values in rates.items():
                    ratios = [v / u for v, u in zip(values, rates[TLS_UVLOOP], strict=True)]
                    print(
                        f"| {label} | {statistics.median(values):,.0f} | "
                        f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) |"
                    )
        finally:
            for server in servers.values():
                server.stop()


if __name__ == "__main__":
    main()
