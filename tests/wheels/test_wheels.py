"""The release wheels as an operator installs them (``make wheels-check``, run once by .ci/run).

``make wheels`` builds into ``wheels/``; this installs them into a fresh virtual environment per
CPython version (dependencies from the package index, nothing from this source tree) and checks
what a user would: the tags and metadata, stripped binaries, then ``veilgate version``, ``veilgate
serve`` with a masking policy in front of the test cluster, a client connecting through it and
reading masked values, and ``veilgate mask`` on CSV.

Not part of the ordinary pytest run (building wheels for three CPython versions takes minutes):
without ``VEILGATE_WHEELS_DIR`` every test here is skipped.
"""

from __future__ import annotations

import email.parser
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

WHEELS = os.environ.get("VEILGATE_WHEELS_DIR")
PYTHONS = os.environ.get("VEILGATE_WHEEL_PYTHONS", "3.11 3.12 3.13").split()

pytestmark = [
    pytest.mark.skipif(
        not WHEELS, reason="VEILGATE_WHEELS_DIR not set (make wheels-check runs these)"
    ),
    # a venv's first test installs the dependencies from the package index
    pytest.mark.timeout(900),
]

POLICY = """\
version: 1
tiers:
  - name: agents
    match: {roles: [db.agent]}
    default: allow
masking:
  apply_to: [agents]
  detectors: [EMAIL, CREDIT_CARD]
  columns:
    - {column: "public.customers.email", scan: true}
    - {column: "public.customers.card_number", scan: true}
end: true
"""


def _tag(v: str) -> str:
    return "cp" + v.replace(".", "")


def find_python(version: str) -> str:
    """pythonX.Y on PATH, else the newest ~/.pyenv/versions/X.Y.* (as scripts/build_wheels.sh)."""
    found = shutil.which(f"python{version}")
    candidates = [found] if found else []
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += [
        str(p / "bin" / f"python{version}")
        for p in sorted(root.glob(f"{version}.*"), reverse=True)
        if (p / "bin" / f"python{version}").exists()
    ]
    for c in candidates:
        out = subprocess.run(
            [c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.stdout.strip() == version:
            return c
    raise AssertionError(f"CPython {version} not found")


def clean_env(**extra: str) -> dict[str, str]:
    """No PYTHONPATH, no PG* variables: the venv sees only what was installed into it."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PG", "PYTHON", "VIRTUAL_ENV", "VEILGATE"))
    }
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def wheels() -> Path:
    assert WHEELS is not None
    d = Path(WHEELS).resolve()
    assert d.is_dir(), f"{d} missing: run make wheels"
    return d


def one(d: Path, pattern: str) -> Path:
    found = sorted(d.glob(pattern))
    assert len(found) == 1, f"{pattern}: {[p.name for p in found]} in {d}"
    return found[0]


def native_wheel(d: Path) -> Path:
    return one(d, "veilgate_native-*-cp311-abi3-*manylinux*_x86_64.whl")


def gateway_wheel(d: Path, version: str) -> Path:
    t = _tag(version)
    return one(d, f"veilgate-*-{t}-{t}-*manylinux*_x86_64.whl")


def metadata(whl: Path) -> tuple[Any, list[str]]:
    with zipfile.ZipFile(whl) as z:
        names = z.namelist()
        meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(meta).decode()), names


def test_wheel_set(wheels: Path) -> None:
    """abi3 native wheel, one veilgate wheel per CPython, both sdists, Apache-2.0 everywhere."""
    built = [native_wheel(wheels)] + [gateway_wheel(wheels, v) for v in PYTHONS]
    one(wheels, "veilgate_native-*.tar.gz")
    one(wheels, "veilgate-*.tar.gz")
    for whl in built:
        meta, names = metadata(whl)
        assert meta["License-Expression"] == "Apache-2.0", (whl.name, meta["License-Expression"])
        lic = [n for n in names if re.search(r"\.dist-info/licenses/LICENSE$", n)]
        assert lic, f"{whl.name}: no LICENSE in {names}"
        with zipfile.ZipFile(whl) as z:
            assert b"Apache License" in z.read(lic[0])
        assert not [n for n in names if n.endswith((".c", ".pyx.c"))], whl.name
    for sdist in wheels.glob("*.tar.gz"):
        listing = subprocess.run(
            ["tar", "tzf", str(sdist)], capture_output=True, text=True, check=True
        ).stdout
        assert re.search(r"^[^/]+/LICENSE$", listing, re.M), f"{sdist.name}: no LICENSE"
        assert re.search(r"^[^/]+/PKG-INFO$", listing, re.M)


def test_binaries_stripped(wheels: Path, tmp_path: Path) -> None:
    """No debug sections and no symbol table in any shared object the wheels ship."""
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.skip("readelf not installed")
    sos = 0
    for whl in [native_wheel(wheels)] + [gateway_wheel(wheels, v) for v in PYTHONS]:
        with zipfile.ZipFile(whl) as z:
            for n in z.namelist():
                if ".so" not in Path(n).name:
                    continue
                target = tmp_path / f"{sos}.so"
                target.write_bytes(z.read(n))
                sos += 1
                sections = subprocess.run(
                    [readelf, "-S", "-W", str(target)], capture_output=True, text=True, check=True
                ).stdout
                assert ".debug_info" not in sections, f"{whl.name}:{n} has debug info"
                assert " .symtab " not in sections, f"{whl.name}:{n} has a symbol table"
    assert sos >= 1 + len(PYTHONS)


@pytest.fixture(scope="module", params=PYTHONS, ids=[_tag(v) for v in PYTHONS])
def venv(
    request: pytest.FixtureRequest, wheels: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A fresh venv of that CPython with the two wheels (and their dependencies) installed."""
    version: str = request.param
    d = tmp_path_factory.mktemp(f"venv-{_tag(version)}")
    subprocess.run([find_python(version), "-m", "venv", str(d)], check=True, env=clean_env())
    pip = [str(d / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "install", str(native_wheel(wheels)), str(gateway_wheel(wheels, version))],
        check=True,
        env=clean_env(),
        cwd=d,
    )
    return d


def test_version(venv: Path) -> None:
    out = subprocess.run(
        [str(venv / "bin" / "veilgate"), "version"],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
        cwd=venv,
    ).stdout
    assert re.match(r"veilgate \d+\.\d+\.\d+ \(native engine: \d+\.\d+\.\d+; python 3\.", out), out
    where = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import veilgate, veilgate_native; "
            "print(veilgate.__file__); print(veilgate_native.__file__)",
        ],
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
        cwd=venv,
    ).stdout.split()
    assert all(p.startswith(str(venv)) for p in where), where


def test_mask_cli(venv: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    out = subprocess.run(
        [str(venv / "bin" / "veilgate"), "mask", "--policy", str(policy)],
        input="id,contact\n1,alice@example.com\n2,nothing here\n",
        capture_output=True,
        text=True,
        check=True,
        env=clean_env(),
        cwd=tmp_path,
    ).stdout
    assert "alice@example.com" not in out
    assert out.splitlines()[0] == "id,contact"
    assert out.splitlines()[2] == "2,nothing here"


@pytest.fixture
def served(venv: Path, pg_cluster: Any, tmp_path: Path) -> Iterator[tuple[int, str, Path]]:
    """``veilgate serve`` from the venv in front of the test cluster, with a masking tier."""
    from veilgate.certs import make_ca, make_cert

    ca = make_ca(tmp_path, "ca")
    make_cert(tmp_path, "gateway", ["127.0.0.1", "localhost"], ca)
    token = "vg-wheel-" + secrets.token_urlsafe(16)
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "pg-password").write_text(pg_cluster.gw_password + "\n")
    digest = hashlib.sha256(token.encode()).hexdigest()
    (tmp_path / "veilgate.yaml").write_text(
        f"""\
listen: {{host: 127.0.0.1, port: 0}}
tls: {{cert_file: gateway.crt, key_file: gateway.key}}
admin: {{host: 127.0.0.1, port: 0}}
auth:
  static_tokens:
    - {{name: wheel-agent, sha256: {digest}, roles: [db.agent]}}
targets:
  app:
    host: {pg_cluster.host}
    port: {pg_cluster.port}
    dbname: {pg_cluster.app_db}
    user: {pg_cluster.gw_role}
    password_file: pg-password
    tls: {{mode: verify-full, ca_file: {pg_cluster.ca_file}}}
policy: {{file: policy.yaml}}
logging: {{level: info, format: json}}
"""
    )
    proc = subprocess.Popen(
        [str(venv / "bin" / "veilgate"), "serve", "--config", "veilgate.yaml"],
        cwd=tmp_path,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        ready: dict[str, Any] | None = None
        while ready is None:
            assert proc.poll() is None, "veilgate serve exited:\n" + "".join(lines)
            assert time.monotonic() < deadline, "no ready line:\n" + "".join(lines)
            for line in list(lines):
                if '"event":"ready"' in line:
                    ready = json.loads(line)
            time.sleep(0.05)
        yield int(ready["port"]), token, ca.cert_file
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, "".join(lines)
        reader.join(5)
        assert any('"event":"stopped"' in line for line in lines), "".join(lines)


def test_serve_connect_mask(served: tuple[int, str, Path]) -> None:
    """A client connects through the installed gateway; the masking tier masks an email."""
    import psycopg

    port, token, ca = served
    dsn = (
        f"host=127.0.0.1 port={port} dbname=app user=agent password={token} "
        f"sslmode=verify-full sslrootcert={ca} connect_timeout=10"
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert conn.execute("select 1 + 1").fetchone() == (2,)
        raw = conn.execute("select count(*) from customers").fetchone()
        row = conn.execute("select email, card_number from customers order by id limit 1")
        email, card = row.fetchone()
    assert raw is not None and raw[0] > 0
    assert "@" not in email, email  # masked by the EMAIL detector
    assert not re.search(r"\d{12}", card.replace(" ", "").replace("-", "")), card
    assert sys.version_info >= (3, 11)
