"""Helpers for tests that train the tiny model in real child processes."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

# A short V2-shaped job: 2 epochs x 40 steps, validation every 8 steps, checkpoints every 8.
TEST_SPEC = {
    "name": "t",
    "model": "models/tiny-mistral-4bit",
    "data": {"train": "data/demo/train.jsonl", "valid": "data/demo/valid.jsonl"},
    "lora": {"rank": 4, "alpha": 16, "dropout": 0.08, "layers": 2},
    "batch_size": 4,
    "grad_accumulation": 2,
    "learning_rate": 2e-3,
    "epochs": 2,
    "max_seq_length": 128,
    "eval_every": 8,
    "save_every": 8,
    "keep_checkpoints": 2,
    "early_stopping": {"patience": 5, "min_delta": 0.001},
    "val_samples": 24,
    "evaluate": False,
}


def spec_with(**changes) -> dict:
    spec = copy.deepcopy(TEST_SPEC)
    spec.update(changes)
    return spec


def write_spec(root: Path, spec: dict, name: str = "job.json") -> Path:
    path = Path(root) / name
    path.write_bytes(orjson.dumps(spec, option=orjson.OPT_INDENT_2))
    return path


def cli_cmd(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "farensed.cli.main", "--home", str(root), *args]


def child_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_cli(root: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        cli_cmd(root, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(),
        timeout=timeout,
    )


def start_cli(root: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    out = open(log, "wb") if log else subprocess.DEVNULL
    return subprocess.Popen(cli_cmd(root, *args), stdout=out, stderr=subprocess.STDOUT, env=child_env())


def metric_lines(run_dir: Path) -> int:
    try:
        return (run_dir / "training_metrics.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for(predicate, timeout: float = 120, interval: float = 0.02, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc is not None and proc.poll() is not None:
            return predicate()
        time.sleep(interval)
    raise AssertionError("timed out waiting")


def kill_at_record(root: Path, spec_path: Path, records: int, sig=signal.SIGKILL, log: Path | None = None) -> int:
    """Start a run, send `sig` once its metrics hold `records` lines; return its exit code."""
    run_dir = root / "checkpoints_qlora" / "t"
    proc = start_cli(root, "run", str(spec_path), log=log)
    wait_for(lambda: metric_lines(run_dir) >= records, proc=proc)
    if proc.poll() is None:
        proc.send_signal(sig)
    return proc.wait(timeout=120)


def load_adapters(path: Path) -> dict:
    import mlx.core as mx

    return mx.load(str(path))


def assert_same_adapters(a: Path, b: Path) -> None:
    import mlx.core as mx

    ta, tb = load_adapters(a), load_adapters(b)
    assert sorted(ta) == sorted(tb) and ta
    for key in ta:
        assert mx.array_equal(ta[key], tb[key]).item(), f"tensor {key} differs"


def deterministic_metrics(run_dir: Path) -> list[dict]:
    from farensed.analysis.metrics import deterministic

    return [deterministic(r) for r in orjson.loads((run_dir / "training_metrics.json").read_bytes())]


def deterministic_summary(run_dir: Path) -> dict:
    summary = orjson.loads((run_dir / "training_summary.json").read_bytes())
    for key in ("elapsed_s", "tokens_per_second", "step_s_mean", "checkpoint_s_mean"):
        summary.pop(key, None)
    return summary


def write_untrained_model(folder: Path) -> Path:
    """A real mlx-lm model folder in the tiny model's shape (its config, its trained BPE tokenizer and chat template,
    4-bit weight layout) with untrained weights, written without mlx in about a second: for the checks that read a
    model folder (spec validation, doctor, submit) and never load it."""
    import numpy as np
    from safetensors.numpy import save_file

    from farensed.demo.tinymodel import RECIPE, _train_tokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _train_tokenizer(folder)
    q = RECIPE["quantize"]
    config = dict(RECIPE["config"], vocab_size=len(tokenizer), torch_dtype="float32")
    config.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    config.update(quantization=dict(q, mode="affine"), quantization_config=dict(q, mode="affine"))
    hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    kv = hidden // config["num_attention_heads"] * config["num_key_value_heads"]
    rng = np.random.default_rng(0)
    tensors = {}

    def quantized(name: str, out: int, inp: int) -> None:
        tensors[f"{name}.weight"] = rng.integers(0, 2**32, (out, inp * q["bits"] // 32), dtype=np.uint32)
        tensors[f"{name}.scales"] = np.full((out, inp // q["group_size"]), 0.01, np.float16)
        tensors[f"{name}.biases"] = np.zeros((out, inp // q["group_size"]), np.float16)

    quantized("model.embed_tokens", vocab, hidden)
    quantized("lm_head", vocab, hidden)
    tensors["model.norm.weight"] = np.ones(hidden, np.float32)
    for i in range(config["num_hidden_layers"]):
        layer = f"model.layers.{i}"
        for proj, out in (("q_proj", hidden), ("k_proj", kv), ("v_proj", kv), ("o_proj", hidden)):
            quantized(f"{layer}.self_attn.{proj}", out, hidden)
        quantized(f"{layer}.mlp.gate_proj", inter, hidden)
        quantized(f"{layer}.mlp.up_proj", inter, hidden)
        quantized(f"{layer}.mlp.down_proj", hidden, inter)
        tensors[f"{layer}.input_layernorm.weight"] = np.ones(hidden, np.float32)
        tensors[f"{layer}.post_attention_layernorm.weight"] = np.ones(hidden, np.float32)
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "mlx"})
    (folder / "config.json").write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
    return folder


def loaded_trainer(root, eval_mode: bool = False, **changes):
    """A Trainer with model, tokens, batches and LoRA layers set up, its LoRA B made non-zero (a trained look);
    `eval_mode`: no dropout, so two losses compared see the same network."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from farensed.engine.trainer import Trainer
    from farensed.spec.load import load_spec
    from farensed.storage.workspace import Workspace

    ws = Workspace(root)
    trainer = Trainer(load_spec(write_spec(root, spec_with(**changes)), ws), ws)
    trainer._prepare()
    mx.random.seed(7)
    params = tree_flatten(trainer.model.trainable_parameters())
    trainer.model.load_weights([(k, 0.05 * mx.random.normal(v.shape)) for k, v in params], strict=False)
    if eval_mode:
        trainer.model.eval()
    return trainer
