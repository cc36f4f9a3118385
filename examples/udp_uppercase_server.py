"""A UDP server that answers each datagram with the same bytes in capitals.

For a datagram server the request is a pair: the datagram's bytes and the server's socket,
which the handler uses to reply to the sender. Try it with ``udp_client.py``.

    python examples/udp_uppercase_server.py [HOST [PORT]]    (default 127.0.0.1 9999)

Ctrl-C stops it. Port 0 picks a free port; the first line printed names the one in use.
"""

import argparse

import socketserver_rs as socketserver


class UppercaseHandler(socketserver.BaseRequestHandler):
    """Reply to one datagram with its contents uppercased."""

    def handle(self):
        data, sock = self.request
        data = data.strip()
        host, port = self.client_address
        print(f"{host}:{port} sent {data!r}", flush=True)
        sock.sendto(data.upper(), self.client_address)


def main():
    parser = argparse.ArgumentParser(description="Uppercase echo over UDP.")
    parser.add_argument("host", nargs="?", default="127.0.0.1")
    parser.add_argument("port", nargs="?", type=int, default=9999)
    args = parser.parse_args()
    try:
        with socketserver.UDPServer((args.host, args.port), UppercaseHandler) as server:
            host, port = server.server_address[:2]
            print(f"serving UDP on {host}:{port} (Ctrl-C to stop)", flush=True)
            server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", flush=True)


if __name__ == "__main__":
    main()
