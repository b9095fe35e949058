"""Identifying a process by pid *and* start time, so a recycled pid is never mistaken for our child."""

from __future__ import annotations

import contextlib
import os
import signal

import psutil

from farensed.i18n import _
from farensed.signals import signal_name


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity on Linux, every core elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def create_time(pid: int) -> float:
    return psutil.Process(pid).create_time()


def process_alive(pid, started) -> bool:
    """That exact process (pid and start time) is alive and not a zombie; any malformed value (from a hand-edited or
    torn record) reads as not alive."""
    if not pid or isinstance(pid, bool):
        return False
    try:
        proc = psutil.Process(int(pid))
        same = started is None or abs(proc.create_time() - float(started)) < 0.5
        return same and proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, TypeError, ValueError, OverflowError):
        return False


def signal_group(pid: int, sig: int = signal.SIGTERM) -> bool:
    """Signal a child's process group (it runs in its own session); False if it is gone."""
    if type(pid) is not int or pid <= 1 or pid == os.getpgrp():  # never init's group, never our own
        return False
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError, OverflowError, TypeError, ValueError):
        return False


def oom_kills() -> int | None:
    """The kernel's count of OOM kills so far (Linux /proc/vmstat), None where it is not available."""
    try:
        with open("/proc/vmstat", "rb") as fh:
            for line in fh:
                if line.startswith(b"oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def describe_loss(returncode: int | None, oom_before: int | None) -> str:
    """Why a child ended without exit.json, as far as it can be known (signal, OOM killer, unknown)."""
    after = oom_kills()
    oom = oom_before is not None and after is not None and after > oom_before
    if returncode is not None and returncode < 0:
        name = signal_name(-returncode)
        if oom and -returncode == signal.SIGKILL:
            return _("morto pelo kernel por falta de memória (OOM, {name})").format(name=name)
        return _("morto pelo sinal {name}").format(name=name)
    if oom:
        return _("desapareceu; o kernel matou processos por falta de memória (OOM) entretanto")
    if returncode is not None:
        return _("terminou com código {returncode} sem exit.json").format(returncode=returncode)
    return _("desapareceu (código de saída desconhecido: processo adotado)")


def group_members(pgid: int) -> list[psutil.Process]:
    """Live processes of a child's process group (ranks or a launcher orphaned by a dead child)."""
    out = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return out


def kill_orphans(pgid: int | None, home: str) -> int:
    """SIGKILL what is left of a lost child's own process group (it ran in its own session); count killed.

    Only processes whose command line names this workspace (`home`): a recycled pid's group is never ours to kill.
    """
    if not pgid:
        return 0
    killed = 0
    for proc in group_members(pgid):
        try:
            ours = proc.pid != os.getpid() and home in " ".join(proc.cmdline())
        except psutil.Error:
            continue
        if ours:
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed += 1
    return killed
