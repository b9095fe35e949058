"""Training metrics: training_metrics.json (a JSON list), .jsonl (append-only) and .csv; read from the end."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path

import orjson

from farensed.analysis.gap import band
from farensed.filevalues import LARGEST, finite
from farensed.storage.atomic import append_line, atomic_write_bytes, atomic_write_json, fsync_file
from farensed.storage.jsonl import parse_lines, read_jsonl, tail_lines

JSON_NAME, JSONL_NAME, CSV_NAME = "training_metrics.json", "training_metrics.jsonl", "training_metrics.csv"
CSV_COLUMNS = [
    "step",
    "epoch",
    "loss",
    "train_loss",
    "learning_rate",
    "tokens_per_second",
    "peak_memory_gb",
    "trained_tokens",
    "elapsed_s",
    "val_loss",
    "gap",
    "band",
]
# Fields that depend on the clock or the machine; the rest is equal between a resumed and an uninterrupted run.
TIMING_KEYS = ("tokens_per_second", "peak_memory_gb", "elapsed_s", "time")


def deterministic(record: dict) -> dict:
    """A record without its timing fields (what exact resume promises to reproduce)."""
    return {k: v for k, v in record.items() if k not in TIMING_KEYS}


class MetricsLog:
    """All metrics records of one run, mirrored to disk; the .json and .csv are rewritten atomically."""

    def __init__(self, folder: Path, records: list[dict] | None = None, flush_every_s: float = 2.0, write: bool = True):
        self.folder = Path(folder)
        self.write = write  # False on the ranks of a distributed job other than 0
        self.records: list[dict] = list(records or [])
        self.flush_every_s = flush_every_s
        self._last_flush = 0.0

    def reset_files(self) -> None:
        """Make the files hold exactly `records` (used on start and on resume from a checkpoint)."""
        if not self.write:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        body = b"".join(orjson.dumps(r) + b"\n" for r in self.records)
        atomic_write_bytes(self.folder / JSONL_NAME, body)
        self.flush()

    def append(self, record: dict, force_flush: bool = False) -> None:
        self.records.append(record)
        if not self.write:
            return
        # No fsync per record: the durable points are flush() and the checkpoints, which hold the history.
        append_line(self.folder / JSONL_NAME, orjson.dumps(record), sync=False)
        if force_flush or time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> None:
        if not self.write:
            return
        if (self.folder / JSONL_NAME).exists():
            fsync_file(self.folder / JSONL_NAME)
        atomic_write_json(self.folder / JSON_NAME, self.records)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(self.records)
        atomic_write_bytes(self.folder / CSV_NAME, buf.getvalue().encode())
        self._last_flush = time.monotonic()


def read_all(folder: Path) -> list[dict]:
    """Every record, from the .jsonl (skipping a torn last line), as readers may use them (`readable`); [] when it
    cannot be read (absent, not a file)."""
    try:
        return readable(read_jsonl(Path(folder) / JSONL_NAME))
    except OSError:
        return []


def read_last(folder: Path, n: int) -> list[dict]:
    """The last `n` records, reading the .jsonl backwards (cost independent of the file's length), as `readable`."""
    try:
        return readable(parse_lines(tail_lines(Path(folder) / JSONL_NAME, n + 1))[-n:]) if n > 0 else []
    except OSError:
        return []


# ---- records as readers may use them: the metrics log is a file a person can edit -------------------------------
NUMBERS = ("step", "iteration", "iter", "epoch", "loss", "train_loss", "val_loss", "gap")
MEASURES = ("tokens_per_second", "elapsed_s", "total_steps", "peak_memory_gb", "learning_rate")  # optional
VALIDATION = ("val_loss", "train_loss", "gap")


def readable(raw: list) -> list[dict]:
    """farense's own records as every reader may use them: a number that is not a finite number (or null) is left
    out, a record without a step is skipped, and a validation is whole (val_loss, train_loss, gap; its band from
    the gap) or not a validation: a hand edit or a torn write never reaches arithmetic or a terminal."""
    out = []
    for record in raw:
        if not isinstance(record, dict):
            continue
        rec = clean_numbers(record, allow_null=True)
        if not isinstance(rec.get("step"), int):
            continue
        if any(rec.get(k) is not None for k in VALIDATION):
            if all(rec.get(k) is not None for k in VALIDATION):
                rec["band"] = band(rec["gap"])
            else:
                rec = {k: v for k, v in rec.items() if k not in (*VALIDATION, "band")}
        out.append(rec)
    return out


def clean_numbers(record: dict, allow_null: bool = False) -> dict:
    """A record with its numbers checked: a value that is not a finite number (a hand edit, another tool's file) is
    left out, never passed on to arithmetic or a terminal; farense's own null (a step that counted nothing) kept."""

    def number(value) -> bool:
        return allow_null if value is None else finite(value) is not None and abs(value) < LARGEST

    return {k: v for k, v in record.items() if k not in NUMBERS + MEASURES or number(v)}
