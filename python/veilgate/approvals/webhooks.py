"""Outgoing webhooks: a new request, a decision.  Slack-compatible body, HMAC-signed, retried.

The body is JSON a Slack incoming webhook accepts (``text`` plus ``blocks``) with the structured
event under ``veilgate`` for other receivers.  Each delivery carries ``X-Veilgate-Timestamp``
and ``X-Veilgate-Signature: sha256=<hex>``, the HMAC-SHA256 of ``<timestamp>.<body>`` with the
webhook's secret, so a receiver can check origin and freshness.  Network errors, 5xx and 429
are retried with exponential back-off (1 s, 2 s, 4 s ... capped at 60 s) up to ``max_attempts``.

Nothing here runs on the data path: :meth:`WebhookSender.send` only queues (bounded; when a
receiver is down for long the oldest deliveries are dropped and logged), and one task per webhook
delivers in order.  Bind parameters never leave the gateway this way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

from .. import log
from ..config_model import WebhookConfig
from ..identity.http import HTTPError, http_post
from .model import Request

__all__ = ["WebhookSender", "payload", "sign"]

logger = log.get("approvals.webhooks")

QUEUE_MAX: Final = 1000
BACKOFF_START_S: Final = 1.0
BACKOFF_MAX_S: Final = 60.0


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def _code(text: str, limit: int = 2800) -> str:
    text = text if len(text) <= limit else text[:limit] + " ..."
    return "```" + text.replace("```", "` ` `") + "```"


def payload(event: str, req: Request, how_to: Callable[[str], str]) -> dict[str, Any]:
    """The body for ``event`` (``request`` or ``decision``) about ``req``."""
    who = req.principal_label
    if req.kind == "elevation":
        what = f"elevation to tier *{req.requested_tier}*"
    else:
        what = f"a statement (rule `{req.rule_id}`, tier `{req.tier}`)"
    if event == "request":
        head = f"veilgate: approval requested `{req.id}` by *{who}* for {what}"
    else:
        voters = ", ".join(f"{v.approver_label} ({v.vote})" for v in req.votes) or "-"
        head = f"veilgate: request `{req.id}` by *{who}* was *{req.status}* by {voters}"
    lines = [head]
    if req.reason:
        lines.append(f"Reason: {req.reason}")
    comments = [f"{v.approver_label}: {v.comment}" for v in req.votes if v.comment]
    if comments:
        lines.append("Comments: " + "; ".join(comments))
    text = "\n".join(lines)
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    if req.kind == "statement":
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _code(req.sql)}})
    if event == "request":
        blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": how_to(req.id)}]})
    body = req.to_json(with_params=False)
    return {"text": text, "blocks": blocks, "veilgate": {"event": event, "request": body}}


class _Endpoint:
    def __init__(self, config: WebhookConfig) -> None:
        self.config = config
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE_MAX)
        self.task: asyncio.Task[None] | None = None
        self.delivered = 0
        self.failed = 0


class WebhookSender:
    """Queues and delivers webhook bodies; :meth:`start` on the gateway's loop."""

    def __init__(self, configs: Sequence[WebhookConfig], how_to: Callable[[str], str]) -> None:
        self._endpoints = [_Endpoint(c) for c in configs]
        self.how_to = how_to

    def __bool__(self) -> bool:
        return bool(self._endpoints)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for ep in self._endpoints:
            if ep.task is None:
                ep.task = loop.create_task(self._deliver_loop(ep))

    @property
    def delivered(self) -> int:
        return sum(ep.delivered for ep in self._endpoints)

    def send(self, event: str, req: Request) -> None:
        """Queue ``event`` about ``req`` for every webhook that wants it (never blocks)."""
        wanted = [ep for ep in self._endpoints if event in ep.config.events]
        if not wanted:
            return
        try:
            body = json.dumps(payload(event, req, self.how_to), separators=(",", ":")).encode()
        except Exception:  # a notification must never fail the statement that caused it
            logger.exception("webhook payload failed")
            return
        for ep in wanted:
            if ep.queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    ep.queue.get_nowait()
                log.event(logger, "webhook_dropped", logging.WARNING, url=_safe(ep.config.url))
            ep.queue.put_nowait((req.id, body))

    async def _deliver_loop(self, ep: _Endpoint) -> None:
        while True:
            request_id, body = await ep.queue.get()
            await self._deliver(ep, request_id, body)

    async def _deliver(self, ep: _Endpoint, request_id: str, body: bytes) -> None:
        cfg = ep.config
        backoff = BACKOFF_START_S
        try:
            secret = (cfg.secret() or "").encode()
        except OSError as exc:
            log.event(logger, "webhook_secret_unreadable", logging.ERROR, error=str(exc))
            ep.failed += 1
            return
        for attempt in range(1, cfg.max_attempts + 1):
            ts = str(int(time.time()))
            headers = {
                "Content-Type": "application/json",
                "X-Veilgate-Timestamp": ts,
                "X-Veilgate-Signature": sign(secret, ts, body),
                "X-Veilgate-Request": request_id,
            }
            retry = True
            try:
                resp = await http_post(
                    cfg.url,
                    body,
                    headers=headers,
                    timeout_s=cfg.timeout_s,
                    max_bytes=65536,
                    allow_insecure_http=cfg.allow_insecure_http,
                )
                if 200 <= resp.status < 300:
                    ep.delivered += 1
                    return
                retry = resp.status >= 500 or resp.status == 429
                error = f"HTTP {resp.status}"
            except (HTTPError, ValueError) as exc:
                error = str(exc)
            log.event(
                logger,
                "webhook_failed",
                logging.WARNING,
                url=_safe(cfg.url),
                request_id=request_id,
                attempt=attempt,
                error=error,
                retry=retry and attempt < cfg.max_attempts,
            )
            if not retry:
                break
            if attempt < cfg.max_attempts:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
        ep.failed += 1

    async def close(self) -> None:
        tasks = [ep.task for ep in self._endpoints if ep.task is not None]
        for ep in self._endpoints:
            ep.task = None
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t


def _safe(url: str) -> str:
    """The URL without its path and query (Slack webhook paths are secrets)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/..."
