"""Zero-downtime upgrade: a new ``veilgate serve`` takes the listening sockets over.

With ``listen.handover_socket: PATH`` the serving process (the *old* one) listens on the unix
socket ``PATH``.  A new process started with the same configuration finds it there and, instead of
binding, asks for the listening sockets; the kernel object (with its accept queue) passes over
``SCM_RIGHTS``, so no connection attempt meets a closed port at any moment:

1. new → old ``{"op":"take"}``; old → new the gateway's (and the admin server's) listening
   sockets.  The old process keeps accepting.
2. The new process starts everything (policy, recorder, authenticator, admin routes) without
   accepting, then new → old ``{"op":"stop"}``: the old one stops taking connections off the
   queue (it keeps the sockets) and answers; arrivals wait in the queue for a few milliseconds.
3. The new process starts accepting and binds ``PATH`` itself (a rename over the old file), then
   new → old ``{"op":"done"}``: the old process closes its copies and drains, serving its
   sessions until their clients end them (up to ``shutdown.drain_timeout_s``, then as SIGTERM).

If the new process goes away before ``done`` the old one resumes accepting and logs
``handover_aborted``; before ``stop`` nothing changed at all.  Only a peer of the same user
(``SO_PEERCRED``) is answered.  Messages are JSON lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

from veilgate import log

_log = log.get("handover")

__all__ = ["HandoverClient", "HandoverError", "HandoverServer"]

STEP_TIMEOUT_S = 60.0
"""How long either side waits for the other's next message (the new process's start-up)."""
MAX_LINE = 4096


class HandoverError(Exception):
    """The hand-over failed; the old process keeps serving."""


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


class HandoverClient:
    """The new process's side (blocking socket; call the methods via ``asyncio.to_thread``)."""

    def __init__(self, sock: socket.socket, path: str) -> None:
        self._sock = sock
        self._buf = b""
        self.path = path
        self.old_pid: int | None = None

    @classmethod
    def connect(cls, path: str) -> HandoverClient | None:
        """Connect to a serving process at ``path``; None when nobody listens there (a stale
        socket file is removed)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        sock.settimeout(STEP_TIMEOUT_S)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                if os.path.exists(path) and not os.path.isdir(path):
                    os.unlink(path)  # left by a process that died: nobody serves
            return None
        except OSError:
            sock.close()
            raise
        return cls(sock, path)

    def take(self) -> dict[str, socket.socket]:
        """Step 1: the old process's listening sockets by name (``listen``, ``admin``)."""
        self._sock.sendall(_line({"op": "take", "pid": os.getpid()}))
        data, fds, _flags, _addr = socket.recv_fds(self._sock, MAX_LINE, 8)
        if not data:
            raise HandoverError("the serving process closed the hand-over socket")
        line, _, rest = data.partition(b"\n")
        self._buf = rest
        reply = json.loads(line)
        socks = [socket.socket(fileno=fd) for fd in fds]
        if not reply.get("ok"):
            for s in socks:
                s.close()
            raise HandoverError(str(reply.get("error", "refused")))
        names: list[str] = list(reply.get("names", []))
        if len(names) != len(socks):
            for s in socks:
                s.close()
            raise HandoverError(f"expected {len(names)} sockets, got {len(socks)}")
        self.old_pid = int(reply.get("pid", 0)) or None
        return dict(zip(names, socks, strict=True))

    def stop_old(self) -> None:
        """Step 2: the old process stops accepting (returns once it has)."""
        self._sock.sendall(_line({"op": "stop"}))
        reply = self._read()
        if not reply.get("ok"):
            raise HandoverError(str(reply.get("error", "stop refused")))

    def done(self) -> None:
        """Step 3: this process accepts now; the old one drains."""
        self._sock.sendall(_line({"op": "done"}))
        self.close()

    def close(self) -> None:
        self._sock.close()

    def _read(self) -> dict[str, Any]:
        while b"\n" not in self._buf:
            chunk = self._sock.recv(MAX_LINE)
            if not chunk:
                raise HandoverError("the serving process closed the hand-over socket")
            self._buf += chunk
            if len(self._buf) > MAX_LINE:
                raise HandoverError("hand-over message too long")
        line, _, self._buf = self._buf.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        return reply


Provide = Callable[[], Sequence[tuple[str, socket.socket]]]


class HandoverServer:
    """The serving process's side: hands its listening sockets to the next process.

    ``provide()`` returns the sockets to pass; ``pause()`` / ``resume()`` stop and restart
    accepting on them; ``finished(pid)`` is called once the new process accepts (drain now)."""

    def __init__(
        self,
        path: str,
        provide: Provide,
        pause: Callable[[], None],
        resume: Callable[[], None],
        finished: Callable[[int], None],
    ) -> None:
        self.path = path
        self._provide = provide
        self._pause = pause
        self._resume = resume
        self._finished = finished
        self._sock: socket.socket | None = None
        self._inode: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._busy = False

    async def start(self) -> None:
        """Bind ``path`` (a rename over whatever is there: the previous process's socket)."""
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(tmp)
            os.chmod(tmp, 0o600)
            sock.listen(4)
            sock.setblocking(False)
            os.replace(tmp, self.path)
        except OSError:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self._sock = sock
        self._inode = os.stat(self.path).st_ino
        self._task = asyncio.get_running_loop().create_task(self._serve(sock))
        log.event(_log, "handover_listening", path=self.path)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):  # only our own file (not the successor's)
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)

    async def _serve(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(sock)
            try:
                await self._converse(loop, conn)
            except Exception as e:  # a broken peer never ends the serving process
                log.event(_log, "handover_failed", logging.WARNING, error=repr(e))
            finally:
                conn.close()

    async def _converse(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        conn.setblocking(False)
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        peer_pid, peer_uid, _gid = struct.unpack("3i", creds)
        reader = _Lines(loop, conn)
        request = await reader.read()
        if request.get("op") != "take":
            return
        if peer_uid != os.getuid():
            log.event(_log, "handover_refused", logging.WARNING, pid=peer_pid, uid=peer_uid)
            await loop.sock_sendall(conn, _line({"ok": False, "error": "another user"}))
            return
        if self._busy:
            await loop.sock_sendall(conn, _line({"ok": False, "error": "hand-over in progress"}))
            return
        self._busy = True
        try:
            await self._hand_over(loop, conn, reader, peer_pid)
        finally:
            self._busy = False

    async def _hand_over(
        self, loop: asyncio.AbstractEventLoop, conn: socket.socket, reader: _Lines, pid: int
    ) -> None:
        socks = list(self._provide())
        msg = _line({"ok": True, "pid": os.getpid(), "names": [n for n, _ in socks]})
        await _send_fds(loop, conn, msg, [s.fileno() for _, s in socks])
        log.event(_log, "handover_started", pid=pid, sockets=[n for n, _ in socks])
        try:
            if (await reader.read()).get("op") != "stop":
                raise HandoverError("expected stop")
        except (HandoverError, OSError, TimeoutError, ValueError) as e:
            log.event(_log, "handover_aborted", logging.WARNING, pid=pid, error=str(e))
            return  # nothing changed here
        self._pause()
        await loop.sock_sendall(conn, _line({"ok": True}))
        try:
            if (await reader.read()).get("op") != "done":
                raise HandoverError("expected done")
        except (HandoverError, OSError, TimeoutError, ValueError) as e:
            self._resume()
            log.event(_log, "handover_aborted", logging.WARNING, pid=pid, error=str(e))
            return
        log.event(_log, "handover_done", pid=pid)
        self._finished(pid)


async def _send_fds(
    loop: asyncio.AbstractEventLoop, conn: socket.socket, data: bytes, fds: list[int]
) -> None:
    """One message with the descriptors attached (a tiny write on an idle socket)."""
    fut: asyncio.Future[None] = loop.create_future()

    def writable() -> None:
        loop.remove_writer(conn.fileno())
        try:
            socket.send_fds(conn, [data], fds)
        except OSError as e:
            fut.set_exception(e)
        else:
            fut.set_result(None)

    loop.add_writer(conn.fileno(), writable)
    try:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            await fut
    finally:
        loop.remove_writer(conn.fileno())


class _Lines:
    def __init__(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
        self._loop, self._conn, self._buf = loop, conn, b""

    async def read(self) -> dict[str, Any]:
        async with asyncio.timeout(STEP_TIMEOUT_S):
            while b"\n" not in self._buf:
                chunk = await self._loop.sock_recv(self._conn, MAX_LINE)
                if not chunk:
                    raise HandoverError("the new process closed the hand-over socket")
                self._buf += chunk
                if len(self._buf) > MAX_LINE:
                    raise HandoverError("hand-over message too long")
        line, _, self._buf = self._buf.partition(b"\n")
        obj: dict[str, Any] = json.loads(line)
        return obj
