"""The chaos soak's watcher: samples processes all along and counts trainers alive at the same moment."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import orjson
import psutil


class Watcher(threading.Thread):
    """Samples the workspace's processes: how many trainers (children past their start-up) live at once."""

    def __init__(self, root: Path, interval: float = 0.05):
        super().__init__(daemon=True)
        self.root, self.interval = str(root), interval
        self.max_trainers, self.samples, self.violations = 0, 0, []
        self.max_reports = 0  # morning reports (`farensectl report --notify`) of this workspace alive at once
        self.started: set[tuple[int, float]] = set()
        self.stop_event = threading.Event()

    def _children(self) -> list[psutil.Process]:
        found, reports = [], 0
        for proc in psutil.process_iter(["cmdline", "status"]):
            cmd = proc.info["cmdline"] or []
            if self.root not in cmd or proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if "farensed.queue.child" in cmd:
                found.append(proc)
            elif "report" in cmd and "--notify" in cmd:
                reports += 1
        self.max_reports = max(self.max_reports, reports)
        return found

    def _is_trainer(self, proc: psutil.Process, cmd: list[str]) -> bool:
        """Past the start-up handshake: it recorded itself in child.json or holds a run lock."""
        key = (proc.pid, proc.create_time())
        if key in self.started:
            return True
        job_dir = Path(cmd[cmd.index("--job-dir") + 1])
        try:
            if orjson.loads((job_dir / "child.json").read_bytes()).get("pid") == proc.pid:
                self.started.add(key)
                return True
            if any(f.path.endswith(".lock") and "checkpoints_qlora" in f.path for f in proc.open_files()):
                self.started.add(key)
                return True
        except (OSError, ValueError, psutil.Error):
            pass
        return False

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                children = self._children()
                pids = {p.pid for p in children}
                # A child's own fork (e.g. subprocess between fork and exec) shares its command line and open
                # files for a moment: it is the same trainer, not a second one.
                trainers = [p.pid for p in children if p.ppid() not in pids and self._is_trainer(p, p.info["cmdline"])]
            except psutil.Error:
                trainers = []
            self.samples += 1
            self.max_trainers = max(self.max_trainers, len(trainers))
            if len(trainers) > 1:
                self.violations.append((time.time(), trainers))
            self.stop_event.wait(self.interval)
