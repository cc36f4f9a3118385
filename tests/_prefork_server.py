"""A prefork server to run as a child process in tests/test_prefork.py.

    python _prefork_server.py KIND WORKERS [ATTR=VALUE ...]

KIND: tcp, threading, pool, unix, udp, reactor. Every request is one line (one datagram); the
reply says which child served it: ``pid=<pid> index=<worker index> <line>``. A line
``sleep <seconds>`` sleeps that long before replying; ``crash`` makes the child exit(3) at once.
Extra ``ATTR=VALUE`` arguments are set on the server class (values parsed as Python literals);
``crash_at_start=True`` makes every child exit(3) right after worker_init, and
``shutdown_after=S`` calls ``server.shutdown(shutdown_timeout)`` from another thread after S
seconds (``shutdown_timeout`` defaults to None).

Prints ``READY <address>`` once listening, then ``EXIT <index> <status>`` for every child that
ends (worker_exit) and ``INIT <index> <pid>`` from every child (worker_init), and finally
``STOPPED`` when serve_forever() returns.
"""

import ast
import os
import sys
import tempfile
import threading
import time

import socketserver_rs


def say(text):
    """One whole line to stdout in one write: parent and children share the pipe."""
    os.write(1, (text + "\n").encode())


def reply_for(line, server):
    text = line.decode().strip()
    if text.startswith("sleep "):
        time.sleep(float(text.split()[1]))
    elif text == "crash":
        os._exit(3)
    return f"pid={os.getpid()} index={server._rs_worker_index} {text}\n".encode()


class LineHandler(socketserver_rs.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(reply_for(line, self.server))


class DatagramHandler(socketserver_rs.DatagramRequestHandler):
    def handle(self):
        self.wfile.write(reply_for(self.rfile.readline(), self.server))


class MessageHandler(socketserver_rs.MessageHandler):
    framing = "line"

    def handle_message(self, message):
        return reply_for(message, self.server)


class Hooks:
    crash_at_start = False

    def worker_init(self, worker_index):
        say(f"INIT {worker_index} {os.getpid()}")
        if self.crash_at_start:
            os._exit(3)

    def worker_exit(self, worker_index, status):
        say(f"EXIT {worker_index} {status}")


KINDS = {
    "tcp": (socketserver_rs.TCPServer, LineHandler),
    "threading": (socketserver_rs.ThreadingTCPServer, LineHandler),
    "pool": (socketserver_rs.ThreadPoolTCPServer, LineHandler),
    "unix": (socketserver_rs.ThreadingUnixStreamServer, LineHandler),
    "udp": (socketserver_rs.UDPServer, DatagramHandler),
    "reactor": (socketserver_rs.ReactorTCPServer, MessageHandler),
}


def main():
    kind, workers, *assignments = sys.argv[1:]
    base, handler = KINDS[kind]
    attrs = {"workers": int(workers), "allow_reuse_address": True}
    for assignment in assignments:
        name, _, value = assignment.partition("=")
        attrs[name] = ast.literal_eval(value)
    if kind == "reactor":
        attrs["handler_threads"] = attrs.get("handler_threads", 4)
    server_class = type("Server", (Hooks, socketserver_rs.PreforkMixIn, base), attrs)
    if kind == "unix":
        address = os.path.join(tempfile.mkdtemp(prefix="prefork-"), "sock")
    else:
        address = ("127.0.0.1", 0)
    with server_class(address, handler) as server:
        say(f"READY {server.server_address!r}")
        if "shutdown_after" in attrs:
            timeout = attrs.get("shutdown_timeout")
            threading.Timer(attrs["shutdown_after"], server.shutdown, (timeout,)).start()
        server.serve_forever(poll_interval=None)
    say("STOPPED")


if __name__ == "__main__":
    main()
