"""Shared fixtures.

``ss`` parametrises a test over the standard library's ``socketserver`` (id ``stdlib``, the
oracle) and ``socketserver_rs`` (id ``rs``): such a test pins stdlib behaviour and must pass
for both. It is our own plugin's ``socketserver_module`` (``socketserver_rs.testing``, loaded
through its ``pytest11`` entry point), so ``--socketserver=stdlib|rs`` narrows the suite to one
module. ``harness`` owns servers, serving threads, clients and child processes and tears them
all down, bounded in time.
"""

import shutil
import tempfile

import pytest
import socketserver_rs

# pytester: the plugin's own tests run test files of a user's in a scratch directory. Our
# plugin is named too, though its entry point loads it already (pytest registers it once):
# this is where ``socketserver_module`` comes from.
pytest_plugins = ["pytester", "socketserver_rs.testing"]


@pytest.fixture
def ss(socketserver_module):
    """The module under test: ``socketserver`` or ``socketserver_rs``."""
    return socketserver_module


@pytest.fixture
def rs():
    """``socketserver_rs`` alone, for tests of deliberate differences or internals."""
    return socketserver_rs


@pytest.fixture
def harness():
    from _behaviour_helpers import Harness

    owner = Harness()
    try:
        yield owner
    finally:
        owner.close()


@pytest.fixture
def unix_dir(tmp_path):
    """A directory for Unix socket paths: ``tmp_path``, unless its paths would not fit in
    ``sockaddr_un`` (108 bytes on Linux); then a short directory under the temp dir."""
    if len(str(tmp_path)) <= 80:
        yield tmp_path
        return
    short = tempfile.mkdtemp(prefix="ssb")
    try:
        yield short
    finally:
        shutil.rmtree(short, ignore_errors=True)


@pytest.fixture(scope="session")
def tls_material(tmp_path_factory):
    """PEM files for the TLS tests (see ``_tls_material``): a CA, two server certificates,
    an RSA one, a client certificate and a key that matches none of them."""
    from _tls_material import make_tls_material

    return make_tls_material(tmp_path_factory.mktemp("tls"))
