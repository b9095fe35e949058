"""The resumable QLoRA training loop. Read top to bottom: setup, restore, loop, finish.

Exact resume rests on four rules (MLX_NOTES.md): restore every piece of state before building the compiled
step; the data order is a pure function of (seed, epoch); dropout's RNG is re-seeded from (seed, step) before
every micro-step; checkpoints are taken only at optimizer-update boundaries.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from . import EXIT_RESUMABLE, console
from .atomic import atomic_write_json, atomic_write_with
from .checkpoint import checkpoint_name, prune, write_checkpoint, write_run_state
from .data import collate, epoch_order, file_digest, length_sorted_batches, tokenize_file
from .gap import analyse, band
from .metrics import MetricsLog
from .plots import PLOT_NAME, plot_training
from .resume import find_start
from .spec import JobSpec
from .stopping import EarlyStopping
from .workspace import Workspace

SUMMARY_NAME = "training_summary.json"


def step_seed(seed: int, step: int) -> int:
    """The RNG seed of one micro-step (dropout masks), independent of how the run was interrupted."""
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop finishes the current optimizer update and checkpoints."""

    def __init__(self):
        self.signum = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
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
    extra: dict = field(default_factory=dict)


def adapter_config(spec: JobSpec, model_path: Path) -> dict:
    """mlx-lm's adapter_config.json, so `mlx_lm generate --adapter-path` loads the adapters."""
    return {
        "fine_tune_type": "lora",
        "model": str(model_path),
        "num_layers": spec.lora.layers,
        "lora_parameters": {"rank": spec.lora.rank, "scale": spec.lora.scale, "dropout": spec.lora.dropout},
        "farense": {"name": spec.name, "alpha": spec.lora.alpha},
    }


def save_adapters(folder: Path, weights: dict, config: dict) -> None:
    """adapters.safetensors + adapter_config.json, each written atomically."""
    import mlx.core as mx

    def write(tmp: Path) -> None:
        named = tmp.with_name(tmp.name + ".safetensors")  # mx appends the suffix otherwise
        mx.save_safetensors(str(named), weights)
        os.replace(named, tmp)

    atomic_write_with(folder / "adapters.safetensors", write)
    atomic_write_json(folder / "adapter_config.json", config)


class Trainer:
    """One job's training run: `run()` returns 0 (finished) or EXIT_RESUMABLE (stopped on a signal)."""

    def __init__(self, spec: JobSpec, ws: Workspace, fresh: bool = False):
        self.spec, self.ws = spec, ws
        self.run_dir = ws.run_dir(spec.name)
        self.model_path = ws.resolve(spec.model)
        self.fresh = fresh
        self.stop = StopRequest()
        self.checkpoint_seconds: list[float] = []  # this process's checkpoint writes (for bench/)

    # ---- setup -------------------------------------------------------------------------------------------
    def _load(self) -> None:
        import mlx.core as mx
        import mlx.optimizers as optim
        from mlx_lm import load
        from mlx_lm.tuner.utils import linear_to_lora_layers

        spec = self.spec
        console.say("\nA carregar modelo e dados...")
        console.say(f"A carregar modelo: {spec.model}")
        self.model, self.tokenizer = load(str(self.model_path))
        console.say("\nA carregar datasets...")
        train_path, valid_path = self.ws.resolve(spec.data.train), self.ws.resolve(spec.data.valid)
        self.data_digests = {"train": file_digest(train_path), "valid": file_digest(valid_path)}
        console.say("\nA tokenizar...")
        self.train_set = tokenize_file(train_path, self.tokenizer, spec.max_seq_length)
        self.valid_set = tokenize_file(valid_path, self.tokenizer, spec.max_seq_length)
        console.say(f"Amostras de treino: {len(self.train_set)}")
        console.say(f"Amostras de validação: {len(self.valid_set)}")
        console.say(f"✅ Tokens de treino: {sum(map(len, self.train_set.tokens))}")
        console.say(f"✅ Tokens de validação: {sum(map(len, self.valid_set.tokens))}")
        truncated = self.train_set.truncated + self.valid_set.truncated
        if truncated:
            console.say(f"⚠  {truncated} exemplos mais longos que max_seq_length={spec.max_seq_length} foram truncados")
        self.train_batches = length_sorted_batches(self.train_set, spec.batch_size, drop_last=True)
        n_valid = len(self.valid_set) if spec.val_samples is None else min(spec.val_samples, len(self.valid_set))
        self.valid_batches = length_sorted_batches(
            type(self.valid_set)(self.valid_set.tokens[:n_valid], self.valid_set.offsets[:n_valid], 0),
            spec.batch_size, drop_last=False,
        )
        self.steps_per_epoch = len(self.train_batches)
        # Batches are fixed (only their order changes per epoch): pad and convert each once.
        self.train_arrays = [collate(self.train_set, b, spec.max_seq_length) for b in self.train_batches]
        self.total_steps = self.steps_per_epoch * spec.epochs

        if spec.lora.layers > len(self.model.layers):
            console.say(f"ℹ  lora.layers = {spec.lora.layers} > {len(self.model.layers)} camadas do modelo: "
                        "todas são adaptadas")
        mx.random.seed(spec.seed)  # LoRA's initial weights
        self.model.freeze()
        linear_to_lora_layers(
            self.model, spec.lora.layers,
            {"rank": spec.lora.rank, "scale": spec.lora.scale, "dropout": spec.lora.dropout},
        )
        self.optimizer = optim.Adam(learning_rate=spec.learning_rate)

    def _restore(self, start) -> tuple[Progress, EarlyStopping, MetricsLog]:
        """Adapters, optimizer, counters, early stopping and metrics from a checkpoint (or fresh ones)."""
        import mlx.core as mx
        from mlx.utils import tree_unflatten

        es = self.spec.early_stopping
        stopper = EarlyStopping(es.patience if es else None, es.min_delta if es else 0.0)
        progress, records = Progress(), []
        if start.resuming:
            path, state = start.checkpoint.path, start.state
            adapters = mx.load(str(path / "adapters.safetensors"))
            self.model.load_weights(list(adapters.items()), strict=False)
            self.optimizer.state = tree_unflatten(list(mx.load(str(path / "optimizer.safetensors")).items()))
            mx.eval(self.model.parameters(), self.optimizer.state)
            progress = Progress(**state["progress"])
            stopper = EarlyStopping.from_dict(state["early_stopping"])
            from .atomic import read_json

            records = read_json(path / "training_metrics.json")
            console.say(f"\n↻ A retomar de {path.name} (step {progress.step}/{self.total_steps})")
        self.optimizer.init(self.model.trainable_parameters())
        self.run_dir.mkdir(parents=True, exist_ok=True)
        metrics = MetricsLog(self.run_dir, records)
        metrics.reset_files()
        return progress, stopper, metrics

    def _compile_step(self):
        """The compiled micro-step, built after every piece of state has been restored."""
        import mlx.core as mx
        import mlx.nn as nn
        from mlx.nn.utils import average_gradients
        from mlx.utils import tree_map
        from mlx_lm.tuner.trainer import default_loss

        model, optimizer = self.model, self.optimizer
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
        from mlx_lm.tuner.trainer import default_loss

        self.model.eval()
        total, ntoks = mx.array(0.0), mx.array(0)
        for indices in self.valid_batches:
            loss, toks = default_loss(self.model, *collate(self.valid_set, indices, self.spec.max_seq_length))
            total, ntoks = total + loss * toks, ntoks + toks
            mx.eval(total, ntoks)
        self.model.train()
        return (total / ntoks).item()

    def _adapter_weights(self) -> dict:
        from mlx.utils import tree_flatten

        return dict(tree_flatten(self.model.trainable_parameters()))

    def checkpoint(self, progress: Progress, stopper: EarlyStopping, metrics: MetricsLog, finished: bool) -> Path:
        from mlx.utils import tree_flatten

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
            "fingerprint": self.spec.resume_fingerprint(),
            "data": self.data_digests,
            "metrics_records": len(metrics.records),
            "finished": finished,
        }
        metrics.flush()
        path = write_checkpoint(
            self.run_dir, checkpoint_name(epoch, progress.step),
            tensors={"adapters.safetensors": self._adapter_weights(),
                     "optimizer.safetensors": dict(tree_flatten(self.optimizer.state))},
            json_files={"adapter_config.json": adapter_config(self.spec, self.model_path),
                        "training_metrics.json": metrics.records},
            state=state,
        )
        write_run_state(self.run_dir, dict(state, checkpoint=path.name))
        prune(self.run_dir, self.spec.keep_checkpoints)
        self.checkpoint_seconds.append(time.perf_counter() - tic)
        console.say(f"\n✓ Checkpoint guardado em: {path.relative_to(self.ws.root)}")
        return path

    # ---- the loop --------------------------------------------------------------------------------------
    def run(self) -> int:
        import mlx.core as mx

        spec = self.spec
        console.say(console.banner(spec))
        self._load()
        start = find_start(self.run_dir, spec.resume_fingerprint(), self.data_digests, self.fresh, console.say)
        if start.resuming and start.state.get("finished"):
            console.say("\nTreino já terminado; nada a fazer.")
            return self.finish(start.state["progress"]["stop_reason"], already=True)
        progress, stopper, metrics = self._restore(start)
        atomic_write_json(self.run_dir / "spec.json", spec.to_dict())
        micro_step = self._compile_step()
        console.say(console.heading(f"INICIANDO TREINO - {spec.name}"))

        from tqdm import tqdm

        grad, record_tokens, record_time, first = None, 0, 0.0, True
        self.model.train()
        while progress.step < self.total_steps and progress.stop_reason is None:
            epoch, index = divmod(progress.step, self.steps_per_epoch)
            if index == 0 or first:
                console.say(console.epoch_header(epoch, spec.epochs))
            first = False
            order = epoch_order(self.steps_per_epoch, spec.seed, epoch)
            bar = tqdm(total=self.steps_per_epoch, initial=index, desc="Treino", unit="batch",
                       mininterval=0.5 if os.isatty(1) else 10, file=os.sys.stdout)
            for index in range(index, self.steps_per_epoch):
                tic = time.perf_counter()
                mx.random.seed(step_seed(spec.seed, progress.step))
                in_group = index % spec.grad_accumulation + 1
                boundary = in_group == spec.grad_accumulation or index + 1 == self.steps_per_epoch
                batch, lengths = self.train_arrays[order[index]]
                loss, toks, grad = micro_step(batch, lengths, grad, boundary, in_group)
                mx.eval(self.state, loss, toks, grad)
                progress.step += 1
                loss, toks = loss.item(), toks.item()
                for attr in ("window", "group"):
                    setattr(progress, f"{attr}_loss", getattr(progress, f"{attr}_loss") + loss)
                    setattr(progress, f"{attr}_steps", getattr(progress, f"{attr}_steps") + 1)
                progress.trained_tokens += toks
                record_tokens += toks
                dt = time.perf_counter() - tic
                record_time += dt
                progress.elapsed_s += dt
                bar.update(1)
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
                if progress.stop_reason or boundary and (
                    progress.step % spec.save_every == 0 or index + 1 == self.steps_per_epoch
                    or self.stop.signum is not None
                ):
                    finished = progress.stop_reason is not None or progress.step == self.total_steps
                    self.checkpoint(progress, stopper, metrics, finished)
                    if self.stop.signum is not None and not finished:
                        bar.close()
                        console.say(f"\n⏸  Interrompido (sinal {self.stop.signum}); retoma com o mesmo comando.")
                        return EXIT_RESUMABLE
                if progress.stop_reason:
                    break
            bar.close()
        if progress.stop_reason == "early_stopping":
            console.say(console.early_stop_block(stopper))
        return self.finish(progress.stop_reason or "completed")

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
        if improved:
            save_adapters(self.run_dir / "adapters", self._adapter_weights(), adapter_config(self.spec, self.model_path))
        console.say(console.validation_block(progress.step, val_loss, gap, record["band"], improved, stopper))

    # ---- the end ----------------------------------------------------------------------------------------
    def finish(self, stop_reason: str, already: bool = False) -> int:
        """training_summary.json, the plot, output/<name>/ = best adapters (the runner prints the analysis)."""
        import shutil

        from .atomic import read_json

        records = read_json(self.run_dir / "training_metrics.json")
        analysis = analyse(records)
        vals = analysis["validations"]
        best = min(vals, key=lambda r: r["val_loss"]) if vals else None
        train = [r for r in records if r.get("loss") is not None]
        summary = {
            "name": self.spec.name,
            "status": analysis["status"],
            "gap_mean": analysis["gap_mean"],
            "gap_max": analysis["gap_max"],
            "gap_min": analysis["gap_min"],
            "best_step": best["step"] if best else None,
            "best_epoch": best["epoch"] if best else None,
            "best_val_loss": best["val_loss"] if best else None,
            "first_val_loss": vals[0]["val_loss"] if vals else None,
            "final_val_loss": vals[-1]["val_loss"] if vals else None,
            "final_loss": train[-1]["loss"] if train else None,
            "stop_reason": stop_reason,
            "steps_run": records[-1]["step"] if records else 0,
            "total_steps": self.total_steps,
            "epochs_run": records[-1]["epoch"] + 1 if records else 0,
            "validations": len(vals),
            "trained_tokens": records[-1]["trained_tokens"] if records else 0,
            "elapsed_s": records[-1]["elapsed_s"] if records else 0.0,
        }
        summary["tokens_per_second"] = summary["trained_tokens"] / summary["elapsed_s"] if summary["elapsed_s"] else None
        summary["step_s_mean"] = summary["elapsed_s"] / summary["steps_run"] if summary["steps_run"] else None
        summary["checkpoint_s_mean"] = (sum(self.checkpoint_seconds) / len(self.checkpoint_seconds)
                                        if self.checkpoint_seconds else None)
        atomic_write_json(self.run_dir / SUMMARY_NAME, summary)
        plot_training(records, self.run_dir / PLOT_NAME, title=f"{self.spec.name} — loss, val_loss e gap")
        out = self.ws.output_dir(self.spec.name)
        out.mkdir(parents=True, exist_ok=True)
        for fname in ("adapters.safetensors", "adapter_config.json"):
            src = self.run_dir / "adapters" / fname
            atomic_write_with(out / fname, lambda tmp, src=src: shutil.copyfile(src, tmp))
        if best and not already:
            console.say(f"\nMelhor modelo: Época {best['epoch'] + 1}, Step {best['step']} (val_loss {best['val_loss']:.4f})")
        console.say(f"Adapters finais: {out.relative_to(self.ws.root)}")
        return 0
