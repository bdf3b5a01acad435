"""RowPlan / CopyPlan: construction, and what each format's rows look like once rewritten.

Rows go through a server-side ``RecvBuffer`` with the plan installed (the only way the engine
rewrites), one whole stream per read; chunking and plan lifetimes are in
``test_recvbuffer_masking.py``.  Decoding uses independent readers (the stdlib ``csv`` module for
CSV), so a test fails if the engine's escaping or quoting is wrong, not only if it changed.
"""

from __future__ import annotations

import csv
import io
import struct

import pytest
import veilgate_native as vn
from drive import read_cycle
from reference_framer import command_complete, data_row, msg

STAR = vn.Operator("replace", value="***", entity="SSN")
NULLOP = vn.Operator("null", entity="SECRET_COL")
EMAILS = vn.Masker(entities=["EMAIL"])


def messages(stream: bytes) -> list[tuple[int, bytes]]:
    """(tag, body) per message; the framing must be exact."""
    out, pos = [], 0
    while pos < len(stream):
        tag = stream[pos]
        (length,) = struct.unpack_from("!i", stream, pos + 1)
        assert length >= 4 and pos + 1 + length <= len(stream), "bad framing"
        out.append((tag, stream[pos + 5 : pos + 1 + length]))
        pos += 1 + length
    return out


def fields(body: bytes) -> list[bytes | None]:
    """A DataRow body (or binary COPY tuple) back to values; the whole body must be used."""
    (count,) = struct.unpack_from("!h", body)
    pos, values = 2, []
    for _ in range(count):
        (n,) = struct.unpack_from("!i", body, pos)
        pos += 4
        if n == -1:
            values.append(None)
        else:
            values.append(body[pos : pos + n])
            pos += n
    assert pos == len(body)
    return values


def through(plan: vn.RowPlan | vn.CopyPlan, stream: bytes) -> bytes:
    """``stream`` through a server buffer with ``plan`` installed, in one read."""
    rb = vn.RecvBuffer(vn.SERVER)
    rb.set_row_plan(plan)
    _, out = read_cycle(rb, stream, len(stream))
    assert type(out) is bytes
    return out


def copy_data(payload: bytes) -> bytes:
    return msg(b"d", payload)


def test_constants_and_types() -> None:
    assert (vn.KEEP, vn.NULL, vn.TEXT, vn.JSONB) == (0, 1, 2, 3)
    assert issubclass(vn.MaskingError, ValueError)
    assert not issubclass(vn.MaskingError, vn.FramingError)
    for cls in (vn.RowPlan, vn.CopyPlan, vn.MaskingError):
        assert cls.__module__ == "veilgate_native"


def test_row_plan_construction() -> None:
    plan = vn.RowPlan([(vn.KEEP, None), (vn.NULL, None), (vn.TEXT, STAR), (vn.JSONB, EMAILS)])
    assert len(plan) == 4 and not plan.is_passthrough
    assert "Keep" in repr(plan) and "Text" in repr(plan)
    assert vn.RowPlan([(vn.KEEP, None)] * 3).is_passthrough
    assert len(vn.RowPlan([])) == 0
    assert plan.take_tally() == [{}, {}, {}, {}]
    with pytest.raises(ValueError, match="need a Masker"):
        vn.RowPlan([(vn.TEXT, None)])
    with pytest.raises(ValueError, match="take no masker"):
        vn.RowPlan([(vn.KEEP, STAR)])
    with pytest.raises(ValueError, match="unknown action"):
        vn.RowPlan([(9, None)])
    with pytest.raises(TypeError, match="Masker, an Operator or a JsonMasker"):
        vn.RowPlan([(vn.TEXT, "***")])  # type: ignore[list-item]


def test_copy_plan_construction() -> None:
    cols = [(vn.TEXT, STAR)]
    for fmt in ("text", "csv", "binary", "CSV"):
        plan = vn.CopyPlan(fmt, cols)
        assert plan.format == fmt.lower() and len(plan) == 1
    assert vn.CopyPlan("csv", [(vn.KEEP, None)], header=True).is_passthrough
    assert "csv" in repr(vn.CopyPlan("csv", cols))
    bad: list[dict[str, object]] = [
        {"format": "xml"},
        {"format": "binary", "header": True},
        {"format": "binary", "delimiter": ","},
        {"format": "text", "delimiter": "ab"},
        {"format": "text", "delimiter": "\\"},
        {"format": "text", "delimiter": "n"},
        {"format": "csv", "delimiter": '"'},
        {"format": "csv", "quote": "é"},
        {"format": "csv", "null": "a\nb"},
    ]
    for kw in bad:
        fmt = str(kw.pop("format"))
        with pytest.raises(ValueError):
            vn.CopyPlan(fmt, cols, **kw)  # type: ignore[arg-type]


def test_datarow_masked_lengths_recomputed_and_tallied() -> None:
    plan = vn.RowPlan([(vn.KEEP, None), (vn.TEXT, STAR), (vn.TEXT, EMAILS), (vn.NULL, None)])
    rows = [
        [b"1", b"123-45-6789", b"mail bob@example.com now", b"x"],
        [b"2", None, b"nothing here", None],
        [b"3", b"", b"a@b.io and c@d.org", b"y"],
    ]
    out = through(plan, b"".join(data_row(r) for r in rows) + command_complete("SELECT 3"))
    got = messages(out)
    assert [t for t, _ in got] == [ord("D")] * 3 + [ord("C")]
    assert [fields(b) for _, b in got[:3]] == [
        [b"1", b"***", b"mail <EMAIL> now", None],
        [b"2", None, b"nothing here", None],
        [b"3", b"***", b"<EMAIL> and <EMAIL>", None],
    ]
    assert plan.take_tally() == [{}, {"SSN": 2}, {"EMAIL": 3}, {}]
    assert plan.take_tally() == [{}, {}, {}, {}]


def test_operator_null_and_binary_jsonb() -> None:
    plan = vn.RowPlan([(vn.TEXT, NULLOP), (vn.JSONB, EMAILS)])
    row = [b"secret", b'\x01{"email": "bob@example.com"}']
    (d,) = messages(through(plan, data_row(row)))
    assert fields(d[1]) == [None, b'\x01{"email": "<EMAIL>"}']


def test_column_count_mismatch_is_refused() -> None:
    rb = vn.RecvBuffer(vn.SERVER)
    rb.set_row_plan(vn.RowPlan([(vn.TEXT, STAR)] * 2))
    with pytest.raises(vn.MaskingError, match="2"):
        read_cycle(rb, data_row([b"only one"]), -1)


def text_fields(line: bytes, delimiter: bytes = b"\t", null: bytes = b"\\N") -> list[bytes | None]:
    """A text-format COPY line read the way COPY FROM reads it (named escapes only)."""
    assert line.endswith(b"\n")
    names = {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"b": b"\b", b"f": b"\f", b"v": b"\v"}
    values: list[bytes | None] = []
    raw, value, i = b"", b"", 0
    body = line[:-1]
    while i <= len(body):
        c = body[i : i + 1]
        if c == b"\\":
            e = body[i + 1 : i + 2]
            raw += c + e
            value += names.get(e, e)
            i += 2
            continue
        if c in (delimiter, b""):
            values.append(None if raw == null else value)
            raw, value = b"", b""
            i += 1
            continue
        raw += c
        value += c
        i += 1
    return values


def test_copy_text() -> None:
    lengthen = vn.Operator("replace", value="a\tb\\c\nd|e")
    plan = vn.CopyPlan("text", [(vn.KEEP, None), (vn.TEXT, EMAILS), (vn.TEXT, lengthen)])
    rows = [b"1\tto bob@example.com\\tok\tx\n", b"2\t\\N\t\\N\n", b"3\tplain\\\\text\tz\r\n"]
    out = through(plan, b"".join(copy_data(r) for r in rows))
    got = [body for _, body in messages(out)]
    assert text_fields(got[0]) == [b"1", b"to <EMAIL>\tok", b"a\tb\\c\nd|e"]
    assert got[1] == rows[1]  # NULLs stay NULL
    assert got[2].endswith(b"\r\n") and text_fields(got[2][:-2] + b"\n")[:2] == [
        b"3",
        b"plain\\text",
    ]
    assert plan.take_tally()[1] == {"EMAIL": 1}


def test_copy_text_options_and_header() -> None:
    plan = vn.CopyPlan(
        "text", [(vn.TEXT, STAR), (vn.KEEP, None)], delimiter="|", null="NULL", header=True
    )
    out = through(plan, copy_data(b"ssn|id\n") + copy_data(b"1\\|2|7\n") + copy_data(b"NULL|8\n"))
    got = [body for _, body in messages(out)]
    assert got == [b"ssn|id\n", b"***|7\n", b"NULL|8\n"]


def read_csv(line: bytes, **kw: str) -> list[str]:
    (row,) = list(csv.reader(io.StringIO(line.decode(), newline=""), **kw))  # type: ignore[arg-type]
    return row


def test_copy_csv() -> None:
    tricky = vn.Operator("replace", value='say "hi", then\nbye')
    plan = vn.CopyPlan(
        "csv",
        [(vn.KEEP, None), (vn.TEXT, EMAILS), (vn.TEXT, tricky), (vn.NULL, None)],
        header=True,
    )
    rows = [
        b'id,"e,mail","note\nx",n\n',
        b'1,"bob@example.com, ""quoted""",plain,secret\n',
        b"2,,x,\n",
    ]
    out = through(plan, b"".join(copy_data(r) for r in rows))
    got = [body for _, body in messages(out)]
    assert got[0] == rows[0]
    assert read_csv(got[1]) == ["1", '<EMAIL>, "quoted"', 'say "hi", then\nbye', ""]
    # An unquoted empty field is NULL in CSV and stays exactly that.
    assert got[2].startswith(b"2,,") and got[2].endswith(b",\n")
    assert read_csv(got[2])[2] == 'say "hi", then\nbye'


def test_copy_csv_custom_quote_escape() -> None:
    plan = vn.CopyPlan("csv", [(vn.TEXT, EMAILS)], delimiter=";", quote="'", escape="\\")
    out = through(plan, copy_data(b"'it\\'s bob@example.com;'\n"))
    ((_, body),) = messages(out)
    assert body == b"'it\\'s <EMAIL>;'\n"


def binary_copy_header() -> bytes:
    return b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)


def tuple_(values: list[bytes | None]) -> bytes:
    return data_row(values)[5:]


def test_copy_binary() -> None:
    plan = vn.CopyPlan("binary", [(vn.KEEP, None), (vn.TEXT, EMAILS), (vn.JSONB, EMAILS)])
    first = binary_copy_header() + tuple_([b"\0\0\0\1", b"bob@example.com", b'\x01"a@b.io"'])
    second = tuple_([b"\0\0\0\2", None, b"\x01{}"])
    out = through(plan, copy_data(first) + copy_data(second) + copy_data(b"\xff\xff"))
    got = [body for _, body in messages(out)]
    h = len(binary_copy_header())
    assert got[0][:h] == binary_copy_header()
    assert fields(got[0][h:]) == [b"\0\0\0\1", b"<EMAIL>", b'\x01"<EMAIL>"']
    assert fields(got[1]) == [b"\0\0\0\2", None, b"\x01{}"]
    assert got[2] == b"\xff\xff"
    assert plan.take_tally() == [{}, {"EMAIL": 1}, {"EMAIL": 1}]


@pytest.mark.parametrize(
    ("fmt", "row"),
    [
        ("text", b"a\tb\tc\n"),
        ("csv", b"a,b,c\n"),
        ("csv", b'"unterminated,b\n'),
        ("text", b"no newline"),
        ("binary", b"PGCOPY"),
    ],
)
def test_copy_rows_that_cannot_be_masked_are_refused(fmt: str, row: bytes) -> None:
    rb = vn.RecvBuffer(vn.SERVER)
    rb.set_row_plan(vn.CopyPlan(fmt, [(vn.TEXT, STAR)] * 2))
    with pytest.raises(vn.MaskingError):
        read_cycle(rb, copy_data(row), -1)
