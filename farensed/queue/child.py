"""The training child the daemon starts: runs one job's spec and records its exit code in exit.json."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from farensed import EXIT_RESUMABLE
from farensed.atomic import atomic_write_json
from farensed.errors import FarenseError
from farensed.exitfile import EXIT_FILE, write_exit_code

FRESH_DONE = "fresh.done"


def start_over(ws, name: str, job_dir: Path) -> None:
    """`submit --fresh`: move the old run (and output) aside once; later attempts of the job resume the new run."""
    from farensed.queue.fresh import start_over as move_old_run

    move_old_run(ws, name, job_id=int(job_dir.name), say=lambda msg: print(msg, flush=True))
    atomic_write_json(job_dir / FRESH_DONE, {"run_dir": str(ws.run_dir(name))})


def way_back(job_dir: Path) -> str:
    """After a checkpoint-stop: a cancelled job comes back with `retry`; otherwise the daemon resumes it."""
    from farensed.atomic import read_json

    job_id = job_dir.name
    try:
        cancelled = read_json(job_dir / "job.json").get("cancel_requested")
    except (OSError, ValueError):
        cancelled = False
    if cancelled:
        return f"⏹  Job {job_id} cancelado; para o retomar do último checkpoint: farensectl retry {job_id}"
    return f"↻ O farensed retoma o job {job_id} do último checkpoint (farensectl status {job_id})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="farensed.queue.child")
    parser.add_argument("--home", required=True)
    parser.add_argument("--job-dir", required=True)
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args(argv)
    job_dir = Path(args.job_dir)
    code = 1
    try:
        from farensed.engine.runner import run_distributed, run_spec
        from farensed.spec import load_spec
        from farensed.workspace import Workspace

        ws = Workspace.at(args.home)
        spec = load_spec(job_dir / "spec.json", ws)
        if args.fresh:
            start_over(ws, spec.name, job_dir)
        if spec.distributed:
            # Rank 0 writes exit.json itself; none means a rank or the launcher was lost: resume.
            run_distributed(spec, ws, job_dir / "spec.json", fresh=False, exit_file=job_dir / EXIT_FILE)
            return 0
        os.environ["FARENSE_JOB_ID"] = job_dir.name
        code = run_spec(job_dir / "spec.json", args.home)
        if code == EXIT_RESUMABLE:
            print(way_back(job_dir), flush=True)
    except FarenseError as exc:
        print(f"Error: {exc}", flush=True)
        code = exc.exit_code
    except BaseException:  # noqa: BLE001 - the log must show why, and exit.json must say it failed
        traceback.print_exc()
        sys.stdout.flush()
        code = 1
    # Written last: a child killed before this point has no exit.json, which the daemon reads as "lost".
    write_exit_code(job_dir / EXIT_FILE, code)
    return code


if __name__ == "__main__":
    sys.exit(main())
