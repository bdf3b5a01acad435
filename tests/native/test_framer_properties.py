"""Property tests: chunking invariance, differential against the reference framer, and a
stateful machine over the prepare / write / release / advance cycle."""

from __future__ import annotations

import struct

import veilgate_native as vn
from drive import feed_chunks, split
from hypothesis import given, note
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from reference_framer import (
    Output,
    command_complete,
    data_row,
    frame_stream,
    msg,
    normalize,
    ready_for_query,
    row_description,
)

# ---------------------------------------------------------------------------------------------
# Strategies

values = st.one_of(st.none(), st.binary(max_size=60))
rows = st.lists(st.lists(values, min_size=1, max_size=6), max_size=20)


@st.composite
def result_sets(draw: st.DrawFn) -> bytes:
    """RowDescription + DataRows + CommandComplete + ReadyForQuery."""
    ncols = draw(st.integers(1, 6))
    body_rows = draw(st.lists(st.lists(values, min_size=ncols, max_size=ncols), max_size=20))
    out = row_description([f"c{i}" for i in range(ncols)])
    out += b"".join(data_row(r) for r in body_rows)
    out += command_complete(f"SELECT {len(body_rows)}")
    return out + ready_for_query(draw(st.sampled_from([b"I", b"T", b"E"])))


other_messages = st.builds(
    msg,
    st.sampled_from([b"N", b"S", b"A", b"d", b"H", b"1", b"2", b"n", b"E"]),
    st.binary(max_size=300),
)

backend_streams = st.lists(st.one_of(result_sets(), other_messages), max_size=6).map(b"".join)
cuts = st.lists(st.integers(0, 1 << 20), max_size=12)
hints = st.lists(st.one_of(st.just(-1), st.integers(1, 64), st.just(65536)), min_size=1)
event_tags = st.sampled_from([b"", b"T", b"Z", b"TZE", b"DZ", b"H"])
capacities = st.sampled_from([1, 7, 64, 256, 4096, 65536])


def expected(stream: bytes, events: bytes, *, session: bool = False) -> Output:
    ref = frame_stream(stream, events=events, whole=b"Z" if session else b"")
    assert ref.error is None
    assert ref.consumed == len(stream)
    return ref.output


# ---------------------------------------------------------------------------------------------
# Chunking invariance


@given(
    stream=backend_streams,
    cut=cuts,
    hint=hints,
    events=event_tags,
    capacity=capacities,
    hold_view=st.booleans(),
    with_session=st.booleans(),
)
def test_any_split_gives_the_same_output(
    stream: bytes,
    cut: list[int],
    hint: list[int],
    events: bytes,
    capacity: int,
    hold_view: bool,
    with_session: bool,
) -> None:
    session = vn.SessionState() if with_session else None
    rb = vn.RecvBuffer(vn.SERVER, session, capacity=capacity)
    rb.set_events(events)
    results = feed_chunks(rb, split(stream, cut), hint, hold_view=hold_view)
    got = normalize(results)
    assert got.items == expected(stream, events, session=with_session).items
    assert got.flat() == stream
    assert rb.buffered == 0 and rb.exports == 0
    if session is not None:
        assert session.pending == 0
        z = [m for m in iter_messages(stream) if m[0] == ord("Z")]
        assert session.tx_status == (z[-1][5] if z else 0)


def iter_messages(stream: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(stream):
        (length,) = struct.unpack_from("!i", stream, pos + 1)
        out.append(stream[pos : pos + length + 1])
        pos += length + 1
    return out


# ---------------------------------------------------------------------------------------------
# Differential: arbitrary and corrupted bytes


@st.composite
def corrupted_streams(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(backend_streams))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["flip", "small_len", "huge_len", "truncate", "insert"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[i] = draw(st.integers(0, 255))
        elif kind == "small_len":
            data[i : i + 4] = struct.pack("!i", draw(st.integers(-(1 << 31), 3)))
        elif kind == "huge_len":
            data[i : i + 4] = struct.pack("!i", draw(st.integers(1 << 20, (1 << 31) - 1)))
        elif kind == "truncate":
            del data[i:]
        else:
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@given(
    data=st.one_of(st.binary(max_size=400), corrupted_streams()),
    cut=cuts,
    hint=hints,
    events=event_tags,
    all_events=st.booleans(),
    max_message=st.sampled_from([0, 3, 64, 1000, 1 << 30]),
    capacity=capacities,
)
def test_same_verdict_as_the_reference(
    data: bytes,
    cut: list[int],
    hint: list[int],
    events: bytes,
    all_events: bool,
    max_message: int,
    capacity: int,
) -> None:
    ref = frame_stream(data, events=events, all_events=all_events, max_message=max_message)
    rb = vn.RecvBuffer(vn.CLIENT, capacity=capacity, max_message=max_message)
    rb.set_events(events)
    rb.set_all_events(all_events)
    results: list[object] = []
    error = None
    try:
        for chunk in split(data, cut):
            results.extend(feed_chunks(rb, [chunk], hint))
    except vn.FramingError as e:
        error = e
    note(f"reference: {ref.error!r}, native: {error!r}")
    assert (error is None) == (ref.error is None)
    assert rb.exports == 0
    got = normalize(results)
    if error is None:
        assert got.items == ref.output.items
        assert rb.buffered == len(data) - ref.consumed
    else:
        # Whatever came out before the error is a prefix of what the reference accepted.
        assert ref.output.flat().startswith(got.flat())


# ---------------------------------------------------------------------------------------------
# Stateful: the prepare / export / write / release / advance cycle


class RecvBufferMachine(RuleBasedStateMachine):
    """Models one receive buffer fed a valid stream through views, in any legal order.

    Invariants: no growth or compaction while exported; ``exports`` counts live views; every
    byte written comes out exactly once, in order.
    """

    @initialize(
        stream=st.lists(st.one_of(result_sets(), other_messages), max_size=4).map(b"".join),
        capacity=capacities,
        events=event_tags,
    )
    def setup(self, stream: bytes, capacity: int, events: bytes) -> None:
        self.rb = vn.RecvBuffer(vn.SERVER, vn.SessionState(), capacity=capacity)
        self.rb.set_events(events)
        self.events = events
        self.stream = stream
        self.sent = 0  # bytes of `stream` written and advanced
        self.written = 0  # bytes written into the free tail, not yet advanced
        self.views: list[memoryview] = []
        self.fresh: memoryview | None = None  # a view taken since the last advance
        self.results: list[object] = []

    @rule(hint=st.one_of(st.just(-1), st.integers(0, 70000)))
    def prepare(self, hint: int) -> None:
        cap_before = self.rb.capacity
        if self.views:
            try:
                self.rb.prepare(hint)
            except BufferError:
                assert self.rb.capacity == cap_before
            else:
                raise AssertionError("prepare must refuse while exported")
        elif self.written == 0:
            self.rb.prepare(hint)
            assert len(self.rb) > 0

    @precondition(lambda self: self.written == 0 and len(self.rb) > 0)
    @rule()
    def take_view(self) -> None:
        v = memoryview(self.rb)
        assert len(v) == len(self.rb)
        self.views.append(v)
        self.fresh = v

    @precondition(lambda self: self.fresh is not None and self.written == 0)
    @rule(k=st.integers(1, 100_000))
    def recv(self, k: int) -> None:
        assert self.fresh is not None
        chunk = self.stream[self.sent : self.sent + min(k, len(self.fresh))]
        self.fresh[: len(chunk)] = chunk
        self.written = len(chunk)

    @precondition(lambda self: bool(self.views))
    @rule(i=st.integers(0, 10))
    def release(self, i: int) -> None:
        v = self.views.pop(i % len(self.views))
        if v is self.fresh:
            self.fresh = None
        v.release()

    @rule()
    def advance(self) -> None:
        cap_before = self.rb.capacity
        self.results.append(self.rb.advance(self.written))
        assert self.rb.capacity == cap_before
        self.sent += self.written
        self.written = 0
        self.fresh = None  # older views now point before `end`: only releasing them is legal

    @invariant()
    def exports_are_counted(self) -> None:
        if hasattr(self, "rb"):
            assert self.rb.exports == len(self.views)
            assert self.rb.buffered + len(self.rb) <= self.rb.capacity

    @invariant()
    def output_is_a_prefix(self) -> None:
        if hasattr(self, "rb"):
            out = normalize(self.results).flat()
            assert out == self.stream[: len(out)]
            assert len(out) + self.rb.buffered == self.sent

    def teardown(self) -> None:
        if not hasattr(self, "rb"):
            return
        for v in self.views:
            v.release()
        assert self.rb.exports == 0
        if self.written:  # the last recv landed; the loop would now call buffer_updated
            self.advance()
        # Deliver the rest; everything must come out, framed as the reference says.
        self.results.extend(feed_chunks(self.rb, [self.stream[self.sent :]], [-1]))
        assert normalize(self.results).items == expected(self.stream, self.events).items


TestRecvBufferMachine = RecvBufferMachine.TestCase
