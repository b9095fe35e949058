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


def mark_ready(ws: Workspace) -> None:
    """This daemon has recovered its jobs and ingested the inbox once: it is serving (what `daemon start` waits for)."""
    info = daemon_info(ws)
    if info is not None and info.get("pid") == os.getpid():
        atomic_write_json(ws.jobs / PID_FILE, {**info, "ready_at": now_iso()})


def daemon_info(ws: Workspace) -> dict | None:
    """jobs/daemon.pid of the live daemon of this queue ({pid, create_time, started_at, ready_at?}), if any."""
    try:
        info = read_json(ws.jobs / PID_FILE)
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or type(info.get("pid")) is not int or info["pid"] < 1:
        return None
    started = info.get("create_time")
    if not isinstance(started, (int, float)) or isinstance(started, bool):
        started = None
    return info if process_alive(info["pid"], started) else None


def daemon_pid(ws: Workspace) -> int | None:
    """The pid of the live daemon of this queue, if any."""
    info = daemon_info(ws)
    return info["pid"] if info else None
