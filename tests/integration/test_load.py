"""Load: many concurrent clients through one gateway; a 1 GiB result with bounded gateway memory."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from tests.integration import pgwire as pw

pytestmark = [pytest.mark.pg, pytest.mark.slow]

CLIENTS = 200


# --- 200 concurrent clients ----------------------------------------------------------------------


async def _client(t: pw.Target, i: int, barrier: asyncio.Barrier) -> list[Any]:
    conn = await asyncpg.connect(**t.asyncpg_kwargs(timeout=90))
    try:
        await barrier.wait()  # all connected at the same time
        out: list[Any] = []
        out.append(await conn.fetchval("select $1::int8 * 2", i))
        out.append(await conn.fetchval("select count(*) from customers"))
        stmt = await conn.prepare("select g, md5(g::text) from generate_series(1, $1::int) g")
        rows = await stmt.fetch(100 + i)
        out.append((len(rows), rows[-1][0]))
        async with conn.transaction():
            await conn.execute("create temp table t (x int) on commit drop")
            await conn.executemany("insert into t values ($1)", [(k,) for k in range(20)])
            out.append(await conn.fetchval("select sum(x) from t"))
        out.append(await conn.fetchval("select pg_backend_pid()"))
        await barrier.wait()  # and still all connected here
        return out
    finally:
        await conn.close()


@pytest.mark.asyncio
@pytest.mark.timeout(240)
async def test_200_concurrent_asyncpg_clients(gw: pw.Target, pg_cluster: Any) -> None:
    direct = pw.direct_target(pg_cluster)
    ref_conn = await asyncpg.connect(**direct.asyncpg_kwargs())
    try:
        customers = await ref_conn.fetchval("select count(*) from customers")
        max_conn = int(await ref_conn.fetchval("show max_connections"))
    finally:
        await ref_conn.close()
    assert max_conn >= CLIENTS + 20, "the test cluster needs max_connections >= 220"
    barrier = asyncio.Barrier(CLIENTS)
    t0 = time.monotonic()
    results = await asyncio.gather(
        *(_client(gw, i, barrier) for i in range(CLIENTS)), return_exceptions=True
    )
    elapsed = time.monotonic() - t0
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, f"{len(errors)} clients failed, first: {errors[0]!r}"
    for i, r in enumerate(results):
        assert isinstance(r, list)
        assert r[:4] == [i * 2, customers, (100 + i, 100 + i), sum(range(20))]
    # 200 distinct upstream backends: one per client session.
    assert len({r[4] for r in results if isinstance(r, list)}) == CLIENTS
    assert elapsed < 180


# --- 1 GiB through a gateway process -------------------------------------------------------------


ROWS = 1_100_000
WIDTH = 1000
BIG_COPY = f"copy (select repeat('x', {WIDTH}) from generate_series(1, {ROWS})) to stdout"  # noqa: S608
MIB = 1 << 20


def _status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM of ``pid`` in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        m = re.match(r"(VmRSS|VmHWM):\s+(\d+) kB", line)
        if m:
            out[m.group(1)] = int(m.group(2)) * 1024
    return out


def _yaml_str(v: object) -> str:
    return json.dumps(str(v))  # JSON strings are valid YAML scalars


def _write_config(gateway: Any, path: Path) -> None:
    cfg = gateway.config
    target = cfg.targets[gateway.dbname]
    tokens = "\n".join(
        f"    - name: {_yaml_str(t.name)}\n      sha256: {_yaml_str(t.sha256)}"
        for t in cfg.auth.static_tokens
    )
    tls_lines = [f"      mode: {target.tls.mode.value}"]
    if target.tls.ca_file is not None:
        tls_lines.append(f"      ca_file: {_yaml_str(target.tls.ca_file)}")
    if target.tls.server_name is not None:
        tls_lines.append(f"      server_name: {_yaml_str(target.tls.server_name)}")
    tls_block = "\n".join(tls_lines)
    path.write_text(
        f"""listen:
  host: 127.0.0.1
  port: 0
tls:
  cert_file: {_yaml_str(cfg.tls.cert_file)}
  key_file: {_yaml_str(cfg.tls.key_file)}
admin:
  enabled: false
auth:
  static_tokens:
{tokens}
targets:
  {gateway.dbname}:
    host: {_yaml_str(target.host)}
    port: {target.port}
    dbname: {_yaml_str(target.dbname)}
    user: {_yaml_str(target.user)}
    password_env: {_yaml_str(target.password_env)}
    tls:
{tls_block}
logging:
  level: info
  format: json
"""
    )


class GatewayProcess:
    def __init__(self, proc: subprocess.Popen[str], port: int, log: list[str]) -> None:
        self.proc = proc
        self.port = port
        self.log = log


@pytest.fixture
def gateway_process(gateway: Any, tmp_path: Path) -> Iterator[GatewayProcess]:
    """``python -m veilgate serve`` in its own process, configured like the ``gateway`` fixture."""
    import veilgate

    config = tmp_path / "veilgate.yaml"
    _write_config(gateway, config)
    env = dict(os.environ)  # holds the upstream password variable the gateway fixture set
    src = str(Path(veilgate.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "veilgate", "serve", "--config", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stderr is not None
    log: list[str] = []
    port: list[int] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log.append(line)
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if ev.get("event") == "ready" and not ready.is_set():
                port.append(int(ev["port"]))
                ready.set()
        ready.set()

    pump_thread = threading.Thread(target=pump, daemon=True)
    pump_thread.start()
    ready.wait(60)
    if not port:
        proc.kill()
        pytest.fail("the gateway process did not get ready:\n" + "".join(log[-30:]))
    try:
        yield GatewayProcess(proc, port[0], log)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        pump_thread.join(5)


def _psql_copy_count(t: pw.Target, sql: str) -> tuple[int, int]:
    """Run a COPY TO STDOUT with psql, count the bytes it writes (read in chunks)."""
    proc = subprocess.Popen(
        ["psql", t.conninfo(with_password=False), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql],
        env=t.psql_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    total = 0
    newlines = 0
    while True:
        chunk = proc.stdout.read(4 * MIB)
        if not chunk:
            break
        total += len(chunk)
        newlines += chunk.count(b"\n")
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 0, err
    return total, newlines


def _slow_partial_read(t: pw.Target, sql: str, read_bytes: int, seconds: float) -> None:
    """A slow client: read ``read_bytes`` of a big result over ``seconds``, then hang up."""
    with pw.connect(t.endpoint()) as c:
        c.send(pw.query(sql))
        got = 0
        step = 256 * 1024
        pause = seconds / max(1, read_bytes // step)
        while got < read_bytes:
            got += len(c.read_bytes(min(step, read_bytes - got), timeout=30))
            time.sleep(pause)


@pytest.mark.timeout(300)
def test_1gib_result_streams_with_bounded_gateway_memory(
    gateway: Any, gateway_process: GatewayProcess
) -> None:
    base = pw.gateway_target(gateway)
    t = pw.Target(**{**base.__dict__, "port": gateway_process.port})
    pid = gateway_process.proc.pid

    # Warm up: connections, TLS, a medium result; then take the baseline.
    for _ in range(3):
        warm = f"copy (select repeat('w', {WIDTH}) from generate_series(1, 20000)) to stdout"  # noqa: S608
        assert _psql_copy_count(t, warm) == (20000 * (WIDTH + 1), 20000)
    with pw.connect(t.endpoint()) as c:
        assert c.scalar("select 'warm'") == "warm"
    before = _status(pid)

    # A slow client: the gateway must stop reading from upstream instead of buffering.
    _slow_partial_read(
        t,
        f"select repeat('s', {WIDTH}) from generate_series(1, 400000)",  # noqa: S608
        48 * MIB,
        3.0,
    )
    after_slow = _status(pid)

    # The full 1 GiB, as fast as psql can take it.
    t0 = time.monotonic()
    total, lines = _psql_copy_count(t, BIG_COPY)
    elapsed = time.monotonic() - t0
    after = _status(pid)

    assert (total, lines) == (ROWS * (WIDTH + 1), ROWS)
    assert total >= 1 << 30
    growth_slow = after_slow["VmHWM"] - before["VmHWM"]
    growth = after["VmHWM"] - before["VmHWM"]
    report = (
        f"baseline HWM {before['VmHWM'] / MIB:.1f} MiB, after slow client +{growth_slow / MIB:.1f}"
        f" MiB, after 1 GiB +{growth / MIB:.1f} MiB ({total / MIB / elapsed:.0f} MiB/s)"
    )
    print(report)
    assert growth_slow < 32 * MIB, report
    assert growth < 32 * MIB, report
    # The gateway is still healthy and serving.
    with pw.connect(t.endpoint()) as c:
        assert c.scalar("select 'after 1 GiB'") == "after 1 GiB"
    assert gateway_process.proc.poll() is None


def _target_for(gateway: Any, proc: GatewayProcess) -> pw.Target:
    base = pw.gateway_target(gateway)
    return pw.Target(**{**base.__dict__, "port": proc.port})


def _warm_up(t: pw.Target) -> None:
    for _ in range(2):
        with pw.connect(t.endpoint()) as c:
            c.send(pw.query("select repeat('w', 100000) from generate_series(1, 100)"))
            tags, size, _ = c.skim_until_ready()
            assert tags == "T" + "D" * 100 + "CZ"
            assert size > 100 * 100000


@pytest.mark.timeout(180)
def test_huge_single_values_stream_with_bounded_gateway_memory(
    gateway: Any, gateway_process: GatewayProcess
) -> None:
    """One DataRow (and one CopyData) of 256 MiB: forwarded in pieces, never buffered whole."""
    t = _target_for(gateway, gateway_process)
    pid = gateway_process.proc.pid
    _warm_up(t)
    before = _status(pid)
    size = 256 * MIB
    with pw.connect(t.endpoint()) as c:
        t0 = time.monotonic()
        c.send(pw.query(f"select repeat('h', {size})"))
        tags, total, kept = c.skim_until_ready()
        assert tags == "TDCZ"
        assert total > size
        t1 = time.monotonic()
        c.send(pw.query(f"copy (select repeat('c', {size})) to stdout"))
        tags, total, kept = c.skim_until_ready()
        assert tags == "HdcCZ"
        assert total > size
        assert pw.command_tag(kept[-2].body) == "COPY 1"
        t2 = time.monotonic()
    rates = (size / MIB / (t1 - t0), size / MIB / (t2 - t1))
    print("256 MiB DataRow {:.0f} MiB/s, CopyData {:.0f} MiB/s".format(*rates))
    after = _status(pid)
    growth = after["VmHWM"] - before["VmHWM"]
    assert growth < 32 * MIB, f"gateway peak RSS grew {growth / MIB:.1f} MiB"
    assert gateway_process.proc.poll() is None


@pytest.mark.timeout(180)
def test_copy_in_to_a_slow_server_with_bounded_gateway_memory(
    gateway: Any, gateway_process: GatewayProcess
) -> None:
    """The client sends COPY data far faster than the server takes it: the gateway must stop
    reading from the client rather than buffer (backpressure in the client-to-server direction)."""
    t = _target_for(gateway, gateway_process)
    pid = gateway_process.proc.pid
    _warm_up(t)
    before = _status(pid)
    row = b"r" * 1023 + b"\n"
    chunk = row * 1024  # 1 MiB of rows
    chunks = 96
    with pw.connect(t.endpoint()) as c:
        c.rows("create temp table sink (x text)")
        # Every row costs the server a 20 KB md5: it ingests far slower than we send.
        c.send(pw.query("copy sink from stdin where md5(repeat(x, 20)) = ''"))
        assert pw.frames(c.recv_until("G")) == "G"
        t0 = time.monotonic()
        for _ in range(chunks):
            c.send(pw.copy_data(chunk))
        send_time = time.monotonic() - t0
        mid = _status(pid)
        print(f"sent {chunks} MiB of COPY data in {send_time:.1f} s")
        c.send(pw.copy_done())
        msgs = c.recv_until_ready(timeout=120)
        assert pw.frames(msgs) == "CZ"
        assert pw.command_tag(msgs[0].body) == "COPY 0"  # the WHERE kept none
    after = _status(pid)
    growth = max(mid["VmHWM"], after["VmHWM"]) - before["VmHWM"]
    assert growth < 32 * MIB, (
        f"gateway peak RSS grew {growth / MIB:.1f} MiB while the client sent "
        f"{chunks} MiB in {send_time:.1f} s"
    )


# --- mixed chaos ---------------------------------------------------------------------------------


async def _chaos_worker(t: pw.Target, seed: int, until: float) -> dict[str, int]:
    import io
    import random

    rnd = random.Random(seed)
    done: dict[str, int] = {}
    while time.monotonic() < until:
        action = rnd.choice(["query", "copy", "timeout", "terminate", "error", "pipeline"])
        conn = await asyncpg.connect(**t.asyncpg_kwargs(timeout=60))
        try:
            if action == "query":
                n = rnd.randint(1, 5000)
                assert (
                    await conn.fetchval("select count(*) from generate_series(1, $1::int)", n) == n
                )
            elif action == "copy":
                buf = io.BytesIO()
                await conn.copy_from_query(
                    "select g, repeat('c', 200) from generate_series(1, 2000) g", output=buf
                )
                assert buf.getvalue().count(b"\n") == 2000
            elif action == "timeout":
                with pytest.raises(asyncio.TimeoutError):
                    await conn.fetch("select pg_sleep(10)", timeout=rnd.uniform(0.05, 0.3))
                assert await conn.fetchval("select 1") == 1
            elif action == "terminate":
                task = asyncio.ensure_future(
                    conn.fetch("select repeat('t', 1000) from generate_series(1, 200000)")
                )
                await asyncio.sleep(rnd.uniform(0.0, 0.2))
                conn.terminate()
                with contextlib.suppress(Exception):
                    await task
            elif action == "error":
                with pytest.raises(asyncpg.exceptions.DivisionByZeroError):
                    await conn.fetch("select 1 / (g - 3) from generate_series(1, 10) g")
                assert await conn.fetchval("select 2") == 2
            else:
                stmt = await conn.prepare("select $1::int * 3")
                assert [await stmt.fetchval(i) for i in range(20)] == [i * 3 for i in range(20)]
        finally:
            if not conn.is_closed():
                await conn.close()
        done[action] = done.get(action, 0) + 1
    return done


@pytest.mark.asyncio
@pytest.mark.timeout(120)
async def test_mixed_concurrent_chaos_leaves_no_leaks(gateway: Any, pg_cluster: Any) -> None:
    from veilgate import metrics

    t = pw.gateway_target(gateway)
    admin = pw.superuser_target(pg_cluster)
    aconn = await asyncpg.connect(**admin.asyncpg_kwargs())
    count_upstreams = (
        "select count(*) from pg_stat_activity where usename = 'veilgate_app' "
        "and application_name not like 'veilgate-%'"  # not the catalog / health sessions
    )
    try:
        base = (
            await asyncio.to_thread(gateway.session_count),
            await aconn.fetchval(count_upstreams),
            metrics.upstream_connections_active.get(),
        )
        until = time.monotonic() + 6
        results = await asyncio.gather(
            *(_chaos_worker(t, seed, until) for seed in range(30)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, f"{len(errors)} workers failed, first: {errors[0]!r}"
        totals: dict[str, int] = {}
        for r in results:
            assert isinstance(r, dict)
            for k, v in r.items():
                totals[k] = totals.get(k, 0) + v
        assert sum(totals.values()) >= 60, totals

        deadline = time.monotonic() + 15
        while True:
            now = (
                await asyncio.to_thread(gateway.session_count),
                await aconn.fetchval(count_upstreams),
                metrics.upstream_connections_active.get(),
            )
            if now == base or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert now == base, f"(sessions, upstream backends, upstream gauge) {now} != {base}"
    finally:
        await aconn.close()
