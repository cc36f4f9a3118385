"""A TCP server that answers each connection with the bytes it received, in capitals.

Each connection is one request: the handler reads what the client sent, logs it and writes it
back uppercased, then the server closes the connection. Try it with ``tcp_client.py``.

    python examples/tcp_uppercase_server.py [HOST [PORT]]    (default 127.0.0.1 9999)

Ctrl-C stops it. Port 0 picks a free port; the first line printed names the one in use.
"""

import argparse

import socketserver_rs as socketserver


class UppercaseHandler(socketserver.BaseRequestHandler):
    """Read one chunk from the client and send it back in capitals."""

    def handle(self):
        data = self.request.recv(1024).strip()
        host, port = self.client_address
        print(f"{host}:{port} sent {data!r}", flush=True)
        self.request.sendall(data.upper())


class UppercaseServer(socketserver.TCPServer):
    # Let a restarted server bind again while old connections sit in TIME_WAIT.
    allow_reuse_address = True


def main():
    parser = argparse.ArgumentParser(description="Uppercase echo over TCP.")
    parser.add_argument("host", nargs="?", default="127.0.0.1")
    parser.add_argument("port", nargs="?", type=int, default=9999)
    args = parser.parse_args()
    try:
        with UppercaseServer((args.host, args.port), UppercaseHandler) as server:
            host, port = server.server_address[:2]
            print(f"serving TCP on {host}:{port} (Ctrl-C to stop)", flush=True)
            server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
