"""Send one message to ``tcp_uppercase_server.py`` and print what comes back.

    python examples/tcp_client.py [MESSAGE [HOST [PORT]]]    (default "hello" 127.0.0.1 9999)

The server answers once and closes the connection, so the client reads until end of stream.
"""

import argparse
import socket


def main():
    parser = argparse.ArgumentParser(description="Talk to the TCP uppercase server.")
    parser.add_argument("message", nargs="?", default="hello")
    parser.add_argument("host", nargs="?", default="127.0.0.1")
    parser.add_argument("port", nargs="?", type=int, default=9999)
    args = parser.parse_args()

    with socket.create_connection((args.host, args.port), timeout=10) as sock:
        sock.sendall(args.message.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(1024):
            chunks.append(chunk)
    reply = b"".join(chunks).decode()
    print(f"sent:     {args.message}")
    print(f"received: {reply}")


if __name__ == "__main__":
    main()
