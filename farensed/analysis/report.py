"""What the CLI shows about jobs: table rows, one job in full, the V1-vs-V2 comparison. No mlx here."""

from __future__ import annotations

import datetime as dt

import orjson

from farensed.analysis.gap import analyse
from farensed.analysis.metrics import read_all, read_last
from farensed.analysis.tensors import describe_adapters
from farensed.atomic import read_json
from farensed.queue.jobs import Job, JobStatus, Queue

EXIT_CANCELLED = 130  # `wait`/`tail` exit code of a cancelled job (as for an interrupted command)


def job_exit_code(job: Job) -> int:
    """0 done; the child's code (else 1) failed; 130 cancelled."""
    if job.status is JobStatus.DONE:
        return 0
    if job.status is JobStatus.CANCELLED:
        return EXIT_CANCELLED
    return job.exit_code or 1


def _read(path):
    try:
        return read_json(path)
    except (OSError, orjson.JSONDecodeError):
        return None


def duration_s(job: Job) -> float | None:
    if not job.started_at:
        return None
    end = dt.datetime.fromisoformat(job.ended_at) if job.ended_at else dt.datetime.now().astimezone()
    return (end - dt.datetime.fromisoformat(job.started_at)).total_seconds()


def progress(queue: Queue, job: Job) -> dict:
    """Step/total, epoch, best val_loss and latest gap band, read cheaply from the run folder."""
    run_dir = queue.ws.run_dir(job.name)
    summary = _read(run_dir / "training_summary.json") if job.status.terminal else None
    last = read_last(run_dir, 50)
    latest = last[-1] if last else {}
    vals = [r for r in last if r.get("val_loss") is not None]
    state = _read(run_dir / "training_state.json") or {}
    best = (summary or {}).get("best_val_loss")
    if best is None:
        best = (state.get("early_stopping") or {}).get("best_val_loss")
        candidates = [r["val_loss"] for r in vals] + ([best] if best is not None else [])
        best = min(candidates) if candidates else None
    return {
        "step": latest.get("step"),
        "total_steps": latest.get("total_steps") or state.get("total_steps"),
        "epoch": latest.get("epoch"),
        "loss": latest.get("loss"),
        "val_loss": vals[-1]["val_loss"] if vals else None,
        "gap": vals[-1]["gap"] if vals else None,
        "band": (summary or {}).get("status") or (vals[-1]["band"] if vals else None),
        "best_val_loss": best,
        "tokens_per_second": latest.get("tokens_per_second"),
        "peak_memory_gb": latest.get("peak_memory_gb"),
    }


def row(queue: Queue, job: Job) -> dict:
    """One line of `farensectl list`."""
    p = progress(queue, job)
    return {
        "id": job.id,
        "name": job.name,
        "state": job.state,
        "step": p["step"],
        "total_steps": p["total_steps"],
        "epoch": p["epoch"],
        "best_val_loss": p["best_val_loss"],
        "band": p["band"],
        "recoveries": job.recoveries,
        "started_at": job.started_at,
        "duration_s": duration_s(job),
        "priority": job.priority,
        "world_size": job.world_size,
        "held": job.held,
    }


def full_status(queue: Queue, job: Job) -> dict:
    """Everything about one job (`farensectl status`)."""
    run_dir = queue.ws.run_dir(job.name)
    return {
        **job.to_dict(),
        "duration_s": duration_s(job),
        "progress": progress(queue, job),
        "run_dir": str(run_dir),
        "output_dir": str(queue.ws.output_dir(job.name)),
        "log": str(queue.log_path(job.id)),
        "summary": _read(run_dir / "training_summary.json"),
        "adapters": describe_adapters(queue.ws.output_dir(job.name)) or describe_adapters(run_dir / "adapters"),
    }


def gap_report(queue: Queue, job: Job) -> dict:
    """The final (or, while running, the so-far) overfitting analysis of a job."""
    analysis = analyse(read_all(queue.ws.run_dir(job.name)))
    return {"id": job.id, "name": job.name, "state": job.state, **analysis}


def compare(queue: Queue, a: Job, b: Job) -> dict:
    """The seed's V1-vs-V2 table, as data."""
    cols = {}
    for job in (a, b):
        run_dir = queue.ws.run_dir(job.name)
        records = read_all(run_dir)
        analysis = analyse(records)
        summary = _read(run_dir / "training_summary.json") or {}
        evaluation = _read(run_dir / "evaluation_report.json") or {}
        train = [r for r in records if r.get("loss") is not None]
        vals = analysis["validations"]
        cols[str(job.id)] = {
            "id": job.id,
            "name": job.name,
            "state": job.state,
            "final_loss": train[-1]["loss"] if train else None,
            "final_val_loss": vals[-1]["val_loss"] if vals else None,
            "best_val_loss": min((v["val_loss"] for v in vals), default=None),
            "status": analysis["status"],
            "gap_mean": analysis["gap_mean"],
            "gap_max": analysis["gap_max"],
            "gap_min": analysis["gap_min"],
            "epochs_run": (train[-1]["epoch"] + 1) if train else None,
            "steps_run": train[-1]["step"] if train else None,
            "early_stopped": summary.get("stop_reason") == "early_stopping",
            "wall_time_s": duration_s(job),
            "tokens_per_second": summary.get("tokens_per_second"),
            "f1": (evaluation.get("adapters") or {}).get("f1_mean"),
            "exact_match": (evaluation.get("adapters") or {}).get("em_mean"),
        }
    return {"jobs": [cols[str(a.id)], cols[str(b.id)]]}
