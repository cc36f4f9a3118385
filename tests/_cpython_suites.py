"""Running CPython's own test modules in a child interpreter and summing up what happened.

CPython ships its test suite with the interpreter (``test.test_socketserver``,
``test.test_httpservers``...); nothing of it is copied into this repository. The functions
here run inside a fresh interpreter started by ``_subprocess_helpers.run_in_fresh_interpreter``,
after the child has (or has not) swapped socketserver_rs in. They load the named tests, run
them with ``unittest`` and return a JSON-encodable summary that the parent compares with the
same run on the stdlib. Used by ``test_cpython_suite.py`` and ``test_cpython_consumer_suites.py``.
"""

import os
import sys
import sysconfig
import unittest

import pytest


def stdlib_socketserver_loaded():
    """Whether the stdlib's socketserver.py is loaded under any name in this interpreter."""
    path = os.path.join(sysconfig.get_paths()["stdlib"], "socketserver.py")
    for module in list(sys.modules.values()):
        filename = getattr(module, "__file__", None)
        if filename and os.path.exists(filename) and os.path.samefile(filename, path):
            return True
    return False


def _iter_tests(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _iter_tests(item)
        else:
            yield item


def _static_skip(test):
    """The reason a skip decorator on the test or its class gives, or None."""
    method = getattr(test, test._testMethodName, None)
    for holder in (type(test), method):
        if getattr(holder, "__unittest_skip__", False):
            return getattr(holder, "__unittest_skip_why__", "")
    return None


def run_tests(suite, implementation, label):
    """Run a loaded ``unittest`` suite; return its summary.

    ``label`` names the run in the one line printed for the log. Test output goes to stderr,
    which the parent shows only when the child fails.
    """
    import test.support

    tests = list(_iter_tests(suite))
    static_skips = {test.id(): _static_skip(test) for test in tests}

    runner = unittest.TextTestRunner(stream=sys.stderr, verbosity=2)
    result = runner.run(suite)

    summary = {
        "implementation": implementation,
        "test_ids": sorted(test.id() for test in tests),
        "count": suite.countTestCases(),
        "ran": result.testsRun,
        "was_successful": result.wasSuccessful(),
        "failures": [[test.id(), text] for test, text in result.failures],
        "errors": [[test.id(), text] for test, text in result.errors],
        "skipped": [[test.id(), reason] for test, reason in result.skipped],
        "static_skips": {key: value for key, value in static_skips.items() if value is not None},
        "expected_failures": [test.id() for test, _ in result.expectedFailures],
        "unexpected_successes": [test.id() for test in result.unexpectedSuccesses],
        # reap_threads/reap_children set this when a test leaks a thread or a child process;
        # regrtest reports it as ENV CHANGED.
        "environment_altered": bool(test.support.environment_altered),
    }
    print(
        f"{label} on {implementation}: ran {summary['ran']} of {summary['count']}, "
        f"failures {len(summary['failures'])}, errors {len(summary['errors'])}, "
        f"skipped {len(summary['skipped'])}",
        flush=True,
    )
    return summary


def problems(run):
    """The failures and errors of a summary, as text for an assertion message."""
    return "\n".join(
        f"{kind} {test_id}:\n{text}"
        for kind in ("failures", "errors")
        for test_id, text in run[kind]
    )


def assert_no_leak_that_the_stdlib_run_did_not_have(rs_run, stdlib_run):
    """Ours left no thread or child process behind, where the stdlib's run left none either.

    ``environment_altered`` is set by ``test.support``'s reap_threads/reap_children (regrtest's
    ENV CHANGED). When the stdlib's own run sets it on this machine, the suite itself (or the
    machine) leaks there, and a leak in our run could not be told apart from that: skip.
    """
    if stdlib_run["environment_altered"]:
        pytest.skip(
            "no clean baseline: the suite's run on the stdlib left a thread or child process "
            "behind on this machine, so the same finding on ours would not point at ours"
        )
    assert not rs_run["environment_altered"]
