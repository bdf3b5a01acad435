"""Drive a ``RecvBuffer`` exactly as an event loop does: ``get_buffer`` → recv → ``buffer_updated``.

stdlib asyncio releases its view before ``buffer_updated``; uvloop releases it after.  Both
orders are available (``hold_view``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import veilgate_native as vn


def split(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    """Cut ``data`` at the given offsets (taken modulo ``len(data) + 1``)."""
    points = sorted(c % (len(data) + 1) for c in cuts)
    chunks, prev = [], 0
    for p in [*points, len(data)]:
        chunks.append(data[prev:p])
        prev = p
    return chunks


def events_of(out: object) -> list[vn.Message]:
    """The Message events in one ``advance`` result."""
    return [m for m in out if isinstance(m, vn.Message)] if isinstance(out, list) else []


def read_cycle(
    rb: vn.RecvBuffer, payload: bytes, hint: int, *, hold_view: bool = False
) -> tuple[int, object]:
    """One loop iteration: prepare(hint), write up to ``len(rb)`` bytes of ``payload`` into
    ``memoryview(rb)``, release the view, advance.  Returns (bytes written, advance result)."""
    rb.prepare(hint)
    free = len(rb)
    assert free > 0, "get_buffer must never return an empty buffer"
    k = min(free, len(payload))
    view = memoryview(rb)
    try:
        assert len(view) == free and not view.readonly
        view[:k] = payload[:k]
        if hold_view:  # uvloop: buffer_updated runs while the recv buffer is still exported
            assert rb.exports == 1
            out = rb.advance(k)
        else:
            view.release()
            out = rb.advance(k)
    finally:
        view.release()
    assert rb.exports == 0
    return k, out


def feed_chunks(
    rb: vn.RecvBuffer,
    chunks: Sequence[bytes],
    hints: Sequence[int] = (-1,),
    *,
    hold_view: bool = False,
) -> list[object]:
    """Deliver each chunk as one or more reads (a read never exceeds the free tail)."""
    results: list[object] = []
    i = 0
    for chunk in chunks:
        off = 0
        while True:
            k, out = read_cycle(rb, chunk[off:], hints[i % len(hints)], hold_view=hold_view)
            i += 1
            results.append(out)
            off += k
            if off >= len(chunk):
                break
    return results
