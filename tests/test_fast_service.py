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
# A workspace path as a user may have one: a space, &, %, $, both quotes, a backslash (and non-ASCII).
ODD = "Meus treinos & testes 100% 'v2' \"final\" $HOME \\ ç"
C_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "s": " "}
C_ESCAPES |= {"\\": "\\", '"': '"', "'": "'"}


def program(root) -> list[str]:
    return [sys.executable, "-m", "farensed.queue.main", "--home", str(root)]


def _unescape(text: str, i: int) -> tuple[str, int]:
    """One character of a systemd value at `i`, C escapes decoded (systemd.syntax(7))."""
    if text[i] != "\\":
        return text[i], i + 1
    code = text[i + 1]
    if code in C_ESCAPES:
        return C_ESCAPES[code], i + 2
    assert code == "x", f"escape \\{code} not written by farense"
    return chr(int(text[i + 2 : i + 4], 16)), i + 4


def systemd_words(value: str, exec_start: bool = False) -> list[str]:
    """Split a unit setting the way systemd does: specifiers first (only %% → % may appear), then words separated
    by blanks, each maybe in double or single quotes, with C escapes; in ExecStart= then $$ → $ (no variable)."""
    assert "%" not in value.replace("%%", ""), "an unescaped specifier"
    value = value.replace("%%", "%")
    words, i = [], 0
    while i < len(value):
        if value[i].isspace():
            i += 1
            continue
        word = []
        while i < len(value) and not value[i].isspace():
            if value[i] in "\"'":
                quote, i = value[i], i + 1
                while value[i] != quote:
                    char, i = _unescape(value, i)
                    word.append(char)
                i += 1
            else:
                char, i = _unescape(value, i)
                word.append(char)
        words.append("".join(word))
    if exec_start:
        assert all("$" not in w.replace("$$", "") for w in words), "an unescaped variable"
        words = [w.replace("$$", "$") for w in words]
    return words


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
    assert systemd_words(service["ExecStart"], exec_start=True) == program(tmp_path)
    assert service["UMask"] == "0077"
    assert service["Nice"] == "0"
    assert service["CPUSchedulingPolicy"] == "other"
    assert service["IOSchedulingClass"] == "best-effort"
    assert service["KillMode"] == "process" and int(service["TimeoutStopSec"]) >= 300
    assert "@PYTHON@" not in text and "@HOME@" not in text


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze não existe aqui")
@pytest.mark.parametrize("folder", ["ws", ODD])
def test_systemd_analyze_verifies_the_rendered_unit(tmp_path, folder):
    (tmp_path / folder).mkdir(exist_ok=True)
    path = tmp_path / "farensed.service"
    path.write_text(render("farensed.service", Workspace(tmp_path / folder)))
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


def test_service_files_hold_a_workspace_path_with_space_ampersand_percent_and_quotes(tmp_path):
    root = tmp_path / ODD
    ws = Workspace(root)
    plist = plistlib.loads(render("farensed.plist", ws).encode())  # it parses back
    assert plist["ProgramArguments"] == program(root)
    assert plist["WorkingDirectory"] == str(root) and plist["EnvironmentVariables"]["FARENSE_HOME"] == str(root)
    assert plist["StandardErrorPath"] == str(root / "jobs" / "farensed.log") and plist["Umask"] == 0o077
    unit = configparser.ConfigParser(strict=True, interpolation=None)
    unit.optionxform = str
    unit.read_string(render("farensed.service", ws))
    service = unit["Service"]
    assert systemd_words(service["ExecStart"], exec_start=True) == program(root)  # five arguments, not more
    assert service["WorkingDirectory"].replace("%%", "%") == str(root)  # the rest of the line, one path
    environment = dict(w.split("=", 1) for w in systemd_words(service["Environment"]))
    assert environment == {"FARENSE_HOME": str(root), "PYTHONUNBUFFERED": "1"}
    assert "%" not in unit["Unit"]["Documentation"].replace("%%", "")


def test_a_workspace_path_a_unit_file_cannot_hold_is_refused_in_one_line(tmp_path):
    from farensed.errors import QueueError

    with pytest.raises(QueueError, match="caracteres de controlo"):
        render("farensed.service", Workspace(tmp_path / "a\nExecStartPre=/bin/rm -rf ~"))
