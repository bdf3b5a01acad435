"""``veilgate_native.Codec``: the engine's typed values checked against independent encoders.

The binary forms are built here with the standard library (``struct``, ``decimal``,
``ipaddress``, ``uuid``, ``datetime``), the way a client library decodes them; the engine must
read and write the same values.  Properties: valid values round-trip between the two formats,
masked values still decode as their type (and the text and binary forms of one value are masked
alike), arbitrary bytes never raise.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import struct
import uuid
from decimal import Decimal, localcontext

import pytest
import veilgate_native as vn
from hypothesis import given
from hypothesis import strategies as st

TEXT, BINARY = 0, 1
KEY = b"k" * 32
OPERATORS = {
    "replace": vn.Operator("replace"),
    "redact": vn.Operator("redact"),
    "partial": vn.Operator("partial", keep_first=1, keep_last=2),
    "hash": vn.Operator("hash", key=KEY),
}
SCANNER = vn.Masker(operators={"CREDIT_CARD": vn.Operator("partial", keep_last=4)})
PG_EPOCH = dt.date(2000, 1, 1)
PG_EPOCH_TS = dt.datetime(2000, 1, 1)


def codec(name: str) -> vn.Codec:
    return vn.Codec.scalar(name)


# -- independent binary encoders / decoders (as a client library has them) ------------------


def numeric_binary(d: Decimal) -> bytes:
    """PostgreSQL's numeric_send for a finite Decimal (digits base 10000, stripped)."""
    sign, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    dscale = max(0, -exp)
    s = "".join(map(str, digits)) + "0" * max(0, exp)
    point = len(s) - dscale  # integer digits
    if point < 0:
        s, point = "0" * -point + s, 0
    int_part, frac = s[:point].lstrip("0"), s[point:]
    int_part = "0" * (-len(int_part) % 4) + int_part
    frac += "0" * (-len(frac) % 4)
    groups = [int(int_part[i : i + 4]) for i in range(0, len(int_part), 4)]
    weight = len(groups) - 1
    groups += [int(frac[i : i + 4]) for i in range(0, len(frac), 4)]
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    while groups and groups[-1] == 0:
        groups.pop()
    if not groups:
        weight, sign = 0, 0
    head = struct.pack("!hhHH", len(groups), weight, 0x4000 if sign else 0, dscale)
    return head + b"".join(struct.pack("!H", g) for g in groups)


def numeric_value(b: bytes) -> Decimal:
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHH", b)
    digits = struct.unpack_from(f"!{ndigits}H", b, 8)
    with localcontext() as ctx:
        ctx.prec = 10_000  # exact (arithmetic, even a negation, rounds to the precision)
        terms = (Decimal(g) * Decimal(10000) ** (weight - i) for i, g in enumerate(digits))
        v = sum(terms, Decimal(0)).quantize(Decimal(1).scaleb(-dscale))
        return -v if sign == 0x4000 else v


def inet_binary(iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface, cidr: bool) -> bytes:
    family = 2 if iface.version == 4 else 3
    packed = iface.ip.packed
    return bytes([family, iface.network.prefixlen, int(cidr), len(packed)]) + packed


def inet_value(b: bytes) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    family, bits, _, n = b[:4]
    assert len(b) == 4 + n and n == (4 if family == 2 else 16)
    addr = ipaddress.ip_address(b[4:])
    return ipaddress.ip_interface(f"{addr}/{bits}")


# -- round trips ----------------------------------------------------------------------------


@given(st.integers(-(2**63), 2**63 - 1))
def test_int8_round_trip(v: int) -> None:
    c = codec("int8")
    assert c.transcode(struct.pack("!q", v), BINARY) == str(v).encode()
    assert c.transcode(str(v).encode(), TEXT) == struct.pack("!q", v)


@given(st.integers(-(2**15), 2**15 - 1), st.integers(-(2**31), 2**31 - 1))
def test_int2_int4_round_trip(a: int, b: int) -> None:
    assert codec("int2").transcode(struct.pack("!h", a), BINARY) == str(a).encode()
    assert codec("int4").transcode(str(b).encode(), TEXT) == struct.pack("!i", b)


@given(
    st.decimals(allow_nan=False, allow_infinity=False).filter(
        lambda d: abs(d.adjusted()) < 60 and -int(d.as_tuple().exponent) < 200
    )
)
def test_numeric_round_trip(d: Decimal) -> None:
    c = codec("numeric")
    text = f"{d:f}".encode()
    if text.startswith(b"-") and d == 0:
        text = text[1:]
    b = c.transcode(text, TEXT)
    assert b is not None
    assert numeric_value(b) == d
    assert b == numeric_binary(d)
    assert c.transcode(b, BINARY) == text


@given(st.floats(allow_nan=False), st.floats(width=32, allow_nan=False))
def test_float_round_trip(x: float, y: float) -> None:
    t = codec("float8").transcode(struct.pack("!d", x), BINARY)
    assert t is not None and float(t) == x and math.copysign(1, float(t)) == math.copysign(1, x)
    t = codec("float4").transcode(struct.pack("!f", y), BINARY)
    assert t is not None and struct.pack("!f", float(t)) == struct.pack("!f", y)


@given(
    st.one_of(
        st.builds(
            lambda a, p: ipaddress.IPv4Interface((a, p)),
            st.integers(0, 2**32 - 1),
            st.integers(0, 32),
        ),
        st.builds(
            lambda a, p: ipaddress.IPv6Interface((a, p)),
            st.integers(0, 2**128 - 1),
            st.integers(0, 128),
        ),
    )
)
def test_inet_round_trip(iface: ipaddress.IPv4Interface | ipaddress.IPv6Interface) -> None:
    c = codec("inet")
    text = c.transcode(inet_binary(iface, False), BINARY)
    assert text is not None
    assert ipaddress.ip_interface(text.decode()) == iface
    max_bits = 32 if iface.version == 4 else 128
    assert text.decode().endswith(f"/{iface.network.prefixlen}") == (
        iface.network.prefixlen != max_bits
    )
    assert c.transcode(text, TEXT) == inet_binary(iface, False)


@given(st.uuids())
def test_uuid_round_trip(u: uuid.UUID) -> None:
    assert codec("uuid").transcode(u.bytes, BINARY) == str(u).encode()
    assert codec("uuid").transcode(str(u).encode(), TEXT) == u.bytes


@given(st.dates(), st.datetimes(), st.times())
def test_dates_and_times_round_trip(d: dt.date, ts: dt.datetime, t: dt.time) -> None:
    days = (d - PG_EPOCH).days
    assert codec("date").transcode(struct.pack("!i", days), BINARY) == d.isoformat().encode()
    usecs = (ts - PG_EPOCH_TS) // dt.timedelta(microseconds=1)
    text = codec("timestamp").transcode(struct.pack("!q", usecs), BINARY)
    assert text is not None and dt.datetime.fromisoformat(text.decode()) == ts
    utc = ts.replace(tzinfo=dt.UTC)
    text = codec("timestamptz").transcode(struct.pack("!q", usecs), BINARY)
    assert text is not None and dt.datetime.fromisoformat(text.decode() + ":00") == utc
    tod = ((t.hour * 60 + t.minute) * 60 + t.second) * 1_000_000 + t.microsecond
    text = codec("time").transcode(struct.pack("!q", tod), BINARY)
    assert text is not None and dt.time.fromisoformat(text.decode()) == t


def test_bytea_and_json_forms() -> None:
    assert codec("bytea").transcode(b"\x00\xffA", BINARY) == b"\\x00ff41"
    assert codec("bytea").transcode(b"\\x00ff41", TEXT) == b"\x00\xffA"
    assert codec("jsonb").transcode(b'{"a": 1}', TEXT) == b'\x01{"a": 1}'
    assert codec("json").transcode(b"{not json", TEXT) is None


def test_builtin_codecs() -> None:
    assert vn.Codec.builtin(20) == codec("int8")
    assert vn.Codec.builtin(1009) == vn.Codec.array(codec("text"), 25)
    assert vn.Codec.builtin(16384) is None
    assert not codec("date").scannable and codec("int8").scannable
    assert not vn.Codec.array(codec("uuid"), 2950).scannable
    assert vn.Codec.composite([(25, codec("text")), (1082, codec("date"))]).scannable
    with pytest.raises(ValueError):
        codec("nope")
    with pytest.raises(ValueError):
        vn.Codec.array(codec("text"), 25, delimiter="{")
    with pytest.raises(ValueError):
        codec("int8").transcode(b"1", 2)


# -- masking --------------------------------------------------------------------------------

SAMPLES = {
    "int2": st.integers(-(2**15), 2**15 - 1).map(lambda v: struct.pack("!h", v)),
    "int4": st.integers(-(2**31), 2**31 - 1).map(lambda v: struct.pack("!i", v)),
    "int8": st.integers(-(2**63), 2**63 - 1).map(lambda v: struct.pack("!q", v)),
    "numeric": st.decimals(allow_nan=False, allow_infinity=False, places=3)
    .filter(lambda d: abs(d) < 10**30)
    .map(numeric_binary),
    "inet": st.integers(0, 2**32 - 1).map(
        lambda a: inet_binary(ipaddress.IPv4Interface((a, 32)), False)
    ),
    "cidr": st.integers(0, 2**24 - 1).map(
        lambda a: inet_binary(ipaddress.IPv4Interface((a << 8, 24)), True)
    ),
    "uuid": st.uuids().map(lambda u: u.bytes),
    # (NaN's sign and payload bits have no text form: not compared here)
    "float8": st.floats(allow_nan=False).map(lambda x: struct.pack("!d", x)),
    "float4": st.floats(width=32, allow_nan=False).map(lambda x: struct.pack("!f", x)),
    "bool": st.booleans().map(lambda b: bytes([b])),
    "date": st.dates().map(lambda d: struct.pack("!i", (d - PG_EPOCH).days)),
    "timestamp": st.datetimes().map(
        lambda t: struct.pack("!q", (t - PG_EPOCH_TS) // dt.timedelta(microseconds=1))
    ),
    "timestamptz": st.datetimes().map(
        lambda t: struct.pack("!q", (t - PG_EPOCH_TS) // dt.timedelta(microseconds=1))
    ),
    "time": st.integers(0, 86_400_000_000).map(lambda u: struct.pack("!q", u)),
    "interval": st.tuples(
        st.integers(-(10**12), 10**12), st.integers(-(10**5), 10**5), st.integers(-1000, 1000)
    ).map(lambda v: struct.pack("!qii", *v)),
    "bytea": st.binary(max_size=40),
    "jsonb": st.sampled_from(
        [b'\x01{"mail": "ann@example.org", "n": 4111111111111111}', b"\x01[1, 2]", b'\x01"x"']
    ),
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
@given(data=st.data())
def test_masked_values_decode_and_formats_agree(name: str, data: st.DataObject) -> None:
    c = codec(name)
    value = data.draw(SAMPLES[name])
    text = c.transcode(value, BINARY)
    assert text is not None
    masks: list[tuple[str, vn.Masker | vn.Operator]] = [*OPERATORS.items(), ("scan", SCANNER)]
    for opname, op in masks:
        mb = c.mask(value, BINARY, op)
        mt = c.mask(text, TEXT, op)
        assert mb is not None and mt is not None, opname
        # a masked value is still a value of the type ...
        assert c.transcode(mb, BINARY) is not None, (opname, mb)
        # ... and the text and binary forms of one value are masked alike
        assert c.transcode(mt, TEXT) == mb, (opname, mt, mb)
    assert c.mask(value, BINARY, vn.Operator("null")) is None


@given(st.integers(10**12, 10**18))
def test_scanned_numbers_stay_numbers(v: int) -> None:
    """A bigint the scan finds a card in keeps its last four digits (the others zero); any
    other is unchanged: either way an 8-byte bigint."""
    b = codec("int8").mask(struct.pack("!q", v), BINARY, SCANNER)
    assert b is not None and len(b) == 8
    assert struct.unpack("!q", b)[0] in (v, int(str(v)[-4:]))
    card = struct.pack("!q", 4111111111111111)
    assert codec("int8").mask(card, BINARY, SCANNER) == struct.pack("!q", 1111)


def test_masked_inet_is_an_inet() -> None:
    c = codec("inet")
    value = inet_binary(ipaddress.IPv4Interface("203.0.113.77/24"), False)
    assert inet_value(c.mask(value, BINARY, SCANNER) or b"") == ipaddress.ip_interface("0.0.0.0/24")
    hashed = inet_value(c.mask(value, BINARY, OPERATORS["hash"]) or b"")
    assert hashed.version == 4 and hashed.network.prefixlen == 24
    assert hashed == inet_value(c.mask(value, BINARY, OPERATORS["hash"]) or b"")  # deterministic


ALL = [
    *(codec(n) for n in [*SAMPLES, "json", "text", "timetz", "record", "other", "unknown"]),
    vn.Codec.array(codec("int8"), 20),
    vn.Codec.composite([(25, codec("text")), (1700, codec("numeric"))]),
]


@given(st.binary(max_size=80), st.sampled_from(ALL), st.sampled_from([TEXT, BINARY]))
def test_arbitrary_bytes_never_raise(value: bytes, c: vn.Codec, fmt: int) -> None:
    c.transcode(value, fmt)
    masks: list[vn.Masker | vn.Operator] = [*OPERATORS.values(), SCANNER]
    for op in masks:
        out = c.mask(value, fmt, op)
        assert out is None or isinstance(out, bytes)
        if out is not None and out != value and c.transcode(value, fmt) is not None:
            assert c.transcode(out, fmt) is not None
