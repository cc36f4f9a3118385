"""``python -m socketserver_rs``: a demo that answers TCP and UDP with the uppercased input.

Both servers share one address (127.0.0.1:9999 unless ``--host``/``--port`` say otherwise;
with ``--port 0`` TCP picks a free port and UDP takes the same number). The UDP server runs
in a background thread and the TCP server on the main thread, so Ctrl-C reaches the TCP loop
at once; both are then stopped and the process exits with status 0.
"""

import argparse
import sys
import threading

from . import BaseRequestHandler, ThreadingTCPServer, ThreadingUDPServer

READ_SIZE = 64 * 1024


class UppercaseStreamHandler(BaseRequestHandler):
    """TCP: read what the client sent first, send it back uppercased, close."""

    def handle(self):
        data = self.request.recv(READ_SIZE)
        _log("tcp", self.client_address, data)
        self.request.sendall(data.upper())


class UppercaseDatagramHandler(BaseRequestHandler):
    """UDP: answer each datagram with its contents uppercased."""

    def handle(self):
        data, sock = self.request
        _log("udp", self.client_address, data)
        sock.sendto(data.upper(), self.client_address)


class DemoTCPServer(ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True  # a client that stays connected must not hold up Ctrl-C


class DemoUDPServer(ThreadingUDPServer):
    daemon_threads = True


def _log(protocol, client_address, data):
    # One write per line, so lines from concurrent handler threads stay whole.
    sys.stdout.write(f"{protocol} {client_address[0]}:{client_address[1]} {data!r}\n")
    sys.stdout.flush()


def _port(text):
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}")
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port out of range 0-65535: {port}")
    return port


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m socketserver_rs",
        description="Serve an uppercase echo on TCP and UDP until Ctrl-C.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=_port, default=9999, help="TCP and UDP port (default: %(default)s; 0: any)"
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = _parse_args(argv)
    tcp = udp = serving = None
    try:
        try:
            tcp = DemoTCPServer((args.host, args.port), UppercaseStreamHandler)
            host, port = tcp.server_address[:2]
            udp = DemoUDPServer((host, port), UppercaseDatagramHandler)
        except OSError as error:
            print(f"cannot serve on {args.host}:{args.port}: {error}", file=sys.stderr)
            return 1
        serving = threading.Thread(target=udp.serve_forever, name="udp-server", daemon=True)
        serving.start()
        print(
            f"uppercase echo on tcp and udp {host}:{port}; try "
            f"`printf 'hello\\n' | nc {host} {port}` (UDP: nc -u -w1); Ctrl-C stops",
            flush=True,
        )
        tcp.serve_forever()
    except KeyboardInterrupt:
        print("\nstopped", flush=True)
    finally:
        if serving is not None:
            udp.shutdown()
            serving.join(timeout=1)
        for server in (tcp, udp):
            if server is not None:
                server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
