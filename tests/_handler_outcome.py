"""A one-handler server for the ``rfile`` and ``wfile`` tests (test_native_read, test_wfile):
its ``StreamRequestHandler`` runs a test's ``body(handler)`` and records what it returned or
raised, how long it took and on which thread, for the test to compare across modules.
"""

import threading
import time

from _behaviour_helpers import CLIENT_TIMEOUT, LOOPBACK, STOP_TIMEOUT


class Outcome:
    """What the handler's ``body`` returned or raised, how long it took, and its thread."""

    def __init__(self):
        self.done = threading.Event()
        self.result = None
        self.error = None
        self.seconds = None
        self.thread = None

    def wait(self, timeout=STOP_TIMEOUT):
        assert self.done.wait(timeout), "the handler did not finish"
        return self


def outcome_server(ss, harness, body, **handler_attrs):
    """A TCPServer whose StreamRequestHandler (with ``handler_attrs`` set on its class) runs
    ``body(handler)`` and records the outcome; returns ``(server, outcome)``. Not yet
    serving."""
    outcome = Outcome()

    class Handler(ss.StreamRequestHandler):
        def handle(self):
            outcome.thread = threading.get_ident()
            started = time.monotonic()
            try:
                outcome.result = body(self)
            except BaseException as error:
                outcome.error = error
            finally:
                outcome.seconds = time.monotonic() - started
                outcome.done.set()

    for name, value in handler_attrs.items():
        setattr(Handler, name, value)
    server = harness.server(ss.TCPServer, (LOOPBACK, 0), Handler, timeout=CLIENT_TIMEOUT)
    return server, outcome
