"""The systemd template unit (``packaging/systemd/veilgate@.service``) and its switch script
(``packaging/systemd/veilgate-upgrade``), without systemd: the unit's own ExecStartPre /
ExecStart / ExecReload command lines, with ``%i`` and the installed paths mapped to this
checkout, run for ``blue`` and then ``green`` while clients connect in a loop (the hand-over drops
no attempt, blue exits 0, a reload reaches green); the script, with a stand-in ``systemctl`` that
records what it is asked, picks the other instance, checks the configuration with that
instance's veilgate first and starts nothing when it fails; ``systemd-analyze verify`` (where
installed) reads both unit files without a complaint.  What systemd itself does when it runs the
unit (Type=notify, the shared runtime directory, exit 0 = inactive) is not run here."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.integration.reload_support import ServeDir, serve_dir, wait_for
from tests.integration.test_serve import (  # noqa: F401 (cluster: a fixture)
    ServeProcess,
    cluster,
    http_get,
)
from tests.integration.test_upgrade import ConnectLoop, events

pytestmark = pytest.mark.pg

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "systemd" / "veilgate@.service"
SCRIPT = ROOT / "packaging" / "systemd" / "veilgate-upgrade"
INSTALLED_CONFIG = "/etc/veilgate/veilgate.yaml"
INSTALLED_PREFIX = "/opt/veilgate"


def unit_commands(key: str) -> list[str]:
    """The unit's ``key=`` lines (ExecStart, ExecStartPre, ExecReload), as written."""
    lines = [ln.strip() for ln in UNIT.read_text().splitlines()]
    return [ln.split("=", 1)[1] for ln in lines if ln.startswith(key + "=")]


def prefix_for(tmp: Path) -> Path:
    """/opt/veilgate here: blue/ and green/ hold this checkout's veilgate."""
    prefix = tmp / "opt-veilgate"
    for instance in ("blue", "green"):
        bindir = prefix / instance / "bin"
        bindir.mkdir(parents=True, exist_ok=True)
        link = bindir / "veilgate"
        if not link.exists():
            link.symlink_to(Path(sys.prefix) / "bin" / "veilgate")
    return prefix


def argv(line: str, instance: str, sd: ServeDir, prefix: Path, mainpid: int = 0) -> list[str]:
    """A unit command line as systemd would run it for ``veilgate@instance``."""
    text = (
        line.replace("%i", instance)
        .replace(INSTALLED_PREFIX, str(prefix))
        .replace(INSTALLED_CONFIG, str(sd.config_file))
        .replace("$MAINPID", str(mainpid))
    )
    return shlex.split(text)


@pytest.fixture
def sd(cluster: Any, tmp_path: Path) -> ServeDir:  # noqa: F811
    s = serve_dir(cluster, tmp_path, "sdtemplate")
    s.write(listen="listen: {host: 127.0.0.1, port: 0, handover_socket: handover.sock}")
    return s


def start_instance(instance: str, sd: ServeDir, prefix: Path) -> ServeProcess:
    for pre in unit_commands("ExecStartPre"):
        done = subprocess.run(
            argv(pre, instance, sd, prefix), env=sd.env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr
    (start,) = unit_commands("ExecStart")
    cmd = argv(start, instance, sd, prefix)
    assert cmd[0] == str(prefix / instance / "bin" / "veilgate") and cmd[1] == "serve"
    return ServeProcess(sd.config_file, sd.env, argv=cmd)


def test_template_instances_hand_over_under_load(sd: ServeDir, tmp_path: Path) -> None:
    prefix = prefix_for(tmp_path)
    blue = start_instance("blue", sd, prefix)
    procs = [blue]
    try:
        ready = blue.wait_event("ready")
        port, admin = int(ready["port"]), int(ready["admin_port"])
        with ConnectLoop(sd, port) as clients:
            clients.progress()
            green = start_instance("green", sd, prefix)
            procs.append(green)
            ready = green.wait_event("ready")
            assert (int(ready["port"]), int(ready["admin_port"])) == (port, admin)
            assert events(green, "took_over")[0]["pid"] == blue.proc.pid
            # the old instance drains and exits 0: systemd's "inactive", not "failed"
            assert blue.proc.wait(60) == 0, "\n".join(blue.lines)
            clients.progress()
            (reload,) = unit_commands("ExecReload")
            subprocess.run(argv(reload, "green", sd, prefix, green.proc.pid), check=True)
            wait_for(lambda: bool(events(green, "config_reloaded")), what="reload")
            clients.progress()
        assert clients.failures == [], clients.failures[:5]
        assert http_get(admin, "/livez")[0] == 200
    finally:
        for p in procs:
            p.stop()


FAKE_SYSTEMCTL = """#!/bin/sh
echo "$*" >> "{log}"
if [ "$1" = is-active ]; then
    unit=$3
    [ -e "{state}/$unit" ] && exit 0
    exit 3
fi
exit 0
"""


def run_script(
    tmp_path: Path, sd: ServeDir, active: list[str]
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    state = tmp_path / "active"
    state.mkdir(exist_ok=True)
    for f in state.iterdir():
        f.unlink()
    for name in active:
        (state / f"veilgate@{name}.service").touch()
    log = tmp_path / "systemctl.log"
    log.write_text("")
    fake = tmp_path / "systemctl"
    fake.write_text(FAKE_SYSTEMCTL.format(log=log, state=state))
    fake.chmod(0o755)
    env = {
        **sd.env,
        "SYSTEMCTL": str(fake),
        "VEILGATE_CONFIG": str(sd.config_file),
        "VEILGATE_PREFIX": str(prefix_for(tmp_path)),
    }
    done = subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True)
    return done, log.read_text().splitlines()


def test_upgrade_script_switches_to_the_other_instance(sd: ServeDir, tmp_path: Path) -> None:
    assert os.access(SCRIPT, os.X_OK)
    done, calls = run_script(tmp_path, sd, ["blue"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert calls[-3:] == [
        "start veilgate@green.service",
        "enable --quiet veilgate@green.service",
        "disable --quiet veilgate@blue.service",
    ]
    assert "veilgate@green serves; veilgate@blue drains" in done.stdout

    done, calls = run_script(tmp_path, sd, ["green"])
    assert done.returncode == 0, done.stderr
    assert calls[-3:] == [
        "start veilgate@blue.service",
        "enable --quiet veilgate@blue.service",
        "disable --quiet veilgate@green.service",
    ]

    # nothing serving, or a hand-over still draining: nothing is started
    for active in ([], ["blue", "green"]):
        done, calls = run_script(tmp_path, sd, active)
        assert done.returncode == 1 and "veilgate-upgrade:" in done.stderr
        assert not any(c.startswith("start") for c in calls), calls

    # a configuration the new instance's veilgate refuses: nothing is started
    good = sd.config_file.read_text()
    sd.config_file.write_text(good + "no_such_section: 1\n")
    try:
        done, calls = run_script(tmp_path, sd, ["blue"])
        assert done.returncode != 0
        assert "no_such_section" in done.stdout + done.stderr
        assert not any(c.startswith("start") for c in calls), calls
    finally:
        sd.config_file.write_text(good)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize(
    ("unit", "instance"), [("veilgate.service", ""), ("veilgate@.service", "blue")]
)
def test_units_pass_systemd_analyze_verify(tmp_path: Path, unit: str, instance: str) -> None:
    """systemd's own reading of the unit files: no unknown key or bad value (the installed
    veilgate executable is all it may miss here)."""
    copy = tmp_path / unit
    copy.write_text((UNIT.parent / unit).read_text())
    name = unit.replace("@.", f"@{instance}.")
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    exe = f"{INSTALLED_PREFIX}/{instance + '/' if instance else ''}bin/veilgate"
    complaints = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and f"Command {exe} is not executable" not in line
    ]
    assert complaints == [], complaints
