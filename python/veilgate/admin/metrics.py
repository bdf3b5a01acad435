"""``GET /metrics``: the Prometheus exposition (:mod:`veilgate.metrics`)."""

from __future__ import annotations

from veilgate.admin.server import Request, Response, Router

__all__ = ["metrics_handler", "metrics_router"]


def metrics_handler(request: Request) -> Response:
    from veilgate import metrics

    return Response(200, metrics.render().encode(), "text/plain; version=0.0.4; charset=utf-8")


def metrics_router() -> Router:
    r = Router()
    r.add("GET", "/metrics", metrics_handler)
    return r
