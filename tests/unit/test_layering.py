"""Imports point one way: cli -> service -> gateway -> audit/approvals -> config loader ->
policy/masking/identity/state -> pgwire (the wire protocol) -> config model, log and the other
leaves.  No module imports a module of a higher layer, and no modules import each other in a
circle, counting every import: module level, inside functions and under ``TYPE_CHECKING`` (a
type-only back-import is still a dependency of the design: invert it with a protocol, as
``gateway.session.SessionHost`` or ``audit.recorder.SessionRecord`` do).

The same holds for the bench scripts (``bench/*.py``): ``run.py`` is the entry point, the
bench modules use ``harness.py`` (and ``policy_targets.py``), nothing imports ``run.py`` and
nothing imports in a circle.

Reading the graph: ``python tests/unit/test_layering.py`` prints every import between the
project's modules with its layer, and what is wrong.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = ROOT / "python"
BENCH_DIR = ROOT / "bench"

# (rank, layer, module patterns): a module belongs to the first layer with a matching pattern
# (``x`` matches x and x.*; ``veilgate.*.cli`` matches the cli module of any subpackage).
LAYERS: tuple[tuple[int, str, tuple[str, ...]], ...] = (
    (7, "cli", ("veilgate.__main__", "veilgate.cli", "veilgate.*.cli", "veilgate.demo")),
    (
        6,
        "service",
        (
            "veilgate.service",
            "veilgate.workers",
            "veilgate.admin",
            "veilgate.health",
            "veilgate.approvals.api",
        ),
    ),
    (5, "gateway", ("veilgate.gateway",)),
    (4, "audit/approvals", ("veilgate.audit", "veilgate.approvals")),
    (3, "config loader", ("veilgate.config",)),
    (
        2,
        "policy/masking/identity/state",
        ("veilgate.policy", "veilgate.masking", "veilgate.identity", "veilgate.state"),
    ),
    (1, "pgwire", ("veilgate.pgwire",)),
    (
        0,
        "leaves",
        (
            "veilgate.config_model",
            "veilgate.log",
            "veilgate.metrics",
            "veilgate.redact",
            "veilgate.bytecache",
            "veilgate.certs",
            "veilgate.cliargs",
            "veilgate.reload",
            "veilgate.testing",
            "veilgate.buildinfo",
            "veilgate.handover",
            "veilgate.sdnotify",
        ),
    ),
)
PACKAGE_ROOT_RANK = 0
"""``veilgate`` itself (``__version__``): a leaf."""

_CYTHON_IMPORT = re.compile(r"^(?:from\s+\S+\s+import\s+(?:\([^)]*\)|.*)|import\s+.*)$", re.M)


def layer_of(module: str) -> tuple[int, str] | None:
    if module == "veilgate":
        return PACKAGE_ROOT_RANK, "leaves"
    parts = module.split(".")
    for rank, name, patterns in LAYERS:
        for pattern in patterns:
            pp = pattern.split(".")
            if len(parts) >= len(pp) and all(
                p in ("*", q) for p, q in zip(pp, parts, strict=False)
            ):
                return rank, name
    return None


def modules_under(base: Path, top: str | None) -> dict[str, Path]:
    """Module name -> file, for the ``.py`` and ``.pyx`` files under ``base`` (``top``: only that
    package; None: the scripts of a flat directory)."""
    out: dict[str, Path] = {}
    files = sorted((base / top).rglob("*") if top else base.glob("*"))
    for path in files:
        if path.suffix not in (".py", ".pyx") or "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(base).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _tree(path: Path) -> ast.Module:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".pyx":
        # Cython: the Python-level imports (``cimport`` is compile-time only)
        # (kept on their own lines, so that the line numbers are the file's)
        kept = ["" for _ in text.splitlines()]
        for m in _CYTHON_IMPORT.finditer(text):
            if "cimport" not in m.group(0):
                line = text.count("\n", 0, m.start())
                kept[line] = m.group(0).replace("\n", " ")
        text = "\n".join(kept)
    return ast.parse(text, filename=str(path))


def imports(modules: Mapping[str, Path]) -> dict[str, set[tuple[str, int]]]:
    """For each module, the modules of ``modules`` it imports (with the line), every import
    statement counted wherever it stands."""
    edges: dict[str, set[tuple[str, int]]] = {m: set() for m in modules}

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for mod, path in modules.items():
        is_pkg = path.stem == "__init__"
        for node in ast.walk(_tree(path)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = mod.split(".")
                    if not is_pkg:
                        base = base[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join([*base, node.module] if node.module else base)
                else:
                    stem = node.module or ""
                for alias in node.names:
                    sub = f"{stem}.{alias.name}"
                    targets.append(sub if sub in modules else stem)
            for t in targets:
                k = known(t)
                if k is not None and k != mod:
                    edges[mod].add((k, node.lineno))
    return edges


def circles(edges: Mapping[str, Iterable[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    graph = {m: sorted({t for t, _ in ts}) for m, ts in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack.add(v)
            succ = graph.get(v, [])
            if i < len(succ):
                work.append((v, i + 1))
                w = succ[i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                comp: list[str] = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return out


def upward(edges: Mapping[str, Iterable[tuple[str, int]]]) -> list[str]:
    """Imports of a higher layer, and modules no layer names."""
    bad: list[str] = []
    for mod in sorted(edges):
        here = layer_of(mod)
        if here is None:
            bad.append(f"{mod}: in no layer (add it to LAYERS in {Path(__file__).name})")
            continue
        for target, line in sorted(edges[mod]):
            there = layer_of(target)
            if there is not None and there[0] > here[0]:
                bad.append(
                    f"{mod}:{line} ({here[1]}) imports {target} ({there[1]}), a higher layer"
                )
    return bad


def _describe(comps: list[list[str]], edges: Mapping[str, Iterable[tuple[str, int]]]) -> str:
    lines = []
    for comp in comps:
        members = set(comp)
        lines.append("circle: " + ", ".join(comp))
        for m in comp:
            for t, line in sorted(edges[m]):
                if t in members:
                    lines.append(f"  {m}:{line} -> {t}")
    return "\n".join(lines)


# --- the project -----------------------------------------------------------------------------


def test_package_imports_point_down() -> None:
    edges = imports(modules_under(PACKAGE_DIR, "veilgate"))
    assert len(edges) > 100  # the whole package was read
    assert upward(edges) == []


def test_package_has_no_import_circles() -> None:
    edges = imports(modules_under(PACKAGE_DIR, "veilgate"))
    comps = circles(edges)
    assert not comps, _describe(comps, edges)


def test_wire_layer_is_shared_not_owned() -> None:
    """The wire protocol is used by the data path and by masking's side connections alike, and
    itself uses neither."""
    edges = imports(modules_under(PACKAGE_DIR, "veilgate"))
    users = {
        m.split(".")[1]
        for m, ts in edges.items()
        for t, _ in ts
        if t.startswith("veilgate.pgwire.")
    }
    assert {"gateway", "masking"} <= users
    assert not [
        (m, t)
        for m, ts in edges.items()
        if m.startswith("veilgate.pgwire")
        for t, _ in ts
        if not (t.startswith("veilgate.pgwire") or t == "veilgate.config_model")
    ]


def test_bench_scripts_have_no_import_circles() -> None:
    edges = imports(modules_under(BENCH_DIR, None))
    assert "run" in edges
    comps = circles(edges)
    assert not comps, _describe(comps, edges)
    assert not [m for m, ts in edges.items() for t, _ in ts if t == "run"], "nothing imports run.py"


# --- the checker itself can fail ------------------------------------------------------------


def _write(base: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = base / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_checker_finds_circles_and_upward_imports(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "veilgate/__init__.py": "",
            "veilgate/log.py": "",
            "veilgate/gateway/__init__.py": "",
            "veilgate/gateway/a.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from veilgate.gateway.b import B\n",
            "veilgate/gateway/b.py": "def f():\n    from . import a\n",
            "veilgate/pgwire/__init__.py": "",
            "veilgate/pgwire/wire.py": "from veilgate.gateway import a\nfrom .. import log\n",
            "veilgate/gateway/_relay.pyx": (
                "cimport cython\nfrom veilgate.pgwire import (\n    wire,\n)\n"
            ),
            "veilgate/newthing.py": "",
        },
    )
    edges = imports(modules_under(tmp_path, "veilgate"))
    assert ("veilgate.log", 2) in edges["veilgate.pgwire.wire"]
    assert ("veilgate.pgwire.wire", 2) in edges["veilgate.gateway._relay"]
    assert circles(edges) == [["veilgate.gateway.a", "veilgate.gateway.b"]]
    bad = upward(edges)
    assert any("veilgate.pgwire.wire:1 (pgwire) imports veilgate.gateway.a" in b for b in bad)
    assert any(b.startswith("veilgate.newthing: in no layer") for b in bad)
    assert not any(b.startswith("veilgate.gateway._relay") for b in bad)


def main() -> int:
    edges = imports(modules_under(PACKAGE_DIR, "veilgate"))
    for mod in sorted(edges):
        for target, line in sorted(edges[mod]):
            a, b = layer_of(mod), layer_of(target)
            print(f"{mod}:{line} [{a[1] if a else '?'}] -> {target} [{b[1] if b else '?'}]")
    problems = upward(edges)
    comps = circles(edges)
    bench = imports(modules_under(BENCH_DIR, None))
    bench_comps = circles(bench)
    for p in problems:
        print("UPWARD", p)
    if comps:
        print(_describe(comps, edges))
    if bench_comps:
        print(_describe(bench_comps, bench))
    return 1 if problems or comps or bench_comps else 0


if __name__ == "__main__":
    sys.exit(main())
