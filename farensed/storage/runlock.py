"""One trainer per run folder: a lock held for the whole life of whoever trains or evaluates a run.

The daemon's child, `farensectl run`, `demo` and `eval` take it before they touch checkpoints_qlora/<name>/; a
second one refuses with one line naming the holder's pid (and job id). The lock is an OS file lock
(`filelock`, flock) on checkpoints_qlora/.<name>.lock — beside the run folder, so `--fresh` can move the folder
aside while holding it — and the kernel drops it when its holder dies, even by kill -9. Who holds it is written
in .<name>.holder.json. Re-entrant within one process (training, then evaluation).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import orjson
import psutil
from filelock import FileLock, Timeout

from farensed.errors import QueueError
from farensed.i18n import _
from farensed.storage.atomic import atomic_write_json, read_json
from farensed.storage.procs import process_alive

RESERVED_PREFIX = ".reserved-"  # queue/inbox.py's reservations (an inbox file on its way to a job): never swept
TEMP_RE = re.compile(r"^\..+\.tmp-(\d+)$")  # atomic.py's temp files and checkpoint.py's temp folders
_held: dict[str, list] = {}  # lock path → [FileLock, depth] for the locks this process holds


class RunLockedError(QueueError):
    """Another process trains or evaluates this run now."""


def lock_paths(run_dir: Path) -> tuple[Path, Path]:
    """(lock file, holder record) of a run folder, both beside it."""
    run_dir = Path(run_dir)
    return run_dir.with_name(f".{run_dir.name}.lock"), run_dir.with_name(f".{run_dir.name}.holder.json")


def holder(run_dir: Path) -> dict | None:
    """Who holds the run's lock now ({pid, create_time, job_id, what, since}), or None."""
    _, record = lock_paths(run_dir)
    try:
        info = read_json(record)  # a FIFO or folder in its place reads as no holder, never a hang
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(info, dict) or not process_alive(info.get("pid"), info.get("create_time")):
        return None
    return info


def busy_message(run_dir: Path, info: dict | None) -> str:
    pid = (info or {}).get("pid", "?")
    job = (info or {}).get("job_id")
    who = _("pelo pid {pid}").format(pid=pid) + (f" (job {job})" if job is not None else "")
    return _("{run_dir}: a pasta do treino está em uso {who}; espere que termine ou cancele-o").format(
        run_dir=run_dir, who=who
    )


def _inside(folder: Path, within: Path | None) -> bool:
    """`folder` is a real folder (not a link), and lies inside `within` once every link is resolved."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        return False
    if within is None:
        return True
    try:
        return folder.resolve().is_relative_to(Path(within).resolve())
    except (OSError, RuntimeError):
        return False


def sweep_temps(folder: Path, within: Path | None = None, prefix: str | tuple[str, ...] = ".") -> list[Path]:
    """Remove temp files/folders left in `folder` by writers that are dead (a temp is never user data).

    Never through a link: a `folder` that is a symlink, or that resolves outside `within` (the workspace), is left
    alone, and a temp entry that is a link is unlinked itself, never followed. `prefix`: only temps whose name
    starts so (e.g. `.<name>.tmp-`), in a folder where the user's or other programs' files may lie. An inbox
    reservation (`.reserved-<id>-<file>`, the user's file on its way to a job) is never a temp, whatever its name.
    """
    removed = []
    if not _inside(folder, within):
        return removed
    for entry in Path(folder).iterdir():
        m = TEMP_RE.match(entry.name)
        if not m or int(m.group(1)) == os.getpid() or psutil.pid_exists(int(m.group(1))):
            continue
        if not entry.name.startswith(prefix) or entry.name.startswith(RESERVED_PREFIX):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)  # rmtree never follows the links inside
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextlib.contextmanager
def hold_run(
    run_dir: Path, job_id: int | None = None, what: str = "treino", sweep: tuple = (), within: Path | None = None
) -> Iterator[None]:
    """Hold the run's lock for the body; RunLockedError (one line, exit 4) if another process holds it.

    `sweep`: folders whose stale temp files are removed once the lock is ours (the run folder is always swept),
    only inside `within` (the workspace; default: the folder holding checkpoints_qlora/).
    """
    within = Path(run_dir).parent.parent if within is None else within
    run_dir = Path(run_dir)
    lock_file, record = lock_paths(run_dir)
    key = str(lock_file)
    if key in _held:  # this process already holds it (training, then evaluation)
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(key)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunLockedError(busy_message(run_dir, holder(run_dir))) from None
    _held[key] = [lock, 1]
    try:
        pid = os.getpid()
        atomic_write_json(
            record,
            {
                "pid": pid,
                "create_time": psutil.Process(pid).create_time(),
                "job_id": job_id,
                "what": what,
                "since": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            },
        )
        for folder in (run_dir, run_dir / "adapters", *sweep):
            sweep_temps(folder, within)
        yield
    finally:
        del _held[key]
        record.unlink(missing_ok=True)
        lock.release()
