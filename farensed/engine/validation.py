"""The validation of a run: the token-weighted val_loss over fixed batches, using the cores a CPU leaves idle.

MLX's CPU kernels use one core each (measured here: a forward pass costs the same per token at any batch size, and
two threads evaluate 1.9x faster than one), so where MLX computes on the CPU:
- the batches of a validation (half the automatic size) are evaluated by two threads at once, and their sums
  added in batch order: the same number as one thread;
- a validation that cannot stop the run early runs *in the background* on one thread while training goes on, and
  the trainer settles it (waits for its number, then reports it and the records held behind it) before the next
  validation, a checkpoint and the end. It validates a twin of the model (its own modules, the same arrays) set to
  the adapters of its step: what follows cannot change what it measures, and no number depends on when it ended.
On a GPU, which runs each batch on all of itself, and with several ranks (whose collectives run in one order),
validation runs on the calling thread.
"""

from __future__ import annotations

import copy
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

from farensed.engine.valloss import ValidationLoss

CPU_THREADS = 2  # on a CPU: validation batches of half the automatic size, evaluated by two threads


def _on_cpu() -> bool:
    import mlx.core as mx

    return mx.default_device().type == mx.DeviceType.cpu


def validation_split() -> int:
    """Validation batches evaluated at once, by which the automatic batch budget is divided: CPU_THREADS on a CPU,
    one on a GPU. It depends on the device only, never on the cores, so val_loss is the same on any CPU."""
    return CPU_THREADS if _on_cpu() else 1


def validation_workers(world_size: int = 1) -> int:
    """Threads that validate: CPU_THREADS on a CPU with that many cores and one rank, else one."""
    if not _on_cpu() or world_size > 1:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    return max(1, min(cores, CPU_THREADS))


def twin(module):
    """A module tree of its own holding the same arrays: updated or put in eval mode, it leaves `module` as it is."""
    import mlx.nn as nn

    def copied(value):
        if isinstance(value, nn.Module):
            return twin(value)
        if isinstance(value, (list, tuple)):
            return type(value)(copied(v) for v in value)
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


def mlx_thread(target, name: str) -> threading.Thread:
    """A started thread that runs target() with MLX, then destroys the streams MLX made for it (left alive, they can
    abort the process at exit: mlx.core.clear_streams). Not a daemon: an exit waits for its batch, never cuts it."""
    import mlx.core as mx

    def run():
        try:
            target()
        finally:
            mx.clear_streams()

    thread = threading.Thread(target=run, name=name)
    thread.start()
    return thread


class Validation:
    """The validation loss over fixed batches: the token-weighted mean over every batch (and every rank). No
    randomness is involved; the twin and its compiled loss are made at the first validation (after the adapters are
    in place). `workers` > 1: that many threads, and validations may run in the background."""

    def __init__(self, model, batches: list, world, workers: int = 1):
        self.model, self.batches, self.world, self.workers = model, batches, world, workers
        self.loss, self.twin = None, None
        self.can_background = workers > 1 and len(batches) > 1 and world.size == 1

    def __call__(self) -> float:
        """The val_loss of the model as it is now."""
        return self.start(self.model.trainable_parameters(), background=False).result()[0]

    def start(self, params, background: bool) -> Future:
        """(val_loss, seconds, CPU seconds) of the model with these trainable parameters: computed now, or on a
        validation thread while the caller goes on. One at a time: the caller settles the previous one first."""
        if self.twin is None:
            self.twin = twin(self.model)
            self.twin.eval()  # no dropout; the model itself stays in its mode
            self.loss = ValidationLoss(self.twin, self.batches)
        self.twin.update(params)
        future: Future = Future()
        if background and self.can_background:

            def validate():
                try:
                    future.set_result(self._timed(self._one_thread, time.thread_time))
                except BaseException as exc:  # noqa: BLE001 - the trainer meets it when it settles
                    future.set_exception(exc)

            mlx_thread(validate, "farense-validation")
        else:
            future.set_result(self._timed(self._all_threads, time.process_time))
        return future

    def _timed(self, sums, cpu_clock) -> tuple[float, float, float]:
        tic, cpu = time.perf_counter(), cpu_clock()
        return self._mean(sums()), time.perf_counter() - tic, cpu_clock() - cpu

    def _one_thread(self) -> list:
        return [self._batch(i) for i in range(len(self.batches))]

    def _all_threads(self) -> list:
        """(loss sum, tokens) of every batch, in order, this thread and `workers` - 1 others taking the next batch
        left. The first batch with a counted position runs here first: it compiles the loss and checks its shortcut
        before any other thread uses it."""
        n = len(self.batches)
        first = next((i for i in range(n) if self.loss.index[i].size), 0)
        done = {first: self._batch(first)} if n else {}
        todo: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(n):
            if i != first:
                todo.put(i)
        failed: list = []

        def work():
            while not failed:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    done[i] = self._batch(i)
                except BaseException as exc:  # noqa: BLE001 - raised below, on the caller's thread
                    failed.append(exc)

        helpers = [mlx_thread(work, "farense-validation") for _ in range(min(self.workers, n) - 1)]
        try:
            work()
        except BaseException as exc:  # a stop on this thread: the others finish their batch and take no other
            failed.append(exc)
            raise
        finally:
            for thread in helpers:
                thread.join()
        if failed:
            raise failed[0]
        return [done[i] for i in range(n)]

    def _batch(self, i: int) -> tuple:
        import mlx.core as mx

        loss_sum, toks = self.loss(i, *self.batches[i])
        mx.eval(loss_sum, toks)
        return loss_sum, toks

    def _mean(self, sums: list) -> float:
        import mlx.core as mx

        total, ntoks = mx.array(0.0), mx.array(0.0)
        for loss_sum, toks in sums:  # in batch order, whichever thread computed each
            total, ntoks = total + loss_sum, ntoks + toks
        total, ntoks = self.world.all_sum(mx.stack([total, ntoks]))
        return (total / ntoks).item()
