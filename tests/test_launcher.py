"""``python -m socketserver_rs run``: existing programs on socketserver_rs, unedited.

Every test runs real interpreters, each in a session of its own that is killed if the test
times out. A program run through the launcher must see what a plain ``python`` gives it
(``sys.argv``, ``__main__``, ``sys.path``, ``sys.orig_argv``, exit status, Ctrl-C, tracebacks,
compared with a plain run of the same program side by side), except that ``import socketserver``
is socketserver_rs there and in the Python processes it starts, and only there.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from _child_process import WITH_DEFAULT_SIGINT, CollectsOutput, child_env
from _subprocess_helpers import run_process
from socketserver_rs import _launcher

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 30.0
RUN = ["-m", "socketserver_rs", "run"]

# Prints, as JSON, what a program can see of how it was started, and which socketserver
# it gets (also through http.server, which subclasses it on import).
REPORT = """\
import json, os, sys
import socketserver
import http.server
report = {
    "argv": sys.argv,
    "orig_argv": sys.orig_argv[1:],
    "name": __name__,
    "file": globals().get("__file__"),
    "spec": getattr(__spec__, "name", None),
    "path": sys.path,
    "flags": [sys.flags.dev_mode, sys.flags.optimize, sys.flags.dont_write_bytecode],
    "warnoptions": sys.warnoptions,
    "socketserver": socketserver.__name__,
    "http_server_base": http.server.HTTPServer.__mro__[-2].__module__,
}
print(json.dumps(report))
"""


def python(*args, cwd, env=None, stdin=None):
    """Run ``python ARGS`` in ``cwd`` (in a session of its own, with ``stdin`` as its input);
    returns ``(returncode, stdout, stderr)``."""
    argv, env = [sys.executable, *args], env or child_env()
    if stdin is None:
        return run_process(argv, timeout=TIMEOUT, cwd=cwd, env=env)
    done = subprocess.run(
        argv,
        cwd=cwd,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        start_new_session=True,
    )
    return done.returncode, done.stdout, done.stderr


def report(*args, cwd, stdin=None):
    returncode, stdout, stderr = python(*args, cwd=cwd, stdin=stdin)
    assert returncode == 0, stderr
    assert stderr == ""
    return json.loads(stdout)


def assert_same_but_swapped(plain, launched):
    """``launched`` (a report under the launcher) is ``plain`` (a report under plain python),
    except for the swap."""
    assert plain["socketserver"] == "socketserver"
    assert plain["http_server_base"] == "socketserver"
    assert launched["socketserver"] == "socketserver_rs"
    assert launched["http_server_base"] == "socketserver_rs"
    for key in ("socketserver", "http_server_base"):
        plain.pop(key), launched.pop(key)
    assert launched == plain


@pytest.fixture
def program(tmp_path):
    (tmp_path / "report.py").write_text(REPORT)
    (tmp_path / "reportmod.py").write_text(REPORT)
    return tmp_path


# --- the program sees what plain python gives it, on socketserver_rs --------------------------


def test_a_script_gets_its_argv_main_and_path_as_with_plain_python(program):
    args = ("report.py", "one", "--two", "-m", "x")
    plain = report(*args, cwd=program)
    launched = report(*RUN, *args, cwd=program)
    assert plain["argv"] == ["report.py", "one", "--two", "-m", "x"]
    assert plain["name"] == "__main__" and plain["path"][0] == str(program)
    assert_same_but_swapped(plain, launched)


def test_code_given_with_c_gets_its_argv_and_path_as_with_plain_python(program):
    plain = report("-c", REPORT, "a", "b", cwd=program)
    launched = report(*RUN, "-c", REPORT, "a", "b", cwd=program)
    assert plain["argv"] == ["-c", "a", "b"] and plain["path"][0] == ""
    assert_same_but_swapped(plain, launched)


@pytest.mark.parametrize("form", [["-m", "reportmod"], ["-mreportmod"]])
def test_a_module_given_with_m_runs_as_main_as_with_plain_python(program, form):
    plain = report(*form, "arg", cwd=program)
    launched = report(*RUN, *form, "arg", cwd=program)
    assert plain["argv"] == [str(program / "reportmod.py"), "arg"]
    assert plain["name"] == "__main__" and plain["spec"] == "reportmod"
    assert_same_but_swapped(plain, launched)


def test_a_program_read_from_stdin_runs_as_with_plain_python(program):
    plain = report("-", "x", cwd=program, stdin=REPORT)
    launched = report(*RUN, "-", "x", cwd=program, stdin=REPORT)
    assert plain["argv"] == ["-", "x"]
    assert_same_but_swapped(plain, launched)


@pytest.mark.parametrize(
    "options",
    [["-X", "dev"], ["-O", "-B"], ["-W", "error::DeprecationWarning", "-u"]],
    ids=["X-dev", "O-B", "W-u"],
)
def test_interpreter_options_given_before_the_launcher_are_passed_on(program, options):
    plain = report(*options, "report.py", cwd=program)
    launched = report(*options, *RUN, "report.py", cwd=program)
    assert plain["orig_argv"][: len(options)] == options
    assert_same_but_swapped(plain, launched)


@pytest.mark.parametrize(
    "start", [["-Bm", "socketserver_rs"], ["-msocketserver_rs"]], ids=["grouped", "joined"]
)
def test_the_other_ways_of_spelling_m_socketserver_rs_work_too(program, start):
    plain = report("-B", "report.py", cwd=program) if start[0] == "-Bm" else None
    launched = report(*start, "run", "report.py", cwd=program)
    expected = ["-B", "report.py"] if plain is not None else ["report.py"]
    assert launched["orig_argv"] == expected
    assert launched["socketserver"] == "socketserver_rs"


# --- exit status, tracebacks, Ctrl-C ------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("import sys; sys.exit(3)", 3),
        ("raise SystemExit('it is over')", 1),
        ("import socketserver\ndef serve():\n    raise ValueError('no')\nserve()", 1),
        ("import os; os._exit(7)", 7),
        ("pass", 0),
    ],
    ids=["exit-3", "exit-message", "uncaught", "os-exit", "clean"],
)
def test_exit_status_and_stderr_are_plain_pythons(tmp_path, code, status):
    (tmp_path / "prog.py").write_text(code + "\n")
    plain = python("prog.py", cwd=tmp_path)
    launched = python(*RUN, "prog.py", cwd=tmp_path)
    assert plain[0] == status
    assert launched == plain  # status, stdout, and stderr: tracebacks hold no frame of ours


class Interrupted(CollectsOutput):
    """``python ARGS`` started so that SIGINT reaches it (see WITH_DEFAULT_SIGINT)."""

    def __init__(self, *args, cwd):
        self.proc = subprocess.Popen(
            [*WITH_DEFAULT_SIGINT, *args],
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
            start_new_session=True,
        )
        self._collect_output()

    def wait_for_line(self):
        line = self._lines.get(timeout=TIMEOUT)
        assert line is not None, self.stderr
        return line

    def interrupt(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=TIMEOUT)
        for reader in self._readers:
            reader.join(timeout=5)
        return self.proc.returncode

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=TIMEOUT)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def start(tmp_path):
    started = []

    def starter(*args):
        child = Interrupted(*args, cwd=tmp_path)
        started.append(child)
        return child

    yield starter
    for child in started:
        child.kill()


SERVES_UNTIL_CTRL_C = """\
import socketserver
class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        pass
with socketserver.TCPServer(("127.0.0.1", 0), Handler) as server:
    print(socketserver.__name__, flush=True)
    server.serve_forever()
"""


def test_ctrl_c_ends_a_serving_program_as_with_plain_python(tmp_path, start):
    (tmp_path / "serve.py").write_text(SERVES_UNTIL_CTRL_C)
    outcomes = []
    for args in (["serve.py"], [*RUN, "serve.py"]):
        child = start(*args)
        module = child.wait_for_line().strip()
        started = time.monotonic()
        returncode = child.interrupt()
        outcomes.append((module, returncode, child.stderr, time.monotonic() - started))
    (plain_module, plain_status, plain_err, _), (module, status, err, seconds) = outcomes
    assert (plain_module, module) == ("socketserver", "socketserver_rs")
    # Python ends an uncaught KeyboardInterrupt by killing itself with SIGINT.
    assert plain_status == status == -signal.SIGINT
    assert plain_err.splitlines()[0] == err.splitlines()[0] == "Traceback (most recent call last):"
    assert plain_err.splitlines()[-1] == err.splitlines()[-1] == "KeyboardInterrupt"
    assert "_launcher" not in err and "runpy" not in err
    assert seconds < 5  # socketserver_rs notices at once; the margin is for a loaded machine


# --- http.server -----------------------------------------------------------------------------


def test_http_server_module_serves_files_on_socketserver_rs(tmp_path, start):
    site = tmp_path / "site"
    site.mkdir()
    (site / "hello.txt").write_bytes(b"hello from the launcher\n")
    # -X importtime lists every module actually imported: socketserver_rs, never the
    # stdlib's socketserver (http.server's `import socketserver` finds the swap).
    child = start(
        "-X",
        "importtime",
        *RUN,
        "-m",
        "http.server",
        "0",
        "--bind",
        "127.0.0.1",
        "--directory",
        str(site),
    )
    banner = child.wait_for_line()
    port = int(re.search(r"port (\d+)", banner).group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/hello.txt", timeout=TIMEOUT) as reply:
        assert reply.status == 200
        assert reply.read() == b"hello from the launcher\n"
    assert child.interrupt() == 0  # http.server catches Ctrl-C and exits cleanly
    assert "Keyboard interrupt received, exiting." in child.stdout
    imported = [
        line.rsplit("|", 1)[-1].strip()
        for line in child.stderr.splitlines()
        if line.startswith("import time:")
    ]
    assert "http" in imported and "socketserver_rs" in imported
    assert "socketserver" not in imported
    # The same listing tells the stdlib's socketserver apart when it is imported.
    _, _, plain = python("-X", "importtime", "-c", "import http.server", cwd=tmp_path)
    assert "socketserver" in [line.rsplit("|", 1)[-1].strip() for line in plain.splitlines()]


# --- child processes -------------------------------------------------------------------------

PROBE = "import socketserver; print(socketserver.__name__)"

# Starts children with sys.executable: one as is, one (a grandchild too) through a nested run,
# one with the launcher's entry taken out of PYTHONPATH.
SPAWNS = f"""\
import os, subprocess, sys
from socketserver_rs import _launcher
probe = {PROBE!r}
def child(*args, env=None):
    return subprocess.run([sys.executable, *args], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()
print(child("-c", probe))
print(child("-c", "import subprocess, sys; print(subprocess.run([sys.executable, '-c', "
            f"{{probe!r}}], capture_output=True, text=True).stdout.strip())"))
print(child("-m", "socketserver_rs", "run", "-c",
            "import os, sys; print(os.environ['PYTHONPATH'].split(os.pathsep)"
            ".count(sys.argv[1]))", _launcher.SITE_DIR))
entries = os.environ["PYTHONPATH"].split(os.pathsep)
kept = os.pathsep.join(e for e in entries if e != _launcher.SITE_DIR)
print(child("-c", probe, env={{**os.environ, "PYTHONPATH": kept}}))
"""


def test_children_started_with_sys_executable_are_swapped_and_plain_python_is_not(tmp_path):
    (tmp_path / "spawns.py").write_text(SPAWNS)
    returncode, stdout, stderr = python(*RUN, "spawns.py", cwd=tmp_path)
    assert returncode == 0, stderr
    assert stdout.split() == [
        "socketserver_rs",  # a child
        "socketserver_rs",  # a grandchild
        "1",  # a nested run puts its directory on PYTHONPATH once
        "socketserver",  # a child whose PYTHONPATH lost the launcher's entry
    ]
    # The same environment without the launcher: the stdlib.
    assert python("-c", PROBE, cwd=tmp_path)[1].strip() == "socketserver"


# A dev server that serves from a child process started with sys.executable, as werkzeug's
# run_simple(use_reloader=True) does; a request reveals the server class's modules.
CHILD_SERVER = """\
import http.server, subprocess, sys
if sys.argv[1:] != ["child"]:
    sys.exit(subprocess.call([sys.executable, __file__, "child"]))
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = " ".join(c.__module__ for c in type(self.server).__mro__).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def test_a_server_in_a_child_process_of_the_program_is_on_socketserver_rs(tmp_path, start):
    (tmp_path / "devserver.py").write_text(CHILD_SERVER)
    child = start(*RUN, "devserver.py")
    port = int(child.wait_for_line())
    url = f"http://127.0.0.1:{port}/"
    with urllib.request.urlopen(url, timeout=TIMEOUT) as reply:
        modules = reply.read().decode().split()
    # ThreadingHTTPServer and HTTPServer, mixed with socketserver's classes: ours
    assert modules[0] == "http.server" and modules.count("http.server") == 2
    assert "socketserver_rs" in modules and "socketserver" not in modules
    os.killpg(child.proc.pid, signal.SIGINT)  # Ctrl-C in a terminal: parent and child
    child.proc.wait(timeout=TIMEOUT)


# --- sitecustomize ---------------------------------------------------------------------------


def test_a_sitecustomize_of_the_users_still_runs_and_sees_the_swap(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text(
        "import sys\nSAW = sys.modules.get('socketserver').__name__\n"
    )
    env = {**child_env(), "PYTHONPATH": str(theirs)}
    code = (
        "import sys, sitecustomize, socketserver; "
        "print(sitecustomize.__file__, sitecustomize.SAW, socketserver.__name__, "
        f"{str(theirs)!r} in sys.path)"
    )
    returncode, stdout, stderr = python(*RUN, "-c", code, cwd=tmp_path, env=env)
    assert returncode == 0, stderr
    assert stdout.split() == [
        str(theirs / "sitecustomize.py"),
        "socketserver_rs",
        "socketserver_rs",
        "True",
    ]


def test_a_failing_sitecustomize_of_the_users_is_reported_as_plain_python_reports_it(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "sitecustomize.py").write_text("raise ValueError('broken sitecustomize')\n")
    env = {**child_env(), "PYTHONPATH": str(theirs)}
    code = "import socketserver; print(socketserver.__name__)"
    plain = python("-c", code, cwd=tmp_path, env=env)
    launched = python(*RUN, "-c", code, cwd=tmp_path, env=env)
    assert "ValueError: broken sitecustomize" in plain[2]
    # Reported twice: by the launcher's own interpreter, which has the same environment,
    # and by the program's.
    assert launched[2] == plain[2] * 2
    assert (plain[0], plain[1], launched[0], launched[1]) == (
        0,
        "socketserver\n",
        0,
        "socketserver_rs\n",
    )


def test_an_interpreter_without_socketserver_rs_stays_on_the_stdlib_quietly(tmp_path):
    # Another Python the program might start: a virtualenv without this package.
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "other")],
        check=True,
        timeout=TIMEOUT,
    )
    other = tmp_path / "other" / "bin" / "python"
    env = _launcher.child_environment(child_env())
    returncode, stdout, stderr = run_process(
        [str(other), "-c", PROBE], timeout=TIMEOUT, cwd=tmp_path, env=env
    )
    assert (returncode, stdout, stderr) == (0, "socketserver\n", "")


# --- the stdlib oracle under the launcher ----------------------------------------------------


def test_the_plugins_stdlib_module_is_the_stdlibs_under_the_launcher(tmp_path):
    code = (
        "import socketserver, socketserver_rs\n"
        "from socketserver_rs.testing import socketserver_modules\n"
        "modules = dict(socketserver_modules())\n"
        "assert socketserver is socketserver_rs\n"
        "print(modules['stdlib'].TCPServer.__module__, modules['rs'].__name__)\n"
    )
    returncode, stdout, stderr = python(*RUN, "-c", code, cwd=tmp_path)
    assert returncode == 0, stderr
    assert stdout.split() == ["socketserver", "socketserver_rs"]


USERS_TESTS = """\
import socketserver
import socketserver_rs

def test_swapped_and_compared_with_the_real_stdlib(socketserver_module, request):
    assert socketserver is socketserver_rs
    which = request.node.callspec.params["socketserver_module"]
    expected = {"stdlib": "socketserver", "rs": "socketserver_rs"}[which]
    assert socketserver_module.TCPServer.__module__ == expected
    assert (socketserver_module is socketserver_rs) == (which == "rs")
"""


def test_pytest_runs_under_the_launcher_with_the_plugin_and_no_warnings(tmp_path):
    (tmp_path / "test_users.py").write_text(USERS_TESTS)
    args = ("-m", "pytest", "-v", "-p", "no:cacheprovider", "-W", "error", "test_users.py")
    returncode, stdout, stderr = python(*RUN, *args, cwd=tmp_path)
    assert returncode == 0, stdout + stderr
    assert "test_swapped_and_compared_with_the_real_stdlib[stdlib] PASSED" in stdout
    assert "test_swapped_and_compared_with_the_real_stdlib[rs] PASSED" in stdout
    assert "warning" not in stdout.lower()


# --- usage -----------------------------------------------------------------------------------

USAGE = "python -m socketserver_rs run"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "run needs a program"),
        (["-m"], "argument -m: expected one argument"),
        (["-c"], "argument -c: expected one argument"),
        (["--workers", "2", "app.py"], "unrecognized option '--workers'"),
    ],
    ids=["nothing", "m-without-module", "c-without-code", "unknown-option"],
)
def test_bad_command_lines_exit_2_with_usage(tmp_path, args, message):
    returncode, stdout, stderr = python(*RUN, *args, cwd=tmp_path)
    assert (returncode, stdout) == (2, "")
    assert stderr.startswith(f"usage: {USAGE} ")
    assert f"{USAGE}: error: {message}" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("option", "why"), [("-I", "-I and -E"), ("-E", "-I and -E"), ("-S", "-S keeps")]
)
def test_options_that_would_lose_the_swap_are_refused(tmp_path, option, why):
    env = child_env()
    if option == "-S":  # no site-packages then: find the package through PYTHONPATH
        env["PYTHONPATH"] = os.path.dirname(os.path.dirname(_launcher.__file__))
    returncode, stdout, stderr = python(option, *RUN, "-c", "print('ran')", cwd=tmp_path, env=env)
    assert (returncode, stdout) == (2, "")
    assert stderr.startswith(f"{USAGE}: cannot run: {why}")


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_run_help_describes_the_launcher(tmp_path, flag):
    returncode, stdout, stderr = python(*RUN, flag, cwd=tmp_path)
    assert (returncode, stderr) == (0, "")
    assert stdout.startswith(f"usage: {USAGE} [-h] (-m MODULE | -c CODE | SCRIPT | -)")
    assert "PYTHONPATH" in stdout


def test_the_top_level_help_lists_run(tmp_path):
    returncode, stdout, _ = python("-m", "socketserver_rs", "--help", cwd=tmp_path)
    assert returncode == 0
    assert re.search(r"^\s+run\s+run a Python program", stdout, re.MULTILINE), stdout


def test_a_plain_python_in_this_environment_is_not_swapped(tmp_path):
    # No .pth hook or sitecustomize of ours acts without the launcher.
    code = "import sys, socketserver; print(socketserver.__name__, 'sitecustomize' in sys.modules)"
    returncode, stdout, _ = python("-c", code, cwd=tmp_path)
    assert returncode == 0
    assert stdout.split()[0] == "socketserver"
