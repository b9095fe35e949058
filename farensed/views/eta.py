"""Queue ETA: when each pending job should start and end, from measured step times, windows and not_before.

`schedule()` is pure (given jobs with their remaining work, it replays the daemon's choice: one job at a time,
the earliest that may start, then the highest priority, then the oldest). `queue_eta()` gathers the inputs from
the workspace: remaining steps, and seconds per step from the job's own metrics, else from earlier runs of the same
model and max_seq_length, else unknown (`?`), which makes every later time unknown too.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from farensed.analysis.metrics import read_last
from farensed.filevalues import positive
from farensed.queue.job import JobStatus, job_run_dir, parse_time
from farensed.spec.jobspec import JobSpec
from farensed.spec.window import Window, finish_time, next_open, parse_windows
from farensed.storage.atomic import read_json, read_json_dict
from farensed.storage.regular import open_regular


@dataclass
class Item:
    """One job as the ETA sees it; `seconds` None when its duration is unknown."""

    id: int
    seconds: float | None
    priority: int = 0
    not_before: dt.datetime | None = None
    after: list = field(default_factory=list)
    windows: list[Window] | None = None


def schedule(
    pending: list[Item], now: dt.datetime, running: Item | None = None, blocked: bool = False
) -> dict[int, dict]:
    """{id: {"start", "end"}} (datetimes or None) for the running job (start None) and every pending one."""
    out: dict[int, dict] = {}
    free: dt.datetime | None = now
    if running is not None:
        end = _finish(running.windows, now, running.seconds)
        out[running.id] = {"start": None, "end": end}
        free = end
    ends = {running.id: out[running.id]["end"]} if running else {}
    left = list(pending)
    while left:
        ready = [i for i in left if all(d in ends or d not in {j.id for j in left} for d in i.after)]
        if blocked or free is None or not ready:
            break
        starts = {i.id: _earliest(i, free, ends) for i in ready}
        if all(s is None for s in starts.values()):
            break
        item = min((i for i in ready if starts[i.id]), key=lambda i: (starts[i.id], -i.priority, i.id))
        start = starts[item.id]
        end = _finish(item.windows, start, item.seconds)
        out[item.id] = {"start": start, "end": end}
        ends[item.id] = end
        free = end
        left.remove(item)
    for item in left:
        out[item.id] = {"start": None, "end": None}
    return out


def _finish(windows: list[Window] | None, start: dt.datetime, seconds: float | None) -> dt.datetime | None:
    """When the work ends; None when unknown or past the calendar's end (year 9999)."""
    if seconds is None:
        return None
    try:
        return finish_time(windows, start, seconds)
    except (OverflowError, ValueError):
        return None


def _earliest(item: Item, free: dt.datetime, ends: dict) -> dt.datetime | None:
    times = [free] + ([item.not_before] if item.not_before else [])
    for dep in item.after:
        if dep in ends:
            if ends[dep] is None:
                return None
            times.append(ends[dep])
    try:
        return next_open(item.windows, max(times))
    except (OverflowError, ValueError):
        return None


def format_eta(when: dt.datetime | None, now: dt.datetime) -> str:
    """`HH:MM` today, `dd/mm HH:MM` another day, `?` unknown."""
    if when is None:
        return "?"
    return when.strftime("%H:%M" if when.date() == now.date() else "%d/%m %H:%M")


# ---- gathering the inputs ----------------------------------------------------------------------------------
def _spec(queue, job) -> dict:
    return read_json_dict(queue.job_dir(job.id) / "spec.json") or {}


def _default(key: str):
    return JobSpec.__dataclass_fields__[key].default


def _step_seconds(records: list[dict]) -> float | None:
    """Seconds per step: the pace since the first record (whose time holds MLX's one-time compile, up to a minute
    on a cold CPU cache), else the only record's."""
    timed = [r for r in records if positive(r.get("elapsed_s")) and positive(r.get("step"))]
    if not timed:
        return None
    first, last = timed[0], timed[-1]
    if last["step"] > first["step"] and last["elapsed_s"] > first["elapsed_s"]:
        return (last["elapsed_s"] - first["elapsed_s"]) / (last["step"] - first["step"])
    return last["elapsed_s"] / last["step"]


def _total_steps(queue, spec: dict) -> int | None:
    data = spec.get("data")
    train = data.get("train") if isinstance(data, dict) else None
    batch = positive(spec.get("batch_size", _default("batch_size")))
    epochs = positive(spec.get("epochs", _default("epochs")))
    if not isinstance(train, str) or batch is None or epochs is None:
        return None
    try:
        with open_regular(queue.ws.resolve(train)) as fh:  # a FIFO never blocks `list`
            examples = sum(1 for line in fh if line.strip())
    except (OSError, ValueError):
        return None
    return int(examples // batch * epochs)


def _windows(spec: dict, default: str | None) -> list[Window] | None:
    text = spec.get("window") if isinstance(spec.get("window"), str) else default
    try:
        return parse_windows(text) if isinstance(text, str) and text else None
    except ValueError:
        return None


def measured_step_seconds(runs_root: Path) -> dict[tuple, float]:
    """(model, max_seq_length) → seconds per step of the latest run of that pair (from its training_state.json)."""
    found = []
    for path in runs_root.glob("*/training_state.json"):
        try:
            state = read_json(path)
            fingerprint, elapsed = state["fingerprint"], state["progress"]["elapsed_s"]
            key = (fingerprint["model"], fingerprint["max_seq_length"])
            hash(key)  # a list in a damaged state file cannot be a key
            if state["step"] > 0:
                found.append((path.stat().st_mtime, key, elapsed / state["step"]))
        except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError, OverflowError):
            continue
    return {key: seconds for _, key, seconds in sorted(found, key=lambda f: f[0]) if positive(seconds)}


def _seconds_left(queue, job, spec: dict, records: list[dict], measured: dict) -> float | None:
    """The job's remaining work in seconds: its own pace, else a similar run's; None when unknown."""
    key = (spec.get("model"), spec.get("max_seq_length", _default("max_seq_length")))
    try:
        own = None if job.fresh and job.status is JobStatus.PENDING else _step_seconds(records)
        per_step = own or measured.get(key)
        total = (positive(records[-1].get("total_steps")) if records and own else None) or _total_steps(queue, spec)
        done = (positive(records[-1].get("step")) or 0) if records and own else 0
    except TypeError:  # an unhashable model or max_seq_length in a hand-edited spec.json
        return None
    return None if per_step is None or total is None else max(total - done, 0) * per_step


def queue_eta(queue, jobs: list, now: dt.datetime, default_window: str | None = None, blocked: bool = False) -> dict:
    """{"jobs": {id: {"start", "end"}}, "end": when the queue is done (None: unknown)} for the non-finished jobs."""
    specs = {job.id: _spec(queue, job) for job in jobs}
    measured = measured_step_seconds(queue.ws.root / "checkpoints_qlora")
    progress = {job.id: read_last(job_run_dir(queue.ws, job), 3) for job in jobs if not job.status.terminal}
    items, running = [], None
    for job in jobs:
        if job.status.terminal:
            continue
        spec, records = specs[job.id], progress[job.id]
        item = Item(
            id=job.id,
            seconds=_seconds_left(queue, job, spec, records, measured),
            priority=job.priority,
            not_before=parse_time(job.not_before) if job.not_before else None,
            after=list(job.after),
            windows=_windows(spec, default_window),
        )
        if job.status is JobStatus.RUNNING:
            running = item
        else:
            items.append(item)
    out = schedule(items, now, running, blocked)
    ends = [v["end"] for v in out.values()]
    return {"jobs": out, "end": None if not ends or None in ends else max(ends)}
