"""The pytest plugin ``socketserver_rs.testing``: the ``socketserver_module`` fixture and its
``--socketserver`` option, ``serving()``, and ``compare()``.

What a user's test file gets is checked with pytester, on test files written as a user would
write them (the plugin comes from the installed package's ``pytest11`` entry point there, as
it does for users); ``serving()`` and ``compare()`` are also driven directly, on real servers.
"""

import socket
import struct
import threading

import pytest
import socketserver_rs
from _behaviour_helpers import LOOPBACK
from socketserver_rs.testing import (
    HalfClose,
    Recv,
    RecvAll,
    Send,
    compare,
    serving,
    socketserver_modules,
    stdlib_socketserver,
)

pytestmark = pytest.mark.timeout(60)

# A user's test file: one server test that passes on both modules, one whose handler raises.
USER_TESTS = """
import socket
from socketserver_rs.testing import serving


def test_uppercase(socketserver_module):
    class Handler(socketserver_module.StreamRequestHandler):
        def handle(self):
            self.wfile.write(self.rfile.readline().upper())

    server = socketserver_module.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    with serving(server) as address:
        with socket.create_connection(address, timeout=5) as client:
            client.sendall(b"hello\\n")
            assert client.makefile("rb").readline() == b"HELLO\\n"
    print("ran on", socketserver_module.__name__, type(server).__module__)


def test_handler_raises(socketserver_module):
    class Handler(socketserver_module.BaseRequestHandler):
        def handle(self):
            self.request.recv(100)
            raise ValueError("boom in the handler")

    server = socketserver_module.TCPServer(("127.0.0.1", 0), Handler)
    with serving(server) as address:
        with socket.create_connection(address, timeout=5) as client:
            client.sendall(b"x")
            assert client.recv(100) == b""
"""


def test_a_users_test_runs_once_per_module(pytester):
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest("-v", "-s", "-k", "uppercase")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*test_uppercase?stdlib? ran on socketserver socketserver",
            "PASSED",
            "*test_uppercase?rs? ran on socketserver_rs socketserver_rs",
            "PASSED",
        ]
    )


@pytest.mark.parametrize(
    ("option", "ids"), [("stdlib", ["stdlib"]), ("rs", ["rs"]), ("both", ["stdlib", "rs"])]
)
def test_the_socketserver_option_selects_the_modules(pytester, option, ids):
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest("-v", f"--socketserver={option}", "-k", "uppercase")
    result.assert_outcomes(passed=len(ids))
    result.stdout.fnmatch_lines([f"*test_uppercase?{name}? PASSED*" for name in ids])


def test_a_test_may_parametrize_socketserver_module_itself(pytester):
    pytester.makepyfile(
        test_user="""
        import pytest
        import socketserver_rs

        @pytest.mark.parametrize("socketserver_module", [socketserver_rs], ids=["only-rs"])
        def test_own(socketserver_module):
            assert socketserver_module is socketserver_rs
        """
    )
    result = pytester.runpytest("-v")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_own?only-rs? PASSED*"])


def test_a_bad_socketserver_option_is_a_usage_error(pytester):
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest("--socketserver=asyncio")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--socketserver: invalid choice: 'asyncio'*"])


def test_a_handler_exception_fails_the_test_with_its_own_traceback(pytester):
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest("-k", "handler_raises")
    result.assert_outcomes(failed=2)
    output = result.stdout.str()
    # The handler's own frame and line, on both modules, and the error as raised.
    assert output.count('>       raise ValueError("boom in the handler")') == 2, output
    assert output.count("E       ValueError: boom in the handler") == 2, output
    result.stdout.fnmatch_lines(["FAILED *test_handler_raises?stdlib? - ValueError: boom*"])
    result.stdout.fnmatch_lines(["FAILED *test_handler_raises?rs? - ValueError: boom*"])
    # Reported as the test's failure, not printed by the default handle_error() as well.
    assert "Exception occurred during processing of request" not in output
    assert "Exception occurred during processing of request" not in result.stderr.str()


def test_the_plugin_is_registered_by_its_entry_point_and_inert_unless_used(pytester):
    # A test file that uses nothing of the plugin, in a fresh pytest process.
    pytester.makepyfile(test_plain="def test_nothing():\n    pass\n")
    result = pytester.runpytest_subprocess("-v", "--socketserver=rs")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*test_nothing PASSED*"])
    # The option and the fixture come from the entry point, and go with it.
    listed = pytester.runpytest_subprocess("--fixtures")
    listed.stdout.fnmatch_lines(["*socketserver_module*", "*socketserver_serve*"])
    assert listed.ret == pytest.ExitCode.OK
    blocked = pytester.runpytest_subprocess("-p", "no:socketserver_rs.testing", "--socketserver=rs")
    assert blocked.ret == pytest.ExitCode.USAGE_ERROR
    blocked.stderr.fnmatch_lines(["*unrecognized arguments: --socketserver=rs*"])


def test_the_serve_fixture_stops_the_server_at_teardown_and_reports_handler_errors(pytester):
    pytester.makepyfile(
        test_user="""
        import socket
        seen = {}

        def test_serve(socketserver_module, socketserver_serve):
            class Handler(socketserver_module.BaseRequestHandler):
                def handle(self):
                    raise KeyError("from the handler")

            server = socketserver_module.TCPServer(("127.0.0.1", 0), Handler)
            seen[socketserver_module.__name__] = server
            address = socketserver_serve(server)
            assert address == server.server_address
            with socket.create_connection(address, timeout=5) as client:
                assert client.recv(1) == b""

        def test_closed_at_teardown():
            assert sorted(seen) == ["socketserver", "socketserver_rs"]
            assert all(server.socket.fileno() == -1 for server in seen.values())
        """
    )
    result = pytester.runpytest("-p", "no:randomly")
    result.assert_outcomes(passed=3, errors=2)
    result.stdout.fnmatch_lines(["*ERROR at teardown of test_serve?stdlib?*", "*KeyError*"])


# serving() ----------------------------------------------------------------------------------


def echo_server(ss, handle=None, server_cls=None):
    def default(self):
        self.wfile.write(self.rfile.readline())

    handler = type("Handler", (ss.StreamRequestHandler,), {"handle": handle or default})
    return (server_cls or ss.ThreadingTCPServer)((LOOPBACK, 0), handler)


def test_serving_yields_the_address_serves_and_closes_the_server(ss):
    server = echo_server(ss)
    with serving(server) as address:
        assert address == server.server_address
        with socket.create_connection(address, timeout=5) as client:
            client.sendall(b"one\n")
            assert client.makefile("rb").readline() == b"one\n"
    assert server.socket.fileno() == -1
    # The instance is left as it was found: no hooks of serving()'s stay on it.
    assert "handle_error" not in vars(server)
    assert "close_request" not in vars(server)


def test_serving_reraises_the_first_handler_error_and_still_calls_an_overriding_handle_error(ss):
    calls = []

    def handle(self):
        raise LookupError(self.rfile.readline().strip().decode())

    class Server(ss.TCPServer):
        def handle_error(self, request, client_address):
            calls.append(client_address)

    server = echo_server(ss, handle, Server)
    with pytest.raises(LookupError, match=r"^first$"):
        with serving(server) as address:
            for word in (b"first\n", b"second\n"):
                with socket.create_connection(address, timeout=5) as client:
                    client.sendall(word)
                    assert client.recv(1) == b""
    assert len(calls) == 2


def test_serving_keeps_the_default_handle_error_quiet(ss, capfd):
    server = echo_server(ss, lambda self: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        with serving(server) as address:
            with socket.create_connection(address, timeout=5) as client:
                client.sendall(b"\n")
                assert client.recv(1) == b""
    assert capfd.readouterr().err == ""


def test_serving_reraises_what_escapes_serve_forever(ss):
    raised = threading.Event()

    class Server(ss.TCPServer):
        def service_actions(self):
            raised.set()
            raise RuntimeError("from service_actions")

    server = echo_server(ss, server_cls=Server)
    with pytest.raises(RuntimeError, match="from service_actions"):
        with serving(server):
            assert raised.wait(5)  # after a poll_interval with no request


def test_serving_fails_instead_of_hanging_when_shutdown_does_not_return(ss):
    release = threading.Event()
    entered = threading.Event()

    def handle(self):
        entered.set()
        release.wait(30)  # the serving thread is stuck here: shutdown() cannot finish

    server = echo_server(ss, handle, ss.TCPServer)  # requests run on the serving thread
    try:
        with pytest.raises(AssertionError, match=r"shutdown\(\) did not return within 0.3 s"):
            with serving(server, timeout=0.3) as address:
                client = socket.create_connection(address, timeout=5)
                assert entered.wait(5)
        assert server.socket.fileno() == -1  # closed all the same
    finally:
        release.set()
        client.close()


def test_serving_reraises_a_reactor_handlers_error(rs):
    class Handler(rs.MessageHandler):
        framing = "line"

        def handle_message(self, message):
            if message == b"fail\n":
                raise KeyError("from handle_message")
            return message.upper()

    server = rs.ReactorTCPServer((LOOPBACK, 0), Handler)
    with pytest.raises(KeyError, match="from handle_message"):
        with serving(server) as address:
            with socket.create_connection(address, timeout=5) as client:
                client.sendall(b"ok\n")
                assert client.recv(10) == b"OK\n"
                client.sendall(b"fail\n")
                assert client.recv(10) == b""  # the reactor closes that connection
    assert server.socket.fileno() == -1


def test_compare_refuses_a_server_whose_requests_it_cannot_count(rs):
    def make(ss):
        handler = type("Handler", (rs.MessageHandler,), {"framing": "line"})
        return rs.ReactorTCPServer((LOOPBACK, 0), handler)

    with pytest.raises(TypeError, match="cannot tell when a request of ReactorTCPServer ends"):
        compare(make, [Send(b"x\n")], modules=[rs])


def test_the_body_error_is_kept_as_the_context_of_a_handler_error(ss):
    server = echo_server(ss, lambda self: 1 / 0)
    with pytest.raises(ZeroDivisionError) as raised:
        with serving(server) as address:
            with socket.create_connection(address, timeout=5) as client:
                client.sendall(b"\n")
                reply = client.recv(1)
            assert reply == b"something", "the client's own check"
    assert isinstance(raised.value.__context__, AssertionError)


# compare() ----------------------------------------------------------------------------------


def line_server(ss):
    class Handler(ss.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                if line == b"fail\n":
                    raise RuntimeError("asked to fail")
                self.wfile.write(line.upper())

    return ss.ThreadingTCPServer((LOOPBACK, 0), Handler)


def test_compare_returns_the_transcript_both_modules_agree_on():
    transcript = compare(
        line_server,
        [Send(b"a\n"), Recv(2), Send(b"b\nc\n"), HalfClose(), RecvAll()],
        [Send(b"fail\n"), RecvAll()],
    )
    assert transcript.replies == ((b"A\n", b"B\nC\n"), (b"",))
    assert transcript.errors == ("RuntimeError: asked to fail",)


def test_compare_fails_on_different_replies():
    def make(ss):
        if ss is not socketserver_rs:
            return line_server(ss)

        class Handler(ss.StreamRequestHandler):
            def handle(self):
                self.rfile.readline()  # all the client sends: no reset at close
                self.wfile.write(b"x\n")

        return ss.TCPServer((LOOPBACK, 0), Handler)

    with pytest.raises(AssertionError, match=r"socketserver_rs and socketserver differ") as raised:
        compare(make, [Send(b"a\n"), HalfClose(), RecvAll()])
    message = str(raised.value)
    assert "replies=((b'A\\n',),)" in message and "replies=((b'x\\n',),)" in message


def test_compare_fails_on_different_handle_error_calls():
    def make(ss):
        class Handler(ss.BaseRequestHandler):
            def handle(self):
                self.request.recv(10)
                if ss is not socketserver_rs:
                    raise OSError("only on one module")

        return ss.TCPServer((LOOPBACK, 0), Handler)

    with pytest.raises(AssertionError, match=r"errors=\('OSError: only on one module',\)"):
        compare(make, [Send(b"x"), RecvAll()])


def test_compare_tells_a_reset_from_a_close():
    def make(ss):
        class Handler(ss.BaseRequestHandler):
            def handle(self):
                self.request.recv(10)
                if ss is socketserver_rs:  # closed with a zero linger time: a reset
                    self.request.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self.request.close()

        return ss.TCPServer((LOOPBACK, 0), Handler)

    with pytest.raises(AssertionError) as raised:
        compare(make, [Send(b"x"), RecvAll()])
    assert "replies=((b'',),)" in str(raised.value)
    assert "replies=(('<reset>',),)" in str(raised.value)


def test_compare_plays_datagram_clients():
    def make(ss):
        class Handler(ss.DatagramRequestHandler):
            def handle(self):
                self.wfile.write(self.rfile.read()[::-1])

        return ss.UDPServer((LOOPBACK, 0), Handler)

    transcript = compare(make, [Send(b"abc"), Recv(), Send(b"xy"), Recv()], [Send(b"z"), Recv()])
    assert transcript.replies == ((b"cba", b"yx"), (b"z",))
    assert transcript.errors == ()


def test_compare_reports_a_request_that_never_finishes():
    def make(ss):
        class Handler(ss.BaseRequestHandler):
            def handle(self):
                self.request.recv(10)  # the client never sends: waits for its close

        return ss.ThreadingTCPServer((LOOPBACK, 0), Handler)

    # A client that keeps its connection until the timeout: the step reports "<timeout>",
    # then the client closes and the request ends.
    transcript = compare(make, [Recv(1)], timeout=0.3)
    assert transcript.replies == (("<timeout>",),)


# The two modules ----------------------------------------------------------------------------


def test_the_modules_are_the_stdlibs_socketserver_and_socketserver_rs():
    import socketserver

    assert socketserver_modules() == [("stdlib", socketserver), ("rs", socketserver_rs)]
    assert socketserver_modules("rs") == [("rs", socketserver_rs)]
    with pytest.raises(ValueError, match="stdlib, rs or both"):
        socketserver_modules("trio")


def test_the_stdlib_module_is_the_stdlibs_even_after_install(monkeypatch):
    import socketserver

    monkeypatch.setitem(__import__("sys").modules, "socketserver", socketserver_rs)
    stdlib = stdlib_socketserver()
    assert stdlib is not socketserver_rs
    assert stdlib.__file__ == socketserver.__file__
    assert stdlib.TCPServer.__module__ == "socketserver"
