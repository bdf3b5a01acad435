"""SessionState: requests counted on the client side, answered on the server side."""

from __future__ import annotations

import veilgate_native as vn
from drive import events_of, read_cycle
from reference_framer import msg, query, ready_for_query


def pair() -> tuple[vn.SessionState, vn.RecvBuffer, vn.RecvBuffer]:
    s = vn.SessionState()
    return s, vn.RecvBuffer(vn.CLIENT, s), vn.RecvBuffer(vn.SERVER, s)


def test_fresh_session() -> None:
    s = vn.SessionState()
    assert (s.pending, s.busy, s.tx_status) == (0, False, 0)
    assert "pending=0" in repr(s)


def test_simple_query_round_trip_records_latency() -> None:
    s, client, server = pair()
    # The ReadyForQuery that ends start-up answers no request.
    read_cycle(server, ready_for_query(b"I"), -1)
    assert (s.pending, s.busy, s.tx_status) == (0, False, ord("I"))
    before = vn.latency_histogram()
    read_cycle(client, query("begin"), -1)
    assert (s.pending, s.busy) == (1, True)
    # Server-side 'S' / 'D' / 'C' are ParameterStatus / DataRow / CommandComplete: not requests.
    read_cycle(server, msg(b"S", b"a\0b\0") + msg(b"C", b"BEGIN\0") + msg(b"D", b"\0\0"), -1)
    assert s.pending == 1
    read_cycle(server, ready_for_query(b"T"), -1)
    assert (s.pending, s.busy, s.tx_status) == (0, False, ord("T"))
    bounds, counts, total, count = vn.latency_histogram()
    assert bounds == [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
        1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    ]  # fmt: skip
    assert len(counts) == len(bounds)
    assert counts == sorted(counts)  # cumulative
    assert count == before[3] + 1 and counts[-1] <= count
    assert total >= before[2]


def test_extended_protocol_pipeline() -> None:
    s, client, server = pair()
    parse, bind, execute = (
        msg(b"P", b"\0select 1\0\0\0"),
        msg(b"B", b"\0" * 8),
        msg(b"E", b"\0" * 5),
    )
    read_cycle(client, parse + bind + execute, -1)
    assert (s.pending, s.busy) == (0, True)  # unsynced activity
    read_cycle(client, msg(b"S") + parse + bind + execute + msg(b"S"), -1)
    assert (s.pending, s.busy) == (2, True)
    read_cycle(server, msg(b"1") + msg(b"2") + ready_for_query() + ready_for_query()[:5], -1)
    assert (s.pending, s.busy) == (1, True)
    read_cycle(server, b"E", -1)  # the status byte arrives in its own read
    assert (s.pending, s.busy, s.tx_status) == (0, False, ord("E"))
    # Describe and Close from a client ('D', 'C') are extended-protocol activity too.
    read_cycle(client, msg(b"D", b"S\0") + msg(b"C", b"S\0"), -1)
    assert (s.pending, s.busy) == (0, True)


def test_function_call_and_extra_ready_for_query() -> None:
    s, client, server = pair()
    read_cycle(client, msg(b"F", b"\0" * 10) + msg(b"X"), -1)
    assert s.pending == 1
    read_cycle(server, ready_for_query() * 3, -1)  # saturating
    assert (s.pending, s.busy) == (0, False)


def test_discard_request() -> None:
    s, client, _ = pair()
    read_cycle(client, query("delete from t"), -1)
    assert s.discard_request() is True
    assert (s.pending, s.busy) == (0, False)
    assert s.discard_request() is False


def test_events_still_count() -> None:
    s, client, server = pair()
    client.set_events(b"Q")
    server.set_events(b"Z")
    _, out = read_cycle(client, query("select 1"), -1)
    assert isinstance(out, list) and len(out) == 1
    assert [m.tag for m in events_of(out)] == [ord("Q")]
    assert s.pending == 1
    _, out = read_cycle(server, ready_for_query(b"I"), -1)
    assert isinstance(out, list) and len(out) == 1
    assert [m.body for m in events_of(out)] == [b"I"]
    assert s.pending == 0


def test_buffers_without_a_session_track_nothing() -> None:
    s = vn.SessionState()
    client = vn.RecvBuffer(vn.CLIENT)
    read_cycle(client, query("select 1"), -1)
    assert s.pending == 0


def test_extended_copy_from_stdin_does_not_leak_a_request() -> None:
    # libpq PQexecParams("COPY t FROM STDIN"): P B D E S pipelined; the server ignores that Sync
    # in copy-in mode, and answers the Sync sent after CopyDone.
    s, client, server = pair()
    read_cycle(
        client,
        msg(b"P", b"\0copy t from stdin\0\0\0")
        + msg(b"B", b"\0" * 8)
        + msg(b"D", b"P\0")
        + msg(b"E", b"\0" * 5)
        + msg(b"S"),
        -1,
    )
    assert (s.pending, s.busy) == (1, True)
    read_cycle(server, msg(b"1") + msg(b"2") + msg(b"G", b"\0\0\1\0\0"), -1)
    assert (s.pending, s.busy) == (0, True)  # copying
    read_cycle(client, msg(b"d", b"1\tx\n") + msg(b"c") + msg(b"S"), -1)
    assert s.pending == 1
    read_cycle(server, msg(b"C", b"COPY 1\0") + ready_for_query(), -1)
    assert (s.pending, s.busy) == (0, False)


def test_since_ready_counts_messages_since_the_server_answered_everything() -> None:
    """The enforcer judges a text by the settings the server last reported only when it is the
    first message since a ReadyForQuery that left nothing pending or unsynced."""
    s, client, server = pair()
    read_cycle(server, ready_for_query(b"I"), -1)
    assert s.since_ready == 0
    read_cycle(client, query("set standard_conforming_strings = off"), -1)
    assert s.since_ready == 1
    read_cycle(client, query("select 1"), -1)  # sent before the first was answered
    assert s.since_ready == 2
    read_cycle(server, ready_for_query(b"I"), -1)
    assert s.since_ready == 2  # one request still pending
    read_cycle(server, ready_for_query(b"I"), -1)
    assert s.since_ready == 0
    # an unsynced Execute (a prepared SET) keeps what follows it uncertain
    read_cycle(client, msg(b"B", b"\0" * 8) + msg(b"E", b"\0" * 5), -1)
    read_cycle(client, query("select 2"), -1)
    assert s.since_ready == 3
    read_cycle(server, ready_for_query(b"I"), -1)
    assert s.since_ready == 0
    read_cycle(client, msg(b"B", b"\0" * 8) + msg(b"E", b"\0" * 5), -1)
    read_cycle(server, msg(b"C", b"SET\0"), -1)
    assert s.since_ready == 2  # answered, but not synced: no ReadyForQuery yet
    read_cycle(client, msg(b"S"), -1)
    read_cycle(server, ready_for_query(b"I"), -1)
    assert s.since_ready == 0
