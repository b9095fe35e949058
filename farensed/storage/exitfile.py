"""exit.json: how a training process ended, written last by the child (or rank 0), read by the daemon and runner.

A process killed before it could write the file leaves none, which readers take as "lost" (resume, count a
recovery). Shared by the queue and the engine, so it lives in the foundation.
"""

from __future__ import annotations

from pathlib import Path

from farensed.storage.atomic import atomic_write_json, read_json

EXIT_FILE = "exit.json"


def write_exit_code(path: Path, code: int, error: str | None = None) -> None:
    """Record how a training process ended (written last: a killed process leaves none), with its one-line error.

    The error travels here too because the log may be unwritable when it matters most (a full disk).
    """
    atomic_write_json(path, {"code": code, **({"error": error} if error else {})})


def read_exit_code(path: Path) -> int | None:
    """The recorded exit code, or None when there is none (the process was lost)."""
    try:
        return int(read_json(Path(path))["code"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_exit_error(path: Path) -> str | None:
    """The one-line error a failed training process recorded, if any."""
    try:
        error = read_json(Path(path)).get("error")
    except (OSError, ValueError, AttributeError):
        return None
    return error if isinstance(error, str) else None
