"""Keep the machine awake while a job runs, and tell the user when it ends (where the OS offers it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

from farensed.i18n import _

_unavailable: set[str] = set()  # tools that failed once: say so once, not at every job


def inhibit_command(pid: int, platform: str = sys.platform, which=shutil.which) -> list[str] | None:
    """The command that keeps this machine awake until PID exits, or None where there is none.

    macOS: `caffeinate -i -s -w PID` (-i: no idle sleep; -s: no system sleep while on mains power). A closed
    MacBook lid still sleeps the machine: the job then resumes exactly when it wakes and farensed finds it.
    Linux: `systemd-inhibit` around `tail --pid=PID`, which ends when PID does.
    """
    if platform == "darwin" and which("caffeinate"):
        return ["caffeinate", "-i", "-s", "-w", str(pid)]
    if which("systemd-inhibit") and which("tail"):
        return [
            "systemd-inhibit",
            "--what=sleep:idle",
            "--who=farensed",
            "--why=treino em curso",
            "--mode=block",
            "tail",
            f"--pid={pid}",
            "-s",  # looks for PID twice a second (as the daemon polls its child), not once: the lock ends with it
            "0.5",
            "-f",
            "/dev/null",
        ]
    return None


def keep_awake(pid: int, log) -> subprocess.Popen | None:
    """Keep the machine awake while PID (a started or an adopted child) runs; None (and a log line) where impossible.

    Best effort: it never raises, so a failure here can never lose the child it was asked to cover.
    """
    if _unavailable:
        return None
    cmd = inhibit_command(pid)
    if cmd is None:
        log(_("sem caffeinate nem systemd-inhibit: a máquina pode adormecer durante o treino"))
        _unavailable.add("all")
        return None
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as exc:
        log(_("{command} não arrancou ({error}): a máquina pode adormecer").format(command=cmd[0], error=exc))
        _unavailable.add(cmd[0])
        return None
    time.sleep(0.1)
    if proc.poll() is not None:
        log(
            _("{command} não está disponível aqui (código {returncode}): a máquina pode adormecer").format(
                command=cmd[0], returncode=proc.returncode
            )
        )
        _unavailable.add(cmd[0])
        return None
    return proc


def release(proc: subprocess.Popen | None) -> None:
    """End a keep-awake helper (never raises: a stuck helper is killed)."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.terminate()
        proc.wait(timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()


def _applescript_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def notify(title: str, message: str) -> None:
    """A desktop notification (osascript / notify-send) where available; silently nothing elsewhere."""
    try:
        if sys.platform == "darwin" and shutil.which("osascript"):
            script = f"display notification {_applescript_string(message)} with title {_applescript_string(title)}"
            subprocess.run(["osascript", "-e", script], timeout=5, capture_output=True)
        elif shutil.which("notify-send"):
            subprocess.run(["notify-send", title, message], timeout=5, capture_output=True)
    except (OSError, subprocess.SubprocessError):
        pass
