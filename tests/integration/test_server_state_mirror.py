"""The gateway's picture of the server's statements, portals and cursors follows the server.

Promise: a statement / portal / cursor name is bound to its SQL only once the server accepted it,
so re-using a name, a failed Parse or PREPARE (inside a transaction too), Parse-then-EXECUTE and
PREPARE-then-Bind never leave the gateway judging or masking one statement while the server runs
another.

* A property test drives random interleavings of Parse / Bind / Execute / Close / PREPARE /
  DEALLOCATE / DECLARE / CLOSE / FETCH / transaction control with re-used names and failures
  (syntax errors, unknown tables, division by zero, duplicate names, missing savepoints) and
  compares, after every step, the gateway's map with ``pg_prepared_statements`` and
  ``pg_cursors`` on the same connection: on a masked session (every portal tracked) and on a
  policy-only one (statements exact, the portals it knows right).
* Attacks on the masking path: each makes the server run ``reverse(ssn)`` (which the detectors
  cannot see through) under a name the client tried to re-bind to something harmless; the value
  must never come back raw (psycopg, asyncpg, raw protocol).
* Attacks on the policy path: the same tricks across a policy reload that denies the statement
  the server really holds.
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.integration import pgwire as pw
from tests.integration.conftest import GatewayHandle, wait_policy_generation, with_policy
from tests.integration.masking_setup import SSN, make_table, start_gateway
from tests.integration.mirror_probe import assert_mirror_matches, mirror_of

pytestmark = pytest.mark.pg

Factory = Callable[..., GatewayHandle]
REVERSED = SSN[::-1]
"""What ``reverse(ssn)`` returns for the first row: no detector finds it."""


@pytest.fixture(scope="module")
def table(pg_cluster: Any) -> str:
    return make_table(pg_cluster)


@pytest.fixture
def masked_gw(gateway_factory: Factory, tmp_path: Path) -> GatewayHandle:
    return start_gateway(gateway_factory, tmp_path / "masked.jsonl", "db.masked").handle


@pytest.fixture
def policy_gw(gateway_factory: Factory, tmp_path: Path) -> GatewayHandle:
    """A statement policy without masking (the raw tier of the masking policy file)."""
    return start_gateway(gateway_factory, tmp_path / "raw.jsonl", "db.raw").handle


# --- the property: random interleavings keep the map equal to the server's -------------------

_STMT_NAMES = ["", "s1", "s2"]
_PORTALS = ["", "p1", "c1"]
_CURSORS = ["c1", "c2", "p1"]


def _texts(t: str) -> list[str]:
    return [
        f"select id, reverse(ssn) from {t} order by id",
        "select 42 as n",
        "select 1 from vg_no_such_table",  # fails at parse analysis
        "selec 1",  # fails in the parser
        "select 1/0 as boom",  # fails when executed
    ]


def _step(t: str) -> st.SearchStrategy[bytes]:
    texts = _texts(t)
    name = st.sampled_from(_STMT_NAMES)
    portal = st.sampled_from(_PORTALS)
    cursor = st.sampled_from(_CURSORS)
    text = st.sampled_from(texts)
    sp = st.sampled_from(["a", "b"])
    q = pw.query
    return st.one_of(
        st.builds(lambda n, x: pw.parse(n, x) + pw.sync(), name, text),
        st.builds(lambda p, n: pw.bind(p, n) + pw.sync(), portal, name),
        st.builds(lambda p, n: pw.bind(p, n) + pw.execute(p, 1) + pw.sync(), portal, name),
        st.builds(lambda p: pw.execute(p, 1) + pw.sync(), portal),
        st.builds(lambda n: pw.close("S", n) + pw.sync(), name),
        st.builds(lambda p: pw.close("P", p) + pw.sync(), portal),
        st.builds(
            lambda n, x: pw.parse(n, x) + pw.bind("", n) + pw.execute("") + pw.sync(), name, text
        ),
        st.builds(lambda n, x: q(f"prepare {n or 's1'} as {x}"), name, text),
        st.builds(lambda n: q(f"execute {n or 's1'}"), name),
        st.builds(lambda n: q(f"deallocate {n or 's1'}"), name),
        st.just(q("deallocate all")),
        st.builds(
            lambda c, x, h: q(f"declare {c} cursor {'with hold ' if h else ''}for {x}"),
            cursor,
            text,
            st.booleans(),
        ),
        st.builds(lambda c: q(f"fetch 1 from {c}"), cursor),
        st.builds(lambda c: q(f"close {c}"), cursor),
        st.just(q("close all")),
        st.just(q("begin")),
        st.just(q("commit")),
        st.just(q("rollback")),
        st.builds(lambda s: q(f"savepoint {s}"), sp),
        st.builds(lambda s: q(f"rollback to savepoint {s}"), sp),
        st.builds(lambda s: q(f"release savepoint {s}"), sp),
        st.just(q("discard all")),
        # Parse of a statement that changes the namespace when executed
        st.builds(
            lambda c, x: (
                pw.parse("", f"declare {c} cursor for {x}")
                + pw.bind("", "")
                + pw.execute("")
                + pw.sync()
            ),
            cursor,
            text,
        ),
        st.builds(
            lambda n, x: q(f"begin; prepare {n or 's2'} as {x}; select 1/0"),
            name,
            text,
        ),
    )


def _run_steps(handle: GatewayHandle, steps: list[bytes]) -> None:
    ep = pw.gateway_target(handle).endpoint()
    with pw.connect(ep) as c:
        assert c.backend_key is not None
        pid = c.backend_key[0]
        for step in steps:
            c.send(step)
            msgs = c.recv_until_ready()
            assert msgs[-1].tag == "Z", msgs
            status = msgs[-1].body
            if status == b"E":
                # nothing can be read in a failed transaction: end it and compare then
                c.send(pw.query("rollback"))
                c.recv_until_ready()
            assert_mirror_matches(handle, c, pid)


@pytest.mark.parametrize("tier", ["masked", "policy"])
def test_random_interleavings_keep_the_map_equal_to_the_servers(
    tier: str, masked_gw: GatewayHandle, policy_gw: GatewayHandle, table: str
) -> None:
    handle = masked_gw if tier == "masked" else policy_gw

    @settings(
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(st.lists(_step(table), min_size=1, max_size=14))
    def run(steps: list[bytes]) -> None:
        _run_steps(handle, steps)

    run()


# --- attacks on the masking path --------------------------------------------------------------


def _raw_rows(msgs: list[pw.Msg]) -> list[list[bytes | None]]:
    return [pw.data_row(m.body) for m in msgs if m.tag == "D"]


def _no_reversed_ssn(out: object) -> None:
    text = repr(out)
    assert REVERSED not in text and SSN not in text, text


def _masked_conn(handle: GatewayHandle) -> pw.RawConn:
    return pw.connect(pw.gateway_target(handle).endpoint())


def test_parse_of_an_existing_name_leaves_the_servers_statement(
    masked_gw: GatewayHandle, table: str
) -> None:
    """Parse "s" = reverse(ssn); a second Parse of "s" (harmless text) fails at the server;
    Bind / Execute of "s" runs reverse(ssn): masked as what the server runs."""
    with _masked_conn(masked_gw) as c:
        c.send(pw.parse("s", f"select reverse(ssn) as r from {table} order by id") + pw.sync())
        assert pw.frames(c.recv_until_ready()) == "1Z"
        c.send(pw.parse("s", f"select 'harmless'::text as r from {table}") + pw.sync())
        err = pw.first_error(c.recv_until_ready())
        assert err is not None and err["C"] == "42P05", err
        c.send(pw.bind("", "s") + pw.execute() + pw.sync())
        rows = _raw_rows(c.recv_until_ready())
        assert rows and all(r[0] != b"harmless" for r in rows)
        _no_reversed_ssn(rows)


def test_failed_parse_at_analysis_leaves_the_servers_statement(
    masked_gw: GatewayHandle, table: str
) -> None:
    with _masked_conn(masked_gw) as c:
        c.send(pw.parse("s", f"select reverse(ssn) as r from {table} order by id") + pw.sync())
        c.recv_until_ready()
        # parses, but names a table that does not exist: the server keeps "s" as it was
        c.send(pw.parse("s", "select reverse(ssn) as r from vg_no_such_table") + pw.sync())
        err = pw.first_error(c.recv_until_ready())
        assert err is not None and err["C"] == "42P01", err
        c.send(pw.bind("", "s") + pw.execute() + pw.sync())
        rows = _raw_rows(c.recv_until_ready())
        assert len(rows) == 2
        _no_reversed_ssn(rows)


def test_failed_prepare_inside_a_transaction(masked_gw: GatewayHandle, table: str) -> None:
    """PREPARE q = reverse(ssn); inside BEGIN a PREPARE q of harmless text fails (q exists)
    and fails the transaction; after ROLLBACK, EXECUTE q runs reverse(ssn)."""
    with _masked_conn(masked_gw) as c:
        c.simple(f"prepare q as select reverse(ssn) as r from {table} order by id")
        c.simple("begin")
        msgs = c.simple("prepare q as select 'harmless'::text as r")
        err = pw.first_error(msgs)
        assert err is not None and err["C"] == "42P05", err
        c.simple("rollback")
        rows = _raw_rows(c.simple("execute q"))
        assert len(rows) == 2
        _no_reversed_ssn(rows)


def test_parse_then_sql_execute(masked_gw: GatewayHandle, table: str) -> None:
    """A statement made by protocol Parse, run by SQL EXECUTE: masked as its own SQL."""
    with _masked_conn(masked_gw) as c:
        c.send(pw.parse("pq", f"select reverse(ssn) as r from {table} order by id") + pw.sync())
        c.recv_until_ready()
        rows = _raw_rows(c.simple("execute pq"))
        assert len(rows) == 2
        _no_reversed_ssn(rows)


def test_prepare_then_protocol_bind(masked_gw: GatewayHandle, table: str) -> None:
    """A statement made by SQL PREPARE, bound and executed with the extended protocol."""
    with _masked_conn(masked_gw) as c:
        c.simple(f"prepare pb as select reverse(ssn) as r from {table} order by id")
        c.send(pw.bind("", "pb") + pw.execute() + pw.sync())
        rows = _raw_rows(c.recv_until_ready())
        assert len(rows) == 2
        _no_reversed_ssn(rows)


def test_sql_fetch_from_a_protocol_portal(masked_gw: GatewayHandle, table: str) -> None:
    """A portal made by Bind shares its name space with cursors: FETCH reads it."""
    with _masked_conn(masked_gw) as c:
        c.simple("begin")
        c.send(
            pw.parse("sf", f"select reverse(ssn) as r from {table} order by id")
            + pw.bind("pf", "sf")
            + pw.sync()
        )
        c.recv_until_ready()
        rows = _raw_rows(c.simple("fetch all from pf"))
        assert len(rows) == 2
        _no_reversed_ssn(rows)
        c.simple("rollback")


def test_declare_of_an_existing_cursor_rolled_back_to_a_savepoint(
    masked_gw: GatewayHandle, table: str
) -> None:
    with _masked_conn(masked_gw) as c:
        c.simple("begin")
        c.simple(f"declare c cursor for select reverse(ssn) as r from {table} order by id")
        c.simple("savepoint a")
        err = pw.first_error(c.simple("declare c cursor for select 'harmless'::text as r"))
        assert err is not None and err["C"] == "42P03", err
        c.simple("rollback to savepoint a")
        rows = _raw_rows(c.simple("fetch all from c"))
        assert len(rows) == 2
        _no_reversed_ssn(rows)
        c.simple("rollback")


def test_fetch_of_a_cursor_the_gateway_did_not_see_is_masked(
    masked_gw: GatewayHandle, table: str
) -> None:
    """A cursor opened inside a function: its SQL is unknown to the gateway: masked as if it
    read masked columns (fail closed)."""
    fn = "vg_open_" + secrets.token_hex(4)
    with _masked_conn(masked_gw) as c:
        c.simple(
            f"create function {fn}() returns refcursor language plpgsql as $$"
            f"declare r refcursor := 'fc'; begin open r for select reverse(ssn) as r "
            f"from {table} order by id; return r; end $$"
        )
        c.simple("begin")
        c.simple(f"select {fn}()")
        rows = _raw_rows(c.simple("fetch all from fc"))
        assert len(rows) == 2
        _no_reversed_ssn(rows)
        c.simple("rollback")
        c.simple(f"drop function {fn}()")


def test_psycopg_name_reuse_and_failed_prepare(masked_gw: GatewayHandle, table: str) -> None:
    t = pw.gateway_target(masked_gw)
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        conn.execute(f"prepare pq as select reverse(ssn) as r from {table} order by id")
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement), conn.transaction():
            conn.execute("prepare pq as select 'harmless'::text as r")
        rows = conn.execute("execute pq").fetchall()
        assert len(rows) == 2
        _no_reversed_ssn(rows)
        # the same through psycopg's own server-side cursor (DECLARE / FETCH, extended)
        with conn.transaction(), conn.cursor(name="srv") as cur:
            cur.execute(f"select reverse(ssn) as r from {table} order by id")
            got = cur.fetchall()
        assert len(got) == 2
        _no_reversed_ssn(got)


def test_asyncpg_name_reuse_and_failed_prepare(masked_gw: GatewayHandle, table: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(**pw.gateway_target(masked_gw).asyncpg_kwargs())
        try:
            await conn.execute(f"prepare aq as select reverse(ssn) as r from {table} order by id")
            with pytest.raises(asyncpg.DuplicatePreparedStatementError):
                async with conn.transaction():
                    await conn.execute("prepare aq as select 'harmless'::text as r")
            # fetch() runs it through asyncpg's own named statement (Parse "EXECUTE aq")
            rows = await conn.fetch("execute aq")
            assert len(rows) == 2
            _no_reversed_ssn([tuple(r) for r in rows])
            async with conn.transaction():
                cur = await conn.cursor(f"select reverse(ssn) as r from {table} order by id")
                got = await cur.fetch(5)
            _no_reversed_ssn([tuple(r) for r in got])
        finally:
            await conn.close()

    asyncio.run(run())


def test_pipeline_parse_bind_execute_before_confirmation(
    masked_gw: GatewayHandle, table: str
) -> None:
    """JDBC-style: Parse / Bind / Execute of a new name in one pipeline (nothing confirmed yet
    when the Execute is sent); the map is right once the server answered."""
    with _masked_conn(masked_gw) as c:
        assert c.backend_key is not None
        c.send(
            pw.parse("j1", f"select reverse(ssn) as r from {table} order by id")
            + pw.bind("jp", "j1")
            + pw.execute("jp")
            + pw.sync()
        )
        msgs = c.recv_until_ready()
        assert pw.frames(msgs).startswith("12")
        _no_reversed_ssn(_raw_rows(msgs))
        m = mirror_of(masked_gw, c.backend_key[0])
        assert "reverse(ssn)" in m.statements["j1"]


def test_client_breaking_the_order_ends_the_session(policy_gw: GatewayHandle) -> None:
    """Extended messages, no Sync, then a Query that PREPAREs: the server answers the Execute
    first; the gateway cannot tell which answer is which, so the session ends (08P01) rather
    than guess what the server holds."""
    with pw.connect(pw.gateway_target(policy_gw).endpoint()) as c:
        c.send(pw.parse("", "select 1") + pw.sync())
        c.recv_until_ready()
        c.send(pw.bind("", "") + pw.execute() + pw.query("prepare x as select 2"))
        msgs = c.recv_all_until_close()
        err = pw.first_error(msgs)
        assert err is not None and err["C"] == "08P01" and err["V"] == "FATAL", msgs


# --- attacks on the policy path ---------------------------------------------------------------

POLICY = """\
version: 1
tiers:
  - name: rw
    match: {roles: [db.rw]}
    rules:
      - id: rw-all
        action: allow
        message: "everything"
        classes: [read, write, ddl, transaction, session, prepare, utility]
"""
POLICY_V2 = (
    POLICY
    + """      - id: rw-no-secrets
        action: deny
        message: "the secret tables are off limits"
        tables: ["public.vg_mirror_secret_*"]
"""
)


@pytest.fixture
def secret(pg_cluster: Any) -> str:
    name = "vg_mirror_secret_" + secrets.token_hex(4)
    with psycopg.connect(pg_cluster.gw_dsn(), autocommit=True) as conn:
        conn.execute(f"create table {name} (v text)")
        conn.execute(f"insert into {name} values ('top secret')")
    return name


@pytest.fixture
def reloading(gateway_factory: Factory, tmp_path: Path) -> tuple[GatewayHandle, Path]:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    handle = gateway_factory(with_policy(policy, tmp_path / "audit.jsonl", "db.rw"))
    return handle, policy


def _reload(handle: GatewayHandle, policy: Path) -> None:
    gw: Any = handle.thread.gateway
    gen = gw.policy_engine.generation

    async def reload() -> bool | None:
        return bool(gw.reload_policy())

    policy.write_text(POLICY_V2)
    assert handle.thread.call(reload()) is True
    wait_policy_generation(handle, gen + 1)


def _denied(msgs: list[pw.Msg]) -> bool:
    err = pw.first_error(msgs)
    return err is not None and err["C"] == "42501" and "rw-no-secrets" in err.get("D", "")


def test_policy_judges_the_statement_the_server_kept_after_a_failed_parse(
    reloading: tuple[GatewayHandle, Path], secret: str
) -> None:
    handle, policy = reloading
    with pw.connect(pw.gateway_target(handle).endpoint()) as c:
        c.send(pw.parse("s", f"select v from {secret}") + pw.sync())
        assert pw.frames(c.recv_until_ready()) == "1Z"
        c.send(pw.parse("s", "select 'harmless'") + pw.sync())  # fails: "s" exists
        assert pw.first_error(c.recv_until_ready()) is not None
        _reload(handle, policy)
        c.send(pw.bind("", "s") + pw.execute() + pw.sync())
        msgs = c.recv_until_ready()
        assert _denied(msgs), msgs
        assert b"top secret" not in b"".join(m.body for m in msgs)


def test_policy_judges_sql_execute_by_the_prepared_statement_after_a_failed_prepare(
    reloading: tuple[GatewayHandle, Path], secret: str
) -> None:
    handle, policy = reloading
    t = pw.gateway_target(handle)
    with psycopg.connect(t.conninfo(), autocommit=True) as conn:
        conn.execute(f"prepare q as select v from {secret}")
        with pytest.raises(psycopg.errors.DuplicatePreparedStatement), conn.transaction():
            conn.execute("prepare q as select 'harmless'")
        _reload(handle, policy)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("execute q")


def test_policy_judges_a_bind_of_a_sql_prepared_statement(
    reloading: tuple[GatewayHandle, Path], secret: str
) -> None:
    handle, policy = reloading
    with pw.connect(pw.gateway_target(handle).endpoint()) as c:
        c.simple(f"prepare pb as select v from {secret}")
        _reload(handle, policy)
        c.send(pw.bind("", "pb") + pw.execute() + pw.sync())
        msgs = c.recv_until_ready()
        assert _denied(msgs), msgs


def test_policy_judges_sql_execute_of_a_parsed_statement(
    reloading: tuple[GatewayHandle, Path], secret: str
) -> None:
    handle, policy = reloading

    async def run() -> None:
        conn = await asyncpg.connect(**pw.gateway_target(handle).asyncpg_kwargs())
        try:
            # asyncpg prepares it with a protocol Parse under its own name
            stmt = await conn.prepare(f"select v from {secret}")
            assert await stmt.fetchval() == "top secret"
            name = stmt.get_name()
            await asyncio.get_running_loop().run_in_executor(None, _reload, handle, policy)
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.fetch(f'execute "{name}"')
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await stmt.fetchval()
        finally:
            await conn.close()

    asyncio.run(run())


def test_policy_judges_a_portal_it_saw_bound_by_its_own_statement(
    reloading: tuple[GatewayHandle, Path], secret: str
) -> None:
    """Portals bound while the mirror followed Binds (here: in the pipeline that prepared
    their statements) are known after a reload: each is judged by its own statement (the
    secret one denied by its rule, the plain one runs), not refused as of unknown origin."""
    handle, policy = reloading
    with pw.connect(pw.gateway_target(handle).endpoint()) as c:
        c.send(
            pw.query("begin")
            + pw.parse("s1", f"select v from {secret}")
            + pw.parse("s2", "select 'plain'::text")
            + pw.bind("p1", "s1")
            + pw.bind("p2", "s2")
            + pw.sync()
        )
        c.recv_until_ready()
        assert pw.first_error(c.recv_until_ready()) is None
        _reload(handle, policy)
        c.send(pw.execute("p2") + pw.sync())
        msgs = c.recv_until_ready()
        assert _raw_rows(msgs) == [[b"plain"]], msgs
        c.send(pw.execute("p1") + pw.sync())
        msgs = c.recv_until_ready()
        assert _denied(msgs), msgs
        assert b"top secret" not in b"".join(m.body for m in msgs)
        c.simple("rollback")
