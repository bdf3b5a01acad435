"""Differential test: the analyzer splits statements exactly as a real server does, with
standard_conforming_strings on and off (needs PostgreSQL binaries; skipped without them)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from veilgate.policy.analysis import analyze

pytestmark = pytest.mark.pg

TEXTS = [
    "select 'x\\'; select 42; --'",
    "select 'a\\' || ' ; select 42; --'",
    "select E'x\\'; select 42; --'",
    "select e'x\\\\'; select 42; --'",
    "select 'a''b'; select 2",
    "select 'a'\n'\\'; select 42; --'",
    "select 'a'  -- c\n  '\\'; select 42; --'",
    "select 'x' \n -- comment\n 'y\\'; select 42; --'",
    "select N'x\\'; select 42; --'",
    "select $$\\$$; select 42",
    "select $a$ \\' $a$; select 42",
    "select 1 /* '\\' /* nested */ */; select 2",
    'select "a\\" from (select 1 as "a\\") t; select 42',
    "select B'0101'; select 2",
    "select X'1F'; select 2",
    "select 'a\\\\'; select 42; --'",
    "select U&'\\0041'; select 2",
    'select U&"\\0061" from (select 1 as a) t; select 2',
    "select 1 as x; select 'it\\'s'; select 3 -- '",
    "select $1x$ 'a\\' $1x$",
    "select 1e3; select 'a\\'",
    "select 'tab\\t'; select 42",
]


@pytest.fixture(scope="module")
def conn() -> Iterator[Any]:
    psycopg = pytest.importorskip("psycopg")
    from veilgate.testing.cluster import TempCluster

    try:
        pg = TempCluster()
        pg.start()
    except Exception as exc:  # no PostgreSQL binaries here
        pytest.skip(f"no PostgreSQL cluster: {exc}")
    try:
        pg.create_role("lexer", "secret")
        with psycopg.connect(
            pg.dsn(user="lexer", password="secret", dbname="postgres"), autocommit=True
        ) as c:
            yield c
    finally:
        pg.stop()


def _server_statements(conn: Any, sql: str) -> int | None:
    """How many statements the server ran (None when it refused the text)."""
    try:
        cur = conn.execute(sql.encode())  # bytes, no params: simple Query
    except Exception:
        return None
    n = 1
    while cur.nextset():
        n += 1
    return n


@pytest.mark.parametrize("scs", ["on", "off"])
@pytest.mark.parametrize("sql", TEXTS)
def test_statement_split_matches_server(conn: Any, sql: str, scs: str) -> None:
    conn.execute(f"set standard_conforming_strings = {scs}")
    conn.execute("set escape_string_warning = off")
    server = _server_statements(conn, sql)
    ours = analyze(sql, standard_conforming_strings=scs == "on")
    if server is None:
        # The server refuses it: nothing runs; the analyzer may parse it or not.
        return
    assert not ours.unparseable, (sql, ours.error)
    assert len(ours.statements) == server, [s.text for s in ours.statements]
