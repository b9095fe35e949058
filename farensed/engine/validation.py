"""The validation of a run: the token-weighted val_loss over fixed batches, on the core a CPU leaves idle.

MLX's CPU kernels use one core each (measured here: a forward pass costs the same per token at any batch size, and
two threads evaluate 1.9x faster than one), so where MLX computes on the CPU a validation that cannot stop the run
early runs *in the background*, on a thread of its own, while training goes on. The trainer settles it (waits for
its number, then reports it and the records held behind it) before the next validation, a checkpoint and the end.
It validates a twin of the model (its own modules, the same arrays) set to the adapters of its step: what follows
cannot change what it measures, and no number depends on when it ended. One thread for the run: MLX keeps compiled
functions per thread, so a thread per validation would compile the forward pass again each time.
On a GPU, which runs each batch on all of itself, and with several ranks (whose collectives run in one order),
every validation runs in the foreground, as one always does when it may stop the run.
"""

from __future__ import annotations

import atexit
import copy
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from farensed.engine import console
from farensed.engine.valloss import ValidationLoss
from farensed.i18n import _
from farensed.storage.procs import usable_cores

CPU_SPLIT = 2  # on a CPU the automatic validation batch is this much smaller: it sits beside a training step
PROGRESS_EVERY_S = 60.0  # a foreground validation longer than this says how far it is


def _on_cpu() -> bool:
    import mlx.core as mx

    return mx.default_device().type == mx.DeviceType.cpu


def validation_split() -> int:
    """By how much the automatic validation batch budget is divided: CPU_SPLIT on a CPU (a background validation's
    batch is in memory beside a training step's), one on a GPU. The device decides, never the cores, so val_loss is
    the same on any CPU."""
    return CPU_SPLIT if _on_cpu() else 1


def background_possible(world_size: int = 1) -> bool:
    """Whether validations may run beside training: on a CPU with a core to spare, one rank."""
    return _on_cpu() and world_size == 1 and usable_cores() >= 2


def twin(module):
    """A module tree of its own holding the same arrays: updated or put in eval mode, it leaves `module` as it is."""
    import mlx.nn as nn

    def copied(value):
        if isinstance(value, nn.Module):
            return twin(value)
        if isinstance(value, list):
            return [copied(v) for v in value]
        if isinstance(value, tuple):
            return tuple(copied(v) for v in value)
        if isinstance(value, dict):
            return {k: copied(v) for k, v in value.items()}
        return value  # an array: shared, never copied

    other = copy.copy(module)
    other.__dict__.update({k: copy.copy(v) for k, v in vars(module).items() if isinstance(v, (set, list, dict))})
    for key, value in module.items():
        other[key] = copied(value)
    return other


@dataclass
class PendingValidation:
    """A validation started at a step and not yet recorded: its result to come, the step's record, epoch and train
    loss, the adapters it measures, whether it runs in the background, and the records made meanwhile."""

    future: Future
    record: dict
    epoch: int
    train_loss: float
    params: dict
    background: bool
    records: list = field(default_factory=list)


class Closed(Exception):
    """A background validation given up: the run ended first (an error or an exit)."""


class ValidationThread:
    """The one thread that runs background validations for the run. Before it ends it destroys the streams MLX made
    for it (left alive, they can abort the process at exit: mlx.core.clear_streams)."""

    def __init__(self):
        self.tasks: queue.SimpleQueue = queue.SimpleQueue()
        self.closing = False
        self.thread = threading.Thread(target=self._run, name="farense-validation", daemon=True)
        self.thread.start()
        atexit.register(self.close)  # an exit that skipped close(): still joined before MLX is torn down

    def submit(self, task) -> Future:
        future: Future = Future()
        self.tasks.put((task, future))
        return future

    def _run(self) -> None:
        import mlx.core as mx

        try:
            while (item := self.tasks.get()) is not None:
                task, future = item
                try:
                    future.set_result(task())
                except BaseException as exc:  # noqa: BLE001 - the trainer meets it when it settles
                    future.set_exception(exc)
        finally:
            mx.clear_streams()

    def close(self) -> None:
        """Give up a validation still running (at its next batch) and end the thread."""
        self.closing = True
        self.tasks.put(None)
        self.thread.join()
        atexit.unregister(self.close)


class Validation:
    """The validation loss over fixed batches: the token-weighted mean over every batch (and every rank). No
    randomness is involved; the twin and its compiled loss are made at the first validation (after the adapters are
    in place). `background`: validations may run beside training (engine/validation.py)."""

    def __init__(self, model, batches: list, world, background: bool = False):
        self.model, self.batches, self.world = model, batches, world
        self.loss, self.twin, self.thread = None, None, None
        self.can_background = background and len(batches) > 1 and world.size == 1

    def __call__(self) -> float:
        """The val_loss of the model as it is now."""
        return self.start(self.model.trainable_parameters(), background=False).result()[0]

    def start(self, params, background: bool) -> Future:
        """(val_loss, seconds, CPU seconds or None) of the model with these trainable parameters: computed now, or
        on the validation thread while the caller goes on. One at a time: the caller settles the previous first."""
        import mlx.core as mx
        from mlx.utils import tree_map

        if self.twin is None:
            self.twin = twin(self.model)
            self.twin.eval()  # no dropout; the model itself stays in its mode
            self.loss = ValidationLoss(self.twin, self.batches)
        self.twin.update(params)
        placeholder = mx.array(0.0)
        released = tree_map(lambda _: placeholder, params)

        def validate(cpu_clock):
            tic, cpu = time.perf_counter(), cpu_clock() if cpu_clock else 0.0
            try:
                val_loss = self._mean(foreground=cpu_clock is not None)
            finally:  # the twin lets go of this step's arrays (with full fine-tuning, a copy of the model)
                self.twin.update(released)
            return val_loss, time.perf_counter() - tic, cpu_clock() - cpu if cpu_clock else None

        if background:  # the caller asks only where can_background
            self.thread = self.thread or ValidationThread()
            return self.thread.submit(lambda: validate(None))  # MLX computes on its own threads: no CPU clock
        done: Future = Future()
        done.set_result(validate(time.process_time))
        return done

    def _mean(self, foreground: bool = False) -> float:
        """The mean; a long one in the foreground says how far it is each minute (training is silent meanwhile:
        the log shows it alive, to a person and to the daemon's stall watch)."""
        import mlx.core as mx

        total, ntoks = mx.array(0.0), mx.array(0.0)
        said = time.monotonic()
        for i, batch in enumerate(self.batches):
            if self.thread is not None and self.thread.closing:
                raise Closed
            loss_sum, toks = self.loss(i, *batch)
            total, ntoks = total + loss_sum, ntoks + toks
            mx.eval(total, ntoks)
            if foreground and self.world.is_main and time.monotonic() - said >= PROGRESS_EVERY_S:
                said = time.monotonic()
                console.say("  " + _("… validação: {done}/{total} lotes").format(done=i + 1, total=len(self.batches)))
        total, ntoks = self.world.all_sum(mx.stack([total, ntoks]))
        return (total / ntoks).item()

    def close(self) -> None:
        """End the validation thread (the run is over)."""
        if self.thread is not None:
            self.thread.close()
            self.thread = None
