"""A line-oriented TCP server with a thread per connection.

Clients send newline-terminated lines and get each one back in capitals, on the same
connection, until they close it. ``StreamRequestHandler`` wraps the socket in the file
objects ``rfile`` and ``wfile``, so the handler reads and writes lines. Try it with
``line_client.py``, or with ``nc 127.0.0.1 9999``.

    python examples/line_server.py [HOST [PORT]]    (default 127.0.0.1 9999)

Ctrl-C stops it. Port 0 picks a free port; the first line printed names the one in use.
"""

import argparse
import sys

import socketserver_rs as socketserver

MAX_LINE = 64 * 1024


def log(message):
    # One write per line: print() writes the text and the newline separately, so lines
    # printed from several handler threads at once could run into each other.
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


class UppercaseLineHandler(socketserver.StreamRequestHandler):
    """Answer every line with the same line uppercased, until the client hangs up."""

    def handle(self):
        host, port = self.client_address
        log(f"{host}:{port} connected")
        for line in iter(lambda: self.rfile.readline(MAX_LINE), b""):
            self.wfile.write(line.rstrip(b"\r\n").upper() + b"\n")
        log(f"{host}:{port} disconnected")


class LineServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    # Handler threads do not hold up exit: Ctrl-C stops the server even with clients connected.
    daemon_threads = True


def main():
    parser = argparse.ArgumentParser(description="Uppercase line server over TCP.")
    parser.add_argument("host", nargs="?", default="127.0.0.1")
    parser.add_argument("port", nargs="?", type=int, default=9999)
    args = parser.parse_args()
    try:
        with LineServer((args.host, args.port), UppercaseLineHandler) as server:
            host, port = server.server_address[:2]
            log(f"serving lines on {host}:{port} (Ctrl-C to stop)")
            server.serve_forever()
    except KeyboardInterrupt:
        log("stopped")


if __name__ == "__main__":
    main()
