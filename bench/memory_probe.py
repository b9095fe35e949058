"""`python -m bench.memory_probe ROOT SPEC.json [STEPS]`: the peak memory of farense's training step, measured.

Builds the job's trainer as `farensectl run` does (model, LoRA, optimizer, the spec's loss and batches), compiles
its step, and runs STEPS micro-steps on the widest batch of the data (the one a run peaks on). Prints one JSON line:
the batch's shape and counted positions, the memory resident before the step, and `mx.get_peak_memory()` over the
steps (reset first): what the planner (farensed/doctor/memplan.py) predicts.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import orjson


def main() -> None:
    root, spec_path = Path(sys.argv[1]), Path(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    import mlx.core as mx

    from farensed.engine.runner import step_collaborators
    from farensed.engine.step import build_micro_step, place
    from farensed.engine.trainer import Trainer
    from farensed.spec.load import load_spec
    from farensed.storage.workspace import Workspace

    ws = Workspace(root)
    spec = load_spec(spec_path, ws)
    loss, batches = step_collaborators(spec)
    trainer = Trainer(spec, ws, loss=loss, iterate_batches=batches)
    trainer._prepare()
    trainer.optimizer.init(trainer.model.trainable_parameters())
    widest = max((batch for _i, batch in trainer.batches.epoch(0)), key=lambda b: b[0].size)
    if check := getattr(trainer.loss, "check", None):
        check(trainer.model, widest)
    step = build_micro_step(trainer.model, trainer.optimizer, trainer.loss, trainer.world, spec.grad_checkpoint)
    trainer.model.train()
    mx.eval(trainer.model.parameters(), trainer.optimizer.state)
    resident = mx.get_active_memory()
    mx.reset_peak_memory()
    times = []
    for i in range(steps):
        tic = time.perf_counter()
        value, counted, _grad = step(widest, None, place(i, 10**6, 1, 10**7), spec.seed, i, None)
        times.append(time.perf_counter() - tic)
    counted_loss = getattr(trainer.loss, "shortcut", None)
    out = {
        "rows": int(widest[0].shape[0]),
        "width": int(widest[0].shape[1]),
        "counted": counted,
        "gathered": int(widest[-1].size) if loss is not None else None,
        "shortcut": counted_loss,
        "ce_chunk": getattr(trainer.loss, "ce_chunk", None),
        "resident_bytes": resident,
        "peak_bytes": mx.get_peak_memory(),
        "loss": value,
        "step_s": times,
    }
    sys.stdout.write(orjson.dumps(out).decode() + "\n")


if __name__ == "__main__":
    main()
