"""Requests, votes and grants in the state database (:mod:`veilgate.state`).

Every change that someone may be waiting for sends a notification on :data:`CHANNEL` with the
request id as payload, after its transaction commits: the gateway that holds a waiting session
(any node, with PostgreSQL) re-reads the request.  Consistency comes from the database: votes on
one request are serialised (``SELECT ... FOR UPDATE`` / SQLite's single writer), a grant use is one
conditional ``UPDATE`` (never more uses than allowed, whatever the number of gateways).
"""

from __future__ import annotations

import json
import struct
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Final

from ..identity.base import Principal
from ..policy.approval_spec import ApproverSpec
from ..state import Migration, Row, StateDB, Tx, migrate
from .model import (
    KIND_STATEMENT,
    Grant,
    Request,
    RequestClosed,
    RequestNotFound,
    SelfApproval,
    Vote,
    VoteResult,
    new_id,
    principal_key,
)

__all__ = ["CHANNEL", "MIGRATIONS", "ApprovalStore"]

CHANNEL: Final = "veilgate_approvals"
COMPONENT: Final = "approvals"
MAX_PARAMS_BYTES: Final = 65536

MIGRATIONS: Final = [
    Migration(
        1,
        (
            """CREATE TABLE approval_requests (
                id TEXT PRIMARY KEY,
                kind TEXT NOT NULL,
                status TEXT NOT NULL,
                principal_key TEXT NOT NULL,
                principal_label TEXT NOT NULL,
                session_id TEXT NOT NULL,
                tier TEXT,
                rule_id TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                sql_text TEXT NOT NULL,
                params TEXT,
                reason TEXT,
                requested_tier TEXT,
                spec TEXT NOT NULL,
                node TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL,
                decided_at DOUBLE PRECISION
            )""",
            "CREATE INDEX approval_requests_open ON approval_requests "
            "(principal_key, fingerprint, status)",
            "CREATE INDEX approval_requests_status ON approval_requests (status, expires_at)",
            """CREATE TABLE approval_votes (
                request_id TEXT NOT NULL REFERENCES approval_requests (id),
                approver TEXT NOT NULL,
                approver_label TEXT NOT NULL,
                via TEXT NOT NULL,
                vote TEXT NOT NULL,
                comment TEXT NOT NULL,
                at DOUBLE PRECISION NOT NULL,
                audited INTEGER NOT NULL,
                PRIMARY KEY (request_id, approver)
            )""",
            """CREATE TABLE approval_grants (
                id TEXT PRIMARY KEY,
                request_id TEXT NOT NULL REFERENCES approval_requests (id),
                kind TEXT NOT NULL,
                principal_key TEXT NOT NULL,
                fingerprint TEXT NOT NULL,
                tier TEXT,
                created_at DOUBLE PRECISION NOT NULL,
                expires_at DOUBLE PRECISION NOT NULL,
                uses_allowed INTEGER NOT NULL,
                uses INTEGER NOT NULL,
                ended INTEGER NOT NULL
            )""",
            "CREATE INDEX approval_grants_lookup ON approval_grants (principal_key, fingerprint)",
            "CREATE INDEX approval_grants_open ON approval_grants (ended, expires_at)",
        ),
    ),
]

_REQUEST_COLS: Final = (
    "id, kind, status, principal_key, principal_label, session_id, tier, rule_id, fingerprint, "
    "sql_text, params, reason, requested_tier, spec, node, created_at, expires_at, decided_at"
)
_GRANT_COLS: Final = (
    "id, request_id, kind, principal_key, fingerprint, tier, created_at, expires_at, "
    "uses_allowed, uses"
)


def _request(row: Row, votes: tuple[Vote, ...] = ()) -> Request:
    spec = json.loads(row["spec"])
    params = json.loads(row["params"]) if row["params"] is not None else None
    return Request(
        id=row["id"],
        kind=row["kind"],
        status=row["status"],
        principal_key=row["principal_key"],
        principal_label=row["principal_label"],
        session_id=row["session_id"],
        tier=row["tier"],
        rule_id=row["rule_id"],
        fingerprint=row["fingerprint"],
        sql=row["sql_text"],
        params=params,
        reason=row["reason"],
        requested_tier=row["requested_tier"],
        approvers=ApproverSpec.from_json(spec["approvers"]),
        required=int(spec["required"]),
        grant_ttl_s=float(spec["grant_ttl_s"]),
        grant_uses=int(spec["grant_uses"]),
        node=row["node"],
        created_at=float(row["created_at"]),
        expires_at=float(row["expires_at"]),
        decided_at=float(row["decided_at"]) if row["decided_at"] is not None else None,
        votes=votes,
    )


def _grant(row: Row) -> Grant:
    return Grant(
        id=row["id"],
        request_id=row["request_id"],
        kind=row["kind"],
        principal_key=row["principal_key"],
        fingerprint=row["fingerprint"],
        tier=row["tier"],
        created_at=float(row["created_at"]),
        expires_at=float(row["expires_at"]),
        uses_allowed=int(row["uses_allowed"]),
        uses=int(row["uses"]),
    )


def _vote(row: Row) -> Vote:
    return Vote(
        approver=row["approver"],
        approver_label=row["approver_label"],
        via=row["via"],
        vote=row["vote"],
        comment=row["comment"],
        at=float(row["at"]),
    )


_BINARY_INTS: Final = {21: 2, 23: 4, 20: 8}
_TEXT_OIDS: Final = frozenset({25, 1043, 19, 1042, 114})


def _binary_value(oid: int, value: bytes) -> str:
    """A binary parameter of a common type as its text form; anything else as ``\\x`` hex."""
    size = _BINARY_INTS.get(oid)
    if size is not None and len(value) == size:
        return str(int.from_bytes(value, "big", signed=True))
    if oid == 16 and len(value) == 1:
        return "true" if value != b"\0" else "false"
    if oid in (700, 701) and len(value) in (4, 8):
        return repr(struct.unpack("!f" if len(value) == 4 else "!d", value)[0])
    if oid == 2950 and len(value) == 16:
        return str(uuid.UUID(bytes=value))
    if oid in _TEXT_OIDS:
        return value.decode("utf-8", "replace")
    return "\\x" + value.hex()


def display_params(
    params: list[tuple[int, bytes | None]], types: Sequence[int] = ()
) -> list[str | None] | None:
    """Bind parameters as an approver reads them: text as text, binary values of common types
    (integers, booleans, floats, uuid, text) decoded, anything else as ``\\x`` hex."""
    out: list[str | None] = []
    size = 0
    for i, (fmt, value) in enumerate(params):
        if value is None:
            out.append(None)
            continue
        size += len(value)
        if size > MAX_PARAMS_BYTES:
            return [f"({len(params)} parameters, too large to show)"]
        if fmt == 0:
            out.append(value.decode("utf-8", "replace"))
        else:
            out.append(_binary_value(types[i] if i < len(types) else 0, value))
    return out


class ApprovalStore:
    """The approvals tables of one state database."""

    def __init__(self, db: StateDB, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock
        self._migrated = False

    async def open(self) -> None:
        """Create or upgrade the tables (once per store object)."""
        if not self._migrated:
            await migrate(self.db, COMPONENT, MIGRATIONS)
            self._migrated = True

    def _for_update(self) -> str:
        return " FOR UPDATE" if self.db.dialect == "postgres" else ""

    # --- requests ------------------------------------------------------------------------------

    async def request(
        self,
        *,
        kind: str,
        principal: Principal,
        session_id: str,
        tier: str | None,
        rule_id: str,
        fingerprint: str,
        sql: str,
        params: list[str | None] | None,
        reason: str | None,
        requested_tier: str | None,
        spec: dict[str, Any],
        node: str,
    ) -> tuple[Request, bool]:
        """The open request of ``principal`` for ``fingerprint`` (made now if there is none);
        True when it was made now."""
        await self.open()
        now = self.clock()
        key = principal_key(principal)
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                f"SELECT {_REQUEST_COLS} FROM approval_requests "  # noqa: S608 (constant)
                "WHERE principal_key = $1 AND fingerprint = $2 AND kind = $3 "
                "AND status = 'pending' AND expires_at > $4 ORDER BY created_at DESC LIMIT 1",
                key,
                fingerprint,
                kind,
                now,
            )
            if row is not None:
                return _request(row, await self._votes(tx, row["id"])), False
            approvers: ApproverSpec = spec["approvers"]
            spec_text = json.dumps(
                {
                    "approvers": approvers.to_json(),
                    "required": int(spec["required"]),
                    "grant_ttl_s": float(spec["grant_ttl_s"]),
                    "grant_uses": int(spec["grant_uses"]),
                },
                sort_keys=True,
            )
            rid = new_id()
            values: tuple[Any, ...] = (
                rid,
                kind,
                "pending",
                key,
                principal.label(),
                session_id,
                tier,
                rule_id,
                fingerprint,
                sql,
                json.dumps(params) if params is not None else None,
                reason,
                requested_tier,
                spec_text,
                node,
                now,
                now + float(spec["request_ttl_s"]),
                None,
            )
            await tx.execute(
                f"INSERT INTO approval_requests ({_REQUEST_COLS}) VALUES "  # noqa: S608
                "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)",
                *values,
            )
            tx.notify(CHANNEL, rid)
            row = await tx.fetchrow(
                f"SELECT {_REQUEST_COLS} FROM approval_requests WHERE id = $1",  # noqa: S608
                rid,
            )
        assert row is not None
        return _request(row), True

    async def _votes(self, tx: Tx, request_id: str) -> tuple[Vote, ...]:
        rows = await tx.fetch(
            "SELECT approver, approver_label, via, vote, comment, at FROM approval_votes "
            "WHERE request_id = $1 ORDER BY at, approver",
            request_id,
        )
        return tuple(_vote(r) for r in rows)

    async def get(self, request_id: str) -> Request:
        await self.open()
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                f"SELECT {_REQUEST_COLS} FROM approval_requests WHERE id = $1",  # noqa: S608
                request_id,
            )
            if row is None:
                raise RequestNotFound(f"no approval request {request_id!r}")
            return _request(row, await self._votes(tx, request_id))

    async def requests(self, *, status: str | None = None, limit: int = 100) -> list[Request]:
        """Newest first; pending ones past their expiry are shown as ``expired``."""
        await self.open()
        now = self.clock()
        async with self.db.transaction() as tx:
            if status is None:
                rows = await tx.fetch(
                    f"SELECT {_REQUEST_COLS} FROM approval_requests "  # noqa: S608
                    "ORDER BY created_at DESC LIMIT $1",
                    limit,
                )
            elif status == "pending":
                rows = await tx.fetch(
                    f"SELECT {_REQUEST_COLS} FROM approval_requests "  # noqa: S608
                    "WHERE status = 'pending' AND expires_at > $1 "
                    "ORDER BY created_at DESC LIMIT $2",
                    now,
                    limit,
                )
            else:
                rows = await tx.fetch(
                    f"SELECT {_REQUEST_COLS} FROM approval_requests "  # noqa: S608
                    "WHERE status = $1 ORDER BY created_at DESC LIMIT $2",
                    status,
                    limit,
                )
            out = []
            for r in rows:
                req = _request(r, await self._votes(tx, r["id"]))
                if req.status == "pending" and req.expires_at <= now:
                    req = _with_status(req, "expired")
                    if status not in (None, "expired"):
                        continue
                out.append(req)
            return out

    # --- decisions -----------------------------------------------------------------------------

    async def vote(
        self,
        request_id: str,
        *,
        approver: str,
        approver_label: str,
        via: str,
        vote: str,
        comment: str,
        check: Callable[[Request], None],
    ) -> VoteResult:
        """Record one approver's vote.  ``check(request)`` raises :class:`NotAnApprover` for an
        approver the request's spec does not admit.  The requester never counts; a denial closes
        the request; the ``required``-th distinct approval closes it with a grant."""
        if vote not in ("approve", "deny"):
            raise ValueError(f"vote must be approve or deny, not {vote!r}")
        await self.open()
        now = self.clock()
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                f"SELECT {_REQUEST_COLS} FROM approval_requests WHERE id = $1"  # noqa: S608
                + self._for_update(),
                request_id,
            )
            if row is None:
                raise RequestNotFound(f"no approval request {request_id!r}")
            req = _request(row, await self._votes(tx, request_id))
            if req.status != "pending":
                raise RequestClosed(f"request {request_id} is already {req.status}")
            if req.expires_at <= now:
                raise RequestClosed(f"request {request_id} has expired")
            if approver == req.principal_key:
                raise SelfApproval("the requester cannot approve their own request")
            check(req)
            counted = await tx.execute(
                "INSERT INTO approval_votes (request_id, approver, approver_label, via, vote, "
                "comment, at, audited) VALUES ($1, $2, $3, $4, $5, $6, $7, 0) "
                "ON CONFLICT (request_id, approver) DO NOTHING",
                request_id,
                approver,
                approver_label,
                via,
                vote,
                comment,
                now,
            )
            votes = await self._votes(tx, request_id)
            status = "pending"
            grant: Grant | None = None
            if counted and vote == "deny":
                status = "denied"
            elif sum(1 for v in votes if v.vote == "approve") >= req.required:
                status = "approved"
                grant = Grant(
                    id=new_id("gr"),
                    request_id=request_id,
                    kind=req.kind,
                    principal_key=req.principal_key,
                    fingerprint=req.fingerprint,
                    tier=req.requested_tier,
                    created_at=now,
                    expires_at=now + req.grant_ttl_s,
                    uses_allowed=req.grant_uses,
                    uses=0,
                )
                await tx.execute(
                    f"INSERT INTO approval_grants ({_GRANT_COLS}, ended) "  # noqa: S608
                    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0)",
                    grant.id,
                    grant.request_id,
                    grant.kind,
                    grant.principal_key,
                    grant.fingerprint,
                    grant.tier,
                    grant.created_at,
                    grant.expires_at,
                    grant.uses_allowed,
                    grant.uses,
                )
            if status != "pending":
                await tx.execute(
                    "UPDATE approval_requests SET status = $1, decided_at = $2 WHERE id = $3",
                    status,
                    now,
                    request_id,
                )
            if counted:
                tx.notify(CHANNEL, request_id)
        decided = _with_status(req, status, decided_at=now if status != "pending" else None)
        return VoteResult(_with_votes(decided, votes), bool(counted), grant)

    async def claim_votes(self, request_id: str) -> tuple[Request, list[Vote]]:
        """The request and its votes not yet audited, marked audited now: each vote is claimed
        by exactly one gateway (whichever heard of it first), so it is audited once."""
        await self.open()
        async with self.db.transaction() as tx:
            rows = await tx.fetch(
                "UPDATE approval_votes SET audited = 1 WHERE request_id = $1 AND audited = 0 "
                "RETURNING approver, approver_label, via, vote, comment, at",
                request_id,
            )
            row = await tx.fetchrow(
                f"SELECT {_REQUEST_COLS} FROM approval_requests WHERE id = $1",  # noqa: S608
                request_id,
            )
            if row is None:
                raise RequestNotFound(f"no approval request {request_id!r}")
            req = _request(row, await self._votes(tx, request_id))
        return req, sorted((_vote(r) for r in rows), key=lambda v: v.at)

    # --- grants --------------------------------------------------------------------------------

    async def consume(
        self, principal: str, fingerprint: str, kind: str = KIND_STATEMENT
    ) -> Grant | None:
        """Use one run of a live grant for (principal, fingerprint); None when there is none."""
        await self.open()
        now = self.clock()
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                "UPDATE approval_grants SET uses = uses + 1 WHERE id = ("  # noqa: S608 (constant)
                "SELECT id FROM approval_grants WHERE principal_key = $1 AND fingerprint = $2 "
                "AND kind = $3 AND ended = 0 AND expires_at > $4 "
                "AND (uses_allowed = 0 OR uses < uses_allowed) ORDER BY expires_at LIMIT 1) "
                f"AND (uses_allowed = 0 OR uses < uses_allowed) RETURNING {_GRANT_COLS}",
                principal,
                fingerprint,
                kind,
                now,
            )
        return _grant(row) if row is not None else None

    async def revoke(self, request_id: str) -> Grant | None:
        """End the live grant of ``request_id`` now (every gateway is notified: they stop
        using it); None when it has none live (never approved, expired, used up, revoked)."""
        await self.open()
        now = self.clock()
        async with self.db.transaction() as tx:
            row = await tx.fetchrow(
                "UPDATE approval_grants SET ended = 1 WHERE request_id = $1 AND ended = 0 "  # noqa: S608
                "AND expires_at > $2 AND (uses_allowed = 0 OR uses < uses_allowed) "
                f"RETURNING {_GRANT_COLS}",
                request_id,
                now,
            )
            if row is not None:
                tx.notify(CHANNEL, request_id)
        return _grant(row) if row is not None else None

    async def count_uses(self, grant_id: str, uses: int) -> None:
        """Add uses made from a gateway's memory (grants with unlimited uses)."""
        await self.db.execute(
            "UPDATE approval_grants SET uses = uses + $1 WHERE id = $2", uses, grant_id
        )

    async def grant_of(self, request_id: str) -> Grant | None:
        await self.open()
        row = await self.db.fetchrow(
            f"SELECT {_GRANT_COLS} FROM approval_grants WHERE request_id = $1",  # noqa: S608
            request_id,
        )
        return _grant(row) if row is not None else None

    async def live_grants(self, kind: str) -> list[Grant]:
        """Grants of ``kind`` that are neither expired nor used up."""
        await self.open()
        rows = await self.db.fetch(
            f"SELECT {_GRANT_COLS} FROM approval_grants WHERE kind = $1 AND ended = 0 "  # noqa: S608
            "AND expires_at > $2 AND (uses_allowed = 0 OR uses < uses_allowed)",
            kind,
            self.clock(),
        )
        return [_grant(r) for r in rows]

    # --- expiry --------------------------------------------------------------------------------

    async def sweep(self) -> tuple[list[Request], list[Grant]]:
        """Mark pending requests past their expiry ``expired`` and grants expired or used up
        ``ended``; returns what this call closed (each exactly once, whatever the number of
        gateways sweeping)."""
        await self.open()
        now = self.clock()
        async with self.db.transaction() as tx:
            rows = await tx.fetch(
                "UPDATE approval_requests SET status = 'expired', decided_at = $1 "  # noqa: S608
                f"WHERE status = 'pending' AND expires_at <= $1 RETURNING {_REQUEST_COLS}",
                now,
            )
            grows = await tx.fetch(
                "UPDATE approval_grants SET ended = 1 WHERE ended = 0 AND (expires_at <= $1 "  # noqa: S608
                f"OR (uses_allowed > 0 AND uses >= uses_allowed)) RETURNING {_GRANT_COLS}",
                now,
            )
            for r in rows:
                tx.notify(CHANNEL, r["id"])
        return [_request(r) for r in rows], [_grant(r) for r in grows]


def _with_status(req: Request, status: str, *, decided_at: float | None = None) -> Request:
    return replace(req, status=status, decided_at=decided_at or req.decided_at)


def _with_votes(req: Request, votes: tuple[Vote, ...]) -> Request:
    return replace(req, votes=votes)
