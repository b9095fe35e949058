"""A job's log read for a person: line by line, however large the file, each line cut to what a screen shows.

A log holds what a child printed; a progress bar redrawn with carriage returns, or a program gone wrong, can write a
line of hundreds of megabytes. Reading it whole would take that memory, and printing it would flood the terminal.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from farensed.storage.regular import open_regular

LINE_SHOWN = 4000  # characters of one log line printed; the rest is counted, not shown
CHUNK = 1 << 20


def log_lines(path: Path) -> Iterator[bytes]:
    """The lines of a log (without their newline), each at most LINE_SHOWN bytes plus a note of what was cut."""
    with open_regular(Path(path)) as fh:
        while line := fh.readline(LINE_SHOWN):
            if line.endswith(b"\n"):
                yield line[:-1]
                continue
            cut = 0
            while (rest := fh.readline(CHUNK)) and not rest.endswith(b"\n"):
                cut += len(rest)
            cut += len(rest.rstrip(b"\n"))
            yield line + (f"… (+{cut} bytes)".encode() if cut else b"")


def shown_line(line: bytes) -> str:
    """One log line as text for a screen: undecodable bytes replaced, cut at LINE_SHOWN characters."""
    text = line.decode("utf-8", errors="replace")
    if len(text) <= LINE_SHOWN + 40:
        return text
    return text[:LINE_SHOWN] + f"… (+{len(text[LINE_SHOWN:].encode())} bytes)"
