"""Stdlib modules built on ``socketserver`` run unmodified on socketserver_rs.

``http.server``, ``xmlrpc.server``, ``wsgiref.simple_server`` and ``logging.config`` subclass
``socketserver`` classes when they are imported, so each scenario runs in a fresh interpreter
that calls ``socketserver_rs.install()`` before anything else (see ``_subprocess_helpers``),
checks that the server really is built on socketserver_rs, and drives it with a real client
over loopback. Every scenario also runs on the stdlib ``socketserver`` (no ``install()``): the
same client assertions must pass for both.

Functions named ``scenario_*`` run in the child and return JSON-able observations; the
``test_*`` functions run them and assert.
"""

import os
import shutil
import sys

import pytest
from _subprocess_helpers import run_in_fresh_interpreter, run_process

RS = "socketserver_rs"
STDLIB = "socketserver"
IMPLEMENTATIONS = [pytest.param(RS, id="rs"), pytest.param(STDLIB, id="stdlib")]
CLIENT_TIMEOUT = 10  # seconds, for every socket and client call in a scenario
CHILD_TIMEOUT = 60  # seconds, for a whole scenario in its child interpreter


def _scenario(name, implementation, *args, cwd=None):
    return run_in_fresh_interpreter(
        __file__, name, args, install=implementation == RS, timeout=CHILD_TIMEOUT, cwd=cwd
    )


def _assert_built_on(observed, implementation):
    """The server a scenario ran was built on ``implementation``'s classes, not the other's."""
    assert observed["socketserver_module"] == implementation
    if implementation == RS:
        assert observed["is_socketserver_rs_server"]
        assert "BaseServer" in observed["socketserver_rs_bases"]
        assert observed["stdlib_bases"] == []
        assert not observed["stdlib_socketserver_loaded"]
    else:
        assert not observed["is_socketserver_rs_server"]
        assert observed["socketserver_rs_bases"] == []
        assert "BaseServer" in observed["stdlib_bases"]


# --- child-side helpers -----------------------------------------------------------------------


def _provenance(server):
    """Where ``server``'s class comes from, as seen in the child."""
    import sysconfig

    import socketserver_rs  # importing it never imports the stdlib module

    stdlib_file = os.path.join(sysconfig.get_paths()["stdlib"], "socketserver.py")
    loaded = any(
        getattr(module, "__file__", None)
        and os.path.exists(module.__file__)
        and os.path.samefile(module.__file__, stdlib_file)
        for module in list(sys.modules.values())
    )
    mro = type(server).__mro__
    return {
        "socketserver_module": sys.modules["socketserver"].__name__,
        "server_class": f"{type(server).__module__}.{type(server).__qualname__}",
        "is_socketserver_rs_server": isinstance(server, socketserver_rs.BaseServer),
        "socketserver_rs_bases": [cls.__name__ for cls in mro if cls.__module__ == RS],
        "stdlib_bases": [cls.__name__ for cls in mro if cls.__module__ == STDLIB],
        "stdlib_socketserver_loaded": loaded,
    }


class _Serving:
    """Context manager: ``serve_forever()`` in a thread; on exit shut down, join, close."""

    def __init__(self, server):
        self.server = server
        self.thread = None

    def __enter__(self):
        import threading

        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        return self.server

    def __exit__(self, *exc_info):
        try:
            self.server.shutdown()
            self.thread.join(CLIENT_TIMEOUT)
            assert not self.thread.is_alive(), "serve_forever() did not return after shutdown()"
        finally:
            self.server.server_close()


def _quiet(handler_class):
    """``handler_class`` without the per-request access log on stderr."""

    class Quiet(handler_class):
        def log_message(self, format, *args):
            pass

    Quiet.__name__ = Quiet.__qualname__ = "Quiet" + handler_class.__name__
    return Quiet


def _lower_keys(headers):
    return {name.lower(): value for name, value in headers.items()}


def _http_get(url, context=None):
    """``(status, headers, body text)`` of a GET with urllib, HTTP errors included; header
    names are lower-cased (http.server sends ``Content-type``)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=CLIENT_TIMEOUT, context=context) as response:
            return response.status, _lower_keys(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, _lower_keys(error.headers), error.read().decode()


# --- http.server ------------------------------------------------------------------------------


def scenario_simple_http_server_serves_directory(directory):
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(_quiet(SimpleHTTPRequestHandler), directory=directory)
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    with _Serving(server):
        base = f"http://127.0.0.1:{server.server_address[1]}"
        file_status, file_headers, file_body = _http_get(base + "/hello.txt")
        listing_status, _, listing = _http_get(base + "/")
        missing_status, _, _ = _http_get(base + "/no-such-file.txt")
    return {
        "provenance": _provenance(server),
        "file": [file_status, file_headers.get("content-type"), file_body],
        "listing": [listing_status, "hello.txt" in listing],
        "missing_status": missing_status,
    }


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_threading_http_server_serves_files_to_urllib(implementation, tmp_path):
    (tmp_path / "hello.txt").write_text("hello from a tmp directory\n")
    observed = _scenario(
        "scenario_simple_http_server_serves_directory", implementation, str(tmp_path)
    )
    _assert_built_on(observed["provenance"], implementation)
    assert observed["provenance"]["server_class"] == "http.server.ThreadingHTTPServer"
    assert observed["file"] == [200, "text/plain", "hello from a tmp directory\n"]
    assert observed["listing"] == [200, True]
    assert observed["missing_status"] == 404


def scenario_http11_keep_alive(request_count):
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    connections = []
    lock = threading.Lock()

    class KeepAliveHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self):
            super().setup()
            with lock:
                connections.append(self.client_address)
            self.served = 0

        def _reply(self, body):
            self.served += 1
            payload = f"{body} #{self.served} from port {self.client_address[1]}".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self):
            self._reply(f"GET {self.path}")

        def do_POST(self):
            length = int(self.headers["Content-Length"])
            self._reply("POST " + self.rfile.read(length).decode())

        def log_message(self, format, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), KeepAliveHandler)
    responses = []
    with _Serving(server):
        conn = http.client.HTTPConnection(
            "127.0.0.1", server.server_address[1], timeout=CLIENT_TIMEOUT
        )
        try:
            client_ports = set()
            for i in range(request_count):
                if i % 2:
                    conn.request("POST", "/echo", body=f"body {i}")
                else:
                    conn.request("GET", f"/item/{i}")
                response = conn.getresponse()
                responses.append(
                    [
                        response.status,
                        response.version,
                        response.read().decode(),
                        response.getheader("Connection"),
                    ]
                )
                client_ports.add(conn.sock.getsockname()[1])
        finally:
            conn.close()
    return {
        "provenance": _provenance(server),
        "responses": responses,
        "client_ports": sorted(client_ports),
        "connections_accepted": len(connections),
        "connection_ports": [address[1] for address in connections],
    }


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_http11_keep_alive_serves_several_requests_on_one_connection(implementation):
    count = 6
    observed = _scenario("scenario_http11_keep_alive", implementation, count)
    _assert_built_on(observed["provenance"], implementation)
    assert observed["connections_accepted"] == 1
    (port,) = observed["connection_ports"]
    assert observed["client_ports"] == [port]
    expected = []
    for i in range(count):
        body = f"POST body {i}" if i % 2 else f"GET /item/{i}"
        expected.append([200, 11, f"{body} #{i + 1} from port {port}", None])
    assert observed["responses"] == expected


def scenario_curl_fetches(directory, curl):
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(_quiet(SimpleHTTPRequestHandler), directory=directory)
    # HTTP/1.1 so curl can reuse its connection for the second URL.
    handler.func.protocol_version = "HTTP/1.1"
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    with _Serving(server):
        base = f"http://127.0.0.1:{server.server_address[1]}"
        returncode, stdout, stderr = run_process(
            [
                curl,
                "--silent",
                "--show-error",
                "--http1.1",
                "--max-time",
                str(CLIENT_TIMEOUT),
                "--write-out",
                r"\n%{http_code} %{num_connects}\n",
                base + "/hello.txt",
                base + "/hello.txt",
            ],
            timeout=CLIENT_TIMEOUT + 5,
        )
    return {
        "provenance": _provenance(server),
        "returncode": returncode,
        "stdout": stdout,
        "stderr": stderr,
    }


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_curl_fetches_files_over_one_kept_alive_connection(implementation, tmp_path):
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    (tmp_path / "hello.txt").write_text("hello, curl\n")
    observed = _scenario("scenario_curl_fetches", implementation, str(tmp_path), curl)
    _assert_built_on(observed["provenance"], implementation)
    assert observed["returncode"] == 0, observed["stderr"]
    # Each transfer prints the file, then "<status> <new connections made>".
    assert observed["stdout"] == "hello, curl\n\n200 1\nhello, curl\n\n200 0\n"


# --- xmlrpc.server ----------------------------------------------------------------------------


def scenario_xmlrpc_calls():
    import xmlrpc.client
    from xmlrpc.server import SimpleXMLRPCServer

    server = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False, allow_none=True)
    server.register_function(lambda a, b: a + b, "add")
    server.register_function(lambda a, b: a / b, "divide")
    server.register_introspection_functions()

    def call(proxy, name, *args):
        try:
            return ["ok", getattr(proxy, name)(*args)]
        except xmlrpc.client.Fault as fault:
            return ["fault", fault.faultCode, fault.faultString]

    with _Serving(server):
        url = f"http://127.0.0.1:{server.server_address[1]}/RPC2"
        with xmlrpc.client.ServerProxy(url, allow_none=True) as proxy:
            calls = {
                "add": call(proxy, "add", 2, 3),
                "add_strings": call(proxy, "add", "socket", "server"),
                "divide": call(proxy, "divide", 7, 2),
                "divide_by_zero": call(proxy, "divide", 1, 0),
                "unknown": call(proxy, "no_such_method"),
                "methods": call(proxy, "system.listMethods"),
            }
    return {"provenance": _provenance(server), "calls": calls}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_simple_xmlrpc_server_answers_calls_and_faults(implementation):
    observed = _scenario("scenario_xmlrpc_calls", implementation)
    _assert_built_on(observed["provenance"], implementation)
    assert observed["provenance"]["server_class"] == "xmlrpc.server.SimpleXMLRPCServer"
    calls = observed["calls"]
    assert calls["add"] == ["ok", 5]
    assert calls["add_strings"] == ["ok", "socketserver"]
    assert calls["divide"] == ["ok", 3.5]
    kind, code, message = calls["divide_by_zero"]
    assert (kind, code) == ("fault", 1)
    assert "ZeroDivisionError" in message
    assert calls["unknown"] == [
        "fault",
        1,
        "<class 'Exception'>:method \"no_such_method\" is not supported",
    ]
    kind, methods = calls["methods"]
    assert kind == "ok" and {"add", "divide", "system.listMethods"} <= set(methods)


# --- wsgiref.simple_server --------------------------------------------------------------------


def scenario_wsgiref_app():
    import urllib.request
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/missing":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"nothing here"]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        posted = environ["wsgi.input"].read(length).decode()
        body = (
            f"{environ['REQUEST_METHOD']} {environ['PATH_INFO']}"
            f"?{environ['QUERY_STRING']} [{posted}]"
        ).encode()
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "wsgi")])
        return [body]

    server = make_server("127.0.0.1", 0, app, handler_class=_quiet(WSGIRequestHandler))
    with _Serving(server):
        base = f"http://127.0.0.1:{server.server_address[1]}"
        status, headers, body = _http_get(base + "/hello?name=rs")
        request = urllib.request.Request(base + "/submit", data=b"payload", method="POST")
        with urllib.request.urlopen(request, timeout=CLIENT_TIMEOUT) as response:
            posted = [response.status, response.read().decode()]
        missing = _http_get(base + "/missing")
    return {
        "provenance": _provenance(server),
        "get": [status, headers.get("x-app"), body],
        "post": posted,
        "missing": [missing[0], missing[2]],
    }


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_wsgiref_make_server_runs_a_wsgi_app_for_urllib(implementation):
    observed = _scenario("scenario_wsgiref_app", implementation)
    _assert_built_on(observed["provenance"], implementation)
    assert observed["provenance"]["server_class"] == "wsgiref.simple_server.WSGIServer"
    assert observed["get"] == [200, "wsgi", "GET /hello?name=rs []"]
    assert observed["post"] == [200, "POST /submit? [payload]"]
    assert observed["missing"] == [404, "nothing here"]


# --- logging ----------------------------------------------------------------------------------


def _unpickle_record(payload):
    import logging
    import pickle

    return logging.makeLogRecord(pickle.loads(payload))


def _record_summary(record):
    return [
        record.name,
        record.levelname,
        record.getMessage(),
        getattr(record, "request_id", None),
        bool(record.exc_text) and "ZeroDivisionError" in record.exc_text,
    ]


def _emit_test_records(logger):
    logger.info("hello %s", "receiver")
    logger.warning("with extra", extra={"request_id": 42})
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logger.exception("it failed")


def scenario_logging_socket_handler():
    import logging
    import logging.handlers
    import queue
    import socketserver
    import struct

    received = queue.Queue()

    class LogRecordStreamHandler(socketserver.StreamRequestHandler):
        """Reads length-prefixed pickled records until the sender closes the connection."""

        def handle(self):
            while True:
                header = self.rfile.read(4)
                if len(header) < 4:
                    return
                (length,) = struct.unpack(">L", header)
                payload = self.rfile.read(length)
                if len(payload) < length:
                    return
                received.put(_unpickle_record(payload))

    class LogRecordReceiver(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    server = LogRecordReceiver(("127.0.0.1", 0), LogRecordStreamHandler)
    with _Serving(server):
        logger = logging.getLogger("consumer.tcp")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        handler = logging.handlers.SocketHandler("127.0.0.1", server.server_address[1])
        logger.addHandler(handler)
        try:
            _emit_test_records(logger)
        finally:
            logger.removeHandler(handler)
            handler.close()
        records = [_record_summary(received.get(timeout=CLIENT_TIMEOUT)) for _ in range(3)]
    return {"provenance": _provenance(server), "records": records}


def scenario_logging_datagram_handler():
    import logging
    import logging.handlers
    import queue
    import socketserver
    import struct

    received = queue.Queue()

    class LogRecordDatagramHandler(socketserver.BaseRequestHandler):
        """Each datagram is one length-prefixed pickled record."""

        def handle(self):
            data, _socket = self.request
            (length,) = struct.unpack(">L", data[:4])
            received.put(_unpickle_record(data[4 : 4 + length]))

    server = socketserver.UDPServer(("127.0.0.1", 0), LogRecordDatagramHandler)
    with _Serving(server):
        logger = logging.getLogger("consumer.udp")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        handler = logging.handlers.DatagramHandler("127.0.0.1", server.server_address[1])
        logger.addHandler(handler)
        try:
            _emit_test_records(logger)
        finally:
            logger.removeHandler(handler)
            handler.close()
        records = [_record_summary(received.get(timeout=CLIENT_TIMEOUT)) for _ in range(3)]
    return {"provenance": _provenance(server), "records": records}


def _expected_records(logger_name):
    return [
        [logger_name, "INFO", "hello receiver", None, False],
        [logger_name, "WARNING", "with extra", 42, False],
        [logger_name, "ERROR", "it failed", None, True],
    ]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_logging_socket_handler_records_reach_a_threading_tcp_receiver(implementation):
    observed = _scenario("scenario_logging_socket_handler", implementation)
    _assert_built_on(observed["provenance"], implementation)
    assert "ThreadingMixIn" in (
        observed["provenance"]["socketserver_rs_bases"] + observed["provenance"]["stdlib_bases"]
    )
    assert observed["records"] == _expected_records("consumer.tcp")


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_logging_datagram_handler_records_reach_a_udp_receiver(implementation):
    observed = _scenario("scenario_logging_datagram_handler", implementation)
    _assert_built_on(observed["provenance"], implementation)
    assert "UDPServer" in (
        observed["provenance"]["socketserver_rs_bases"] + observed["provenance"]["stdlib_bases"]
    )
    assert observed["records"] == _expected_records("consumer.udp")


def scenario_logging_config_listener():
    import json
    import logging
    import logging.config
    import socket
    import struct

    listener = logging.config.listen(0)
    listener.daemon = True
    listener.start()
    try:
        assert listener.ready.wait(CLIENT_TIMEOUT), "the config listener did not start"
        server = logging.config._listener  # set before the listener starts serving
        listener.ready.clear()  # the handler sets it again once a config is applied
        config = json.dumps(
            {
                "version": 1,
                "incremental": False,
                "loggers": {"consumer.configured": {"level": "ERROR"}},
            }
        ).encode()
        with socket.create_connection(("127.0.0.1", listener.port), CLIENT_TIMEOUT) as client:
            client.sendall(struct.pack(">L", len(config)) + config)
        applied = listener.ready.wait(CLIENT_TIMEOUT)
        level = logging.getLevelName(logging.getLogger("consumer.configured").level)
    finally:
        logging.config.stopListening()
        listener.join(CLIENT_TIMEOUT)
    return {
        "provenance": _provenance(server),
        "applied": applied,
        "level": level,
        "stopped": not listener.is_alive(),
        "closed": server.socket.fileno() == -1,
    }


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_logging_config_listen_applies_a_config_sent_over_tcp(implementation):
    observed = _scenario("scenario_logging_config_listener", implementation)
    _assert_built_on(observed["provenance"], implementation)
    assert observed["applied"]
    assert observed["level"] == "ERROR"
    assert observed["stopped"] and observed["closed"]


# --- HTTPS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_signed_cert(tmp_path_factory):
    """``(cert_path, key_path)`` of a fresh self-signed certificate for 127.0.0.1."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        _write_cert_with_cryptography(cert, key)
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is available")
        returncode, _, stderr = run_process(
            [
                openssl,
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
            ],
            timeout=30,
        )
        if returncode != 0:
            pytest.skip(f"openssl could not make a self-signed certificate: {stderr.strip()}")
    return str(cert), str(key)


def _write_cert_with_cryptography(cert_path, key_path):
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def scenario_https(cert, key):
    import socket
    import ssl
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class SecureHandler(BaseHTTPRequestHandler):
        def do_GET(self):
            payload = f"secure {self.path} over {self.request.version()}".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), SecureHandler)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    server.socket = server_context.wrap_socket(server.socket, server_side=True)
    client_context = ssl.create_default_context(cafile=cert)
    with _Serving(server):
        base = f"https://127.0.0.1:{server.server_address[1]}"
        first = _http_get(base + "/first", context=client_context)
        # A client speaking plain HTTP fails the handshake; the server must keep serving.
        with socket.create_connection(server.server_address, CLIENT_TIMEOUT) as plain:
            plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
            try:
                while plain.recv(4096):
                    pass
                plain_outcome = "closed"
            except ConnectionResetError:
                plain_outcome = "reset"
        second = _http_get(base + "/second", context=client_context)
    return {
        "provenance": _provenance(server),
        "listener_is_ssl": isinstance(server.socket, ssl.SSLSocket),
        "first": [first[0], first[2]],
        "plain_outcome": plain_outcome,
        "second": [second[0], second[2]],
    }


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_https_threading_http_server_on_a_wrapped_socket_serves_urllib(
    implementation, self_signed_cert
):
    observed = _scenario("scenario_https", implementation, *self_signed_cert)
    _assert_built_on(observed["provenance"], implementation)
    assert observed["listener_is_ssl"]
    status, body = observed["first"]
    assert status == 200 and body.startswith("secure /first over TLSv1.")
    assert observed["plain_outcome"] in ("closed", "reset")
    status, body = observed["second"]
    assert status == 200 and body.startswith("secure /second over TLSv1.")


# --- install() itself -------------------------------------------------------------------------


def scenario_install_after_http_server():
    import http.server

    import socketserver_rs

    try:
        socketserver_rs.install()
    except RuntimeError as error:
        outcome = ["RuntimeError", str(error)]
    else:
        outcome = ["no error", None]
    return {
        "outcome": outcome,
        "socketserver_module": sys.modules["socketserver"].__name__,
        "http_server_base_module": http.server.HTTPServer.__mro__[1].__module__,
    }


def test_install_refuses_once_http_server_is_built_on_the_stdlib():
    observed = run_in_fresh_interpreter(
        __file__, "scenario_install_after_http_server", install=False, timeout=CHILD_TIMEOUT
    )
    kind, message = observed["outcome"]
    assert kind == "RuntimeError"
    assert "http.server" in message and "install()" in message and "before" in message
    # Nothing was swapped half-way.
    assert observed["socketserver_module"] == "socketserver"
    assert observed["http_server_base_module"] == "socketserver"


def scenario_install_twice_then_consumers():
    import importlib

    import socketserver_rs

    first = socketserver_rs.install()
    second = socketserver_rs.install()
    import socketserver
    from socketserver import TCPServer

    consumers = {}
    for module_name, class_name in [
        ("http.server", "HTTPServer"),
        ("http.server", "ThreadingHTTPServer"),
        ("xmlrpc.server", "SimpleXMLRPCServer"),
        ("wsgiref.simple_server", "WSGIServer"),
    ]:
        cls = getattr(importlib.import_module(module_name), class_name)
        consumers[f"{module_name}.{class_name}"] = issubclass(cls, socketserver_rs.TCPServer)
    third = socketserver_rs.install()  # consumers imported, but already on socketserver_rs
    return {
        "returns_the_package": [
            first is socketserver_rs,
            second is socketserver_rs,
            third is socketserver_rs,
        ],
        "import_socketserver_is_rs": socketserver is socketserver_rs,
        "from_import_is_rs": TCPServer is socketserver_rs.TCPServer,
        "consumers_on_rs": consumers,
    }


def test_install_is_idempotent_and_makes_import_socketserver_return_socketserver_rs():
    observed = run_in_fresh_interpreter(
        __file__, "scenario_install_twice_then_consumers", install=False, timeout=CHILD_TIMEOUT
    )
    assert observed["returns_the_package"] == [True, True, True]
    assert observed["import_socketserver_is_rs"]
    assert observed["from_import_is_rs"]
    assert observed["consumers_on_rs"] == {
        "http.server.HTTPServer": True,
        "http.server.ThreadingHTTPServer": True,
        "xmlrpc.server.SimpleXMLRPCServer": True,
        "wsgiref.simple_server.WSGIServer": True,
    }
