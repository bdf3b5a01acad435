"""Probes: ``/livez`` (the process works), ``/readyz`` (it can serve), ``/healthz`` (as before).

* ``GET /livez``: 200 while the event loop answers (draining included: the process is fine).
* ``GET /readyz``: 200 when every readiness check passes (:mod:`veilgate.health`: upstream
  reachable with each login, identity keys fresh or within the serve-stale window, masking key
  present, certificate valid beyond ``health.certificate_min_days``, audit being written, not
  draining), else 503; the body names each failing check.
* ``GET /healthz``: unchanged for existing probes: 200 with the session count, 503 while
  draining or while the session record cannot be written.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from veilgate.admin.server import Handler, Request, Response, Router

if TYPE_CHECKING:
    from veilgate.health import AuditHealth, Readiness

__all__ = ["HealthState", "gateway_routes", "health_router"]


class HealthState:
    """What ``/healthz`` reports: serving (200, with the session count), draining (503), or not
    ready because the session record cannot be written and statements are refused (503)."""

    def __init__(self, sessions: Callable[[], int], audit: AuditHealth | None = None) -> None:
        self._sessions = sessions
        self._audit = audit
        self.draining = False

    def __call__(self, request: Request) -> Response:
        if self.draining:
            return Response.json(503, {"status": "draining"})
        body: dict[str, Any] = {"status": "ok", "sessions": self._sessions()}
        if self._audit is not None:
            body["audit"] = self._audit.health()
            if self._audit.blocked:
                body["status"] = "audit_unavailable"
                return Response.json(503, body)
        return Response.json(200, body)


def livez(request: Request) -> Response:
    return Response.json(200, {"status": "alive"})


def health_router(health: HealthState, readiness: Readiness | None = None) -> Router:
    r = Router()
    r.add("GET", "/healthz", health)
    r.add("GET", "/livez", livez)
    if readiness is not None:

        def readyz(request: Request) -> Response:
            ok, body = readiness.report()
            return Response.json(200 if ok else 503, body)

        r.add("GET", "/readyz", readyz)
    return r


def gateway_routes(health: HealthState) -> dict[str, Handler]:
    """``/healthz`` and ``/metrics`` as plain routes (a bare admin server in tests)."""
    from veilgate.admin.metrics import metrics_handler

    return {"/healthz": health, "/metrics": metrics_handler}
