"""pytest plugin (``-p outcomes``) that writes one JSON line per test to ``$COMPAT_OUTCOMES``.

Each line: ``{"test": nodeid, "outcome": passed|failed|error|skipped|xfailed|xpassed,
"message": first line of the failure or skip reason, "duration": seconds, "markers": [...]}``
(``markers``: which of psycopg's own ``timing`` / ``flakey`` / ``slow`` marks the test
carries).  A failure in setup or teardown is an ``error``, as pytest counts it.  It runs inside
psycopg's suite (its own venv), so it uses nothing but pytest.

So that a run can go on after the client process died (a segfault in the C extension, a hung
test killed by pytest-timeout's thread method), the id of the test being run is kept in
``$COMPAT_OUTCOMES.current`` (removed when the session ends normally), and with
``$COMPAT_RESUME`` set the tests already in the outcomes file are deselected.
"""

from __future__ import annotations

import json
import os
from typing import Any, TextIO

import pytest

_out: TextIO | None = None
_tests: dict[str, dict[str, Any]] = {}
_MARKERS = frozenset({"timing", "flakey", "slow"})


def _message(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return str(report.longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(report.longrepr, "reprcrash", None)
    text = str(getattr(crash, "message", "") or report.longreprtext or "")
    return text.strip().splitlines()[0][:300] if text.strip() else ""


def pytest_configure(config: pytest.Config) -> None:
    global _out
    path = os.environ.get("COMPAT_OUTCOMES")
    if path:
        _out = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed at unconfigure)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    path = os.environ.get("COMPAT_OUTCOMES")
    if not (path and os.environ.get("COMPAT_RESUME") and os.path.exists(path)):
        return
    with open(path, encoding="utf-8") as f:
        done = {json.loads(line)["test"] for line in f if line.strip()}
    keep = [item for item in items if item.nodeid not in done]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i.nodeid in done])
        items[:] = keep


def pytest_runtest_setup(item: pytest.Item) -> None:
    entry = _entry(item.nodeid)
    entry["markers"] = sorted({m.name for m in item.iter_markers()} & _MARKERS)


def _entry(nodeid: str) -> dict[str, Any]:
    return _tests.setdefault(
        nodeid,
        {"test": nodeid, "outcome": "passed", "message": "", "duration": 0.0, "markers": []},
    )


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    path = os.environ.get("COMPAT_OUTCOMES")
    if path:
        with open(path + ".current", "w", encoding="utf-8") as f:
            f.write(nodeid)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _entry(report.nodeid)
    entry["duration"] = round(entry["duration"] + report.duration, 3)
    # the first failure is the one that counts (a teardown error after a failed call does not)
    if entry["outcome"] not in ("failed", "error"):
        if hasattr(report, "wasxfail"):
            entry["outcome"] = "xfailed" if report.skipped else "xpassed"
            entry["message"] = str(report.wasxfail)
        elif report.failed:
            entry["outcome"] = "failed" if report.when == "call" else "error"
            entry["message"] = _message(report)
        elif report.skipped:
            entry["outcome"] = "skipped"
            entry["message"] = _message(report)
    if report.when == "teardown":  # always reported, after setup and call
        del _tests[report.nodeid]
        if _out is not None:
            _out.write(json.dumps(entry) + "\n")
            _out.flush()


def pytest_unconfigure(config: pytest.Config) -> None:
    global _out
    path = os.environ.get("COMPAT_OUTCOMES")
    if path and os.path.exists(path + ".current"):
        os.unlink(path + ".current")  # the session ended normally
    if _out is not None:
        _out.close()
        _out = None
