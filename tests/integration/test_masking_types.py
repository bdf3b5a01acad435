"""Typed masking end to end: every type family, masked or kept, reaches real clients as a valid
value of its type, and the same value gets the same treatment on every path.

One table holds a column per case (``masking_types_policy.yaml`` picks them by name prefix):
``s_*`` content-scanned types that can carry an entity (numbers holding a card, inet, bytea,
json, arrays, a composite, an enum), ``k_*`` scanned types that cannot (floats, dates, uuid,
ranges, geometric...), and ``hash_*`` / ``partial_*`` / ``redact_*`` / ``replace_*`` /
``null_*`` columns named by a column rule.  Row 1 holds values, row 2 NULLs.

The clients decode every value (asyncpg always in binary; psycopg in text and binary, with
SELECT, server-side cursors, ``DECLARE ... BINARY CURSOR`` and COPY in every format), so a value
that is not valid for its type fails the test.  Kept columns are compared byte for byte with
direct PostgreSQL, in both formats.
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import ipaddress
import json
import secrets
import struct
import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg.adapt import Transformer
from psycopg.types import TypeInfo
from psycopg.types.array import register_array
from psycopg.types.composite import CompositeInfo, register_composite
from psycopg.types.enum import EnumInfo, register_enum
from psycopg.types.multirange import Multirange, MultirangeInfo, register_multirange
from psycopg.types.range import Range, RangeInfo, register_range
from tests.integration import pgwire as pw
from tests.integration.conftest import GatewayHandle, with_policy

pytestmark = pytest.mark.pg

POLICY_FILE = Path(__file__).with_name("masking_types_policy.yaml")
KEY_ENV = "VG_TEST_TYPED_MASK_KEY"

CARD = 4111111111111111
EMAIL = "ann@example.org"

# column: (type, SQL literal of row 1)
COLUMNS: dict[str, tuple[str, str]] = {
    # scanned, can carry an entity
    "s_card": ("bigint", f"{CARD}"),
    "s_num": ("numeric(20,0)", f"{CARD}"),
    "s_small": ("int2", "1234"),
    "s_ip": ("inet", "'203.0.113.77/24'"),
    "s_net": ("cidr", "'198.51.100.0/24'"),
    "s_doc": ("bytea", f"convert_to('mail {EMAIL}', 'UTF8')"),
    "s_json": ("jsonb", f"""'{{"mail": "{EMAIL}", "n": 1}}'"""),
    "s_js": ("json", f"""'{{"card": {CARD}}}'"""),
    "s_tags": ("text[]", f"array['{EMAIL}', 'plain', null]"),
    "s_cards": ("bigint[]", f"array[{CARD}, 7]"),
    "s_ips": ("inet[]", "array['203.0.113.77'::inet, '10.1.2.3']"),
    "s_contact": ("{t}_contact", f"row('{EMAIL}', {CARD}, '2024-01-02', '203.0.113.77')"),
    "s_mood": ("{t}_mood", "'happy'"),
    "s_text": ("text", f"'mail {EMAIL}'"),
    "s_mail": ("{t}_mail", f"'{EMAIL}'"),
    "s_cardno": ("{t}_cardno", f"{CARD}"),
    "s_cardnos": ("{t}_cardno[]", f"array[{CARD}]"),
    # a range of text: a masked range is the type's empty range, a multirange leaves it out
    "s_trange": ("{t}_trange", "{t}_trange('" + EMAIL + "', 'zz')"),
    "s_tplain": ("{t}_trange", "{t}_trange('a b', 'c')"),
    "s_tmulti": (
        "{t}_tmulti",
        "{t}_tmulti({t}_trange('a b', 'c', '[]'), {t}_trange('mail " + EMAIL + "', 'zz'))",
    ),
    # scanned, cannot carry an entity: kept as PostgreSQL sent them
    "k_f8": ("float8", "3.14159"),
    "k_f4": ("real", "2.5"),
    "k_bool": ("bool", "true"),
    "k_date": ("date", "'1987-06-05'"),
    "k_ts": ("timestamp", "'1987-06-05 04:03:02.123456'"),
    "k_tstz": ("timestamptz", "'1987-06-05 04:03:02+02'"),
    "k_time": ("time", "'04:03:02'"),
    "k_timetz": ("timetz", "'04:03:02+05:30'"),
    "k_iv": ("interval", "'1 year 2 mons 3 days 04:05:06'"),
    "k_uuid": ("uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"),
    "k_money": ("money", "12.34"),
    "k_range": ("int4range", "'[1,10)'"),
    "k_point": ("point", "'(1,2)'"),
    "k_bits": ("bit(8)", "B'10101010'"),
    "k_mac": ("macaddr", "'08:00:2b:01:02:03'"),
    "k_dates": ("date[]", "array['2024-01-01'::date, '2024-02-02']"),
    # column rules
    "hash_int": ("int4", "536228141"),
    "hash_num": ("numeric(12,2)", "12345.67"),
    "hash_inet": ("inet", "'203.0.113.77/24'"),
    "hash_date": ("date", "'1987-06-05'"),
    "hash_tstz": ("timestamptz", "'1987-06-05 04:03:02+00'"),
    "hash_uuid": ("uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"),
    "hash_f8": ("float8", "-1234.5"),
    "hash_iv": ("interval", "'3 days'"),
    "partial_int8": ("bigint", f"{CARD}"),
    "partial_uuid": ("uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"),
    "partial_ts": ("timestamp", "'1987-06-05 04:03:02'"),
    "partial_time": ("time", "'04:03:02'"),
    "partial_num": ("numeric(12,2)", "12345.67"),
    "partial_inet": ("inet", "'198.51.100.23'"),
    "redact_int": ("int4", "42"),
    "redact_bytea": ("bytea", "'\\x0102'"),
    "redact_date": ("date", "'1987-06-05'"),
    "redact_json": ("json", """'{"a": 1}'"""),
    "redact_f4": ("real", "7.5"),
    "redact_cidr": ("cidr", "'10.1.0.0/16'"),
    "redact_bool": ("bool", "true"),
    "replace_tags": ("text[]", "array['a', 'b']"),
    "replace_ints": ("int[]", "array[1, 2]"),
    "replace_range": ("int4range", "'[1,5)'"),
    "null_uuid": ("uuid", "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'"),
    # an enum under a column rule: NULL (a masked label would not be a label of the type)
    "hash_mood": ("{t}_mood", "'sad'"),
    "hash_trange": ("{t}_trange", "{t}_trange('a', 'b')"),
}

KEPT_SCANNED = ("s_small", "s_mood", "s_tplain")
"""Scanned columns of types that can carry an entity, holding none: kept byte for byte."""

# psycopg has no loader for these: text values come back as str, binary ones as bytes
UNLOADED = {"k_money", "k_point", "k_bits", "k_mac"}


@pytest.fixture(scope="module")
def table(pg_cluster: Any) -> str:
    t = "vg_types_" + secrets.token_hex(4)
    cols = ", ".join(f"{c} {typ.replace('{t}', t)}" for c, (typ, _) in COLUMNS.items())
    values = ", ".join(v.replace("{t}", t) for _, v in COLUMNS.values())
    with psycopg.connect(pg_cluster.gw_dsn(), autocommit=True) as conn:
        conn.execute(f"create type {t}_contact as (email text, card bigint, seen date, ip inet)")
        conn.execute(f"create type {t}_mood as enum ('happy', 'sad')")
        conn.execute(
            f'create type {t}_trange as range (subtype = text, collation = "C", '
            f"multirange_type_name = {t}_tmulti)"
        )
        conn.execute(f"create domain {t}_mail as text check (value like '%@%')")
        conn.execute(f"create domain {t}_cardno as bigint check (value > 0)")
        conn.execute(f"create table {t} (id int primary key, {cols})")
        conn.execute(
            f"insert into {t} (id, {', '.join(COLUMNS)}) values (1, {values}), (2, "
            + ", ".join(["null"] * len(COLUMNS))
            + ")"
        )
    return t


@pytest.fixture(scope="module")
def direct_target(pg_cluster: Any) -> pw.Target:
    """Straight to PostgreSQL, as the gateway's upstream role."""
    return pw.Target(
        host=pg_cluster.host,
        port=pg_cluster.port,
        user=pg_cluster.gw_role,
        password=pg_cluster.gw_password,
        dbname=pg_cluster.app_db,
        ca_file=str(pg_cluster.ca_file),
        server_hostname=pg_cluster.server_hostname,
    )


@pytest.fixture(scope="module")
def direct(direct_target: pw.Target) -> str:
    return direct_target.conninfo()


@pytest.fixture
def gw(gateway_factory: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> pw.Target:
    monkeypatch.setenv(KEY_ENV, "k" * 32)
    handle: GatewayHandle = gateway_factory(
        with_policy(POLICY_FILE, tmp_path / "audit.jsonl", "db.masked")
    )
    return pw.gateway_target(handle)


def _select(t: str) -> str:
    return f"select {', '.join(COLUMNS)} from {t} order by id"


def _connect(conninfo: str, t: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(conninfo, autocommit=True)
    register_composite(CompositeInfo.fetch(conn, f"{t}_contact"), conn)  # type: ignore[arg-type]
    register_enum(EnumInfo.fetch(conn, f"{t}_mood"), conn)  # type: ignore[arg-type]
    register_range(RangeInfo.fetch(conn, f"{t}_trange"), conn)  # type: ignore[arg-type]
    register_multirange(MultirangeInfo.fetch(conn, f"{t}_tmulti"), conn)  # type: ignore[arg-type]
    # the domain over bigint loads as a bigint, and its array as an array of them
    card = TypeInfo.fetch(conn, f"{t}_cardno")
    assert card is not None
    for fmt in (psycopg.pq.Format.TEXT, psycopg.pq.Format.BINARY):
        loader = conn.adapters.get_loader(psycopg.adapters.types["int8"].oid, fmt)
        assert loader is not None
        conn.adapters.register_loader(card.oid, loader)
    register_array(card, conn)
    return conn


def _rows(cur: psycopg.Cursor[Any]) -> list[dict[str, Any]]:
    names = [d.name for d in cur.description or ()]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _comparable(row: dict[str, Any]) -> dict[str, Any]:
    """The values psycopg loads alike in both formats (the unloaded ones are str or bytes)."""
    return {k: v for k, v in row.items() if k not in UNLOADED}


# --- what each column becomes -------------------------------------------------------------


def check_masked_row(row: dict[str, Any], raw: dict[str, Any]) -> None:
    """Row 1 as psycopg decoded it through the gateway; ``raw`` is the same row direct."""
    # numbers holding a card: found by the scan, masked into numbers (last four kept)
    assert row["s_card"] == 1111
    assert row["s_num"] == Decimal(1111)
    assert row["s_small"] == 1234  # nothing found
    # an address is an IP_ADDRESS: the default replace zeroes it, family and prefix kept
    assert row["s_ip"] == ipaddress.ip_interface("0.0.0.0/24")
    assert row["s_net"] == ipaddress.ip_network("0.0.0.0/24")
    assert row["s_doc"] == b"mail <EMAIL>"
    assert row["s_json"] == {"mail": "<EMAIL>", "n": 1}
    # a card stored as a JSON number is masked to a JSON number (last four kept, as for bigint)
    assert row["s_js"] == {"card": 1111}
    assert row["s_tags"] == ["<EMAIL>", "plain", None]
    assert row["s_cards"] == [1111, 7]
    assert row["s_ips"] == [ipaddress.ip_address("0.0.0.0")] * 2
    c = row["s_contact"]
    assert (c.email, c.card, c.seen, c.ip) == (
        "<EMAIL>",
        1111,
        dt.date(2024, 1, 2),
        ipaddress.ip_address("0.0.0.0"),
    )
    assert row["s_mood"].name == "happy"
    # domains are masked as their base type, arrays of domains element by element
    assert row["s_text"] == "mail <EMAIL>" and row["s_mail"] == "<EMAIL>"
    assert row["s_cardno"] == 1111 and row["s_cardnos"] == [1111]
    # ranges of text: one with an entity in a bound is the empty range; others are kept
    assert row["s_trange"] == Range(empty=True)
    assert row["s_tplain"] == raw["s_tplain"] == Range("a b", "c")
    assert row["s_tmulti"] == Multirange([Range("a b", "c", "[]")])
    assert raw["s_tmulti"] == Multirange([Range("a b", "c", "[]"), Range(f"mail {EMAIL}", "zz")])
    # types a scan cannot find anything in: as PostgreSQL sent them (those psycopg does not
    # load are compared on the wire, test_kept_types_are_byte_for_byte_direct)
    for k in COLUMNS:
        if k.startswith("k_") and k not in UNLOADED:
            assert row[k] == raw[k], k
    # column rules: a valid value of the type, deterministic (checked across paths)
    assert isinstance(row["hash_int"], int) and -(2**31) <= row["hash_int"] < 2**31
    assert row["hash_int"] != raw["hash_int"]
    assert isinstance(row["hash_num"], Decimal) and row["hash_num"].as_tuple().exponent == -2
    assert row["hash_num"] != raw["hash_num"]
    h = row["hash_inet"]
    assert h.version == 4 and h.network.prefixlen == 24 and h != raw["hash_inet"]
    assert row["hash_date"].year == 1987
    assert row["hash_tstz"].astimezone(dt.UTC).year == 1987
    assert isinstance(row["hash_uuid"], uuid.UUID) and row["hash_uuid"] != raw["hash_uuid"]
    assert -2048 <= row["hash_f8"] <= -1024
    assert dt.timedelta(0) <= row["hash_iv"] < dt.timedelta(days=1)
    assert row["partial_int8"] == 4000000000000011
    assert str(row["partial_uuid"]) == "a0000000-0000-0000-0000-000000000011"
    assert row["partial_ts"] == dt.datetime(1987, 1, 1)
    assert row["partial_time"] == dt.time(4, 0, 0)
    assert row["partial_num"] == Decimal("10000.67")
    assert row["partial_inet"] == ipaddress.ip_address("198.0.100.23")
    assert row["redact_int"] == 0
    assert row["redact_bytea"] == b""
    assert row["redact_date"] == dt.date(1970, 1, 1)
    assert row["redact_json"] == ""
    assert row["redact_f4"] == 0.0
    assert row["redact_cidr"] == ipaddress.ip_network("0.0.0.0/16")
    assert row["redact_bool"] is False
    assert row["replace_tags"] == ["<COLUMN>", "<COLUMN>"]
    assert row["replace_ints"] == [0, 0]
    assert row["replace_range"] is None  # a range has no masked form: NULL
    assert row["null_uuid"] is None
    assert row["hash_mood"] is None
    assert row["hash_trange"] == Range(empty=True)


def _psycopg_select(conninfo: str, t: str, *, binary: bool) -> list[dict[str, Any]]:
    with _connect(conninfo, t) as conn, conn.cursor(binary=binary) as cur:
        cur.execute(_select(t))
        return _rows(cur)


@pytest.fixture(scope="module")
def raw_rows(direct: str, table: str) -> list[dict[str, Any]]:
    rows = _psycopg_select(direct, table, binary=True)
    assert rows[0]["s_card"] == CARD and rows[0]["k_uuid"] is not None
    return rows


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
def test_psycopg_select(gw: pw.Target, table: str, raw_rows: list[Any], binary: bool) -> None:
    rows = _psycopg_select(gw.conninfo(), table, binary=binary)
    check_masked_row(rows[0], raw_rows[0])
    assert all(v is None for v in rows[1].values())  # NULLs stay NULL


def _wire(conninfo: str, t: str, *, binary: bool) -> list[list[bytes | None]]:
    with psycopg.connect(conninfo, autocommit=True) as conn, conn.cursor(binary=binary) as cur:
        cur.execute(_select(t))
        res = cur.pgresult
        assert res is not None
        return [[res.get_value(r, c) for c in range(res.nfields)] for r in range(res.ntuples)]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
def test_kept_types_are_byte_for_byte_direct(
    gw: pw.Target, direct: str, table: str, binary: bool
) -> None:
    via = _wire(gw.conninfo(), table, binary=binary)
    ref = _wire(direct, table, binary=binary)
    for i, name in enumerate(COLUMNS):
        if name.startswith("k_") or name in KEPT_SCANNED:
            assert via[0][i] == ref[0][i], name
    assert via[1] == ref[1]


def test_text_and_binary_agree(gw: pw.Target, table: str) -> None:
    """Every masked value (hashes included) is the same value in both formats."""
    text = _psycopg_select(gw.conninfo(), table, binary=False)
    binary = _psycopg_select(gw.conninfo(), table, binary=True)
    assert _comparable(text[0]) == _comparable(binary[0])


def test_cursors(gw: pw.Target, table: str) -> None:
    """A server-side cursor (extended protocol, binary) and FETCH from a BINARY cursor
    (simple protocol, binary results) give the same values as a plain SELECT."""
    expected = _comparable(_psycopg_select(gw.conninfo(), table, binary=True)[0])
    with _connect(gw.conninfo(), table) as conn, conn.transaction():
        with conn.cursor(name="vg_typed", binary=True) as cur:
            cur.itersize = 1
            cur.execute(_select(table))
            names = [d.name for d in cur.description or ()]
            rows = [dict(zip(names, r, strict=True)) for r in cur]
        assert _comparable(rows[0]) == expected
        conn.execute(f"declare c binary cursor for {_select(table)}")
        with conn.cursor() as cur:
            cur.execute("fetch 1 from c")
            fetched = _rows(cur)
        assert _comparable(fetched[0]) == expected


def _copy_rows(conninfo: str, t: str, sql: str) -> list[dict[str, Any]]:
    """The rows of a COPY TO STDOUT, each value loaded by psycopg as its column's type."""
    with _connect(conninfo, t) as conn, conn.cursor() as cur:
        cur.execute(_select(t) + " limit 0")
        oids = [d.type_code for d in cur.description or ()]
        rows: list[tuple[Any, ...]] = []
        with cur.copy(sql) as copy:
            if "csv" not in sql:
                copy.set_types(oids)
                while (row := copy.read_row()) is not None:
                    rows.append(row)
            else:  # psycopg reads text and binary rows only: CSV through the stdlib reader
                data = b"".join(bytes(chunk) for chunk in copy).decode()
                tx = Transformer(conn)
                tx.set_loader_types(oids, psycopg.pq.Format.TEXT)
                for fields in csv.reader(io.StringIO(data)):
                    # (no value of this table is an empty string: empty is NULL)
                    raw = [f.encode() if f else None for f in fields]
                    rows.append(tuple(tx.load_sequence(raw)))
        return [dict(zip(COLUMNS, r, strict=True)) for r in rows]


@pytest.mark.parametrize(
    "options",
    ["(format binary)", "(format text)", "(format csv)", "with binary"],
)
def test_copy(gw: pw.Target, table: str, raw_rows: list[Any], options: str) -> None:
    """COPY (query) TO STDOUT in every format: the same masked values as SELECT."""
    sql = f"copy ({_select(table)}) to stdout {options}"
    rows = _copy_rows(gw.conninfo(), table, sql)
    binary = "binary" in options
    expected = _psycopg_select(gw.conninfo(), table, binary=binary)
    check_masked_row(rows[0], raw_rows[0])
    if binary:
        assert rows == expected
    else:
        assert _comparable(rows[0]) == _comparable(expected[0])
    assert all(v is None for v in rows[1].values())


def test_copy_table_binary(gw: pw.Target, table: str, raw_rows: list[Any]) -> None:
    """COPY table TO STDOUT WITH BINARY (columns from the table): same values again."""
    with _connect(gw.conninfo(), table) as conn, conn.cursor() as cur:
        cur.execute(f"select * from {table} limit 0")
        oids = [d.type_code for d in cur.description or ()]
        names = [d.name for d in cur.description or ()]
        rows = []
        with cur.copy(f"copy {table} to stdout with binary") as copy:
            copy.set_types(oids)
            while (row := copy.read_row()) is not None:
                rows.append(dict(zip(names, row, strict=True)))
    rows.sort(key=lambda r: r["id"])
    check_masked_row({k: v for k, v in rows[0].items() if k != "id"}, raw_rows[0])


# --- asyncpg: binary everywhere, its own decoders -------------------------------------------


async def _asyncpg_rows(kwargs: dict[str, object], t: str) -> dict[str, list[dict[str, Any]]]:
    conn = await asyncpg.connect(**kwargs)
    try:
        out: dict[str, list[dict[str, Any]]] = {}
        out["select"] = [dict(r) for r in await conn.fetch(_select(t))]
        stmt = await conn.prepare(_select(t))
        out["prepared"] = [dict(r) for r in await stmt.fetch()]
        async with conn.transaction():
            out["cursor"] = [dict(r) async for r in conn.cursor(_select(t), prefetch=1)]
        return out
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def asyncpg_direct(direct_target: pw.Target, table: str) -> dict[str, Any]:
    return asyncio.run(_asyncpg_rows(direct_target.asyncpg_kwargs(), table))["select"][0]


def test_asyncpg(gw: pw.Target, table: str, asyncpg_direct: dict[str, Any]) -> None:
    got = asyncio.run(_asyncpg_rows(gw.asyncpg_kwargs(), table))
    select = got["select"]
    assert got["prepared"] == select and got["cursor"] == select
    row, raw = select[0], asyncpg_direct
    assert row["s_card"] == 1111 and row["s_num"] == Decimal(1111)
    assert row["s_ip"] == ipaddress.ip_interface("0.0.0.0/24")
    assert row["s_net"] == ipaddress.ip_network("0.0.0.0/24")
    assert row["s_doc"] == b"mail <EMAIL>"
    assert json.loads(row["s_json"]) == {"mail": "<EMAIL>", "n": 1}
    assert json.loads(row["s_js"]) == {"card": 1111}
    assert row["s_tags"] == ["<EMAIL>", "plain", None] and row["s_cards"] == [1111, 7]
    assert tuple(row["s_contact"]) == (
        "<EMAIL>",
        1111,
        dt.date(2024, 1, 2),
        ipaddress.ip_address("0.0.0.0"),
    )
    for k in COLUMNS:
        if k.startswith("k_") or k in KEPT_SCANNED:
            assert row[k] == raw[k], k
    assert row["s_trange"].isempty and not raw["s_trange"].isempty
    assert [(r.lower, r.upper) for r in row["s_tmulti"]] == [("a b", "c")]
    assert len(raw["s_tmulti"]) == 2
    assert row["hash_mood"] is None and row["hash_trange"].isempty
    assert row["partial_int8"] == 4000000000000011
    assert row["partial_num"] == Decimal("10000.67")
    assert row["redact_date"] == dt.date(1970, 1, 1)
    assert row["replace_range"] is None and row["null_uuid"] is None
    assert row["hash_date"].year == 1987 and row["hash_uuid"] != raw["hash_uuid"]
    assert all(v is None for v in select[1].values())


def test_asyncpg_and_psycopg_agree(gw: pw.Target, table: str) -> None:
    """Two clients, two decoders: the keyed values are the same."""
    a = asyncio.run(_asyncpg_rows(gw.asyncpg_kwargs(), table))["select"][0]
    p = _psycopg_select(gw.conninfo(), table, binary=True)[0]
    for k in ("hash_int", "hash_num", "hash_inet", "hash_date", "hash_uuid", "hash_f8"):
        assert a[k] == p[k], k
    assert a["hash_tstz"] == p["hash_tstz"]


def test_derived_values_are_redacted_to_valid_values(gw: pw.Target, table: str) -> None:
    """Columns computed from masked columns are redacted to a value of their type: text says
    <MASKED>, a number is 0; a column computed from no masked column (current_date) is kept.
    (Computations that can fail on a value, like ``s_card + 1``, are refused on a masked tier.)"""
    sql = (
        f"select round(s_card) as a, host(s_ip) as b, array[s_card] as c, "
        f"current_date as d, round((s_contact).card) as e, s_json -> 'mail' as f "
        f"from {table} where id = 1"
    )
    for binary in (True, False):
        with _connect(gw.conninfo(), table) as conn, conn.cursor(binary=binary) as cur:
            cur.execute(sql)
            row = _rows(cur)[0]
        today = row.pop("d")
        assert abs((today - dt.date.today()).days) <= 1, today
        assert row == {
            "a": 0,
            "b": "<MASKED>",
            "c": [0],
            "e": 0,
            "f": "<MASKED>",
        }, binary


def _binary_copy_fields(data: bytes) -> list[list[bytes | None]]:
    """The tuples of a binary COPY stream (header and trailer checked)."""
    assert data.startswith(b"PGCOPY\n\xff\r\n\x00") and data.endswith(b"\xff\xff")
    (ext,) = struct.unpack_from("!i", data, 15)
    pos = 19 + ext
    rows = []
    while True:
        (n,) = struct.unpack_from("!h", data, pos)
        pos += 2
        if n == -1:
            break
        row: list[bytes | None] = []
        for _ in range(n):
            (size,) = struct.unpack_from("!i", data, pos)
            pos += 4
            row.append(None if size == -1 else data[pos : pos + size])
            pos += max(size, 0)
        rows.append(row)
    assert pos == len(data)
    return rows


def test_asyncpg_copy_binary(gw: pw.Target, direct_target: pw.Target, table: str) -> None:
    """asyncpg's binary COPY: kept columns byte for byte as direct, masked ones decode."""
    kept = [c for c in COLUMNS if c.startswith("k_")]
    kept += KEPT_SCANNED
    sql = (
        f"select {', '.join(kept)}, s_card, s_ip, s_tags, s_trange, s_tmulti "
        f"from {table} order by id"
    )

    async def run(target: pw.Target) -> bytes:
        conn = await asyncpg.connect(**target.asyncpg_kwargs())
        try:
            buf = io.BytesIO()
            await conn.copy_from_query(sql, output=buf, format="binary")
            return buf.getvalue()
        finally:
            await conn.close()

    via = _binary_copy_fields(asyncio.run(run(gw)))
    ref = _binary_copy_fields(asyncio.run(run(direct_target)))
    n = len(kept)
    assert [r[:n] for r in via] == [r[:n] for r in ref]
    card, ip, tags, trange, tmulti = via[0][n:]
    assert card == struct.pack("!q", 1111)
    assert ip == bytes([2, 24, 0, 4, 0, 0, 0, 0])
    assert tags is not None and b"<EMAIL>" in tags and EMAIL.encode() not in tags
    assert trange == b"\x01"  # range_send's empty range
    # one range left: [a b, c] (flags: both bounds inclusive)
    kept_range = b"\x06" + struct.pack("!i", 3) + b"a b" + struct.pack("!i", 1) + b"c"
    assert tmulti == struct.pack("!ii", 1, len(kept_range)) + kept_range
    assert via[1][n:] == [None] * 5


# values whose text form has corner cases (compressed IPv6, IPv4 inside IPv6, exponents, BC
# dates, offsets with seconds, mixed-sign intervals, numeric scales)
WIRE_SAMPLES = {
    "inet": [
        "::",
        "::1",
        "::ffff:1.2.3.4",
        "::1.2.3.4",
        "2001:db8::1:0:0:1/64",
        "2001:db8:0:0:1::1",
        "1:0:0:2:0:0:0:3",
        "fe80::/10",
        "10.0.0.1/8",
        "255.255.255.255",
    ],
    "cidr": ["10.0.0.0/8", "2001:db8::/32", "::/0", "192.168.1.128/25"],
    "float8": ["0", "-0", "1e21", "1e15", "1e14", "1.5e-05", "0.0001", "123.456", "-1e-300"],
    "float4": ["1234567", "123456", "0.1", "3.4028235e+38", "1e-45"],
    "numeric": ["0", "0.000", "-12345678.90", "1e-20", "100000000", "-0.5", "99999.9999"],
    "date": ["2024-02-29", "0044-03-15 BC", "4714-11-24 BC", "5874897-12-31", "infinity"],
    "timestamp": ["1987-06-05 04:03:02.5", "0001-01-01 00:00:00 BC", "294276-12-31 23:59:59"],
    "timestamptz": ["1987-06-05 04:03:02.000001+00", "2024-01-01 00:00:00+00", "-infinity"],
    "time": ["00:00:00", "23:59:59.999999", "24:00:00"],
    "timetz": ["04:03:02+05:30", "04:03:02-03:30:52", "00:00:00+00"],
    "interval": [
        "1 year 2 mons 3 days 04:05:06.5",
        "-1 years -2 mons +3 days -04:05:06",
        "-00:00:01",
        "1 day",
        "100:00:00",
        "-1 mons",
    ],
    "uuid": ["00000000-0000-0000-0000-000000000000", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],
    "bytea": ["\\x", "\\x00ff41"],
    "int8": ["-9223372036854775808", "0"],
    "bool": ["t", "f"],
}


@pytest.mark.parametrize("typ", sorted(WIRE_SAMPLES))
def test_codecs_write_what_postgres_writes(direct: str, typ: str) -> None:
    """The engine's text and binary forms of a value are the server's own: what it writes when
    it masks is what PostgreSQL would have sent."""
    import veilgate_native as vn

    oid = psycopg.adapters.types[typ].oid
    codec = vn.Codec.builtin(oid)
    assert codec is not None
    values = WIRE_SAMPLES[typ]
    sql = "select " + ", ".join(f"%s::{typ}" for _ in values)
    with psycopg.connect(direct, autocommit=True) as conn:
        conn.execute("set timezone = 'UTC'")
        forms = []
        for binary in (False, True):
            with conn.cursor(binary=binary) as cur:
                cur.execute(sql, values)
                res = cur.pgresult
                assert res is not None
                forms.append([res.get_value(0, c) for c in range(res.nfields)])
    for value, text, binary in zip(values, *forms, strict=True):
        assert text is not None and binary is not None
        assert codec.transcode(binary, 1) == text, (value, text)
        assert codec.transcode(text, 0) == binary, (value, binary)


def test_simple_protocol_text_and_binary_cursor(gw: pw.Target, direct: str, table: str) -> None:
    """The simple protocol (text results, and binary ones from FETCH on a BINARY cursor), read
    on the wire: masked values are the codecs' forms of the masked values, kept ones the
    server's bytes."""
    cols = "s_card, s_ip, s_tags, k_date, k_uuid, hash_date"
    select = f"select {cols} from {table} where id = 1"
    c = pw.connect(gw.endpoint())
    try:
        msgs = c.simple(
            f"{select}; begin; declare c binary cursor for {select}; fetch all from c; commit"
        )
    finally:
        c.terminate()
    assert "E" not in "".join(m.tag for m in msgs), pw.first_error(msgs)
    text, binary = [pw.data_row(m.body) for m in msgs if m.tag == "D"]
    refs = []
    for fmt in (False, True):
        with psycopg.connect(direct, autocommit=True) as conn, conn.cursor(binary=fmt) as cur:
            cur.execute(select)
            res = cur.pgresult
            assert res is not None
            refs.append([res.get_value(0, i) for i in range(res.nfields)])
    ref_text, ref_binary = refs
    assert text[:3] == [b"1111", b"0.0.0.0/24", b"{<EMAIL>,plain,NULL}"]
    assert binary[0] == struct.pack("!q", 1111)
    assert binary[1] == bytes([2, 24, 0, 4, 0, 0, 0, 0])
    assert text[3:5] == ref_text[3:5] and binary[3:5] == ref_binary[3:5]
    import veilgate_native as vn

    date = vn.Codec.builtin(1082)
    assert date is not None and text[5] != ref_text[5]
    assert date.transcode(text[5] or b"", 0) == binary[5]  # the same keyed date both ways


@pytest.fixture(scope="module")
def hstore_db(pg_cluster: Any) -> str:
    """A database of its own with the hstore extension (its operators named like built-in
    ones would change what other masking tests in the shared database see)."""
    name = "vg_hstore_" + secrets.token_hex(4)
    pg_cluster.execute(f"create database {name}", "postgres")
    pg_cluster.execute("create extension hstore", name)
    return replace(pw.superuser_target(pg_cluster), dbname=name).conninfo()


HSTORE_SAMPLES = [
    f'"mail"=>"{EMAIL}", "n"=>NULL',
    '"a\\"b"=>"c\\\\d", "plain"=>"x"',
    f'"{EMAIL}"=>"k", "q"=>"2"',
    "",
]


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_hstore_masked_is_an_hstore(hstore_db: str, binary: bool) -> None:
    """hstore keys and values are masked as text, in both formats; the server reads every
    masked value back as an hstore, and one with nothing to mask is kept byte for byte."""
    import veilgate_native as vn

    codec = vn.Codec.scalar("hstore")
    fmt = 1 if binary else 0
    with psycopg.connect(hstore_db, autocommit=True) as conn:
        oid = conn.execute("select 'hstore'::regtype::oid").fetchone()[0]  # type: ignore[index]
        for sample in HSTORE_SAMPLES:
            res = conn.pgconn.exec_params(b"select $1::hstore", [sample.encode()], [0], [0], fmt)
            value = res.get_value(0, 0)
            assert value is not None
            masked = codec.mask(value, fmt, vn.Masker())
            assert masked is not None, sample
            back = conn.pgconn.exec_params(b"select $1::hstore::text", [masked], [oid], [fmt], 0)
            assert back.status == psycopg.pq.ExecStatus.TUPLES_OK, back.error_message
            text = (back.get_value(0, 0) or b"").decode()
            assert EMAIL not in text, text
            if EMAIL in sample:
                assert "<EMAIL>" in text
            else:
                assert masked == value


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_masked_ranges_are_values_of_their_type(direct: str, table: str, binary: bool) -> None:
    """A range of text masked by the engine (a content scan, and a column rule) is read back
    by the server as a value of the same type, in the same format."""
    import veilgate_native as vn

    fmt = 1 if binary else 0
    text = vn.Codec.scalar("text")
    with psycopg.connect(direct, autocommit=True) as conn:
        for typ, codec, samples in (
            (f"{table}_trange", vn.Codec.range(text), ("s_trange", "s_tplain", "hash_trange")),
            (f"{table}_tmulti", vn.Codec.multirange(text), ("s_tmulti", "multirange(s_tplain)")),
        ):
            oid = conn.execute(f"select '{typ}'::regtype::oid").fetchone()[0]  # type: ignore[index]
            for sample in samples:
                sql = f"select {sample} from {table} where id = 1".encode()
                res = conn.pgconn.exec_params(sql, [], [], [], fmt)
                value = res.get_value(0, 0)
                assert value is not None, res.error_message
                for mask in (vn.Masker(), vn.Operator("redact")):
                    masked = codec.mask(value, fmt, mask)
                    assert masked is not None
                    back = conn.pgconn.exec_params(
                        f"select $1::{typ}::text".encode(), [masked], [oid], [fmt], 0
                    )
                    assert back.status == psycopg.pq.ExecStatus.TUPLES_OK, back.error_message
                    assert EMAIL.encode() not in (back.get_value(0, 0) or b"")


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_range_constructors_keep_their_arguments_lineage(
    gw: pw.Target, table: str, binary: bool
) -> None:
    """The constructors PostgreSQL makes for a range type (``CREATE TYPE ... AS RANGE``: the
    range and multirange constructors, C functions in the user's schema) compute their value
    from their arguments: a range built from constants is the client's value, not redacted as
    of unknown origin (it came back as the empty range)."""
    t = table
    with _connect(gw.conninfo(), t) as conn, conn.cursor(binary=binary) as cur:
        cur.execute(
            f"select {t}_trange('a', 'b') as r, {t}_trange('a', 'b', '[]') as r3,"
            f" {t}_tmulti({t}_trange('a', 'b'), {t}_trange('c', 'd')) as m, {t}_tmulti() as m0,"
            # a cast to the multirange type: its cast from the range type runs a constructor
            f" '{{}}'::{t}_tmulti = '{{}}'::{t}_tmulti as eq,"
            f" {t}_trange('a', 'b')::{t}_tmulti as cast"
        )
        row = _rows(cur)[0]
    assert row["eq"] is True
    assert row["cast"] == Multirange([Range("a", "b")])
    assert row["r"] == Range("a", "b")
    assert row["r3"] == Range("a", "b", "[]")
    assert row["m"] == Multirange([Range("a", "b"), Range("c", "d")])
    assert row["m0"] == Multirange()
