"""Identifying a process by pid *and* start time, so a recycled pid is never mistaken for our child."""

from __future__ import annotations

import os
import signal

import psutil


def create_time(pid: int) -> float:
    return psutil.Process(pid).create_time()


def process_alive(pid: int | None, started: float | None) -> bool:
    """That exact process (pid and start time) is alive and not a zombie."""
    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        return (started is None or abs(proc.create_time() - started) < 0.5) and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def signal_group(pid: int, sig: int = signal.SIGTERM) -> bool:
    """Signal a child's process group (it runs in its own session); False if it is gone."""
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False
