"""A job.json that cannot be read: that one job becomes `failed` with the reason; the bad file is kept beside it.

The daemon and `list` carry on with the other jobs; `farensectl retry ID` puts the job back in the queue, and it
resumes from its run's newest valid checkpoint (the run folder is never touched here).
"""

from __future__ import annotations

from farensed.errors import QueueError
from farensed.i18n import _
from farensed.queue.job import JOB_FILE, SPEC_FILE, Job, JobStatus, now_iso
from farensed.storage.atomic import atomic_write_json, move_aside, read_json


def salvage(queue, job_id: int, exc: Exception):
    """Under the queue lock: re-read (someone may have fixed it), else keep the bad file and write a failed job."""
    folder = queue.job_dir(job_id)
    path = folder / JOB_FILE
    try:
        return Job.from_dict(read_json(path), job_id)
    except FileNotFoundError:
        raise QueueError(_("job {job_id} não existe").format(job_id=job_id)) from None
    except (OSError, ValueError, TypeError):
        pass
    kept = move_aside(path, "unreadable")
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
