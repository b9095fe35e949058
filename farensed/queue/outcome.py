"""How a child's end becomes the job's next state: done, pending again (resumable, or lost with a back-off),
failed with its one-line reason, or cancelled. Pure decisions over a job and an exit code, tested in seconds."""

from __future__ import annotations

import re
from pathlib import Path

from farensed import EXIT_RESUMABLE
from farensed.errors import ERROR_PREFIXES
from farensed.i18n import _
from farensed.queue import backoff
from farensed.queue.job import Job, JobStatus, now_iso, seconds_since
from farensed.storage.jsonl import tail_lines

# the child's FarenseError line, in either language (after an unfinished progress bar's `]`, if any)
FAILURE_RE = re.compile(r"(?:^|\])(?:" + "|".join(re.escape(p) for p in ERROR_PREFIXES) + r")(.+)$")


def last_lines(path: Path, n: int = 10) -> str:
    """The last `n` non-blank lines of a log, each as its last progress-bar redraw (after the final \\r)."""
    try:
        raw = tail_lines(path, 4 * n)
    except OSError:
        return ""
    lines = [line.split(b"\r")[-1].decode(errors="replace") for line in raw]
    return "\n".join([line for line in lines if line.strip()][-n:])


def failure_line(text: str) -> str:
    """The child's one-line error (`Error: …`, e.g. `sem espaço em disco …`) when it printed one — possibly right
    after an unfinished progress bar — else the log's last lines (a traceback)."""
    for line in reversed(text.splitlines()):
        if m := FAILURE_RE.search(line):
            return m.group(1)
    return "\n".join(text.splitlines()[-10:])


def ending(
    job: Job,
    code: int | None,
    reason: str | None,
    failure: str | None,
    schedule,
    ended: str | None = None,
    stalled: str | None = None,
) -> dict:
    """The changes to a job whose child ended with `code` (None: lost, `reason` says how) at `ended` (else now);
    a child the stall watch stopped (`stalled`) fails with that reason unless it finished or was cancelled."""
    changes = {"pid": None, "pid_create_time": None, "exit_code": code, "retry_at": None}
    changes.update(ran_time(job, ended))
    if stalled and code != 0 and not job.cancel_requested:  # a stuck job would hang again: the user decides (retry)
        changes.update(state=JobStatus.FAILED.value, ended_at=now_iso(), error=stalled, loss_reason=stalled)
        return changes
    if job.held and code == EXIT_RESUMABLE:
        changes["loss_reason"] = _("parado pela guarda de memória: {held}").format(held=job.held)
    if code is None:
        changes["loss_reason"] = reason or _("processo de treino perdido")
        changes.update(_lost(job, changes["loss_reason"], schedule))
    elif code == 0:
        changes.update(state=JobStatus.DONE.value, ended_at=now_iso(), error=None)
    elif code == EXIT_RESUMABLE and job.cancel_requested:
        changes.update(state=JobStatus.CANCELLED.value, ended_at=now_iso(), error=_("cancelado"))
    elif code == EXIT_RESUMABLE:
        changes.update(state=JobStatus.PENDING.value, error=None)
    else:
        error = failure or _("código de saída {code}").format(code=code)
        changes.update(state=JobStatus.FAILED.value, ended_at=now_iso(), error=error)
    return changes


def ran_time(job: Job, ended: str | None = None) -> dict:
    """The time the child just ended ran, added to the job's total (pauses and waits between starts not counted)."""
    ran = seconds_since(job.started_at, ended)
    if ran is None:
        return {}
    total = job.ran_s if isinstance(job.ran_s, (int, float)) and job.ran_s >= 0 else 0.0
    return {"last_ran_s": round(ran, 1), "ran_s": round(total + ran, 1)}


def _lost(job: Job, loss_reason: str, schedule) -> dict:
    """A child that left no exit code: cancelled if a cancel was pending, failed past max_recoveries, else pending
    again after the back-off."""
    if job.cancel_requested:
        return {
            "state": JobStatus.CANCELLED.value,
            "ended_at": now_iso(),
            "error": _("cancelado (o processo perdeu-se)"),
        }
    recoveries = job.recoveries + 1
    if recoveries > job.max_recoveries:
        return {
            "state": JobStatus.FAILED.value,
            "recoveries": recoveries,
            "ended_at": now_iso(),
            "error": _("processo perdido {recoveries} vezes (max_recoveries={max_recoveries})").format(
                recoveries=recoveries, max_recoveries=job.max_recoveries
            ),
        }
    return {
        "state": JobStatus.PENDING.value,
        "recoveries": recoveries,
        "retry_at": backoff.retry_time(recoveries, schedule),
        "error": _("processo de treino perdido ({reason}); retoma do último checkpoint daqui a {wait:g} s").format(
            reason=loss_reason, wait=backoff.delay(recoveries, schedule)
        ),
    }
