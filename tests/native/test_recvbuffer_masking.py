"""RecvBuffer masking: barriers, row plans installed and ended in stream order, required masking.

A small control plane drives the buffer the way the gateway does: ``set_events(b"TH")``,
``set_barrier_events(b"TH")``; on a RowDescription / CopyOutResponse event (the last item of an
``advance`` that stopped at the barrier) it installs the result set's plan, then ``advance(0)``
until the buffer is no longer at a barrier.  Streams are cut into arbitrary reads (hypothesis):
the output must not depend on the cuts, and must equal the stream with every planned row
masked.
"""

from __future__ import annotations

import csv
import io
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest
import veilgate_native as vn
from drive import read_cycle, split
from hypothesis import given
from hypothesis import strategies as st
from reference_framer import (
    command_complete,
    data_row,
    msg,
    normalize,
    ready_for_query,
    row_description,
)

STAR = vn.Operator("replace", value="***", entity="SSN")
EMAILS = vn.Masker(entities=["EMAIL"])

Plan = vn.RowPlan | vn.CopyPlan | None


@dataclass
class ControlPlane:
    """Installs ``plans[i]`` at the i-th barrier event; records every ``advance`` result."""

    rb: vn.RecvBuffer
    plans: Sequence[Plan]
    results: list[object] = field(default_factory=list)
    installed: int = 0

    def handle(self, out: object) -> None:
        self.results.append(out)
        while self.rb.at_barrier:
            assert isinstance(out, list) and isinstance(out[-1], vn.Message)
            assert out[-1].tag in b"TH"
            self.rb.set_row_plan(self.plans[self.installed])
            self.installed += 1
            out = self.rb.advance(0)
            self.results.append(out)

    def feed(self, chunks: Sequence[bytes], hint: int = -1) -> None:
        for chunk in chunks:
            off = 0
            while True:
                k, out = read_cycle(self.rb, chunk[off:], hint)
                off += k
                self.handle(out)
                if off >= len(chunk):
                    break

    def forwarded(self) -> bytes:
        """Everything that left, events included, in order."""
        return normalize(self.results).flat()


def server_buffer(*, mask_required: bool = False) -> vn.RecvBuffer:
    rb = vn.RecvBuffer(vn.SERVER, vn.SessionState(), capacity=256)
    rb.set_events(b"TH")
    rb.set_barrier_events(b"TH")
    rb.set_mask_required(mask_required)
    return rb


def masked_row(values: list[bytes | None], masks: list[bool]) -> bytes:
    """What a RowPlan of KEEP / TEXT(STAR) makes of a DataRow."""
    return data_row(
        [b"***" if m and v is not None else v for v, m in zip(values, masks, strict=True)]
    )


def row_plan(masks: list[bool]) -> vn.RowPlan:
    return vn.RowPlan([(vn.TEXT, STAR) if m else (vn.KEEP, None) for m in masks])


# --- examples ----------------------------------------------------------------------------------


def test_barrier_stops_after_the_event_and_advance_0_goes_on() -> None:
    rb = server_buffer()
    desc = row_description(["ssn"])
    stream = msg(b"1") + desc + data_row([b"123-45-6789"]) + command_complete("SELECT 1")
    _, out = read_cycle(rb, stream, -1)
    assert isinstance(out, list) and rb.at_barrier
    assert out[0] == msg(b"1") and isinstance(out[1], vn.Message) and out[1].frame() == desc
    assert rb.buffered == len(stream) - len(msg(b"1") + desc)
    rb.set_row_plan(row_plan([True]))
    assert rb.row_plan_active
    out = rb.advance(0)
    assert not rb.at_barrier
    assert out == data_row([b"***"]) + command_complete("SELECT 1")
    assert not rb.row_plan_active  # CommandComplete ended it
    assert rb.advance(0) is None


def test_one_read_leaves_as_one_bytes_object() -> None:
    rb = server_buffer()
    rb.set_row_plan(row_plan([False, True]))
    notice = msg(b"N", b"SNOTICE\0\0")
    stream = (
        data_row([b"1", b"a"])
        + notice
        + data_row([b"2", None])
        + data_row([b"3", b"b"])
        + command_complete("SELECT 3")
        + ready_for_query()
    )
    _, out = read_cycle(rb, stream, -1)
    assert type(out) is bytes
    assert out == (
        masked_row([b"1", b"a"], [False, True])
        + notice
        + data_row([b"2", None])
        + masked_row([b"3", b"b"], [False, True])
        + command_complete("SELECT 3")
        + ready_for_query()
    )


@pytest.mark.parametrize("end", [b"C", b"s", b"I", b"E", b"Z", b"n", b"T"])
def test_every_result_end_clears_the_plan(end: bytes) -> None:
    rb = vn.RecvBuffer(vn.SERVER)
    rb.set_row_plan(row_plan([True]))
    stream = data_row([b"x"]) + msg(end, b"I") + data_row([b"y"])
    _, out = read_cycle(rb, stream, -1)
    assert out == data_row([b"***"]) + msg(end, b"I") + data_row([b"y"])
    assert not rb.row_plan_active


def test_plan_can_be_replaced_and_removed() -> None:
    rb = vn.RecvBuffer(vn.SERVER)
    first = row_plan([True])
    rb.set_row_plan(first)
    _, out = read_cycle(rb, data_row([b"a"]), -1)
    assert out == data_row([b"***"])
    rb.set_row_plan(vn.RowPlan([(vn.NULL, None)]))
    _, out = read_cycle(rb, data_row([b"b"]), -1)
    assert out == data_row([None])
    rb.set_row_plan(None)
    assert not rb.row_plan_active
    _, out = read_cycle(rb, data_row([b"c"]), -1)
    assert out == data_row([b"c"])
    assert first.take_tally() == [{"SSN": 1}]


def test_mask_required_refuses_a_stray_row() -> None:
    rb = server_buffer(mask_required=True)
    assert rb.mask_required
    before = command_complete("SELECT 0")
    with pytest.raises(vn.MaskingError, match="no masking plan"):
        read_cycle(rb, before + data_row([b"123-45-6789"]), -1)
    # Nothing was returned and the row is still there: asking again refuses again.
    with pytest.raises(vn.MaskingError):
        rb.advance(0)
    # The header alone is enough to refuse (the row never waits for its body).
    rb = server_buffer(mask_required=True)
    with pytest.raises(vn.MaskingError):
        read_cycle(rb, data_row([b"x" * 1000])[:7], -1)


def test_mask_required_after_the_plan_ends() -> None:
    rb = server_buffer(mask_required=True)
    cp = ControlPlane(rb, [row_plan([True])])
    cp.feed([row_description(["a"]) + data_row([b"s"]) + command_complete("SELECT 1")])
    assert data_row([b"***"]) in cp.forwarded()
    with pytest.raises(vn.MaskingError):
        cp.feed([data_row([b"leak"])])


def test_pass_through_plan_satisfies_mask_required() -> None:
    rb = server_buffer(mask_required=True)
    keep = vn.RowPlan([(vn.KEEP, None)])
    assert keep.is_passthrough
    cp = ControlPlane(rb, [keep])
    stream = row_description(["id"]) + data_row([b"1"]) * 3 + command_complete("SELECT 3")
    cp.feed(split(stream, [9, 20, 21]))
    assert cp.forwarded() == stream
    assert not rb.row_plan_active


def test_a_row_that_cannot_be_masked_closes_the_stream() -> None:
    rb = vn.RecvBuffer(vn.SERVER)
    rb.set_row_plan(row_plan([True, True]))
    with pytest.raises(vn.MaskingError, match="columns"):
        read_cycle(rb, data_row([b"a"]) + command_complete("SELECT 1"), -1)
    with pytest.raises(vn.MaskingError, match="earlier masking error"):
        read_cycle(rb, ready_for_query(), -1)
    rb.set_startup_mode(False)
    with pytest.raises(vn.MaskingError):
        rb.advance(0)


def test_row_larger_than_the_buffer_waits_whole() -> None:
    rb = vn.RecvBuffer(vn.SERVER, capacity=64)
    rb.set_row_plan(vn.RowPlan([(vn.TEXT, EMAILS)]))
    big = b"x" * 500 + b" bob@example.com"
    cp = ControlPlane(rb, [])
    cp.feed([data_row([big]) + command_complete("SELECT 1")], hint=16)
    assert cp.forwarded() == data_row([b"x" * 500 + b" <EMAIL>"]) + command_complete("SELECT 1")
    assert rb.buffered == 0


def test_copy_out_plan_ends_at_copy_done() -> None:
    rb = server_buffer(mask_required=True)
    plan = vn.CopyPlan("csv", [(vn.KEEP, None), (vn.TEXT, STAR)])
    cp = ControlPlane(rb, [plan])
    copy_out = msg(b"H", struct.pack("!bhhh", 0, 2, 0, 0))
    stream = (
        copy_out
        + msg(b"d", b"1,123-45-6789\n")
        + msg(b"N", b"SNOTICE\0\0")
        + msg(b"d", b'2,"x,y"\n')
        + msg(b"c")
        + command_complete("COPY 2")
        + ready_for_query()
    )
    cp.feed([stream])
    expected = (
        copy_out
        + msg(b"d", b"1,***\n")
        + msg(b"N", b"SNOTICE\0\0")
        + msg(b"d", b'2,"***"\n')  # quoted input stays quoted
        + msg(b"c")
        + command_complete("COPY 2")
        + ready_for_query()
    )
    assert cp.forwarded() == expected
    assert plan.take_tally() == [{}, {"SSN": 2}]
    assert not rb.row_plan_active


def test_plan_and_barrier_calls_need_a_server_buffer() -> None:
    rb = vn.RecvBuffer(vn.CLIENT)
    with pytest.raises(ValueError):
        rb.set_row_plan(row_plan([True]))
    with pytest.raises(ValueError):
        rb.set_mask_required(True)
    with pytest.raises(TypeError):
        vn.RecvBuffer(vn.SERVER).set_row_plan("plan")  # type: ignore[arg-type]


def test_session_tracking_still_sees_ready_for_query() -> None:
    session = vn.SessionState()
    client = vn.RecvBuffer(vn.CLIENT, session)
    server = vn.RecvBuffer(vn.SERVER, session)
    server.set_row_plan(row_plan([True]))
    read_cycle(client, msg(b"Q", b"select ssn from t\0"), -1)
    assert session.pending == 1
    _, out = read_cycle(
        server, data_row([b"s"]) + command_complete("SELECT 1") + ready_for_query(b"T"), -1
    )
    assert out == data_row([b"***"]) + command_complete("SELECT 1") + ready_for_query(b"T")
    assert (session.pending, session.tx_status) == (0, ord("T"))


# --- properties ----------------------------------------------------------------------------------

values = st.one_of(st.none(), st.binary(max_size=40))


@st.composite
def result_sets(draw: st.DrawFn) -> tuple[list[list[bool]], list[list[list[bytes | None]]]]:
    """Per result set: which columns are masked, and the rows."""
    masks: list[list[bool]] = []
    rows: list[list[list[bytes | None]]] = []
    for _ in range(draw(st.integers(0, 4))):
        n = draw(st.integers(0, 4))
        masks.append(draw(st.lists(st.booleans(), min_size=n, max_size=n)))
        rows.append(draw(st.lists(st.lists(values, min_size=n, max_size=n), max_size=6)))
    return masks, rows


def build(
    masks: list[list[bool]], rows: list[list[list[bytes | None]]], row: Callable[..., bytes]
) -> bytes:
    """A simple-query answer: per result set T, rows (notices between), C; then Z."""
    out = b""
    for i, (m, rs) in enumerate(zip(masks, rows, strict=True)):
        out += row_description([f"c{j}" for j in range(len(m))])
        for k, r in enumerate(rs):
            out += row(r, m)
            if k % 3 == 1:
                out += msg(b"N", b"SNOTICE\0\0")
        out += command_complete(f"SELECT {len(rs)}") if i % 2 == 0 else msg(b"s")
    return out + ready_for_query()


@given(
    sets=result_sets(),
    cuts=st.lists(st.integers(min_value=0), max_size=12),
    hint=st.sampled_from([-1, 1, 7, 300]),
    required=st.booleans(),
)
def test_any_chunking_masks_every_planned_row(
    sets: tuple[list[list[bool]], list[list[list[bytes | None]]]],
    cuts: list[int],
    hint: int,
    required: bool,
) -> None:
    masks, rows = sets
    stream = build(masks, rows, lambda r, m: data_row(r))
    expected = build(masks, rows, masked_row)
    plans = [row_plan(m) for m in masks]
    one = ControlPlane(server_buffer(mask_required=required), plans)
    one.feed([stream])
    many = ControlPlane(server_buffer(mask_required=required), plans)
    many.feed(split(stream, cuts), hint)
    assert normalize(one.results) == normalize(many.results)
    assert many.forwarded() == expected
    assert many.installed == len(masks)
    assert many.rb.buffered == 0 and not many.rb.row_plan_active
    # Every masked non-NULL value was counted, once, by its plan (one run above, one here).
    for plan, m, rs in zip(plans, masks, rows, strict=True):
        tally = plan.take_tally()
        for j, masked in enumerate(m):
            hits = sum(1 for r in rs if r[j] is not None) if masked else 0
            assert tally[j].get("SSN", 0) == 2 * hits


@given(
    rows=st.lists(st.lists(st.text(alphabet='ab,"\n\r\\x@.', max_size=12), min_size=2, max_size=2)),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
)
def test_any_chunking_masks_copy_csv(rows: list[list[str]], cuts: list[int]) -> None:
    def encode(r: list[str]) -> bytes:
        # As the server writes CSV: quote what needs it, and empty strings (NULL is empty).
        def one(v: str) -> str:
            if v == "" or any(c in v for c in ',"\r\n'):
                return '"' + v.replace('"', '""') + '"'
            return v

        return (",".join(one(v) for v in r) + "\n").encode()

    copy_out = msg(b"H", struct.pack("!bhhh", 0, 2, 0, 0))
    stream = copy_out + b"".join(msg(b"d", encode(r)) for r in rows) + msg(b"c")
    stream += command_complete(f"COPY {len(rows)}") + ready_for_query()
    plan = vn.CopyPlan("csv", [(vn.KEEP, None), (vn.TEXT, STAR)])
    cp = ControlPlane(server_buffer(mask_required=True), [plan])
    cp.feed(split(stream, cuts), 5)
    got = [m for m in _messages(cp.forwarded()) if m[0] == ord("d")]
    assert len(got) == len(rows)
    for (_, body), r in zip(got, rows, strict=True):
        (parsed,) = list(csv.reader(io.StringIO(body.decode(), newline="")))
        assert parsed == [r[0], "***"]


def _messages(stream: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(stream):
        (length,) = struct.unpack_from("!i", stream, pos + 1)
        out.append((stream[pos], stream[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out
