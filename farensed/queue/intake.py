"""How a file becomes a job: the inbox jobs/pending/ read by the daemon, and `submit`.

A file becomes a job in three renames, so that a kill at any moment leaves it one job, never two nor none: it is
reserved (`jobs/pending/.reserved-<id>-<file>`), the job's folder is written aside and renamed into place, then the
reservation moves into it as `submitted.json`. The next look at the inbox settles a reservation it finds: into its
job when that job lacks its `submitted.json`, else back into the inbox under its name. A file that cannot be a job
moves to jobs/failed/ with its reason (queue/inbox.py), the daemon's log line said before the move.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from farensed.errors import FarenseError, QueueError, SpecError
from farensed.i18n import _
from farensed.queue.inbox import (
    Rejected,
    free_name,
    identity,
    not_a_file,
    reason_of,
    reject,
    rejected,
    reservations,
    reserve,
    settled_entries,
)
from farensed.queue.job import JOB_FILE, MAX_JOB_ID, SPEC_FILE, SUBMITTED_FILE, Job, job_id_of, relative_to_ws
from farensed.spec.hosts import check_batch_size, world_size
from farensed.spec.jobspec import check_not_before
from farensed.spec.load import load_spec_file
from farensed.storage.atomic import atomic_write_bytes, atomic_write_json, fsync_dir
from farensed.terminal import safe

NAME_SHOWN = 200  # characters of an inbox file's name a job keeps as its source (undecodable bytes shown as \xNN)
SUBMIT_TEMPS = (".submit-", "..submit-")  # submit's copy in the inbox, and the atomic write's temp of it


class Intake:
    """The part of the Queue that makes jobs (it uses the Queue's lock, folders and readers)."""

    def _next_id(self) -> int:
        """One above every job and every reservation left by a killed ingest (whose job may not exist yet)."""
        ids = [i for p in self.root.iterdir() if (i := job_id_of(p.name))]
        ids += [job_id for _, job_id, _ in reservations(self.inbox)]
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
        self._check_after(job.after, source)
        return job

    def _check_after(self, deps, source) -> None:
        for dep in deps:
            if not self.job_dir(dep).is_dir():
                raise SpecError(_("{source}: after: job {dep} não existe").format(source=source, dep=dep))

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

    def settle_reservations(self) -> None:
        """Finish what a process killed mid-ingest left (inbox.reserve): the file into its job, or back in the inbox."""
        with self.lock:
            for reserved, job_id, name in reservations(self.inbox):
                kept = self.job_dir(job_id) / SUBMITTED_FILE  # a job made from it lacks only this file
                is_job = (kept.parent / JOB_FILE).is_file() and not kept.parent.is_symlink()
                ours = is_job and not os.path.lexists(kept)
                target = kept if ours else free_name(self.inbox, name)
                with contextlib.suppress(OSError):  # a folder that cannot take it: it waits, nothing is lost
                    os.replace(reserved, target)
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
                reserved = reserve(path, job.id)  # from here until the move below, a kill leaves it to settle
                try:
                    self._write_job(job, data)
                except BaseException:
                    os.replace(reserved, path)
                    raise
                os.replace(reserved, self.job_dir(job.id) / SUBMITTED_FILE)
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
        if reservations(self.inbox):
            self.settle_reservations()
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
                self.settle_reservations()  # what a killed ingest left, before an id is given
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
        self._check_after(overrides.get("after") or spec.after, source)
