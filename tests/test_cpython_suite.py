"""CPython's own ``test.test_socketserver``, run unmodified against socketserver_rs.

The suite ships with Python (it is never copied into this repository). A fresh interpreter
puts ``socketserver_rs`` into ``sys.modules['socketserver']`` before importing the suite, checks
that the swap really took, runs every test with ``unittest`` and reports the result as JSON.
The only adaptation is ``MiscTestCase.test_all``: it checks that ``__all__`` lists exactly the
public names whose ``__module__`` is ``'socketserver'``, and ours say ``'socketserver_rs'``. The
runner replaces it with the same check for ``'socketserver_rs'`` (``check_all_lists_public_names``
below, itself tested here against the original on the stdlib and on broken modules).

The same runner is first proven on the stdlib ``socketserver`` (no adaptation at all), which
also tells which skips are the platform's: socketserver_rs must skip exactly those.
"""

import os
import re
import sys
import types
import unittest

import pytest
from _cpython_suites import (
    assert_no_leak_that_the_stdlib_run_did_not_have,
    problems,
    run_tests,
    stdlib_socketserver_loaded,
)
from _subprocess_helpers import run_in_fresh_interpreter

SUITE = "test.test_socketserver"
RS = "socketserver_rs"
STDLIB = "socketserver"
SUITE_TIMEOUT = 90  # seconds for one run in a child (it takes ~1 s), below pytest-timeout

# Skips the suite itself makes when the platform lacks something (decorators and
# test.support.get_attribute in test_socketserver.py); anything else is not a platform skip.
PLATFORM_SKIP_REASONS = (
    r"requires Unix sockets",
    r"requires forking",
    r"object <module 'signal'.*> has no attribute 'pthread_kill'",
    r"Cannot create server \(.*\): .*",  # bind() on a Unix socket refused (Android)
)


def check_all_lists_public_names(testcase, module, defining_module):
    """``MiscTestCase.test_all`` with the defining module's name as a parameter.

    Every public name of ``module`` whose object says it was defined in ``defining_module``
    must be in ``module.__all__``, and ``__all__`` must hold nothing else. The original is this
    check with ``defining_module='socketserver'``.
    """
    expected = []
    for name in dir(module):
        if not name.startswith("_"):
            mod_object = getattr(module, name)
            if getattr(mod_object, "__module__", None) == defining_module:
                expected.append(name)
    testcase.assertCountEqual(module.__all__, expected)


def run_cpython_suite(implementation):
    """Child side: run ``test.test_socketserver`` on ``implementation``; return a summary.

    ``implementation`` is ``'socketserver_rs'`` (swapped in as ``socketserver``, test_all
    adapted) or ``'socketserver'`` (the stdlib, nothing touched).
    """
    import importlib

    assert SUITE not in sys.modules and "socketserver" not in sys.modules
    adapted = []
    if implementation == RS:
        import socketserver_rs

        sys.modules["socketserver"] = socketserver_rs
        expected_module = socketserver_rs
    else:
        import socketserver as expected_module

    suite_module = importlib.import_module(SUITE)

    # The swap really happened: the suite tests the module we mean, and nothing else.
    swap = {
        "suite_file": suite_module.__file__,
        "socketserver_name": suite_module.socketserver.__name__,
        "socketserver_file": suite_module.socketserver.__file__,
        "socketserver_is_expected": suite_module.socketserver is expected_module,
        "tcpserver_module": suite_module.socketserver.TCPServer.__module__,
        "tcpserver_is_expected": suite_module.socketserver.TCPServer is expected_module.TCPServer,
        "stdlib_socketserver_loaded": stdlib_socketserver_loaded(),
    }
    assert swap["socketserver_is_expected"], swap
    assert swap["tcpserver_module"] == implementation, swap
    assert swap["stdlib_socketserver_loaded"] == (implementation == STDLIB), swap

    if implementation == RS:

        def test_all(self):
            check_all_lists_public_names(self, suite_module.socketserver, RS)

        test_all.__doc__ = suite_module.MiscTestCase.test_all.__doc__
        suite_module.MiscTestCase.test_all = test_all
        adapted.append(f"{SUITE}.MiscTestCase.test_all")

    suite = unittest.defaultTestLoader.loadTestsFromModule(suite_module)
    summary = run_tests(suite, implementation, SUITE)
    summary.update(swap=swap, adapted=adapted)
    return summary


def _run(implementation, tmp_path_factory):
    # The suite writes test.support.os_helper.TESTFN into the working directory.
    cwd = tmp_path_factory.mktemp(f"cpython-suite-{implementation}")
    return run_in_fresh_interpreter(
        __file__,
        "run_cpython_suite",
        [implementation],
        install=False,
        timeout=SUITE_TIMEOUT,
        cwd=str(cwd),
    )


@pytest.fixture(scope="module")
def stdlib_run(tmp_path_factory):
    return _run(STDLIB, tmp_path_factory)


@pytest.fixture(scope="module")
def rs_run(tmp_path_factory):
    return _run(RS, tmp_path_factory)


# --- the runner, proven on the stdlib ---------------------------------------------------------


def test_runner_passes_the_cpython_suite_on_the_stdlib_socketserver(stdlib_run):
    swap = stdlib_run["swap"]
    assert swap["socketserver_name"] == "socketserver"
    assert swap["tcpserver_module"] == "socketserver"
    assert swap["stdlib_socketserver_loaded"]
    assert stdlib_run["adapted"] == []
    assert stdlib_run["count"] > 0
    assert stdlib_run["ran"] == stdlib_run["count"] == len(stdlib_run["test_ids"])
    assert stdlib_run["failures"] == [] and stdlib_run["errors"] == [], problems(stdlib_run)
    assert stdlib_run["was_successful"]
    assert stdlib_run["unexpected_successes"] == []


def test_adapted_test_all_check_agrees_with_the_original_on_the_stdlib():
    import socketserver

    # The original test_all is this check with 'socketserver'; it must pass on the stdlib.
    check_all_lists_public_names(unittest.TestCase(), socketserver, "socketserver")


def test_adapted_test_all_check_fails_when_all_misses_a_public_class():
    module = types.ModuleType("fake_socketserver")
    module.Listed = type("Listed", (), {"__module__": "fake_socketserver"})
    module.Forgotten = type("Forgotten", (), {"__module__": "fake_socketserver"})
    module.Imported = type("Imported", (), {"__module__": "elsewhere"})  # ignored
    module.__all__ = ["Listed"]
    with pytest.raises(AssertionError):
        check_all_lists_public_names(unittest.TestCase(), module, "fake_socketserver")
    module.__all__ = ["Forgotten", "Listed"]
    check_all_lists_public_names(unittest.TestCase(), module, "fake_socketserver")


def test_adapted_test_all_check_fails_when_all_lists_a_foreign_name():
    module = types.ModuleType("fake_socketserver")
    module.Own = type("Own", (), {"__module__": "fake_socketserver"})
    module.Imported = type("Imported", (), {"__module__": "elsewhere"})
    module.__all__ = ["Imported", "Own"]
    with pytest.raises(AssertionError):
        check_all_lists_public_names(unittest.TestCase(), module, "fake_socketserver")


def test_adapted_test_all_check_passes_on_socketserver_rs_where_the_original_cannot():
    import socketserver_rs

    check_all_lists_public_names(unittest.TestCase(), socketserver_rs, RS)
    with pytest.raises(AssertionError):  # why the suite's own test_all has to be adapted
        check_all_lists_public_names(unittest.TestCase(), socketserver_rs, "socketserver")


# --- socketserver_rs -------------------------------------------------------------------------


def test_cpython_suite_imports_socketserver_rs_in_place_of_socketserver(rs_run):
    swap = rs_run["swap"]
    assert swap["socketserver_name"] == RS
    assert swap["socketserver_is_expected"]
    assert swap["tcpserver_module"] == RS
    assert swap["tcpserver_is_expected"]
    assert not swap["stdlib_socketserver_loaded"]
    assert os.path.basename(os.path.dirname(swap["socketserver_file"])) == RS
    assert rs_run["adapted"] == [f"{SUITE}.MiscTestCase.test_all"]


def test_cpython_suite_runs_every_one_of_its_tests_on_socketserver_rs(rs_run, stdlib_run):
    assert rs_run["count"] > 0
    assert rs_run["ran"] == rs_run["count"] == len(rs_run["test_ids"])
    assert rs_run["test_ids"] == stdlib_run["test_ids"]


def test_cpython_suite_has_no_failures_or_errors_on_socketserver_rs(rs_run):
    assert rs_run["failures"] == [] and rs_run["errors"] == [], problems(rs_run)
    assert rs_run["unexpected_successes"] == []
    assert rs_run["expected_failures"] == []
    assert rs_run["was_successful"]


def test_cpython_suite_skips_only_the_platform_skips_on_socketserver_rs(rs_run, stdlib_run):
    skipped = dict(rs_run["skipped"])
    print(f"skipped on {RS}: {skipped or 'none'}")
    for test_id, reason in skipped.items():
        assert any(re.fullmatch(pattern, reason) for pattern in PLATFORM_SKIP_REASONS), (
            f"{test_id} skipped for a reason that is not the platform's: {reason!r}"
        )
    # The stdlib on this same machine skips exactly the same tests.
    assert skipped == dict(stdlib_run["skipped"])


def test_cpython_suite_leaves_no_threads_or_children_behind_on_socketserver_rs(rs_run, stdlib_run):
    assert_no_leak_that_the_stdlib_run_did_not_have(rs_run, stdlib_run)
