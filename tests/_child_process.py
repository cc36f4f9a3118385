"""What the tests that run servers as child processes (the examples, the command line) share:
the child's environment, a start that makes Ctrl-C reach it, and collecting its output."""

import os
import queue
import sys
import threading


def child_env():
    """The environment for a child: unbuffered output, no inherited warning filters."""
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONWARNINGS", None)
    return env


# A shell without job control starts background jobs with SIGINT ignored, and an ignored
# signal stays ignored across exec: then Python never installs its Ctrl-C handler. Children
# that get SIGINT therefore start through this trampoline, which resets SIGINT to its default
# and execs the real command in the same process (a preexec_fn would do it after fork(), which
# is unsafe while the reader threads run).
WITH_DEFAULT_SIGINT = [
    sys.executable,
    "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])",
]


def drain(stream, sink, lines):
    """Copy a child's output lines into ``sink`` and the queue ``lines`` (None at the end)."""
    for line in stream:
        sink.append(line)
        lines.put(line)
    lines.put(None)


class CollectsOutput:
    """For a class with a ``proc`` (a ``subprocess.Popen`` with piped, text stdout and
    stderr): collects both as they come; stdout lines are also queued in ``_lines``."""

    def _collect_output(self):
        self.stdout_lines = []
        self.stderr_lines = []
        self._lines = queue.Queue()
        self._readers = [
            threading.Thread(
                target=drain, args=(self.proc.stdout, self.stdout_lines, self._lines), daemon=True
            ),
            threading.Thread(
                target=drain, args=(self.proc.stderr, self.stderr_lines, queue.Queue()), daemon=True
            ),
        ]
        for reader in self._readers:
            reader.start()

    @property
    def stdout(self):
        return "".join(self.stdout_lines)

    @property
    def stderr(self):
        return "".join(self.stderr_lines)
