"""The file queue under jobs/: job ids, states, the inbox jobs/pending/, and atomic transitions.

jobs/
  pending/               inbox: any spec file (submit writes here; a copy by hand works too)
  failed/                invalid inbox files, kept, each with <file>.reason.txt
  <id>/                  one folder per job: spec.json, submitted.json, job.json (state), log, exit.json
  .queue.lock            held briefly for every id allocation, ingestion and state change
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
from pathlib import Path

from filelock import FileLock

from farensed.errors import FarenseError, QueueError, SpecError
from farensed.i18n import _
from farensed.queue.inbox import (
    Rejected,
    claim,
    claims,
    free_name,
    identity,
    not_a_file,
    reason_of,
    reject,
    rejected,
    settled_entries,
)
from farensed.queue.job import (
    JOB_FILE,
    LOG_FILE,
    MAX_JOB_ID,
    SPEC_FILE,
    SUBMITTED_FILE,
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
from farensed.spec.hosts import check_batch_size, world_size
from farensed.spec.jobspec import check_not_before
from farensed.spec.load import load_spec_file
from farensed.storage.atomic import atomic_write_bytes, atomic_write_json, fsync_dir, read_json
from farensed.storage.exitfile import EXIT_FILE, read_exit_code
from farensed.storage.workspace import Workspace
from farensed.terminal import safe


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


NAME_SHOWN = 200  # characters of an inbox file's name a job keeps as its source (undecodable bytes shown as \xNN)
SUBMIT_TEMPS = (".submit-", "..submit-")  # submit's copy in the inbox, and the atomic write's temp of it


class Queue:
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

    def _next_id(self) -> int:
        """One above every job and every claim left by a killed ingest (whose job may not exist yet)."""
        ids = [i for p in self.root.iterdir() if (i := job_id_of(p.name))]
        ids += [job_id for _, job_id, _ in claims(self.inbox)]
        next_id = max(ids, default=0) + 1
        if next_id > MAX_JOB_ID:  # a folder made by hand: refused in a line, never a job no command can name
            raise QueueError(_("jobs/: não há mais números de job (o maior é {max})").format(max=MAX_JOB_ID))
        return next_id

    def _new_job(self, spec, source: str, overrides: dict) -> Job:
        """The job a spec becomes, checked against the queue (batch, not_before, after); nothing written yet."""
        job = Job(
            id=self._next_id(),
            name=spec.name,
            priority=spec.priority,
            after=list(spec.after),
            max_recoveries=spec.max_recoveries,
            source=source,
            world_size=world_size(spec, self.ws),
            run_dir=relative_to_ws(self.ws, self.ws.run_dir(spec.name)),
        )
        check_batch_size(spec, job.world_size, source)
        not_before = overrides.get("not_before") or spec.not_before
        for key, value in overrides.items():
            if value is not None and key != "not_before":
                setattr(job, key, value)
        if not_before:
            job.not_before = check_not_before(not_before, source).isoformat(timespec="seconds")
        for dep in job.after:
            if not self.job_dir(dep).is_dir():
                raise SpecError(_("{source}: after: job {dep} não existe").format(source=source, dep=dep))
        return job

    def _write_job(self, job: Job, spec_bytes: bytes) -> None:
        """The job's folder, complete or not at all (written aside, then renamed into place)."""
        tmp = self.root / f".{job.id}.tmp-{os.getpid()}"
        tmp.mkdir(mode=0o700)
        try:
            (tmp / SPEC_FILE).write_bytes(spec_bytes)
            atomic_write_json(tmp / JOB_FILE, job.to_dict())
            os.replace(tmp, self.job_dir(job.id))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # our own half-written folder
            raise
        fsync_dir(self.root)

    def settle_claims(self) -> None:
        """Finish what a process killed mid-ingest left (inbox.claim): its entry into its job, or back in the inbox."""
        with self.lock:
            for claimed, job_id, name in claims(self.inbox):
                kept = self.job_dir(job_id) / SUBMITTED_FILE  # a job made from it lacks only this file
                ours = job_id in self.ids() and not kept.parent.is_symlink() and not os.path.lexists(kept)
                target = kept if ours else free_name(self.inbox, name)
                with contextlib.suppress(OSError):  # a folder that cannot take it: the claim waits, nothing is lost
                    os.replace(claimed, target)
                    fsync_dir(self.inbox)

    def ingest(
        self, path: Path, overrides: dict | None = None, on_reject=None, source: str | None = None
    ) -> Job | None:
        """Turn one inbox entry into a job, or move it to failed/ with its reason — whatever goes wrong. Holds the lock.

        `on_reject(name, reason, exc)` hears of each refusal (the daemon logs it). From `submit` (overrides given)
        the refusal is raised as one line; `source`, the user's file, says `path` is submit's own copy of it, which
        a refusal removes (the user's file is where it was) rather than setting aside.
        """
        with self.lock:
            if not os.path.lexists(path):
                return None  # someone else ingested it first
            try:
                if (kind := not_a_file(path)) is not None:
                    raise SpecError(_("{path}: é {kind}, não um ficheiro de spec").format(path=path.name, kind=kind))
                spec, data = load_spec_file(path, self.ws)
                job = self._new_job(spec, safe(source or path.name, NAME_SHOWN), overrides or {})
                claimed = claim(path, job.id)  # from here until the move below, a kill leaves a claim to settle
                try:
                    self._write_job(job, data)
                except BaseException:
                    os.replace(claimed, path)
                    raise
                os.replace(claimed, self.job_dir(job.id) / SUBMITTED_FILE)
                fsync_dir(self.inbox)
                return job
            except Exception as exc:  # noqa: BLE001 - one file must never stop the queue: set it aside, say why
                reason = reason_of(exc)
                if source is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(path)  # submit's copy of a file the user still has
                else:
                    self._set_aside(path, reason, exc, on_reject)
                if overrides is not None:
                    if isinstance(exc, FarenseError):
                        raise
                    raise QueueError(reason) from exc
                return None

    def _set_aside(self, path: Path, reason: str, exc: Exception, on_reject) -> None:
        def say(text: str) -> None:  # before the move (inbox.reject): a kill then repeats the line, never loses it
            if on_reject is not None:
                on_reject(path.name, text, exc)

        try:
            reject(self.failed_inbox, path, reason, before_move=lambda: say(reason))
        except Exception as move_error:  # noqa: BLE001 - failed/ unwritable, the entry vanished, a bug: said once
            with contextlib.suppress(OSError):
                self.stuck.add(identity(os.lstat(path), path.name))
            why = getattr(move_error, "strerror", None) or type(move_error).__name__
            say(
                _("{reason} (e não foi possível movê-lo para jobs/failed/: {strerror})").format(
                    reason=reason, strerror=why
                )
            )

    def ingest_inbox(self, on_reject=None, on_job=None) -> list[Job]:
        """Every settled entry waiting in jobs/pending/, oldest first; refusals go to failed/ (and `on_reject`), each
        job is told to `on_job` as soon as it exists (a kill midway loses no line about the ones before)."""
        jobs = []
        if claims(self.inbox):
            self.settle_claims()
        for path in settled_entries(self.inbox, self.stuck):
            if job := self.ingest(path, on_reject=on_reject):
                jobs.append(job)
                if on_job is not None:
                    on_job(job)
        return jobs

    def rejected(self, limit: int = 50) -> list[Rejected]:
        """Files refused by the inbox still waiting in jobs/failed/ (newest first)."""
        return rejected(self.failed_inbox, limit)

    def submit(self, spec_path: Path, check=None, **overrides) -> Job:
        """Validate a spec fully, write it into the inbox atomically and make it a job; return the job.

        `check(spec, ws)` runs after the spec's own validation, before anything is written (the CLI passes the
        engine's mlx-free resume check, so a run that cannot resume is refused now rather than when it starts).
        """
        spec_path = Path(spec_path)
        spec, data = load_spec_file(spec_path, self.ws)  # every error before anything is written
        self._check_overrides(spec_path, spec, overrides)
        if check is not None:
            check(spec, self.ws)
        # Hidden from the daemon's scan, and a temp file by name: one a killed submit leaves is swept at its start.
        name = f"{SUBMIT_TEMPS[0]}{spec_path.stem[:100]}.json.tmp-{os.getpid()}"  # a YAML config: its JSON spec
        try:
            with self.lock:
                self.settle_claims()  # what a killed ingest left, before an id is given
                if self._in_inbox(spec_path):  # the daemon would take it too: one job, made of the file itself
                    job = self.ingest(spec_path, overrides)
                else:
                    atomic_write_bytes(self.inbox / name, data)
                    job = self.ingest(self.inbox / name, overrides, source=spec_path.name)
        except OSError as exc:  # a read-only or full jobs/: one line, nothing half-written
            raise QueueError(
                _("{path}: não foi possível escrever na fila ({strerror})").format(
                    path=exc.filename or self.root, strerror=exc.strerror or type(exc).__name__
                )
            ) from None
        from farensed.queue.wake import nudge

        nudge(self.root)  # an idle daemon starts it now, not at its next poll
        return job

    def _in_inbox(self, path: Path) -> bool:
        try:
            return path.resolve().parent == self.inbox.resolve()
        except (OSError, RuntimeError):
            return False

    def _check_overrides(self, source: Path, spec, overrides: dict) -> None:
        if overrides.get("not_before"):
            check_not_before(overrides["not_before"], "--not-before")
        for dep in overrides.get("after") or spec.after:
            if not self.job_dir(dep).is_dir():
                raise SpecError(_("{source}: after: job {dep} não existe").format(source=source, dep=dep))

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
