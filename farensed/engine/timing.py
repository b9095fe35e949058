"""Where a training process's time went: start-up (process start → first step), validation, checkpoints.

Each process that trains appends one record to the run's `timings.json` (written at its first step, completed when
it ends), so a run resumed three times shows four start-ups. Wall-clock seconds; informative, never part of the
metrics or of exact resume.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from farensed.storage.atomic import atomic_write_json, read_json

TIMINGS_NAME = "timings.json"


def process_start() -> float:
    """When the OS started this process (epoch seconds)."""
    import psutil

    return psutil.Process().create_time()


def since_process_start():
    """A function giving the seconds since this process started (10 ms resolution on Linux).

    On Linux it counts from /proc/self/stat's start tick with CLOCK_BOOTTIME: psutil's create_time adds the boot
    time, which /proc gives in whole seconds, so its absolute value may be up to a second off.
    """
    try:
        with open("/proc/self/stat") as fh:
            start_tick = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        start = start_tick / os.sysconf("SC_CLK_TCK")
        return lambda: time.clock_gettime(time.CLOCK_BOOTTIME) - start
    except (OSError, AttributeError, ValueError, IndexError):
        wall_start = process_start()
        return lambda: time.time() - wall_start


class RunClock:
    """Marks since process start, and seconds spent per activity, of this process."""

    def __init__(self):
        self.start = process_start()
        self.since_start = since_process_start()
        self.marks: dict[str, float] = {}
        self.cpu_marks: dict[str, float] = {}  # CPU seconds of this process (all threads) at each mark
        self.seconds = {"validation": 0.0, "checkpoint": 0.0}
        self.cpu = {"validation": 0.0}
        self.counts = {"validation": 0, "validation_background": 0, "checkpoint": 0}
        self.info: dict = {"pid": os.getpid()}

    def mark(self, name: str, **info) -> None:
        """Seconds from process start to `name` (the first time only), plus facts about it."""
        if name not in self.marks:
            self.marks[name] = round(self.since_start(), 4)
            self.cpu_marks[name] = round(time.process_time(), 4)
        self.info.update(info)

    def add(self, activity: str, seconds: float, cpu_seconds: float | None = None) -> None:
        self.seconds[activity] += seconds
        self.counts[activity] += 1
        if cpu_seconds is not None:
            self.cpu[activity] += cpu_seconds

    def record(self) -> dict:
        """This process's timing record (startup_s: process start → first step done)."""
        return {
            **self.info,
            "startup_s": self.marks.get("first_step"),
            "marks_s": dict(self.marks),
            "cpu_marks_s": dict(self.cpu_marks),
            "validation_s": round(self.seconds["validation"], 4),
            "validation_cpu_s": round(self.cpu["validation"], 4),
            "validations": self.counts["validation"],
            "validations_in_background": self.counts["validation_background"],
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
