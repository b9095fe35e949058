"""farensed as a service: launchd LaunchAgent on macOS, systemd --user unit on Linux, else a background process."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from farensed.errors import QueueError
from farensed.i18n import _
from farensed.queue.pidfile import daemon_pid
from farensed.storage.atomic import atomic_write_bytes
from farensed.storage.workspace import Workspace

TEMPLATES = Path(importlib.util.find_spec("farensed.systemd_launchd").origin).parent  # systemd_launchd/ at the root
LABEL = "com.farense.farensed"
UNIT = "farensed.service"


@dataclass
class Manager:
    """Where the service file goes and whether its manager can be used here."""

    kind: str  # "launchd", "systemd" or "process"
    unit_path: Path | None


def template(name: str) -> str:
    path = TEMPLATES / name
    if not path.is_file():
        raise QueueError(
            _("modelo de serviço em falta: {path} (instale farense a partir do repositório: pip install -e .)").format(
                path=path
            )
        )
    return path.read_text()


def render(name: str, ws: Workspace) -> str:
    """A service file with absolute paths for this Python and this workspace."""
    return template(name).replace("@PYTHON@", sys.executable).replace("@HOME@", str(ws.root))


def _systemd_usable() -> bool:
    if not shutil.which("systemctl"):
        return False
    try:
        proc = subprocess.run(["systemctl", "--user", "show-environment"], capture_output=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def manager() -> Manager:
    if sys.platform == "darwin" and shutil.which("launchctl"):
        return Manager("launchd", Path.home() / "Library/LaunchAgents" / f"{LABEL}.plist")
    if sys.platform.startswith("linux") and _systemd_usable():
        return Manager("systemd", Path.home() / ".config/systemd/user" / UNIT)
    return Manager("process", None)


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise QueueError(
            _("{items} falhou: {value}").format(
                items=" ".join(cmd), value=(proc.stderr or proc.stdout).strip().splitlines()[-1:]
            )
        )


def install(ws: Workspace) -> str:
    """Render and load the service; where no manager is usable, start a background daemon instead."""
    m = manager()
    if m.kind == "launchd":
        atomic_write_bytes(m.unit_path, render("farensed.plist", ws).encode())
        subprocess.run(["launchctl", "bootout", f"gui/{os.getuid()}", str(m.unit_path)], capture_output=True)
        _run(["launchctl", "bootstrap", f"gui/{os.getuid()}", str(m.unit_path)])
        return _("LaunchAgent instalado: {unit_path}").format(unit_path=m.unit_path)
    if m.kind == "systemd":
        atomic_write_bytes(m.unit_path, render("farensed.service", ws).encode())
        _run(["systemctl", "--user", "daemon-reload"])
        _run(["systemctl", "--user", "enable", "--now", UNIT])
        return _("unidade systemd instalada: {unit_path}").format(unit_path=m.unit_path)
    pid = start_background(ws)
    return (
        _(
            "⚠  Sem launchd nem systemd utilizável aqui: farensed a correr em segundo plano (pid {pid}), mas NÃO volta "
            "depois de reiniciar a máquina."
        ).format(pid=pid)
        + "\n"
        + persistence_hint(ws)
    )


def persistence_hint(ws: Workspace) -> str:
    """How to make farensed come back after a reboot where `daemon install` could not use a service manager."""
    import getpass
    import shlex

    log = ws.jobs / "farensed.log"
    cron = (
        f"@reboot {shlex.quote(sys.executable)} -m farensed.queue.main --home {shlex.quote(str(ws.root))} "
        f">> {shlex.quote(str(log))} 2>&1"
    )
    if sys.platform.startswith("linux") and shutil.which("systemctl"):
        return _(
            "Para que volte: loginctl enable-linger {user} (o systemd do utilizador passa a arrancar sem sessão) e "
            "farensectl daemon install outra vez; ou, no crontab -e: {cron}"
        ).format(user=getpass.getuser(), cron=cron)
    return _("Para que volte: no crontab -e, {cron} (ou um serviço do sistema com o mesmo comando)").format(cron=cron)


def uninstall(ws: Workspace) -> str:
    m = manager()
    if m.kind == "launchd" and m.unit_path.exists():
        subprocess.run(["launchctl", "bootout", f"gui/{os.getuid()}", str(m.unit_path)], capture_output=True)
        m.unit_path.unlink()
        return _("LaunchAgent removido: {unit_path}").format(unit_path=m.unit_path)
    if m.kind == "systemd" and m.unit_path.exists():
        subprocess.run(["systemctl", "--user", "disable", "--now", UNIT], capture_output=True)
        m.unit_path.unlink()
        _run(["systemctl", "--user", "daemon-reload"])
        return _("unidade systemd removida: {unit_path}").format(unit_path=m.unit_path)
    stop(ws)
    return _("nenhum serviço instalado; farensed parado")


def start_background(ws: Workspace, timeout: float = 10.0) -> int:
    """Start `farensed --home ROOT` detached, logging to jobs/farensed.log; return its pid."""
    if (pid := daemon_pid(ws)) is not None:
        return pid
    ws.jobs.mkdir(parents=True, exist_ok=True)
    log = open(ws.jobs / "farensed.log", "ab")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "farensed.queue.main", "--home", str(ws.root)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=ws.root,
        env=env,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon_pid(ws) == proc.pid:
            return proc.pid
        if proc.poll() is not None:
            raise QueueError(
                _("farensed terminou ao arrancar (código {returncode}); ver {value}").format(
                    returncode=proc.returncode, value=ws.jobs / "farensed.log"
                )
            )
        time.sleep(0.05)
    raise QueueError(
        _("farensed não arrancou em {timeout:.0f} s; ver {value}").format(
            timeout=timeout, value=ws.jobs / "farensed.log"
        )
    )


def start(ws: Workspace) -> str:
    m = manager()
    if m.kind == "launchd" and m.unit_path.exists():
        _run(["launchctl", "kickstart", f"gui/{os.getuid()}/{LABEL}"])
        return _("farensed iniciado (launchd)")
    if m.kind == "systemd" and m.unit_path.exists():
        _run(["systemctl", "--user", "start", UNIT])
        return _("farensed iniciado (systemd)")
    return _("farensed a correr (pid {pid})").format(pid=start_background(ws))


def stop(ws: Workspace, timeout: float = 330.0) -> str:
    """SIGTERM the daemon (it checkpoints the running job) and wait for it to exit."""
    m = manager()
    if m.kind in ("launchd", "systemd") and m.unit_path and m.unit_path.exists():
        cmd = (
            ["launchctl", "kill", "SIGTERM", f"gui/{os.getuid()}/{LABEL}"]
            if m.kind == "launchd"
            else ["systemctl", "--user", "stop", UNIT]
        )
        subprocess.run(cmd, capture_output=True)
    pid = daemon_pid(ws)
    if pid is None:
        return _("farensed não está a correr")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and daemon_pid(ws) == pid:
        time.sleep(0.1)
    if daemon_pid(ws) == pid:
        raise QueueError(_("farensed (pid {pid}) não parou em {timeout:.0f} s").format(pid=pid, timeout=timeout))
    return _("farensed parado (pid {pid})").format(pid=pid)


def status(ws: Workspace) -> dict:
    pid = daemon_pid(ws)
    m = manager()
    installed = bool(m.unit_path and m.unit_path.exists())
    return {
        "running": pid is not None,
        "pid": pid,
        "manager": m.kind,
        "installed": installed,
        "survives_reboot": installed,  # a background process (manager "process") does not come back
        "home": str(ws.root),
    }
