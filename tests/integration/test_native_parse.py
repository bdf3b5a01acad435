# ruff: noqa: S608 (SQL built from table names the tests generate)
"""A re-Parse of the unnamed statement answered natively (issue 15 item 2): once the server
holds the unnamed statement the policy allowed (confirmed by ParseComplete, nothing in flight),
a Parse of the same text into it is forwarded by the client buffer without entering Python, with
its decision counted and logged.  The same attacks as for the Python path, with the cache warm:
another text into the unnamed statement, a denied one in a pipeline, errors before Sync, a
reload that denies the cached text (at the next Parse and at a Bind without one), names
re-used, SQL PREPARE / DEALLOCATE in the same namespace."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.integration import pgwire as pw
from tests.integration.conftest import PolicyGateway, wait_policy_generation
from tests.integration.recording_setup import (
    audit_config,
    flush,
    make_key,
    statements,
    wait_sessions_ended,
    with_audit,
)

from veilgate.audit import reader

pytestmark = pytest.mark.pg

POLICY = """\
version: 1
tiers:
  - name: readwrite
    match: {roles: [db.readwrite]}
    rules:
      - id: rw-all
        action: allow
        message: "reads, writes and DDL"
        classes: [read, write, ddl, transaction, session, prepare, utility]
      - id: rw-no-drop
        action: deny
        message: "DROP and TRUNCATE are not allowed through the gateway"
        constructs: [drop, truncate]
"""
POLICY_V2 = POLICY.replace(
    """      - id: rw-no-drop
""",
    """      - id: rw-no-secrets
        action: deny
        message: "the secret tables are off limits"
        tables: ["public.vg_np_secret_*"]
      - id: rw-no-drop
""",
)
INT4 = 23


def _setup(policy_gateway: Callable[..., PolicyGateway]) -> tuple[PolicyGateway, str, Any]:
    g = policy_gateway(POLICY, "db.readwrite", audit_log="decisions.jsonl")
    table = "vg_np_secret_" + secrets.token_hex(4)
    with psycopg.connect(g.target.conninfo(), autocommit=True) as conn:
        conn.execute(f"create table {table} (id int, v text)")
        conn.execute(f"insert into {table} select g, 'v' || g from generate_series(1, 50) g")
    gw = g.handle.thread.gateway
    assert gw is not None and gw.policy_engine is not None
    return g, table, gw.policy_engine


def _run(conn: pw.RawConn, sql: str, arg: bytes) -> list[pw.Msg]:
    conn.send(pw.parse("", sql, [INT4]) + pw.bind("", "", [arg]) + pw.execute() + pw.sync())
    return conn.recv_until_ready()


def _data(msgs: list[pw.Msg]) -> list[list[bytes | None]]:
    return [pw.data_row(m.body) for m in msgs if m.tag == "D"]


def _reload(g: PolicyGateway, engine: Any, text: str) -> None:
    gen = engine.generation
    g.policy_file.write_text(text)
    wait_policy_generation(g.handle, gen + 1)


def test_reparse_answered_natively_then_reload_denies_it(
    policy_gateway: Callable[..., PolicyGateway],
) -> None:
    g, table, engine = _setup(policy_gateway)
    sql = f"select v from {table} where id = $1"
    conn = pw.connect(g.target.endpoint())
    try:
        hits = engine.native_verdicts.hits
        for i in range(1, 21):
            msgs = _run(conn, sql, str(i).encode())
            assert pw.frames(msgs) == "12DCZ", msgs
            assert _data(msgs) == [[f"v{i}".encode()]]
        # the first Parse was judged in Python, the others answered natively
        assert engine.native_verdicts.hits - hits >= 19
        # the reload denies the cached text at once: at the next Parse of it
        _reload(g, engine, POLICY_V2)
        msgs = _run(conn, sql, b"3")
        err = pw.first_error(msgs)
        assert err is not None and err["C"] == "42501", msgs
        assert err.get("D", "").startswith("rule rw-no-secrets")
        assert "D" not in pw.frames(msgs) and msgs[-1].tag == "Z"
        # and again (never cached as an allow under the new policy)
        msgs = _run(conn, sql, b"4")
        assert (pw.first_error(msgs) or {}).get("C") == "42501"
    finally:
        conn.terminate()
    events = [json.loads(x) for x in g.audit_log.read_text().splitlines() if x]
    mine = [e for e in events if e.get("sql") == sql]
    # one allow per Parse (19 or more written natively); after the reload only denials (the
    # Parse, and the Bind behind it, each judged)
    allows = [e for e in mine if e["action"] == "allow"]
    assert len(allows) == 20 and sum(1 for e in allows if e["cached"]) >= 19
    assert mine[:20] == allows
    assert len(mine) > 20 and all(e["action"] == "deny" for e in mine[20:])


def test_bind_without_reparse_after_a_reload_is_judged_again(
    policy_gateway: Callable[..., PolicyGateway],
) -> None:
    g, table, engine = _setup(policy_gateway)
    sql = f"select v from {table} where id = $1"
    conn = pw.connect(g.target.endpoint())
    try:
        for i in range(1, 6):
            assert _data(_run(conn, sql, str(i).encode())) == [[f"v{i}".encode()]]
        _reload(g, engine, POLICY_V2)
        # the server still holds the unnamed statement: a Bind of it runs it, unless denied
        conn.send(pw.bind("", "", [b"7"]) + pw.execute() + pw.sync())
        msgs = conn.recv_until_ready()
        assert (pw.first_error(msgs) or {}).get("C") == "42501", msgs
        assert "D" not in pw.frames(msgs)
    finally:
        conn.terminate()


def test_another_text_and_denials_in_a_pipeline_with_the_cache_warm(
    policy_gateway: Callable[..., PolicyGateway],
) -> None:
    g, table, engine = _setup(policy_gateway)
    _reload(g, engine, POLICY_V2)  # the secret table is denied from the start
    allowed = "select $1::int4 * 2"
    denied = f"select v from {table} where id = $1"
    conn = pw.connect(g.target.endpoint())
    try:
        hits = engine.native_verdicts.hits
        for i in range(5):
            assert _data(_run(conn, allowed, str(i).encode())) == [[str(i * 2).encode()]]
        assert engine.native_verdicts.hits - hits >= 4
        # a denied text into the unnamed statement right after a natively answered Parse,
        # in one pipeline: the denial fails it, the server skips to Sync
        conn.send(
            pw.parse("", allowed, [INT4])
            + pw.bind("", "", [b"1"])
            + pw.execute()
            + pw.parse("", denied, [INT4])
            + pw.bind("", "", [b"1"])
            + pw.execute()
            + pw.parse("", allowed, [INT4])
            + pw.bind("", "", [b"2"])
            + pw.execute()
            + pw.sync()
        )
        msgs = conn.recv_until_ready()
        assert pw.frames(msgs) == "12DCEZ", msgs
        assert (pw.first_error(msgs) or {}).get("C") == "42501"
        # the failed Parse dropped the unnamed statement: a Bind of it is the server's error
        conn.send(pw.bind("", "", [b"1"]) + pw.execute() + pw.sync())
        msgs = conn.recv_until_ready()
        assert (pw.first_error(msgs) or {}).get("C") == "26000", msgs
        # an error before Sync (a bad parameter) with natively answered Parses after it
        assert _data(_run(conn, allowed, b"5")) == [[b"10"]]
        conn.send(
            pw.parse("", allowed, [INT4])
            + pw.bind("", "", [b"not-a-number"])
            + pw.execute()
            + pw.parse("", allowed, [INT4])
            + pw.bind("", "", [b"3"])
            + pw.execute()
            + pw.sync()
        )
        msgs = conn.recv_until_ready()
        assert pw.frames(msgs) == "1EZ", msgs
        assert (pw.first_error(msgs) or {}).get("C") == "22P02"
        assert _data(_run(conn, allowed, b"6")) == [[b"12"]]
        # the denied text is never answered natively, however often it comes
        for _ in range(3):
            msgs = _run(conn, denied, b"1")
            assert (pw.first_error(msgs) or {}).get("C") == "42501"
            assert "D" not in pw.frames(msgs)
    finally:
        conn.terminate()


def test_names_reused_prepare_and_deallocate_with_the_cache_warm(
    policy_gateway: Callable[..., PolicyGateway],
) -> None:
    g, table, engine = _setup(policy_gateway)
    _reload(g, engine, POLICY_V2)
    allowed = "select $1::int4 + 1"
    denied = f"select v from {table} where id = $1"
    conn = pw.connect(g.target.endpoint())
    try:
        for i in range(4):
            assert _data(_run(conn, allowed, str(i).encode())) == [[str(i + 1).encode()]]
        # a named statement with the cached text, then re-used for a denied one
        conn.send(pw.parse("s1", allowed, [INT4]) + pw.sync())
        assert pw.frames(conn.recv_until_ready()) == "1Z"
        conn.send(pw.query("deallocate s1"))
        assert pw.first_error(conn.recv_until_ready()) is None
        conn.send(pw.parse("s1", denied, [INT4]) + pw.sync())
        msgs = conn.recv_until_ready()
        assert (pw.first_error(msgs) or {}).get("C") == "42501"
        conn.send(pw.bind("", "s1", [b"1"]) + pw.execute() + pw.sync())
        assert (pw.first_error(conn.recv_until_ready()) or {}).get("C") == "26000"
        # SQL PREPARE shares the namespace: a denied one is refused, an allowed one runs
        conn.send(pw.query(f"prepare s2 (int) as select v from {table} where id = $1"))
        assert (pw.first_error(conn.recv_until_ready()) or {}).get("C") == "42501"
        conn.send(pw.query("prepare s3 (int) as select $1 + 100"))
        assert pw.first_error(conn.recv_until_ready()) is None
        conn.send(pw.bind("", "s3", [b"1"]) + pw.execute() + pw.sync())
        assert _data(conn.recv_until_ready()) == [[b"101"]]
        # the unnamed statement's re-Parse is answered natively again once all is settled
        hits = engine.native_verdicts.hits
        for i in range(4):
            assert _data(_run(conn, allowed, str(i).encode())) == [[str(i + 1).encode()]]
        assert engine.native_verdicts.hits - hits >= 3
        # DISCARD ALL drops the unnamed statement: the next Parse is judged again, and runs
        conn.send(pw.query("discard all"))
        assert pw.first_error(conn.recv_until_ready()) is None
        assert _data(_run(conn, allowed, b"9")) == [[b"10"]]
    finally:
        conn.terminate()


def test_psycopg_with_parameters_is_answered_natively(
    policy_gateway: Callable[..., PolicyGateway],
) -> None:
    g, table, engine = _setup(policy_gateway)
    hits = engine.native_verdicts.hits
    with psycopg.connect(g.target.conninfo(), autocommit=True, prepare_threshold=None) as conn:
        for i in range(1, 31):
            row = conn.execute(f"select v from {table} where id = %s", (i,)).fetchone()
            assert row == (f"v{i}",)
    assert engine.native_verdicts.hits - hits >= 29


def test_natively_answered_parses_are_recorded_with_their_decision(
    policy_gateway: Callable[..., PolicyGateway], tmp_path: Path
) -> None:
    audit = audit_config(tmp_path / "audit", make_key(tmp_path))
    g = policy_gateway(POLICY, "db.readwrite", transform=with_audit(audit))
    gw = g.handle.thread.gateway
    assert gw is not None and gw.policy_engine is not None
    engine = gw.policy_engine
    hits = engine.native_verdicts.hits
    with psycopg.connect(g.target.conninfo(), autocommit=True, prepare_threshold=None) as conn:
        for i in range(20):
            assert conn.execute("select %s::int * 3 as x", (i,)).fetchone() == (i * 3,)
    assert engine.native_verdicts.hits - hits >= 19
    wait_sessions_ended(g.handle)
    flush(g.handle)
    st = [s for recs in reader.sessions(tmp_path / "audit").values() for s in statements(recs)]
    mine = [s for s in st if "* 3 as x" in s["sql"]]
    assert len(mine) == 20, [s["sql"] for s in mine]
    for s in mine:
        assert s["status"] == "ok", s
        assert s["decision"]["action"] == "allow" and s["decision"]["rule"] == "rw-all", s


def test_a_text_that_reads_differently_without_standard_conforming_strings_is_judged_both_ways(
    policy_gateway: Callable[..., PolicyGateway],
) -> None:
    """``SET standard_conforming_strings = off`` executed in the same pipeline (a prepared SET
    run by a Bind / Execute the gateway does not follow, or a Query), then a text whose string
    literal hides SQL when a backslash escapes its quote: the server reads it with the setting
    off, before the gateway sees the server's ParameterStatus.  Judged both ways, it is denied;
    the secret table's values never reach the client (natively or through Python)."""
    g, table, engine = _setup(policy_gateway)
    _reload(g, engine, POLICY_V2)
    hidden = "select 'a\\'' || v from " + table + " --'"
    conn = pw.connect(g.target.endpoint())
    try:
        # warm the native paths with the harmless shape of the same text
        for _ in range(3):
            assert _data(_run(conn, "select $1::int4", b"1")) == [[b"1"]]
        conn.send(pw.parse("s1", "set standard_conforming_strings = off") + pw.sync())
        assert pw.frames(conn.recv_until_ready()) == "1Z"
        conn.send(
            pw.bind("", "s1")
            + pw.execute()
            + pw.parse("", hidden)
            + pw.bind("", "")
            + pw.execute()
            + pw.sync()
        )
        msgs = conn.recv_until_ready()
        assert not _data(msgs), msgs
        assert (pw.first_error(msgs) or {}).get("C") == "42501"
        conn.send(pw.query("set standard_conforming_strings = on"))
        assert pw.first_error(conn.recv_until_ready()) is None
        # the simple protocol, a shape the cache holds: SET and the text in one write
        for i in range(3):
            conn.send(pw.query(f"select 'x{i}' || 'y' as c"))
            assert pw.first_error(conn.recv_until_ready()) is None
        conn.send(
            pw.query("set standard_conforming_strings = off")
            + pw.query("select 'a\\'' || v from " + table + " --' as c")
        )
        conn.recv_until_ready()  # the SET
        msgs = conn.recv_until_ready()
        assert not _data(msgs), msgs
        assert (pw.first_error(msgs) or {}).get("C") == "42501"
    finally:
        conn.terminate()


def test_a_text_sent_once_the_server_confirmed_the_setting_is_read_that_way(
    policy_gateway: Callable[..., PolicyGateway],
) -> None:
    """When a Query or Parse is the first message since the server answered everything, the
    server's ParameterStatus came before that ReadyForQuery: the text is read with the setting
    it reported, and only that way.  With standard_conforming_strings off confirmed, an escaped
    quote in an ordinary literal is a quote (psycopg's escaping with the setting off works; its
    reading with the setting on does not parse), and the literal that hides a read of the
    secret table is still denied, in both protocols."""
    g, table, engine = _setup(policy_gateway)
    _reload(g, engine, POLICY_V2)
    hidden = "select 'a\\'' || v from " + table + " --' as c"
    conn = pw.connect(g.target.endpoint())
    try:
        assert pw.first_error(conn.simple("set standard_conforming_strings = off")) is None
        msgs = conn.simple("select 'a\\'b', 'c\\\\d' as c")
        assert pw.first_error(msgs) is None, msgs
        assert _data(msgs) == [[b"a'b", b"c\\d"]], msgs
        msgs = conn.simple(hidden)
        assert not _data(msgs) and (pw.first_error(msgs) or {}).get("C") == "42501", msgs
        conn.send(pw.parse("", hidden) + pw.bind("", "") + pw.execute() + pw.sync())
        msgs = conn.recv_until_ready()
        assert not _data(msgs) and (pw.first_error(msgs) or {}).get("C") == "42501", msgs
    finally:
        conn.terminate()


def test_a_backslash_after_a_non_ascii_byte_is_judged_in_every_encoding_reading(
    policy_gateway: Callable[..., PolicyGateway],
) -> None:
    """``SET client_encoding = 'SJIS'`` run by a Bind / Execute in the same pipeline, then a
    text (valid UTF-8) whose escape string ends early when SJIS reads the byte before its
    backslash and the backslash as one character: the server reads it as SJIS, before the
    gateway sees the ParameterStatus.  Judged in every reading, it is denied."""
    g, table, engine = _setup(policy_gateway)
    _reload(g, engine, POLICY_V2)
    text = b"select E'\xc4\x81\\' || v from " + table.encode() + b" --'"
    parse = b"P" + (4 + 1 + len(text) + 1 + 2).to_bytes(4, "big") + b"\0" + text + b"\0\0\0"
    conn = pw.connect(g.target.endpoint())
    try:
        conn.send(pw.parse("s1", "set client_encoding = 'SJIS'") + pw.sync())
        assert pw.frames(conn.recv_until_ready()) == "1Z"
        conn.send(pw.bind("", "s1") + pw.execute() + parse + pw.bind("", "") + pw.execute())
        conn.send(pw.sync())
        msgs = conn.recv_until_ready()
        assert not _data(msgs), msgs
        assert (pw.first_error(msgs) or {}).get("C") == "42501"
    finally:
        conn.terminate()
