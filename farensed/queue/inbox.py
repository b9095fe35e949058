"""jobs/pending/ as hostile ground: what is waiting there, and jobs/failed/ — the files refused, each with its reason.

Anything may be dropped into jobs/pending/: a spec, a folder, a FIFO, a link, a file still being copied, a file
dated next century, one whose name holds escape sequences. Each settled entry ends as a job or is moved to
jobs/failed/ with `<name>.reason.txt` (one short line); an entry that cannot even be moved is remembered and
skipped (said once), so nothing makes the daemon spin. jobs/failed/ is listed by `farensectl list` until the user
deals with each file: fix it and move it back into jobs/pending/, or delete it and its .reason.txt.
"""

from __future__ import annotations

import datetime as dt
import itertools
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from farensed.errors import FarenseError
from farensed.i18n import _
from farensed.storage.atomic import atomic_write_bytes, fsync_dir
from farensed.storage.regular import kind_of, read_regular
from farensed.storage.runlock import RESERVED_PREFIX
from farensed.terminal import safe

REASON_SUFFIX = ".reason.txt"
REASON_MAX = 300  # characters of a reason: one line a person reads
NAME_MAX_BYTES = 200  # a rejected file's name, leaving room for .N and .reason.txt within NAME_MAX (255)
SETTLE_S = 0.3  # a file modified this recently may still be being written
SCAN_MAX = 10_000  # entries looked at per scan of a folder


@dataclass
class Rejected:
    """A file in jobs/failed/ and why it was refused."""

    name: str
    reason: str
    rejected_at: float

    def to_dict(self) -> dict:
        when = dt.datetime.fromtimestamp(self.rejected_at).astimezone().isoformat(timespec="seconds")
        return {"file": self.name, "reason": self.reason, "rejected_at": when}  # a time as every other in list --json


def reason_of(exc: BaseException) -> str:
    """One short, safe line: a FarenseError's own words, else the exception's kind and an excerpt."""
    text = str(exc) if isinstance(exc, FarenseError) else f"{type(exc).__name__}: {exc}"
    return safe(text, REASON_MAX)


def scan(folder: Path) -> list[os.DirEntry]:
    """The first SCAN_MAX entries of a folder, [] when it cannot be listed: a million files cost one bounded look."""
    try:
        with os.scandir(folder) as entries:
            return list(itertools.islice(entries, SCAN_MAX))
    except OSError:
        return []


def settled_entries(inbox: Path, skip: set) -> list[Path]:
    """Entries of the inbox to take now, oldest first: not hidden, not being written, not known to be stuck."""
    now = time.time()
    found = []
    for entry in scan(inbox):
        if entry.name.startswith("."):
            continue  # submit's own temp files, reservations, editors' swap files
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # gone meanwhile
        # a file written now has mtime ≈ now; one dated in the future is not being written either
        if now - SETTLE_S <= st.st_mtime <= now + 5:
            continue
        if identity(st, entry.name) not in skip:
            found.append((st.st_mtime_ns, entry.name, Path(entry.path)))
    return [path for *_, path in sorted(found)]


def identity(st: os.stat_result, name: str) -> tuple:
    """What makes an inbox entry the same entry at the next scan (a rewritten file is a new one)."""
    return (name, st.st_ino, st.st_size, st.st_mtime_ns)


def not_a_file(path: Path) -> str | None:
    """Why an inbox entry is not a spec file (a folder, FIFO, device or socket), else None."""
    try:
        return kind_of(os.stat(path).st_mode)
    except OSError:
        return None  # a dangling link: reading it says so


def _target_name(name: str) -> str:
    """The name a rejected file keeps in jobs/failed/: its own, cut to fit the file system with its suffixes."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= NAME_MAX_BYTES:
        return name
    return raw[:NAME_MAX_BYTES].decode("utf-8", "ignore") + "…"


def free_name(folder: Path, name: str) -> Path:
    """Where an entry named `name` goes in `folder`: its own name (cut to fit), or `.N` before the suffix if taken.

    In jobs/failed/ a reason without its file is what a daemon killed mid-rejection leaves: that name is free again.
    """
    base = _target_name(name)
    target = folder / base
    n = 1
    while os.path.lexists(target):
        stem, dot, suffix = base.rpartition(".")
        target = folder / (f"{stem}.{n}.{suffix}" if dot and stem else f"{base}.{n}")
        n += 1
    return target


def reject(failed: Path, path: Path, reason: str, before_move: Callable[[], None] | None = None) -> Path:
    """Move an inbox entry into jobs/failed/ beside `<name>.reason.txt`; nothing is deleted. Returns its new path.

    The reason is written first, then `before_move` is called (the daemon's log line), then the entry moves: a kill
    anywhere leaves the entry in jobs/pending/, refused and said again by the next daemon, never a file in
    jobs/failed/ without its reason or a refusal nobody logged.
    """
    target = free_name(failed, path.name)
    reason_file = target.with_name(target.name + REASON_SUFFIX)
    atomic_write_bytes(reason_file, (safe(reason, REASON_MAX) + "\n").encode())
    if before_move is not None:
        before_move()
    try:
        os.replace(path, target)
    except OSError:
        reason_file.unlink(missing_ok=True)  # ours, written a moment ago, for a file that stays where it was
        raise
    fsync_dir(path.parent)
    return target


# ---- reservations: an inbox entry on its way to becoming a job (queue/intake.py) -------------------------------------
RESERVED_RE = re.compile(rf"^{re.escape(RESERVED_PREFIX)}([1-9][0-9]{{0,8}})-(.+)$", re.DOTALL)  # a bounded job id


def reserve(path: Path, job_id: int) -> Path:
    """Rename an inbox entry `.reserved-<job id>-<name>` before its job is written; the new path."""
    reserved = path.with_name(f"{RESERVED_PREFIX}{job_id}-{_target_name(path.name)}")
    os.replace(path, reserved)
    fsync_dir(path.parent)
    return reserved


def reservations(inbox: Path) -> list[tuple[Path, int, str]]:
    """Reservations left in the inbox (path, job id, original name): only a process killed mid-ingest leaves one
    (or a user who makes one by hand)."""
    found = (RESERVED_RE.match(entry.name) for entry in scan(inbox))
    return [(inbox / m.group(0), int(m.group(1)), m.group(2)) for m in found if m]


def rejected(failed: Path, limit: int = 50) -> list[Rejected]:
    """The files waiting in jobs/failed/ (newest first, at most `limit`), each with its reason."""
    items = []
    for entry in scan(failed):
        if entry.name.endswith(REASON_SUFFIX) or entry.name.startswith("."):
            continue
        try:  # when it was refused: its reason's time (a move keeps the file's own mtime)
            when = os.stat(entry.path + REASON_SUFFIX).st_mtime
        except OSError:
            try:
                when = entry.stat(follow_symlinks=False).st_mtime
            except OSError:
                continue
        items.append((when, entry.name))
    out = []
    for when, name in sorted(items, reverse=True)[:limit]:
        try:
            text = read_regular(failed / (name + REASON_SUFFIX), 4096).decode("utf-8", "replace").strip()
        except OSError:
            text = _("(sem motivo registado)")
        out.append(Rejected(safe(name, 120), safe(text, REASON_MAX), when))
    return out


def count_rejected(failed: Path) -> int:
    """How many files wait in jobs/failed/."""
    return sum(1 for e in scan(failed) if not e.name.endswith(REASON_SUFFIX) and not e.name.startswith("."))
