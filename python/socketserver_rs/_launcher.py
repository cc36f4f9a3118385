"""``python -m socketserver_rs run``: an existing program on socketserver_rs, unedited.

``python -m socketserver_rs run [-m MODULE | -c CODE | SCRIPT] [ARGS...]`` runs the program
exactly as ``python`` would, with ``import socketserver`` resolving to socketserver_rs from
interpreter start, in that process and in the Python processes it starts.

How: the launcher puts the directory of a small ``sitecustomize`` module that ships inside the
package (``_site/``) first on ``PYTHONPATH`` and replaces itself (``os.execve``) with
``python [the same interpreter options] -m MODULE | -c CODE | SCRIPT ARGS...``. At start-up
that interpreter's ``site`` imports the ``sitecustomize``, which calls
``socketserver_rs.install()``, runs any ``sitecustomize`` of the user's that it shadows, and
takes its directory back off ``sys.path``. So ``sys.argv``, ``__main__``, ``sys.path``, the
exit status, Ctrl-C and tracebacks are Python's own (it is the same process, with no frame of
ours on the stack), and children started with ``sys.executable`` inherit the environment and
are swapped too. Nothing changes for a plain ``python``: without that ``PYTHONPATH`` entry
no hook runs, and taking the entry out of a child's environment keeps that child on the stdlib.
"""

import os
import sys
from collections.abc import Mapping, Sequence

__all__ = ["HELP", "SITE_DIR", "main", "program_command"]

# The directory holding the ``sitecustomize`` that installs the swap at interpreter start.
SITE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_site")

# One line for the list of commands in ``python -m socketserver_rs --help``.
HELP = "run a Python program (-m MODULE, -c CODE or a script) on socketserver_rs"

USAGE = """\
usage: python -m socketserver_rs run [-h] (-m MODULE | -c CODE | SCRIPT | -) [ARGS ...]

Run a Python program with `import socketserver` resolving to socketserver_rs, in it and in
every Python process it starts with sys.executable; otherwise exactly as `python` runs it
(sys.argv, __main__, sys.path, exit status, Ctrl-C). Interpreter options go before
`-m socketserver_rs` (python -X dev -m socketserver_rs run app.py) and are passed on.

  -m MODULE   run a library module as a script, like python -m MODULE
  -c CODE     run the code in the string CODE, like python -c CODE
  SCRIPT      run a Python file (or a directory or zip file with a __main__.py)
  -           read the program from standard input
  ARGS        the program's own arguments (sys.argv[1:])

The swap reaches child processes through PYTHONPATH (its first entry is socketserver_rs's
_site directory); remove that entry from a child's environment to keep it on the stdlib.
"""


class UsageError(Exception):
    """A command line that ``run`` cannot take; the message says why."""


def program_command(argv: Sequence[str]) -> list[str]:
    """The ``python`` command line (without the interpreter and its options) that runs what
    ``run ARGV`` names: ``['-m', MODULE, *args]``, ``['-c', CODE, *args]`` or
    ``[SCRIPT, *args]``. Raises ``UsageError`` for anything else."""
    if not argv:
        raise UsageError("run needs a program: -m MODULE, -c CODE or a script path")
    first, rest = argv[0], list(argv[1:])
    for option in ("-m", "-c"):
        if first == option:
            if not rest:
                raise UsageError(f"argument {option}: expected one argument")
            return [option, *rest]
        if first.startswith(option):  # -mhttp.server, as python takes it too
            return [first, *rest]
    if first == "-" or not first.startswith("-"):
        return [first, *rest]
    raise UsageError(
        f"unrecognized option {first!r}: interpreter options go before -m socketserver_rs "
        "(python -X dev -m socketserver_rs run ...)"
    )


def interpreter_options(orig_argv: Sequence[str], argv: Sequence[str]) -> list[str]:
    """The options this interpreter was started with (``-X dev``, ``-W error``, ``-u`` …):
    what ``orig_argv`` (``sys.orig_argv``) holds between the executable and whatever
    started this package (``-m socketserver_rs``, ``-msocketserver_rs`` or a path), given
    that ``argv`` (``sys.argv``) is what followed it."""
    prefix = list(orig_argv[1 : len(orig_argv) - (len(argv) - 1)])
    if len(prefix) >= 2 and prefix[-2].startswith("-") and prefix[-2].endswith("m"):
        # "-m socketserver_rs", or single-letter flags grouped with it: "-Bm socketserver_rs"
        grouped = prefix[-2][:-1]
        return [*prefix[:-2], *([grouped] if grouped != "-" else [])]
    return prefix[:-1]  # "-msocketserver_rs", or the path of __main__.py


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` with ``SITE_DIR`` first on ``PYTHONPATH`` (once, however often ``run``
    is nested)."""
    env = dict(environ)
    entries = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep) if entry]
    entries = [SITE_DIR, *(entry for entry in entries if entry != SITE_DIR)]
    env["PYTHONPATH"] = os.pathsep.join(entries)
    return env


def _refusal() -> str | None:
    """Why this interpreter's options would keep the swap from happening, if they would."""
    if sys.flags.isolated or sys.flags.ignore_environment:
        return "-I and -E make Python ignore PYTHONPATH, which carries the swap"
    if sys.flags.no_site:
        return "-S keeps Python from importing sitecustomize, which installs the swap"
    return None


def main(argv: Sequence[str]) -> int:
    """Run ``python -m socketserver_rs run ARGV``: replace this process with the program.
    Returns (with an exit status) only for ``--help`` and for errors."""
    if argv and argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    try:
        command = program_command(argv)
    except UsageError as error:
        sys.stderr.write(
            f"{USAGE.splitlines()[0]}\npython -m socketserver_rs run: error: {error}\n"
        )
        return 2
    refusal = _refusal()
    if refusal is not None:
        sys.stderr.write(f"python -m socketserver_rs run: cannot run: {refusal}\n")
        return 2
    if not sys.executable:
        sys.stderr.write("python -m socketserver_rs run: sys.executable is unknown\n")
        return 1
    options = interpreter_options(sys.orig_argv, sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *options, *command], child_environment(os.environ))
