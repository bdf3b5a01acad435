"""Micro benches of the native receive path: ``RecvBuffer.prepare`` / ``advance``.

    python -m pytest bench/bench_framer.py --benchmark-enable --benchmark-group-by=group
    python -m pytest bench/bench_framer.py          # default: each body runs once, as a test

Needs a release build of the engine (``make native``).  Groups:

* ``framer-passthrough``: a DataRow-heavy result (1,000 rows x 6 text columns of ~30 bytes)
  forwarded as is.  ``advance`` re-frames one 64 KiB read already in the buffer (framing plus the
  one ``bytes`` copy of the coalesced range); ``loop-feed`` delivers the whole result in 64 KiB
  reads as an event loop does (prepare, write into ``memoryview(rb)``, release, advance).
  ``extra_info["MB/s"]`` is the throughput.
* ``framer-small-query``: one small query round (client Query, server CommandComplete +
  ReadyForQuery) through a session's two buffers, with the Query forwarded or surfaced as an event.
"""

from __future__ import annotations

import struct
from typing import Any

import veilgate_native as vn

READ = 65536


def msg(tag: bytes, body: bytes = b"") -> bytes:
    return tag + struct.pack("!i", len(body) + 4) + body


def data_row(values: list[bytes]) -> bytes:
    body = struct.pack("!h", len(values))
    for v in values:
        body += struct.pack("!i", len(v)) + v
    return msg(b"D", body)


def result_rows(n: int = 1000) -> list[bytes]:
    return [
        data_row([f"{c}-{i:06d}-".encode().ljust(30, b"x") for c in "abcdef"]) for i in range(n)
    ]


def record_throughput(benchmark: Any, nbytes: int) -> None:
    benchmark.extra_info["bytes_per_call"] = nbytes
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.mean > 0:
        benchmark.extra_info["MB/s"] = round(nbytes / stats.stats.mean / 1e6, 1)
        benchmark.extra_info["MB/s (median)"] = round(nbytes / stats.stats.median / 1e6, 1)


def write(rb: vn.RecvBuffer, data: bytes) -> None:
    with memoryview(rb) as view:
        view[: len(data)] = data


def test_passthrough_advance(benchmark: Any) -> None:
    """Framing one 64 KiB read of whole DataRows: the Rust walk plus one PyBytes copy."""
    benchmark.group = "framer-passthrough"
    rows = result_rows()
    chunk = b""
    for r in rows:
        if len(chunk) + len(r) > READ:
            break
        chunk += r
    rb = vn.RecvBuffer(vn.SERVER, vn.SessionState())
    rb.prepare(READ)
    write(rb, chunk)
    n = len(chunk)

    def once() -> object:
        # After a full consume, prepare() resets to offset 0, where `chunk` still sits.
        rb.prepare(READ)
        return rb.advance(n)

    out = benchmark(once)
    assert out == chunk
    record_throughput(benchmark, n)


def test_passthrough_loop_feed(benchmark: Any) -> None:
    """The whole result in 64 KiB reads, driven like an event loop (the copy a recv would do
    included)."""
    benchmark.group = "framer-passthrough"
    stream = b"".join(result_rows()) + msg(b"C", b"SELECT 1000\0") + msg(b"Z", b"I")
    reads = [stream[i : i + READ] for i in range(0, len(stream), READ)]
    rb = vn.RecvBuffer(vn.SERVER, vn.SessionState())
    rb.set_events(b"T")

    def feed() -> int:
        total = 0
        for data in reads:
            rb.prepare(READ)
            with memoryview(rb) as view:
                view[: len(data)] = data
            out = rb.advance(len(data))
            total += len(out) if type(out) is bytes else 0
        return total

    assert benchmark(feed) == len(stream)
    record_throughput(benchmark, len(stream))


def small_query_round(events: bytes) -> tuple[Any, int]:
    session = vn.SessionState()
    client = vn.RecvBuffer(vn.CLIENT, session)
    server = vn.RecvBuffer(vn.SERVER, session)
    client.set_events(events)
    server.set_events(b"T")
    q = msg(b"Q", b"select 1 from pgbench_branches where bid = 1\0")
    reply = msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I")
    for rb, data in ((client, q), (server, reply)):
        rb.prepare(READ)
        write(rb, data)

    def round_trip() -> tuple[object, object]:
        client.prepare(READ)
        a = client.advance(len(q))
        server.prepare(READ)
        b = server.advance(len(reply))
        return a, b

    return round_trip, len(q) + len(reply)


def test_small_query_forwarded(benchmark: Any) -> None:
    benchmark.group = "framer-small-query"
    fn, _ = small_query_round(b"")
    a, b = benchmark(fn)
    assert type(a) is bytes and type(b) is bytes


def test_small_query_as_event(benchmark: Any) -> None:
    benchmark.group = "framer-small-query"
    fn, _ = small_query_round(b"Q")
    a, b = benchmark(fn)
    assert isinstance(a, list) and a[0].tag == ord("Q") and type(b) is bytes
