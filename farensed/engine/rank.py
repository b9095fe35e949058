"""One rank of a distributed job (started by mlx.launch): train, and let rank 0 record the exit code."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from farensed.engine.distributed import peer_lost
from farensed.errors import FarenseError, error_line
from farensed.storage.exitfile import write_exit_code
from farensed.terminal import safe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="farensed.engine.rank")
    parser.add_argument("--home", required=True)
    parser.add_argument("--spec", required=True)
    parser.add_argument("--exit-file", required=True)
    args = parser.parse_args(argv)
    main_rank = os.environ.get("MLX_RANK", "0") == "0"
    if not main_rank:
        sys.stdout = open(os.devnull, "w")  # one console: rank 0's (errors still reach stderr)
    code, record = 1, True
    try:
        from farensed.engine.runner import run_spec

        code = run_spec(Path(args.spec), args.home)
    except FarenseError as exc:
        print(safe(error_line(exc), 500), file=sys.stderr, flush=True)
        code = exc.exit_code
    except BaseException as exc:  # noqa: BLE001
        traceback.print_exc()
        record = not peer_lost(exc)  # a dead peer: leave no exit code, so the job resumes
    if main_rank and record:
        write_exit_code(Path(args.exit_file), code)
    return code


if __name__ == "__main__":
    sys.exit(main())
