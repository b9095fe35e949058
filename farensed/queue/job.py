"""One job as stored in jobs/<id>/job.json: its states (`JobStatus`), its record (`Job`), read tolerantly."""

from __future__ import annotations

import datetime as dt
import enum
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from farensed.i18n import _
from farensed.statewords import STATE_LABELS, state_label  # noqa: F401 - job states as read, re-exported
from farensed.storage.workspace import Workspace
from farensed.terminal import excerpt

JOB_FILE, SPEC_FILE, LOG_FILE = "job.json", "spec.json", "log"
SUBMITTED_FILE = "submitted.json"  # the inbox file as it was dropped, kept beside its job
MAX_JOB_ID = 999_999_999
JOB_ID_RE = re.compile(r"[1-9][0-9]{0,8}")  # ASCII digits only: '²' and '٣' pass str.isdigit, '007' would alias 7


def job_id_of(text: str) -> int | None:
    """The job id a folder name or a command-line reference spells, else None."""
    return int(text) if JOB_ID_RE.fullmatch(text) else None


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


def parse_time(text: str) -> dt.datetime:
    """An ISO time from job.json as an aware datetime (a naive one is local time); ValueError if it is not one."""
    try:
        when = dt.datetime.fromisoformat(text)
        return when if when.tzinfo else when.astimezone()
    except (TypeError, OverflowError, OSError):
        raise ValueError(_("{text} não é uma hora ISO").format(text=excerpt(text))) from None


INT_MIN, INT_MAX = -(2**31), 2**31 - 1  # what job.json's integers may be (pids, counters, codes, priorities)
NON_NEGATIVE = ("max_recoveries", "attempts", "recoveries")
TIMES = ("not_before", "retry_at", "started_at", "first_started_at", "ended_at", "submitted_at")
KINDS = {
    "int": lambda v: type(v) is int,
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
}


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
        if type(values["id"]) is not int or (job_id is not None and values["id"] != job_id):
            raise ValueError(
                _("id {id} não corresponde à pasta {job_id}").format(id=excerpt(values["id"]), job_id=job_id)
            )
        state = values.get("state", JobStatus.PENDING.value)
        if not isinstance(state, str) or state not in {s.value for s in JobStatus}:
            raise ValueError(_("estado desconhecido {state}").format(state=excerpt(state)))
        job = cls(**values, extra={k: v for k, v in data.items() if k not in known and k != "extra"})
        job._check_values()
        return job

    def _check_values(self) -> None:
        """Every field of the type and range its readers rely on (a hand-edited job.json may hold anything)."""
        for f in fields(self):
            value = getattr(self, f.name)
            kinds = str(f.type).split(" | ")
            if f.name == "extra" or (value is None and "None" in kinds):
                continue
            if not KINDS[kinds[0]](value):
                if kinds[0] == "int":
                    raise ValueError(_("'{key}' não é um inteiro").format(key=f.name))
                raise ValueError(_("'{key}' tem o tipo errado ({value})").format(key=f.name, value=excerpt(value)))
            if kinds[0] == "int" and not INT_MIN <= value <= INT_MAX:
                raise ValueError(_("'{key}' = {value} fora do intervalo").format(key=f.name, value=excerpt(value)))
        if any(getattr(self, key) < 0 for key in NON_NEGATIVE) or self.world_size < 1 or self.id < 1:
            raise ValueError(_("contadores negativos ou world_size < 1"))
        if self.pid is not None and self.pid < 1:
            raise ValueError(_("'pid' = {value} fora do intervalo").format(value=self.pid))
        if not all(type(dep) is int and 1 <= dep <= INT_MAX for dep in self.after):
            raise ValueError(_("'after' deve ser uma lista de ids de jobs"))
        for key in TIMES:
            if getattr(self, key) is not None:
                parse_time(getattr(self, key))


def seconds_since(stamp: str | None, end: str | None = None) -> float | None:
    """Seconds from an ISO time to `end` (else now); None when there is no start or it cannot be read."""
    try:  # aware times (a naive one is local time): a hand-edited job.json may mix both
        start = parse_time(stamp) if stamp else None
        stop = parse_time(end) if end else dt.datetime.now().astimezone()
    except ValueError:
        return None
    return None if start is None else max((stop - start).total_seconds(), 0.0)


def never_ran(job: Job) -> bool:
    """A job that ended without ever starting (cancelled while pending, a failed dependency): it has no training of
    its own, whatever its run folder holds now (another job of the same name may have trained it since)."""
    return job.attempts == 0 and job.status.terminal


def job_run_dir(ws: Workspace, job: Job) -> Path:
    """The run folder a job trains (recorded in job.json; older jobs: checkpoints_qlora/<name>)."""
    return ws.resolve(job.run_dir) if job.run_dir else ws.run_dir(job.name)


def relative_to_ws(ws: Workspace, path: Path) -> str:
    """A path as job.json stores it: relative to the workspace root when inside it (a moved workspace still works)."""
    path = Path(path)
    return str(path.relative_to(ws.root)) if path.is_relative_to(ws.root) else str(path)
