"""Test-only access to a session's statement / portal mirror, and the server's own view.

The mirror lives in the gateway's thread; :func:`mirror_of` reads it there (``GatewayThread.
call``), finding the session by its upstream pid (which is the pid in the client's
BackendKeyData).  The server's view is read on the same connection without touching what is
compared: a named statement (``vgchk``) is prepared, bound to a named portal, executed and
closed again, so neither the unnamed statement nor the unnamed portal changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.integration import pgwire as pw
from tests.integration.conftest import GatewayHandle

CHECK_STMT = "vgchk"
CHECK_PORTAL = "vgchkp"
CHECK_SQL = (
    "select 's', name, statement from pg_prepared_statements "
    "union all select 'c', name, statement from pg_cursors"
)


@dataclass
class Names:
    statements: dict[str, str]
    """name -> the SQL (mirror: what it runs; server: the text that made it); the unnamed
    statement is not in pg_prepared_statements, so not here either."""
    portals: dict[str, str]
    complete: bool = True
    """(mirror) every portal is tracked."""


def mirror_of(handle: GatewayHandle, pid: int) -> Names:
    async def read() -> Names:
        gw: Any = handle.thread.gateway
        for s in list(gw._sessions):
            key = s.cancel_key
            if key is not None and key[0] == pid and s.mirror is not None:
                m = s.mirror
                stmts = {n.decode(): st.query for n, st in m.statements().items() if n}
                portals = {n.decode(): p.query for n, p in m.portals().items()}
                return Names(stmts, portals, m.portals_complete)
        raise LookupError(f"no session with upstream pid {pid}")

    return handle.thread.call(read())


def server_names(c: pw.RawConn) -> Names:
    """What the server has (named statements and portals), read without changing it: a named
    statement and portal of its own, closed again (the unnamed ones stay as they are)."""
    c.send(
        pw.parse(CHECK_STMT, CHECK_SQL)
        + pw.bind(CHECK_PORTAL, CHECK_STMT)
        + pw.execute(CHECK_PORTAL)
        + pw.close("P", CHECK_PORTAL)
        + pw.close("S", CHECK_STMT)
        + pw.sync()
    )
    msgs = c.recv_until_ready()
    err = pw.first_error(msgs)
    assert err is None, err
    stmts: dict[str, str] = {}
    portals: dict[str, str] = {}
    for m in msgs:
        if m.tag != "D":
            continue
        kind, name, text = (v.decode() if v is not None else "" for v in pw.data_row(m.body))
        if name in (CHECK_STMT, CHECK_PORTAL):
            continue
        (stmts if kind == "s" else portals)[name] = text
    return Names(stmts, portals)


def assert_mirror_matches(handle: GatewayHandle, c: pw.RawConn, pid: int) -> None:
    """The gateway's picture equals the server's: the same names, each running SQL that is
    the server's (the mirror keeps the statement a PREPARE / DECLARE runs, the server the
    whole text)."""
    server = server_names(c)
    mirror = mirror_of(handle, pid)
    assert set(mirror.statements) == set(server.statements), (mirror, server)
    for name, sql in mirror.statements.items():
        assert sql and sql in server.statements[name], (name, sql, server.statements[name])
    if mirror.complete:
        assert set(mirror.portals) == set(server.portals), (mirror, server)
    else:  # what it knows is right
        assert set(mirror.portals) <= set(server.portals), (mirror, server)
    for name, sql in mirror.portals.items():
        assert sql in server.portals[name], (name, sql, server.portals[name])
