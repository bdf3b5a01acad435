"""The admin console: ``/v1/admin/...`` JSON endpoints on the admin listener (``veilgate admin``).

Every call carries ``Authorization: Bearer <token>``: the admin token (``admin.token_file`` /
``admin.token_env``, compared in constant time), or an OIDC access token validated exactly like a
client's whose roles or groups include one of ``admin.roles``.  With none of the three configured
the console refuses every call (403): it is never open by default.  A token is never logged; the
actions are, with who did them (``admin-token`` or the principal's label).

=====================================  =========================================================
``GET  /v1/admin/sessions``            sessions: principal, tier, target, client address, state,
                                       statement fingerprint, age, bytes, upstream backend pid
``GET  /v1/admin/sessions/{id}``       one session
``POST /v1/admin/sessions/{id}/cancel``     cancel its running statement (as a CancelRequest)
``POST /v1/admin/sessions/{id}/terminate``  end it now (57P01)
``GET  /v1/admin/targets``             targets: address, logins, paused, sessions by tier,
                                       upstream connections
``POST /v1/admin/targets/{name}/pause``     new sessions wait (up to their handshake timeout)
``POST /v1/admin/targets/{name}/resume``    ... and go on
``GET  /v1/admin/config``              generation, masking key generation, version, commit,
                                       native engine, file, pid
``POST /v1/admin/reload``              reload the configuration (as SIGHUP); the outcome
``POST /v1/admin/drain``               drain and exit (as SIGTERM)
=====================================  =========================================================

Errors are JSON ``{"error": code, "message": text}``: 401 no or bad token, 403 console not
configured / not an admin, 404 unknown session or target, 409 a reload that failed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from veilgate import log
from veilgate.admin.server import Request, Response, Router
from veilgate.identity.base import AuthContext, Authenticator, AuthError

if TYPE_CHECKING:
    from veilgate.config_model import AdminConfig, GatewayConfig
    from veilgate.gateway.server import Gateway
    from veilgate.reload import ReloadOutcome

__all__ = ["AdminConsole", "ConsoleHost"]

_log = log.get("admin.console")

MAX_TOKEN = 65535
BY_ADMIN_TOKEN = "admin-token"  # noqa: S105 (a label, not a secret)
"""Who did it, in the log, when the admin token was used."""


class ConsoleHost(Protocol):
    """The running service, as the console sees it."""

    @property
    def config(self) -> GatewayConfig: ...

    @property
    def generation(self) -> int: ...

    @property
    def gateway(self) -> Gateway | None: ...

    def stop(self, reason: str = "requested", immediate: bool = False) -> None: ...

    def reload(self, trigger: str = "request") -> Awaitable[ReloadOutcome]: ...


def _error(status: int, code: str, message: str, **headers: str) -> Response:
    body = json.dumps({"error": code, "message": message}).encode() + b"\n"
    return Response(status, body, "application/json", headers)


def _unauthorized() -> Response:
    return _error(
        401,
        "unauthorized",
        "an admin bearer token is required",
        **{"WWW-Authenticate": 'Bearer realm="veilgate-admin"'},
    )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class _TokenFile:
    """The admin token file, re-read when it changes (rotate by replacing it)."""

    def __init__(self) -> None:
        self._key: tuple[str, int, int, int] | None = None
        self._digest: bytes | None = None

    def digest(self, path: Path) -> bytes | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._key:
            try:
                token = path.read_text().strip()
            except (OSError, UnicodeDecodeError):
                return None
            self._key, self._digest = key, (_digest(token) if token else None)
        return self._digest


class AdminConsole:
    def __init__(self, host: ConsoleHost, authenticator: Authenticator) -> None:
        self.host = host
        self.authenticator = authenticator
        self._token_file = _TokenFile()
        self._started = time.time()

    def router(self) -> Router:
        r = Router()
        r.add("GET", "/v1/admin/sessions", self._guard(self.list_sessions))
        r.add("GET", "/v1/admin/sessions/{id}", self._guard(self.show_session))
        r.add("POST", "/v1/admin/sessions/{id}/cancel", self._guard(self.cancel_session))
        r.add("POST", "/v1/admin/sessions/{id}/terminate", self._guard(self.terminate_session))
        r.add("GET", "/v1/admin/targets", self._guard(self.list_targets))
        r.add("POST", "/v1/admin/targets/{name}/pause", self._guard(self.pause_target))
        r.add("POST", "/v1/admin/targets/{name}/resume", self._guard(self.resume_target))
        r.add("GET", "/v1/admin/config", self._guard(self.show_config))
        r.add("POST", "/v1/admin/reload", self._guard(self.reload))
        r.add("POST", "/v1/admin/drain", self._guard(self.drain))
        return r

    # --- authentication ------------------------------------------------------------------------

    def _guard(
        self, handler: Callable[[Request, str], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def guarded(req: Request) -> Response:
            who = await self._authorize(req)
            if isinstance(who, Response):
                return who
            return await handler(req, who)

        return guarded

    async def _authorize(self, req: Request) -> str | Response:
        """Who is calling (``admin-token`` or a principal label), or the refusal."""
        cfg: AdminConfig = self.host.config.admin
        if cfg.token_file is None and cfg.token_env is None and not cfg.roles:
            return _error(
                403,
                "console_disabled",
                "the admin console is off: set admin.token_file, admin.token_env or admin.roles",
            )
        scheme, _, token = req.headers.get("authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN:
            self._refused(req, "no_token")
            return _unauthorized()
        try:
            presented = _digest(token)
            for expected in self._admin_digests(cfg):
                if hmac.compare_digest(presented, expected):
                    return BY_ADMIN_TOKEN
            if not cfg.roles:
                self._refused(req, "wrong_token")
                return _unauthorized()
            ctx = AuthContext(peer=req.peer, user="admin", database="veilgate-admin")
            try:
                principal = await self.authenticator.authenticate(token, ctx)
            except AuthError as exc:
                self._refused(req, exc.reason)
                return _unauthorized()
            except Exception:
                _log.exception("admin authentication failed")
                return _unauthorized()
        finally:
            del token
        held = set(principal.roles) | set(principal.groups or ())
        if not held.intersection(cfg.roles):
            self._refused(req, "not_an_admin", principal=principal.label())
            return _error(403, "forbidden", "the token does not carry an admin role")
        return principal.label()

    def _admin_digests(self, cfg: AdminConfig) -> list[bytes]:
        out: list[bytes] = []
        if cfg.token_file is not None:
            d = self._token_file.digest(cfg.token_file)
            if d is not None:
                out.append(d)
        if cfg.token_env is not None:
            value = os.environ.get(cfg.token_env, "").strip()
            if value:
                out.append(_digest(value))
        return out

    @staticmethod
    def _refused(req: Request, reason: str, **fields: Any) -> None:
        log.event(
            _log,
            "admin_auth_failed",
            logging.WARNING,
            peer=req.peer,
            path=req.path,
            reason=reason,
            **fields,
        )

    # --- views ---------------------------------------------------------------------------------

    def _gateway(self) -> Gateway | Response:
        gateway = self.host.gateway
        if gateway is None:
            return _error(503, "unavailable", "the gateway is not running")
        return gateway

    async def list_sessions(self, req: Request, who: str) -> Response:
        gateway = self._gateway()
        if isinstance(gateway, Response):
            return gateway
        sessions = sorted((s.info() for s in gateway.sessions()), key=lambda i: -i["age_s"])
        return Response.json(200, {"count": len(sessions), "sessions": sessions})

    async def show_session(self, req: Request, who: str) -> Response:
        gateway = self._gateway()
        if isinstance(gateway, Response):
            return gateway
        session = gateway.find_session(req.params["id"])
        if session is None:
            return _error(404, "not_found", "no such session")
        return Response.json(200, session.info())

    async def cancel_session(self, req: Request, who: str) -> Response:
        gateway = self._gateway()
        if isinstance(gateway, Response):
            return gateway
        session = gateway.find_session(req.params["id"])
        if session is None:
            return _error(404, "not_found", "no such session")
        result = await gateway.cancel_session(session, who)
        return Response.json(200, {"id": session.id, "result": result})

    async def terminate_session(self, req: Request, who: str) -> Response:
        gateway = self._gateway()
        if isinstance(gateway, Response):
            return gateway
        session = gateway.find_session(req.params["id"])
        if session is None:
            return _error(404, "not_found", "no such session")
        gateway.terminate_session(session, who)
        return Response.json(200, {"id": session.id, "result": "terminated"})

    async def list_targets(self, req: Request, who: str) -> Response:
        from veilgate.health import logins

        gateway = self._gateway()
        if isinstance(gateway, Response):
            return gateway
        by_target: dict[str, Counter[str]] = {}
        upstream: Counter[str] = Counter()
        for s in gateway.sessions():
            info = s.info()
            if info["target"] is None:
                continue
            by_target.setdefault(info["target"], Counter())[info["tier"] or ""] += 1
            if info["upstream_pid"] is not None:
                upstream[info["target"]] += 1
        pooled = gateway.upstream_pool.idle_by_target()
        targets = []
        for name, t in sorted(self.host.config.targets.items()):
            tiers = by_target.get(name, Counter())
            targets.append(
                {
                    "name": name,
                    "host": t.host,
                    "port": t.port,
                    "dbname": t.dbname,
                    "logins": sorted({login.user for _, login in logins(t)}),
                    "paused": name in gateway.paused_targets,
                    "sessions": sum(tiers.values()),
                    "sessions_by_tier": dict(sorted(tiers.items())),
                    "upstream_connections": upstream[name],
                    "pool_size": t.pool.size,
                    "pool_idle": pooled.get(name, 0),
                }
            )
        return Response.json(200, {"targets": targets})

    async def pause_target(self, req: Request, who: str) -> Response:
        return self._pause(req, who, True)

    async def resume_target(self, req: Request, who: str) -> Response:
        return self._pause(req, who, False)

    def _pause(self, req: Request, who: str, pause: bool) -> Response:
        gateway = self._gateway()
        if isinstance(gateway, Response):
            return gateway
        name = req.params["name"]
        ok = gateway.pause_target(name, who) if pause else gateway.resume_target(name, who)
        if not ok:
            return _error(404, "not_found", "no such target")
        return Response.json(200, {"target": name, "paused": name in gateway.paused_targets})

    async def show_config(self, req: Request, who: str) -> Response:
        from veilgate.buildinfo import build_info

        cfg = self.host.config
        gateway = self.host.gateway
        return Response.json(
            200,
            {
                "generation": self.host.generation,
                "masking_key": gateway.hash_keys.describe() if gateway is not None else None,
                "file": str(cfg.source) if cfg.source else None,
                "pid": os.getpid(),
                "started_at": self._started,
                "targets": sorted(cfg.targets),
                **build_info(),
            },
        )

    async def reload(self, req: Request, who: str) -> Response:
        log.event(_log, "admin_reload", by=who)
        outcome = await self.host.reload(f"admin:{who}")
        body = {
            "ok": outcome.ok,
            "generation": outcome.generation,
            "changed": list(outcome.changed),
            "restart_required": list(outcome.restart_required),
            "errors": list(outcome.errors),
            "masking_key": outcome.masking_key,
        }
        return Response.json(200 if outcome.ok else 409, body)

    async def drain(self, req: Request, who: str) -> Response:
        log.event(_log, "admin_drain", logging.WARNING, by=who)
        self.host.stop(f"admin:{who}")
        return Response.json(202, {"status": "draining"})
