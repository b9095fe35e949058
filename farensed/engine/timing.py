"""Where a training process's time went: start-up (process start → first step), validation, checkpoints.

Each process that trains appends one record to the run's `timings.json` (written at its first step, completed when
it ends), so a run resumed three times shows four start-ups. Wall-clock seconds; informative, never part of the
metrics or of exact resume.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from farensed.atomic import atomic_write_json, read_json

TIMINGS_NAME = "timings.json"


def process_start() -> float:
    """When the OS started this process (epoch seconds; ~10 ms resolution on Linux)."""
    import psutil

    return psutil.Process().create_time()


class RunClock:
    """Marks since process start, and seconds spent per activity, of this process."""

    def __init__(self):
        self.start = process_start()
        self.marks: dict[str, float] = {}
        self.seconds = {"validation": 0.0, "checkpoint": 0.0}
        self.counts = {"validation": 0, "checkpoint": 0}
        self.info: dict = {"pid": os.getpid()}

    def mark(self, name: str, **info) -> None:
        """Seconds from process start to `name` (the first time only), plus facts about it."""
        self.marks.setdefault(name, round(time.time() - self.start, 4))
        self.info.update(info)

    def add(self, activity: str, seconds: float) -> None:
        self.seconds[activity] += seconds
        self.counts[activity] += 1

    def record(self) -> dict:
        """This process's timing record (startup_s: process start → first step done)."""
        return {
            **self.info,
            "startup_s": self.marks.get("first_step"),
            "marks_s": dict(self.marks),
            "validation_s": round(self.seconds["validation"], 4),
            "validations": self.counts["validation"],
            "checkpoint_s": round(self.seconds["checkpoint"], 4),
            "checkpoints": self.counts["checkpoint"],
        }

    def write(self, run_dir: Path) -> None:
        """Add or update this process's record in the run's timings.json."""
        path = Path(run_dir) / TIMINGS_NAME
        try:
            records = read_json(path) if path.exists() else []
        except Exception:  # informative only: a damaged file is started again
            records = []
        key = (self.info["pid"], self.start)
        records = [r for r in records if (r.get("pid"), r.get("process_start")) != key]
        records.append(dict(self.record(), process_start=self.start))
        atomic_write_json(path, records)
