"""Running the stdlib's own socketserver consumers (``http.server``, ``xmlrpc.server``,
``wsgiref.simple_server``, ``logging.handlers``' receivers …) on socketserver_rs.

Those modules subclass ``socketserver`` classes when they are imported, so the swap has to
happen first: ``install()`` makes ``import socketserver`` resolve to this package.
"""

import sys
from types import ModuleType

__all__ = ["install"]

# Modules that subclass socketserver classes at import time.
_CONSUMERS = ("http.server", "xmlrpc.server", "wsgiref.simple_server", "logging.config")


def install() -> ModuleType:
    """Make ``import socketserver`` return ``socketserver_rs`` from now on.

    Call it before importing ``http.server``, ``xmlrpc.server``, ``wsgiref.simple_server``
    or anything else built on ``socketserver``. Raises ``RuntimeError`` if one of those was
    already imported (its classes would still be built on the stdlib module), unless the
    swap is already in place. Returns the module now behind ``socketserver``.
    """
    package = sys.modules[__package__]
    current = sys.modules.get("socketserver")
    if current is package:
        return package
    too_late = sorted(name for name in _CONSUMERS if name in sys.modules)
    if current is not None and too_late:
        raise RuntimeError(
            "socketserver_rs.install() must run before importing "
            + ", ".join(too_late)
            + ": they are already built on the standard socketserver"
        )
    sys.modules["socketserver"] = package
    return package
