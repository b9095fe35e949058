"""One job as stored in jobs/<id>/job.json: its states (`JobStatus`), its record (`Job`), read tolerantly."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from farensed.i18n import _
from farensed.storage.workspace import Workspace

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
    attempts: int = 0  # starts of the training child, but a resume after an overnight stop continues its attempt
    recoveries: int = 0
    pid: int | None = None
    pid_create_time: float | None = None
    started_at: str | None = None  # the latest start of the child
    first_started_at: str | None = None  # the first start of the first attempt
    ran_s: float = 0.0  # seconds the child ran, over every start that has ended (pauses and waits not counted)
    last_ran_s: float | None = None  # seconds of the latest start that has ended
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


def seconds_since(stamp: str | None, end: str | None = None) -> float | None:
    """Seconds from an ISO time to `end` (else now); None when there is no start or it cannot be read."""
    try:
        start = dt.datetime.fromisoformat(stamp) if stamp else None
        stop = dt.datetime.fromisoformat(end) if end else dt.datetime.now().astimezone()
    except (TypeError, ValueError):
        return None
    return None if start is None else max((stop - start).total_seconds(), 0.0)


def job_run_dir(ws: Workspace, job: Job) -> Path:
    """The run folder a job trains (recorded in job.json; older jobs: checkpoints_qlora/<name>)."""
    return ws.resolve(job.run_dir) if job.run_dir else ws.run_dir(job.name)


def relative_to_ws(ws: Workspace, path: Path) -> str:
    """A path as job.json stores it: relative to the workspace root when inside it (a moved workspace still works)."""
    path = Path(path)
    return str(path.relative_to(ws.root)) if path.is_relative_to(ws.root) else str(path)
