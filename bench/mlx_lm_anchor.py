"""The anchor: mlx-lm's own LoRA trainer (what `mlx_lm lora` runs), same model/data/batch/steps; prints JSON."""

from __future__ import annotations

import argparse
import sys
import types

import orjson


def main() -> None:
    p = argparse.ArgumentParser()
    for name, typ in (
        ("model", str),
        ("data", str),
        ("batch_size", int),
        ("iters", int),
        ("max_seq_length", int),
        ("layers", int),
        ("rank", int),
        ("scale", float),
        ("dropout", float),
        ("learning_rate", float),
        ("grad_accumulation", int),
        ("seed", int),
    ):
        p.add_argument(f"--{name}", type=typ, required=True)
    # the options of issue 12, chosen as mlx_lm/lora.py train_model() chooses them
    p.add_argument("--fine_tune_type", default="lora", choices=["lora", "dora", "full"])
    p.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd", "adafactor", "muon"])
    p.add_argument("--lr_schedule", default="", help="mlx-lm's lr_schedule as JSON")
    p.add_argument("--grad_checkpoint", type=int, default=0)
    a = p.parse_args()
    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np
    from mlx_lm import load
    from mlx_lm.tuner.callbacks import TrainingCallback
    from mlx_lm.tuner.datasets import CacheDataset, load_dataset
    from mlx_lm.tuner.trainer import TrainingArgs, train
    from mlx_lm.tuner.utils import build_schedule, linear_to_lora_layers

    mx.random.seed(a.seed)
    np.random.seed(a.seed)
    model, tokenizer = load(a.model)
    model.freeze()
    if a.fine_tune_type == "full":
        for layer in model.layers[-max(a.layers, 0) :]:
            layer.unfreeze()
    else:
        config = {"rank": a.rank, "scale": a.scale, "dropout": a.dropout}
        linear_to_lora_layers(model, a.layers, config, use_dora=a.fine_tune_type == "dora")
    ns = types.SimpleNamespace(data=a.data, train=True, test=False, mask_prompt=True, hf_dataset=False)
    train_set, valid_set, _ = load_dataset(ns, tokenizer)

    class Capture(TrainingCallback):
        report: dict = {}

        def on_train_loss_report(self, info):
            Capture.report = info

    args = TrainingArgs(
        batch_size=a.batch_size,
        iters=a.iters,
        val_batches=1,
        steps_per_report=a.iters,
        steps_per_eval=10 * a.iters,
        steps_per_save=10 * a.iters,
        max_seq_length=a.max_seq_length,
        adapter_file="anchor_adapters.safetensors",
        grad_accumulation_steps=a.grad_accumulation,
        grad_checkpoint=bool(a.grad_checkpoint),
    )
    lr = build_schedule(orjson.loads(a.lr_schedule)) if a.lr_schedule else a.learning_rate
    names = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD", "adafactor": "Adafactor", "muon": "Muon"}
    train(
        model,
        getattr(optim, names[a.optimizer])(learning_rate=lr),
        CacheDataset(train_set),
        CacheDataset(valid_set),
        args=args,
        training_callback=Capture(),
    )
    sys.stdout.write(
        orjson.dumps(
            {
                "tokens_per_second": Capture.report["tokens_per_second"],
                "peak_memory_gb": Capture.report["peak_memory"],
                "train_loss": Capture.report["train_loss"],
            }
        ).decode()
        + "\n"
    )


if __name__ == "__main__":
    main()
