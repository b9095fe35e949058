"""The training child the daemon starts: runs one job's spec and records its exit code in exit.json.

Start-up handshake (no window for a second trainer): the daemon records the child's pid in job.json, then writes
one byte on its stdin. A child whose stdin ends first (the daemon died before recording it) exits touching
nothing. Then the child records itself in jobs/<id>/child.json and takes the run folder's lock before it reads or
writes the run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import signal
import sys
import traceback
from pathlib import Path

from farensed import EXIT_RESUMABLE
from farensed.errors import FarenseError, error_line
from farensed.i18n import _
from farensed.signals import StoppedBeforeTraining, quiet_lost_stops, stop_before_training
from farensed.storage.atomic import atomic_write_json
from farensed.storage.exitfile import EXIT_FILE, write_exit_code
from farensed.terminal import safe

FRESH_DONE = "fresh.done"
CHILD_FILE = (
    "child.json"  # the child's own pid + start time: written once it handles SIGTERM, before it touches the run
)


def wait_for_go() -> bool:
    """True once the daemon has recorded our pid (it sends one byte); False if it died first (EOF)."""
    try:
        return sys.stdin.buffer.read(1) == b"g"
    except OSError:
        return False


def record_self(job_dir: Path, attempt: int) -> None:
    import psutil

    pid = os.getpid()
    atomic_write_json(
        job_dir / CHILD_FILE,
        {
            "pid": pid,
            "create_time": psutil.Process(pid).create_time(),
            "attempt": attempt,
            "started_at": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        },
    )


def start_over(ws, name: str, job_dir: Path) -> None:
    """`submit --fresh`: move the old run (and output) aside once; later attempts of the job resume the new run."""
    from farensed.queue.fresh import start_over as move_old_run

    move_old_run(ws, name, job_id=int(job_dir.name), say=lambda msg: print(msg, flush=True))
    atomic_write_json(job_dir / FRESH_DONE, {"run_dir": str(ws.run_dir(name))})


def way_back(job_dir: Path) -> str:
    """After a checkpoint-stop: a cancelled job comes back with `retry`; otherwise the daemon resumes it."""
    from farensed.storage.atomic import read_json

    job_id = job_dir.name
    try:
        cancelled = read_json(job_dir / "job.json").get("cancel_requested")
    except (OSError, ValueError):
        cancelled = False
    if cancelled:
        return _("⏹  Job {job_id} cancelado; para o retomar do último checkpoint: farensectl retry {job_id}").format(
            job_id=job_id
        )
    return _("↻ O farensed retoma o job {job_id} do último checkpoint (farensectl status {job_id})").format(
        job_id=job_id
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="farensed.queue.child")
    parser.add_argument("--home", required=True)
    parser.add_argument("--job-dir", required=True)
    parser.add_argument("--fresh", action="store_true")
    parser.add_argument("--attempt", type=int, default=0)
    parser.add_argument("--wait-go", action="store_true", help="wait for the daemon's byte on stdin first")
    args = parser.parse_args(argv)
    job_dir = Path(args.job_dir)
    if args.wait_go and not wait_for_go():
        return 0  # the daemon died before it recorded us: the next one starts the job, we touch nothing
    # Until the trainer installs its own handler (checkpoint at the next update boundary), a stop request (cancel,
    # memory guard, window end, daemon shutdown) ends the child cleanly with 75 instead of killing it: a killed child
    # would read as "lost" and cost a recovery. Installed before child.json is written: the daemon reads child.json
    # as "this child handles a stop" (queue/overnight.py: child_ready).
    signal.signal(signal.SIGTERM, stop_before_training)
    quiet_lost_stops()
    code, error = 1, None
    try:
        record_self(job_dir, args.attempt)
        from farensed.spec.load import load_spec
        from farensed.storage.runlock import RunLockedError, hold_run
        from farensed.storage.workspace import Workspace

        ws = Workspace.at(args.home)
        spec = load_spec(job_dir / "spec.json", ws)
        check_own_run(ws, spec, job_dir, args.fresh)
        try:
            with hold_run(
                ws.run_dir(spec.name), job_id=int(job_dir.name), sweep=(ws.output_dir(spec.name),), within=ws.root
            ):
                code = train(spec, ws, job_dir, args)
                if code is None:
                    return 0
        except RunLockedError as exc:
            print(_("⚠  {exc}; o job volta à fila").format(exc=exc), flush=True)
            code = EXIT_RESUMABLE  # the daemon waits until the run is free
    except StoppedBeforeTraining as exc:
        print(exc.line(), flush=True)
        code = EXIT_RESUMABLE
    except FarenseError as exc:
        code, error = exc.exit_code, str(exc)
        with contextlib.suppress(OSError):  # the log itself may be on the full disk
            print(safe(error_line(exc), 500), flush=True)
    except BaseException:  # noqa: BLE001 - the log must show why, and exit.json must say it failed
        traceback.print_exc()
        sys.stdout.flush()
        code = 1
    # Written last: a child killed before this point has no exit.json, which the daemon reads as "lost".
    write_exit_code(job_dir / EXIT_FILE, code, error)
    return code


def check_own_run(ws, spec, job_dir: Path, fresh: bool) -> None:
    """The engine trains checkpoints_qlora/<name>: refuse when this job's run was moved aside by another job's
    --fresh (that folder is now the other job's run; training it would resume someone else's checkpoints)."""
    from farensed.errors import QueueError
    from farensed.queue.job import job_run_dir
    from farensed.queue.jobs import Queue

    job = Queue(ws).get(int(job_dir.name))
    own, current = job_run_dir(ws, job), ws.run_dir(spec.name)
    if not fresh and own.resolve() != current.resolve():
        raise QueueError(
            _(
                "job {id}: a sua corrida foi guardada em {own} pelo --fresh de outro job, e {current} é agora "
                "outra corrida; para treinar este job de novo: farensectl submit --fresh"
            ).format(id=job.id, own=own, current=current)
        )


def train(spec, ws, job_dir: Path, args) -> int | None:
    """Run the job under the run's lock; None when rank 0 has written exit.json itself (distributed)."""
    from farensed.engine.runner import run_distributed, run_spec

    if args.fresh:
        start_over(ws, spec.name, job_dir)
    if spec.distributed:
        # Rank 0 writes exit.json itself; none means a rank or the launcher was lost: resume.
        run_distributed(spec, ws, job_dir / "spec.json", fresh=False, exit_file=job_dir / EXIT_FILE)
        return None
    os.environ["FARENSE_JOB_ID"] = job_dir.name
    code = run_spec(job_dir / "spec.json", args.home, job_id=int(job_dir.name))
    if code == EXIT_RESUMABLE:
        print(way_back(job_dir), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
