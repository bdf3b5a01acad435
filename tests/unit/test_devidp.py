"""The development IdP: HTTP endpoints, state persistence, `dev-idp` and `dev-token` entries."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import jwt
import pytest
from tests.idp import CTX, FakeClock, running_idp

from veilgate.identity.devidp import DevIdP, dev_idp_main, dev_token_main
from veilgate.identity.http import http_get
from veilgate.identity.oidc import OIDCAuthenticator
from veilgate.identity.providers import TierRule, identity_from_mapping

ROOT = Path(__file__).resolve().parents[2]
RULES = [TierRule("read", login_role="vg_read", any_roles=frozenset({"Db.Read"}))]


@pytest.mark.asyncio
async def test_endpoints_are_entra_shaped() -> None:
    async with running_idp() as idp:
        for version, issuer in [
            ("1.0", f"https://sts.windows.net/{idp.tenant_id}/"),
            ("2.0", f"https://login.microsoftonline.com/{idp.tenant_id}/v2.0"),
        ]:
            r = await http_get(idp.metadata_url(version), allow_insecure_http=True)
            doc = json.loads(r.body)
            assert r.status == 200 and doc["issuer"] == issuer == idp.issuer(version)
            assert doc["jwks_uri"] == idp.jwks_url(version)
            keys = json.loads((await http_get(doc["jwks_uri"], allow_insecure_http=True)).body)
            assert [k["kid"] for k in keys["keys"]] == [idp.signing_kid]
            assert keys["keys"][0]["kty"] == "RSA" and "d" not in keys["keys"][0]
        r = await http_get(idp.base_url + "/nope", allow_insecure_http=True)
        assert r.status == 404
        idp.fail_jwks = True
        r = await http_get(idp.jwks_url(), allow_insecure_http=True)
        assert r.status == 503
        assert idp.counters.discovery == 2 and idp.counters.jwks == 3


def test_mint_claims_shape() -> None:
    idp = DevIdP()
    v2 = jwt.decode(idp.mint("Db.Read"), options={"verify_signature": False})
    assert v2["ver"] == "2.0" and v2["azp"] == idp.client_id and v2["aud"] == idp.app_id
    assert v2["idtyp"] == "app" and v2["oid"] == v2["sub"] and v2["tid"] == idp.tenant_id
    assert {"iat", "nbf", "exp", "uti", "aio", "rh", "azpacr"} <= set(v2)
    v1 = jwt.decode(idp.mint("Db.Read", version="1.0"), options={"verify_signature": False})
    assert v1["ver"] == "1.0" and v1["appid"] == idp.client_id
    assert v1["aud"] == f"api://{idp.app_id}" and v1["iss"].startswith("https://sts.windows.net/")
    agent = jwt.decode(
        idp.mint("Db.Read", version="1.0", agent_id=True), options={"verify_signature": False}
    )
    assert agent["xms_act_fct"] == "11" and "xms_par_app_azp" in agent
    over = jwt.decode(idp.mint(None, overage=True), options={"verify_signature": False})
    assert "roles" not in over and over["_claim_names"] == {"groups": "src1"}


def test_state_roundtrip(tmp_path: Path) -> None:
    idp = DevIdP(port=12345)
    idp.rotate(keep_old=True)
    path = idp.save_state(tmp_path / "st")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = DevIdP.load_state(tmp_path / "st")
    assert (again.tenant_id, again.app_id, again.client_id, again.port) == (
        idp.tenant_id,
        idp.app_id,
        idp.client_id,
        12345,
    )
    assert again.signing_kid == idp.signing_kid and len(again.keys) == 2
    token = again.mint("Db.Read")
    pub = idp.key().private.public_key()
    jwt.decode(token, pub, algorithms=["RS256"], audience=idp.app_id)


@pytest.mark.asyncio
async def test_dev_token_main_mints_for_the_served_idp(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = tmp_path / "idp"
    assert dev_token_main(["--role", "Db.Read", "--state-dir", str(state)]) == 2
    DevIdP(port=0).save_state(state)
    rc = dev_token_main(
        ["--role", "Db.Read", "--ttl", "120", "--state-dir", str(state), "--client-id", "c1"]
    )
    assert rc == 0
    token = capsys.readouterr().out.strip()
    idp = DevIdP.load_state(state)
    await idp.start()
    try:
        auth = OIDCAuthenticator([idp.provider_config()], RULES, clock=FakeClock())
        p = await auth.authenticate(token, CTX)
        assert p.client_app == "c1" and p.roles == {"Db.Read"}
        assert auth.tier_for(p) == RULES[0]
    finally:
        await idp.stop()
    assert dev_token_main(["--role", "x", "--ttl", "0", "--state-dir", str(state)]) == 2


def test_dev_idp_refuses_non_loopback(tmp_path: Path) -> None:
    assert dev_idp_main(["--host", "0.0.0.0", "--state-dir", str(tmp_path)]) == 2


@pytest.mark.asyncio
async def test_dev_idp_process(tmp_path: Path) -> None:
    """`dev-idp` in its own process; `dev-token` here, with the keys it persisted."""
    state = tmp_path / "idp"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "python"))
    code = "import sys; from veilgate.identity.devidp import dev_idp_main; "
    code += "sys.exit(dev_idp_main(sys.argv[1:]))"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "--port",
        "0",
        "--state-dir",
        str(state),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        info = json.loads(line)
        assert info["event"] == "dev_idp_listening"
        settings = identity_from_mapping(
            {
                "providers": [info["provider"]],
                "tiers": [{"tier": "read", "login_role": "vg_read", "any_roles": ["Db.Read"]}],
            }
        )
        auth = OIDCAuthenticator.from_settings(settings)
        idp = DevIdP.load_state(state)
        p = await auth.authenticate(idp.mint("Db.Read", version="1.0"), CTX)
        assert p.tenant == info["tenant_id"]
        assert auth.tier_for(p) is not None
        await auth.aclose()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 10)
    assert rc == 0
