"""The tiny model the project builds itself: real mlx-lm model, 4-bit, loads and generates."""

from __future__ import annotations

import subprocess
import sys

from farensed.demo.data import demo_examples, write_demo_data
from farensed.demo.tinymodel import build_tiny_model, is_valid
from tests.helpers import child_env


def test_tiny_model_loads_is_quantized_and_generates(tiny_model):
    import mlx.nn as nn
    from mlx_lm import generate, load

    model, tokenizer = load(str(tiny_model))
    quantized = [m for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear)]
    assert len(quantized) >= 14  # 7 projections x 2 layers (+ lm_head)
    assert all(m.bits == 4 for m in quantized)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Onde fica a Sé de Faro?"}], add_generation_prompt=True
    )
    text = generate(model, tokenizer, prompt=prompt, max_tokens=16)
    assert isinstance(text, str) and len(text.strip()) > 0


def test_build_is_idempotent(tiny_model):
    before = (tiny_model / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(tiny_model) == tiny_model
    assert (tiny_model / "model.safetensors").stat().st_mtime_ns == before
    assert is_valid(tiny_model)


def test_invalid_model_folder_is_rebuilt(tmp_path, tiny_model):
    import shutil

    target = tmp_path / "m"
    shutil.copytree(tiny_model, target)
    (target / "farense_model.json").write_text("{torn")
    assert not is_valid(target)


def test_mlx_lm_generate_cli_runs_on_the_tiny_model(tiny_model):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlx_lm",
            "generate",
            "--model",
            str(tiny_model),
            "--prompt",
            "Olá",
            "--max-tokens",
            "8",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_demo_data_is_deterministic_chat_in_portuguese(tmp_path):
    a = write_demo_data(tmp_path / "a")
    b = write_demo_data(tmp_path / "b")
    assert a["train"].read_bytes() == b["train"].read_bytes()
    train, valid = demo_examples()
    assert len(train) >= 150 and len(valid) >= 40
    assert all([m["role"] for m in ex["messages"]] == ["system", "user", "assistant"] for ex in train + valid)
    assert any("Faro" in ex["messages"][2]["content"] for ex in train)
    train_questions = {ex["messages"][1]["content"] for ex in train}
    assert not train_questions & {ex["messages"][1]["content"] for ex in valid}
