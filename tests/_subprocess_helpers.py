"""Running a function from a test file in a fresh interpreter.

Tests that swap ``sys.modules['socketserver']`` (or call ``socketserver_rs.install()``) must not
leak that swap into the pytest process, and stdlib consumers such as ``http.server`` only pick
up the swap if they are imported after it. So those tests run their body in a new interpreter:

    result = run_in_fresh_interpreter(__file__, "scenario_name", args, install=True)

The child starts with nothing socketserver-related imported (it checks), optionally calls
``socketserver_rs.install()`` *before* anything else, loads the test file under a private
name, calls the function with the JSON-decoded ``args`` and prints its JSON-encodable return
value on a marked line, which the parent decodes and returns.
"""

import json
import os
import signal
import subprocess
import sys

__all__ = ["SubprocessFailed", "run_in_fresh_interpreter", "run_process"]

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
RESULT_MARKER = "@@socketserver_rs-test-result@@ "

# Modules that must not be imported yet when a child starts: the swap has to come first.
_MUST_BE_FRESH = (
    "socketserver",
    "socketserver_rs",
    "http.server",
    "xmlrpc.server",
    "wsgiref.simple_server",
    "logging.config",
)

_BOOTSTRAP = r"""
import faulthandler, importlib.util, json, sys
spec = json.loads(sys.argv[1])
# Before the parent kills a hung child, every thread's stack goes to stderr.
faulthandler.dump_traceback_later(spec["watchdog"], exit=True)
already = [name for name in spec["must_be_fresh"] if name in sys.modules]
if already:
    raise SystemExit("child interpreter is not fresh, already imported: %r" % (already,))
if spec["install"]:
    import socketserver_rs
    socketserver_rs.install()
# Appended, not prepended: files in tests/ must never shadow a stdlib module.
sys.path.append(spec["tests_dir"])
module_name = "_fresh_" + spec["module"]
module_spec = importlib.util.spec_from_file_location(module_name, spec["path"])
module = importlib.util.module_from_spec(module_spec)
sys.modules[module_name] = module
module_spec.loader.exec_module(module)
result = getattr(module, spec["function"])(*spec["args"])
sys.stdout.flush()
sys.stdout.write(spec["marker"] + json.dumps(result) + "\n")
sys.stdout.flush()
faulthandler.cancel_dump_traceback_later()
"""


class SubprocessFailed(AssertionError):
    """A child interpreter exited badly, timed out, or printed no result."""


def run_process(argv, *, timeout, cwd=None, env=None):
    """Run ``argv`` in its own session and return ``(returncode, stdout, stderr)``.

    On timeout the child's process group (the session we created for it, so only processes
    this call started) is killed, the child is reaped, and ``SubprocessFailed`` is raised with
    whatever it printed.
    """
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        stdout, stderr = proc.communicate(timeout=30)
        raise SubprocessFailed(
            f"{argv[:3]!r}... timed out after {timeout}s and was killed (pid {proc.pid})\n"
            f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        )
    finally:
        if proc.poll() is None:  # an exception other than the timeout got us here
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    return proc.returncode, stdout, stderr


def run_in_fresh_interpreter(test_file, function, args=(), *, install, timeout=60, cwd=None):
    """Call ``function(*args)`` from ``test_file`` in a new interpreter; return its result.

    With ``install`` the child calls ``socketserver_rs.install()`` before loading the file.
    Raises ``SubprocessFailed`` (an AssertionError, with the child's output) if the child
    fails, times out or returns nothing.
    """
    spec = {
        "must_be_fresh": _MUST_BE_FRESH,
        "install": install,
        "tests_dir": TESTS_DIR,
        "module": os.path.splitext(os.path.basename(test_file))[0],
        "path": os.path.abspath(test_file),
        "function": function,
        "args": list(args),
        "marker": RESULT_MARKER,
        "watchdog": max(1.0, timeout - 5),
    }
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # -P: do not put the working directory on sys.path either.
    argv = [sys.executable, "-P", "-c", _BOOTSTRAP, json.dumps(spec)]
    returncode, stdout, stderr = run_process(argv, timeout=timeout, cwd=cwd, env=env)
    lines = [line for line in stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if returncode != 0 or not lines:
        raise SubprocessFailed(
            f"{function}({args!r}) in a fresh interpreter exited with {returncode}\n"
            f"--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        )
    return json.loads(lines[-1][len(RESULT_MARKER) :])
