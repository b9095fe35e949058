"""One way to name a run everywhere: a job id, a run name, or a path to a run folder (seed-era folders too).

Resolution of a reference REF (the same for every reader, and said in their --help):
  nothing          the running job, else the latest job
  all digits       a job id (a run whose name is all digits: give its folder, checkpoints_qlora/<name>)
  has a '/'        a path to a run folder (or starts with '.' or '~'); relative: from the current directory,
                   else from the workspace root
  anything else    a run name: checkpoints_qlora/<REF>; failing that, a folder of that name
A run found by name or path is tied to the latest job whose run folder it is (that job gives state and log).
A seed-era folder holding only training_metrics.json (the seed's records) is read-only: gap, plot, compare, check.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from farensed.analysis.metrics import JSON_NAME, JSONL_NAME
from farensed.analysis.records import load_records
from farensed.errors import QueueError
from farensed.i18n import _
from farensed.queue.job import Job, job_id_of, job_run_dir, never_ran, state_label
from farensed.queue.jobs import Queue
from farensed.storage.atomic import read_json, read_json_dict
from farensed.storage.workspace import Workspace
from farensed.terminal import safe

RUN_FILES = (JSONL_NAME, JSON_NAME, "training_state.json", "spec.json")


@dataclass
class Run:
    """A run however it was named: its folder, and the queue job behind it (if any)."""

    run_dir: Path
    name: str
    job: Job | None = None
    queue: Queue | None = None

    @property
    def seed_era(self) -> bool:
        """Only the seed's files: metrics as a JSON list, no farense metrics log."""
        return not (self.run_dir / JSONL_NAME).exists() and (self.run_dir / JSON_NAME).exists()

    @property
    def label(self) -> str:
        return f"#{self.job.id}" if self.job else self.name

    def heading(self) -> str:
        """One safe line naming the run (a job's name or a folder's comes from files a person may edit)."""
        if self.job:
            return f"job {self.job.id} ({safe(self.job.name, 80)}): {state_label(self.job.state)}"
        seed = " " + _("— pasta só com métricas, só leitura") if self.seed_era else ""
        return _("corrida {name} ({run_dir}){seed}").format(
            name=safe(self.name, 80), run_dir=safe(self.run_dir, 200), seed=seed
        )

    @property
    def trained(self) -> bool:
        """False for a job that ended without ever starting: its run folder's files are another job's."""
        return self.job is None or not never_ran(self.job)

    def records(self) -> list[dict]:
        """Every metrics record (farense's .jsonl, or the seed's JSON list made comparable)."""
        return load_records(self.run_dir) if self.trained else []

    def read(self, fname: str) -> dict | None:
        """A JSON object from the run folder (None: absent, damaged, not an object, or a job that never ran)."""
        return read_json_dict(self.run_dir / fname) if self.trained else None

    def spec_dict(self) -> dict | None:
        """The spec this run was trained with: its job's spec.json, else the run folder's copy."""
        if self.job and self.queue:
            try:
                return read_json(self.queue.job_dir(self.job.id) / "spec.json")
            except (OSError, orjson.JSONDecodeError):
                pass
        return self.read("spec.json")

    @property
    def finished(self) -> bool:
        if self.job:
            return self.job.status.terminal
        if self.seed_era:
            return True  # read-only: nothing will write to it
        state = self.read("training_state.json")
        return bool(state.get("finished")) if isinstance(state, dict) else False


def resolve(ws: Workspace, ref: str | None) -> Run:
    """A job id, a run name or a run folder → the Run (QueueError, exit 4, naming REF when nothing matches)."""
    queue = Queue(ws) if ws.jobs.is_dir() or ref is None or job_id_of(str(ref)) else None
    if ref is None:
        return _of_job(ws, queue, queue.default_job())
    ref = str(ref)
    if job_id := job_id_of(ref):
        return _of_job(ws, queue, queue.get(job_id))
    try:
        run = _named(ws, queue, ref) if ref.strip() else None  # "" would name checkpoints_qlora/ itself
    except (OSError, RuntimeError):  # a name too long for the file system, a link loop: none of the three
        run = None
    if run is None:
        raise QueueError(
            _("'{ref}' não é um id de job, um nome de corrida (checkpoints_qlora/{ref}) nem uma pasta").format(
                ref=safe(ref, 100)
            )
        )
    return run


def _named(ws: Workspace, queue: Queue | None, ref: str) -> Run | None:
    """The run a name or a folder (from the current directory, else the workspace root) names, else None."""
    looks_like_path = os.sep in ref or "/" in ref or ref.startswith((".", "~"))
    if not looks_like_path:
        if ws.run_dir(ref).is_dir():
            return _of_folder(ws, queue, ws.run_dir(ref), ref)
        jobs = [j for j in queue.jobs() if j.name == ref] if queue else []
        if jobs:
            return _of_job(ws, queue, jobs[-1])
    path = Path(ref).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path if (Path.cwd() / path).is_dir() else ws.root / path
    if queue is not None and path.parent.resolve() == ws.jobs.resolve() and (job_id := job_id_of(path.name)):
        return _of_job(ws, queue, queue.get(job_id))  # a job's folder (jobs/3): that job
    if path.is_dir() and any((path / f).exists() for f in RUN_FILES):
        return _of_folder(ws, queue, path.resolve(), path.resolve().name)
    if path.is_dir():
        raise QueueError(
            _("{ref}: pasta sem ficheiros de treino ({items})").format(ref=safe(ref, 200), items=", ".join(RUN_FILES))
        )
    return None


def _of_job(ws: Workspace, queue: Queue, job: Job) -> Run:
    return Run(job_run_dir(ws, job), job.name, job, queue)


def _of_folder(ws: Workspace, queue: Queue | None, folder: Path, name: str) -> Run:
    trained = [j for j in queue.jobs() if not never_ran(j)] if queue else []
    jobs = [j for j in trained if job_run_dir(ws, j).resolve() == folder.resolve()]
    job = jobs[-1] if jobs else None
    return Run(folder, job.name if job else name, job, queue)
