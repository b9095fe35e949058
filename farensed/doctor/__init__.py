"""`farensectl doctor [SPEC]`: the seed's pre-training checklist as checks, each with how to fix what fails.

Machine: Python and packages, the MLX device (probed in a subprocess: this process never imports mlx), free disk
where checkpoints go, the farensed service, sleep settings, memory pressure, the Hugging Face cache. With a SPEC:
the spec, model folder, tokenizer, data files and their formats, steps, and estimates of memory per step and run
time from an earlier run with the same model and max_seq_length.
"""

from __future__ import annotations

from pathlib import Path

from farensed.doctor.check import FAIL, ICONS, INFO, OK, WARN, Check, format_check, summary
from farensed.doctor.machine import machine_checks, probe_mlx
from farensed.doctor.runspec import spec_checks
from farensed.storage.workspace import Workspace

__all__ = ["FAIL", "ICONS", "INFO", "OK", "WARN", "Check", "format_check", "run_checks", "summary"]


def run_checks(ws: Workspace, spec_path: Path | None = None, probe: dict | None = None) -> list[Check]:
    """Every check, the machine's first, then the spec's (when given)."""
    probe = probe if probe is not None else probe_mlx()
    checks = machine_checks(ws, probe)
    if spec_path is not None:
        checks += spec_checks(ws, Path(spec_path), probe)
    return checks
