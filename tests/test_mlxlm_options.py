"""mlx_lm lora's options on the real tiny model: DoRA/full, AdamW, cosine schedule with warmup, grad checkpointing.

Each configuration runs once uninterrupted and once killed with SIGKILL twice at random moments (real processes,
real signals); both must end with tensor-identical adapters (weights, for `full`) and identical metrics.
"""

from __future__ import annotations

import random
import signal

import orjson
import pytest

from tests.conftest import make_workspace
from tests.helpers import (
    TEST_SPEC,
    assert_same_adapters,
    deterministic_metrics,
    deterministic_summary,
    kill_at_record,
    run_cli,
    spec_with,
    write_spec,
)

RUN = "checkpoints_qlora/t"


def short_spec(**changes) -> dict:
    """TEST_SPEC with an `iters` budget of 20 micro-steps (10 optimizer updates, 10 metrics records)."""
    spec = {k: v for k, v in TEST_SPEC.items() if k != "epochs"}
    spec.update(iters=20, eval_every=6, save_every=4)
    spec.update(changes)
    return spec


SPECS = {
    "dora-adamw-cosine-gradckpt": short_spec(
        fine_tune_type="dora",
        optimizer="adamw",
        optimizer_config={"adamw": {"weight_decay": 0.05}},
        lr_schedule={"name": "cosine_decay", "arguments": [2e-3, 10, 1e-5], "warmup": 3, "warmup_init": 1e-5},
        grad_checkpoint=True,
    ),
    "full": short_spec(fine_tune_type="full", learning_rate=1e-3, lora={"layers": 2}),
}


def assert_same_run(a, b):
    assert_same_adapters(a / "output/t/adapters.safetensors", b / "output/t/adapters.safetensors")
    assert_same_adapters(a / RUN / "adapters/adapters.safetensors", b / RUN / "adapters/adapters.safetensors")
    assert deterministic_metrics(a / RUN) == deterministic_metrics(b / RUN)
    assert deterministic_summary(a / RUN) == deterministic_summary(b / RUN)


@pytest.mark.e2e
@pytest.mark.parametrize("kind", sorted(SPECS))
def test_killed_twice_at_random_moments_ends_identical_to_an_uninterrupted_run(tmp_path, request, kind):
    spec = SPECS[kind]
    model = request.getfixturevalue("tiny_fp_model" if kind == "full" else "tiny_model")  # `full` needs floats
    reference = make_workspace(tmp_path / "reference", model)
    proc = run_cli(reference, "run", str(write_spec(reference, spec)))
    assert proc.returncode == 0, proc.stdout[-3000:]
    summary = orjson.loads((reference / RUN / "training_summary.json").read_bytes())
    assert summary["steps_run"] == summary["total_steps"] == 20
    assert summary["final_val_loss"] < summary["first_val_loss"]
    config = orjson.loads((reference / "output/t/adapter_config.json").read_bytes())
    assert config["fine_tune_type"] == spec["fine_tune_type"]

    killed = make_workspace(tmp_path / "killed", model)
    path = write_spec(killed, spec)
    for mark in sorted(random.Random(kind).sample(range(2, 9), 2)):  # of the 10 records (one per update)
        assert kill_at_record(killed, path, mark) == -signal.SIGKILL
    proc = run_cli(killed, "run", str(path))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "A retomar de checkpoint_epoch" in proc.stdout
    assert_same_run(reference, killed)
    states = orjson.loads((killed / RUN / "training_state.json").read_bytes())
    assert states["fingerprint"]["fine_tune_type"] == spec["fine_tune_type"]


def test_resume_adapter_file_starts_from_existing_adapters(workspace):
    first = dict(short_spec(), iters=10, eval_every=10, save_every=10)
    proc = run_cli(workspace, "run", str(write_spec(workspace, first)))
    assert proc.returncode == 0, proc.stdout[-3000:]
    then = dict(
        first, name="t2", iters=2, eval_every=2, save_every=2, resume_adapter_file="output/t/adapters.safetensors"
    )
    proc = run_cli(workspace, "run", str(write_spec(workspace, then, "t2.json")))
    assert proc.returncode == 0, proc.stdout[-3000:]
    a = orjson.loads((workspace / RUN / "training_metrics.json").read_bytes())
    b = orjson.loads((workspace / "checkpoints_qlora/t2/training_metrics.json").read_bytes())
    assert b[0]["loss"] < a[0]["loss"] - 0.3  # it continued from the trained adapters, not from fresh ones
    assert b[-1]["val_loss"] < a[0]["loss"]


def test_mask_prompt_false_puts_the_prompt_into_the_loss(workspace):
    from mlx_lm import load

    from farensed.engine.data import tokenize_file

    _, tokenizer = load(str(workspace / "models/tiny-mistral-4bit"))
    path = workspace / "data/demo/train.jsonl"
    masked, whole = tokenize_file(path, tokenizer, 128), tokenize_file(path, tokenizer, 128, mask_prompt=False)
    assert masked.tokens == whole.tokens
    assert all(o > 0 for o in masked.offsets) and set(whole.offsets) == {0}


def test_lora_keys_that_name_no_layer_are_one_line_before_training(workspace):
    """It passed validation and then crashed at the first step ('[grad] Must specify at least one argument')."""
    spec = spec_with(name="nokeys", lora={**TEST_SPEC["lora"], "keys": ["nonexistent_key"]})
    proc = run_cli(workspace, "run", str(write_spec(workspace, spec)))
    assert proc.returncode == 2, proc.stdout[-2000:]
    [line] = [x for x in proc.stdout.splitlines() if x.startswith("Erro:")]
    assert "lora.keys" in line and "self_attn.q_proj" in line and "Traceback" not in proc.stdout
