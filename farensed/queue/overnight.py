"""Overnight on a laptop: training windows, power awareness, queue pause, and the report when the queue drains.

The daemon calls `Overnight.tick()` once per loop: it checkpoint-stops the running job (SIGTERM to its group: the
child finishes the current optimizer update, checkpoints and exits 75) when its window closes, the battery runs low
or the queue is paused, and says which pending jobs may start. Such a stop is neither a recovery nor an attempt.

jobs/
  paused.json        the queue is paused (`farensectl pause`); survives daemon restarts
  overnight.json     the daemon's settings (default window, battery minimum) and whether it waits for mains power
  <id>/pause.json    the job's overnight stops: the one in progress and the history (for `status` and the report)
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
from collections.abc import Callable

from farensed import EXIT_RESUMABLE
from farensed.i18n import _
from farensed.queue import events, power
from farensed.queue.child import CHILD_FILE
from farensed.queue.job import Job, JobStatus, now_iso
from farensed.queue.jobs import Queue
from farensed.queue.reporter import start_report
from farensed.spec.window import Window, format_clock, is_open, next_open, open_until, parse_windows
from farensed.storage.atomic import atomic_write_json, read_json_dict
from farensed.storage.workspace import Workspace

PAUSED_FILE, SETTINGS_FILE, JOB_PAUSE_FILE = "paused.json", "overnight.json", "pause.json"


def local_now() -> dt.datetime:
    return dt.datetime.now().astimezone()


# ---- queue pause ---------------------------------------------------------------------------------------
def queue_paused(ws: Workspace) -> dict | None:
    """The pause record when the queue is paused, else None."""
    return read_json_dict(ws.jobs / PAUSED_FILE)


def pause_queue(ws: Workspace) -> dict:
    """Pause the queue: the running job checkpoint-stops, nothing new starts (until `resume_queue`)."""
    record = queue_paused(ws) or {"paused_at": now_iso()}
    atomic_write_json(ws.jobs / PAUSED_FILE, record)
    return record


def resume_queue(ws: Workspace) -> bool:
    """Unpause the queue; False when it was not paused."""
    path = ws.jobs / PAUSED_FILE
    if not path.exists():
        return False
    path.unlink()  # a flag, not user data
    return True


# ---- what a job's window is ----------------------------------------------------------------------------
def settings(ws: Workspace) -> dict:
    """The daemon's overnight settings as it last wrote them ({} before any daemon ran); a value of the wrong type
    (a hand edit, a torn file) reads as absent."""
    raw = read_json_dict(ws.jobs / SETTINGS_FILE) or {}
    kinds = {"window": str, "power_wait": str, "battery_min": (int, float)}
    return {k: v for k, v in raw.items() if k in kinds and isinstance(v, kinds[k]) and not isinstance(v, bool)}


def job_window_text(queue: Queue, job: Job, default: str | None) -> str | None:
    """The job's own `window` from its spec.json, else the daemon's default."""
    spec = read_json_dict(queue.job_dir(job.id) / "spec.json") or {}
    own = spec.get("window")
    return own if isinstance(own, str) and own.strip() else default


def windows_of(text: str | None) -> list[Window] | None:
    if not text or not isinstance(text, str):
        return None
    try:
        return parse_windows(text)
    except ValueError:
        return None  # validated at submit; a bad hand edit must not stop the daemon


def pause_of(queue: Queue, job: Job, now: dt.datetime | None = None, conf: dict | None = None) -> str | None:
    """Why a pending job waits overnight, e.g. `em pausa até 23:00`; None when nothing overnight holds it."""
    if job.status is not JobStatus.PENDING:
        return None
    now = now or local_now()
    conf = settings(queue.ws) if conf is None else conf
    if queue_paused(queue.ws):
        return _("em pausa (fila em pausa: farensectl resume)")
    if conf.get("power_wait"):
        return _("em pausa: {power_wait}").format(power_wait=conf["power_wait"])
    windows = windows_of(job_window_text(queue, job, conf.get("window")))
    if windows and not is_open(windows, now):
        return _("em pausa até {time}").format(time=format_clock(next_open(windows, now)))
    return None


def resumes_after_pause(queue: Queue, job: Job) -> bool:
    """Whether starting `job` now resumes an attempt that an overnight stop (window, power, queue pause) ended: its
    child was checkpoint-stopped for it (exit 75), nothing was lost since and no `retry` came in between. Such a
    resume is not a new attempt."""
    stopping = (read_json_dict(queue.job_dir(job.id) / JOB_PAUSE_FILE) or {}).get("stopping")
    if not isinstance(stopping, dict) or job.attempts < 1 or job.exit_code != EXIT_RESUMABLE:
        return False
    return stopping.get("recoveries", job.recoveries) == job.recoveries


def child_ready(job_dir, pid: int) -> bool:
    """True once the child `pid` has recorded itself in child.json: it installs its stop handler before that, so a
    SIGTERM from then on is a checkpoint-stop (or a clean exit 75 before training), never a lost child."""
    record = read_json_dict(job_dir / CHILD_FILE)
    return bool(record) and record.get("pid") == pid


class Overnight:
    """The daemon's overnight policy: windows, power, queue pause, and the report when the queue drains."""

    def __init__(
        self,
        ws: Workspace,
        window: str | None = None,
        battery_min: float | None = power.DEFAULT_BATTERY_MIN,
        report: bool = True,
        log: Callable[[str], None] = print,
    ):
        if window:
            parse_windows(window)  # the command line validates first; a library caller gets the ValueError
        self.ws, self.queue = ws, Queue(ws)
        self.window, self.battery_min, self.report, self.log = window, battery_min, report, log
        self.power_wait: str | None = None
        self.stop_sent: int | None = None  # pid of the child already asked to stop
        self.busy = False  # some job was not finished at the previous tick
        self.reporter: subprocess.Popen | None = None
        self.settings_written = False  # written at the first tick, once this daemon holds the queue

    def _write_settings(self) -> None:
        self.settings_written = True
        atomic_write_json(
            self.ws.jobs / SETTINGS_FILE,
            {"window": self.window, "battery_min": self.battery_min, "power_wait": self.power_wait},
        )

    # ---- one tick of the daemon loop -----------------------------------------------------------------
    def tick(self, daemon) -> Callable[[Job], bool] | None:
        """Stop the running job if it must pause; return which pending jobs may start (None: none may)."""
        now = local_now()
        if not self.settings_written:
            self._write_settings()
        self._check_power()
        paused = queue_paused(self.ws)
        current = daemon.current
        if current is not None:
            job = self.queue.get(current.job_id)
            reason = self._stop_reason(job, now, paused)
            if reason and self.stop_sent != current.pid and child_ready(self.queue.job_dir(job.id), current.pid):
                self._stop(daemon, job, reason, now)
        elif self.stop_sent is not None:
            self.stop_sent = None
        self._check_drained(current)
        if paused or self.power_wait:
            return None
        default = self.window
        return lambda job: is_open(windows_of(job_window_text(self.queue, job, default)), now)

    def started(self, job: Job) -> None:
        """A job just started: its overnight stop, if any, is over (the daemon counted no new attempt for it)."""
        path = self.queue.job_dir(job.id) / JOB_PAUSE_FILE
        record = read_json_dict(path)
        if not record or not record.get("stopping"):
            return
        record.pop("stopping")
        history = record.get("history")
        if isinstance(history, list) and history and isinstance(history[-1], dict):
            history[-1]["resumed_at"] = now_iso()
        atomic_write_json(path, record)

    # ---- decisions --------------------------------------------------------------------------------------
    def _check_power(self) -> None:
        reading = power.read_battery()
        waiting = power.must_wait(reading, self.battery_min, self.power_wait is not None)
        reason = (self.power_wait or power.describe(reading, self.battery_min)) if waiting else None
        if reason != self.power_wait:
            self.log(reason or _("corrente ligada: a fila continua"))
            self.power_wait = reason
            self._write_settings()

    def _stop_reason(self, job: Job, now: dt.datetime, paused: dict | None) -> str | None:
        if job.cancel_requested:
            return None
        if paused:
            return _("fila em pausa")
        if self.power_wait:
            return self.power_wait
        windows = windows_of(job_window_text(self.queue, job, self.window))
        if windows and open_until(windows, now) is None:
            return _("janela fechada; em pausa até {time}").format(time=format_clock(next_open(windows, now)))
        return None

    def _stop(self, daemon, job: Job, reason: str, now: dt.datetime) -> None:
        # The stop first: whatever happens to the bookkeeping below, the job leaves its window or the battery.
        self.stop_sent = daemon.current.pid
        daemon.signal_child(signal.SIGTERM)
        path = self.queue.job_dir(job.id) / JOB_PAUSE_FILE
        record = read_json_dict(path) or {}
        history = record.get("history") if isinstance(record.get("history"), list) else []
        record["stopping"] = {"reason": reason, "at": now_iso(), "recoveries": job.recoveries}
        record["history"] = [*history, {"at": now_iso(), "reason": reason}]
        atomic_write_json(path, record)
        self.log(
            _("job {id} ({name}): {reason}; a parar com checkpoint").format(id=job.id, name=job.name, reason=reason)
        )
        with open(self.queue.log_path(job.id), "ab") as fh:
            fh.write(events.stop_frame(job.id, job.attempts, now_iso(), reason).encode())

    # ---- the morning report ---------------------------------------------------------------------------
    def _check_drained(self, current) -> None:
        if self.reporter is not None and self.reporter.poll() is not None:
            self.reporter = None
        jobs = self.queue.jobs()
        busy = current is not None or any(not j.status.terminal for j in jobs)
        drained = self.busy and not busy and jobs and self.report
        self.busy = busy  # first: a report that fails to start is not tried again at every tick
        if drained:
            self.log(_("fila terminada: a escrever o relatório"))
            self.reporter = start_report(self.ws, self.log) or self.reporter  # one at a time, since the last one
