"""Send one datagram to ``udp_uppercase_server.py`` and print the reply.

    python examples/udp_client.py [MESSAGE [HOST [PORT]]]    (default "hello" 127.0.0.1 9999)

UDP gives no connection to wait on, so the client gives up after a few seconds without a reply.
"""

import argparse
import socket
import sys


def main():
    parser = argparse.ArgumentParser(description="Talk to the UDP uppercase server.")
    parser.add_argument("message", nargs="?", default="hello")
    parser.add_argument("host", nargs="?", default="127.0.0.1")
    parser.add_argument("port", nargs="?", type=int, default=9999)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply")
    args = parser.parse_args()

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(args.timeout)
        sock.sendto(args.message.encode() + b"\n", (args.host, args.port))
        try:
            reply, _ = sock.recvfrom(65536)
        except TimeoutError:
            sys.exit(f"no reply from {args.host}:{args.port} within {args.timeout} s")
    print(f"sent:     {args.message}")
    print(f"received: {reply.decode()}")


if __name__ == "__main__":
    main()
