"""Masking end to end: real clients (psql, psycopg text and binary, asyncpg) through a masked
gateway try every known way around column masking, and none of the raw values comes out.

The same statements through a tier without masking return the raw values (so the table really
holds them and the assertions can fail).
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from psycopg import sql as psql_sql
from tests.integration import pgwire as pw
from tests.integration.masking_setup import (
    CARD,
    EMAIL,
    IBAN,
    NOTE_PHONE,
    PHONE,
    RAW_VALUES,
    SSN,
    Factory,
    MaskedGateway,
    bypass_queries,
    leaked,
    make_table,
    start_gateway,
)

from veilgate import metrics

pytestmark = pytest.mark.pg


@pytest.fixture
def table(pg_cluster: Any) -> str:
    return make_table(pg_cluster)


@pytest.fixture
def masked(gateway_factory: Factory, tmp_path: Path) -> MaskedGateway:
    return start_gateway(gateway_factory, tmp_path / "audit.jsonl", "db.masked")


@pytest.fixture
def raw(gateway_factory: Factory, tmp_path: Path) -> MaskedGateway:
    return start_gateway(gateway_factory, tmp_path / "audit-raw.jsonl", "db.raw")


def _psycopg_rows(target: pw.Target, sql: str, *, binary: bool = False) -> str:
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        cur = conn.cursor(binary=binary)
        cur.execute(sql)
        return repr(cur.fetchall())


def _psycopg_wire(target: pw.Target, sql: str, *, binary: bool = False) -> tuple[int, bytes]:
    """(rows, every value of the result as the client received it): no decoding, so a leak is
    found even where a masked value would not decode."""
    with psycopg.connect(target.conninfo(), autocommit=True) as conn:
        cur = conn.cursor(binary=binary)
        cur.execute(sql)
        res = cur.pgresult
        assert res is not None
        cells = [res.get_value(r, c) for r in range(res.ntuples) for c in range(res.nfields)]
        return res.ntuples, b"\x00".join(v for v in cells if v is not None)


def _assert_masked_ssn(value: str) -> None:
    """``partial keep_last 4``: same length, last four kept, the rest hidden."""
    assert value != SSN
    assert value.endswith(SSN[-4:]), value
    assert len(value) == len(SSN), value
    assert SSN[:3] not in value, value


# --- the raw tier: the table really holds the values -------------------------------------------


def test_raw_tier_sees_raw_values(raw: MaskedGateway, table: str) -> None:
    out = _psycopg_rows(raw.target, f"select * from {table} order by id")
    assert SSN in out and EMAIL in out and CARD in out and NOTE_PHONE in out
    out = _psycopg_rows(raw.target, f"select lower(ssn) from {table}")
    assert SSN in out


def test_unmasked_session_stays_pass_through(raw: MaskedGateway, masked: MaskedGateway) -> None:
    """Only sessions of a masked tier carry masking state (and surface extra events)."""

    def sessions(h: MaskedGateway) -> list[tuple[bool, bool]]:
        gw = h.handle.thread.gateway
        assert gw is not None

        async def look() -> list[tuple[bool, bool]]:
            return [(s.masking is not None, s.upstream is not None) for s in gw._sessions]

        return h.handle.thread.call(look())

    with psycopg.connect(raw.target.conninfo(), autocommit=True) as conn:
        conn.execute("select 1")
        assert sessions(raw) == [(False, True)]
    with psycopg.connect(masked.target.conninfo(), autocommit=True) as conn:
        conn.execute("select 1")
        assert sessions(masked) == [(True, True)]


# --- psycopg -------------------------------------------------------------------------------


def test_plain_select_shapes(masked: MaskedGateway, table: str) -> None:
    with psycopg.connect(masked.target.conninfo(), autocommit=True) as conn:
        row = conn.execute(
            f"select ssn, email, card, phone, iban, notes, salary, id from {table} where id = 1"
        ).fetchone()
    assert row is not None
    ssn, email, card, phone, iban, notes, salary, ident = row
    _assert_masked_ssn(ssn)
    assert email == "<EMAIL>"
    assert card != CARD and card.endswith(CARD[-4:])
    assert phone != PHONE and iban != IBAN
    # free text: the PII inside is replaced, the rest of the text stays
    assert notes.startswith("contact ") and not leaked(notes)
    # columns no rule covers keep their values
    assert (salary, ident) == (1000, 1)


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_psycopg_bypass_attempts(masked: MaskedGateway, table: str, binary: bool) -> None:
    for name, sql in bypass_queries(table).items():
        rows, out = _psycopg_wire(masked.target, sql, binary=binary)
        assert rows > 0, name
        assert not leaked(out), (name, out)


def test_psycopg_prepared_statement_reused(masked: MaskedGateway, table: str) -> None:
    with psycopg.connect(masked.target.conninfo(), autocommit=True) as conn:
        for i in range(8):  # psycopg prepares server-side from the 5th execution on
            for binary in (False, True):
                cur = conn.cursor(binary=binary)
                cur.execute(
                    f"select ssn, lower(email) from {table} where id = %s", (1,), prepare=i > 2
                )
                out = repr(cur.fetchall())
                assert not leaked(out), (i, binary, out)


def test_psycopg_named_cursor_itersize(masked: MaskedGateway, table: str) -> None:
    """A server-side cursor fetched a few rows at a time (DECLARE + FETCH FORWARD n)."""
    with psycopg.connect(masked.target.conninfo()) as conn:
        for binary in (False, True):
            with conn.cursor(name="c_masked", binary=binary) as cur:
                cur.itersize = 1
                cur.execute(f"select ssn, email, lower(ssn) from {table} order by id")
                rows = list(cur)
            assert len(rows) == 2
            assert not leaked(repr(rows)), rows
            _assert_masked_ssn(rows[0][0])
        conn.rollback()


@pytest.mark.parametrize(
    "copy_sql",
    [
        "copy {t} to stdout",
        "copy {t} to stdout with (format csv, header)",
        "copy {t} to stdout with (format binary)",
        "copy {t} to stdout with binary",
        "copy {t} (id, ssn, email) to stdout",
        "copy (select ssn, lower(email), notes from {t}) to stdout",
        "copy (select ssn, email || '' from {t}) to stdout with (format csv)",
        "copy (select * from {t}) to stdout with (format binary)",
    ],
)
def test_copy_to_stdout(
    masked: MaskedGateway, raw: MaskedGateway, table: str, copy_sql: str
) -> None:
    sql = copy_sql.format(t=table)

    def copy_out(target: pw.Target) -> bytes:
        with psycopg.connect(target.conninfo(), autocommit=True) as conn:
            cur = conn.cursor()
            with cur.copy(sql) as copy:
                return b"".join(bytes(chunk) for chunk in copy)

    assert leaked(copy_out(raw.target)), "the raw tier gets the raw values"
    data = copy_out(masked.target)
    assert data, "the masked COPY returned data (or was refused with an error)"
    assert not leaked(data), data


# --- asyncpg (binary results, prepared statements, Execute without Describe) ------------------


def test_asyncpg_bypass_attempts(masked: MaskedGateway, table: str) -> None:
    async def run() -> list[tuple[str, str]]:
        conn = await asyncpg.connect(**masked.target.asyncpg_kwargs())
        out = []
        try:
            for name, sql in bypass_queries(table).items():
                if name in ASYNCPG_INTROSPECTS:
                    continue
                rows = await conn.fetch(sql)
                out.append((name, repr([tuple(r) for r in rows])))
            # the same prepared statement, executed again and again (Bind/Execute only)
            stmt = await conn.prepare(f"select ssn, email, card from {table} where id = $1")
            for _ in range(5):
                out.append(("prepared", repr(tuple(await stmt.fetchrow(1) or ()))))
            # a cursor with a small prefetch: Execute with a row limit, PortalSuspended
            async with conn.transaction():
                cur = conn.cursor(f"select ssn, notes, row_to_json(m) from {table} m", prefetch=1)
                out.extend([("cursor", repr(tuple(r))) async for r in cur])
        finally:
            await conn.close()
        return out

    results = asyncio.run(run())
    assert len([r for r in results if r[0] == "cursor"]) == 2
    for name, out in results:
        assert not leaked(out), (name, out)
    prepared = [r for r in results if r[0] == "prepared"]
    assert len(prepared) == 5 and SSN[-4:] in prepared[0][1]


ASYNCPG_INTROSPECTS = ("whole_row",)
"""Results of a type asyncpg does not know yet (a table's row type): it asks the catalog first."""


def test_asyncpg_computed_binary_columns(masked: MaskedGateway, table: str) -> None:
    """Computed binary columns of non-text types (count(*), asyncpg's own type introspection of
    a row type) come back usable, and the row type's values still masked."""

    async def run() -> tuple[Any, Any]:
        conn = await asyncpg.connect(**masked.target.asyncpg_kwargs())
        try:
            counts = await conn.fetchrow(f"select count(*), max(id) + 1 from {table}")
            rows = await conn.fetch(bypass_queries(table)["whole_row"])
            return counts, rows
        finally:
            await conn.close()

    counts, rows = asyncio.run(run())
    assert tuple(counts) == (2, 3)
    assert len(rows) == 2 and not leaked(repr(rows))


def test_asyncpg_copy_from_query(masked: MaskedGateway, table: str, tmp_path: Path) -> None:
    async def run() -> bytes:
        conn = await asyncpg.connect(**masked.target.asyncpg_kwargs())
        try:
            out = tmp_path / "out.csv"
            await conn.copy_from_query(f"select ssn, email, notes from {table}", output=str(out))
            await conn.copy_from_table(table, output=str(tmp_path / "t.bin"), format="binary")
            return out.read_bytes() + (tmp_path / "t.bin").read_bytes()
        finally:
            await conn.close()

    data = asyncio.run(run())
    assert data and not leaked(data), data


# --- psql (simple protocol, text) ----------------------------------------------------------------


def test_psql_bypass_attempts(masked: MaskedGateway, table: str) -> None:
    commands = list(bypass_queries(table).values())
    commands += [
        f"copy (select ssn, email from {table}) to stdout",
        f"copy {table} to stdout with (format csv)",
        # several statements in one Query message
        f"select 1; select ssn from {table}; select email, notes from {table}",
        f"begin; declare c cursor for select ssn, email from {table}; fetch all from c; commit",
    ]
    args = ["psql", masked.target.conninfo(with_password=False), "-X", "-A", "-t"]
    for c in commands:
        args += ["-c", c]
    res = subprocess.run(
        args, env=masked.target.psql_env(), capture_output=True, text=True, timeout=120, check=False
    )
    assert res.returncode == 0, res.stderr
    assert SSN[-4:] in res.stdout
    assert not leaked(res.stdout + res.stderr), res.stdout


# --- catalog invalidation on DDL ---------------------------------------------------------------


def test_ddl_invalidates_catalog(masked: MaskedGateway, pg_cluster: Any, table: str) -> None:
    """A column renamed to a masked name is masked at once (the session saw the DDL tag); a
    masked column cannot be renamed out of its rule on the masked tier."""
    with psycopg.connect(masked.target.conninfo(), autocommit=True) as conn:
        conn.execute(f"update {table} set legacy = %s where id = 1", (SSN,))
        assert conn.execute(f"select legacy from {table} where id = 1").fetchone() == (SSN,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="ssn is masked"):
            conn.execute(f"alter table {table} rename column ssn to ssn_old")
        with psycopg.connect(pg_cluster.gw_dsn(), autocommit=True) as owner:
            owner.execute(f"alter table {table} rename column ssn to ssn_old")
        conn.execute(f"alter table {table} rename column legacy to ssn")
        row = conn.execute(f"select ssn from {table} where id = 1").fetchone()
        assert row is not None
        _assert_masked_ssn(row[0])


# --- audit and metrics -------------------------------------------------------------------------


def test_mask_events_in_audit_log(masked: MaskedGateway, table: str) -> None:
    before = sum(metrics.masked_values_total.values.values())
    with psycopg.connect(masked.target.conninfo(), autocommit=True) as conn:
        conn.execute(f"select ssn, email, notes from {table} order by id").fetchall()
    text = masked.audit_log.read_text()
    assert not leaked(text), "the audit log never holds values"
    events = [json.loads(line) for line in text.splitlines()]
    masks = [e for e in events if e.get("kind") == "mask"]
    assert masks, events
    ev = masks[-1]
    assert ev["tier"] == "masked" and ev["fingerprint"]
    assert set(ev["columns"]) >= {"ssn", "email", "notes"}, ev
    assert sum(ev["entities"].values()) >= 4, ev
    after = sum(metrics.masked_values_total.values.values())
    assert after > before


def test_identifier_quoting_does_not_bypass(masked: MaskedGateway, table: str) -> None:
    """Quoted identifiers, comments and odd spacing reach the same columns."""
    q = psql_sql.SQL('select /* x */ "ssn" as "SSN", "email"\nfrom {}').format(
        psql_sql.Identifier(table)
    )
    with psycopg.connect(masked.target.conninfo(), autocommit=True) as conn:
        out = repr(conn.execute(q).fetchall())
    assert not leaked(out), out


def test_every_raw_value_is_covered(raw: MaskedGateway, table: str) -> None:
    """The leak check looks for values the raw tier really returns (it can fail)."""
    out = _psycopg_rows(raw.target, f"select * from {table}")
    out += _psycopg_rows(raw.target, f"select replace(ssn, '-', '') from {table}")
    assert not [v for v in RAW_VALUES if v not in out]


def test_concurrent_sessions_with_ddl(masked: MaskedGateway, table: str) -> None:
    """Sessions share their login's catalog; one session's DDL (a temp table) invalidates it
    while the others plan: every session must still get its results, masked."""

    async def client(i: int, barrier: asyncio.Barrier) -> list[str]:
        conn = await asyncpg.connect(**masked.target.asyncpg_kwargs(timeout=60))
        out = []
        try:
            await barrier.wait()
            for k in range(3):
                async with conn.transaction():
                    await conn.execute(f"create temp table tt{k} (x int) on commit drop")
                    await conn.execute(f"insert into tt{k} values ({i})")
                    out.append(repr(await conn.fetchval(f"select sum(x) from tt{k}")))
                out.append(
                    repr(await conn.fetchrow(f"select ssn, email from {table} where id = 1"))
                )
        finally:
            await conn.close()
        return out

    async def run() -> list[Any]:
        barrier = asyncio.Barrier(12)
        return await asyncio.gather(
            *(client(i, barrier) for i in range(12)), return_exceptions=True
        )

    results = asyncio.run(run())
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    for i, r in enumerate(results):
        assert r[0] == repr(i)
        assert not leaked(" ".join(r)), r


def test_policy_reload_applies_to_open_sessions(
    gateway_factory: Factory, tmp_path: Path, table: str
) -> None:
    """New masking rules apply to the next results of sessions already open."""
    from tests.integration.masking_setup import POLICY_FILE

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_FILE.read_text())
    g = start_gateway(gateway_factory, tmp_path / "a.jsonl", "db.masked", policy_file=policy)
    gw = g.handle.thread.gateway
    assert gw is not None

    async def reload() -> bool | None:
        return gw.reload_policy()

    with psycopg.connect(g.target.conninfo(), autocommit=True) as conn:
        sql = f"select email from {table} where id = 1"
        assert conn.execute(sql).fetchone() == ("<EMAIL>",)
        policy.write_text(POLICY_FILE.read_text().replace('value: "<EMAIL>"', 'value: "<MAIL>"'))
        assert g.handle.thread.call(reload()) is True
        assert conn.execute(sql).fetchone() == ("<MAIL>",)


def test_masking_unavailable_refuses_the_session(
    gateway_factory: Factory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A masked tier whose masking cannot be built (hash key missing) gets no session at all."""
    from tests.integration.masking_setup import POLICY_FILE

    monkeypatch.delenv("VG_TEST_MISSING_MASK_KEY", raising=False)
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        POLICY_FILE.read_text()
        .replace("masking:\n", "masking:\n  hash_key_env: VG_TEST_MISSING_MASK_KEY\n")
        .replace('{name: "email", op: replace, value: "<EMAIL>"}', '{name: "email", op: hash}')
    )
    g = start_gateway(gateway_factory, tmp_path / "a.jsonl", "db.masked", policy_file=policy)
    with pytest.raises(psycopg.OperationalError) as err:
        psycopg.connect(g.target.conninfo(), autocommit=True)
    assert "masking is unavailable" in str(err.value)
