"""An interactive client for ``line_server.py``: type lines, read the server's answers.

Each line read from standard input is sent to the server and its one-line reply printed.
End of input (Ctrl-D, or the end of a piped file) closes the connection and exits.

    python examples/line_client.py [HOST [PORT]]    (default 127.0.0.1 9999)
    printf 'one\\ntwo\\n' | python examples/line_client.py
"""

import argparse
import socket
import sys


def main():
    parser = argparse.ArgumentParser(description="Talk to the line server, one line at a time.")
    parser.add_argument("host", nargs="?", default="127.0.0.1")
    parser.add_argument("port", nargs="?", type=int, default=9999)
    args = parser.parse_args()

    interactive = sys.stdin.isatty()
    with socket.create_connection((args.host, args.port), timeout=10) as sock:
        replies = sock.makefile("rb")
        while True:
            if interactive:
                print("> ", end="", flush=True)
            line = sys.stdin.readline()
            if not line:
                if interactive:
                    print()  # end the prompt's line
                break
            sock.sendall(line.rstrip("\r\n").encode() + b"\n")
            reply = replies.readline()
            if not reply:
                sys.exit("the server closed the connection")
            print(reply.decode().rstrip("\n"), flush=True)
        replies.close()


if __name__ == "__main__":
    main()
