"""What the training loop reports, and to whom: the console and its progress bar, the metrics files, the timings.

The loop calls every callback at the same moments; none of them changes training. mlx-lm's two hooks keep their
names and meaning (`on_train_loss_report`, `on_val_loss_report`, each with a dict holding `iteration`), so an
mlx-lm reporting callback (W&B, SwanLab) plugs in beside farense's own.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from farensed.analysis.metrics import MetricsLog
from farensed.engine import console
from farensed.i18n import _


class TrainingCallback:
    """Every hook the loop calls; each does nothing unless overridden."""

    def on_train_begin(self, trainer, progress) -> None: ...

    def on_epoch_begin(self, epoch: int, start_index: int) -> None: ...

    def on_step_end(self, step: int, seconds: float) -> None: ...

    def on_train_loss_report(self, info: dict) -> None: ...

    def on_val_loss_report(self, info: dict) -> None: ...

    def on_checkpoint(self, path: Path, seconds: float) -> None: ...

    def on_epoch_end(self) -> None: ...

    def on_interrupt(self, signum: int) -> None: ...

    def on_train_end(self, stop_reason: str) -> None: ...


class Callbacks(TrainingCallback):
    """Several callbacks called in order, as one (a callback may implement only some hooks, as mlx-lm's do)."""

    def __init__(self, callbacks: list):
        self.callbacks = list(callbacks)

    def _each(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            if method := getattr(callback, hook, None):
                method(*args)

    def on_train_begin(self, trainer, progress) -> None:
        self._each("on_train_begin", trainer, progress)

    def on_epoch_begin(self, epoch: int, start_index: int) -> None:
        self._each("on_epoch_begin", epoch, start_index)

    def on_step_end(self, step: int, seconds: float) -> None:
        self._each("on_step_end", step, seconds)

    def on_train_loss_report(self, info: dict) -> None:
        self._each("on_train_loss_report", info)

    def on_val_loss_report(self, info: dict) -> None:
        self._each("on_val_loss_report", info)

    def on_checkpoint(self, path: Path, seconds: float) -> None:
        self._each("on_checkpoint", path, seconds)

    def on_epoch_end(self) -> None:
        self._each("on_epoch_end")

    def on_interrupt(self, signum: int) -> None:
        self._each("on_interrupt", signum)

    def on_train_end(self, stop_reason: str) -> None:
        self._each("on_train_end", stop_reason)


class ConsoleProgress(TrainingCallback):
    """The seed's console: epoch headers, the tqdm bar (its clock restarted after the compile), validation blocks,
    checkpoint lines, and how an interrupted run comes back. MLX's one-time kernel compile is said while it happens
    (engine/jit.py) and kept out of the bar's rate and ETA."""

    def __init__(self):
        self.bar = None
        self.compiled = False  # this process's first step holds the JIT compile: kept out of the ETA
        self.watch = None

    def on_train_begin(self, trainer, progress) -> None:
        from farensed.engine.jit import CompileWatch, cpu_cache_dir

        self.trainer = trainer
        console.say(console.heading(_("INICIANDO TREINO - {name}").format(name=trainer.spec.name)))
        self.watch = CompileWatch(cpu_cache_dir(), lambda folder: console.say(console.compiling(folder))).start()
        self.first_tic = time.monotonic()

    def on_epoch_begin(self, epoch: int, start_index: int) -> None:
        from tqdm import tqdm

        console.say(console.epoch_header(epoch, self.trainer.epochs_total))
        per_epoch = self.trainer.batches.steps_per_epoch
        left = getattr(self.trainer, "total_steps", per_epoch * (epoch + 1)) - epoch * per_epoch
        self.bar = tqdm(
            total=min(per_epoch, left),  # `iters` may end the run inside this epoch: the bar ends there too
            initial=start_index,
            desc=_("Treino"),
            unit="batch",
            mininterval=0.5 if os.isatty(1) else 10,
            file=sys.stdout,
        )

    def on_step_end(self, step: int, seconds: float) -> None:
        if self.compiled:
            self.bar.update(1)
            return
        self.bar.n += 1  # not update(): it would draw a rate and an ETA measured on the compile
        console.restart_clock(self.bar)
        self.compiled = True
        if self.watch is not None and self.watch.fired:
            console.say(console.compiled(time.monotonic() - self.first_tic))

    def on_train_loss_report(self, info: dict) -> None:
        self.bar.set_postfix(loss=f"{info['loss']:.4f}")

    def on_val_loss_report(self, info: dict) -> None:
        console.say(
            console.validation_block(
                info["iteration"], info["val_loss"], info["gap"], info["band"], info["improved"], self.trainer.stopper
            )
        )

    def on_checkpoint(self, path: Path, seconds: float) -> None:
        console.say("\n" + _("✓ Checkpoint guardado em: {path}").format(path=path.relative_to(self.trainer.ws.root)))

    def on_epoch_end(self) -> None:
        self._close()

    def on_interrupt(self, signum: int) -> None:
        self._close(end=True)
        console.say(console.interrupted(signum))

    def on_train_end(self, stop_reason: str) -> None:
        self._close(end=True)
        if stop_reason == "early_stopping":
            console.say(console.early_stop_block(self.trainer.stopper))

    def _close(self, end: bool = False) -> None:
        if end and self.watch is not None:
            self.watch.stop()
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class MetricsFiles(TrainingCallback):
    """training_metrics.json / .jsonl / .csv: one record per optimizer update and per validation (rank 0 writes)."""

    def __init__(self, log: MetricsLog):
        self.log = log

    def on_train_loss_report(self, info: dict) -> None:
        record = {k: v for k, v in info.items() if k != "iteration"}
        self.log.append(record, force_flush="val_loss" in record)


class Timings(TrainingCallback):
    """timings.json: this process's start-up (to its first step), validation and checkpoint seconds."""

    def __init__(self, clock, run_dir: Path, write: bool):
        self.clock, self.run_dir, self.write = clock, run_dir, write
        self.checkpoints: list[float] = []  # this process's checkpoint writes (bench/ reads them)

    def on_step_end(self, step: int, seconds: float) -> None:
        if "first_step" in self.clock.marks:
            return
        self.clock.mark("first_step", resumed=step > 1, from_step=step - 1)
        if self.write:
            self.clock.write(self.run_dir)
            from farensed.analysis.plots import prefetch

            prefetch()  # the plot at the end of the run then starts at once

    def on_val_loss_report(self, info: dict) -> None:
        self.clock.add("validation", info["val_time"], info["val_cpu_time"])
        self.clock.counts["validation_background"] += bool(info.get("background"))

    def on_checkpoint(self, path: Path, seconds: float) -> None:
        self.checkpoints.append(seconds)

    def on_interrupt(self, signum: int) -> None:
        self.finish()

    def on_train_end(self, stop_reason: str) -> None:
        self.finish()

    def finish(self) -> None:
        """This process's time per activity, at its end (nothing when it trained no step)."""
        if "first_step" in self.clock.marks and self.write:
            self.clock.mark("loop_end")
            self.clock.seconds["checkpoint"] = sum(self.checkpoints)
            self.clock.counts["checkpoint"] = len(self.checkpoints)
            self.clock.write(self.run_dir)
