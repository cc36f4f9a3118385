"""A threading TCP server driven from the same script: it starts, serves three clients, stops.

The server listens on a free port and serves from a background thread; each connection gets
its own handler thread, which replies with its name and the message it read. The main thread
plays the clients, then shuts the server down and closes it.

    python examples/threaded_server.py
"""

import socket
import threading

import socketserver_rs as socketserver


class NamingHandler(socketserver.BaseRequestHandler):
    """Reply with the handling thread's name and the message received."""

    def handle(self):
        message = self.request.recv(1024).decode()
        name = threading.current_thread().name
        self.request.sendall(f"{name}: {message}".encode())


class ThreadedTCPServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    pass


def ask(address, message):
    """Send ``message`` on a new connection and return the whole reply."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(message.encode())
        sock.shutdown(socket.SHUT_WR)  # tell the handler we are done sending
        chunks = []
        while chunk := sock.recv(1024):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def main():
    with ThreadedTCPServer(("127.0.0.1", 0), NamingHandler) as server:
        address = server.server_address[:2]
        serving = threading.Thread(target=server.serve_forever, name="serve_forever")
        serving.daemon = True  # never keep the interpreter alive on its own
        serving.start()
        print(f"server loop running in thread {serving.name!r} on port {address[1]}")

        for number in (1, 2, 3):
            print(ask(address, f"hello {number}"))

        server.shutdown()
        serving.join(timeout=5)
    print("server stopped")


if __name__ == "__main__":
    main()
