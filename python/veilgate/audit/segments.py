"""The directory of segment files: listing, locking, and where an earlier run left off."""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from .format import Line, parse_line, segment_name, segment_number

__all__ = ["AuditDirLocked", "ResumePoint", "SegmentDir", "read_lines", "worker_dirs"]

LOCK_FILE = ".lock"
ROTATE_REQUEST = "rotate.request"
"""``veilgate audit rotate`` creates this file; the running gateway rotates and removes it."""


def worker_dirs(path: str | os.PathLike[str]) -> list[Path]:
    """``serve --workers N`` records worker ``k`` into ``<audit.dir>/worker-<k>`` (one writer,
    one hash chain per directory): those subdirectories of ``path`` by worker number."""
    p = Path(path)
    if not p.is_dir():
        return []
    found = []
    for e in os.scandir(p):
        name = e.name
        if name.startswith("worker-") and name[7:].isdigit() and e.is_dir(follow_symlinks=False):
            found.append((int(name[7:]), Path(e.path)))
    return [d for _, d in sorted(found)]


class AuditDirLocked(RuntimeError):
    """Another process records into this directory."""


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where the previous run's chain ended."""

    next_seq: int = 1
    next_batch: int = 1
    prev_seal: bytes | None = None
    next_segment: int = 1
    last_segment: int | None = None
    clean: bool = True
    """The last segment ended with a trailer (the previous run stopped cleanly)."""
    torn_bytes: int = 0
    """Bytes after the last seal of the last segment (a write the previous run did not finish)."""


def read_lines(path: Path) -> tuple[list[tuple[bytes, Line | None]], int]:
    """Every complete line of a segment with its parse (None: it does not parse), and the byte
    count of a final line without its newline (a torn write)."""
    data = path.read_bytes()
    parts = data.split(b"\n")
    return [(raw, parse_line(raw, i)) for i, raw in enumerate(parts[:-1], 1)], len(parts[-1])


class SegmentDir:
    """A recording directory (one writing gateway at a time: see :meth:`lock`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock_fd: int | None = None

    def ensure(self) -> None:
        self.path.mkdir(mode=0o700, parents=False, exist_ok=True)

    def lock(self) -> None:
        """Take the directory's writer lock (released by :meth:`unlock` or process exit)."""
        fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AuditDirLocked(
                f"{self.path}: another process is recording into this directory"
            ) from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def segments(self) -> list[tuple[int, Path]]:
        """Segment files by number."""
        found = []
        try:
            entries = list(os.scandir(self.path))
        except FileNotFoundError:
            return []
        for e in entries:
            n = segment_number(e.name)
            if n is not None and e.is_file():
                found.append((n, Path(e.path)))
        return sorted(found)

    def segment_path(self, number: int) -> Path:
        return self.path / segment_name(number)

    def rotate_requested(self) -> bool:
        return (self.path / ROTATE_REQUEST).exists()

    def clear_rotate_request(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.path / ROTATE_REQUEST).unlink()

    def resume_point(self) -> ResumePoint:
        """Where to continue: after the last seal of the newest segment that has one."""
        segs = self.segments()
        if not segs:
            return ResumePoint()
        last_number = segs[-1][0]
        for number, path in reversed(segs):
            try:
                lines, torn = read_lines(path)
            except OSError:
                continue
            parsed = [ln for _, ln in lines]
            last = number == last_number
            clean = bool(parsed) and parsed[-1] is not None and parsed[-1].kind == "trailer"
            # bytes after the last seal or trailer: a batch the previous run did not finish
            end = max(
                (i for i, ln in enumerate(parsed) if ln and ln.kind in ("seal", "trailer")),
                default=0 if parsed and parsed[0] and parsed[0].kind == "header" else -1,
            )
            after = sum(len(raw) + 1 for raw, _ in lines[end + 1 :]) + torn
            seal = next((ln for ln in reversed(parsed) if ln and ln.kind == "seal"), None)
            header = parsed[0] if parsed and parsed[0] and parsed[0].kind == "header" else None
            if seal is None and header is None:
                continue
            if seal is not None:
                d = seal.data
                next_seq, next_batch = int(d["last_seq"]) + 1, int(d["seal"]) + 1
                prev: bytes | None = seal.hash
            else:
                assert header is not None
                d = header.data
                next_seq, next_batch = int(d["first_seq"]), int(d["first_batch"])
                hexed = d.get("prev_seal") or ""
                prev = bytes.fromhex(hexed) if hexed else None
            return ResumePoint(
                next_seq=next_seq,
                next_batch=next_batch,
                prev_seal=prev,
                next_segment=last_number + 1,
                last_segment=last_number,
                clean=clean if last else False,
                torn_bytes=after if last else 0,
            )
        return ResumePoint(next_segment=last_number + 1, last_segment=last_number, clean=False)
