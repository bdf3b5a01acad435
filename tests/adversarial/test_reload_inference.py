"""Inference across a policy reload: what a cursor or a prepared statement runs is judged by the
policy in force when it runs, not the one it was declared under.

Promise (README "Security model"): a reload that takes an ``allow:`` away from a masked column
(here ``order`` on ``ssn``) refuses, from then on, every way of running a statement that uses
the column so: a FETCH from a cursor DECLAREd before the reload (in a transaction, or WITH HOLD),
an EXECUTE of a statement PREPAREd before it, a protocol Bind of a statement Parsed before it
(psycopg's prepared statements, asyncpg's) -- with 42501 naming the column, and the transaction
fails on the server as for the statement's own error.  Before the reload the same statements
run (the check can fail).
"""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest
from tests.integration import pgwire as pw
from tests.integration.conftest import GatewayHandle
from tests.integration.masking_setup import POLICY_FILE, make_table, start_gateway

pytestmark = pytest.mark.pg

Factory = Callable[..., GatewayHandle]

_RULE = '{column: "public.vg_mask_*.ssn", op: partial, keep_last: 4}'
_ALLOWING = '{column: "public.vg_mask_*.ssn", op: partial, keep_last: 4, allow: [order]}'


class Reloadable:
    def __init__(self, factory: Factory, tmp_path: Path) -> None:
        text = POLICY_FILE.read_text()
        assert _RULE in text
        self.policy = tmp_path / "policy.yaml"
        self.policy.write_text(text.replace(_RULE, _ALLOWING))
        self.gw = start_gateway(
            factory, tmp_path / "audit.jsonl", "db.masked", policy_file=self.policy
        )
        self.target = self.gw.target

    def forbid_order(self) -> None:
        """The reload: ``ssn`` may no longer be sorted on."""
        self.policy.write_text(POLICY_FILE.read_text())
        gw = self.gw.handle.thread.gateway
        assert gw is not None

        async def reload() -> bool | None:
            return gw.reload_policy()

        assert self.gw.handle.thread.call(reload()) is True


@pytest.fixture
def setup(gateway_factory: Factory, tmp_path: Path, pg_cluster: Any) -> tuple[Reloadable, str]:
    return Reloadable(gateway_factory, tmp_path), make_table(pg_cluster)


def _refused(err: dict[str, str] | None) -> None:
    assert err is not None and err["C"] == "42501", err
    assert "ssn" in err["M"], err


def test_fetch_from_a_cursor_declared_before_the_reload(setup: tuple[Reloadable, str]) -> None:
    gw, table = setup
    with pw.connect(gw.target.endpoint()) as c:
        c.simple("begin")
        decl = c.simple(f"declare c1 cursor for select id from {table} order by ssn")
        assert pw.first_error(decl) is None, decl
        assert pw.first_error(c.simple("fetch 1 from c1")) is None  # allowed before
        held = c.simple(f"declare h1 cursor with hold for select id from {table} order by ssn")
        assert pw.first_error(held) is None
        gw.forbid_order()
        _refused(pw.first_error(c.simple("fetch 1 from c1")))
        done = c.simple("commit")
        assert [pw.command_tag(m.body) for m in done if m.tag == "C"] == ["ROLLBACK"]
        # extended protocol: a FETCH Parsed after the reload
        c.send(pw.parse("", "fetch 1 from c1") + pw.bind("", "") + pw.execute() + pw.sync())
        assert pw.first_error(c.recv_until_ready()) is not None  # (the cursor is gone)


def test_fetch_from_a_with_hold_cursor_after_the_reload(setup: tuple[Reloadable, str]) -> None:
    gw, table = setup
    with pw.connect(gw.target.endpoint()) as c:
        held = c.simple(f"declare h2 cursor with hold for select id from {table} order by ssn")
        assert pw.first_error(held) is None, held
        gw.forbid_order()
        _refused(pw.first_error(c.simple("fetch 1 from h2")))
        c.send(pw.parse("", "fetch 1 from h2") + pw.bind("", "") + pw.execute() + pw.sync())
        _refused(pw.first_error(c.recv_until_ready()))
        _refused(pw.first_error(c.simple("move 1 in h2; fetch 1 from h2")))
        # the session goes on
        assert c.scalar("select 40 + 2") == "42"


def test_execute_and_bind_of_statements_prepared_before_the_reload(
    setup: tuple[Reloadable, str],
) -> None:
    gw, table = setup
    sql = f"select id from {table} order by ssn"
    with pw.connect(gw.target.endpoint()) as c:
        assert pw.first_error(c.simple(f"prepare p1 as {sql}")) is None
        c.send(pw.parse("s1", sql) + pw.sync())
        assert pw.first_error(c.recv_until_ready()) is None
        c.send(pw.bind("", "s1") + pw.execute() + pw.sync())
        assert pw.first_error(c.recv_until_ready()) is None  # allowed before
        gw.forbid_order()
        _refused(pw.first_error(c.simple("execute p1")))
        c.send(pw.bind("", "s1") + pw.execute() + pw.sync())
        _refused(pw.first_error(c.recv_until_ready()))
        c.send(pw.bind("", "p1") + pw.execute() + pw.sync())  # SQL PREPAREd, protocol Bind
        _refused(pw.first_error(c.recv_until_ready()))
        # inside a transaction the refusal fails it on the server
        c.simple("begin")
        c.send(pw.bind("", "s1") + pw.execute() + pw.sync())
        _refused(pw.first_error(c.recv_until_ready()))
        done = c.simple("commit")
        assert [pw.command_tag(m.body) for m in done if m.tag == "C"] == ["ROLLBACK"]
        assert c.scalar("select 40 + 2") == "42"


def test_psycopg_and_asyncpg_prepared_statements(setup: tuple[Reloadable, str]) -> None:
    gw, table = setup
    sql = f"select id from {table} order by ssn"
    with psycopg.connect(gw.target.conninfo(), autocommit=True) as conn:
        assert conn.execute(sql, prepare=True).fetchall()  # Parsed under a name, then Bound

        async def prepared() -> None:
            aconn = await asyncpg.connect(**gw.target.asyncpg_kwargs())
            try:
                stmt = await aconn.prepare(sql)
                assert await stmt.fetch()
                gw.forbid_order()
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="ssn"):
                    await stmt.fetch()
            finally:
                await aconn.close()

        asyncio.run(prepared())
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="ssn"):
            conn.execute(sql, prepare=True)
        assert conn.execute("select 42").fetchone() == (42,)
