"""Socket activation and inherited listeners: systemd's ``LISTEN_FDS`` protocol, building a
server on a socket that is already bound, and ``sd_notify`` readiness messages.

Nothing here needs libsystemd: the protocols are a few environment variables and one
datagram, implemented as ``sd_listen_fds(3)`` and ``sd_notify(3)`` describe them.
"""

import os
import socket
from typing import Any, TypeVar

__all__ = ["from_socket", "listen_fds", "sd_notify"]

# The first descriptor systemd passes (SD_LISTEN_FDS_START).
LISTEN_FDS_START = 3

_Server = TypeVar("_Server")


def listen_fds(unset_environment: bool = True, with_names: bool = False) -> list[Any]:
    """The listening sockets passed to this process by systemd (or any supervisor speaking
    the same protocol), as ``socket.socket`` objects whose family, type and protocol are
    read from the descriptors; empty when none were passed, or they were meant for another
    process (``LISTEN_PID`` is not ours).

    With ``with_names``, ``(name, socket)`` pairs, the names from ``LISTEN_FDNAMES``
    (``"unknown"`` where it gives none, as systemd does). ``unset_environment`` removes the
    three variables, as ``sd_listen_fds(1)`` does, so child processes do not take the
    descriptors for theirs. The descriptors are made close-on-exec.
    """
    pid_text = os.environ.get("LISTEN_PID")
    count_text = os.environ.get("LISTEN_FDS")
    names_text = os.environ.get("LISTEN_FDNAMES")
    if unset_environment:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    if count_text is None:
        return []
    if pid_text is not None:
        try:
            pid = int(pid_text)
        except ValueError:
            raise ValueError(f"LISTEN_PID is not a process id: {pid_text!r}") from None
        if pid != os.getpid():
            return []  # for another process (our parent, say)
    try:
        count = int(count_text)
    except ValueError:
        raise ValueError(f"LISTEN_FDS is not a number: {count_text!r}") from None
    if count < 0:
        raise ValueError(f"LISTEN_FDS is negative: {count}")
    names = names_text.split(":") if names_text else []
    sockets: list[Any] = []
    for index in range(count):
        fd = LISTEN_FDS_START + index
        try:
            sock = socket.socket(fileno=fd)
        except OSError as error:
            raise ValueError(
                f"LISTEN_FDS passes descriptor {fd}, which is not a socket: {error}"
            ) from error
        sock.set_inheritable(False)
        name = names[index] if index < len(names) and names[index] else "unknown"
        sockets.append((name, sock) if with_names else sock)
    return sockets


def from_socket(cls: type[_Server], sock: socket.socket, *args: Any, **kwargs: Any) -> _Server:
    """Build a ``cls`` server on ``sock``, a socket that is already bound (and, for stream
    sockets, usually listening), instead of binding a new one.

    ``cls`` is constructed as usual with ``bind_and_activate=False`` (``args`` and
    ``kwargs`` follow the server address: the handler class, and any arguments of a
    subclass); its own socket is replaced by ``sock``; then ``server_bind()`` and
    ``server_activate()`` run as usual, except that the socket is not bound again and a
    socket that already listens is not told to listen again. So subclass overrides of
    those hooks still run (``http.server.HTTPServer`` records its host name there).
    """
    if not isinstance(sock, socket.socket):
        raise TypeError(f"from_socket() needs a socket.socket, not {type(sock).__name__}")
    expected = getattr(cls, "socket_type", socket.SOCK_STREAM)
    if sock.type != expected:
        raise ValueError(
            f"{cls.__name__} serves {socket.SocketKind(expected).name} sockets; "
            f"this one is {socket.SocketKind(sock.type).name}"
        )
    address = sock.getsockname()
    if sock.family in (socket.AF_INET, socket.AF_INET6) and address[1] == 0:
        raise ValueError("from_socket() needs a bound socket; this one has no port")
    server: Any = cls(address, *args, bind_and_activate=False, **kwargs)  # type: ignore[call-arg]
    try:
        server.socket.close()
        server.socket = sock
        server.address_family = sock.family
        server._rs_adopted = True
        server.server_bind()
        server.server_activate()
    except BaseException:
        server.server_close()
        raise
    return server  # type: ignore[no-any-return]


def is_adopted(server: object) -> bool:
    """Whether ``server`` was built on an existing socket (``from_socket``)."""
    return bool(vars(server).get("_rs_adopted"))


def is_listening(sock: socket.socket) -> bool:
    """Whether a stream socket already listens."""
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN))
    except OSError:
        return False


def sd_notify(*states: str) -> bool:
    """Send ``states`` (``"READY=1"``, ``"STATUS=…"`` …) to the service manager through
    ``NOTIFY_SOCKET``, as ``sd_notify(3)`` does; an address starting with ``@`` is in the
    abstract namespace. Returns False when ``NOTIFY_SOCKET`` is not set; raises
    ``OSError`` if sending fails and ``ValueError`` for an address it cannot use."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        target: str | bytes = b"\0" + os.fsencode(address[1:])
    elif address.startswith("/"):
        target = address
    else:
        raise ValueError(f"NOTIFY_SOCKET is not a Unix socket address: {address!r}")
    message = "\n".join(states).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message, target)
    return True


def notify_quietly(state: str) -> None:
    """``sd_notify(state)`` for the serving loop: a service manager that cannot be told must
    not stop the server, so a failure is reported as a warning."""
    if "NOTIFY_SOCKET" not in os.environ:
        return
    try:
        sd_notify(state)
    except (OSError, ValueError) as error:
        import warnings

        warnings.warn(f"sd_notify {state} failed: {error}", RuntimeWarning, stacklevel=3)
