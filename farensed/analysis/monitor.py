"""`farensectl tail`: the seed's monitor.py as a library — format records, follow a job's metrics live."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

from farensed.analysis.gap import band_label
from farensed.analysis.metrics import JSONL_NAME, readable
from farensed.i18n import _, grouped
from farensed.storage.jsonl import parse_lines


def _eta(record: dict, first: dict | None) -> str | None:
    total, step = record.get("total_steps"), record.get("step")
    if not isinstance(total, int) or not first or step is None or step <= first["step"]:
        return None
    rate = (record.get("elapsed_s", 0) - first.get("elapsed_s", 0)) / (step - first["step"])
    if rate <= 0:
        return None
    seconds = int(rate * (total - step))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def live_line(head: str, state: str, record: dict | None, first: dict | None, note: str | None = None) -> str:
    """`wait`'s one live line: the job, its state, step/total, loss, ETA (what is known so far)."""
    parts = [f"{head}: {state}"]
    if note:
        parts.append(note)
    if record:
        total = record.get("total_steps")
        parts.append(f"step {record.get('step')}" + (f"/{total}" if total else ""))
        if isinstance(record.get("loss"), (int, float)):
            parts.append(f"loss {record['loss']:.4f}")
        if (eta := _eta(record, first)) is not None:
            parts.append(f"ETA {eta}")
    return " · ".join(parts)


def format_record(record: dict, best: float | None, first: dict | None = None, colour=lambda text, band: text) -> str:
    """One line: step, epoch, loss, val_loss, gap+band, tok/s, memory, ETA, best so far."""
    total = record.get("total_steps")
    parts = [f"step {record['step']}" + (f"/{total}" if isinstance(total, int) and total > 0 else "")]
    if isinstance(record.get("epoch"), int):
        parts.append(_("época {epoch}").format(epoch=record["epoch"] + 1))
    parts.append(f"loss {record['loss']:.4f}" if record.get("loss") is not None else "loss —")  # null: a NaN loss
    if record.get("val_loss") is not None:
        parts.append(f"val_loss {record['val_loss']:.4f}")
        parts.append(colour(f"gap {record['gap']:+.4f} {band_label(record['band'])}", record["band"]))
    if record.get("tokens_per_second"):
        parts.append(f"{grouped(record['tokens_per_second'])} tok/s")
    if record.get("peak_memory_gb") is not None:
        parts.append(f"mem {record['peak_memory_gb']:.2f} GB")
    if (eta := _eta(record, first)) is not None:
        parts.append(f"ETA {eta}")
    if best is not None:
        parts.append(_("melhor {best:.4f}").format(best=best))
    return " | ".join(parts)


def running_best(records: list[dict]) -> list[float | None]:
    """The best val_loss as it stood at each record (what a history line shows as `melhor`)."""
    out, best = [], None
    for r in records:
        if r.get("val_loss") is not None and (best is None or r["val_loss"] < best):
            best = r["val_loss"]
        out.append(best)
    return out


class MetricsFollower:
    """Yields new records appended to training_metrics.jsonl; starts over if the file is rewritten (resume)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / JSONL_NAME
        self.offset = 0
        self.inode = None
        self.partial = b""

    def skip_to_end(self) -> None:
        if self.path.exists():
            st = self.path.stat()
            self.offset, self.inode = st.st_size, st.st_ino

    def poll(self) -> Iterator[dict]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return
        if st.st_ino != self.inode or st.st_size < self.offset:
            self.offset, self.inode, self.partial = 0, st.st_ino, b""  # rewritten on resume: read it again
        if st.st_size == self.offset:
            return
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = self.partial + fh.read()
            self.offset = fh.tell()
        *lines, self.partial = data.split(b"\n")
        yield from readable(parse_lines(lines))  # a hand-edited line never breaks a follower


def follow(
    run_dir: Path,
    is_over: Callable[[], bool],
    emit: Callable[[dict], None],
    interval: float = 0.5,
    from_end: bool = True,
) -> None:
    """Emit each new record until `is_over()`; then drain what is left."""
    follower = MetricsFollower(run_dir)
    if from_end:
        follower.skip_to_end()
    while True:
        over = is_over()
        for record in follower.poll():
            emit(record)
        if over:
            return
        time.sleep(interval)
