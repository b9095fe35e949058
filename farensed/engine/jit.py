"""MLX's one-time kernel compile, said when it happens: a first step of minutes must not look like a hang.

MLX's CPU back end JIT-compiles the kernels of compiled code with the system C++ compiler the first time a shape
runs, and keeps them under `<temp dir>/mlx/<version>/cpu` (the C++ temp dir: $TMPDIR, $TMP, $TEMP, $TEMPDIR, else
/tmp). On a GPU (Metal, CUDA) there is no such minute-long compile, and nothing is said. The watch does not guess:
it says "compiling" only once new kernel files appear in that folder while this process trains.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path


def cpu_cache_dir() -> Path | None:
    """Where MLX's CPU back end keeps its compiled kernels; None when training runs on a GPU."""
    import mlx.core as mx

    if mx.default_device() != mx.cpu:
        return None
    tmp = next((os.environ[v] for v in ("TMPDIR", "TMP", "TEMP", "TEMPDIR") if os.environ.get(v)), "/tmp")
    return Path(tmp) / "mlx" / mx.__version__ / "cpu"


def _count(folder: Path) -> int:
    try:
        with os.scandir(folder) as entries:
            return sum(1 for _entry in entries)
    except OSError:
        return 0


class CompileWatch:
    """Polls the kernel cache while training; calls `on_compile(folder)` once, when new kernels appear."""

    def __init__(self, folder: Path | None, on_compile: Callable[[Path], None], interval: float = 0.5):
        self.folder, self.on_compile, self.interval = folder, on_compile, interval
        self.fired = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> CompileWatch:
        if self.folder is not None and os.environ.get("MLX_DISABLE_COMPILE") != "1":
            before = _count(self.folder)  # here, not in the thread: kernels written before it first runs count
            self._thread = threading.Thread(target=self._run, args=(before,), name="farense-compile-watch", daemon=True)
            self._thread.start()
        return self

    def _run(self, before: int) -> None:
        while not self._stop.wait(self.interval):
            if _count(self.folder) > before:
                self.fired = True
                self.on_compile(self.folder)
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)


def seconds_text(seconds: float) -> str:
    """`42 s`, `2 min 05 s`: a first step's length for a person."""
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"
