"""A policy file takes effect only when complete and valid (issue 10 item 7), without a server.

The end-to-end versions (a gateway reloading while clients run, the log lines an operator reads)
are in tests/adversarial/test_reload.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from veilgate.identity.base import Principal
from veilgate.policy.cli import confirm_main
from veilgate.policy.diff import masking_losses, policy_changes
from veilgate.policy.engine import PolicyEngine
from veilgate.policy.loader import PolicyError, load_policy, load_policy_text
from veilgate.policy.reload import PolicyFileWatcher, confirm_path, file_digest

AGENT = Principal(provider="entra", subject="a", roles=frozenset({"agent"}))

POLICY = """\
version: 1
tiers:
  - name: agent
    match: {roles: [agent]}
    rules:
      - {id: read, action: allow, message: m, classes: [read]}
      - {id: no-audit, action: deny, message: m, tables: ["audit.*"]}
  - name: admin
    match: {roles: [admin]}
    default: allow
masking:
  apply_to: [agent]
  columns:
    - {column: "public.people.ssn", op: redact}
    - {column: "public.people.email", op: redact}
end: true
"""


class _Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, PolicyEngine, PolicyFileWatcher, _Clock]:
    f = tmp_path / "policy.yaml"
    f.write_text(POLICY)
    engine = PolicyEngine(load_policy(f))
    clock = _Clock()
    return f, engine, PolicyFileWatcher(f, engine, clock=clock), clock


def _settle(w: PolicyFileWatcher, clock: _Clock) -> bool | None:
    assert w.check() is None  # first look: the file changed, wait for it to settle
    clock.now += 5
    return w.check()


def _events(caplog: pytest.LogCaptureFixture, name: str) -> list[dict[str, Any]]:
    return [r.fields for r in caplog.records if r.getMessage() == name]  # type: ignore[attr-defined]


def test_end_marker_must_be_true_and_last() -> None:
    assert load_policy_text(POLICY).end_marker
    assert not load_policy_text(POLICY.replace("end: true\n", "")).end_marker
    with pytest.raises(PolicyError, match="end: expected true"):
        load_policy_text(POLICY.replace("end: true", "end: tr"))
    moved = POLICY.replace("end: true\n", "").replace("masking:", "end: true\nmasking:")
    with pytest.raises(PolicyError, match="must be the last key"):
        load_policy_text(moved)


@pytest.mark.parametrize("cut", [0.3, 0.5, 0.7, 0.9, 0.97])
def test_truncated_file_never_takes_effect(
    setup: tuple[Path, PolicyEngine, PolicyFileWatcher, _Clock],
    cut: float,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Promise: a policy cut short anywhere (here: at several points, some of which still parse
    as YAML with fewer rules or tiers) never replaces the running one."""
    f, engine, w, clock = setup
    gen = engine.generation
    f.write_text(POLICY[: int(len(POLICY) * cut)])
    with caplog.at_level(logging.INFO, logger="veilgate.policy"):
        assert _settle(w, clock) is False
    assert engine.generation == gen
    assert engine.decide(AGENT, "select * from audit.log").action == "deny"
    assert _events(caplog, "policy_reload_failed") or _events(caplog, "policy_reload_refused")


def test_no_cut_at_any_line_loads() -> None:
    """Promise: the file cut after any of its lines (what a crash mid-write leaves) never
    compiles into a policy that could replace a marked one."""
    lines = POLICY.splitlines(keepends=True)
    for n in range(1, len(lines)):
        text = "".join(lines[:n])
        try:
            policy = load_policy_text(text)
        except PolicyError:
            continue
        assert not policy.end_marker, text


def test_shorter_file_with_marker_is_applied_and_logged(
    setup: tuple[Path, PolicyEngine, PolicyFileWatcher, _Clock],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Promise: an intentionally shorter file (it ends with the marker) is applied, and the log
    says what each tier gained and lost."""
    f, _engine, w, clock = setup
    shorter = POLICY.replace(
        '      - {id: no-audit, action: deny, message: m, tables: ["audit.*"]}\n', ""
    ).replace("      - {id: read,", "      - {id: reads,")
    f.write_text(shorter)
    with caplog.at_level(logging.INFO, logger="veilgate.policy"):
        assert _settle(w, clock) is True
    (ev,) = _events(caplog, "policy_reloaded")
    assert ev["changes"] == {
        "agent": {"gained": ["allow rule reads"], "lost": ["allow rule read", "deny rule no-audit"]}
    }


def test_require_end_marker_refuses_files_without_it(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(POLICY.replace("end: true\n", ""))
    engine = PolicyEngine(load_policy(f))
    w = PolicyFileWatcher(f, engine, require_end_marker=True)
    f.write_text(POLICY.replace("end: true\n", "").replace("[read]", "[read, utility]"))
    assert w.reload() is False
    assert "require_end_marker" in (w.last_error or "")
    f.write_text(POLICY.replace("[read]", "[read, utility]"))
    assert w.reload() is True


def test_running_marker_is_sticky(
    setup: tuple[Path, PolicyEngine, PolicyFileWatcher, _Clock],
) -> None:
    """Promise: once the running policy ends with the marker, a file without it is refused (a
    cut that happens to leave valid YAML loses the last line)."""
    f, _engine, w, _ = setup
    f.write_text(POLICY.replace("end: true\n", ""))
    assert w.reload() is False
    assert "cut short" in (w.last_error or "")


def test_file_still_being_written_waits(
    setup: tuple[Path, PolicyEngine, PolicyFileWatcher, _Clock],
) -> None:
    """Promise: a file that keeps changing is not loaded until it has stopped changing."""
    f, engine, w, clock = setup
    gen = engine.generation
    text = POLICY.replace("[read]", "[read, utility]")
    f.write_text(text[:200])
    assert w.check() is None
    clock.now += 0.2
    f.write_text(text[:400])  # still growing
    assert w.check() is None
    clock.now += 0.2
    f.write_text(text)
    assert w.check() is None
    assert engine.generation == gen  # nothing loaded while it changed
    clock.now += 5
    assert w.check() is True
    assert engine.generation == gen + 1


UNMASKING = [
    ("masking off for the tier", POLICY.replace("apply_to: [agent]", "apply_to: [admin]")),
    ("masking section gone", POLICY.split("masking:")[0] + "end: true\n"),
    (
        "column rule removed",
        POLICY.replace('    - {column: "public.people.email", op: redact}\n', ""),
    ),
    (
        "column rule kept",
        POLICY.replace(
            '{column: "public.people.email", op: redact}',
            '{column: "public.people.email", op: keep}',
        ),
    ),
    (
        "tier renamed (its principals would match none or another)",
        POLICY.replace("name: agent", "name: agents").replace(
            "[agent]\n  columns", "[agents]\n  columns"
        ),
    ),
]


@pytest.mark.parametrize(("what", "text"), UNMASKING, ids=[u[0] for u in UNMASKING])
def test_reload_that_unmasks_needs_confirmation_for_that_content(
    setup: tuple[Path, PolicyEngine, PolicyFileWatcher, _Clock],
    what: str,
    text: str,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Promise: a reload never silently takes masking away from a tier: it is refused (and the
    log names the tier and what it would lose) until confirmed for exactly that content."""
    f, engine, w, clock = setup
    gen = engine.generation
    assert masking_losses(engine.policy, load_policy_text(text)), what
    f.write_text(text)
    with caplog.at_level(logging.INFO, logger="veilgate.policy"):
        assert _settle(w, clock) is False
    (ev,) = _events(caplog, "policy_reload_refused")
    assert ev["reason"] == "masking removed" and "agent" in ev["losses"], ev
    assert engine.generation == gen
    # a confirmation of other content does not count
    confirm_path(f).write_text(file_digest(POLICY) + "\n")
    assert w.reload() is False
    assert confirm_main([str(f)]) == 0
    assert file_digest(text) in capsys.readouterr().out
    assert w.reload() is True
    assert engine.generation == gen + 1


def test_gaining_masking_needs_no_confirmation() -> None:
    old = load_policy_text(POLICY.split("masking:")[0] + "end: true\n")
    new = load_policy_text(POLICY)
    assert masking_losses(old, new) == {}
    changes = policy_changes(old, new)
    assert changes["agent"].gained == ["masking"] and "admin" not in changes
    # moving masking from one tier to another loses the first tier's
    moved = load_policy_text(POLICY.replace("apply_to: [agent]", "apply_to: [admin]"))
    assert set(masking_losses(new, moved)) == {"agent"}
