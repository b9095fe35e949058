"""Validation at full speed gives the same val_loss as before; the token cache gives the same tokens."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.helpers import TEST_SPEC, loaded_trainer


def mlx_lm_val_loss(trainer) -> float:
    """mlx-lm's own evaluate (what `mlx_lm lora --val-batches -1` runs) over the same validation examples."""
    from mlx_lm.tuner.trainer import evaluate

    n = trainer.spec.val_samples
    dataset = list(zip(trainer.valid_set.tokens[:n], trainer.valid_set.offsets[:n]))
    loss = evaluate(trainer.model, dataset, trainer.spec.batch_size, -1, trainer.spec.max_seq_length)
    trainer.model.train()
    return loss


def test_validation_batches_are_larger_and_equal_mlx_lm_evaluate(workspace):
    from farensed.engine.data import VAL_TOKEN_FACTOR, padded_width
    from farensed.engine.validation import validation_split

    trainer = loaded_trainer(workspace)
    spec = trainer.spec
    rows = [batch.shape[0] for batch, _ in trainer.validation.batches]
    assert sum(rows) == TEST_SPEC["val_samples"]  # the same fixed subset, each example once
    widest = max(padded_width(int(batch.shape[1]), spec.max_seq_length) for batch, _ in trainer.batches.arrays)
    # the automatic rule: bounded by the training batch, shared by the batches evaluated at once (2 on a CPU)
    split = validation_split()
    budget = VAL_TOKEN_FACTOR * spec.batch_size * widest // split
    assert all(b.shape[0] * b.shape[1] <= budget for b, _ in trainer.validation.batches)
    if split == 1:  # a GPU: batches larger than training's
        assert max(rows) > spec.batch_size and len(rows) < TEST_SPEC["val_samples"] // spec.batch_size
    trainer.model.train()
    mode = trainer.model.training
    reference = mlx_lm_val_loss(trainer)
    first, second = trainer.validation(), trainer.validation()  # the second runs the cached compiled graph
    assert trainer.validation.loss.counted is not None  # the tiny Mistral has a plain head: only counted positions
    assert first == second
    assert first == pytest.approx(reference, rel=1e-5)
    assert trainer.model.training == mode  # validation runs on a twin in eval mode: the model keeps its own
    trainer.validation.loss.counted = None  # the full forward (models with a special head) gives the same number
    assert trainer.validation() == pytest.approx(reference, rel=1e-5)


def test_explicit_val_batch_size_gives_the_same_loss(workspace, capsys, monkeypatch):
    import farensed.engine.validation as validation

    trainer = loaded_trainer(workspace, val_batch_size=7)
    assert [b.shape[0] for b, _ in trainer.validation.batches] == [7, 7, 7, 3]
    capsys.readouterr()
    monkeypatch.setattr(validation, "PROGRESS_EVERY_S", 0.0)  # as if every batch took a minute
    assert trainer.validation() == pytest.approx(mlx_lm_val_loss(trainer), rel=1e-5)
    said = [line.strip() for line in capsys.readouterr().out.splitlines() if "validação:" in line]
    assert said == [f"… validação: {n}/4 lotes" for n in (1, 2, 3, 4)]  # a long validation is never silent


def test_token_cache_returns_the_same_tokens_and_ignores_a_damaged_file(workspace, tiny_model):
    from mlx_lm.utils import load_tokenizer

    from farensed.engine.data import tokenize_file
    from farensed.engine.tokcache import TokenCache
    from farensed.storage.digest import sha256_file as file_digest

    tokenizer = load_tokenizer(tiny_model)
    data = workspace / TEST_SPEC["data"]["train"]
    calls = []

    def tokenize():
        calls.append(1)
        return tokenize_file(data, tokenizer, 128)

    folder = workspace / "cache"
    gone = subprocess.Popen(["true"])  # its pid: a writer killed mid-write
    gone.wait()
    folder.mkdir()
    (folder / f".x.safetensors.tmp-{gone.pid}").write_bytes(b"half")
    cache = TokenCache(folder, tiny_model, {"max_seq_length": 128, "mask_prompt": True})
    assert not list(folder.iterdir())  # its temp file swept
    first, hit = cache.get(file_digest(data), tokenize)
    assert not hit and len(calls) == 1 and len(list(folder.glob("*.safetensors"))) == 1
    second, hit = cache.get(file_digest(data), tokenize)
    assert hit and len(calls) == 1
    assert second.tokens == first.tokens and second.offsets == first.offsets and second.truncated == first.truncated
    other = TokenCache(folder, tiny_model, {"max_seq_length": 128, "mask_prompt": False})
    assert other.get(file_digest(data), tokenize)[1] is False and len(calls) == 2  # another key
    stored = sorted(folder.glob("*.safetensors"))
    assert len(stored) == 2
    for path in stored:
        path.write_bytes(path.read_bytes()[:100])  # torn
    again, hit = cache.get(file_digest(data), tokenize)
    assert not hit and again.tokens == first.tokens and len(calls) == 3
    assert cache.get(file_digest(data), tokenize)[1]  # rewritten whole


def test_validations_in_the_background_record_what_the_foreground_does(workspace, monkeypatch):
    """On a CPU with spare cores a validation that cannot stop the run runs beside training: every number it
    leaves (val_loss at each step, train losses, the best step, best and final adapters) is the foreground's."""
    import orjson

    from farensed.engine.runner import run_spec
    from farensed.engine.stopping import EarlyStopping
    from farensed.engine.validation import background_possible
    from tests.helpers import spec_with, write_spec

    if not background_possible():
        pytest.skip("validations run beside training only on a CPU with two cores or more")

    def run(name: str, foreground: bool) -> Path:
        with monkeypatch.context() as patched:
            if foreground:  # as if every validation might stop the run
                patched.setattr(EarlyStopping, "could_stop_next", lambda self: True)
            spec = spec_with(name=name, eval_every=3, save_every=8, early_stopping={"patience": 3, "min_delta": 0})
            assert run_spec(write_spec(workspace, spec, f"{name}.json"), workspace) == 0
        return workspace / "checkpoints_qlora" / name

    fore, back = run("fore", True), run("back", False)
    timings = [orjson.loads((d / "timings.json").read_bytes())[0] for d in (fore, back)]
    assert timings[0]["validations_in_background"] == 0 and timings[1]["validations_in_background"] > 3
    keys = ("step", "loss", "val_loss", "train_loss", "gap", "band")
    records = [
        [{k: r.get(k) for k in keys} for r in orjson.loads((d / "training_metrics.json").read_bytes())]
        for d in (fore, back)
    ]
    assert records[0] == records[1] and sum(r["val_loss"] is not None for r in records[0]) > 5
    assert safetensors_equal(fore / "adapters/adapters.safetensors", back / "adapters/adapters.safetensors")
    states = [orjson.loads((d / "training_state.json").read_bytes()) for d in (fore, back)]
    assert states[0]["early_stopping"] == states[1]["early_stopping"] and states[0]["step"] == states[1]["step"]
    last = states[0]["checkpoint"]
    assert safetensors_equal(fore / last / "adapters.safetensors", back / last / "adapters.safetensors")


def safetensors_equal(a: Path, b: Path) -> bool:
    import mlx.core as mx

    x, y = mx.load(str(a)), mx.load(str(b))
    return x.keys() == y.keys() and all(mx.array_equal(x[k], y[k]).item() for k in x)
