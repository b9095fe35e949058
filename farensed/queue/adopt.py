"""The child a daemon watches (`Running`), and which live process is training a `running` job: asked before a job is
ever called lost (never a second trainer)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from farensed.queue.child import CHILD_FILE
from farensed.storage.atomic import read_json
from farensed.storage.procs import process_alive
from farensed.storage.runlock import holder


def find_child(queue, job) -> tuple[int, float] | None:
    """(pid, start time) of the job's live child: the pid in job.json, the child's own child.json, or the run lock's
    holder when it names this job; None when none of them is alive."""
    candidates = [(job.pid, job.pid_create_time)]
    try:
        record = read_json(queue.job_dir(job.id) / CHILD_FILE)
        candidates.append((record.get("pid"), record.get("create_time")))
    except (OSError, ValueError, AttributeError):
        pass
    info = holder(queue.ws.run_dir(job.name))
    if info and info.get("job_id") == job.id:
        candidates.append((info.get("pid"), info.get("create_time")))
    for pid, started in candidates:
        if pid and started is not None and process_alive(pid, started):
            return pid, started
    return None


@dataclass
class Running:
    """The child being watched: our own Popen, or a process adopted from an earlier daemon."""

    job_id: int
    pid: int
    popen: subprocess.Popen | None = None
    awake: subprocess.Popen | None = None
    create_time: float | None = None
    oom_before: int | None = None  # the kernel's OOM-kill count when we started watching
    cancel_sent: bool = False
    stalled: str | None = None  # why the stall watch stopped it (queue/stall.py): its job fails with this

    def exit_status(self) -> tuple[bool, int | None]:
        """(finished, return code if known)."""
        if self.popen is not None:
            rc = self.popen.poll()
            return rc is not None, rc
        return not process_alive(self.pid, self.create_time), None
