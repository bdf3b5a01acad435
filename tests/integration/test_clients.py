"""Real clients (psql, asyncpg, psycopg 3) get through the gateway what they get directly."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg.rows import tuple_row
from tests.integration import pgwire as pw

pytestmark = pytest.mark.pg

# Values of many types and edge cases; compared, never hard-coded.
TYPES_QUERY = """
select 9223372036854775807::int8 as i8, (-32768)::int2 as i2, 2147483647::int4 as i4,
       123456789012345678901234567890.123456789::numeric as big_numeric,
       'NaN'::numeric as nan_numeric, 0.0000001230::numeric(20, 10) as scaled,
       (-5e-20)::numeric as tiny, 0::numeric as zero,
       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid as uuid,
       '{"a": [1, 2.5, null, "x"], "b": {"c": true}, "é": "ü"}'::jsonb as jsonb,
       '{"k": 1, "k": 2}'::json as json,
       array[1, null, 3]::int8[] as i8_array, array[['a', 'b'], [null, 'd']]::text[] as text_2d,
       '{}'::int4[] as empty_array, array[1.5, null]::numeric[] as numeric_array,
       null::int8 as null_i8, null::text as null_text, null::uuid as null_uuid,
       null::jsonb as null_jsonb, null::int4[] as null_array,
       '2024-02-29 12:34:56.789012+05:30'::timestamptz as tstz,
       '1999-12-31 23:59:59.999999'::timestamp as ts, '2024-02-29'::date as d,
       '12:34:56.5'::time as t, '12:34:56+05:30'::timetz as ttz,
       '1 year 2 mons 3 days 04:05:06.789'::interval as iv,
       true as b, 1.5e300::float8 as f8, 3.25::float4 as f4,
       '\\xdeadbeef00'::bytea as bytes, 'héllo wörld ✓ 🐘'::text as utf8, 'x'::char(3) as bpchar,
       'abc'::varchar(10) as vc, 'name'::name as nm, '192.168.0.1/24'::inet as inet,
       '10.0.0.0/8'::cidr as cidr, '08:00:2b:01:02:03'::macaddr as mac,
       int4range(1, 10) as range, 42::oid as oid, '(1,2)'::point as pt, 'a & b'::tsquery as tsq
"""

SPECIAL_FLOATS = "select 'NaN'::float8, 'Infinity'::float8, '-Infinity'::float4, '-0'::float8"

# psycopg cannot load infinite dates (DataError), so only psql and asyncpg get these.
INFINITIES = (
    "select 'infinity'::timestamptz, '-infinity'::timestamp, 'infinity'::date, "
    "'Infinity'::numeric, '-Infinity'::numeric"
)

TABLE_QUERIES = [
    "select * from customers order by 1",
    "select * from orders order by 1",
    "select c.*, o.* from customers c join orders o on true order by 1 limit 500",
]
# Out of Python's date range: psql only.
BC_DATES = "select '0044-03-15 BC'::date, '4713-01-01 BC'::timestamptz"

SERIES_QUERY = (
    "select g, md5(g::text) as h, g::numeric / 7 as q, g % 3 = 0 as b, "
    "case when g % 5 = 0 then null else repeat('v', g % 50) end as s "
    "from generate_series(1, 20000) g"
)


def _norm(rows: Sequence[Any]) -> list[str]:
    """Comparable rendering (repr keeps NaN, types and tz offsets visible)."""
    return [repr(tuple(r)) for r in rows]


# --- psql ----------------------------------------------------------------------------------------


def _psql(t: pw.Target, sql: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "psql",
            t.conninfo(with_password=False),
            *("-X", "-A", "-F", "|", "-v", "ON_ERROR_STOP=0"),
            *extra,
            *("-c", sql),
        ],
        env=t.psql_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    "sql",
    [*TABLE_QUERIES, TYPES_QUERY, SPECIAL_FLOATS, INFINITIES, SERIES_QUERY, BC_DATES],
    ids=lambda s: s[:40],
)
def test_psql_results_identical(gw: pw.Target, direct: pw.Target, sql: str) -> None:
    via = _psql(gw, sql)
    ref = _psql(direct, sql)
    assert ref.returncode == 0, ref.stderr
    assert via.returncode == 0, via.stderr
    assert via.stdout == ref.stdout
    assert via.stdout.count("\n") >= 2


@pytest.mark.parametrize("meta", ["\\d customers", "\\dt", "\\df+ lower", "\\l"])
def test_psql_meta_commands_identical(gw: pw.Target, direct: pw.Target, meta: str) -> None:
    """psql's catalog queries (regclass, array and oid-typed columns) come out the same."""
    via, ref = _psql(gw, meta), _psql(direct, meta)
    assert ref.returncode == 0, ref.stderr
    assert via.returncode == 0, via.stderr
    assert via.stdout == ref.stdout
    assert via.stdout.strip()


def test_psql_multi_statement_simple_query(gw: pw.Target, direct: pw.Target) -> None:
    sql = (
        "select 1 as a; select 'two' as b, null as c; values (3), (4); "
        "show standard_conforming_strings"
    )
    via, ref = _psql(gw, sql), _psql(direct, sql)
    assert via.returncode == ref.returncode == 0, via.stderr
    assert via.stdout == ref.stdout
    assert "two" in via.stdout and "4" in via.stdout


def test_psql_multi_statement_error_midway(gw: pw.Target, direct: pw.Target) -> None:
    sql = "select 1 as a; select 1/0; select 3 as c"
    via, ref = _psql(gw, sql), _psql(direct, sql)
    assert via.returncode == ref.returncode != 0
    assert via.stdout == ref.stdout
    assert "division by zero" in via.stderr
    assert via.stderr == ref.stderr


def test_psql_verify_full_tls(gw: pw.Target) -> None:
    res = _psql(gw, "select 'tls ok'", "-t")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "tls ok"


def test_psql_wrong_ca_is_refused_by_the_client(gw: pw.Target, direct: pw.Target) -> None:
    """verify-full really verifies: trusting only an unrelated CA fails (if the CAs differ)."""
    from pathlib import Path

    assert gw.ca_file and direct.ca_file
    if Path(gw.ca_file).read_bytes() == Path(direct.ca_file).read_bytes():
        bad = pw.Target(**{**gw.__dict__, "ca_file": "/etc/ssl/certs/ca-certificates.crt"})
    else:
        bad = pw.Target(**{**gw.__dict__, "ca_file": direct.ca_file})
    res = _psql(bad, "select 1")
    assert res.returncode != 0
    assert "certificate" in res.stderr


# --- raw multi-statement semantics ---------------------------------------------------------------


def test_multi_statement_one_ready_for_query(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint()) as c:
        msgs = c.simple("select 1; select 2, 3; ; select 'x' where false")
        assert pw.frames(msgs) == "TDCTDCTCZ"
        assert [pw.command_tag(m.body) for m in msgs if m.tag == "C"] == [
            "SELECT 1",
            "SELECT 1",
            "SELECT 0",
        ]
        assert pw.frames(c.simple("")) == "IZ"  # EmptyQueryResponse


def test_multi_statement_is_one_implicit_transaction(gw: pw.Target) -> None:
    with pw.connect(gw.endpoint()) as c:
        c.rows("create temp table mt (x int)")
        msgs = c.simple("insert into mt values (1); select 1/0; insert into mt values (2)")
        assert pw.frames(msgs) == "CEZ"
        assert pw.error_fields(msgs[1].body)["C"] == "22012"
        assert msgs[-1].body == b"I"
        assert c.scalar("select count(*) from mt") == "0"
        msgs = c.simple("begin; insert into mt values (3)")
        assert msgs[-1].body == b"T"
        msgs = c.simple("select 1/0")
        assert msgs[-1].body == b"E"
        msgs = c.simple("rollback")
        assert pw.command_tag(msgs[0].body) == "ROLLBACK" and msgs[-1].body == b"I"


# --- asyncpg -------------------------------------------------------------------------------------


async def _asyncpg_fetch(t: pw.Target, sql: str, *args: Any) -> list[str]:
    conn = await asyncpg.connect(**t.asyncpg_kwargs())
    try:
        return _norm(await conn.fetch(sql, *args))
    finally:
        await conn.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "sql",
    [*TABLE_QUERIES, TYPES_QUERY, SPECIAL_FLOATS, INFINITIES, SERIES_QUERY],
    ids=lambda s: s[:40],
)
async def test_asyncpg_results_identical(gw: pw.Target, direct: pw.Target, sql: str) -> None:
    via = await _asyncpg_fetch(gw, sql)
    ref = await _asyncpg_fetch(direct, sql)
    assert via == ref
    assert via


PREPARED_SQL = (
    "select $1::int8 * 2 as i, $2::text || '!' as t, $3::uuid as u, $4::jsonb as j, "
    "$5::int4[] as a, $6::timestamptz as ts, $7::numeric as n, $8::bytea as by, $9::bool as b"
)


def _prepared_args() -> list[tuple[Any, ...]]:
    import datetime
    import decimal
    import uuid

    tz = datetime.timezone(datetime.timedelta(hours=-3, minutes=-30))
    out: list[tuple[Any, ...]] = []
    for k in range(40):
        out.append(
            (
                k * 1_000_000_007,
                "row" * (k % 4),
                uuid.UUID(int=k * 7919),
                f'{{"k": {k}, "list": [1, null]}}',
                [k, None, -k],
                datetime.datetime(2000 + k, 1 + k % 12, 1 + k % 28, k % 24, tzinfo=tz),
                decimal.Decimal(k) / 3,
                bytes(range(k % 256)),
                k % 2 == 0,
            )
        )
    out.append((None,) * 9)
    return out


async def _asyncpg_prepared(t: pw.Target) -> tuple[list[str], list[tuple[str, str]]]:
    conn = await asyncpg.connect(**t.asyncpg_kwargs())
    try:
        stmt = await conn.prepare(PREPARED_SQL)
        attrs = [(a.name, a.type.name) for a in stmt.get_attributes()]
        rows: list[str] = []
        for args in _prepared_args():
            rows += _norm(await stmt.fetch(*args))
            rows.append(repr(await stmt.fetchval(*args, column=6)))
        # The same text through conn.fetch uses asyncpg's statement cache (Bind/Execute only).
        for args in _prepared_args()[:5]:
            rows += _norm([await conn.fetchrow(PREPARED_SQL, *args)])
        return rows, attrs
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_asyncpg_prepared_statements_identical(gw: pw.Target, direct: pw.Target) -> None:
    via = await _asyncpg_prepared(gw)
    ref = await _asyncpg_prepared(direct)
    assert via == ref


async def _asyncpg_executemany(t: pw.Target) -> list[str]:
    import datetime
    import decimal
    import uuid

    conn = await asyncpg.connect(**t.asyncpg_kwargs())
    try:
        await conn.execute(
            "create temp table em (id int8, n numeric, u uuid, j jsonb, a text[], "
            "ts timestamptz, note text)"
        )
        data = [
            (
                i,
                decimal.Decimal(i) / 7,
                uuid.UUID(int=i),
                f'{{"i": {i}}}',
                [str(i), None],
                datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(hours=i),
                None if i % 3 == 0 else "n" * i,
            )
            for i in range(500)
        ]
        await conn.executemany("insert into em values ($1, $2, $3, $4, $5, $6, $7)", data)
        rows = await conn.fetch("select * from em order by id")
        async with conn.transaction():
            cursor_rows = [r async for r in conn.cursor("select * from em order by id", prefetch=7)]
        assert _norm(cursor_rows) == _norm(rows)
        count = await conn.fetchval("select count(*) from em")
        assert count == len(data)
        return _norm(rows)
    finally:
        await conn.close()


@pytest.mark.asyncio
async def test_asyncpg_executemany_and_cursor_identical(gw: pw.Target, direct: pw.Target) -> None:
    via = await _asyncpg_executemany(gw)
    ref = await _asyncpg_executemany(direct)
    assert via == ref
    assert len(via) == 500


@pytest.mark.asyncio
async def test_asyncpg_error_keeps_connection_usable(gw: pw.Target) -> None:
    conn = await asyncpg.connect(**gw.asyncpg_kwargs())
    try:
        with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
            await conn.fetch("select 1/$1::int", 0)
        with pytest.raises(asyncpg.exceptions.UndefinedTableError):
            await conn.fetch("select * from no_such_table")
        assert await conn.fetchval("select $1::int + 1", 41) == 42
    finally:
        await conn.close()


# --- psycopg 3 -----------------------------------------------------------------------------------


def _psycopg_fetch(t: pw.Target, sql: str, binary: bool) -> list[str]:
    with (
        psycopg.connect(t.conninfo(), row_factory=tuple_row) as conn,
        conn.cursor(binary=binary) as cur,
    ):
        cur.execute(sql)
        return _norm(cur.fetchall())


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize(
    "sql", [*TABLE_QUERIES, TYPES_QUERY, SPECIAL_FLOATS, SERIES_QUERY], ids=lambda s: s[:40]
)
def test_psycopg_results_identical(
    gw: pw.Target, direct: pw.Target, sql: str, binary: bool
) -> None:
    via = _psycopg_fetch(gw, sql, binary)
    ref = _psycopg_fetch(direct, sql, binary)
    assert via == ref
    assert via


def _psycopg_pipeline(t: pw.Target) -> list[Any]:
    out: list[Any] = []
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        conn.execute("create temp table pl (id int, v text)")
        with conn.pipeline() as p:
            curs = [conn.execute("select %s::int * 2, %s::text", (i, f"v{i}")) for i in range(50)]
            with conn.cursor() as ins:
                ins.executemany(
                    "insert into pl values (%s, %s)", [(i, "x" * i) for i in range(100)]
                )
            curs.append(conn.execute(TYPES_QUERY))
            curs.append(conn.execute("select count(*), sum(id) from pl"))
            p.sync()
            curs.append(conn.execute(SERIES_QUERY, binary=True))
            for cur in curs:
                out.append(_norm(cur.fetchall()))
        # An error inside a pipeline aborts the rest of that sync'd batch only.
        with pytest.raises(psycopg.errors.DivisionByZero), conn.pipeline():
            conn.execute("select 1")
            conn.execute("select 1/0")
            conn.execute("select 2")
        out.append(conn.execute("select 'after the failed pipeline'").fetchone())
    return out


def test_psycopg_pipeline_mode_identical(gw: pw.Target, direct: pw.Target) -> None:
    via = _psycopg_pipeline(gw)
    ref = _psycopg_pipeline(direct)
    assert via == ref
    assert via[-1] == ("after the failed pipeline",)


def _psycopg_server_cursor(t: pw.Target) -> list[Any]:
    out: list[Any] = []
    with psycopg.connect(t.conninfo()) as conn:
        for binary in (False, True):
            with conn.cursor(name=f"ssc_{int(binary)}", binary=binary) as cur:
                cur.itersize = 333
                cur.execute(SERIES_QUERY)
                first = cur.fetchmany(10)
                rest = list(cur)
                out.append(_norm(first + rest))
                assert len(first) + len(rest) == 20000
        with conn.cursor(name="ssc_scroll", scrollable=True) as cur:
            cur.execute("select g from generate_series(1, 100) g")
            cur.scroll(50)
            out.append(cur.fetchone())
            cur.scroll(-10)
            out.append(cur.fetchone())
        conn.commit()
        # prepared statements (server side, after prepare_threshold)
        for i in range(8):
            out.append(
                conn.execute("select %s::int + 1, %s::text", (i, "p"), prepare=True).fetchone()
            )
    return out


def test_psycopg_server_side_cursors_identical(gw: pw.Target, direct: pw.Target) -> None:
    via = _psycopg_server_cursor(gw)
    ref = _psycopg_server_cursor(direct)
    assert via == ref


def test_psycopg_multi_statement(gw: pw.Target, direct: pw.Target) -> None:
    def run(t: pw.Target) -> list[Any]:
        res = []
        with psycopg.connect(t.conninfo(), autocommit=True) as conn:
            cur = conn.execute("select 1 as a; select 'b', null; values (2), (3)")
            while True:
                res.append((cur.statusmessage, cur.fetchall()))
                if not cur.nextset():
                    break
        return res

    via, ref = run(gw), run(direct)
    assert via == ref
    assert len(via) == 3


def test_psycopg_transactions(gw: pw.Target) -> None:
    with psycopg.connect(gw.conninfo()) as conn:
        conn.execute("create temp table tx (x int) on commit preserve rows")
        conn.commit()
        conn.execute("insert into tx values (1)")
        conn.rollback()
        conn.execute("insert into tx values (2)")
        conn.commit()
        with conn.transaction():
            conn.execute("insert into tx values (3)")
            with pytest.raises(psycopg.errors.UniqueViolation), conn.transaction():
                conn.execute("create temp table dup (x int primary key)")
                conn.execute("insert into dup values (1), (1)")
        assert conn.execute("select array_agg(x order by x) from tx").fetchone() == ([2, 3],)
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS
        conn.rollback()
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


def test_psql_pgtz_and_pgdatestyle_environment(gw: pw.Target, direct: pw.Target) -> None:
    """libpq sends PGTZ / PGDATESTYLE as the ``timezone`` / ``datestyle`` startup parameters."""

    def run(t: pw.Target) -> subprocess.CompletedProcess[str]:
        env = {**t.psql_env(), "PGTZ": "Asia/Tokyo", "PGDATESTYLE": "SQL, DMY"}
        return subprocess.run(
            [
                "psql",
                t.conninfo(with_password=False),
                "-X",
                "-A",
                "-t",
                "-c",
                "select current_setting('timezone'), current_setting('datestyle'), "
                "'2024-02-29 10:00:00+00'::timestamptz",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    via, ref = run(gw), run(direct)
    assert ref.returncode == 0, ref.stderr
    assert via.returncode == 0, via.stderr
    assert via.stdout == ref.stdout
    assert via.stdout.startswith("Asia/Tokyo|SQL, DMY|")


def test_error_fields_identical(gw: pw.Target, direct: pw.Target) -> None:
    """Every field of a server error reaches the client unchanged."""
    names = (
        "severity",
        "severity_nonlocalized",
        "sqlstate",
        "message_primary",
        "message_detail",
        "message_hint",
        "statement_position",
        "context",
        "schema_name",
        "table_name",
        "column_name",
        "datatype_name",
        "constraint_name",
        "source_file",
        "source_function",
    )

    import secrets

    # A regular table (a temporary one's schema, pg_temp_N, differs between sessions), the
    # same name for both runs.
    table = "ef_" + secrets.token_hex(4)

    from psycopg import sql

    def q(template: str) -> sql.Composed:
        return sql.SQL(template).format(t=sql.Identifier(table))

    def errors(t: pw.Target) -> list[tuple[Any, ...]]:
        out = []
        with psycopg.connect(t.conninfo(), autocommit=True) as conn:
            conn.execute(q("create table {t} (id int primary key, v int check (v > 0))"))
            conn.execute(q("insert into {t} values (1, 1)"))
            for stmt in (
                q("insert into {t} values (1, 2)"),
                q("insert into {t} values (2, -1)"),
                q("insert into {t} values (null, 1)"),
                q("select nosuchcol from {t}"),
                sql.SQL("select 1 +"),
                sql.SQL(
                    "do $$begin raise exception using errcode = '22023', message = 'm', "
                    "detail = 'd', hint = 'h', column = 'c', constraint = 'k', datatype = 't', "
                    "table = 'tb', schema = 's'; end$$"
                ),
            ):
                with pytest.raises(psycopg.Error) as ei:
                    conn.execute(stmt)
                diag = ei.value.diag
                out.append(tuple(getattr(diag, n) for n in names))
            conn.execute(q("drop table {t}"))
        return out

    via, ref = errors(gw), errors(direct)
    assert via == ref
    assert via[0][2] == "23505" and via[0][12] == f"{table}_pkey"
