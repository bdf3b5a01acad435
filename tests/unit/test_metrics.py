"""The Prometheus exposition (veilgate.metrics) and the admin HTTP server that serves it."""

from __future__ import annotations

import asyncio
import json
import math
import re
import sys
import types
from collections.abc import Iterator

import pytest

from veilgate import metrics
from veilgate.admin.health import HealthState, gateway_routes
from veilgate.admin.server import (
    MAX_HEAD_BYTES,
    AdminServer,
    Request,
    Response,
)

# -- a strict parser for the text format (0.0.4) -------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"^({_NAME})(\{{.*\}})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


def parse_labels(text: str) -> dict[str, str]:
    assert text.startswith("{") and text.endswith("}"), text
    inner, labels, pos = text[1:-1], {}, 0
    while pos < len(inner):
        m = _LABEL.match(inner, pos)
        assert m is not None, f"bad label set {text!r} at {pos}"
        value = re.sub(r"\\[\\\"n]", lambda e: _UNESCAPE[e.group(0)], m.group(2))
        assert m.group(1) not in labels, f"duplicate label in {text!r}"
        labels[m.group(1)] = value
        pos = m.end()
    return labels


def parse(text: str) -> dict[str, dict[str, object]]:
    """Families by name: {"help", "type", "samples": [(name, labels, value)]}."""
    assert text.endswith("\n")
    families: dict[str, dict[str, object]] = {}
    current: str | None = None
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert re.fullmatch(_NAME, name) and help_text, line
            assert name not in families, f"family {name} declared twice"
            families[name] = {"help": help_text, "samples": []}
            current = name
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert name == current, f"TYPE for {name} must follow its HELP"
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            families[name]["type"] = kind
        else:
            m = _SAMPLE.match(line)
            assert m is not None, f"not a sample line: {line!r}"
            name, labels, value = m.group(1), m.group(2), m.group(3)
            assert current is not None and "type" in families[current], line
            base = current
            if families[current]["type"] == "histogram":
                assert name in (base + "_bucket", base + "_sum", base + "_count"), line
            else:
                assert name == base, f"sample {name} outside its family {base}"
            parsed = float(value)
            assert not math.isnan(parsed)
            samples = families[current]["samples"]
            assert isinstance(samples, list)
            samples.append((name, parse_labels(labels) if labels else {}, parsed))
    return families


class FakeNative(types.ModuleType):
    def __init__(self) -> None:
        super().__init__("veilgate_native")
        self.values = {
            "client_bytes": 1234,
            "server_bytes": 98765,
            "client_messages": 10,
            "server_messages": 40,
        }

    def stats(self) -> dict[str, int]:
        return dict(self.values)

    def latency_histogram(self) -> tuple[list[float], list[int], float, int]:
        return [0.0001, 0.001, 0.01], [1, 5, 7], 0.0421, 8

    hits = 7
    grants = 2

    def verdict_hits(self) -> int:
        return self.hits

    def grant_hits(self) -> int:
        return self.grants


@pytest.fixture
def fake_native(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeNative]:
    fake = FakeNative()
    monkeypatch.setitem(sys.modules, "veilgate_native", fake)
    yield fake


# -- the exposition ------------------------------------------------------------------------------


def test_render_parses_as_prometheus_text(fake_native: FakeNative) -> None:
    families = parse(metrics.render())
    for metric in metrics.REGISTRY:
        assert families[metric.name]["type"] == metric.kind
        assert families[metric.name]["help"] == metric.help
    assert families["veilgate_bytes_received_total"]["samples"] == [
        ("veilgate_bytes_received_total", {"direction": "client"}, 1234.0),
        ("veilgate_bytes_received_total", {"direction": "server"}, 98765.0),
    ]
    hist = families["veilgate_statement_duration_seconds"]
    assert hist["type"] == "histogram"
    samples = hist["samples"]
    assert isinstance(samples, list)
    buckets = [(s[1]["le"], s[2]) for s in samples if s[0].endswith("_bucket")]
    assert buckets == [("0.0001", 1), ("0.001", 5), ("0.01", 7), ("+Inf", 8)]
    assert ("veilgate_statement_duration_seconds_count", {}, 8.0) in samples
    assert families["veilgate_policy_native_verdicts_total"]["samples"] == [
        ("veilgate_policy_native_verdicts_total", {}, 7.0)
    ]


def test_native_grant_hits_count_as_approve_decisions_not_allows(
    fake_native: FakeNative, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "_native_verdicts_counted", 0)
    monkeypatch.setattr(metrics, "_native_grants_counted", 0)
    monkeypatch.setattr(metrics.policy_decisions_total, "values", {})
    monkeypatch.setattr(metrics.approval_checks_total, "values", {})
    metrics._count_native_verdicts()
    decisions, checks = metrics.policy_decisions_total, metrics.approval_checks_total
    assert decisions.get(action="allow") == 5.0  # 7 answered natively, 2 of them on grants
    assert decisions.get(action="approve") == 2.0
    assert checks.get(result="granted") == 2.0
    fake_native.hits, fake_native.grants = 10, 3
    metrics._count_native_verdicts()
    assert decisions.get(action="allow") == 7.0
    assert decisions.get(action="approve") == 3.0
    assert checks.get(result="granted") == 3.0
    metrics._count_native_verdicts()  # nothing new: nothing counted twice
    assert (decisions.get(action="allow"), checks.get(result="granted")) == (7.0, 3.0)


def test_unlabelled_metrics_render_zero_before_use(fake_native: FakeNative) -> None:
    c = metrics.Counter("veilgate_test_unused_total", "Never incremented.")
    assert list(c.render())[-1] == "veilgate_test_unused_total 0"


def test_counter_and_gauge_values() -> None:
    c = metrics.Counter("veilgate_test_events_total", "Events.", ("kind",))
    c.inc(kind="a")
    c.inc(2, kind="a")
    c.inc(kind="b")
    assert c.get(kind="a") == 3 and c.get(kind="b") == 1 and c.get(kind="zzz") == 0
    g = metrics.Gauge("veilgate_test_level", "Level.")
    g.inc(5)
    g.dec(2)
    assert g.get() == 3
    g.set(0.5)
    families = parse("\n".join([*c.render(), *g.render()]) + "\n")
    assert families["veilgate_test_events_total"]["samples"] == [
        ("veilgate_test_events_total", {"kind": "a"}, 3.0),
        ("veilgate_test_events_total", {"kind": "b"}, 1.0),
    ]
    assert families["veilgate_test_level"]["samples"] == [("veilgate_test_level", {}, 0.5)]
    with pytest.raises(ValueError):
        c.inc(other="x")


@pytest.mark.parametrize(
    "value",
    ['say "hi"', "back\\slash", "two\nlines", 'all \\ " \n of them', "ünïcode", ""],
)
def test_label_values_are_escaped(value: str) -> None:
    c = metrics.Counter("veilgate_test_escape_total", "Escaping.", ("reason",))
    c.inc(reason=value)
    text = "\n".join(c.render()) + "\n"
    assert text.count("\n") == 3  # HELP, TYPE, one sample: a newline never splits a line
    (sample,) = parse(text)["veilgate_test_escape_total"]["samples"]  # type: ignore[misc]
    assert sample[1] == {"reason": value}


def test_real_native_engine_renders() -> None:
    pytest.importorskip("veilgate_native")
    families = parse(metrics.render())
    assert "veilgate_bytes_received_total" in families
    assert "veilgate_statement_duration_seconds" in families


# -- the admin server ----------------------------------------------------------------------------


async def http(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


@pytest.mark.asyncio
async def test_admin_healthz_and_metrics(fake_native: FakeNative) -> None:
    sessions = [3]
    health = HealthState(lambda: sessions[0])
    server = AdminServer("127.0.0.1", 0, gateway_routes(health))
    await server.start()
    try:
        assert server.port > 0
        status, headers, body = await http(server.port, get("/healthz"))
        assert status == 200 and headers["content-type"] == "application/json"
        assert json.loads(body) == {"status": "ok", "sessions": 3}
        assert headers["connection"] == "close"
        assert int(headers["content-length"]) == len(body)

        status, headers, body = await http(server.port, get("/metrics?x=1"))
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "veilgate_client_connections_total" in parse(body.decode())

        health.draining = True
        status, _, body = await http(server.port, get("/healthz"))
        assert status == 503 and json.loads(body) == {"status": "draining"}

        status, _, _ = await http(server.port, get("/nope"))
        assert status == 404
        status, headers, body = await http(server.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    finally:
        await server.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"POST /healthz HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 405),
        (b"GET /healthz HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello", 400),
        (b"GET /healthz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"garbage\r\n\r\n", 400),
        (b"GET healthz HTTP/1.1\r\n\r\n", 400),
        (b"GET /healthz HTTP/2.0\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD_BYTES + 100) + b"\r\n\r\n", 413),
        (b"GET /healthz HTTP/1.1\r\n", 400),  # then EOF: incomplete head
    ],
)
async def test_admin_rejects_bad_requests(raw: bytes, expected: int) -> None:
    server = AdminServer("127.0.0.1", 0, gateway_routes(HealthState(lambda: 0)))
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(raw)
        if raw.endswith(b"HTTP/1.1\r\n"):
            writer.write_eof()
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert data.startswith(f"HTTP/1.1 {expected} ".encode()), data[:80]
        # still serving
        status, _, _ = await http(server.port, get("/healthz"))
        assert status == 200
    finally:
        await server.close()


@pytest.mark.asyncio
async def test_admin_handler_error_is_500_and_server_survives() -> None:
    def boom(request: Request) -> Response:
        raise RuntimeError("secret detail")

    async def hello(request: Request) -> Response:
        return Response.text(200, "hi\n")

    server = AdminServer("127.0.0.1", 0, {"/boom": boom, "/hello": hello})
    await server.start()
    try:
        status, _, body = await http(server.port, get("/boom"))
        assert status == 500 and b"secret" not in body
        status, _, body = await http(server.port, get("/hello"))
        assert (status, body) == (200, b"hi\n")
    finally:
        await server.close()


@pytest.mark.asyncio
async def test_admin_slow_client_times_out(monkeypatch: pytest.MonkeyPatch) -> None:
    from veilgate.admin import server as admin_server

    monkeypatch.setattr(admin_server, "READ_TIMEOUT_S", 0.2)
    server = AdminServer("127.0.0.1", 0, gateway_routes(HealthState(lambda: 0)))
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\n")  # never finishes the head
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert data.startswith(b"HTTP/1.1 408 ")
    finally:
        await server.close()


def test_json_log_lines_carry_rfc3339_pid_and_the_session() -> None:
    """Log lines: RFC 3339 UTC timestamps, level, pid; inside a session's context its id,
    tenant, subject, tier and target (explicit fields win); nothing outside it."""
    import io
    import logging

    from veilgate import log

    stream = io.StringIO()
    root = logging.getLogger("veilgate")
    saved = (list(root.handlers), root.level, root.propagate)
    log.setup("debug", "json", stream)
    logger = log.get("test")
    try:
        _log_lines(log, logger, stream)
    finally:
        root.handlers[:], root.propagate = saved[0], saved[2]
        root.setLevel(saved[1])


def _log_lines(log: object, logger: object, stream: object) -> None:
    import contextvars
    import datetime as dt
    import json
    import logging
    import os

    def in_session() -> None:
        ctx = {"session": "0123456789abcdef", "tenant": "t1", "subject": "oid-1"}
        log.SESSION.set(ctx)
        ctx.update(tier="agents", target="app")  # filled in as the session learns them
        log.event(logger, "session_started", target="explicit")

    contextvars.copy_context().run(in_session)
    log.event(logger, "reload", logging.WARNING)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", first["ts"])
    when = dt.datetime.fromisoformat(first["ts"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 60
    assert first["pid"] == os.getpid() and first["level"] == "info"
    assert first["session"] == "0123456789abcdef" and first["subject"] == "oid-1"
    assert (first["tenant"], first["tier"], first["target"]) == ("t1", "agents", "explicit")
    assert second["level"] == "warning" and "session" not in second
