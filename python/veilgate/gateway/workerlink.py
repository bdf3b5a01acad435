"""One worker of ``veilgate serve --workers N``: its identity and the links to its siblings.

The supervisor (:mod:`veilgate.workers`) starts N worker processes.  Each binds the gateway's
listening address itself with ``SO_REUSEPORT`` (the kernel spreads new connections across them)
and knows, from :class:`WorkerSpec`:

* its id (0..N-1), carried in the top bits of every cancel secret it hands out
  (:class:`~veilgate.gateway.cancel.CancelRegistry`), so that a CancelRequest the kernel gives to
  another worker can be passed to the owner;
* the supervisor's private run directory (0700), where worker ``k`` listens on ``w<k>.cancel``
  (CancelRequests from its siblings: the 16-byte packet as the client sent it) and ``w<k>.admin``
  (its admin server, which the supervisor's admin listener fronts).

A forwarded CancelRequest is handled by the owner exactly like one it received itself, except
that it is never forwarded to a worker again (a key naming a worker that does not hold the
session goes to the shared store's cross-gateway relay, as on one process).  Only a peer of the
same user is listened to (``SO_PEERCRED``), and the directory is the supervisor's, mode 0700.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from veilgate import log, metrics

__all__ = ["WorkerCancelServer", "WorkerSpec", "forward_cancel", "worker_bits"]

_log = log.get("workers")

CANCEL_PACKET_BYTES = 16
"""A protocol 3.0 CancelRequest: length, code, pid, 4-byte key."""
MAX_CANCEL_PACKET_BYTES = 12 + 256
"""Protocol 3.2 keys are longer (up to 256 bytes): accepted as they come, never more."""
FORWARD_TIMEOUT_S = 2.0


def worker_bits(count: int) -> int:
    """Bits of the cancel secret that name the worker: enough for ``count`` ids (0 for one)."""
    return 0 if count <= 1 else (count - 1).bit_length()


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What the supervisor tells worker ``id`` (``--worker`` on its command line)."""

    id: int
    count: int
    run_dir: Path
    port: int
    """The listening port (the configuration's, or the one the supervisor reserved for 0)."""
    parent_pid: int
    status_fd: int | None = None
    """Pipe to the supervisor: one JSON line per event (``ready``, ``reloaded``)."""

    @property
    def bits(self) -> int:
        return worker_bits(self.count)

    def cancel_path(self, worker: int) -> Path:
        return self.run_dir / f"w{worker}.cancel"

    def admin_path(self, worker: int | None = None) -> Path:
        return self.run_dir / f"w{self.id if worker is None else worker}.admin"

    def encode(self) -> str:
        fd = "" if self.status_fd is None else str(self.status_fd)
        return f"{self.id}:{self.count}:{self.port}:{self.parent_pid}:{fd}:{self.run_dir}"

    @classmethod
    def decode(cls, text: str) -> WorkerSpec:
        """Raises ``ValueError`` for anything but :meth:`encode`'s form."""
        wid, count, port, ppid, fd, run_dir = text.split(":", 5)
        spec = cls(
            int(wid), int(count), Path(run_dir), int(port), int(ppid), int(fd) if fd else None
        )
        if not 0 <= spec.id < spec.count or not 0 < spec.port < 65536 or not run_dir:
            raise ValueError(f"bad worker spec {text!r}")
        return spec


async def forward_cancel(spec: WorkerSpec, worker: int, packet: bytes) -> bool:
    """Pass a CancelRequest to worker ``worker``'s cancel socket; False if it is not there."""
    if not 0 <= worker < spec.count or worker == spec.id:
        return False
    try:
        async with asyncio.timeout(FORWARD_TIMEOUT_S):
            _reader, writer = await asyncio.open_unix_connection(str(spec.cancel_path(worker)))
            try:
                writer.write(packet)
                await writer.drain()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except (OSError, TimeoutError) as exc:
        log.event(_log, "cancel_forward_failed", logging.WARNING, worker=worker, error=str(exc))
        return False
    return True


class WorkerCancelServer:
    """Worker ``spec.id``'s end: CancelRequests its siblings received for its sessions."""

    def __init__(self, spec: WorkerSpec, handle: Callable[[bytes], Awaitable[None]]) -> None:
        self._spec = spec
        self._handle = handle
        self._server: asyncio.AbstractServer | None = None
        self._path = spec.cancel_path(spec.id)

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()  # left by this worker's predecessor (it died)
        self._server = await asyncio.start_unix_server(self._serve, str(self._path))
        os.chmod(self._path, 0o600)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                creds = sock.getsockopt(
                    socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
                )
                _pid, uid, _gid = struct.unpack("3i", creds)
                if uid != os.getuid():
                    return
            async with asyncio.timeout(FORWARD_TIMEOUT_S):
                packet = await reader.read(MAX_CANCEL_PACKET_BYTES + 1)
            if not CANCEL_PACKET_BYTES <= len(packet) <= MAX_CANCEL_PACKET_BYTES:
                metrics.cancel_requests_total.inc(outcome="invalid")
                return
            await self._handle(packet)
        except (OSError, TimeoutError):
            return
        finally:
            writer.close()
