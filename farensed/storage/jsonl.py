"""Reading line files: JSONL records (a torn last line skipped) and the tail of any log, read from the end."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import orjson

from farensed.storage.regular import open_regular, read_regular


def parse_lines(lines: Iterable[bytes]) -> list[dict]:
    """Decode JSONL lines, skipping blank ones and any that is not a JSON object (the torn end of a killed writer)."""
    records = []
    for line in lines:
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(record, dict):  # a record is an object; anything else is damage, skipped like a torn line
            records.append(record)
    return records


def read_jsonl(path: Path) -> list[dict]:
    """Every record of a JSONL file ([] when it does not exist)."""
    try:
        return parse_lines(read_regular(Path(path)).splitlines())
    except FileNotFoundError:
        return []


def tail_lines(path: Path, n: int, block: int = 65536) -> list[bytes]:
    """The last `n` complete lines of a file, reading backwards (cost independent of the file's length)."""
    path = Path(path)
    if n <= 0 or not path.exists():
        return []
    with open_regular(path) as fh:
        fh.seek(0, os.SEEK_END)
        pos = fh.tell()
        data = b""
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
    lines = data.splitlines()
    if pos > 0:
        lines = lines[1:]  # the first line may be cut in the middle
    return lines[-n:]
