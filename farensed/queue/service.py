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
from farensed.queue.pidfile import daemon_info, daemon_pid
from farensed.queue.servicefile import launch_agent, systemd_unit
from farensed.storage.atomic import atomic_write_bytes
from farensed.storage.jsonl import tail_lines
from farensed.storage.workspace import Workspace
from farensed.terminal import safe

TEMPLATES = Path(importlib.util.find_spec("farensed.systemd_launchd").origin).parent  # systemd_launchd/ at the root
LABEL = "com.farense.farensed"
UNIT = "farensed.service"


@dataclass
class Manager:
    """Where the service file goes and whether its manager can be used here."""

    kind: str  # "launchd", "systemd" or "process"
    unit_path: Path | None


def manager_label(kind: str) -> str:
    """A service manager as a person reads it: launchd and systemd by name, the fallback in words."""
    return _("processo em segundo plano") if kind == "process" else str(kind)


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
    """A service file with absolute paths for this Python and this workspace, built (farensed.queue.servicefile)."""
    if name.endswith(".plist"):
        return launch_agent(template(name), ws).decode()
    return systemd_unit(template(name), ws)


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
            _("{command} falhou: {error}").format(
                command=" ".join(cmd), error=(proc.stderr or proc.stdout).strip().splitlines()[-1:]
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


LOG_NAME = "farensed.log"


def last_log_line(ws: Workspace) -> str:
    """The last line farensed wrote to jobs/farensed.log (what a failed start shows), safe and short."""
    try:
        lines = [line for line in tail_lines(ws.jobs / LOG_NAME, 20) if line.strip()]
    except OSError:
        return ""
    return safe(lines[-1].decode(errors="replace").strip(), 300) if lines else ""


def await_ready(ws: Workspace, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> int | None:
    """Wait until the daemon has recovered its jobs and read the inbox once (jobs/daemon.pid's `ready_at`).

    A daemon that dies meanwhile (a poison file, a broken install) is one line with the log's last line; one that
    is alive but still reading a long inbox after `timeout` is returned as running.
    """
    deadline = time.monotonic() + timeout
    pid = None
    while time.monotonic() < deadline:
        info = daemon_info(ws)
        if info is not None and (proc is None or info["pid"] == proc.pid):
            pid = info["pid"]
            if info.get("ready_at"):
                return pid
        elif proc is not None and proc.poll() is not None:
            raise QueueError(
                _("farensed terminou ao arrancar (código {returncode}): {line}; ver {path}").format(
                    returncode=proc.returncode, line=last_log_line(ws) or "-", path=ws.jobs / LOG_NAME
                )
            )
        elif proc is None and pid is not None:
            raise QueueError(
                _("farensed (pid {pid}) terminou ao arrancar: {line}").format(pid=pid, line=last_log_line(ws) or "-")
            )
        time.sleep(0.05)
    return pid


def start_background(ws: Workspace, timeout: float = 30.0) -> int:
    """Start `farensed --home ROOT` detached, logging to jobs/farensed.log; return its pid once it serves."""
    if (pid := daemon_pid(ws)) is not None:
        return pid
    ws.jobs.mkdir(parents=True, exist_ok=True)
    log = open(ws.jobs / LOG_NAME, "ab")
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
    pid = await_ready(ws, proc, timeout)
    if pid is None:
        raise QueueError(
            _("farensed não arrancou em {timeout:.0f} s; ver {log}").format(timeout=timeout, log=ws.jobs / LOG_NAME)
        )
    return pid


def start(ws: Workspace) -> str:
    m = manager()
    if m.kind == "launchd" and m.unit_path.exists():
        _run(["launchctl", "kickstart", f"gui/{os.getuid()}/{LABEL}"])
        _started_by_manager(ws, _("ver {path}").format(path=ws.jobs / LOG_NAME))
        return _("farensed iniciado (launchd)")
    if m.kind == "systemd" and m.unit_path.exists():
        _run(["systemctl", "--user", "start", UNIT])
        _started_by_manager(ws, f"journalctl --user -u {UNIT} -n 20")
        return _("farensed iniciado (systemd)")
    return _("farensed a correr (pid {pid})").format(pid=start_background(ws))


def _started_by_manager(ws: Workspace, where: str, timeout: float = 30.0) -> None:
    """After launchctl/systemctl started it: the daemon serves, or one line saying it died and where to look."""
    if await_ready(ws, timeout=timeout) is None:
        raise QueueError(
            _("farensed não está a correr {timeout:.0f} s depois de arrancar; {where}").format(
                timeout=timeout, where=where
            )
        )


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
