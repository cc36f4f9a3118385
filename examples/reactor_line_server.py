"""The line server of ``line_server.py``, on a reactor: no thread per connection.

Clients send newline-terminated lines and get each one back in capitals, on the same
connection, until they close it. Here the Rust engine owns every connection: it reads,
cuts the input into lines (``framing = "line"``) and calls ``handle_message()`` once per
complete line on the serving thread; the returned bytes are written back by the engine.
A thousand idle clients cost a thousand descriptors, not a thousand threads. Try it with
``line_client.py``, or with ``nc 127.0.0.1 9999``.

    python examples/reactor_line_server.py [HOST [PORT]]    (default 127.0.0.1 9999)

Ctrl-C stops it. Port 0 picks a free port; the first line printed names the one in use.
"""

import argparse
import sys

import socketserver_rs

MAX_LINE = 64 * 1024


def log(message):
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


class UppercaseLineHandler(socketserver_rs.MessageHandler):
    """Answer every line with the same line uppercased, until the client hangs up."""

    framing = "line"
    # A longer line is reported through handle_error() and its connection closed.
    max_message_size = MAX_LINE

    def setup(self):
        host, port = self.client_address
        log(f"{host}:{port} connected")

    def handle_message(self, line):
        # The line comes with its b"\n" (the last one may lack it if the client hung up).
        return line.rstrip(b"\r\n").upper() + b"\n"

    def finish(self):
        host, port = self.client_address
        log(f"{host}:{port} disconnected")


class LineServer(socketserver_rs.ReactorTCPServer):
    allow_reuse_address = True


def main():
    parser = argparse.ArgumentParser(description="Uppercase line server over TCP (reactor).")
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
