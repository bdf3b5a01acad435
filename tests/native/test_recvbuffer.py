"""RecvBuffer API behaviour, one property at a time."""

from __future__ import annotations

import struct

import pytest
import veilgate_native as vn
from drive import events_of, feed_chunks, read_cycle
from reference_framer import (
    command_complete,
    data_row,
    msg,
    normalize,
    query,
    ready_for_query,
    startup_packet,
)


def test_module_constants() -> None:
    assert {vn.CLIENT, vn.SERVER} == {0, 1}
    assert vn.MAX_STARTUP_PACKET == 10_000
    assert issubclass(vn.FramingError, ValueError)
    for cls in (vn.RecvBuffer, vn.Message, vn.SessionState, vn.FramingError):
        assert cls.__module__ == "veilgate_native"


def test_constructor_checks() -> None:
    with pytest.raises(ValueError):
        vn.RecvBuffer(7)
    with pytest.raises(ValueError):
        vn.RecvBuffer(vn.CLIENT, capacity=0)
    rb = vn.RecvBuffer(vn.SERVER, None, capacity=1000, max_message=10)
    assert (rb.capacity, rb.max_message, rb.buffered, rb.exports) == (1000, 10, 0, 0)
    assert rb.direction == vn.SERVER
    rb.max_message = 99
    assert rb.max_message == 99
    assert "SERVER" in repr(rb)


def test_fast_path_is_one_bytes_object() -> None:
    rb = vn.RecvBuffer(vn.SERVER)
    stream = b"".join(data_row([b"a" * 30] * 6) for _ in range(50)) + command_complete("SELECT 50")
    (_, out) = read_cycle(rb, stream, 65536)
    assert type(out) is bytes and out == stream
    assert rb.buffered == 0


def test_nothing_to_do_returns_none() -> None:
    rb = vn.RecvBuffer(vn.SERVER)
    assert read_cycle(rb, b"Z\0\0", -1)[1] is None
    assert rb.buffered == 3
    assert rb.advance(0) is None
    _, out = read_cycle(rb, b"\0\x05I", -1)
    assert out == ready_for_query()


def test_events_come_out_in_order() -> None:
    rb = vn.RecvBuffer(vn.CLIENT)
    rb.set_events(b"QP")
    stream = msg(b"S") + query("select 1") + msg(b"H") + msg(b"H") + query("select 2")
    _, out = read_cycle(rb, stream, -1)
    assert isinstance(out, list)
    kinds = [type(x).__name__ for x in out]
    assert kinds == ["bytes", "Message", "bytes", "Message"]
    assert out[0] == msg(b"S") and out[2] == msg(b"H") * 2
    m = out[1]
    assert (m.tag, m.body, m.frame(), len(m)) == (ord("Q"), b"select 1\0", query("select 1"), 14)
    assert "Message 'Q'" in repr(m)
    rb.set_all_events(True)
    _, out = read_cycle(rb, msg(b"S") + msg(b"H"), -1)
    assert isinstance(out, list) and len(out) == 2
    assert [x.tag for x in events_of(out)] == [ord("S"), ord("H")]
    rb.set_all_events(False)
    _, out = read_cycle(rb, msg(b"S"), -1)
    assert out == msg(b"S")


def test_returned_bytes_are_copies() -> None:
    rb = vn.RecvBuffer(vn.SERVER, capacity=64)
    rb.set_events(b"T")
    first = ready_for_query()
    _, out = read_cycle(rb, first + msg(b"T", b"x"), -1)
    assert isinstance(out, list)
    fwd, ev = out
    assert isinstance(ev, vn.Message)
    # Overwrite the buffer's memory (now all free tail again): what we got must not change.
    rb.prepare(-1)
    assert len(rb) == rb.capacity
    with memoryview(rb) as v:
        v[:] = b"\xff" * len(v)
    assert fwd == first and ev.frame() == msg(b"T", b"x")


def test_framing_errors() -> None:
    rb = vn.RecvBuffer(vn.SERVER)
    with pytest.raises(vn.FramingError, match="below 4"):
        read_cycle(rb, b"D\0\0\0\x03", -1)
    rb = vn.RecvBuffer(vn.SERVER, max_message=10)
    read_cycle(rb, msg(b"D", b"x" * 10), -1)
    with pytest.raises(vn.FramingError, match="exceeds"):
        read_cycle(rb, msg(b"D", b"x" * 11), -1)
    with pytest.raises(ValueError):  # FramingError is a ValueError
        rb.advance(0)


def test_advance_checks_the_free_tail() -> None:
    rb = vn.RecvBuffer(vn.SERVER, capacity=100)
    rb.prepare(-1)
    with pytest.raises(ValueError, match="exceeds"):
        rb.advance(len(rb) + 1)
    with pytest.raises(OverflowError):
        rb.advance(-1)


def test_prepare_refuses_while_exported_and_len_is_the_free_tail() -> None:
    rb = vn.RecvBuffer(vn.SERVER, capacity=4096)
    rb.prepare(-1)
    assert len(rb) == rb.capacity == 4096
    v1 = memoryview(rb)
    v2 = memoryview(rb)
    assert rb.exports == 2 and len(v1) == 4096
    with pytest.raises(BufferError):
        rb.prepare(-1)
    v1.release()
    with pytest.raises(BufferError):
        rb.prepare(-1)
    v2.release()
    assert rb.exports == 0
    rb.prepare(-1)


def test_full_buffer_cannot_be_exported() -> None:
    rb = vn.RecvBuffer(vn.SERVER, capacity=16)
    rb.set_events(b"T")
    rb.prepare(1)
    free = len(rb)
    with memoryview(rb) as v:
        v[:free] = (msg(b"T", b"x" * 100))[:free]
    rb.advance(free)
    assert len(rb) == 0
    with pytest.raises(BufferError):
        memoryview(rb)
    rb.prepare(1)  # grows to fit the pending event
    assert len(rb) > 0 and rb.capacity >= 105


def test_event_larger_than_capacity_grows_then_shrinks() -> None:
    rb = vn.RecvBuffer(vn.CLIENT, capacity=1024)
    rb.set_events(b"Q")
    big = query("select '" + "x" * 100_000 + "'")
    results = feed_chunks(rb, [big], [65536])
    assert rb.capacity >= len(big)
    assert normalize(results).items == [("event", big)]
    rb.prepare(-1)
    assert rb.capacity == 1024


def test_huge_pass_through_streams_with_bounded_memory() -> None:
    rb = vn.RecvBuffer(vn.SERVER, capacity=4096)
    big = data_row([b"y" * 1_000_000])
    results = feed_chunks(rb, [big + ready_for_query()], [4096])
    assert all(r is None or type(r) is bytes for r in results)
    assert normalize(results).flat() == big + ready_for_query()
    assert rb.capacity == 4096
    assert all(r is None or type(r) is bytes for r in results)


def test_startup_mode() -> None:
    rb = vn.RecvBuffer(vn.CLIENT)
    rb.set_startup_mode(True)
    ssl = struct.pack("!ii", 8, 80877103)
    sp = startup_packet({"user": "agent", "database": "app"})
    _, out = read_cycle(rb, ssl + sp[:10], -1)
    assert out is None
    assert rb.take_startup() == ssl
    assert rb.take_startup() is None
    read_cycle(rb, sp[10:] + query("select 1")[:3], -1)
    assert rb.take_startup() == sp
    rb.set_startup_mode(False)
    _, out = read_cycle(rb, query("select 1")[3:], -1)
    assert out == query("select 1")


def test_startup_packet_growth_and_errors() -> None:
    rb = vn.RecvBuffer(vn.CLIENT, capacity=16)
    rb.set_startup_mode(True)
    sp = startup_packet({"user": "u" * 5000})
    feed_chunks(rb, [sp], [1])
    assert rb.take_startup() == sp
    for bad in (struct.pack("!i", 7), struct.pack("!i", 10_001), struct.pack("!i", -1)):
        rb = vn.RecvBuffer(vn.CLIENT)
        rb.set_startup_mode(True)
        read_cycle(rb, bad, -1)
        with pytest.raises(vn.FramingError, match="start-up"):
            rb.take_startup()


def test_stats_count_both_directions() -> None:
    before = vn.stats()
    assert set(before) == {"client_bytes", "client_messages", "server_bytes", "server_messages"}
    c = vn.RecvBuffer(vn.CLIENT)
    s = vn.RecvBuffer(vn.SERVER)
    read_cycle(c, query("select 1") + msg(b"S"), -1)
    read_cycle(s, ready_for_query() + ready_for_query()[:2], -1)
    after = vn.stats()
    assert after["client_bytes"] - before["client_bytes"] == len(query("select 1")) + 5
    assert after["client_messages"] - before["client_messages"] == 2
    assert after["server_bytes"] - before["server_bytes"] == 8
    assert after["server_messages"] - before["server_messages"] == 1
