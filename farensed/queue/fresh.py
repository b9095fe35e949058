"""`--fresh`: start a run over without losing the old one, and keep every job pointing at its own run."""

from __future__ import annotations

from pathlib import Path

from farensed.i18n import _
from farensed.storage.atomic import move_aside
from farensed.storage.workspace import Workspace


def start_over(ws: Workspace, name: str, job_id: int | None = None, say=print) -> dict[str, Path]:
    """Move checkpoints_qlora/<name> and output/<name> aside; jobs that trained the old run now point at it."""
    moved = {}
    for kind, folder in (("run", ws.run_dir(name)), ("output", ws.output_dir(name))):
        if folder.exists():
            moved[kind] = move_aside(folder)
            say(_("--fresh: a pasta anterior foi guardada em {path}").format(path=moved[kind]))
    if "run" in moved and ws.jobs.is_dir():
        from farensed.queue.jobs import Queue

        Queue(ws).repoint_run(ws.run_dir(name), moved["run"], keep=job_id)
    return moved
