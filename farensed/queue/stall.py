"""A child that shows no sign of life for too long is stopped and its job failed with the reason, so one stuck job
(a chat template that loops, a driver that hangs) never holds the queue all night.

A sign of life is anything the child writes: its log (banner, progress bar, evaluation), its run folder (metrics,
state, checkpoints, outputs). A slow run writes; a stuck one writes nothing. The child gets SIGTERM (before
training it ends at once; in training it checkpoints at the next update boundary), then SIGKILL if that boundary
never comes.
"""

from __future__ import annotations

import enum
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from farensed.i18n import _, ngettext
from farensed.queue import events
from farensed.queue.job import job_run_dir, now_iso

DEFAULT_MINUTES = 60.0
MIN_MINUTES = 0.1  # 6 s: what a test needs; a healthy start-up may be quieter than that
KILL_AFTER_S = 60.0  # after the SIGTERM: a child stuck in a loop never reaches its checkpoint
LOOK_EVERY_S = 5.0  # the log and the run folder are looked at this often, not at every tick


class Stall(enum.Enum):
    NONE = "none"
    STOP = "stop"  # SIGTERM, and the job will fail with the reason
    KILL = "kill"  # SIGKILL: the SIGTERM did not end it


def activity(paths: list[Path]) -> tuple:
    """What the child has written so far: size and modification time of each file, and of each run folder entry."""
    marks = []
    for path in paths:
        try:
            st = path.stat()
            marks.append((str(path), st.st_mtime_ns, st.st_size))
            if path.is_dir():  # a file replaced inside (temp → rename) moves the folder's time; an append does not
                with os.scandir(path) as entries:
                    marks += sorted((e.name, e.stat().st_mtime_ns, e.stat().st_size) for e in entries)
        except OSError:
            continue  # not there yet (the run folder), or gone: nothing written there
    return tuple(marks)


@dataclass
class StallWatch:
    """Watches one child at a time; `limit_s` None turns it off."""

    limit_s: float | None = DEFAULT_MINUTES * 60
    kill_after_s: float = KILL_AFTER_S
    clock: object = time.monotonic
    _job: object = field(default=None, repr=False)
    _mark: tuple = field(default=(), repr=False)
    _since: float = field(default=0.0, repr=False)
    _looked: float = field(default=float("-inf"), repr=False)
    _stopped: float | None = field(default=None, repr=False)

    def check(self, child, paths) -> Stall:
        """NONE while the child writes; STOP once after `limit_s` of silence; KILL once `kill_after_s` later.
        `child` names one process (job id and pid: a retry of the same job is a new child, watched from zero);
        `paths()` gives the files and folders to look at (called only when it looks)."""
        now = self.clock()
        if self.limit_s is None:
            return Stall.NONE
        if child != self._job:  # a new child (or one adopted by this daemon): its silence starts now
            self._job, self._mark, self._since, self._looked, self._stopped = child, activity(paths()), now, now, None
            return Stall.NONE
        if self._stopped is not None:
            if now - self._stopped >= min(self.kill_after_s, self.limit_s):
                self._stopped = float("inf")  # one SIGKILL is enough
                return Stall.KILL
            return Stall.NONE
        if now - self._looked < min(LOOK_EVERY_S, self.limit_s / 4):
            return Stall.NONE
        self._looked = now
        mark = activity(paths())
        if mark != self._mark:
            self._mark, self._since = mark, now
            return Stall.NONE
        if now - self._since >= self.limit_s:
            self._stopped = now
            return Stall.STOP
        return Stall.NONE

    def reason(self) -> str:
        """Why the job failed, for its error line and the log."""
        if self.limit_s < 120:
            silence = _("{seconds} s").format(seconds=round(self.limit_s))
        else:
            minutes = round(self.limit_s / 60)
            silence = ngettext("{minutes} minuto", "{minutes} minutos", minutes).format(minutes=minutes)
        return _(
            "sem sinal de vida há {silence} (nada escrito no log nem na pasta da corrida): parado pelo farensed"
        ).format(silence=silence)

    def tick(self, daemon) -> None:
        """The daemon's child that wrote nothing for the limit: SIGTERM, then SIGKILL; its job fails with the reason."""
        run = daemon.current
        if run is None:
            return
        verdict = self.check((run.job_id, run.pid), lambda: written_by(daemon, run.job_id))
        if verdict is Stall.STOP:
            run.stalled = self.reason()
            job = daemon.queue.get(run.job_id)
            daemon.log(_("job {job_id}: {reason}; a parar").format(job_id=run.job_id, reason=run.stalled))
            with open(daemon.queue.log_path(job.id), "ab") as fh:
                fh.write(events.stop_frame(job.id, job.attempts, now_iso(), run.stalled, checkpoint=False).encode())
            daemon.signal_child(signal.SIGTERM)
        elif verdict is Stall.KILL:
            daemon.log(_("job {job_id}: não parou com SIGTERM; SIGKILL").format(job_id=run.job_id))
            daemon.signal_child(signal.SIGKILL)


def written_by(daemon, job_id: int) -> list[Path]:
    """Where a child's signs of life land: its log, its run folder, its output folder."""
    job = daemon.queue.get(job_id)
    return [daemon.queue.log_path(job_id), job_run_dir(daemon.ws, job), daemon.ws.output_dir(job.name)]


def failed_line(job_id: int, reason: str) -> str:
    """The job log's last word on a stalled job (the child, stopped, may have said it would resume)."""
    return (
        "\n"
        + _("✖ job {job_id} falhou: {reason}. Para tentar de novo: farensectl retry {job_id}").format(
            job_id=job_id, reason=reason
        )
        + "\n"
    )
