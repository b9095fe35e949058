"""The morning report's process, started by the daemon when the queue drains: one at a time, bounded.

jobs/report.json records the last report the daemon started (pid + start time, when, since when). A report still
running is never started again (a queue that drains every minute made ten at once); each report covers the jobs
since the previous one began (at most the last 24 hours), not the whole history (with ~300 jobs one report cost 132 s of CPU); and each ends
itself after REPORT_TIME_LIMIT_S (`report --time-limit`), so none outlives the daemon by more than its own run.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Callable

from farensed.i18n import _
from farensed.queue.job import now_iso, parse_time
from farensed.storage.atomic import atomic_write_json, read_json_dict
from farensed.storage.procs import create_time, process_alive
from farensed.storage.workspace import Workspace

REPORT_FILE = "report.json"
REPORT_TIME_LIMIT_S = 600


def last_report(ws: Workspace) -> dict:
    """jobs/report.json ({} before the first report)."""
    return read_json_dict(ws.jobs / REPORT_FILE) or {}


def report_running(ws: Workspace) -> int | None:
    """The pid of the report the daemon started, while that very process runs."""
    record = last_report(ws)
    pid, started = record.get("pid"), record.get("create_time")
    if type(pid) is not int or not isinstance(started, (int, float)):
        return None
    return pid if process_alive(pid, started) else None


def _since(previous) -> str | None:
    """The previous report's start when it lies within the last day; else None (the report's own default: 24 h)."""
    try:
        when = parse_time(previous)
    except ValueError:
        return None
    return previous if when >= dt.datetime.now().astimezone() - dt.timedelta(hours=24) else None


def start_report(ws: Workspace, log: Callable[[str], None]) -> subprocess.Popen | None:
    """`farensectl report --notify` for the jobs since the previous report; None when one still runs."""
    if (pid := report_running(ws)) is not None:
        log(_("o relatório anterior ainda corre (pid {pid}): não se inicia outro").format(pid=pid))
        return None
    since = _since(last_report(ws).get("started_at"))
    cmd = [sys.executable, "-m", "farensed.cli.main", "--home", str(ws.root), "report", "--notify"]
    cmd += ["--time-limit", str(REPORT_TIME_LIMIT_S)] + (["--since", since] if isinstance(since, str) else [])
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ws.root
    )
    try:
        started = create_time(proc.pid)
    except Exception:  # noqa: BLE001 - psutil: it ended already; recorded without a start time
        started = None
    try:
        atomic_write_json(
            ws.jobs / REPORT_FILE, {"pid": proc.pid, "create_time": started, "started_at": now_iso(), "since": since}
        )
    except OSError:  # unrecorded, a report could be started again next tick: none at all rather than two
        proc.terminate()
        raise
    return proc
