"""`model` as a Hugging Face Hub id, resolved from a pre-populated local HF cache (no network here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import orjson
import pytest

from tests.helpers import child_env, run_cli, write_spec

REPO_ID = "farense/tiny-mistral-4bit"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hf_home(tmp_path, tiny_model, monkeypatch):
    """$HF_HOME/hub/models--farense--tiny-mistral-4bit/snapshots/<rev>/ + refs/main, as huggingface_hub lays it out."""
    home = tmp_path / "hf"
    repo = home / "hub" / ("models--" + REPO_ID.replace("/", "--"))
    shutil.copytree(tiny_model, repo / "snapshots" / REVISION)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    monkeypatch.setenv("HF_HOME", str(home))
    return home


def test_hub_id_trains_from_the_cache_and_mlx_lm_generate_loads_the_adapters(workspace, hf_home):
    spec = {
        "name": "t",
        "model": REPO_ID,
        "data": {"train": "data/demo/train.jsonl", "valid": "data/demo/valid.jsonl", "test": "data/demo/valid.jsonl"},
        "lora": {"rank": 4, "alpha": 16, "layers": 2},
        "batch_size": 4,
        "grad_accumulation": 2,
        "learning_rate": 2e-3,
        "iters": 10,
        "max_seq_length": 128,
        "eval_every": 10,
        "save_every": 10,
        "val_samples": 16,
        "evaluate": False,
    }
    proc = run_cli(workspace, "run", str(write_spec(workspace, spec)))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert not (workspace / REPO_ID).exists()
    result = orjson.loads((workspace / "checkpoints_qlora/t/test_results.json").read_bytes())
    assert result["test_ppl"] == pytest.approx(2.718281828 ** result["test_loss"]) and result["examples"] > 0
    assert f"Test loss {result['test_loss']:.3f}, Test ppl {result['test_ppl']:.3f}." in proc.stdout
    generate = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "generate", "--model", REPO_ID, "--adapter-path", str(workspace / "output/t")]
        + ["--prompt", "Onde fica a Sé de Faro?", "--max-tokens", "8"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert generate.returncode == 0, generate.stdout[-2000:] + generate.stderr[-2000:]
    assert "Generation:" in generate.stdout or "tokens-per-sec" in generate.stdout


def test_hub_id_missing_offline_is_one_line_at_submit(spec_workspace, hf_home):
    spec = {"name": "t", "model": "farense/nao-existe", "data": {"train": "data/demo/train.jsonl", "valid": "x"}}
    proc = run_cli(spec_workspace, "submit", str(write_spec(spec_workspace, spec)))
    assert proc.returncode == 2
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and "o modelo 'farense/nao-existe' não está na cache do Hugging Face" in lines[0]
    assert "HF_HUB_OFFLINE=1" in lines[0] and str(hf_home) in lines[0]
    assert not any((spec_workspace / "jobs").glob("[0-9]*"))


def test_the_engine_does_not_force_offline_mode(monkeypatch):
    from farensed.engine.runner import configure_environment

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    configure_environment()
    assert "HF_HUB_OFFLINE" not in os.environ and "TRANSFORMERS_OFFLINE" not in os.environ
