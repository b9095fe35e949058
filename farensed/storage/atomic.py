"""Durable file writes: temp file -> fsync -> rename -> fsync dir. Nothing is ever deleted."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from farensed.storage.regular import read_regular


def fsync_dir(path: Path) -> None:
    """Flush a directory entry so a rename inside it survives a power loss."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def atomic_write_with(path: Path, write: Callable[[Path], None]) -> None:
    """Let `write` fill a temp file beside `path`, then make it appear atomically at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()  # our own half-written temp file, never user data
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write bytes durably and atomically."""
    atomic_write_with(path, lambda tmp: tmp.write_bytes(data))


def dumps(obj: Any) -> bytes:
    """Pretty JSON (orjson) with a trailing newline, readable by jq and people."""
    return orjson.dumps(obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write a JSON document durably and atomically."""
    atomic_write_bytes(path, dumps(obj))


def read_json(path: Path) -> Any:
    """Read a JSON document written by this module (a FIFO or folder in its place is an OSError, never a hang)."""
    return orjson.loads(read_regular(Path(path)))


def read_json_dict(path: Path) -> dict | None:
    """A JSON object from a state file, or None when it is absent, unreadable, not JSON or not an object."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def append_line(path: Path, line: bytes, sync: bool = True) -> None:
    """Append one line (and fsync unless the caller syncs at its own durable points)."""
    with open(path, "ab") as fh:
        fh.write(line if line.endswith(b"\n") else line + b"\n")
        fh.flush()
        if sync:
            os.fsync(fh.fileno())


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def move_aside(path: Path, label: str = "old") -> Path:
    """Rename `path` to `path.<label>-<timestamp>` (never delete what a user may want back)."""
    path = Path(path)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{path.name}.{label}-{stamp}")
    n = 1
    while target.exists():
        target = path.with_name(f"{path.name}.{label}-{stamp}-{n}")
        n += 1
    os.replace(path, target)
    fsync_dir(path.parent)
    return target
