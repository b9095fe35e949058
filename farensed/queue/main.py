"""`farensed [--home DIR]`: the queue daemon in the foreground (what launchd and systemd run)."""

from __future__ import annotations

import argparse
import os
import sys

from farensed.errors import FarenseError
from farensed.workspace import Workspace


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="farensed", description=__doc__.split("\n")[0].strip("`"))
    parser.add_argument("--home", help="workspace root (default: $FARENSE_HOME, else the current directory)")
    parser.add_argument("--burst", action="store_true", help="exit once no job is left to run")
    parser.add_argument("--poll", type=float, default=0.5, help="seconds between checks of the running child")
    parser.add_argument("--rescan", type=float, default=5.0, help="seconds between full rescans of jobs/pending/")
    parser.add_argument(
        "--min-available-mb",
        type=float,
        default=float(os.environ["FARENSE_MIN_AVAILABLE_MB"]) if os.environ.get("FARENSE_MIN_AVAILABLE_MB") else None,
        help="memory guard: checkpoint-stop the job when available memory falls below this",
    )
    parser.add_argument(
        "--stop-timeout", type=float, default=300.0, help="seconds to wait for the child's checkpoint on SIGTERM"
    )
    args = parser.parse_args(argv)
    from farensed.queue.daemon import Daemon

    daemon = Daemon(
        Workspace.at(args.home),
        poll_interval=args.poll,
        rescan_interval=args.rescan,
        min_available_mb=args.min_available_mb,
        stop_timeout=args.stop_timeout,
    )
    try:
        return daemon.work(burst=args.burst)
    except FarenseError as exc:
        print(f"farensed: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
