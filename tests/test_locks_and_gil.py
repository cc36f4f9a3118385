"""The engine's Rust locks and the GIL: no lock is held while Python runs.

A Rust lock held while Python runs (a call, or a Python object dropped, whose ``__del__``
runs) can hang the process: running Python can hand the GIL to another thread, which then
blocks on that lock while holding the GIL the first thread needs back. Nothing can run
Python after that, not even a test's timeout, so each scenario runs in a fresh interpreter
that the parent kills (after a faulthandler dump of every thread) if it hangs. A handler whose
``__del__`` sleeps lets the GIL go at exactly the wrong moment.
"""

import socket
import threading
import time

from _subprocess_helpers import run_in_fresh_interpreter

LOOPBACK = "127.0.0.1"
# How long a client or a join waits before the scenario reports a failure.
TIMEOUT = 5.0
# How long the fresh interpreter may take in all before the parent kills it.
CHILD_TIMEOUT = 20


def _exchange(sock, message):
    sock.sendall(message)
    sock.settimeout(TIMEOUT)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


def nested_serving_drops_connections_outside_the_lock():
    """Runs in a fresh interpreter (see the test below); returns what it observed."""
    from socketserver_rs import MessageHandler, ReactorTCPServer

    nesting = threading.Event()  # the outer call's handler is starting the nested call
    dying = threading.Event()  # a handler of the nested call's connection is being destroyed

    class Handler(MessageHandler):
        framing = "line"
        sleeps_when_dropped = False

        def handle_message(self, message):
            if message == b"nest\n":
                nesting.set()
                self.server.serve_forever()  # until the first shutdown()
                return b"outer\n"
            self.sleeps_when_dropped = True
            return b"inner\n"

        def __del__(self):
            if self.sleeps_when_dropped:
                dying.set()
                time.sleep(0.2)  # lets the GIL go

    server = ReactorTCPServer((LOOPBACK, 0), Handler)
    outer = threading.Thread(target=server.serve_forever, daemon=True)
    outer.start()
    first = socket.create_connection(server.server_address, timeout=TIMEOUT)
    first.sendall(b"nest\n")
    assert nesting.wait(TIMEOUT), "the outer call never handled its message"
    # Accepted and served by the nested call while the outer one waits in its handler.
    second = socket.create_connection(server.server_address, timeout=TIMEOUT)
    observed = {"inner": _exchange(second, b"hello\n").decode()}
    server.shutdown()  # ends the nested call, which keeps its connection for later
    first.settimeout(TIMEOUT)
    observed["outer"] = first.recv(16).decode()

    counts = []

    def ask_while_dying():
        if dying.wait(TIMEOUT):
            counts.append(server.connection_count)

    asker = threading.Thread(target=ask_while_dying, daemon=True)
    asker.start()
    # The outer call stores its connections over the nested call's, whose handler dies.
    server.shutdown()
    outer.join(TIMEOUT)
    asker.join(TIMEOUT)
    observed["stopped"] = not outer.is_alive()
    observed["asked"] = not asker.is_alive() and dying.is_set()
    observed["counts"] = len(counts)
    server.server_close()
    first.close()
    second.close()
    return observed


def test_a_handler_dropped_when_nested_serving_calls_end_does_not_hang_connection_count():
    """A reactor serving call stores its open connections for the next one. A nested (or
    concurrent) call's stored connections were once replaced under the lock, so their handlers
    were destroyed with it held; one whose ``__del__`` let the GIL go to a thread asking for
    ``connection_count`` hung both."""
    observed = run_in_fresh_interpreter(
        __file__,
        "nested_serving_drops_connections_outside_the_lock",
        install=False,
        timeout=CHILD_TIMEOUT,
    )
    assert observed == {
        "inner": "inner\n",
        "outer": "outer\n",
        "stopped": True,
        "asked": True,
        "counts": 1,
    }
