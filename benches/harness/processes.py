"""Server and load-generator processes: launching them (each server in a session of its own,
pinned to its CPU, with a descriptor limit that fits 10,000 connections), reading their CPU
time and /proc status, running the load generator bounded in time, and stopping them by PID."""

import json
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .report import cell

BENCHES = Path(__file__).resolve().parent.parent
REPO = BENCHES.parent
SERVERS = BENCHES / "servers.py"
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


# Servers run on CPU 0 and load generators on CPU 1 (when there are two): one core each, and
# a single connection's round trip always crosses cores instead of depending on where the
# scheduler happened to put the two processes. --no-pin turns this off.
PIN = {"server": None, "client": None}


# Servers and load generators may hold 10,000 connections (c10k): their descriptor limit is
# raised to this (the hard limit too, when we may), in the child before it runs.
NOFILE = 32768


def raise_nofile(want=NOFILE):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return
        except (ValueError, OSError):
            want = hard  # not root: as far as the hard limit goes
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def pin_server_and_client():
    """Pin servers to the first CPU we may use and load generators to the second, so neither
    takes the other's CPU time (no pinning with a single CPU)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        PIN["server"], PIN["client"] = {cpus[0]}, {cpus[1]}


def child_setup(role):
    """What runs in a server's or load generator's process before it starts: the CPU it is
    pinned to (if any) and a descriptor limit that fits 10,000 connections."""
    cpus = PIN[role]

    def setup():
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        raise_nofile()

    return setup


_live = set()


class StartError(Exception):
    pass


class Server:
    """A benchmark server process; always stop() it (it also dies with us: PDEATHSIG).

    Its stderr goes to a file of its own, appended to the run's log when it stops."""

    def __init__(self, impl, address, log):
        cmd = [PYTHON, str(SERVERS), impl.impl, impl.kind, address, *impl.args]
        self.run_log = log
        log = self.log = tempfile.TemporaryFile("w+")
        self.run_log.write(f"=== {impl.label}: {' '.join(cmd[1:])}\n")
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=server_env(),
            cwd=REPO,
            preexec_fn=child_setup("server"),
            # A session of its own, as any real service runs: with the kernel's autogroup
            # scheduling the session decides how the server's threads share the CPU with the
            # load generator, and a server in the runner's session measured up to 2x faster.
            start_new_session=True,
        )
        _live.add(self.proc)
        self.address = None

    def wait_ready(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith("READY"):
                    self.address = line.split(None, 1)[1].strip()
                    return self.address
                if not line and self.proc.poll() is not None:
                    break
            elif self.proc.poll() is not None:
                break
        detail = log_tail(self.log)
        self.stop()
        raise StartError(f"did not start: {detail}")

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

    def status(self):
        """Resident set (now and peak, kB) and thread count from /proc/<pid>/status."""
        wanted = {"VmRSS": "rss_kb", "VmHWM": "hwm_kb", "Threads": "threads"}
        found = {}
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in wanted:
                        found[wanted[key]] = int(value.split()[0])
        except (OSError, ValueError):
            pass
        return found

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        stop_process(self.proc)
        if not self.log.closed:
            self.log.seek(0)
            shutil.copyfileobj(self.log, self.run_log)
            self.log.close()


def stop_process(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(3)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for pipe in (proc.stdout, proc.stderr):
        if pipe:
            pipe.close()
    _live.discard(proc)


def stop_all():
    for proc in list(_live):
        stop_process(proc)


class Noise:
    """How busy the rest of the machine was during a measurement: CPU time used by everyone
    (/proc/stat) minus the server's and the load generator's, in CPUs kept busy."""

    def __init__(self, server):
        self.server = server
        self.wall = time.monotonic()
        self.busy = machine_busy_seconds()
        self.mine = server.cpu_seconds() + children_cpu_seconds()

    def other_cpus(self):
        wall = time.monotonic() - self.wall
        busy = machine_busy_seconds() - self.busy
        mine = self.server.cpu_seconds() + children_cpu_seconds() - self.mine
        return max(0.0, busy - mine) / wall if wall > 0 else None


def machine_busy_seconds():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def children_cpu_seconds():
    """CPU time of the load generators run so far (they are waited for, so they count)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def server_env():
    env = dict(os.environ)
    env["BENCH_BIN_DIR"] = str(BIN_DIR)
    env.pop("PYTHONDEVMODE", None)
    return env


def log_tail(log, lines=2):
    """The last lines a server wrote, made fit for one table cell."""
    if log.closed:
        return "(log closed)"
    log.flush()
    log.seek(0)
    text = log.read()
    tail = [ln.strip() for ln in text.strip().splitlines() if ln.strip()][-lines:]
    return cell(" / ".join(tail) or "(no output)")


def build_loadgen():
    print("building benches/loadgen (cargo build --release --locked -p loadgen) ...")
    subprocess.run(
        ["cargo", "build", "--release", "--locked", "-p", "loadgen"], cwd=REPO, check=True
    )


def target_dir():
    return Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))


BIN_DIR = target_dir() / "release"


LOADGEN = BIN_DIR / "loadgen"


def loadgen(args, duration, timeout, watch=None, bound=None):
    """Runs the load generator and returns its JSON line as a dict. ``watch()`` is called every
    50 ms while it runs; it is killed after ``bound`` seconds (default: duration + timeout +
    60; loadgen bounds itself well within that)."""
    cmd = [str(LOADGEN), *args, "--duration", f"{duration:g}", "--timeout", f"{timeout:g}"]
    bound = duration + timeout + 60 if bound is None else bound
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=child_setup("client"),
    )
    _live.add(proc)
    try:
        if watch is not None:
            deadline = time.monotonic() + bound
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    raise subprocess.TimeoutExpired(cmd, bound)
                watch()
                time.sleep(0.05)
        out, err = proc.communicate(timeout=bound)
    finally:
        stop_process(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed: {err.strip()}")
    return json.loads(out.strip().splitlines()[-1])


def loadgen_marked(args, duration, timeout, marker, on_marker, bound):
    """Runs the load generator as ``loadgen()`` does, and calls ``on_marker(line)`` as soon as
    it prints a line starting with ``marker`` (idle mode's ``HOLDING``), while it runs.
    Killed after ``bound`` seconds."""
    cmd = [str(LOADGEN), *args, "--duration", f"{duration:g}", "--timeout", f"{timeout:g}"]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=child_setup("client"),
    )
    _live.add(proc)
    lines = []
    try:
        deadline = time.monotonic() + bound
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(cmd, bound)
            ready, _, _ = select.select([proc.stdout], [], [], min(left, 0.5))
            if not ready:
                continue
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith(marker):
                on_marker(line)
        err = proc.stderr.read()
        proc.wait(max(0.1, deadline - time.monotonic()))
    finally:
        stop_process(proc)
    if proc.returncode != 0:
        raise RuntimeError(f"loadgen failed: {err.strip()}")
    return json.loads(lines[-1])


def run_json(cmd, timeout):
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=server_env(),
        cwd=REPO,
        start_new_session=True,  # as every server here (see Server)
    )
    _live.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop_process(proc)
    if proc.returncode != 0:
        raise RuntimeError(err.strip().splitlines()[-1] if err.strip() else "failed")
    return json.loads(out.strip().splitlines()[-1])


def git_revision():
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "rust", "python"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return rev + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def measured_package():
    """Which socketserver_rs the servers import: this checkout (with its git revision) or
    an installed copy elsewhere."""
    try:
        import socketserver_rs
    except Exception:
        return "socketserver_rs (does not import)"
    where = Path(socketserver_rs.__file__).resolve().parent
    if where.is_relative_to(REPO):
        return f"this checkout at git {git_revision()}"
    return f"socketserver_rs {socketserver_rs.__version__} installed at {where}"
