"""The daemon's loop never dies of one tick: an unexpected exception is logged, its item set aside, the loop slowed.

As rq's worker does with a job that raises: the traceback goes to the daemon's log (once per distinct error; a
repeat is counted, and said again at the 10th, 100th, ... time, so a stuck error never fills the disk), the job the
loop was handling fails with the reason (unless its child is still training: that one is left to finish), and the
next tick waits longer after each consecutive failure (1 s, 2 s, 4 s ... 60 s), so nothing spins the CPU.
"""

from __future__ import annotations

import logging
import traceback

from farensed.i18n import _
from farensed.queue import events
from farensed.queue.inbox import reason_of
from farensed.queue.job import JobStatus, now_iso

MAX_PAUSE_S = 60.0


def signature(exc: BaseException) -> tuple:
    """What makes two failures the same one: its kind, its text and where it was raised."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = (frames[-1].filename, frames[-1].lineno) if frames else None
    return type(exc).__name__, str(exc)[:200], where


class Mishaps:
    """Unexpected exceptions of the daemon's loop: logged once each, their item set aside, consecutive ones slowed."""

    def __init__(self, logger: logging.Logger, first_pause: float = 1.0):
        self.logger = logger
        self.first_pause = first_pause
        self.seen: dict[tuple, int] = {}
        self.consecutive = 0
        self.broken: set[int] = set()  # jobs that could not even be marked failed: never started again here

    def record(self, exc: BaseException, what: str, slow: bool = True) -> None:
        """Log `exc` (what the loop was doing: `what`) with its traceback the first time, counted after that;
        `slow`: the loop itself failed (the next tick waits), not one file already set aside."""
        key = signature(exc)
        count = self.seen[key] = self.seen.get(key, 0) + 1
        if count == 1:
            self.logger.error(
                _("erro inesperado ({what}): {reason}; o farensed continua").format(what=what, reason=reason_of(exc)),
                exc_info=(type(exc), exc, exc.__traceback__),
            )
        elif count in (10, 100, 1000) or count % 10_000 == 0:
            self.logger.error(
                _("o mesmo erro outra vez ({what}): {reason} ({count} vezes)").format(
                    what=what, reason=reason_of(exc), count=count
                )
            )
        self.consecutive += slow

    def set_aside(self, queue, job_id: int, exc: BaseException, alive: bool) -> None:
        """The job the loop was handling fails with the reason; a job whose child still trains is left alone."""
        if alive:
            return
        try:
            job = queue.get(job_id)
            if job.status.terminal:
                return
            job = queue.update(
                job_id,
                state=JobStatus.FAILED.value,
                ended_at=now_iso(),
                pid=None,
                error=_(
                    "erro interno do farensed: {reason} (traceback no log do farensed); farensectl retry {id}"
                ).format(reason=reason_of(exc), id=job_id),
            )
            reason = _("posto de parte por um erro inesperado")
            self.logger.info(events.ended_by_farensed(job, "internal_error", reason))
        except Exception:  # noqa: BLE001 - its job.json cannot even be written: skip it for this daemon's life
            self.broken.add(job_id)

    def pause(self) -> float:
        """Seconds to wait before the next tick: 0 after a clean tick, doubling with each consecutive failure."""
        doublings = min(self.consecutive - 1, 30)  # 2.0**n overflows past n=1023: a week of failures is still 60 s
        return 0.0 if not self.consecutive else min(MAX_PAUSE_S, self.first_pause * 2.0**doublings)

    def clean_tick(self) -> None:
        self.consecutive = 0
