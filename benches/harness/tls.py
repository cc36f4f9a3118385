"""Certificates for the TLS scenarios, made at bench time: the tests' own
``tests/_tls_material.py`` (a private CA and ECDSA P-256 server certificates for
``localhost``/127.0.0.1, written with ``cryptography``), imported by path so the benchmark
and the tests use one maker."""

import importlib.util
import sys

from .processes import REPO

MATERIAL = REPO / "tests" / "_tls_material.py"


def make_material(directory):
    """Writes a CA and server certificates into ``directory``; returns the ``TlsMaterial``
    (``ca_cert``, ``server_cert``, ``server_key``, ...)."""
    name = "_tls_material"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, MATERIAL)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # its dataclass looks its module up by name
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
    return module.make_tls_material(directory)
