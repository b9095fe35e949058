"""jobs/daemon.pid: which farensed serves this queue (pid + start time, so a reused pid is never mistaken for it)."""

from __future__ import annotations

import os

from farensed.queue.job import now_iso
from farensed.storage.atomic import atomic_write_json, read_json
from farensed.storage.procs import create_time, process_alive
from farensed.storage.workspace import Workspace

PID_FILE = "daemon.pid"


def record_daemon(ws: Workspace) -> None:
    """This process is the queue's daemon (written once it holds the queue's daemon lock)."""
    pid = os.getpid()
    atomic_write_json(
        ws.jobs / PID_FILE, {"pid": pid, "create_time": create_time(pid), "started_at": now_iso(), "home": str(ws.root)}
    )


def daemon_pid(ws: Workspace) -> int | None:
    """The pid of the live daemon of this queue, if any."""
    try:
        info = read_json(ws.jobs / PID_FILE)
    except (OSError, ValueError):
        return None
    return info["pid"] if process_alive(info.get("pid"), info.get("create_time")) else None
