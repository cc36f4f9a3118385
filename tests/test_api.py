"""The public surface: names, class attributes and defaults, class composition and method
signatures are the stdlib's."""

import inspect
import socket
import socketserver
import sys
import warnings

import pytest
import socketserver_rs
from _behaviour_helpers import HAS_FORK, HAS_UNIX

# Bounded per test, well above what any test needs, so a hang fails fast.
pytestmark = pytest.mark.timeout(60)

# Names socketserver_rs exports beyond the running stdlib's, each documented: install()
# (swap it in for stdlib consumers), the Forking Unix servers the stdlib gained in 3.12
# (offered on every version), and the opt-in servers of DESIGN.md's "Beyond the stdlib"
# (pooled threading, reactor servers, prefork workers).
DOCUMENTED_EXTRAS = {
    "PreforkMixIn",
    "install",
    "listen_fds",
    "sd_notify",
    "ForkingUnixStreamServer",
    "ForkingUnixDatagramServer",
    "ThreadPoolMixIn",
    "ThreadPoolTCPServer",
    "ThreadPoolUDPServer",
    "ThreadPoolUnixStreamServer",
    "ThreadPoolUnixDatagramServer",
    "ReactorTCPServer",
    "ReactorUDPServer",
    "ReactorUnixStreamServer",
    "MessageHandler",
    "TLSConfigError",
}

STDLIB_CLASSES = sorted(
    name for name in socketserver.__all__ if isinstance(getattr(socketserver, name), type)
)


def test_all_contains_every_stdlib_name():
    missing = set(socketserver.__all__) - set(socketserver_rs.__all__)
    assert not missing


def test_all_adds_only_documented_extras():
    extras = set(socketserver_rs.__all__) - set(socketserver.__all__)
    assert extras <= DOCUMENTED_EXTRAS
    assert "install" in socketserver_rs.__all__


def test_all_has_no_duplicates_and_every_name_exists(ss):
    assert len(ss.__all__) == len(set(ss.__all__))
    for name in ss.__all__:
        assert hasattr(ss, name), name


@pytest.mark.skipif(not (HAS_FORK and HAS_UNIX), reason="needs os.fork and AF_UNIX")
def test_forking_unix_servers_are_composed_like_the_stdlib_312_ones(rs):
    """socketserver_rs only: documented extra on Python < 3.12 (3.12's stdlib has them)."""
    assert rs.ForkingUnixStreamServer.__bases__ == (rs.ForkingMixIn, rs.UnixStreamServer)
    assert rs.ForkingUnixDatagramServer.__bases__ == (rs.ForkingMixIn, rs.UnixDatagramServer)


def test_every_public_class_says_it_lives_in_its_module(ss):
    for name in ss.__all__:
        value = getattr(ss, name)
        if isinstance(value, type):
            assert value.__module__ == ss.__name__, name
            assert value.__qualname__ == name


# (class, attribute, stdlib default). Not here: request_queue_size, a deliberate difference
# (4096 instead of 5) pinned in test_deliberate_differences.py.
DEFAULTS = [
    ("BaseServer", "timeout", None),
    ("TCPServer", "address_family", socket.AF_INET),
    ("TCPServer", "socket_type", socket.SOCK_STREAM),
    ("TCPServer", "allow_reuse_address", False),
    ("TCPServer", "allow_reuse_port", False),
    ("TCPServer", "timeout", None),
    ("UDPServer", "address_family", socket.AF_INET),
    ("UDPServer", "socket_type", socket.SOCK_DGRAM),
    ("UDPServer", "max_packet_size", 8192),
    ("UDPServer", "allow_reuse_address", False),
    ("UDPServer", "allow_reuse_port", False),
    ("ThreadingMixIn", "daemon_threads", False),
    ("ThreadingMixIn", "block_on_close", True),
    ("ThreadingTCPServer", "daemon_threads", False),
    ("ThreadingTCPServer", "block_on_close", True),
    ("ThreadingUDPServer", "daemon_threads", False),
    ("ThreadingUDPServer", "max_packet_size", 8192),
    ("StreamRequestHandler", "rbufsize", -1),
    ("StreamRequestHandler", "wbufsize", 0),
    ("StreamRequestHandler", "timeout", None),
    ("StreamRequestHandler", "disable_nagle_algorithm", False),
]
if HAS_FORK:
    DEFAULTS += [
        ("ForkingMixIn", "timeout", 300),
        ("ForkingMixIn", "max_children", 40),
        ("ForkingMixIn", "block_on_close", True),
        ("ForkingMixIn", "active_children", None),
        ("ForkingTCPServer", "timeout", 300),
        ("ForkingUDPServer", "timeout", 300),
        ("ForkingUDPServer", "max_packet_size", 8192),
    ]
if HAS_UNIX:
    DEFAULTS += [
        ("UnixStreamServer", "address_family", socket.AF_UNIX),
        ("UnixStreamServer", "socket_type", socket.SOCK_STREAM),
        ("UnixDatagramServer", "address_family", socket.AF_UNIX),
        ("UnixDatagramServer", "socket_type", socket.SOCK_DGRAM),
        ("UnixDatagramServer", "max_packet_size", 8192),
        ("ThreadingUnixStreamServer", "address_family", socket.AF_UNIX),
        ("ThreadingUnixStreamServer", "daemon_threads", False),
        ("ThreadingUnixDatagramServer", "address_family", socket.AF_UNIX),
        ("ThreadingUnixDatagramServer", "block_on_close", True),
    ]


@pytest.mark.parametrize(
    ("class_name", "attribute", "default"),
    DEFAULTS,
    ids=[f"{c}.{a}" for c, a, _ in DEFAULTS],
)
def test_class_attribute_has_the_stdlib_default(ss, class_name, attribute, default):
    cls = getattr(ss, class_name)
    assert getattr(cls, attribute) == default
    assert type(getattr(cls, attribute)) is type(default)


# Each class's direct bases, by name, as the stdlib composes them.
BASES = {
    "BaseServer": ("object",),
    "TCPServer": ("BaseServer",),
    "UDPServer": ("TCPServer",),
    "ThreadingMixIn": ("object",),
    "ThreadingTCPServer": ("ThreadingMixIn", "TCPServer"),
    "ThreadingUDPServer": ("ThreadingMixIn", "UDPServer"),
    "BaseRequestHandler": ("object",),
    "StreamRequestHandler": ("BaseRequestHandler",),
    "DatagramRequestHandler": ("BaseRequestHandler",),
}
if HAS_FORK:
    BASES |= {
        "ForkingMixIn": ("object",),
        "ForkingTCPServer": ("ForkingMixIn", "TCPServer"),
        "ForkingUDPServer": ("ForkingMixIn", "UDPServer"),
    }
if HAS_UNIX:
    BASES |= {
        "UnixStreamServer": ("TCPServer",),
        "UnixDatagramServer": ("UDPServer",),
        "ThreadingUnixStreamServer": ("ThreadingMixIn", "UnixStreamServer"),
        "ThreadingUnixDatagramServer": ("ThreadingMixIn", "UnixDatagramServer"),
    }


@pytest.mark.parametrize("class_name", sorted(BASES))
def test_class_is_composed_from_the_stdlib_bases(ss, class_name):
    cls = getattr(ss, class_name)
    assert tuple(base.__name__ for base in cls.__bases__) == BASES[class_name]
    for base in cls.__bases__:
        if base is not object:
            assert base is getattr(ss, base.__name__)


@pytest.mark.parametrize("class_name", STDLIB_CLASSES)
def test_method_resolution_order_matches_the_stdlib(class_name):
    ours = [c.__name__ for c in getattr(socketserver_rs, class_name).__mro__]
    theirs = [c.__name__ for c in getattr(socketserver, class_name).__mro__]
    assert ours == theirs


def _stdlib_methods(cls):
    """Names of the methods the stdlib class has that callers or subclasses use: public
    ones, the overridable ``_handle_request_noblock`` excluded, plus ``__init__``."""
    names = []
    for name, value in inspect.getmembers(cls):
        if not callable(value) or isinstance(value, type):
            continue
        if name.startswith("_") and name != "__init__":
            continue
        names.append(name)
    return names


@pytest.mark.parametrize("class_name", STDLIB_CLASSES)
def test_public_method_signatures_equal_the_stdlib(class_name):
    theirs = getattr(socketserver, class_name)
    ours = getattr(socketserver_rs, class_name)
    for name in _stdlib_methods(theirs):
        assert hasattr(ours, name), f"{class_name}.{name} is missing"
        expected = inspect.signature(getattr(theirs, name))
        if name == "shutdown":
            # The one documented extension: shutdown(timeout=None), a graceful drain; the
            # stdlib's call, shutdown(), means what it always meant.
            assert list(expected.parameters) == ["self"]
            expected = expected.replace(
                parameters=[
                    *expected.parameters.values(),
                    inspect.Parameter(
                        "timeout", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None
                    ),
                ]
            )
        assert inspect.signature(getattr(ours, name)) == expected, f"{class_name}.{name}"


def _call_shape(function):
    """A signature with the names of ``*args``/``**kwargs`` parameters blanked: callers can
    never pass those by name, so only their presence matters."""
    parameters = []
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            parameters.append((parameter.kind, None, None))
        else:
            parameters.append((parameter.kind, parameter.name, parameter.default))
    return parameters


@pytest.mark.parametrize(
    "class_name", [n for n in STDLIB_CLASSES if hasattr(getattr(socketserver, n), "__exit__")]
)
def test_context_manager_methods_are_called_like_the_stdlib(class_name):
    theirs = getattr(socketserver, class_name)
    ours = getattr(socketserver_rs, class_name)
    for name in ("__enter__", "__exit__"):
        assert _call_shape(getattr(ours, name)) == _call_shape(getattr(theirs, name))


VERSION_DEPRECATION = "'__version__' is deprecated and slated for removal in Python 3.20"


def test_reading_version_warns_from_3_15_on_as_the_stdlib_does(ss):
    """``__version__`` is a string in both (the stdlib's own, socketserver_rs's distribution
    version). From CPython 3.15 on every read of it warns, pointing at the reader; before,
    none does."""
    for _ in range(2):  # every read, not only the first
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = ss.__version__
        deprecations = [w for w in caught if issubclass(w.category, DeprecationWarning)]
        if sys.version_info >= (3, 15):
            assert [str(w.message) for w in deprecations] == [VERSION_DEPRECATION]
            assert deprecations[0].filename == __file__
        else:
            assert deprecations == []
        assert isinstance(value, str) and value
