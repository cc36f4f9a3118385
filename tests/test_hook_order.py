"""The order in which the server and handler hooks are called, recorded for TCP, UDP, Unix
stream and Unix datagram servers, through ``handle_request()`` and ``serve_forever()``.

The expected sequences are the stdlib's: every test runs on both modules.
"""

import pytest
from _behaviour_helpers import (
    HAS_FORK,
    POLL,
    SERVED_HOOKS,
    SOCKET_KINDS,
    client_reply,
    client_send,
    collapse_service_actions,
    recording,
    recording_handler,
    server_address,
    server_class,
    wait_for,
)

# Bounded per test, well above what any test needs, so a hang fails fast.
pytestmark = pytest.mark.timeout(60)

KINDS = SOCKET_KINDS


def make(harness, ss, kind, unix_dir, base=None, fail=None, **attrs):
    cls = recording(base or server_class(ss, kind))
    return harness.server(
        cls, server_address(kind, unix_dir), recording_handler(ss, fail=fail), **attrs
    )


@pytest.mark.parametrize("kind", KINDS)
def test_handle_request_calls_hooks_in_stdlib_order(ss, harness, unix_dir, kind):
    server = make(harness, ss, kind, unix_dir, timeout=5.0)
    client, _ = client_send(harness, server, kind, b"a", unix_dir)
    server.handle_request()
    assert client_reply(client, kind) == b"echo:a"
    assert server.log == SERVED_HOOKS


@pytest.mark.parametrize("kind", KINDS)
def test_serve_forever_calls_hooks_in_stdlib_order(ss, harness, unix_dir, kind):
    server = make(harness, ss, kind, unix_dir)
    serving = harness.serve(server, poll_interval=POLL)
    for i in range(2):
        client, _ = client_send(harness, server, kind, b"b", unix_dir, f"c{i}.sock")
        assert client_reply(client, kind) == b"echo:b"
    assert wait_for(lambda: server.log[-1:] == ["service_actions"])
    serving.stop()
    assert collapse_service_actions(server.log) == ([*SERVED_HOOKS, "service_actions"]) * 2


@pytest.mark.parametrize("kind", KINDS)
def test_handle_request_that_times_out_only_calls_handle_timeout(ss, harness, unix_dir, kind):
    server = make(harness, ss, kind, unix_dir, timeout=0.05)
    server.handle_request()
    assert server.log == ["handle_timeout"]


@pytest.mark.parametrize("kind", KINDS)
def test_rejected_request_is_shut_down_without_processing(ss, harness, unix_dir, kind):
    server = make(harness, ss, kind, unix_dir, timeout=5.0)
    server.verify_request = lambda request, client_address: (
        server.log.append("verify_request") or False
    )
    client, _ = client_send(harness, server, kind, b"no", unix_dir)
    server.handle_request()
    assert server.log == ["verify_request", "shutdown_request", "close_request"]
    if kind in ("tcp", "unix_stream"):
        # Closed without a reply; closing with the request unread may reset the connection.
        try:
            reply = client_reply(client, kind)
        except ConnectionResetError:
            reply = b""
        assert reply == b""


@pytest.mark.parametrize("kind", KINDS)
def test_handler_exception_calls_handle_error_then_shutdown_request(ss, harness, unix_dir, kind):
    server = make(harness, ss, kind, unix_dir, fail=ValueError("boom"), timeout=5.0)
    client_send(harness, server, kind, b"e", unix_dir)
    server.handle_request()
    assert server.log == [
        "verify_request",
        "process_request",
        "finish_request",
        "setup",
        "handle",
        "finish",
        "handle_error",
        "shutdown_request",
        "close_request",
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_handler_exception_under_serve_forever_is_followed_by_service_actions(
    ss, harness, unix_dir, kind
):
    server = make(harness, ss, kind, unix_dir, fail=ValueError("boom"))
    serving = harness.serve(server, poll_interval=POLL)
    client_send(harness, server, kind, b"e", unix_dir)
    assert wait_for(lambda: "close_request" in server.log)
    assert wait_for(lambda: server.log[-1:] == ["service_actions"])
    serving.stop()
    assert collapse_service_actions(server.log) == [
        "verify_request",
        "process_request",
        "finish_request",
        "setup",
        "handle",
        "finish",
        "handle_error",
        "shutdown_request",
        "close_request",
        "service_actions",
    ]


@pytest.mark.parametrize("kind", KINDS)
def test_threading_server_runs_the_request_hooks_on_the_request_thread(ss, harness, unix_dir, kind):
    threading_base = {
        "tcp": ss.ThreadingTCPServer,
        "udp": ss.ThreadingUDPServer,
        "unix_stream": getattr(ss, "ThreadingUnixStreamServer", None),
        "unix_dgram": getattr(ss, "ThreadingUnixDatagramServer", None),
    }[kind]
    server = make(harness, ss, kind, unix_dir, base=threading_base, timeout=5.0)
    client, _ = client_send(harness, server, kind, b"t", unix_dir)
    server.handle_request()
    assert client_reply(client, kind) == b"echo:t"
    server.server_close()  # joins the request thread
    assert server.log == SERVED_HOOKS


@pytest.mark.skipif(not HAS_FORK, reason="ForkingMixIn needs os.fork")
def test_forking_server_parent_closes_its_copy_of_the_request(ss, harness):
    """In the parent only verify/process/close_request run; the child does the rest."""
    server = make(harness, ss, "tcp", None, base=ss.ForkingTCPServer, timeout=5.0)
    client, _ = client_send(harness, server, "tcp", b"f", None)
    server.handle_request()
    assert client_reply(client, "tcp") == b"echo:f"
    server.server_close()
    assert server.log == ["verify_request", "process_request", "close_request"]
