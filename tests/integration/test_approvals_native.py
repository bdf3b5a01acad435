"""Standing grants answered by the native verdict cache (issue 13's fast path), and the attacks
on it: a grant without a use limit runs its Query texts without Python after its first uses,
each use still counted (with the decision log on, uses go through Python and each is audited
once); it stops at once when it expires, is revoked (the CLI is another process, as another
gateway would be), or the policy is reloaded; grants with a use limit are never cached, so
sessions racing for a single-use grant get exactly one run."""

# ruff: noqa: S608 (SQL built from table names the tests generate)
from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import veilgate_native
from tests.integration.approvals_support import (
    POLICY_TEMPLATE,
    JitGateway,
    count,
    jit_gateway,
    make_table,
    policy_text,
    request_id,
    wait_for,
)
from tests.integration.conftest import GatewayHandle

from veilgate.config_model import GatewayConfig

pytestmark = pytest.mark.pg

Factory = Callable[..., GatewayHandle]


def _standing(
    gateway_factory: Factory, tmp_path: Path, transform: Any = None, **kw: Any
) -> JitGateway:
    """Approve rules on jit_ writes with grants of unlimited uses (``grant_uses: 0``)."""
    return jit_gateway(
        gateway_factory, tmp_path, policy_text(grant_uses=0, **kw), transform=transform
    )


async def _connect(jit: JitGateway, who: str = "agent") -> asyncpg.Connection:
    return await asyncpg.connect(**jit.target(who).asyncpg_kwargs())


async def _simple(conn: asyncpg.Connection, sql: str) -> str | None:
    """``sql`` as a simple Query (asyncpg's execute without arguments): None if it ran, else
    the SQLSTATE."""
    try:
        await conn.execute(sql)
    except asyncpg.PostgresError as e:
        return str(e.sqlstate)
    return None


async def _ask(jit: JitGateway, sql: str, who: str = "agent") -> str:
    conn = await _connect(jit, who)
    try:
        try:
            await conn.execute(sql)
        except asyncpg.PostgresError as e:
            assert e.sqlstate == "42Z01", e
            return request_id(str(e))
        raise AssertionError(f"{sql!r} ran without approval")
    finally:
        await conn.close()


def _uses_in_store(jit: JitGateway, rid: str) -> int:
    async def go() -> int:
        from veilgate.approvals.store import ApprovalStore
        from veilgate.state import open_state

        db = open_state(jit.state)
        try:
            grant = await ApprovalStore(db).grant_of(rid)
            assert grant is not None
            return grant.uses
        finally:
            await db.close()

    return asyncio.run(go())


def _target_decisions() -> dict[str, float]:
    """``veilgate_statement_decisions_total`` summed over targets and tiers, by decision."""
    from veilgate import metrics

    out = {"allow": 0.0, "approve": 0.0}
    for m in re.finditer(
        r'^veilgate_statement_decisions_total\{[^}]*decision="(\w+)"[^}]*\} (\S+)$',
        metrics.render(),
        re.M,
    ):
        out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
    return out


def _no_decision_log(cfg: GatewayConfig) -> GatewayConfig:
    assert cfg.policy is not None
    return replace(cfg, policy=replace(cfg.policy, audit_log=None))


def _uses(jit: JitGateway, table: str, upd: str, n: int) -> int:
    """Run ``upd`` and a same-shape statement ``n`` times each in one session; the Queries
    the native verdict cache answered on grants."""
    before = veilgate_native.grant_hits()

    async def run() -> None:
        conn = await _connect(jit)
        try:
            for i in range(n):
                # constants do not count (match_constants: false): another id is the same grant
                assert await _simple(conn, upd) is None
                other = f"UPDATE {table} SET v = v || '+' WHERE id = {i + 2}"
                assert await _simple(conn, other) is None
        finally:
            await conn.close()

    asyncio.run(run())
    return veilgate_native.grant_hits() - before


def test_standing_grant_runs_natively_each_use_counted(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    """No decision log: after the first two runs (the store, then memory), every run of the
    grant's shape is answered natively; each is counted in the store."""
    jit = jit_gateway(
        gateway_factory,
        tmp_path,
        policy_text(grant_uses=0, constants=False),
        transform=_no_decision_log,
    )
    table = make_table(pg_cluster, rows=1)
    upd = f"UPDATE {table} SET v = v || '+' WHERE id = 1"
    rid = asyncio.run(_ask(jit, upd))
    jit.cli("approve", rid, "--as", "alice")
    n = 25
    before = _target_decisions()
    native = _uses(jit, table, upd, n)
    after = _target_decisions()
    assert pg_cluster.execute(f"SELECT v FROM {table} WHERE id = 1", "app") == "v1" + "+" * n
    assert native == 2 * n - 2, native
    # the per-target decision counts file the native runs as approve decisions, not allows
    assert after["approve"] - before["approve"] == 2 * n
    assert after["allow"] - before["allow"] < n
    # counted in the store (the sweeper adds the native counts)
    wait_for(lambda: _uses_in_store(jit, rid) == 2 * n, what="uses in the store")
    # another principal cannot ride on the cached entry
    other = asyncio.run(_ask(jit, upd, "agent2"))
    assert other != rid
    assert pg_cluster.execute(f"SELECT v FROM {table} WHERE id = 1", "app") == "v1" + "+" * n


def test_standing_grant_with_a_decision_log_audits_each_use_once(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    """With the decision log (written natively for allowed Queries) a grant's uses are not
    answered natively (its entries have no log line): each use is audited, exactly once."""
    jit = _standing(gateway_factory, tmp_path, constants=False)
    table = make_table(pg_cluster, rows=1)
    upd = f"UPDATE {table} SET v = v || '+' WHERE id = 1"
    rid = asyncio.run(_ask(jit, upd))
    jit.cli("approve", rid, "--as", "alice")
    n = 10
    native = _uses(jit, table, upd, n)
    assert native == 0
    wait_for(lambda: len(jit.approval_events("grant_used")) == 2 * n, what="grant_used events")
    assert {e["request_id"] for e in jit.approval_events("grant_used")} == {rid}
    approve = [e for e in jit.audit() if e.get("kind") != "approval" and e["action"] == "approve"]
    assert len(approve) == 2 * n + 1  # the refused first try, then every run once
    wait_for(lambda: _uses_in_store(jit, rid) == 2 * n, what="uses in the store")


def test_revoke_while_cached_stops_the_next_use(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    """``veilgate approvals revoke`` runs in another process (as another gateway would): its
    notification makes this gateway drop the cached grant; nothing runs on it after that."""
    jit = _standing(gateway_factory, tmp_path, transform=_no_decision_log)
    table = make_table(pg_cluster, rows=1)
    upd = f"UPDATE {table} SET v = v || '+' WHERE id = 1"
    rid = asyncio.run(_ask(jit, upd))
    jit.cli("approve", rid, "--as", "bob")
    service = jit.service()

    async def run() -> None:
        conn = await _connect(jit)
        try:
            before = veilgate_native.grant_hits()
            for _ in range(4):  # the store, then from memory (remembered natively), natively
                assert await _simple(conn, upd) is None
            assert veilgate_native.grant_hits() - before >= 2  # cached natively
            out = await asyncio.to_thread(jit.cli, "revoke", rid, "--as", "carol")
            assert "revoked" in out.stdout
            await asyncio.to_thread(
                wait_for, lambda: not service._handles, what="the grant dropped"
            )
            # the open session's next run: refused, a new request
            err = await _simple(conn, upd)
            assert err == "42Z01"
        finally:
            await conn.close()

    asyncio.run(run())
    assert pg_cluster.execute(f"SELECT v FROM {table} WHERE id = 1", "app") == "v1++++"
    again = jit.cli("revoke", rid, check=False)
    assert again.returncode == 1 and "no live grant" in again.stderr
    wait_for(lambda: _uses_in_store(jit, rid) == 4, what="uses in the store")


def test_expiry_while_cached_refuses_at_the_deadline(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    jit = _standing(gateway_factory, tmp_path, grant_ttl=2.0, transform=_no_decision_log)
    table = make_table(pg_cluster, rows=1)
    upd = f"UPDATE {table} SET v = v || '+' WHERE id = 1"
    rid = asyncio.run(_ask(jit, upd))
    jit.cli("approve", rid, "--as", "bob")
    approved_at = time.monotonic()

    async def run() -> int:
        conn = await _connect(jit)
        runs = 0
        before = veilgate_native.grant_hits()
        try:
            while time.monotonic() - approved_at < 1.0:
                assert await _simple(conn, upd) is None
                runs += 1
            assert veilgate_native.grant_hits() - before >= runs - 2  # cached natively
            await asyncio.sleep(max(0.0, approved_at + 2.3 - time.monotonic()))
            # past the grant's expiry: no entry answers, the store refuses, a new request
            assert await _simple(conn, upd) == "42Z01"
        finally:
            await conn.close()
        return runs

    runs = asyncio.run(run())
    assert runs >= 3
    assert pg_cluster.execute(f"SELECT v FROM {table} WHERE id = 1", "app") == "v1" + "+" * runs


def test_policy_reload_drops_cached_grants(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    """A reload that denies the statement outright wins over a grant cached natively."""
    from tests.integration.conftest import wait_policy_generation

    jit = _standing(gateway_factory, tmp_path, transform=_no_decision_log)
    table = make_table(pg_cluster, rows=1)
    upd = f"UPDATE {table} SET v = v || '+' WHERE id = 1"
    rid = asyncio.run(_ask(jit, upd))
    jit.cli("approve", rid, "--as", "bob")
    engine = jit.handle.thread.gateway.policy_engine  # type: ignore[union-attr]
    # v2: the jit rule denies (no approval section)
    v2 = (
        POLICY_TEMPLATE.replace("APPROVE", "")
        .replace("ELEVATION_TTL", "600")
        .replace(
            "      - id: agent-jit-write\n        action: approve",
            "      - id: agent-jit-write\n        action: deny",
        )
    )
    assert "action: approve" not in v2

    async def run() -> None:
        conn = await _connect(jit)
        try:
            before = veilgate_native.grant_hits()
            for _ in range(4):
                assert await _simple(conn, upd) is None
            assert veilgate_native.grant_hits() - before >= 2  # cached natively
            generation = engine.generation
            jit.policy_file.write_text(v2)
            await asyncio.to_thread(wait_policy_generation, jit.handle, generation + 1)
            assert await _simple(conn, upd) == "42501"
        finally:
            await conn.close()

    asyncio.run(run())
    assert pg_cluster.execute(f"SELECT v FROM {table} WHERE id = 1", "app") == "v1++++"


@pytest.mark.parametrize("uses", [1, 3])
def test_sessions_racing_a_counted_grant_get_exactly_its_uses(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any, uses: int
) -> None:
    """Counted grants are never cached: 12 sessions (each sending the statement twice) race;
    exactly ``uses`` runs happen, every other try is refused with 42Z01."""
    jit = jit_gateway(gateway_factory, tmp_path, policy_text(grant_uses=uses))
    table = make_table(pg_cluster, rows=1)
    upd = f"UPDATE {table} SET v = v || '+' WHERE id = 1"
    rid = asyncio.run(_ask(jit, upd))
    jit.cli("approve", rid, "--as", "bob")
    before = veilgate_native.grant_hits()

    async def race() -> list[str | None]:
        conns = await asyncio.gather(*(_connect(jit) for _ in range(12)))
        try:
            start = asyncio.Event()

            async def one(c: asyncpg.Connection) -> list[str | None]:
                await start.wait()
                return [await _simple(c, upd), await _simple(c, upd)]

            tasks = [asyncio.create_task(one(c)) for c in conns]
            start.set()
            return [r for rs in await asyncio.gather(*tasks) for r in rs]
        finally:
            await asyncio.gather(*(c.close() for c in conns))

    results = asyncio.run(race())
    assert results.count(None) == uses, results
    assert set(results) - {None} == {"42Z01"}
    assert pg_cluster.execute(f"SELECT v FROM {table} WHERE id = 1", "app") == "v1" + "+" * uses
    assert veilgate_native.grant_hits() == before  # never answered natively
    assert _uses_in_store(jit, rid) == uses
    assert count(pg_cluster, table) == 1


def test_prepared_statement_on_a_standing_grant_ignoring_constants(
    gateway_factory: Factory, tmp_path: Path, pg_cluster: Any
) -> None:
    """Each Bind of a statement whose rule ignores constants runs on the grant held in memory
    (its fingerprint from the parameter count only); every run counted; the same statement
    with more parameters is another statement."""
    jit = jit_gateway(
        gateway_factory,
        tmp_path,
        policy_text(grant_uses=0, constants=False),
        transform=_no_decision_log,
    )
    table = make_table(pg_cluster, rows=1)
    upd = f"UPDATE {table} SET v = v || $1 WHERE id = $2"

    async def run() -> tuple[str, int]:
        conn = await _connect(jit)
        try:
            try:
                await conn.execute(upd, "+", 1)
            except asyncpg.PostgresError as e:
                assert e.sqlstate == "42Z01"
                rid = request_id(str(e))
            else:
                raise AssertionError("ran without approval")
            await asyncio.to_thread(jit.cli, "approve", rid, "--as", "bob")
            for i in range(12):
                assert await conn.execute(upd, "+", 1 if i % 2 == 0 else 100 + i) in (
                    "UPDATE 1",
                    "UPDATE 0",
                )
            three = f"UPDATE {table} SET v = v || $1 || $3 WHERE id = $2"
            try:
                await conn.execute(three, "+", 1, "")
            except asyncpg.PostgresError as e:
                assert e.sqlstate == "42Z01" and request_id(str(e)) != rid
            else:
                raise AssertionError("another statement ran on the grant")
            return rid, 12
        finally:
            await conn.close()

    rid, n = asyncio.run(run())
    assert pg_cluster.execute(f"SELECT v FROM {table} WHERE id = 1", "app") == "v1" + "+" * 6
    wait_for(lambda: _uses_in_store(jit, rid) == n, what="uses in the store")
