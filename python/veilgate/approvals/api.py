"""The approvers' HTTP API on the admin listener (documented in ``openapi.yaml`` beside this file).

Every call carries ``Authorization: Bearer <token>``: an OIDC access token (or a static token)
validated exactly like a client's by the gateway's authenticator.  What a caller may see and do:

* ``GET /v1/approvals`` and ``GET /v1/approvals/{id}``: the requests the caller may approve
  (its roles or groups are among the request's approvers) or made itself; others are 404.
* ``POST /v1/approvals/{id}/approve`` and ``.../deny`` with an optional JSON body
  ``{"comment": "..."}``: a vote (the requester never counts; a vote counts once per approver).
* ``POST /v1/approvals/{id}/revoke`` (same optional body): end the request's live grant now, on
  every gateway; an approver of the request or its requester (giving a grant up) may.
* ``GET /v1/openapi/approvals.yaml``: this API's description (no token needed).

Errors are JSON ``{"error": code, "message": text}``: 400 malformed, 401 no or bad token (the
reason only goes to the gateway log), 403 not an approver / self-approval, 404 unknown, 409 no
longer pending, 503 the state store is down.
"""

from __future__ import annotations

import json
import logging
from importlib import resources
from typing import Any, Final
from urllib.parse import parse_qs

from .. import log
from ..admin.server import Request, Response, Router
from ..identity.base import AuthContext, Authenticator, AuthError, Principal
from ..state import StateUnavailable
from .model import STATUSES, ApprovalError, NotAnApprover, principal_key
from .model import Request as ApprovalRequest
from .service import ApprovalService

__all__ = ["ApprovalsAPI"]

logger = log.get("approvals.api")

MAX_COMMENT: Final = 2000
MAX_TOKEN: Final = 65535


def _error(status: int, code: str, message: str, **headers: str) -> Response:
    body = json.dumps({"error": code, "message": message}).encode() + b"\n"
    return Response(status, body, "application/json", headers)


def _unauthorized(message: str) -> Response:
    return _error(401, "unauthorized", message, **{"WWW-Authenticate": 'Bearer realm="veilgate"'})


class ApprovalsAPI:
    def __init__(self, service: ApprovalService, authenticator: Authenticator) -> None:
        self.service = service
        self.authenticator = authenticator

    def router(self) -> Router:
        r = Router()
        r.add("GET", "/v1/openapi/approvals.yaml", self.openapi)
        r.add("GET", "/v1/approvals", self.list_requests)
        r.add("GET", "/v1/approvals/{id}", self.show_request)
        r.add("POST", "/v1/approvals/{id}/approve", self.approve)
        r.add("POST", "/v1/approvals/{id}/deny", self.deny)
        r.add("POST", "/v1/approvals/{id}/revoke", self.revoke)
        return r

    # --- authentication ------------------------------------------------------------------------

    async def _principal(self, req: Request) -> Principal | Response:
        header = req.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return _unauthorized("an approver's bearer token is required")
        if len(token) > MAX_TOKEN:
            return _unauthorized("the token was not accepted")
        ctx = AuthContext(peer=req.peer, user="approver", database="veilgate-admin")
        try:
            return await self.authenticator.authenticate(token, ctx)
        except AuthError as exc:
            log.event(
                logger,
                "approver_auth_failed",
                logging.WARNING,
                peer=req.peer,
                reason=exc.reason,
                detail=exc.detail,
            )
            return _unauthorized("the token was not accepted")
        except Exception:
            logger.exception("approver authentication failed")
            return _unauthorized("the token was not accepted")
        finally:
            del token

    @staticmethod
    def _visible(p: Principal, r: ApprovalRequest) -> bool:
        return r.principal_key == principal_key(p) or r.approvers.allows_principal(p)

    # --- handlers ------------------------------------------------------------------------------

    def openapi(self, req: Request) -> Response:
        text = resources.files("veilgate.approvals").joinpath("openapi.yaml").read_bytes()
        return Response(200, text, "application/yaml")

    async def list_requests(self, req: Request) -> Response:
        who = await self._principal(req)
        if isinstance(who, Response):
            return who
        try:
            q = {k: v[-1] for k, v in parse_qs(req.query, strict_parsing=bool(req.query)).items()}
        except ValueError:
            return _error(400, "bad_request", "malformed query string")
        status = q.get("status", "pending")
        if status not in (*STATUSES, "all"):
            return _error(400, "bad_request", f"status must be one of {', '.join(STATUSES)}, all")
        limit_text = q.get("limit", "50")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= 500:
            return _error(400, "bad_request", "limit must be an integer from 1 to 500")
        try:
            reqs = await self.service.requests(
                status=None if status == "all" else status, limit=int(limit_text)
            )
        except StateUnavailable:
            return _error(503, "unavailable", "the approval store is unavailable")
        items = [r.to_json() for r in reqs if self._visible(who, r)]
        return Response.json(200, {"approvals": items})

    async def show_request(self, req: Request) -> Response:
        who = await self._principal(req)
        if isinstance(who, Response):
            return who
        try:
            r = await self.service.get(req.params["id"])
        except ApprovalError:
            return _error(404, "not_found", "no such approval request")
        except StateUnavailable:
            return _error(503, "unavailable", "the approval store is unavailable")
        if not self._visible(who, r):
            return _error(404, "not_found", "no such approval request")
        return Response.json(200, r.to_json())

    async def approve(self, req: Request) -> Response:
        return await self._vote(req, "approve")

    async def deny(self, req: Request) -> Response:
        return await self._vote(req, "deny")

    async def revoke(self, req: Request) -> Response:
        who = await self._principal(req)
        if isinstance(who, Response):
            return who
        comment = _comment(req.body)
        if isinstance(comment, Response):
            return comment
        rid = req.params["id"]
        try:
            r = await self.service.get(rid)
        except ApprovalError:
            return _error(404, "not_found", "no such approval request")
        except StateUnavailable:
            return _error(503, "unavailable", "the approval store is unavailable")
        if not self._visible(who, r):
            return _error(404, "not_found", "no such approval request")
        try:
            grant = await self.service.revoke(rid, by=who.label(), via="api", comment=comment)
        except StateUnavailable:
            return _error(503, "unavailable", "the approval store is unavailable")
        if grant is None:
            return _error(409, "closed", f"request {rid} has no live grant")
        return Response.json(
            200, {"request_id": rid, "grant_id": grant.id, "revoked": True, "by": who.label()}
        )

    async def _vote(self, req: Request, vote: str) -> Response:
        who = await self._principal(req)
        if isinstance(who, Response):
            return who
        comment = _comment(req.body)
        if isinstance(comment, Response):
            return comment

        def check(r: ApprovalRequest) -> None:
            if not r.approvers.allows_principal(who):
                raise NotAnApprover("you are not among the approvers of this request")

        try:
            result = await self.service.vote(
                req.params["id"],
                approver=principal_key(who),
                approver_label=who.label(),
                via="api",
                vote=vote,
                comment=comment,
                check=check,
            )
        except ApprovalError as exc:
            log.event(
                logger,
                "approval_vote_refused",
                logging.INFO,
                request_id=req.params["id"],
                approver=who.label(),
                code=exc.code,
            )
            return _error(exc.status, exc.code, str(exc))
        except StateUnavailable:
            return _error(503, "unavailable", "the approval store is unavailable")
        log.event(
            logger,
            "approval_vote",
            request_id=req.params["id"],
            approver=who.label(),
            vote=vote,
            counted=result.counted,
            status=result.request.status,
        )
        body: dict[str, Any] = result.request.to_json(with_params=False)
        body["counted"] = result.counted
        return Response.json(200, body)


def _comment(body: bytes) -> str | Response:
    """The optional ``{"comment": "..."}`` body."""
    if not body.strip():
        return ""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return _error(400, "bad_request", "the body must be a JSON object")
    if not isinstance(data, dict):
        return _error(400, "bad_request", "the body must be a JSON object")
    unknown = set(data) - {"comment"}
    if unknown:
        return _error(400, "bad_request", f"unknown field(s): {', '.join(sorted(unknown))}")
    comment = data.get("comment", "")
    if not isinstance(comment, str):
        return _error(400, "bad_request", "comment must be a string")
    if len(comment) > MAX_COMMENT:
        return _error(400, "bad_request", f"comment is longer than {MAX_COMMENT} characters")
    return comment
