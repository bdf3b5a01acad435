"""The approvers' HTTP API with real OIDC tokens from the development IdP: list, show, approve,
deny; forged, expired and foreign tokens, approvers outside the group, the requester itself and
malformed bodies are refused, and none of them changes a request."""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from tests.integration.approvals_support import (
    JitGateway,
    count,
    jit_gateway,
    make_table,
    policy_text,
    psql,
    request_id,
    wait_for,
)
from tests.integration.conftest import GatewayHandle
from tests.integration.test_oidc_e2e import IdPThread

from veilgate.admin.server import AdminServer
from veilgate.approvals.api import ApprovalsAPI
from veilgate.config_model import AuthConfig, GatewayConfig
from veilgate.identity.combined import GatewayAuthenticator
from veilgate.identity.devidp import DevIdP

pytestmark = pytest.mark.pg

Factory = Callable[..., GatewayHandle]

OIDC_TIERS = [
    {"tier": "agents", "any_roles": ["agent"]},
    {"tier": "approvers", "login_role": "vg_no_login", "any_roles": ["Db.Approver"]},
    {"tier": "readers", "login_role": "vg_no_login", "any_roles": ["Db.Read"]},
]


@pytest.fixture(scope="module")
def idp() -> Iterator[DevIdP]:
    with IdPThread() as served:
        yield served


class Api:
    def __init__(self, port: int) -> None:
        self.port = port

    def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        h = dict(headers or {})
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        if body is not None:
            h.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=h)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        ctype = resp.getheader("Content-Type", "")
        parsed: Any = json.loads(data) if "json" in ctype and data else data
        return resp.status, parsed, {k.lower(): v for k, v in resp.getheaders()}


@pytest.fixture
def api_jit(
    gateway_factory: Factory, tmp_path: Path, idp: DevIdP
) -> Iterator[tuple[JitGateway, Api, DevIdP]]:
    holder: list[GatewayAuthenticator] = []

    def with_oidc(cfg: GatewayConfig) -> GatewayConfig:
        oidc = {
            "providers": [idp.provider_mapping()],
            "tiers": OIDC_TIERS,
            "rate_limit": {"enabled": False},
        }
        out = replace(cfg, auth=AuthConfig(static_tokens=cfg.auth.static_tokens, oidc=oidc))
        holder.append(GatewayAuthenticator.from_config(out))
        return out

    class Lazy:
        async def authenticate(self, token: str, ctx: Any) -> Any:
            return await holder[0].authenticate(token, ctx)

        def grant_for(self, principal: Any) -> Any:
            return holder[0].grant_for(principal)

    jit = jit_gateway(
        gateway_factory, tmp_path, policy_text(), authenticator=Lazy(), transform=with_oidc
    )
    thread = jit.handle.thread
    assert thread.call(holder[0].prefetch())
    api = ApprovalsAPI(jit.service(), holder[0])

    async def start() -> AdminServer:
        server = AdminServer("127.0.0.1", 0, {}, [api.router()])
        await server.start()
        return server

    server = thread.call(start())
    try:
        yield jit, Api(server.port), idp
    finally:
        thread.call(server.close())


def _pending(jit: JitGateway, pg_cluster: Any) -> tuple[str, str]:
    table = make_table(pg_cluster)
    rid = request_id(psql(jit.target(), f"DELETE FROM {table} WHERE id = 1").stderr)
    return rid, table


def test_list_show_approve_with_an_oidc_token(
    api_jit: tuple[JitGateway, Api, DevIdP], pg_cluster: Any
) -> None:
    jit, api, idp = api_jit
    rid, table = _pending(jit, pg_cluster)
    approver = idp.mint(roles=["Db.Approver"], client_id="approver-app")
    status, body, _ = api.call("GET", "/v1/approvals", approver)
    assert status == 200 and [a["id"] for a in body["approvals"]] == [rid]
    item = body["approvals"][0]
    assert item["status"] == "pending" and item["sql"] == f"DELETE FROM {table} WHERE id = 1"
    assert item["principal"] == "static:agent" and item["required"] == 1
    status, body, _ = api.call("GET", f"/v1/approvals/{rid}", approver)
    assert status == 200 and body["id"] == rid
    status, body, _ = api.call(
        "POST", f"/v1/approvals/{rid}/approve", approver, json.dumps({"comment": "LGTM"}).encode()
    )
    assert status == 200, body
    assert body["status"] == "approved" and body["counted"] is True
    assert body["votes"][0]["comment"] == "LGTM"
    assert body["votes"][0]["approver"].startswith("dev-entra:")
    assert psql(jit.target(), f"DELETE FROM {table} WHERE id = 1").returncode == 0
    assert count(pg_cluster, table) == 2
    # the vote is audited with the approver's identity and comment
    wait_for(lambda: jit.approval_events("vote"), what="vote event")
    vote = jit.approval_events("vote")[0]
    assert vote["approver"].startswith("dev-entra:") and vote["comment"] == "LGTM"
    assert vote["via"] == "api"
    # decided: a second vote is a conflict
    status, body, _ = api.call("POST", f"/v1/approvals/{rid}/deny", approver)
    assert status == 409 and body["error"] == "closed"
    # the OpenAPI document is served and parses
    status, doc, _ = api.call("GET", "/v1/openapi/approvals.yaml")
    assert status == 200 and "/v1/approvals/{id}/approve" in yaml.safe_load(doc)["paths"]


def test_revoke_through_the_api_ends_the_grant(
    api_jit: tuple[JitGateway, Api, DevIdP], pg_cluster: Any
) -> None:
    jit, api, idp = api_jit
    rid, table = _pending(jit, pg_cluster)
    approver = idp.mint(roles=["Db.Approver"], client_id="approver-app")
    status, body, _ = api.call("POST", f"/v1/approvals/{rid}/approve", approver)
    assert status == 200 and body["status"] == "approved"
    # no token, a stranger (not an approver, not the requester): nothing revoked
    assert api.call("POST", f"/v1/approvals/{rid}/revoke")[0] == 401
    reader = idp.mint(roles=["Db.Read"], client_id="reader-app")
    assert api.call("POST", f"/v1/approvals/{rid}/revoke", reader)[0] == 404
    bad = api.call("POST", f"/v1/approvals/{rid}/revoke", approver, b"[1]")
    assert bad[0] == 400
    status, body, _ = api.call(
        "POST", f"/v1/approvals/{rid}/revoke", approver, json.dumps({"comment": "oops"}).encode()
    )
    assert status == 200 and body["revoked"] is True and body["grant_id"].startswith("gr-")
    status, body, _ = api.call("POST", f"/v1/approvals/{rid}/revoke", approver)
    assert status == 409 and body["error"] == "closed"
    # the approved statement no longer runs: a new request
    out = psql(jit.target(), f"DELETE FROM {table} WHERE id = 1")
    assert "42Z01" in out.stderr and request_id(out.stderr) != rid
    assert count(pg_cluster, table) == 3
    revoked = jit.approval_events("grant_revoked")
    assert [e["request_id"] for e in revoked] == [rid]
    status, doc, _ = api.call("GET", "/v1/openapi/approvals.yaml")
    assert "/v1/approvals/{id}/revoke" in yaml.safe_load(doc)["paths"]


def test_bad_tokens_are_401_and_change_nothing(
    api_jit: tuple[JitGateway, Api, DevIdP], pg_cluster: Any
) -> None:
    jit, api, idp = api_jit
    rid, table = _pending(jit, pg_cluster)
    good = idp.mint(roles=["Db.Approver"], client_id="approver-app")
    head, _payload, sig = good.split(".")
    forged_payload = idp.mint(roles=["Db.Approver", "Db.Admin"], client_id="approver-app")
    forged = ".".join([head, forged_payload.split(".")[1], sig])  # claims changed, old signature
    expired = idp.mint(roles=["Db.Approver"], client_id="approver-app", ttl=-600)
    static_agent = jit.tokens["agent"]  # a valid client token, but not an approver
    for token, expected in (
        (None, 401),
        ("", 401),
        ("not-a-jwt", 401),
        (forged, 401),
        (expired, 401),
        (sig, 401),
        (static_agent, 403),
    ):
        headers = {"Authorization": "Basic YWJjOmRlZg=="} if token == "" else None
        status, body, hdrs = api.call(
            "POST",
            f"/v1/approvals/{rid}/approve",
            token if token else None,
            b"{}",
            headers,
        )
        assert status == expected, (token and token[:20], status, body)
        if expected == 401:
            assert hdrs.get("www-authenticate", "").startswith("Bearer")
            assert body["error"] == "unauthorized"
    status, body, _ = api.call("GET", f"/v1/approvals/{rid}", good)
    assert status == 200 and body["status"] == "pending" and body["votes"] == []
    assert psql(jit.target(), f"DELETE FROM {table} WHERE id = 1").returncode != 0


def test_approver_outside_the_group_and_the_requester_are_refused(
    api_jit: tuple[JitGateway, Api, DevIdP], pg_cluster: Any
) -> None:
    jit, api, idp = api_jit
    rid, table = _pending(jit, pg_cluster)
    reader = idp.mint(roles=["Db.Read"], client_id="reader-app")
    status, body, _ = api.call("POST", f"/v1/approvals/{rid}/approve", reader)
    assert status == 403 and body["error"] == "not_an_approver"
    # it does not even see the request
    status, body, _ = api.call("GET", "/v1/approvals", reader)
    assert status == 200 and body["approvals"] == []
    assert api.call("GET", f"/v1/approvals/{rid}", reader)[0] == 404

    # an OIDC agent that is also an approver asks, then tries to approve its own request
    selfish = idp.mint(roles=["agent", "Db.Approver"], client_id="selfish-agent")
    dsn = jit.target().conninfo(password=selfish)
    with psycopg.connect(dsn, autocommit=True) as conn:
        with pytest.raises(psycopg.Error) as info:
            conn.execute(f"DELETE FROM {table} WHERE id = 2")
        own = request_id(str(info.value))
    status, body, _ = api.call("POST", f"/v1/approvals/{own}/approve", selfish)
    assert status == 403 and body["error"] == "self_approval"
    # it sees its own request (and may approve the other agent's)
    status, body, _ = api.call("GET", "/v1/approvals", selfish)
    assert {a["id"] for a in body["approvals"]} == {rid, own}
    assert count(pg_cluster, table) == 3


def test_malformed_requests_are_400(
    api_jit: tuple[JitGateway, Api, DevIdP], pg_cluster: Any
) -> None:
    jit, api, idp = api_jit
    rid, _ = _pending(jit, pg_cluster)
    token = idp.mint(roles=["Db.Approver"], client_id="approver-app")
    path = f"/v1/approvals/{rid}/approve"
    for body in (
        b"not json",
        b"[1, 2]",
        b'{"comment": 5}',
        b'{"comment": "x", "approve": true}',
        json.dumps({"comment": "x" * 2001}).encode(),
        b"\xff\xfe",
    ):
        status, resp, _ = api.call("POST", path, token, body)
        assert status == 400 and resp["error"] == "bad_request", (body[:20], resp)
    assert api.call("POST", path, token, b"x" * (70 * 1024))[0] == 413
    assert api.call("POST", path, token, None, {"Transfer-Encoding": "chunked"})[0] == 411
    assert api.call("GET", "/v1/approvals?status=nope", token)[0] == 400
    assert api.call("GET", "/v1/approvals?limit=0", token)[0] == 400
    assert api.call("GET", "/v1/approvals/ap-unknown0000000000", token)[0] == 404
    assert api.call("POST", "/v1/approvals/ap-unknown0000000000/approve", token)[0] == 404
    status, _, hdrs = api.call("DELETE", f"/v1/approvals/{rid}", token)
    assert status == 405 and "GET" in hdrs["allow"]
    assert api.call("PUT", path, token)[0] == 405
    status, body, _ = api.call("GET", f"/v1/approvals/{rid}", token)
    assert body["status"] == "pending" and body["votes"] == []


def test_cli_approves_as_the_principal_of_an_oidc_token(
    api_jit: tuple[JitGateway, Api, DevIdP], pg_cluster: Any, tmp_path: Path
) -> None:
    import hashlib
    import os

    from tests.integration.approvals_support import run_cli

    jit, _, idp = api_jit
    rid, table = _pending(jit, pg_cluster)
    cfg = tmp_path / "cli.yaml"
    oidc = {
        "providers": [idp.provider_mapping()],
        "tiers": OIDC_TIERS,
        "rate_limit": {"enabled": False},
    }
    cfg.write_text(
        yaml.safe_dump(
            {
                "tls": {"allow_plaintext_loopback": True},
                "auth": {
                    "static_tokens": [
                        {"name": "t", "sha256": hashlib.sha256(b"unused").hexdigest()}
                    ],
                    "oidc": oidc,
                },
                "targets": {"app": {"host": "127.0.0.1", "tls": {"mode": "disable"}}},
                "state": {"path": jit.state.path},
            }
        )
    )

    def cli(token: str, *extra: str) -> Any:
        env = {**os.environ, "VG_APPROVER_TOKEN": token}
        return run_cli(
            "approve",
            rid,
            "--config",
            str(cfg),
            "--token-env",
            "VG_APPROVER_TOKEN",
            *extra,
            check=False,
            env=env,
        )

    reader = cli(idp.mint(roles=["Db.Read"], client_id="reader-app"))
    assert reader.returncode == 1 and "not among the approvers" in reader.stderr
    expired = cli(idp.mint(roles=["Db.Approver"], client_id="approver-app", ttl=-600))
    assert expired.returncode == 1 and "token was not accepted" in expired.stderr
    token = idp.mint(roles=["Db.Approver"], client_id="approver-app")
    ok = cli(token, "-m", "checked")
    assert ok.returncode == 0 and "approved" in ok.stdout, ok.stderr
    assert token not in ok.stdout + ok.stderr
    shown = jit.cli("show", rid).stdout
    assert "approve by dev-entra:" in shown and "via cli: checked" in shown
    assert psql(jit.target(), f"DELETE FROM {table} WHERE id = 1").returncode == 0
