"""One benchmark server per process: ``python serve.py IMPL HANDLER WORKERS BURN_N``.

IMPL: ``single-pool`` (ThreadPoolTCPServer), ``prefork-pool`` (PreforkMixIn over it),
``prefork-pool-reuseport`` (the same, each child on a SO_REUSEPORT socket of its own),
``single-reactor`` / ``prefork-reactor`` (ReactorTCPServer, line framing), ``prefork-http``
(PreforkMixIn + ThreadPoolTCPServer serving http.server's BaseHTTPRequestHandler, HTTP/1.1
keep-alive). HANDLER: ``cpu`` (burn(BURN_N) per request, then the reply) or ``echo``. Prints
``READY 127.0.0.1:PORT`` once listening, ``INIT <index> <pid>`` from every child.
"""

import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import socketserver_rs

# http.server on socketserver_rs (its handlers' native wfile), as docs/stdlib-consumers.md
# sets it up: install() before http.server is imported.
socketserver_rs.install()

import http.server  # noqa: E402

from work import burn  # noqa: E402

BODY = b"x" * 64


def main():
    impl, handler_kind, workers, burn_n = sys.argv[1:5]
    workers, burn_n = int(workers), int(burn_n)
    work = handler_kind == "cpu"

    class Lines(socketserver_rs.StreamRequestHandler):
        def handle(self):
            for line in self.rfile:
                if work:
                    burn(burn_n)
                self.wfile.write(line)

    class Messages(socketserver_rs.MessageHandler):
        framing = "line"

        def handle_message(self, message):
            if work:
                burn(burn_n)
            return message

    class Http(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self):
            if work:
                burn(burn_n)
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        def log_message(self, format, *args):
            pass

    family, handler = {
        "pool": (socketserver_rs.ThreadPoolTCPServer, Lines),
        "reactor": (socketserver_rs.ReactorTCPServer, Messages),
        "http": (socketserver_rs.ThreadPoolTCPServer, Http),
    }[impl.split("-")[1]]
    bases = (socketserver_rs.PreforkMixIn, family) if impl.startswith("prefork") else (family,)
    attrs = {"workers": workers, "request_queue_size": 1024, "allow_reuse_address": True}

    reuseport = impl.endswith("-reuseport")

    def worker_init(self, index):
        if reuseport:
            # The alternative to the inherited listener, for comparison only: each child
            # listens on a SO_REUSEPORT socket of its own and the kernel spreads connections
            # over them. (The parent's socket is bound but never listens.)
            own = socket.socket()
            own.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            own.bind(self.server_address)
            own.listen(1024)
            self.socket.close()
            self.socket = own
        os.write(1, f"INIT {index} {os.getpid()}\n".encode())

    attrs["worker_init"] = worker_init
    if reuseport:
        attrs["allow_reuse_port"] = True
        attrs["server_activate"] = lambda self: None
    server = type("Server", bases, attrs)(("127.0.0.1", 0), handler)
    os.write(1, f"READY 127.0.0.1:{server.server_address[1]}\n".encode())
    try:
        server.serve_forever(poll_interval=None)
    except KeyboardInterrupt:
        pass
    server.server_close()


if __name__ == "__main__":
    main()
