"""The resumable QLoRA training loop. Read top to bottom: setup, restore, loop, finish.

Exact resume rests on four rules (docs/ARCHITECTURE.md, "Exact resume"): restore every piece of state before building the compiled
step; the data order is a pure function of (seed, epoch); dropout's RNG is re-seeded from (seed, step) before
every micro-step; checkpoints are taken only at optimizer-update boundaries.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path

import numpy as np

from farensed import EXIT_RESUMABLE
from farensed.analysis.gap import band
from farensed.analysis.metrics import MetricsLog
from farensed.engine import console, startup
from farensed.engine.adapters import adapter_config, save_adapters
from farensed.engine.checkpoint import checkpoint_name, prune, write_checkpoint, write_run_state
from farensed.engine.continuation import plan
from farensed.engine.data import (
    VAL_TOKEN_FACTOR,
    TokenizedSet,
    collate,
    epoch_order,
    length_sorted_batches,
    padded_width,
    tokenize_file,
    validation_batches,
)
from farensed.engine.resume import find_start
from farensed.engine.stopping import EarlyStopping
from farensed.engine.summary import finish_run
from farensed.engine.timing import RunClock
from farensed.engine.tokcache import CACHE_DIR, TokenCache
from farensed.engine.valloss import ValidationLoss
from farensed.i18n import _
from farensed.models.hub import resolve_model
from farensed.spec.jobspec import JobSpec
from farensed.storage.atomic import atomic_write_json
from farensed.storage.digest import sha256_file
from farensed.storage.workspace import Workspace


def step_seed(seed: int, step: int, rank: int | None = None) -> int:
    """The RNG seed of one micro-step (dropout masks), independent of how the run was interrupted."""
    entropy = [seed, step] if rank is None else [seed, step, rank]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop finishes the current optimizer update and checkpoints.

    A second SIGINT (Ctrl-C) in a single-process run stops at once (farensed.engine.interrupt).
    """

    def __init__(self, run_dir: Path | None = None):
        self.signum = None
        self.run_dir = run_dir
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        from farensed.engine import interrupt

        if signum == signal.SIGINT and self.run_dir is not None:
            if self.signum is not None:
                interrupt.stop_now(self.run_dir)
            print(interrupt.first_interrupt_line(), file=sys.stderr, flush=True)
        self.signum = signum


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

    def __init__(self, spec: JobSpec, ws: Workspace, fresh: bool = False):
        self.spec, self.ws = spec, ws
        self.run_dir = ws.run_dir(spec.name)
        from farensed.engine.gguf import model_path  # a .gguf is imported once into <file>.mlx/

        # a folder, a Hub id's snapshot in the HF cache, or a .gguf file's import
        self.model_path = model_path(resolve_model(spec.model, ws), log=console.say)
        self.fresh = fresh
        self.stop = StopRequest(None if "MLX_RANK" in os.environ else self.run_dir)
        self.checkpoint_seconds: list[float] = []  # this process's checkpoint writes (for bench/)
        self.world = None  # set in run(): this rank's place in a distributed job (size 1 otherwise)
        self.clock = RunClock()  # start-up, validation and checkpoint seconds of this process (timings.json)
        self.clock.mark("engine_ready")
        self._val_loss = None  # the compiled forward-only loss (engine/valloss.py), built at the first validation

    # ---- setup -------------------------------------------------------------------------------------------
    def _load(self) -> None:
        from mlx_lm.utils import load_model

        from farensed.engine.optim import apply_fine_tune_type, build_optimizer

        spec = self.spec
        console.say(_("\nA carregar modelo e dados..."))
        console.say(_(console.LOADING_MODEL).format(model=spec.model))
        self.model, self.model_config = load_model(Path(self.model_path))  # the tokenizer only if tokens are needed
        self.clock.mark("model_loaded")
        console.say(_("\nA carregar datasets..."))
        train_path, valid_path = self.ws.resolve(spec.data.train), self.ws.resolve(spec.data.valid)
        self.data_digests = {"train": sha256_file(train_path), "valid": sha256_file(valid_path)}
        console.say(_("\nA tokenizar..."))
        cache = TokenCache(self.ws.root / "checkpoints_qlora" / CACHE_DIR, self.model_path, self._token_settings())
        self.train_set, hit_train = cache.get(
            self.data_digests["train"],
            lambda: tokenize_file(train_path, self.tokenizer, spec.max_seq_length, spec.mask_prompt),
        )
        self.valid_set, hit_valid = cache.get(
            self.data_digests["valid"],
            lambda: tokenize_file(valid_path, self.tokenizer, spec.max_seq_length, spec.mask_prompt),
        )
        self.clock.mark("tokens_ready", tokens_cached=hit_train and hit_valid)
        if hit_train and hit_valid:
            console.say(_("Tokens em cache (checkpoints_qlora/.tokens): tokenização saltada"))
        console.say(_("Amostras de treino: {count}").format(count=len(self.train_set)))
        console.say(_("Amostras de validação: {count}").format(count=len(self.valid_set)))
        console.say(_("✅ Tokens de treino: {count}").format(count=sum(map(len, self.train_set.tokens))))
        console.say(_("✅ Tokens de validação: {count}").format(count=sum(map(len, self.valid_set.tokens))))
        truncated = self.train_set.truncated + self.valid_set.truncated
        if truncated:
            console.say(
                _("⚠  {truncated} exemplos mais longos que max_seq_length={max_seq_length} foram truncados").format(
                    truncated=truncated, max_seq_length=spec.max_seq_length
                )
            )
        self._make_batches()
        apply_fine_tune_type(self.model, spec, self.ws, console.say)  # lora | dora | full (+ resume_adapter_file)
        self.optimizer = build_optimizer(spec)

    @cached_property
    def tokenizer(self):
        """mlx-lm's tokenizer, loaded on first use: a start-up with every token cached never needs it."""
        from mlx_lm.utils import load_tokenizer

        return load_tokenizer(Path(self.model_path), eos_token_ids=self.model_config.get("eos_token_id"))

    def _token_settings(self) -> dict:
        """The spec's settings that change the tokens (part of the token cache's key)."""
        return {"max_seq_length": self.spec.max_seq_length, "mask_prompt": getattr(self.spec, "mask_prompt", True)}

    def _make_batches(self) -> None:
        """Batches are fixed (only their order changes per epoch): pad and convert each once.

        Validation batches are forward-only and larger (engine/data.py: validation_batches), over the same fixed
        subset. Distributed: each rank takes its rows of every global batch and its share of the validation batches.
        """
        spec, rank, size = self.spec, self.world.rank, self.world.size
        train_batches = length_sorted_batches(self.train_set, spec.batch_size, drop_last=True)
        n_valid = len(self.valid_set) if spec.val_samples is None else min(spec.val_samples, len(self.valid_set))
        chosen = list(range(n_valid))
        if spec.val_batches and spec.val_batches > 0:
            # mlx-lm's `val_batches` N: its first N length-sorted batches of batch_size, the shortest N x batch_size
            chosen = sorted(chosen, key=lambda i: (len(self.valid_set.tokens[i]), i))[
                : spec.val_batches * spec.batch_size
            ]
            chosen.sort()
        checkpointed = getattr(spec, "grad_checkpoint", False)  # saves less in training: no more tokens than it
        longest = max(
            padded_width(max(len(self.train_set.tokens[i]) for i in b), spec.max_seq_length) for b in train_batches
        )
        valid_subset = TokenizedSet(
            [self.valid_set.tokens[i] for i in chosen], [self.valid_set.offsets[i] for i in chosen], 0
        )
        valid_batches = validation_batches(
            valid_subset,
            spec.max_seq_length,
            spec.val_batch_size,
            token_budget=len(train_batches[0][rank::size]) * longest * (1 if checkpointed else VAL_TOKEN_FACTOR),
        )
        self.steps_per_epoch = len(train_batches)
        self.total_steps = spec.iters or self.steps_per_epoch * spec.epochs
        self.epochs_total = -(-self.total_steps // self.steps_per_epoch)
        self.train_arrays = [collate(self.train_set, b[rank::size], spec.max_seq_length) for b in train_batches]
        self.valid_arrays = [
            collate(valid_subset, b, spec.max_seq_length) for i, b in enumerate(valid_batches) if i % size == rank
        ]

    def _restore(self, start) -> tuple[Progress, EarlyStopping, MetricsLog]:
        """Adapters, optimizer, counters, early stopping and metrics from a checkpoint (or fresh ones)."""
        import mlx.core as mx
        from mlx.utils import tree_unflatten

        es = self.spec.early_stopping
        stopper = EarlyStopping(es.patience if es else None, es.min_delta if es else 0.0)
        progress, records = Progress(), []
        if start.resuming:
            path, state = start.checkpoint.path, start.state
            adapters, optimizer_state = self._checkpoint_tensors(path)
            self.model.load_weights(list(adapters.items()), strict=False)
            self.optimizer.state = tree_unflatten(list(optimizer_state.items()))
            mx.eval(self.model.parameters(), self.optimizer.state)
            progress = Progress(**state["progress"])
            stopper = EarlyStopping.from_dict(state["early_stopping"])
            from farensed.storage.atomic import read_json

            records = read_json(path / "training_metrics.json") if self.world.is_main else []
            console.say(
                _("\n↻ A retomar de {name} (step {step}/{total_steps})").format(
                    name=path.name, step=progress.step, total_steps=self.total_steps
                )
            )
        self.optimizer.init(self.model.trainable_parameters())
        metrics = MetricsLog(self.run_dir, records, write=self.world.is_main)
        metrics.reset_files()
        return progress, stopper, metrics

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

    def _compile_step(self):
        """The compiled micro-step, built after every piece of state has been restored."""
        import mlx.core as mx
        import mlx.nn as nn
        from mlx.nn.utils import average_gradients
        from mlx.utils import tree_map
        from mlx_lm.tuner.trainer import default_loss

        model, optimizer = self.model, self.optimizer
        if self.spec.grad_checkpoint:
            from farensed.engine.optim import enable_grad_checkpoint

            enable_grad_checkpoint(model)
        loss_and_grad = nn.value_and_grad(model, default_loss)
        self.state = [model.state, optimizer.state, mx.random.state]

        @partial(mx.compile, inputs=self.state, outputs=self.state)
        def micro_step(batch, lengths, prev_grad, do_update, micro_steps):
            (loss, toks), grad = loss_and_grad(model, batch, lengths)
            if prev_grad is not None:
                grad = tree_map(lambda x, y: x + y, grad, prev_grad)
            if do_update:
                grad = average_gradients(grad)
                if micro_steps > 1:
                    grad = tree_map(lambda x: x / micro_steps, grad)
                optimizer.update(model, grad)
                grad = None
            return loss, toks, grad

        return micro_step

    # ---- validation and checkpoints -------------------------------------------------------------------
    def validate(self) -> float:
        """Token-weighted mean loss over the (fixed) validation batches; no randomness involved."""
        import mlx.core as mx

        tic, cpu = time.perf_counter(), time.process_time()
        self.model.eval()
        if self._val_loss is None:
            self._val_loss = ValidationLoss(self.model, self.valid_arrays)
        total, ntoks = mx.array(0.0), mx.array(0.0)
        for i, batch in enumerate(self.valid_arrays):
            loss_sum, toks = self._val_loss(i, *batch)
            total, ntoks = total + loss_sum, ntoks + toks
            mx.eval(total, ntoks)
        self.model.train()
        total, ntoks = self.world.all_sum(mx.stack([total, ntoks]))  # averaged over ranks, token-weighted
        val_loss = (total / ntoks).item()
        self.clock.add("validation", time.perf_counter() - tic, time.process_time() - cpu)
        return val_loss

    def _adapter_weights(self) -> dict:
        from mlx.utils import tree_flatten

        return dict(tree_flatten(self.model.trainable_parameters()))

    def checkpoint(self, progress: Progress, stopper: EarlyStopping, metrics: MetricsLog, finished: bool) -> None:
        """Rank 0 writes checkpoint_epoch<E>_step<S>/ and the run's training_state.json."""
        from mlx.utils import tree_flatten

        if not self.world.is_main:
            return
        tic = time.perf_counter()
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
            "early_stopping": stopper.to_dict(),
            "fingerprint": self._fingerprint(),
            "data": self.data_digests,
            "metrics_records": len(metrics.records),
            "finished": finished,
        }
        metrics.flush()
        path = write_checkpoint(
            self.run_dir,
            checkpoint_name(epoch, progress.step),
            tensors={
                "adapters.safetensors": self._adapter_weights(),
                "optimizer.safetensors": dict(tree_flatten(self.optimizer.state)),
            },
            json_files={
                "adapter_config.json": adapter_config(self.spec, self.model_path),
                "training_metrics.json": metrics.records,
            },
            state=state,
        )
        write_run_state(self.run_dir, dict(state, checkpoint=path.name))
        prune(self.run_dir, self.spec.keep_checkpoints)
        self.checkpoint_seconds.append(time.perf_counter() - tic)
        console.say(_("\n✓ Checkpoint guardado em: {path}").format(path=path.relative_to(self.ws.root)))

    # ---- the loop --------------------------------------------------------------------------------------
    def run(self) -> int:
        import mlx.core as mx

        from farensed.engine.distributed import World
        from farensed.engine.optim import clear_cache, set_wired_limit

        spec = self.spec
        self.world = World()
        set_wired_limit()
        console.say(console.banner(spec))
        console.say(startup.device_line())
        self._load()
        if self.world.is_main:
            console.say(startup.check_disk(self.run_dir, startup.trainable_bytes(self.model), spec.keep_checkpoints))
        start = self._start_point()
        cont = plan(spec, self.run_dir, start.state, self.total_steps, bool(getattr(spec, "lr_schedule", None)))
        for line in cont.lines:
            console.say(line)
        if self.world.is_main:
            atomic_write_json(self.run_dir / "spec.json", spec.to_dict())  # the accepted changes, recorded
        if start.resuming and start.state.get("finished") and not cont.reopen:
            console.say(_("\nTreino já terminado; nada a fazer."))
            return self.finish(start.state["progress"]["stop_reason"] or "completed", already=True)
        progress, stopper, metrics = self._restore(start)
        self.clock.mark("restored")
        cont.apply(progress, stopper)
        rank = self.world.rank if self.world.size > 1 else None
        micro_step = self._compile_step()
        console.say(console.heading(_("INICIANDO TREINO - {name}").format(name=spec.name)))

        from tqdm import tqdm

        grad, record_tokens, record_time, first, compiling = None, 0, 0.0, True, True
        self.model.train()
        while progress.step < self.total_steps and progress.stop_reason is None:
            epoch, start_index = divmod(progress.step, self.steps_per_epoch)
            if start_index == 0 or first:
                console.say(console.epoch_header(epoch, self.epochs_total))
            first = False
            order = epoch_order(self.steps_per_epoch, spec.seed, epoch)
            bar = tqdm(
                total=self.steps_per_epoch,
                initial=start_index,
                desc=_("Treino"),
                unit="batch",
                mininterval=0.5 if os.isatty(1) else 10,
                file=sys.stdout,
            )
            for index in range(start_index, self.steps_per_epoch):
                tic = time.perf_counter()
                mx.random.seed(step_seed(spec.seed, progress.step, rank))
                in_group = index % spec.grad_accumulation + 1
                last = progress.step + 1 == self.total_steps  # an `iters` budget may end mid-epoch
                boundary = in_group == spec.grad_accumulation or index + 1 == self.steps_per_epoch or last
                batch, lengths = self.train_arrays[order[index]]
                loss, toks, grad = micro_step(batch, lengths, grad, boundary, in_group)
                if self.world.size > 1:  # the global batch's loss, token-weighted over ranks
                    loss_sum, toks = self.world.all_sum(mx.stack([loss * toks, toks.astype(mx.float32)]))
                    loss = loss_sum / toks
                mx.eval(self.state, loss, toks, grad)
                clear_cache(spec.clear_cache_threshold)
                self._first_step_done(progress.step)
                progress.step += 1
                loss, toks = loss.item(), int(toks.item())
                for attr in ("window", "group"):
                    setattr(progress, f"{attr}_loss", getattr(progress, f"{attr}_loss") + loss)
                    setattr(progress, f"{attr}_steps", getattr(progress, f"{attr}_steps") + 1)
                progress.trained_tokens += toks
                record_tokens += toks
                dt = time.perf_counter() - tic
                record_time += dt
                progress.elapsed_s += dt
                bar.update(1)
                if compiling:  # this process's first step built the compiled kernels: not in the ETA
                    console.restart_clock(bar)
                    compiling = False
                validating = progress.step % spec.eval_every == 0 or progress.step == self.total_steps
                if boundary or validating:
                    record = self._record(progress, epoch, record_tokens, record_time)
                    record_tokens, record_time = 0, 0.0
                    if validating:
                        self._validate_into(record, progress, stopper, epoch)
                    metrics.append(record, force_flush=validating)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                if stopper.stopped:
                    progress.stop_reason = "early_stopping"
                stop_now = boundary and self.world.any(self.stop.signum is not None)  # all ranks agree
                if (
                    progress.stop_reason
                    or boundary
                    and (progress.step % spec.save_every == 0 or index + 1 == self.steps_per_epoch or stop_now or last)
                ):
                    finished = progress.stop_reason is not None or progress.step == self.total_steps
                    self.checkpoint(progress, stopper, metrics, finished)
                    if stop_now and not finished:
                        bar.close()
                        self._write_timings()
                        console.say(console.interrupted(self.stop.signum))
                        return EXIT_RESUMABLE
                if progress.stop_reason or last:
                    break
            bar.close()
        if progress.stop_reason == "early_stopping":
            console.say(console.early_stop_block(stopper))
        return self.finish(progress.stop_reason or "completed")

    def _first_step_done(self, step: int) -> None:
        """Start-up ends when this process's first micro-step is done: record it (once)."""
        if "first_step" not in self.clock.marks:
            self.clock.mark("first_step", resumed=step > 0, from_step=step)
            if self.world.is_main:
                self.clock.write(self.run_dir)
                from farensed.analysis.plots import prefetch

                prefetch()  # the plot at the end of the run then starts at once

    def _write_timings(self) -> None:
        """This process's time per activity, at its end (nothing when it trained no step)."""
        if "first_step" in self.clock.marks and self.world.is_main:
            self.clock.mark("loop_end")
            self.clock.seconds["checkpoint"] = sum(self.checkpoint_seconds)
            self.clock.counts["checkpoint"] = len(self.checkpoint_seconds)
            self.clock.write(self.run_dir)

    def _fingerprint(self) -> dict:
        """What must not change for a resume to mean anything (the world size included)."""
        return dict(self.spec.resume_fingerprint(), world_size=self.world.size)

    def _start_point(self):
        """Rank 0 decides fresh / resume / refuse from its disk; every rank gets the same answer."""
        from farensed.engine.checkpoint import Checkpoint
        from farensed.engine.resume import StartPoint
        from farensed.errors import ResumeError

        decision = None
        if self.world.is_main:
            try:
                start = find_start(self.run_dir, self._fingerprint(), self.data_digests, self.fresh, console.say)
            except ResumeError as exc:
                self.world.broadcast_json({"error": str(exc)})
                raise
            if self.world.size == 1:
                return start
            decision = {"state": start.state, "checkpoint": start.checkpoint.path.name if start.resuming else None}
        decision = self.world.broadcast_json(decision)
        if "error" in decision:
            raise ResumeError(decision["error"])
        if not self.world.is_main:
            ckpt = decision["checkpoint"]
            return StartPoint(Checkpoint(self.run_dir / ckpt, 0, 0) if ckpt else None, decision["state"])
        return start

    def _record(self, progress: Progress, epoch: int, tokens: int, seconds: float) -> dict:
        import mlx.core as mx

        record = {
            "step": progress.step,
            "total_steps": self.total_steps,
            "epoch": epoch,
            "loss": progress.group_loss / progress.group_steps,
            "learning_rate": float(self.optimizer.learning_rate.item()),
            "trained_tokens": progress.trained_tokens,
            "tokens_per_second": tokens / seconds if seconds else None,
            "peak_memory_gb": mx.get_peak_memory() / 1e9,
            "elapsed_s": progress.elapsed_s,
        }
        progress.group_loss, progress.group_steps = 0.0, 0
        return record

    def _validate_into(self, record: dict, progress: Progress, stopper: EarlyStopping, epoch: int) -> None:
        val_loss = self.validate()
        train_loss = progress.window_loss / progress.window_steps
        gap = val_loss - train_loss
        progress.window_loss, progress.window_steps = 0.0, 0
        record.update(val_loss=val_loss, train_loss=train_loss, gap=gap, band=band(gap))
        improved = stopper.update(val_loss, progress.step, epoch)
        if improved and self.world.is_main:
            save_adapters(
                self.run_dir / "adapters", self._adapter_weights(), adapter_config(self.spec, self.model_path)
            )
        console.say(console.validation_block(progress.step, val_loss, gap, record["band"], improved, stopper))

    # ---- the end ----------------------------------------------------------------------------------------
    def finish(self, stop_reason: str, already: bool = False) -> int:
        """Summary, plot and output/<name>/ (rank 0); the runner prints the final analysis."""
        self._write_timings()
        if self.world.is_main and self.spec.data.test:
            from farensed.engine.testset import evaluate_test_set

            evaluate_test_set(self)
        if self.world.is_main:
            finish_run(
                self.ws,
                self.spec.name,
                self.run_dir,
                stop_reason,
                self.total_steps,
                self.checkpoint_seconds,
                announce_best=not already,
            )
        return 0
