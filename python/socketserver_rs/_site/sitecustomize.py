"""Installs socketserver_rs at interpreter start, for ``python -m socketserver_rs run``.

Imported by ``site`` only in interpreters whose ``PYTHONPATH`` holds this directory, which
the launcher puts there: a plain ``python`` never sees it. It makes ``import socketserver``
resolve to socketserver_rs, then does what ``site`` would have done without it (import the
``sitecustomize`` it shadows, if there is one) and takes this directory back off
``sys.path``, so the program sees the path a plain ``python`` would give it. ``PYTHONPATH``
itself keeps the entry: that is how child processes get the swap too.

An interpreter that cannot import socketserver_rs (another Python started by the program,
which inherits ``PYTHONPATH``) stays on the stdlib. Written for any Python 3, for that reason.
"""

import importlib
import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))


def _is_here(entry):
    # type: (str) -> bool
    return os.path.abspath(entry or os.curdir) == _HERE


def _install():
    # type: () -> None
    try:
        import socketserver_rs
    except ImportError:
        return  # not installed for this interpreter: it stays on the stdlib
    socketserver_rs.install()


def _chain():
    # type: () -> None
    """Import the ``sitecustomize`` that this one shadows, as ``site`` would have."""
    sys.path[:] = [entry for entry in sys.path if not _is_here(entry)]
    ours = sys.modules.pop("sitecustomize", None)
    try:
        importlib.import_module("sitecustomize")
    except ImportError as error:
        if error.name != "sitecustomize":
            raise  # theirs exists and failed: site reports it, as it would without us
        if ours is not None:  # there is none: this module stays the one imported
            sys.modules["sitecustomize"] = ours


# First the swap, so that a sitecustomize of the user's that imports http.server gets it too.
_install()
_chain()
