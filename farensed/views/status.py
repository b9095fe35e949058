"""What the CLI shows about jobs: `list` rows, one job in full (`status`), a run's gap report. No mlx here."""

from __future__ import annotations

from farensed.analysis.gap import analyse
from farensed.analysis.metrics import read_last
from farensed.analysis.tensors import describe_adapters
from farensed.errors import ERROR_PREFIXES
from farensed.filevalues import finite
from farensed.i18n import _
from farensed.queue.job import Job, JobStatus, job_run_dir, never_ran, seconds_since
from farensed.queue.jobs import Queue
from farensed.queue.pidfile import daemon_pid
from farensed.storage.atomic import read_json_dict
from farensed.storage.procs import process_alive

EXIT_CANCELLED = 130  # `wait`/`tail` exit code of a cancelled job (as for an interrupted command)


def job_exit_code(job: Job) -> int:
    """0 done; the child's code (else 1) failed; 130 cancelled."""
    if job.status is JobStatus.DONE:
        return 0
    if job.status is JobStatus.CANCELLED:
        return EXIT_CANCELLED
    return job.exit_code or 1


def duration_s(job: Job) -> float | None:
    """Seconds of the child's latest start: until now while it runs, else as long as that start ran."""
    if job.status is JobStatus.RUNNING:
        return seconds_since(job.started_at)
    if isinstance(job.last_ran_s, (int, float)):
        return float(job.last_ran_s)
    return seconds_since(job.started_at, job.ended_at) if job.ended_at else None  # a job from before last_ran_s


def format_duration(seconds: float | None) -> str:
    """`7m05s`, `2h03m`; `-` for none."""
    if seconds is None:
        return "-"
    minutes, sec = divmod(int(seconds), 60)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m{sec:02d}s"


def total_duration_s(job: Job) -> float | None:
    """Seconds the child ran over all attempts (and resumes), the one running now included; pauses and waits
    between starts are not counted."""
    total = float(job.ran_s) if isinstance(job.ran_s, (int, float)) and job.ran_s > 0 else 0.0
    if job.status is JobStatus.RUNNING:
        total += seconds_since(job.started_at) or 0.0
    elif not total and not isinstance(job.last_ran_s, (int, float)):
        return duration_s(job)  # a job from before ran_s: its last start is all that is known
    return total if job.started_at or total else None


def progress(queue: Queue, job: Job) -> dict:
    """Step/total, epoch, best val_loss and latest gap band, read cheaply from the job's run folder (nothing for a
    job that never ran)."""
    return run_progress(None if never_ran(job) else job_run_dir(queue.ws, job), job.status.terminal)


def run_progress(run_dir, finished: bool, last: list[dict] | None = None) -> dict:
    """Step/total, epoch, best val_loss and latest gap band of a run folder (`last`: its newest records); all
    unknown for no run folder (None)."""
    summary = (read_json_dict(run_dir / "training_summary.json") if finished and run_dir is not None else None) or {}
    last = [] if run_dir is None else read_last(run_dir, 50) if last is None else last
    latest = last[-1] if last else {}
    vals = [r for r in last if finite(r.get("val_loss")) is not None]
    state = (read_json_dict(run_dir / "training_state.json") or {}) if run_dir is not None else {}
    stopping = state.get("early_stopping") if isinstance(state.get("early_stopping"), dict) else {}
    best = finite(summary.get("best_val_loss"))
    if best is None:
        candidates = [r["val_loss"] for r in vals] + [
            b for b in [finite(stopping.get("best_val_loss"))] if b is not None
        ]
        best = min(candidates) if candidates else None
    band = summary.get("status") or (vals[-1].get("band") if vals else None)
    epoch = finite(latest.get("epoch"))
    return {
        "step": finite(latest.get("step")),
        "total_steps": finite(latest.get("total_steps")) or finite(state.get("total_steps")),
        "epoch": int(epoch) if epoch is not None and abs(epoch) < 2**31 else None,
        "loss": finite(latest.get("loss")),
        "val_loss": vals[-1]["val_loss"] if vals else None,
        "gap": finite(vals[-1].get("gap")) if vals else None,
        "band": band if isinstance(band, str) else None,
        "best_val_loss": best,
        "tokens_per_second": finite(latest.get("tokens_per_second")),
        "peak_memory_gb": finite(latest.get("peak_memory_gb")),
    }


def pid_alive(job: Job) -> bool | None:
    """For a running job: is its recorded process alive (pid and start time)? None for other states."""
    if job.status is not JobStatus.RUNNING:
        return None
    return process_alive(job.pid, job.pid_create_time)


def stale_note(job: Job, daemon_running: bool) -> str | None:
    """What `status` and `list` add about a running job when farensed or its child is gone (never shown alive)."""
    if job.status is not JobStatus.RUNNING:
        return None
    alive = pid_alive(job)
    if not daemon_running and alive:
        return _(
            "farensed não está a correr: o treino continua (pid {pid}) e o farensed adota-o quando arrancar"
        ).format(pid=job.pid)
    if not daemon_running:
        return _("farensed não está a correr: o job retoma quando ele arrancar (farensectl daemon start)")
    if not alive:
        return _("o processo de treino terminou; o farensed regista-o dentro de instantes")
    return None


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
        "attempts": job.attempts,
        "started_at": job.started_at,
        "first_started_at": job.first_started_at or job.started_at,
        "duration_s": duration_s(job),
        "total_duration_s": total_duration_s(job),
        "priority": job.priority,
        "world_size": job.world_size,
        "held": job.held,
        "pid_alive": pid_alive(job),
    }


def full_status(queue: Queue, job: Job) -> dict:
    """Everything about one job (`farensectl status`)."""
    run_dir = job_run_dir(queue.ws, job)
    # output/<name> belongs to the run now at checkpoints_qlora/<name>: a job whose run was moved aside by a later
    # --fresh has its adapters in its own run folder only
    current = run_dir.resolve() == queue.ws.run_dir(job.name).resolve() and not never_ran(job)
    output = queue.ws.output_dir(job.name) if current else None
    daemon_running = daemon_pid(queue.ws) is not None
    return {
        **job.to_dict(),
        "pid_alive": pid_alive(job),
        "daemon_running": daemon_running,
        "note": stale_note(job, daemon_running),
        "duration_s": duration_s(job),
        "total_duration_s": total_duration_s(job),
        "progress": progress(queue, job),
        "run_dir": str(run_dir),
        "output_dir": str(output) if output else None,
        "log": str(queue.log_path(job.id)),
        "summary": None if never_ran(job) else read_json_dict(run_dir / "training_summary.json"),
        "adapters": None
        if never_ran(job)
        else (describe_adapters(output) if output else None) or describe_adapters(run_dir / "adapters"),
    }


def gap_report(run) -> dict:
    """The final (or, while running, the so-far) overfitting analysis of a run (a `runref.Run`)."""
    job = run.job
    return {
        "id": job.id if job else None,
        "name": run.name,
        "state": job.state if job else None,
        "run_dir": str(run.run_dir),
        **analyse(run.records()),
    }


def error_reason(error: str | None) -> str | None:
    """The one line that says why a job failed (its `Error:` line, else the last line of the log tail)."""
    if not error:
        return None
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(ERROR_PREFIXES)]
    return (errors[-1].split(":", 1)[1].strip() if errors else lines[-1]) if lines else None


def run_status(run) -> dict:
    """Everything about one run (`farensectl status RUN`): its job in full, or what its folder says."""
    if run.job is not None:
        info = full_status(run.queue, run.job)
        info["reason"] = error_reason(run.job.error) if run.job.status is JobStatus.FAILED else None
        return info
    last = run.records()[-50:] if run.seed_era else None
    return {
        "id": None,
        "name": run.name,
        "state": None,
        "finished": run.finished,
        "seed_era": run.seed_era,
        "run_dir": str(run.run_dir),
        "progress": run_progress(run.run_dir, run.finished, last=last),
        "summary": read_json_dict(run.run_dir / "training_summary.json"),
    }
