"""ServerMirror without a server: which replies bind which names (sans-IO).

The integration tests (tests/integration/test_server_state_mirror.py) compare the mirror with
the server itself; these pin the rules one by one."""

from __future__ import annotations

import struct

import pytest

from veilgate.gateway.mirror import Desynchronised, ServerMirror


def _cstr(s: str) -> bytes:
    return s.encode() + b"\0"


P = ord("P")
B = ord("B")
E = ord("E")
C = ord("C")
S = ord("S")
Q = ord("Q")


class _M:
    """A mirror and a fake native tracker (requests in flight)."""

    def __init__(self, **kw: bool) -> None:
        self.m = ServerMirror(**kw)
        self.pending = 0

    def client(self, tag: int, body: bytes) -> None:
        if tag in (Q, S):
            self.pending += 1
        self.m.client_message(tag, body, self.pending)

    def parse(self, name: str, sql: str) -> None:
        self.client(P, _cstr(name) + _cstr(sql) + b"\0\0")

    def bind(self, portal: str, stmt: str) -> None:
        self.client(B, _cstr(portal) + _cstr(stmt) + b"\0\0\0\0\0\0")

    def execute(self, portal: str) -> None:
        self.client(E, _cstr(portal) + struct.pack("!I", 0))

    def close(self, kind: str, name: str) -> None:
        self.client(C, kind.encode() + _cstr(name))

    def sync(self) -> None:
        self.client(S, b"")

    def query(self, sql: str) -> None:
        self.client(Q, _cstr(sql))

    def server(self, tag: str, body: bytes = b"") -> None:
        if tag == "Z":
            self.pending -= 1
        self.m.server_message(ord(tag), body)

    def tag(self, text: str) -> None:
        self.server("C", _cstr(text))

    def error(self) -> None:
        self.server("E", b"SERROR\0C42P05\0Mx\0\0")

    def names(self) -> tuple[dict[str, str], dict[str, str]]:
        return (
            {k.decode(): v.query for k, v in self.m.statements().items()},
            {k.decode(): v.query for k, v in self.m.portals().items()},
        )


def test_parse_binds_only_when_the_server_confirms() -> None:
    t = _M()
    t.parse("s", "select 1")
    t.sync()
    assert t.m.statement(b"s") is None  # sent, not confirmed
    proj = t.m.projected_statement(b"s")
    assert proj is not None and proj.query == "select 1"
    t.server("1")
    t.server("Z", b"I")
    assert t.names()[0] == {"s": "select 1"}
    assert t.m.settled


def test_parse_of_an_existing_name_keeps_the_old_statement() -> None:
    t = _M()
    t.parse("s", "select 1")
    t.sync()
    t.server("1")
    t.server("Z", b"I")
    t.parse("s", "select 2")
    # judged before the server answered: the Parse will fail, "s" stays what it was
    proj = t.m.projected_statement(b"s")
    assert proj is not None and proj.query == "select 1"
    t.sync()
    t.error()
    t.server("Z", b"I")
    assert t.names()[0] == {"s": "select 1"}


def test_error_skips_the_rest_of_the_segment() -> None:
    t = _M()
    t.parse("a", "select 1")
    t.parse("b", "select 2")
    t.sync()
    t.parse("c", "select 3")
    t.sync()
    t.server("1")  # a
    t.error()  # b fails: the server skips to Sync
    t.server("Z", b"I")
    t.server("1")  # c
    t.server("Z", b"I")
    assert t.names()[0] == {"a": "select 1", "c": "select 3"}


def test_query_statements_apply_in_order_until_an_error() -> None:
    t = _M()
    t.query("prepare p1 as select 1; prepare p2 as select 2; select 1/0; prepare p3 as select 3")
    t.tag("PREPARE")
    t.tag("PREPARE")
    t.error()
    t.server("Z", b"I")
    assert t.names()[0] == {"p1": "select 1", "p2": "select 2"}


def test_prepare_and_deallocate_are_not_transactional() -> None:
    t = _M()
    t.query("begin")
    t.tag("BEGIN")
    t.server("Z", b"T")
    t.query("prepare q as select 1")
    t.tag("PREPARE")
    t.server("Z", b"T")
    t.query("rollback")
    t.tag("ROLLBACK")
    t.server("Z", b"I")
    assert t.names()[0] == {"q": "select 1"}


def test_cursors_end_with_their_transaction_unless_held_and_committed() -> None:
    t = _M(track_portals=True)
    t.query("begin")
    t.tag("BEGIN")
    t.server("Z", b"T")
    t.query("declare c1 cursor for select 1; declare h cursor with hold for select 2")
    t.tag("DECLARE CURSOR")
    t.tag("DECLARE CURSOR")
    t.server("Z", b"T")
    assert set(t.names()[1]) == {"c1", "h"}
    t.query("commit")
    t.tag("COMMIT")
    t.server("Z", b"I")
    assert t.names()[1] == {"h": "select 2"}


def test_rollback_to_savepoint_drops_what_was_declared_after_it() -> None:
    t = _M(track_portals=True)
    t.query("begin; declare a cursor for select 1; savepoint x; declare b cursor for select 2")
    for tag in ("BEGIN", "DECLARE CURSOR", "SAVEPOINT", "DECLARE CURSOR"):
        t.tag(tag)
    t.server("Z", b"T")
    t.query("rollback to savepoint x")
    t.tag("ROLLBACK")
    t.server("Z", b"T")
    assert set(t.names()[1]) == {"a"}


def test_bind_in_flight_gives_one_candidate_in_its_segment() -> None:
    t = _M(track_portals=True)
    t.parse("s", "select 1")
    t.sync()
    t.server("1")
    t.server("Z", b"I")
    t.bind("p", "s")
    cands = t.m.portal_candidates(b"p")
    assert [c.query if c else None for c in cands] == ["select 1"]
    t.sync()
    # after a Sync the Bind may have failed and a later ROLLBACK TO bring back the old one
    cands = t.m.portal_candidates(b"p")
    assert [c.query if c else None for c in cands] == ["select 1", None]


def test_a_reply_that_cannot_be_matched_desynchronises() -> None:
    t = _M(track_portals=True)  # every reply is seen: nothing can have been skipped unseen
    t.parse("s", "select 1")
    t.sync()
    with pytest.raises(Desynchronised):
        t.server("Z", b"I")  # before the Parse was answered
    assert t.m.desync is not None


def test_command_tag_must_fit_the_statement() -> None:
    t = _M()
    t.query("prepare x as select 2")
    with pytest.raises(Desynchronised):
        t.tag("SELECT 1")  # an Execute's tag taken for the PREPARE's


def test_tags_are_surfaced_only_while_needed() -> None:
    t = _M()
    assert t.m.upstream_tags() == b""
    assert b"S" not in t.m.client_tags() and b"B" not in t.m.client_tags()
    t.parse("s", "select 1")
    assert b"1" in t.m.upstream_tags() and b"S" in t.m.client_tags()
    t.sync()
    t.server("1")
    t.server("Z", b"I")
    # prepared once: binding and executing it surfaces nothing more
    assert t.m.upstream_tags() == b""
    assert b"B" not in t.m.client_tags() and b"E" not in t.m.client_tags()


def test_a_request_the_gateway_answered_itself_is_forgotten() -> None:
    t = _M(track_portals=True)  # a masked session follows every request
    t.query("copy secret to stdout")  # refused by masking before it runs, answered locally
    t.m.answered_locally()
    assert t.m.settled
    t.pending -= 1
    t.query("select 1")
    t.tag("SELECT 1")
    t.server("Z", b"I")
    assert t.m.settled


def test_a_function_call_replaced_by_a_query_drops_the_unnamed_statement() -> None:
    t = _M()
    t.parse("", "select 1")
    t.sync()
    t.server("1")
    t.server("Z", b"I")
    assert t.m.statement(b"") is not None
    t.client(ord("F"), b"\0\0\0\1")
    t.pending += 1  # the native tracker counts a FunctionCall as a request
    t.m.function_call_replaced(t.pending)
    t.error()
    t.server("Z", b"I")
    assert t.m.statement(b"") is None and t.m.settled


@pytest.mark.parametrize("track", [False, True])
def test_messages_sent_after_an_error_before_its_sync_are_skipped(track: bool) -> None:
    """libpq's pipeline mode: a Parse fails, the client reads the error (Flush, no Sync yet)
    and goes on sending; the server skips all of it up to the Sync, whose ReadyForQuery ends
    the batch.  Nothing skipped is installed; the session stays in step."""
    t = _M(track_portals=track)
    t.parse("ok", "select 1")
    t.server("1")
    t.parse("bad", "select * from nowhere")
    t.error()
    assert b"S" in t.m.client_tags()  # the Sync that ends the skipping is surfaced
    t.parse("later", "select 2")
    t.bind("", "later")
    t.execute("")
    t.sync()
    t.server("Z", b"I")
    assert t.m.desync is None
    assert t.names() == ({"ok": "select 1"}, {})
    # the next batch is tracked as usual
    t.parse("after", "select 4")
    t.sync()
    t.server("1")
    t.server("Z", b"I")
    assert set(t.names()[0]) == {"ok", "after"}


def test_an_error_the_mirror_did_not_see_skips_what_follows_to_the_sync() -> None:
    """Only surfaced messages reach the mirror: a Bind / Execute of a prepared statement it
    does not follow fails, the client reads the error (Flush) and goes on with a Parse in the
    same pipeline; the server skips that Parse up to the Sync.  Its ReadyForQuery with the
    Parse unanswered means exactly that: the Parse never happened (no desync)."""
    t = _M()
    t.parse("s", "select 1")
    t.sync()
    t.server("1")
    t.server("Z", b"I")
    assert b"B" not in t.m.client_tags() and b"E" not in t.m.upstream_tags()
    # Bind / Execute / the error are not surfaced (nothing is followed now)
    t.parse("t", "select 2")
    t.sync()
    t.server("Z", b"I")  # skipped: no ParseComplete
    assert t.m.desync is None
    assert t.names()[0] == {"s": "select 1"}
    t.parse("u", "select 3")
    t.sync()
    t.server("1")
    t.server("Z", b"I")
    assert set(t.names()[0]) == {"s", "u"}


def test_ready_for_query_with_a_reply_owed_before_a_query_still_desyncs() -> None:
    """A Query right behind a Parse (no Sync): a ReadyForQuery while the Parse is unanswered
    cannot be matched (the Query would have been skipped too): the mirror gives up."""
    t = _M()
    t.parse("s", "select 1")
    t.query("select 2")
    with pytest.raises(Desynchronised):
        t.server("Z", b"I")
