"""The file queue under jobs/: job ids, states, the inbox jobs/pending/, and atomic transitions.

jobs/
  pending/               inbox: any spec file (submit writes here; a copy by hand works too)
  failed/                invalid inbox files, kept, each with <file>.reason.txt
  <id>/                  one folder per job: spec.json, submitted.json, job.json (state), log, exit.json
  .queue.lock            held briefly for every id allocation, ingestion and state change
"""

from __future__ import annotations

import datetime as dt
import enum
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from filelock import FileLock

from farensed.atomic import atomic_write_bytes, atomic_write_json, fsync_dir, read_json
from farensed.engine.distributed import check_batch_size, world_size
from farensed.engine.resume import check_resumable
from farensed.errors import QueueError, SpecError
from farensed.exitfile import EXIT_FILE, read_exit_code
from farensed.i18n import _
from farensed.spec import load_spec, parse_not_before, spec_bytes
from farensed.workspace import Workspace

JOB_FILE, SPEC_FILE, LOG_FILE = "job.json", "spec.json", "log"
SCHEMA_VERSION = 1  # job.json's layout; readers keep unknown keys and default missing ones


class JobStatus(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


def now_iso() -> str:
    return dt.datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass
class Job:
    """A job's state, as stored in jobs/<id>/job.json."""

    id: int
    name: str
    state: str = JobStatus.PENDING.value
    priority: int = 0
    not_before: str | None = None
    after: list = field(default_factory=list)
    max_recoveries: int = 10
    world_size: int = 1
    submitted_at: str = field(default_factory=now_iso)
    source: str | None = None
    attempts: int = 0
    recoveries: int = 0
    pid: int | None = None
    pid_create_time: float | None = None
    started_at: str | None = None
    ended_at: str | None = None
    exit_code: int | None = None
    error: str | None = None
    held: str | None = None  # why a pending job is held back (memory guard)
    cancel_requested: bool = False
    fresh: bool = False  # first attempt starts over (old run folder moved aside); recoveries resume
    run_dir: str | None = None  # its run folder (relative to the workspace); follows it when --fresh moves it aside
    retry_at: str | None = None  # a lost child's job waits until then (recovery back-off)
    loss_reason: str | None = None  # why the last attempt was lost or stopped (signal, OOM, memory guard)
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict, repr=False)  # keys written by a newer farense, kept as they are

    @property
    def status(self) -> JobStatus:
        return JobStatus(self.state)

    def to_dict(self) -> dict:
        data = asdict(self)
        extra = data.pop("extra")
        return {**extra, **data, "schema_version": max(self.schema_version, SCHEMA_VERSION)}

    @classmethod
    def from_dict(cls, data: dict, job_id: int | None = None) -> Job:
        """Tolerant read: unknown keys kept in `extra`, missing ones defaulted; ValueError if it is not a job."""
        if not isinstance(data, dict):
            raise ValueError(_("não é um objeto JSON"))
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("id", job_id)
        values.setdefault("name", "?")
        if not isinstance(values["id"], int) or (job_id is not None and values["id"] != job_id):
            raise ValueError(_("id {id!r} não corresponde à pasta {job_id}").format(id=values["id"], job_id=job_id))
        if values.get("state", JobStatus.PENDING.value) not in {s.value for s in JobStatus}:
            raise ValueError(_("estado desconhecido {state!r}").format(state=values["state"]))
        job = cls(**values, extra={k: v for k, v in data.items() if k not in known and k != "extra"})
        if not isinstance(job.after, list):
            raise ValueError(_("'after' não é uma lista"))
        for key in ("priority", "max_recoveries", "world_size", "attempts", "recoveries"):
            if type(getattr(job, key)) is not int:
                raise ValueError(_("'{key}' não é um inteiro").format(key=key))
        for key in ("not_before", "retry_at", "started_at"):
            if getattr(job, key) is not None:
                dt.datetime.fromisoformat(getattr(job, key))  # ValueError / TypeError name the bad value
        return job


def job_run_dir(ws: Workspace, job: Job) -> Path:
    """The run folder a job trains (recorded in job.json; older jobs: checkpoints_qlora/<name>)."""
    return ws.resolve(job.run_dir) if job.run_dir else ws.run_dir(job.name)


def relative_to_ws(ws: Workspace, path: Path) -> str:
    """A path as job.json stores it: relative to the workspace root when inside it (a moved workspace still works)."""
    path = Path(path)
    return str(path.relative_to(ws.root)) if path.is_relative_to(ws.root) else str(path)


class Queue:
    """All jobs of one workspace; every mutation happens under the queue lock."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.root = ws.jobs
        self.inbox = self.root / "pending"
        self.failed_inbox = self.root / "failed"
        for folder in (self.root, self.inbox, self.failed_inbox):
            folder.mkdir(parents=True, exist_ok=True)
            os.chmod(folder, 0o700)
        self.lock = FileLock(str(self.root / ".queue.lock"))

    # ---- reading ---------------------------------------------------------------------------------------
    def job_dir(self, job_id: int) -> Path:
        return self.root / str(job_id)

    def ids(self) -> list[int]:
        return sorted(int(p.name) for p in self.root.iterdir() if p.name.isdigit() and (p / JOB_FILE).is_file())

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
        from farensed.queue.jobfile import salvage

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
        ids = [int(p.name) for p in self.root.iterdir() if p.name.isdigit()]
        return max(ids, default=0) + 1

    def _create(self, spec_bytes: bytes, spec, source: str, overrides: dict) -> Job:
        job_id = self._next_id()
        job = Job(
            id=job_id,
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
            job.not_before = parse_not_before(not_before).isoformat(timespec="seconds")
        for dep in job.after:
            if not self.job_dir(dep).is_dir():
                raise SpecError(_("{source}: after: job {dep} não existe").format(source=source, dep=dep))
        folder = self.job_dir(job_id)
        tmp = self.root / f".{job_id}.tmp-{os.getpid()}"
        tmp.mkdir(mode=0o700)
        (tmp / SPEC_FILE).write_bytes(spec_bytes)
        atomic_write_json(tmp / JOB_FILE, job.to_dict())
        os.replace(tmp, folder)
        fsync_dir(self.root)
        return job

    def ingest(self, path: Path, overrides: dict | None = None) -> Job | None:
        """Turn one inbox file into a job (or move it to failed/ with its reason). Holds the lock."""
        with self.lock:
            if not path.exists():
                return None  # someone else ingested it first
            try:
                spec = load_spec(path, self.ws)
                job = self._create(spec_bytes(path), spec, path.name, overrides or {})
            except SpecError as exc:
                self._reject(path, str(exc))
                if overrides is not None:
                    raise
                return None
            os.replace(path, self.job_dir(job.id) / "submitted.json")
            fsync_dir(self.inbox)
            return job

    def _reject(self, path: Path, reason: str) -> None:
        target = self.failed_inbox / path.name
        n = 1
        while target.exists():
            target = self.failed_inbox / f"{path.stem}.{n}{path.suffix}"
            n += 1
        os.replace(path, target)
        atomic_write_bytes(target.with_name(target.name + ".reason.txt"), (reason + "\n").encode())

    def ingest_inbox(self) -> list[Job]:
        """Every spec file waiting in jobs/pending/, oldest first."""
        settled = time.time() - 0.3  # a file copied in by hand may still be being written
        files = sorted(
            (
                p
                for p in self.inbox.iterdir()
                if p.is_file() and not p.name.startswith(".") and p.stat().st_mtime < settled
            ),
            key=lambda p: (p.stat().st_mtime_ns, p.name),
        )
        return [job for job in map(self.ingest, files) if job]

    def submit(self, spec_path: Path, **overrides) -> Job:
        """Validate a spec fully, write it into the inbox atomically and make it a job; return the job."""
        spec_path = Path(spec_path)
        spec = load_spec(spec_path, self.ws)  # every error before anything is written
        self._check_overrides(spec_path, spec, overrides)
        if not overrides.get("fresh"):
            check_resumable(spec, self.ws)  # a run it cannot resume: refused now, with the diff and --fresh
        data = spec_bytes(spec_path)  # a YAML config is queued as its JSON spec
        name = f".submit-{os.getpid()}-{spec_path.stem}.json"
        with self.lock:
            atomic_write_bytes(self.inbox / name, data)
            job = self.ingest(self.inbox / name, overrides)
        from farensed.queue.wake import nudge

        nudge(self.root)  # an idle daemon starts it now, not at its next poll
        return job

    def _check_overrides(self, source: Path, spec, overrides: dict) -> None:
        if overrides.get("not_before"):
            try:
                parse_not_before(overrides["not_before"])
            except ValueError as exc:
                raise SpecError(
                    _("{source}: not_before '{not_before}' não é hora ISO nem HH:MM ({exc})").format(
                        source=source, not_before=overrides["not_before"], exc=exc
                    )
                ) from None
        for dep in overrides.get("after") or spec.after:
            if not self.job_dir(dep).is_dir():
                raise SpecError(_("{source}: after: job {dep} não existe").format(source=source, dep=dep))

    # ---- scheduling ------------------------------------------------------------------------------------
    def next_runnable(
        self, now: dt.datetime | None = None, allow=None, exclude: set | frozenset = frozenset()
    ) -> Job | None:
        """Highest priority, then oldest, among pending jobs whose time, back-off, dependencies (and `allow`) allow it."""
        now = now or dt.datetime.now().astimezone()
        jobs = {j.id: j for j in self.jobs()}
        ready = []
        for job in jobs.values():
            if job.status is not JobStatus.PENDING or job.held or job.id in exclude:
                continue
            if allow is not None and not allow(job):
                continue
            if job.not_before and dt.datetime.fromisoformat(job.not_before) > now:
                continue
            if job.retry_at and dt.datetime.fromisoformat(job.retry_at) > now:
                continue
            deps = [jobs.get(d) for d in job.after]
            broken = [
                d for d, j in zip(job.after, deps) if j is None or j.status in (JobStatus.FAILED, JobStatus.CANCELLED)
            ]
            if broken:
                self.update(
                    job.id,
                    state=JobStatus.FAILED.value,
                    ended_at=now_iso(),
                    error=_("dependência {dep} falhou ou foi cancelada").format(dep=broken[0]),
                )
                continue
            if all(j.status is JobStatus.DONE for j in deps):
                ready.append(job)
        return min(ready, key=lambda j: (-j.priority, j.id)) if ready else None

    def claim(self, job_id: int, **changes) -> Job | None:
        """Pending → running under the lock, only if it is still pending and free (a cancel may have just won)."""
        with self.lock:
            job = self.get(job_id)
            if job.status is not JobStatus.PENDING or job.held or job.cancel_requested:
                return None
            return self.update(job_id, state=JobStatus.RUNNING.value, **changes)

    def cancel(self, job_id: int) -> Job:
        """Pending: never runs. Running: checkpoint-stop, then cancelled (files kept)."""
        from farensed.queue.procs import process_alive, signal_group

        with self.lock:
            job = self.get(job_id)
            if job.status.terminal:
                raise QueueError(_("job {job_id} já terminou ({state})").format(job_id=job_id, state=job.state))
            if job.status is JobStatus.PENDING:
                return self.update(job_id, state=JobStatus.CANCELLED.value, ended_at=now_iso(), error=_("cancelado"))
            job = self.update(job_id, cancel_requested=True)
        if process_alive(job.pid, job.pid_create_time):
            signal_group(job.pid)
        return job

    def retry(self, job_id: int) -> Job:
        """Failed or cancelled → pending; it resumes from its checkpoint."""
        with self.lock:
            job = self.get(job_id)
            if job.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
                raise QueueError(
                    _("job {job_id} está {state}: só jobs failed ou cancelled podem ser repetidos").format(
                        job_id=job_id, state=job.state
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
