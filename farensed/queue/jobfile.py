"""A job.json that cannot be read: that one job becomes `failed` with the reason; the bad file is kept beside it.

The daemon and `list` carry on with the other jobs; `farensectl retry ID` puts the job back in the queue, and it
resumes from its run's newest valid checkpoint (the run folder is never touched here).
"""

from __future__ import annotations

import os
import time

from farensed.atomic import atomic_write_json, fsync_dir, read_json
from farensed.i18n import _


def _kept_name(path) -> object:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.unreadable-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.unreadable-{stamp}-{n}")
        n += 1
    return target


def salvage(queue, job_id: int, exc: Exception):
    """Under the queue lock: re-read (someone may have fixed it), else keep the bad file and write a failed job."""
    from farensed.queue.jobs import JOB_FILE, SPEC_FILE, Job, JobStatus, now_iso

    folder = queue.job_dir(job_id)
    path = folder / JOB_FILE
    try:
        return Job.from_dict(read_json(path), job_id)
    except FileNotFoundError:
        from farensed.errors import QueueError

        raise QueueError(_("job {job_id} não existe").format(job_id=job_id)) from None
    except (OSError, ValueError, TypeError):
        pass
    kept = _kept_name(path)
    os.replace(path, kept)
    fsync_dir(folder)
    try:
        name = str(read_json(folder / SPEC_FILE)["name"])
    except (OSError, ValueError, KeyError, TypeError):
        name = "?"
    reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    job = Job(
        id=job_id,
        name=name,
        state=JobStatus.FAILED.value,
        ended_at=now_iso(),
        error=_(
            "job.json ilegível ({reason}); guardado como {kept}; "
            "farensectl retry {job_id} volta a pô-lo na fila (retoma do último checkpoint)"
        ).format(reason=reason, kept=kept.name, job_id=job_id),
    )
    atomic_write_json(path, job.to_dict())
    return job
