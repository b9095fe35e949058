"""`report_to`: the run's metrics sent where `mlx_lm lora --report-to` sends them (Weights & Biases), by mlx-lm's
own reporting callback, fed by the trainer's hooks of the same names.

One W&B run per farense run: its id is kept in the run folder (`report_to.json`), and every process that trains
the run (a resume after a kill, a pause, a reboot) continues it (`resume="allow"`). A resumed process starts again
from its checkpoint, before the last step the W&B run holds: those records are the same numbers (resume is exact)
and are not sent twice. wandb is an optional extra (`pip install 'farense[wandb]'`); `WANDB_MODE=offline` writes
the run locally, under the run folder's `wandb/`.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from farensed.engine.callbacks import TrainingCallback
from farensed.spec.options import check_report_installed
from farensed.storage.atomic import atomic_write_json, read_json

ID_FILE = "report_to.json"


def run_id(run_dir: Path) -> str:
    """The W&B run id of this farense run, made once and kept in the run folder (a --fresh run gets a new one)."""
    path = Path(run_dir) / ID_FILE
    try:
        found = read_json(path).get("wandb_id")
    except (OSError, ValueError, AttributeError):
        found = None
    if isinstance(found, str) and found.isalnum():
        return found
    new = secrets.token_hex(4)
    atomic_write_json(path, {"wandb_id": new})
    return new


class Reporting(TrainingCallback):
    """mlx-lm's reporting callbacks (`mlx_lm.tuner.callbacks.get_reporting_callbacks`) behind farense's hooks; made
    when training begins, on the process that writes the run (rank 0)."""

    def __init__(self, spec, run_dir: Path):
        self.spec, self.run_dir = spec, Path(run_dir)
        self.callback = None
        self.first_step = 0  # records before it are already in the W&B run

    def on_train_begin(self, trainer, progress) -> None:
        from mlx_lm.tuner.callbacks import get_reporting_callbacks

        check_report_installed(self.spec.report_to, "spec")
        saved = {k: os.environ.get(k) for k in ("WANDB_RUN_ID", "WANDB_RESUME")}
        os.environ["WANDB_RUN_ID"], os.environ["WANDB_RESUME"] = run_id(self.run_dir), "allow"
        try:  # mlx-lm's callback calls wandb.init(project, name, dir, config); the id comes from the environment
            self.callback = get_reporting_callbacks(
                self.spec.report_to,
                project_name=self.spec.project_name,
                log_dir=str(self.run_dir),
                config=self.spec.to_dict(),
            )
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        import wandb

        self.first_step = wandb.run.step if wandb.run is not None else 0

    def _send(self, hook: str, info: dict) -> None:
        if self.callback is not None and info.get("iteration", 0) >= self.first_step:
            getattr(self.callback, hook)(info)

    def on_train_loss_report(self, info: dict) -> None:
        self._send("on_train_loss_report", info)

    def on_val_loss_report(self, info: dict) -> None:
        self._send("on_val_loss_report", info)

    def on_interrupt(self, signum: int) -> None:
        self._finish()

    def on_train_end(self, stop_reason: str) -> None:
        self._finish()

    def _finish(self) -> None:
        if self.callback is not None:
            import wandb

            wandb.finish()  # everything sent (or written, offline) before the process ends
            self.callback = None


def reporting_callbacks(spec, run_dir: Path, is_main: bool) -> list:
    """The spec's `report_to` destinations as trainer callbacks (none on other ranks, none without the key)."""
    return [Reporting(spec, run_dir)] if spec.report_to and is_main else []
