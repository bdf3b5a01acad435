"""The approvals store on SQLite: requests are reused while open, votes count once, the requester
never counts, a grant is used at most its number of times however many stores race for it,
expiry closes requests and grants exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from veilgate.approvals.model import (
    RequestClosed,
    SelfApproval,
    approver_key,
    principal_key,
    statement_spec,
)
from veilgate.approvals.store import ApprovalStore, display_params
from veilgate.identity.base import Principal
from veilgate.policy.approval_spec import ApprovalSpec, ApproverSpec
from veilgate.state.sqlite import SQLiteDB

AGENT = Principal("static", "agent")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


async def _request(store: ApprovalStore, fp: str = "fp1", **spec: Any) -> Any:
    s = ApprovalSpec(approvers=ApproverSpec(users=frozenset({"a", "b"})), **spec)
    req, _ = await store.request(
        kind="statement",
        principal=AGENT,
        session_id="s1",
        tier="agents",
        rule_id="r1",
        fingerprint=fp,
        sql="DELETE FROM t WHERE id = 1",
        params=None,
        reason=None,
        requested_tier=None,
        spec=statement_spec(s),
        node="n1",
    )
    return req


async def _vote(store: ApprovalStore, rid: str, who: str, vote: str = "approve") -> Any:
    return await store.vote(
        rid,
        approver=approver_key(who),
        approver_label=who,
        via="cli",
        vote=vote,
        comment="",
        check=lambda r: None,
    )


def test_grant_uses_are_never_exceeded_by_racing_stores(tmp_path: Path) -> None:
    path = tmp_path / "s.db"

    async def go() -> None:
        stores = [ApprovalStore(SQLiteDB(path)) for _ in range(3)]
        try:
            req = await _request(stores[0], grant_uses=4)
            result = await _vote(stores[1], req.id, "a")
            assert result.grant is not None and result.request.status == "approved"
            key = principal_key(AGENT)
            got = await asyncio.gather(*(s.consume(key, "fp1") for s in stores for _ in range(5)))
            assert sum(g is not None for g in got) == 4
            assert await stores[2].consume(key, "fp1") is None
            # another principal, another fingerprint: nothing
            assert await stores[0].consume("static|-|other", "fp1") is None
        finally:
            for s in stores:
                await s.db.close()

    asyncio.run(go())


def test_open_request_is_reused_votes_count_once_requester_never(tmp_path: Path) -> None:
    async def go() -> None:
        store = ApprovalStore(SQLiteDB(tmp_path / "s.db"))
        try:
            r1 = await _request(store, required=2)
            assert (await _request(store, required=2)).id == r1.id
            assert (await _request(store, fp="fp2")).id != r1.id
            with pytest.raises(SelfApproval):
                await store.vote(
                    r1.id,
                    approver=principal_key(AGENT),
                    approver_label="me",
                    via="api",
                    vote="approve",
                    comment="",
                    check=lambda r: None,
                )
            first = await _vote(store, r1.id, "a")
            assert first.counted and first.request.status == "pending" and first.grant is None
            again = await _vote(store, r1.id, "a")
            assert not again.counted and again.request.approvals == 1
            done = await _vote(store, r1.id, "b")
            assert done.request.status == "approved" and done.grant is not None
            with pytest.raises(RequestClosed, match="already approved"):
                await _vote(store, r1.id, "c", "deny")
            # a new request once the last one was decided
            assert (await _request(store, required=2)).id != r1.id
            # each vote is claimed (audited) once
            _req, votes = await store.claim_votes(r1.id)
            assert [v.approver_label for v in votes] == ["a", "b"]
            assert (await store.claim_votes(r1.id))[1] == []
        finally:
            await store.db.close()

    asyncio.run(go())


def test_expiry_closes_requests_and_grants_once(tmp_path: Path) -> None:
    clock = Clock()

    async def go() -> None:
        store = ApprovalStore(SQLiteDB(tmp_path / "s.db"), clock=clock)
        other = ApprovalStore(SQLiteDB(tmp_path / "s.db"), clock=clock)
        try:
            pending = await _request(store, fp="p", request_ttl_s=60)
            approved = await _request(store, fp="g", grant_ttl_s=30)
            await _vote(store, approved.id, "a")
            clock.now += 31
            assert await store.consume(principal_key(AGENT), "g") is None  # expired grant
            requests, grants = await store.sweep()
            assert requests == [] and [g.request_id for g in grants] == [approved.id]
            clock.now += 30
            with pytest.raises(RequestClosed, match="expired"):
                await _vote(store, pending.id, "a")
            listed = await store.requests(status="pending")
            assert listed == []
            both = await asyncio.gather(store.sweep(), other.sweep())
            closed = [r.id for reqs, _ in both for r in reqs]
            assert closed == [pending.id]  # exactly one sweeper recorded it
            assert (await store.get(pending.id)).status == "expired"
        finally:
            await store.db.close()
            await other.db.close()

    asyncio.run(go())


def test_display_params() -> None:
    shown = display_params(
        [(0, b"42"), (1, (7).to_bytes(4, "big")), (1, b"\x01"), (1, b"\xde\xad"), (0, None)],
        [23, 23, 16, 17],
    )
    assert shown == ["42", "7", "true", "\\xdead", None]
    big = display_params([(0, b"x" * 70000)])
    assert big is not None and "too large" in str(big[0])
