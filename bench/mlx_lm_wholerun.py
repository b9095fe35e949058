"""`mlx_lm lora -c CONFIG` as a user runs it, with stop-watches around its phases; the times go to $BENCH_TIMES.

Runs mlx-lm's own `lora.main()` unchanged; only wraps (never replaces) its validation (`evaluate`), its adapter
saves (`mx.save_safetensors`), its progress bar's advance (the first one marks the end of start-up) and `train`.
"""

from __future__ import annotations

import atexit
import os
import sys
import time

import orjson

from farensed.engine.timing import since_process_start

TIMES = {"validation_s": 0.0, "validation_cpu_s": 0.0, "validations": 0, "checkpoint_s": 0.0, "checkpoints": 0}


since_start = since_process_start()


def timed(fn, key: str):
    def wrapper(*args, **kwargs):
        tic, cpu = time.perf_counter(), time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[f"{key}_s"] += time.perf_counter() - tic
            TIMES[f"{key}_cpu_s"] = TIMES.get(f"{key}_cpu_s", 0.0) + time.process_time() - cpu
            TIMES[f"{key}s"] += 1

    return wrapper


def main() -> None:
    import mlx.core as mx
    import mlx_lm.lora as lora
    import mlx_lm.tuner.trainer as trainer

    trainer.evaluate = timed(trainer.evaluate, "validation")
    mx.save_safetensors = timed(mx.save_safetensors, "checkpoint")
    advance = trainer.TrainUI.advance

    def first_advance(self):
        if "first_step" not in TIMES:  # start-up ends with the first training step (step 1's validation excluded)
            TIMES["first_step"] = since_start()
            TIMES["first_step_cpu"] = time.process_time()
            TIMES["validation_before_first_step"] = TIMES["validation_s"]
            TIMES["validation_cpu_before_first_step"] = TIMES["validation_cpu_s"]
        return advance(self)

    trainer.TrainUI.advance = first_advance
    train = lora.train

    def timed_train(*args, **kwargs):
        try:
            return train(*args, **kwargs)
        finally:
            TIMES["loop_end"] = since_start()
            TIMES["loop_end_cpu"] = time.process_time()

    lora.train = timed_train
    atexit.register(lambda: open(os.environ["BENCH_TIMES"], "wb").write(orjson.dumps(TIMES)))
    sys.argv = ["mlx_lm.lora", *sys.argv[1:]]
    lora.main()


if __name__ == "__main__":
    main()
