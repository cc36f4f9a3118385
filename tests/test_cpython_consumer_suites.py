"""CPython's own suites of the stdlib modules built on socketserver, run unmodified on ours.

``http.server``, ``xmlrpc.server``, ``wsgiref.simple_server`` and ``logging.config.listen()``
subclass or call socketserver; ``test_imaplib``, ``test_logging`` and asyncio's test helpers
build servers on it directly. Their suites ship with Python and are never copied here. Each
runs in a fresh interpreter twice: once on the stdlib, which proves the runner and tells which
skips are this machine's, and once after ``socketserver_rs.install()``, the documented way to
put ours under them. On ours, every test must pass and skip exactly what the stdlib run
skipped, with no leaked thread or child process.

That the swap held is checked after the run, not assumed: the stdlib's socketserver.py must
never have been loaded (so no server in the process can be the stdlib's), and the consumer
classes the suite needs must be built on socketserver_rs.

Tests that CPython gates behind a regrtest resource are skipped as ``python -m test`` skips
them without ``-u``: ``network`` ones reach outside the machine, and ``walltime`` ones spend
most of a minute per suite sleeping through client time-outs.
"""

import sys
import types
import unittest
from concurrent.futures import ThreadPoolExecutor

import pytest
from _cpython_suites import (
    assert_no_leak_that_the_stdlib_run_did_not_have,
    problems,
    run_tests,
    stdlib_socketserver_loaded,
)
from _subprocess_helpers import run_in_fresh_interpreter

RS = "socketserver_rs"
STDLIB = "socketserver"
SUITE_TIMEOUT = 100  # seconds for one child (the longest took ~15 s on 3.11); below pytest-timeout

# The consumer servers a suite's tests run on: (module, class) pairs, or (module, None) for a
# module that looks socketserver's classes up only when it is called.
HTTP = ("http.server", "HTTPServer")
XMLRPC = ("xmlrpc.server", "SimpleXMLRPCServer")
WSGI = ("wsgiref.simple_server", "WSGIServer")
LISTEN = ("logging.config", None)  # listen() imports ThreadingTCPServer when it is called

# Dotted test names (modules, or a class's method) -> the consumers they must have used.
SUITES = {
    "test.test_httpservers": [HTTP],
    "test.test_xmlrpc": [XMLRPC],
    "test.test_docxmlrpc": [XMLRPC],
    "test.test_wsgiref": [WSGI],
    "test.test_urllib2_localnet": [HTTP],
    "test.test_robotparser": [HTTP],
    "test.test_imaplib": [],  # its servers are its own socketserver.TCPServer subclasses
    "test.test_logging": [LISTEN],  # and its own socketserver receivers
    "test.test_ssl.ThreadedTests.test_socketserver": [HTTP],  # test.ssl_servers' HTTPS server
    "test.test_asyncio.test_events": [HTTP, WSGI],  # a Unix WSGIServer of test_asyncio.utils
}


def _built_on(module, class_name, expected_module):
    """Whether ``module.class_name`` derives from ``expected_module.BaseServer``.

    None for a loaded module with no class to look at, "not loaded" if the suite never
    imported the module (then it did not test what it is listed for).
    """
    if module not in sys.modules:
        return "not loaded"
    if class_name is None:
        return None
    return expected_module.BaseServer in getattr(sys.modules[module], class_name).__mro__


def _servers_in_test_modules(expected_module):
    """Every server class, and socketserver module, that a loaded ``test.*`` module holds.

    Maps ``module.name`` to whether it is (built on) ``expected_module``. The suites that build
    their own servers (test_imaplib, test_logging, asyncio's helpers) import socketserver or
    its classes at module level, so this finds them.
    """
    found = {}
    for module_name, module in list(sys.modules.items()):
        if not module_name.startswith("test."):
            continue
        for attribute, value in list(vars(module).items()):
            key = f"{module_name}.{attribute}"
            if isinstance(value, types.ModuleType) and value.__name__ in (RS, STDLIB):
                found[key] = value is expected_module
            elif isinstance(value, type) and any(c.__name__ == "BaseServer" for c in value.__mro__):
                found[key] = expected_module.BaseServer in value.__mro__
    return found


def run_consumer_suite(name, implementation):
    """Child side: run the tests ``name`` on ``implementation``; return a summary.

    For socketserver_rs the child has already called ``socketserver_rs.install()``.
    """
    import test.support

    if implementation == RS:
        import socketserver_rs as expected_module
    else:
        import socketserver as expected_module
    assert sys.modules["socketserver"] is expected_module

    # As `python -m test` without -u: resource-gated tests skip, on both implementations.
    test.support.use_resources = []
    suite = unittest.defaultTestLoader.loadTestsFromName(name)
    summary = run_tests(suite, implementation, name)

    # After the run, every server the suite could have made came from the expected module.
    summary["swap"] = {
        "socketserver_is_expected": sys.modules["socketserver"] is expected_module,
        "stdlib_socketserver_loaded": stdlib_socketserver_loaded(),
        "test_module_servers": _servers_in_test_modules(expected_module),
        "consumers": {
            f"{module}.{class_name or ''}": _built_on(module, class_name, expected_module)
            for module, class_name in SUITES[name]
        },
    }
    return summary


@pytest.fixture(scope="module")
def consumer_run(tmp_path_factory):
    """``consumer_run(name, implementation)``: that run's summary, made once per module.

    A suite's two runs go side by side, each in a child of its own: they spend most of their
    time waiting on sockets and time-outs, and CPython runs its suites in parallel itself.
    """

    def run_child(name, implementation):
        # Suites write test.support.os_helper.TESTFN into the working directory.
        cwd = tmp_path_factory.mktemp(f"{name.split('.')[1]}-{implementation}")
        return run_in_fresh_interpreter(
            __file__,
            "run_consumer_suite",
            [name, implementation],
            install=implementation == RS,
            timeout=SUITE_TIMEOUT,
            cwd=str(cwd),
        )

    runs = {}

    def run(name, implementation):
        if (name, implementation) not in runs:
            with ThreadPoolExecutor(max_workers=2) as pool:
                futures = {impl: pool.submit(run_child, name, impl) for impl in (STDLIB, RS)}
                for impl, future in futures.items():
                    runs[name, impl] = future.result()
        return runs[name, implementation]

    return run


@pytest.mark.parametrize("name", SUITES)
def test_runner_passes_the_suite_on_the_stdlib(consumer_run, name):
    run = consumer_run(name, STDLIB)
    assert run["swap"]["socketserver_is_expected"] and run["swap"]["stdlib_socketserver_loaded"]
    assert run["count"] == len(run["test_ids"])
    # Fewer than all when a class skips in setUpClass (test_robotparser's network tests).
    assert 0 < run["ran"] <= run["count"]
    assert run["failures"] == [] and run["errors"] == [], problems(run)
    assert run["was_successful"]


@pytest.mark.parametrize("name", SUITES)
def test_suite_ran_on_socketserver_rs_servers_only(consumer_run, name):
    swap = consumer_run(name, RS)["swap"]
    assert swap["socketserver_is_expected"]
    assert not swap["stdlib_socketserver_loaded"]
    for consumer, built_on_ours in swap["consumers"].items():
        # None: a module that looks socketserver up when called, and is loaded.
        assert built_on_ours in (True, None), f"{consumer}: {built_on_ours}"
    for holder, ours in swap["test_module_servers"].items():
        assert ours, f"{holder} is not socketserver_rs's"
    assert swap["consumers"] or swap["test_module_servers"], "the suite used no server"


@pytest.mark.parametrize("name", SUITES)
def test_suite_passes_on_socketserver_rs(consumer_run, name):
    stdlib_run = consumer_run(name, STDLIB)
    rs_run = consumer_run(name, RS)
    assert rs_run["test_ids"] == stdlib_run["test_ids"]
    assert rs_run["ran"] == stdlib_run["ran"] > 0
    assert rs_run["failures"] == [] and rs_run["errors"] == [], problems(rs_run)
    assert rs_run["unexpected_successes"] == stdlib_run["unexpected_successes"]
    assert rs_run["was_successful"]
    # Whatever this machine lacks (root, a resource, an old OpenSSL) skips the same tests.
    assert dict(rs_run["skipped"]) == dict(stdlib_run["skipped"])


@pytest.mark.parametrize("name", SUITES)
def test_suite_leaves_no_threads_or_children_behind_on_socketserver_rs(consumer_run, name):
    rs_run, stdlib_run = consumer_run(name, RS), consumer_run(name, STDLIB)
    assert_no_leak_that_the_stdlib_run_did_not_have(rs_run, stdlib_run)
