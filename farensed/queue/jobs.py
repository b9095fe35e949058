"""The file queue under jobs/: job ids, states, the inbox jobs/pending/, and atomic transitions.

jobs/
  pending/               inbox: any spec file (submit writes here; a copy by hand works too)
  failed/                invalid inbox files, kept, each with <file>.reason.txt
  <id>/                  one folder per job: spec.json, submitted.json, job.json (state), log, exit.json
  .queue.lock            held briefly for every id allocation, ingestion and state change
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from filelock import FileLock

from farensed.errors import QueueError
from farensed.i18n import _
from farensed.queue.intake import Intake
from farensed.queue.job import (
    JOB_FILE,
    LOG_FILE,
    Job,
    JobStatus,
    job_id_of,
    job_run_dir,
    now_iso,
    parse_time,
    relative_to_ws,
    state_label,
)
from farensed.queue.jobfile import salvage
from farensed.storage.atomic import atomic_write_json, read_json
from farensed.storage.exitfile import EXIT_FILE, read_exit_code
from farensed.storage.workspace import Workspace


def _private_folder(folder: Path) -> None:
    """jobs/ and its inboxes exist and are 0700; a folder made read-only on purpose stays so (readers still work)."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        mode = folder.stat().st_mode
        if mode & 0o077:
            os.chmod(folder, mode & 0o700 | 0o700)
    except OSError as exc:
        if not folder.is_dir():
            raise QueueError(
                _("{path}: não foi possível criar a pasta da fila ({strerror})").format(
                    path=folder, strerror=exc.strerror
                )
            ) from None


class Queue(Intake):
    """All jobs of one workspace; every mutation happens under the queue lock."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.root = ws.jobs
        self.inbox = self.root / "pending"
        self.failed_inbox = self.root / "failed"
        for folder in (self.root, self.inbox, self.failed_inbox):
            _private_folder(folder)
        self.lock = FileLock(str(self.root / ".queue.lock"))
        self.stuck: set[tuple] = set()  # inbox entries that could not even be moved to failed/ (skipped, said once)

    # ---- reading ---------------------------------------------------------------------------------------
    def job_dir(self, job_id: int) -> Path:
        return self.root / str(job_id)

    def ids(self) -> list[int]:
        return sorted(i for p in self.root.iterdir() if (i := job_id_of(p.name)) and (p / JOB_FILE).is_file())

    def get(self, job_id: int) -> Job:
        """A job's state; an unreadable job.json turns that one job into `failed` (the bad file kept beside)."""
        path = self.job_dir(job_id) / JOB_FILE
        try:
            return Job.from_dict(read_json(path), job_id)
        except FileNotFoundError:
            raise QueueError(_("job {job_id} não existe").format(job_id=job_id)) from None
        except (OSError, ValueError, TypeError) as exc:
            return self._unreadable(job_id, exc)

    def _unreadable(self, job_id: int, exc: Exception) -> Job:
        """Keep the damaged job.json beside a new one that says the job failed and why."""
        with self.lock:
            return salvage(self, job_id, exc)

    def jobs(self) -> list[Job]:
        return [self.get(i) for i in self.ids()]

    def default_job(self) -> Job:
        """The running job, else the latest one."""
        jobs = self.jobs()
        if not jobs:
            raise QueueError(_("não há jobs na fila"))
        running = [j for j in jobs if j.status is JobStatus.RUNNING]
        return running[0] if running else jobs[-1]

    def resolve(self, job_id: int | None) -> Job:
        return self.default_job() if job_id is None else self.get(job_id)

    # ---- writing ---------------------------------------------------------------------------------------
    def save(self, job: Job) -> None:
        atomic_write_json(self.job_dir(job.id) / JOB_FILE, job.to_dict())

    def update(self, job_id: int, **changes) -> Job:
        with self.lock:
            job = self.get(job_id)
            for key, value in changes.items():
                setattr(job, key, value)
            self.save(job)
            return job

    def repoint_run(self, old: Path, new: Path, keep: int | None = None) -> list[int]:
        """Jobs that trained the run folder `old`, moved aside to `new`, follow it (not job `keep`, not unstarted jobs)."""
        moved = []
        with self.lock:
            for job in self.jobs():
                if job.id != keep and job.attempts and job_run_dir(self.ws, job) == Path(old):
                    job.run_dir = relative_to_ws(self.ws, new)
                    self.save(job)
                    moved.append(job.id)
        return moved

    # ---- scheduling ------------------------------------------------------------------------------------
    def next_runnable(
        self, now: dt.datetime | None = None, allow=None, exclude: set | frozenset = frozenset(), on_end=None
    ) -> Job | None:
        """Highest priority, then oldest, among pending jobs whose time, back-off, dependencies (and `allow`) allow it.

        A job whose dependency failed or was cancelled fails here; `on_end(job)` is told (the daemon logs it)."""
        now = now or dt.datetime.now().astimezone()
        jobs = {j.id: j for j in self.jobs()}
        ready = []
        for job in jobs.values():
            if job.status is JobStatus.PENDING and job.cancel_requested:  # a cancel that met the child's end
                self.update(job.id, state=JobStatus.CANCELLED.value, ended_at=now_iso(), error=_("cancelado"))
                continue
            if job.status is not JobStatus.PENDING or job.held or job.id in exclude:
                continue
            if allow is not None and not allow(job):
                continue
            if job.not_before and parse_time(job.not_before) > now:
                continue
            if job.retry_at and parse_time(job.retry_at) > now:
                continue
            deps = [jobs.get(d) for d in job.after]
            broken = [
                d for d, j in zip(job.after, deps) if j is None or j.status in (JobStatus.FAILED, JobStatus.CANCELLED)
            ]
            if broken:
                failed = self.update(
                    job.id,
                    state=JobStatus.FAILED.value,
                    ended_at=now_iso(),
                    error=_("dependência {dep} falhou ou foi cancelada").format(dep=broken[0]),
                )
                if on_end is not None:
                    on_end(failed)
                continue
            if all(j.status is JobStatus.DONE for j in deps):
                ready.append(job)
        return min(ready, key=lambda j: (-j.priority, j.id)) if ready else None

    def work_ahead(self) -> bool:
        """Something will be runnable without outside help: a runnable job, or one waiting for its back-off."""
        from farensed.queue.backoff import seconds_left

        if self.next_runnable() is not None:
            return True
        return any(j.status is JobStatus.PENDING and not j.held and seconds_left(j.retry_at) > 0 for j in self.jobs())

    def claim(self, job_id: int, **changes) -> Job | None:
        """Pending → running under the lock, only if it is still pending and free (a cancel may have just won)."""
        with self.lock:
            job = self.get(job_id)
            if job.status is not JobStatus.PENDING or job.held or job.cancel_requested:
                return None
            return self.update(job_id, state=JobStatus.RUNNING.value, **changes)

    def cancel(self, job_id: int) -> Job:
        """Pending: never runs. Running: checkpoint-stop, then cancelled (files kept)."""
        from farensed.storage.procs import process_alive, signal_group

        with self.lock:
            job = self.get(job_id)
            if job.status.terminal:
                raise QueueError(
                    _("job {job_id} já terminou ({state})").format(job_id=job_id, state=state_label(job.state))
                )
            if job.status is JobStatus.PENDING:
                return self.update(job_id, state=JobStatus.CANCELLED.value, ended_at=now_iso(), error=_("cancelado"))
            job = self.update(job_id, cancel_requested=True)
        if job.pid_create_time is not None and process_alive(job.pid, job.pid_create_time):  # that very process
            signal_group(job.pid)
        return job

    def retry(self, job_id: int) -> Job:
        """Failed or cancelled → pending; it resumes from its checkpoint."""
        with self.lock:
            job = self.get(job_id)
            if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
                raise QueueError(
                    _("job {job_id} está {state}: só um job falhado ou cancelado pode voltar à fila").format(
                        job_id=job_id, state=state_label(job.state)
                    )
                )
            job = self.update(
                job_id,
                state=JobStatus.PENDING.value,
                error=None,
                exit_code=None,
                ended_at=None,
                cancel_requested=False,
                held=None,
                retry_at=None,
                recoveries=0,
            )
        from farensed.queue.wake import nudge

        nudge(self.root)
        return job

    def log_path(self, job_id: int) -> Path:
        return self.job_dir(job_id) / LOG_FILE

    def read_exit(self, job_id: int) -> int | None:
        return read_exit_code(self.job_dir(job_id) / EXIT_FILE)
