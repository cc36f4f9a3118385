"""Starting a request or worker thread without losing a Ctrl-C that lands in ``start()``.

``Thread.start()`` waits for the new thread on an Event, whose Condition re-takes its lock in
a Python method (``Condition._acquire_restore``). A signal handler that raises there, at the
method's first instruction, leaves the lock released; the ``with`` block's exit then raises
``RuntimeError("release unlocked lock")``, with the handler's exception only as its context.
A serving loop hands a RuntimeError from ``process_request()`` to ``handle_error()`` and
serves on, so the Ctrl-C is lost, as it is with the stdlib's ``ThreadingMixIn`` (CPython 3.11
to 3.13 alike). By then the new thread has been launched: it runs.
"""

import threading


def start_thread(thread: threading.Thread) -> None:
    """``thread.start()``; when a signal handler's exception cut it short, that exception."""
    try:
        thread.start()
    except RuntimeError as error:
        interruption = error.__context__
        if interruption is None or isinstance(interruption, Exception):
            raise
        raise interruption from None
