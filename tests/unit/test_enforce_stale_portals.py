"""PolicyEnforcer: portals bound before a policy reload (the stale window), without a server.

What goes upstream for each client message is checked: the message itself, or a marker Parse
(the denial).  The integration tests (tests/integration/test_policy_reload_portals.py) check
what a client sees."""

# ruff: noqa: S608 (SQL texts the tests make up)
from __future__ import annotations

import struct
from typing import Any

import pytest

from veilgate.gateway.enforce import _RETIRED_MAX, MARKER_PREFIX, PolicyEnforcer
from veilgate.identity.base import Principal
from veilgate.policy.engine import PolicyEngine
from veilgate.policy.loader import load_policy_text

POLICY = """\
version: 1
tiers:
  - name: readwrite
    match: {roles: [db.readwrite]}
    rules:
      - id: rw-all
        action: allow
        message: "reads and writes"
        classes: [read, write, transaction, session, prepare]
"""
DENY_SECRETS = (
    POLICY
    + """      - id: rw-no-secrets
        action: deny
        message: "the secret tables are off limits"
        tables: ["public.vg_secret_*"]
"""
)
DENY_ORDERS = (
    POLICY
    + """      - id: rw-no-orders
        action: deny
        message: "no orders"
        tables: ["public.orders"]
"""
)
RW = Principal(provider="static", subject="svc", roles=frozenset({"db.readwrite"}))
SECRET = "select * from vg_secret_a"
PLAIN = "select * from plain"


class _State:
    def __init__(self) -> None:
        self.busy = False
        self.pending = 0
        self.tx_status = ord("I")


class _Transport:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.sent.append(bytes(data))


class _Session:
    def __init__(self) -> None:
        self.peer = "test"
        self.upstream_parameters: list[bytes] = []
        self.pinned_search_path: tuple[str, ...] | None = None
        self.state = _State()
        self.upstream_transport = _Transport()
        self.recording = None

    def set_client_events(self) -> None:
        pass

    def set_upstream_events(self) -> None:
        pass


class _Msg:
    stmt_id = 0  # the session is not recorded

    def __init__(self, tag: bytes, body: bytes) -> None:
        self.tag = tag[0]
        self.body = body

    def frame(self) -> bytes:
        return self.tag.to_bytes(1, "big") + struct.pack("!I", len(self.body) + 4) + self.body


def _parse(name: str, sql: str) -> _Msg:
    return _Msg(b"P", name.encode() + b"\0" + sql.encode() + b"\0\0\0")


def _bind(portal: str, stmt: str) -> _Msg:
    return _Msg(b"B", portal.encode() + b"\0" + stmt.encode() + b"\0" + b"\0\0\0\0\0\0")


def _execute(portal: str) -> _Msg:
    return _Msg(b"E", portal.encode() + b"\0" + b"\0\0\0\0")


def _ready(status: bytes) -> _Msg:
    return _Msg(b"Z", status)


_COMPLETES = {ord("P"): ord("1"), ord("B"): ord("2")}


class _Harness:
    def __init__(self) -> None:
        self.engine = PolicyEngine(load_policy_text(POLICY))
        self.session = _Session()
        self.enforcer = PolicyEnforcer(self.session, self.engine, RW, None)  # type: ignore[arg-type]
        self.server_accepts = True
        """Answer each forwarded Parse / Bind with its completion (as the server would)."""

    def send(self, m: _Msg) -> bytes:
        """What went upstream for one client message."""
        sent = self.session.upstream_transport.sent
        before = len(sent)
        # as the session does: the mirror sees the client's message first
        mirror = self.enforcer.mirror
        mirror.client_message(m.tag, m.body, self.session.state.pending)
        self.enforcer.client_message(m)
        out = b"".join(sent[before:])
        if out == m.frame() and self.server_accepts and m.tag in _COMPLETES:
            # the server accepts what was forwarded: ParseComplete / BindComplete
            mirror.server_message(_COMPLETES[m.tag], b"")
        return out

    def forwarded(self, m: _Msg) -> bool:
        out = self.send(m)
        if out == m.frame():
            return True
        assert out[:1] == b"P" and MARKER_PREFIX.encode() in out, out
        return False

    def denial_rule(self) -> str:
        """The rule of the last marker's decision."""
        markers: Any = self.enforcer._markers
        return str(next(reversed(markers.values())).rule_id)

    def reload(self, text: str, *, in_transaction: bool = True, pending: int = 0) -> None:
        state = self.session.state
        state.busy = pending > 0  # as the native tracker: requests in flight, not "in a block"
        state.tx_status = ord("T") if in_transaction else ord("I")
        state.pending = pending
        self.engine.reload(load_policy_text(text))
        self.enforcer.policy_reloaded()


def test_idle_reload_opens_no_window() -> None:
    h = _Harness()
    assert h.forwarded(_parse("s1", SECRET))
    h.reload(DENY_SECRETS, in_transaction=False)
    assert not h.enforcer.stale_window
    assert h.enforcer.client_tags() == b"QPFB"  # s1 is judged again at its next Bind
    assert h.forwarded(_execute("p1"))
    assert h.enforcer.stale_executes == 0


def test_untracked_portal_judged_by_its_possible_statements() -> None:
    h = _Harness()
    assert h.forwarded(_parse("s1", SECRET))
    assert h.forwarded(_bind("p1", "s1"))
    h.reload(DENY_SECRETS)
    assert h.enforcer.stale_window and b"E" in h.enforcer.client_tags()
    assert not h.forwarded(_execute("p1"))
    assert h.denial_rule() == "rw-no-secrets"


def test_untracked_portal_of_mixed_origin_is_refused_as_stale() -> None:
    h = _Harness()
    assert h.forwarded(_parse("s1", SECRET))
    assert h.forwarded(_parse("s2", PLAIN))
    h.reload(DENY_SECRETS)
    assert not h.forwarded(_execute("p2"))
    assert h.denial_rule() == "stale-portal"


def test_untracked_portal_runs_when_every_possible_statement_is_allowed() -> None:
    h = _Harness()
    assert h.forwarded(_parse("", SECRET))
    assert h.forwarded(_parse("", PLAIN))  # the secret text is replaced, its portals may live
    h.reload(DENY_ORDERS)
    assert h.forwarded(_execute(""))
    h.reload(DENY_SECRETS)
    assert not h.forwarded(_execute(""))
    assert h.denial_rule() == "stale-portal"


def test_too_many_replaced_statements_fail_closed_until_an_idle_reload() -> None:
    h = _Harness()
    for i in range(_RETIRED_MAX + 2):
        assert h.forwarded(_parse("", f"select {i} from plain"))
    h.reload(DENY_ORDERS)
    assert not h.forwarded(_execute("p"))
    assert h.denial_rule() == "stale-portal"
    h.reload(POLICY, in_transaction=False)  # idle: nothing bound survives, memory starts over
    assert not h.enforcer.stale_window
    h.reload(DENY_ORDERS)
    assert h.forwarded(_execute("p"))


def test_portal_bound_in_window_judged_by_current_policy_even_after_a_second_reload() -> None:
    h = _Harness()
    assert h.forwarded(_parse("s1", SECRET))
    h.reload(DENY_ORDERS)
    assert h.forwarded(_bind("p1", "s1"))  # judged again at Bind: allowed
    assert h.forwarded(_execute("p1"))
    h.reload(DENY_SECRETS)
    assert not h.forwarded(_execute("p1"))
    assert h.denial_rule() == "rw-no-secrets"


def test_portal_of_a_statement_the_gateway_never_saw_is_refused_in_the_window() -> None:
    h = _Harness()
    h.reload(DENY_ORDERS)
    assert h.forwarded(_bind("p1", "sql_prepared"))  # e.g. made by SQL PREPARE
    assert not h.forwarded(_execute("p1"))
    assert h.denial_rule() == "stale-portal"


@pytest.mark.parametrize("pending", [0, 2])
def test_window_ends_at_ready_for_query_idle_of_a_request_sent_after_the_reload(
    pending: int,
) -> None:
    h = _Harness()
    assert h.forwarded(_parse("s1", PLAIN))
    h.reload(DENY_ORDERS, pending=pending)
    seen = []
    for _ in range(pending):  # answers to requests sent before the reload
        h.enforcer.server_message(_ready(b"I"))
        seen.append(h.enforcer.stale_window)
    h.enforcer.server_message(_ready(b"T"))
    seen.append(h.enforcer.stale_window)
    h.enforcer.server_message(_ready(b"I"))
    seen.append(h.enforcer.stale_window)
    assert seen == [True] * (pending + 1) + [False]
    assert b"E" not in h.enforcer.client_tags() and h.enforcer.upstream_tags() == b"S"
    assert h.forwarded(_execute("p1"))
    assert h.enforcer.stale_executes == 0
