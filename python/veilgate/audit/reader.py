"""Reading a recording back: records in order, per session, as plain dicts.

Readers do not verify (``veilgate sessions verify`` does); they skip what does not parse.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .format import GATEWAY_SID
from .segments import SegmentDir, read_lines, worker_dirs

__all__ = ["Record", "read_records", "segment_paths", "session_records", "sessions"]

Record = dict[str, Any]


def segment_paths(path: str | Path) -> list[Path]:
    """The segment files of a directory in order, or the file itself; with ``serve --workers
    N`` workers' recordings (``worker-<k>`` subdirectories) also worker 0's, worker 1's..."""
    p = Path(path)
    if p.is_dir():
        own = [seg for _, seg in SegmentDir(p).segments()]
        return own + [seg for d in worker_dirs(p) for _, seg in SegmentDir(d).segments()]
    return [p]


def read_records(path: str | Path, *, sid: str | None = None) -> Iterator[Record]:
    """Every record (not headers, seals or trailers) of a directory or segment, in order;
    only session ``sid``'s with ``sid``."""
    needle = f'"sid":"{sid}"'.encode() if sid is not None else None
    for seg in segment_paths(path):
        try:
            lines, _ = read_lines(seg)
        except OSError:
            continue
        for raw, ln in lines:
            if ln is None or ln.kind != "record":
                continue
            if needle is not None and needle not in raw:
                continue
            if sid is not None and ln.data.get("sid") != sid:
                continue
            yield ln.data


def session_records(path: str | Path, sid: str) -> list[Record]:
    return list(read_records(path, sid=sid))


def sessions(path: str | Path) -> dict[str, list[Record]]:
    """Records grouped by session (the gateway's own stream left out)."""
    out: dict[str, list[Record]] = {}
    for r in read_records(path):
        s = r.get("sid")
        if isinstance(s, str) and s != GATEWAY_SID:
            out.setdefault(s, []).append(r)
    return out
