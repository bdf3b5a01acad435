"""A pure-Python reference of the native framer, plus a small PostgreSQL message encoder.

Deliberately simple and slow: it reads the whole stream at once and says what the native
``RecvBuffer`` must produce for it, however the stream is cut into reads.

Semantics (mirrors ``veilgate_core::framer``):

* a tagged message is ``tag:u8, len:i32 (counts itself), body[len-4]``;
* ``len < 4`` or ``len - 4 > max_message`` is malformed;
* messages whose tag is an event (or every message with ``all_events``) come out whole as events;
* every other message is forwarded; a pass-through message cut off by the end of the stream is
  forwarded as far as it goes (the native framer streams such messages), an event message cut
  off is not output at all (it waits for more bytes);
* a header cut off by the end of the stream waits, too.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

MAX_STARTUP_PACKET = 10_000


class ReferenceFramingError(ValueError):
    pass


def msg(tag: bytes | int, body: bytes = b"") -> bytes:
    """Encode one tagged message."""
    t = bytes([tag]) if isinstance(tag, int) else tag
    return t + struct.pack("!i", len(body) + 4) + body


def data_row(values: list[bytes | None]) -> bytes:
    body = struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return msg(b"D", body)


def row_description(names: list[str]) -> bytes:
    body = struct.pack("!h", len(names))
    for n in names:
        # name, table oid, attnum, type oid (text), typlen, typmod, format
        body += n.encode() + b"\0" + struct.pack("!ihihih", 0, 0, 25, -1, -1, 0)
    return msg(b"T", body)


def command_complete(tag: str) -> bytes:
    return msg(b"C", tag.encode() + b"\0")


def ready_for_query(status: bytes = b"I") -> bytes:
    return msg(b"Z", status)


def query(sql: str) -> bytes:
    return msg(b"Q", sql.encode() + b"\0")


def startup_packet(params: dict[str, str]) -> bytes:
    body = struct.pack("!i", 196608)
    for k, v in params.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!i", len(body) + 4) + body


def result_set(rows: list[list[bytes | None]], names: list[str]) -> bytes:
    out = row_description(names)
    out += b"".join(data_row(r) for r in rows)
    return out + command_complete(f"SELECT {len(rows)}") + ready_for_query()


@dataclass
class Output:
    """Normalized output: adjacent forwarded chunks merged, events as whole frames."""

    items: list[tuple[str, bytes]] = field(default_factory=list)

    def forward(self, data: bytes) -> None:
        if not data:
            return
        if self.items and self.items[-1][0] == "fwd":
            self.items[-1] = ("fwd", self.items[-1][1] + data)
        else:
            self.items.append(("fwd", data))

    def event(self, frame: bytes) -> None:
        self.items.append(("event", frame))

    def flat(self) -> bytes:
        return b"".join(b for _, b in self.items)


@dataclass
class Result:
    output: Output
    consumed: int
    error: ReferenceFramingError | None


def frame_stream(
    data: bytes,
    *,
    events: bytes = b"",
    all_events: bool = False,
    max_message: int = 1 << 30,
    whole: bytes = b"",
) -> Result:
    """Frame a whole stream.  ``whole``: pass-through tags that must also arrive whole."""
    out = Output()
    pos = 0
    n = len(data)
    event_set = set(events)
    whole_set = set(whole) | event_set
    while n - pos >= 5:
        tag = data[pos]
        (length,) = struct.unpack_from("!i", data, pos + 1)
        if length < 4:
            return Result(out, pos, ReferenceFramingError(f"length {length} below 4"))
        if length - 4 > max_message:
            return Result(out, pos, ReferenceFramingError(f"length {length} over max"))
        total = length + 1
        is_event = all_events or tag in event_set
        if n - pos >= total:
            frame = data[pos : pos + total]
            if is_event:
                out.event(frame)
            else:
                out.forward(frame)
            pos += total
        elif is_event or tag in whole_set:
            break
        else:
            out.forward(data[pos:])
            pos = n
    return Result(out, pos, None)


def normalize(results: list[object]) -> Output:
    """Normalize what successive ``RecvBuffer.advance`` calls returned."""
    out = Output()
    for r in results:
        if r is None:
            continue
        if isinstance(r, bytes):
            out.forward(r)
            continue
        assert isinstance(r, list), r
        for item in r:
            if isinstance(item, bytes):
                out.forward(item)
            else:
                out.event(item.frame())
    return out
