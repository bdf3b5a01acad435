"""The gateway's listening socket: bound here, or adopted from a process handing it over.

One place creates listening sockets so that ``veilgate serve`` (one process), ``--workers N``
(``reuse_port=True``: every worker binds its own socket on the same address, the kernel spreads
connections) and the zero-downtime upgrade (:mod:`veilgate.handover`: the very socket, with its
accept queue, passed to the new process) agree on the options.
"""

from __future__ import annotations

import asyncio
import socket

__all__ = ["bind_listener", "listener_address", "reserve_address"]


async def bind_listener(
    host: str, port: int, backlog: int, *, reuse_port: bool = False
) -> socket.socket:
    """A non-blocking TCP socket listening on ``host:port`` (0: an ephemeral port).

    ``SO_REUSEADDR`` always (a restart binds while old connections sit in TIME_WAIT);
    ``SO_REUSEPORT`` when ``reuse_port`` (several processes of the same user on one address).
    Raises ``OSError`` (the address is in use, not ours...)."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def listener_address(sock: socket.socket) -> tuple[str, int]:
    """``(host, port)`` a listening socket is bound to."""
    name = sock.getsockname()
    return str(name[0]), int(name[1])


def reserve_address(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` with ``SO_REUSEPORT`` but not listening: it holds the
    port (0: an ephemeral one, then shared by every worker) for ``serve --workers N`` while the
    workers' own listening sockets come and go; the kernel gives connections only to listening
    sockets.  Blocking (the supervisor calls it before its loop runs).  Raises ``OSError``."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    return sock
