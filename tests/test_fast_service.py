"""The service files, rendered with real paths: launchd runs farensed unthrottled, systemd at full priority (fast)."""

from __future__ import annotations

import configparser
import plistlib
import shutil
import subprocess
import sys

import pytest

from farensed.queue.service import render
from farensed.storage.workspace import Workspace

# launchd.plist(5) keys that lower a job's CPU or I/O priority; none may appear.
THROTTLING_KEYS = {"LowPriorityIO", "LowPriorityBackgroundIO", "Nice"}


def test_launch_agent_is_interactive_and_never_throttled(tmp_path):
    ws = Workspace(tmp_path)
    plist = plistlib.loads(render("farensed.plist", ws).encode())
    assert plist["ProcessType"] == "Interactive"
    assert not THROTTLING_KEYS & set(plist)
    assert plist["ProgramArguments"] == [sys.executable, "-m", "farensed.queue.main", "--home", str(tmp_path)]
    assert plist["WorkingDirectory"] == str(tmp_path) and plist["EnvironmentVariables"]["FARENSE_HOME"] == str(tmp_path)
    assert plist["StandardOutPath"] == str(tmp_path / "jobs" / "farensed.log")
    assert plist["ExitTimeOut"] >= 300 and plist["KeepAlive"] == {"SuccessfulExit": False}
    assert "@" not in render("farensed.plist", ws).replace("@@", "")  # every placeholder filled


def test_systemd_unit_makes_full_priority_explicit(tmp_path):
    text = render("farensed.service", Workspace(tmp_path))
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str
    unit.read_string(text)
    service = unit["Service"]
    assert service["ExecStart"] == f"{sys.executable} -m farensed.queue.main --home {tmp_path}"
    assert service["Nice"] == "0"
    assert service["CPUSchedulingPolicy"] == "other"
    assert service["IOSchedulingClass"] == "best-effort"
    assert service["KillMode"] == "process" and int(service["TimeoutStopSec"]) >= 300
    assert "@PYTHON@" not in text and "@HOME@" not in text


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze não existe aqui")
def test_systemd_analyze_verifies_the_rendered_unit(tmp_path):
    path = tmp_path / "farensed.service"
    path.write_text(render("farensed.service", Workspace(tmp_path)))
    for mode in (["--user"], []):  # a user manager where one runs; else the system one, which parses the same keys
        proc = subprocess.run(
            ["systemd-analyze", *mode, "verify", str(path)], capture_output=True, text=True, timeout=60
        )
        if "Failed to initialize manager" not in proc.stderr:
            break
    else:
        pytest.skip(f"systemd-analyze não consegue verificar aqui: {proc.stderr.strip()}")
    complaints = [line for line in proc.stderr.splitlines() if str(path) in line or "farensed.service" in line]
    assert not complaints and proc.returncode == 0, proc.stderr
