"""Cross-process wake-ups for the SQLite backend: datagrams to every listening process.

SQLite has no LISTEN/NOTIFY, yet a decision written by ``veilgate approvals approve`` (another
process) must wake the gateway's waiting session at once, without a polling loop.  Each process
that listens binds a Unix datagram socket registered in ``<state file>.wake/`` (a directory made
0700 beside the file); :func:`send` delivers a small datagram to each registered socket after the
writer's transaction committed.  A socket whose process is gone is unregistered by the next sender.

A datagram is only a hint ("look again"): receivers re-read the state database and never act on
its content alone, so a stray or forged datagram costs one read, nothing more.  Socket paths that
would exceed the kernel's limit use the Linux abstract namespace instead (the registry entry is
then a plain file).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import secrets
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = ["WakeListener", "send", "wake_dir"]

_MAX_PATH: Final = 100
"""Longest filesystem socket path used (the kernel's sun_path is 108 bytes with the NUL)."""
_MAX_DATAGRAM: Final = 4096
_SUFFIX: Final = ".sock"


def wake_dir(db_path: str | os.PathLike[str]) -> Path:
    return Path(f"{os.fspath(db_path)}.wake")


def _abstract(directory: Path, name: str) -> bytes:
    digest = hashlib.sha256(os.fsencode(directory.resolve())).hexdigest()[:20]
    return b"\0veilgate-wake-" + digest.encode() + b"-" + name.encode()


def _address(directory: Path, entry: str) -> str | bytes:
    path = directory / entry
    if stat.S_ISSOCK(path.lstat().st_mode):  # FileNotFoundError: unregistered meanwhile
        return str(path)
    return _abstract(directory, entry[: -len(_SUFFIX)])


def send(db_path: str | os.PathLike[str], channel: str, payload: str) -> int:
    """Send one datagram to every registered listener; returns how many got it."""
    directory = wake_dir(db_path)
    try:
        entries = [e for e in os.listdir(directory) if e.endswith(_SUFFIX)]
    except FileNotFoundError:
        return 0
    data = json.dumps({"c": channel, "p": payload}, separators=(",", ":")).encode()
    if len(data) > _MAX_DATAGRAM:
        data = json.dumps({"c": channel, "p": ""}).encode()  # a hint is enough
    sent = 0
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for entry in entries:
            try:
                sock.sendto(data, _address(directory, entry))
                sent += 1
            except (ConnectionRefusedError, FileNotFoundError):
                # the process that registered it is gone
                with contextlib.suppress(OSError):
                    (directory / entry).unlink()
            except BlockingIOError:
                sent += 1  # its queue is full: it has wake-ups pending already
            except OSError:
                continue
    return sent


class WakeListener:
    """This process's registered socket; ``callback(channel, payload)`` runs on the loop."""

    def __init__(
        self, db_path: str | os.PathLike[str], callback: Callable[[str, str], None]
    ) -> None:
        self.directory = wake_dir(db_path)
        self._callback = callback
        self._sock: socket.socket | None = None
        self._entry: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self.directory.mkdir(mode=0o700, exist_ok=True)
        name = f"{os.getpid()}-{secrets.token_hex(6)}"
        entry = self.directory / f"{name}{_SUFFIX}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            if len(os.fsencode(entry)) <= _MAX_PATH:
                sock.bind(str(entry))
            else:
                sock.bind(_abstract(self.directory, name))
                fd = os.open(entry, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
                os.close(fd)
        except BaseException:
            sock.close()
            raise
        self._sock, self._entry = sock, entry
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(_MAX_DATAGRAM + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            try:
                msg = json.loads(data)
                channel, payload = str(msg["c"]), str(msg["p"])
            except (ValueError, KeyError, TypeError):
                continue
            self._callback(channel, payload)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(Exception):
                self._loop.remove_reader(sock.fileno())
        sock.close()
        if self._entry is not None:
            with contextlib.suppress(OSError):
                self._entry.unlink()
