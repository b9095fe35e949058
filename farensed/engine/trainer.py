"""The resumable QLoRA training loop. Read top to bottom: prepare, decide where to start, restore, train, finish.

Exact resume rests on four rules (docs/ARCHITECTURE.md, "Exact resume"): restore every piece of state before building
the compiled step (engine/step.py); the data order is a pure function of (seed, epoch) (engine/batching.py);
dropout's RNG is re-seeded from (seed, step) before every micro-step; checkpoints are taken only at optimizer-update
boundaries. Collaborators come in as parameters, as in mlx-lm's `train()`: the `loss`, the batches
(`iterate_batches`) and the `callbacks` that report (console, metrics files, timings).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from farensed import EXIT_RESUMABLE
from farensed.analysis.gap import band
from farensed.analysis.metrics import MetricsLog
from farensed.engine import console, startup
from farensed.engine.adapters import adapter_config, save_adapters
from farensed.engine.batching import TrainBatches, validation_arrays
from farensed.engine.callbacks import Callbacks, ConsoleProgress, MetricsFiles, Timings
from farensed.engine.checkpoint import checkpoint_name, prune, write_checkpoint, write_run_state
from farensed.engine.continuation import plan
from farensed.engine.interrupt import StopRequest
from farensed.engine.loading import load_datasets
from farensed.engine.resume import agree_on_start
from farensed.engine.step import build_micro_step, place
from farensed.engine.stopping import EarlyStopping
from farensed.engine.summary import finish_run
from farensed.engine.timing import RunClock
from farensed.engine.validation import PendingValidation, Validation, background_possible, validation_split
from farensed.i18n import _
from farensed.models.hub import resolve_model
from farensed.spec.jobspec import JobSpec
from farensed.storage.atomic import atomic_write_json, read_json
from farensed.storage.workspace import Workspace


@dataclass
class Progress:
    """Counters that move with the loop and are saved in every checkpoint."""

    step: int = 0  # micro-steps done
    window_loss: float = 0.0  # train loss sum since the previous validation (for the gap)
    window_steps: int = 0
    group_loss: float = 0.0  # train loss sum since the previous metrics record
    group_steps: int = 0
    trained_tokens: int = 0
    elapsed_s: float = 0.0
    stop_reason: str | None = None


class Trainer:
    """One job's training run: `run()` returns 0 (finished) or EXIT_RESUMABLE (stopped on a signal)."""

    def __init__(self, spec: JobSpec, ws: Workspace, fresh=False, loss=None, iterate_batches=None, callbacks=()):
        self.spec, self.ws, self.fresh = spec, ws, fresh
        self.run_dir = ws.run_dir(spec.name)
        from farensed.engine.gguf import model_path  # a .gguf is imported once into <file>.mlx/

        # a folder, a Hub id's snapshot in the HF cache, or a .gguf file's import
        self.model_path = model_path(resolve_model(spec.model, ws), log=console.say)
        if loss is None:
            from mlx_lm.tuner.trainer import default_loss as loss  # mlx-lm's: full logits, completion tokens counted
        self.loss = loss
        self.iterate_batches = iterate_batches or TrainBatches
        self.extra_callbacks = list(callbacks)
        single = "MLX_RANK" not in os.environ
        self.stop = StopRequest(self.run_dir if single else None, single=single)
        self.pending = None  # a validation still running in the background (engine/validation.py)
        self.clock = RunClock()  # start-up, validation and checkpoint seconds of this process (timings.json)
        self.clock.mark("engine_ready")

    # ---- the run, top to bottom -----------------------------------------------------------------------
    def run(self) -> int:
        self._prepare()
        start, cont = self._decide_start()
        # loaded: from here a stop is honoured where the work can resume (an update boundary, the next evaluated
        # example of a finished run); before, it ended the process at once (farensed/signals.py)
        self.stop.loading_done()
        if start.resuming and start.state.get("finished") and not cont.reopen:
            console.say("\n" + _("Treino já terminado; nada a fazer."))
            return self.finish(start.state["progress"]["stop_reason"] or "completed", already=True)
        self.progress = self._restore(start)
        cont.apply(self.progress, self.stopper)
        self.clock.mark("restored")
        if check := getattr(self.loss, "check", None):  # a loss that picks its path on a real batch (trainloss.py)
            check(self.model, next(iter(self.batches.epoch(0)))[1])
        micro_step = build_micro_step(self.model, self.optimizer, self.loss, self.world, self.spec.grad_checkpoint)
        self.callbacks.on_train_begin(self, self.progress)
        self.model.train()  # dropout on (mlx-lm loads a model in eval mode)
        try:
            outcome = self._train(micro_step)
            self._settle()
        finally:
            self.validation.close()  # the validation thread, if any, ends with the training
        if outcome == EXIT_RESUMABLE:
            return EXIT_RESUMABLE
        self.callbacks.on_train_end(self.progress.stop_reason or "completed")
        return self.finish(self.progress.stop_reason or "completed")

    def _train(self, micro_step) -> int | None:
        """Epochs of micro-steps until the budget, an early stop or a stop request (then EXIT_RESUMABLE)."""
        progress, spec = self.progress, self.spec
        rank = self.world.rank if self.world.size > 1 else None
        grad, window = None, {"tokens": 0, "seconds": 0.0}  # the current accumulation group; this record's work
        while progress.step < self.total_steps and progress.stop_reason is None:
            epoch, start_index = divmod(progress.step, self.steps_per_epoch)
            self.callbacks.on_epoch_begin(epoch, start_index)
            for _index, batch in self.batches.epoch(epoch, start_index):
                where = place(progress.step, self.steps_per_epoch, spec.grad_accumulation, self.total_steps)
                tic = time.perf_counter()
                loss, toks, grad = micro_step(batch, grad, where, spec.seed, progress.step, rank)
                self._count(loss, toks, time.perf_counter() - tic, window)
                self._report(where, window)
                if self.stopper.stopped:
                    progress.stop_reason = "early_stopping"
                stop_now = where.boundary and self.world.any(self.stop.signum is not None)  # all ranks agree
                if self._checkpoint_due(where, stop_now):
                    finished = progress.stop_reason is not None or progress.step == self.total_steps
                    self.checkpoint(finished)
                    if stop_now and not finished:
                        self.callbacks.on_interrupt(self.stop.signum)
                        return EXIT_RESUMABLE
                if progress.stop_reason or where.last:
                    break
            self.callbacks.on_epoch_end()
        return None

    # ---- one micro-step's bookkeeping ----------------------------------------------------------------
    def _count(self, loss: float, toks: int, seconds: float, window: dict) -> None:
        """Losses for the gap window and the next record, tokens, time; then the step is done."""
        from farensed.engine.optim import clear_cache

        clear_cache(self.spec.clear_cache_threshold)
        p = self.progress
        p.step += 1
        p.window_loss, p.window_steps = p.window_loss + loss, p.window_steps + 1
        p.group_loss, p.group_steps = p.group_loss + loss, p.group_steps + 1
        p.trained_tokens += toks
        p.elapsed_s += seconds
        window["tokens"] += toks
        window["seconds"] += seconds
        self.callbacks.on_step_end(p.step, seconds)

    def _report(self, where, window: dict) -> None:
        """A metrics record at every optimizer update, with a validation every `eval_every` steps and at the end."""
        step = self.progress.step
        validating = step % self.spec.eval_every == 0 or step == self.total_steps
        if not (where.boundary or validating):
            return
        record = self._record(where.epoch, window["tokens"], window["seconds"])
        window.update(tokens=0, seconds=0.0)
        if validating:
            self._settle()  # one validation at a time
            self._validate(record, where)
        if self.pending is not None:  # held behind the validation still running: records leave in step order
            self.pending.records.append(record)
        else:
            self.callbacks.on_train_loss_report({"iteration": step, **record})

    def _record(self, epoch: int, tokens: int, seconds: float) -> dict:
        import mlx.core as mx

        p = self.progress
        record = {
            "step": p.step,
            "total_steps": self.total_steps,
            "epoch": epoch,
            "loss": p.group_loss / p.group_steps,
            "learning_rate": float(self.optimizer.learning_rate.item()),
            "trained_tokens": p.trained_tokens,
            "tokens_per_second": tokens / seconds if seconds else None,
            "peak_memory_gb": mx.get_peak_memory() / 1e9,
            "elapsed_s": p.elapsed_s,
        }
        p.group_loss, p.group_steps = 0.0, 0
        return record

    def _validate(self, record: dict, where) -> None:
        """val_loss at this step: in the background when it cannot stop the run early and no checkpoint follows at
        once (engine/validation.py), else now. The gap is against the train loss since the previous validation."""
        p, epoch = self.progress, where.epoch
        train_loss = p.window_loss / p.window_steps
        p.window_loss, p.window_steps = 0.0, 0
        params = self.model.trainable_parameters()  # this step's arrays: the steps that follow make new ones
        background = self.validation.can_background
        background = background and not self.stopper.could_stop_next() and not self._checkpoint_due(where, False)
        future = self.validation.start(params, background)
        self.pending = PendingValidation(future, record, epoch, train_loss, params, background)
        if not background:
            self._settle()

    def _settle(self) -> None:
        """Wait for the validation still running, if any; record it (best adapters from its own step's weights),
        then report the records held behind it."""
        from mlx.utils import tree_flatten

        pending, self.pending = self.pending, None
        if pending is None:
            return
        tic = time.perf_counter()
        val_loss, seconds, cpu = pending.future.result()
        waited = time.perf_counter() - tic if pending.background else seconds
        record, step, train_loss = pending.record, pending.record["step"], pending.train_loss
        gap = val_loss - train_loss
        record.update(val_loss=val_loss, train_loss=train_loss, gap=gap, band=band(gap))
        improved = self.stopper.update(val_loss, step, pending.epoch)
        if improved and self.world.is_main:
            weights = dict(tree_flatten(pending.params))
            save_adapters(self.run_dir / "adapters", weights, adapter_config(self.spec, self.model_path))
        info = {"iteration": step, "val_loss": val_loss, "train_loss": train_loss, "gap": gap, "band": band(gap)}
        timing = {"val_time": waited, "val_cpu_time": cpu, "background": pending.background}
        self.callbacks.on_val_loss_report({**info, "improved": improved, **timing})
        for held in pending.records:
            self.callbacks.on_train_loss_report({"iteration": held["step"], **held})

    def _checkpoint_due(self, where, stop_now: bool) -> bool:
        """At an early stop; at an update boundary every `save_every` steps, at each epoch's end, at a stop request
        and at the end of the budget."""
        if self.progress.stop_reason:
            return True
        epoch_end = where.index + 1 == self.steps_per_epoch
        return where.boundary and (
            self.progress.step % self.spec.save_every == 0 or epoch_end or stop_now or where.last
        )

    # ---- setup ---------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        """The world (ranks), the banner and device line, the model, the data and its batches, the optimizer."""
        from mlx_lm.utils import load_model

        from farensed.engine.distributed import World
        from farensed.engine.optim import apply_fine_tune_type, build_optimizer, set_wired_limit

        spec = self.spec
        self.world = World()
        set_wired_limit()
        console.say(console.banner(spec))
        console.say(startup.device_line())
        console.say("\n" + _("A carregar modelo e dados..."))
        console.say(_(console.LOADING_MODEL).format(model=spec.model))
        self.model, self.model_config = load_model(Path(self.model_path))  # the tokenizer only if tokens are needed
        self.clock.mark("model_loaded")
        self.train_set, self.valid_set, self.data_digests = load_datasets(
            spec, self.ws, self.model_path, self.model_config, self.clock
        )
        rank, size = self.world.rank, self.world.size
        self.batches = self.iterate_batches(self.train_set, spec, rank, size)
        if describe := getattr(self.batches, "banner_line", None):  # packing: the padding it saves
            console.say(describe())
        self.steps_per_epoch = self.batches.steps_per_epoch
        self.total_steps = spec.iters or self.steps_per_epoch * spec.epochs
        self.epochs_total = -(-self.total_steps // self.steps_per_epoch)
        automatic = spec.val_batch_size is None  # rows set by hand: as they are, in the foreground
        split = validation_split() if automatic else 1
        batches = validation_arrays(self.valid_set, spec, self.batches, rank, size, split)
        self.validation = Validation(self.model, batches, self.world, automatic and background_possible(size))
        apply_fine_tune_type(self.model, spec, self.ws, console.say)  # lora | dora | full (+ resume_adapter_file)
        self.optimizer = build_optimizer(spec)
        if self.world.is_main:
            console.say(startup.check_disk(self.run_dir, startup.trainable_bytes(self.model), spec.keep_checkpoints))

    def _decide_start(self):
        """Fresh, resumed or refused (rank 0 decides for all); the spec changes a resume accepts, recorded."""
        fingerprint = dict(self.spec.resume_fingerprint(), world_size=self.world.size)
        start = agree_on_start(self.world, self.run_dir, fingerprint, self.data_digests, self.fresh, console.say)
        cont = plan(self.spec, self.run_dir, start.state, self.total_steps, bool(self.spec.lr_schedule))
        for line in cont.lines:
            console.say(line)
        if self.world.is_main:
            atomic_write_json(self.run_dir / "spec.json", self.spec.to_dict())  # the accepted changes, recorded
        return start, cont

    def _restore(self, start) -> Progress:
        """Adapters, optimizer, counters, early stopping and metrics from a checkpoint (or fresh ones); then the
        optimizer is initialised and the reporting callbacks are made."""
        from mlx.utils import tree_unflatten

        es = self.spec.early_stopping
        self.stopper = EarlyStopping(es.patience if es else None, es.min_delta if es else 0.0)
        progress, records = Progress(), []
        if start.resuming:
            import mlx.core as mx

            path, state = start.checkpoint.path, start.state
            adapters, optimizer_state = self._checkpoint_tensors(path)
            self.model.load_weights(list(adapters.items()), strict=False)
            self.optimizer.state = tree_unflatten(list(optimizer_state.items()))
            mx.eval(self.model.parameters(), self.optimizer.state)
            progress = Progress(**state["progress"])
            self.stopper = EarlyStopping.from_dict(state["early_stopping"])
            records = read_json(path / "training_metrics.json") if self.world.is_main else []
            console.say(
                "\n"
                + _("↻ A retomar de {name} (step {step}/{total_steps})").format(
                    name=path.name, step=progress.step, total_steps=self.total_steps
                )
            )
        self.optimizer.init(self.model.trainable_parameters())
        self.metrics = MetricsLog(self.run_dir, records, write=self.world.is_main)
        self.metrics.reset_files()
        self.timings = Timings(self.clock, self.run_dir, write=self.world.is_main)
        self.callbacks = Callbacks([ConsoleProgress(), MetricsFiles(self.metrics), self.timings, *self.extra_callbacks])
        return progress

    def _checkpoint_tensors(self, path: Path) -> tuple[dict, dict]:
        """Adapters and optimizer state of a checkpoint; rank 0 reads them and broadcasts them."""
        import mlx.core as mx
        from mlx.utils import tree_flatten

        from farensed.engine.optim import build_optimizer

        if self.world.is_main:
            adapters = mx.load(str(path / "adapters.safetensors"))
            optimizer_state = mx.load(str(path / "optimizer.safetensors"))
        else:  # tensors of the right shapes, to receive rank 0's (other hosts have no checkpoint files)
            adapters = self._adapter_weights()
            scratch = build_optimizer(self.spec)
            scratch.init(self.model.trainable_parameters())
            optimizer_state = dict(tree_flatten(scratch.state))
        return self.world.broadcast_arrays(adapters), self.world.broadcast_arrays(optimizer_state)

    def _adapter_weights(self) -> dict:
        from mlx.utils import tree_flatten

        return dict(tree_flatten(self.model.trainable_parameters()))

    # ---- checkpoints and the end ---------------------------------------------------------------------
    def checkpoint(self, finished: bool) -> None:
        """Rank 0 writes checkpoint_epoch<E>_step<S>/ and the run's training_state.json. Everything a resume
        needs is listed here, in one place."""
        from mlx.utils import tree_flatten

        self._settle()  # a checkpoint holds every validation before it
        if not self.world.is_main:
            return
        tic, progress = time.perf_counter(), self.progress
        epoch = min(progress.step - 1, self.total_steps - 1) // self.steps_per_epoch
        state = {
            "name": self.spec.name,
            "step": progress.step,
            "epoch": epoch,
            "step_in_epoch": progress.step - epoch * self.steps_per_epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "seed": self.spec.seed,
            "rng": {"scheme": "seed-per-micro-step", "data_order": "numpy default_rng([seed, epoch])"},
            "progress": progress.__dict__,
            "early_stopping": self.stopper.to_dict(),
            "fingerprint": dict(self.spec.resume_fingerprint(), world_size=self.world.size),
            "data": self.data_digests,
            "metrics_records": len(self.metrics.records),
            "finished": finished,
        }
        self.metrics.flush()
        path = write_checkpoint(
            self.run_dir,
            checkpoint_name(epoch, progress.step),
            tensors={
                "adapters.safetensors": self._adapter_weights(),
                "optimizer.safetensors": dict(tree_flatten(self.optimizer.state)),
            },
            json_files={
                "adapter_config.json": adapter_config(self.spec, self.model_path),
                "training_metrics.json": self.metrics.records,
            },
            state=state,
        )
        write_run_state(self.run_dir, dict(state, checkpoint=path.name))
        prune(self.run_dir, self.spec.keep_checkpoints)
        self.callbacks.on_checkpoint(path, time.perf_counter() - tic)

    def finish(self, stop_reason: str, already: bool = False) -> int:
        """The test set, summary, plot and output/<name>/ (rank 0); the runner prints the final analysis."""
        if not self.world.is_main:
            return 0
        if self.spec.data.test:
            from farensed.engine.testset import evaluate_test_set

            evaluate_test_set(self)
        seconds = [] if already else self.timings.checkpoints
        finish_run(
            self.ws, self.spec.name, self.run_dir, stop_reason, self.total_steps, seconds, announce_best=not already
        )
        return 0
