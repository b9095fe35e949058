"""`fuse`: output/<name>/fused/ by mlx-lm's fuse after training, a resumable step (a kill redoes only the fuse)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys

from tests.helpers import assert_same_adapters, child_env, run_cli, start_cli, wait_for, write_spec

SPEC = {
    "name": "t",
    "model": "models/tiny-mistral-4bit",
    "data": {"train": "data/demo/train.jsonl", "valid": "data/demo/valid.jsonl"},
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
    "fuse": True,
}


def test_fused_model_generates_and_a_kill_during_the_fuse_redoes_only_the_fuse(workspace):
    import mlx.core as mx

    spec = write_spec(workspace, SPEC)
    proc = run_cli(workspace, "run", str(spec))
    assert proc.returncode == 0, proc.stdout[-3000:]
    fused = workspace / "output/t/fused"
    assert "✓ Modelo fundido: output/t/fused" in proc.stdout
    weights = mx.load(str(fused / "model.safetensors"))
    base = mx.load(str(workspace / "models/tiny-mistral-4bit/model.safetensors"))
    key = "model.layers.1.self_attn.q_proj.weight"
    assert not mx.array_equal(weights[key], base[key]).item()  # the adapters are in the weights now
    assert "lora_a" not in " ".join(weights)
    generate = subprocess.run(
        [sys.executable, "-m", "mlx_lm", "generate", "--model", str(fused), "--prompt", "Onde fica a Sé de Faro?"]
        + ["--max-tokens", "8"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert generate.returncode == 0, generate.stdout[-2000:] + generate.stderr[-2000:]
    assert "Generation:" in generate.stdout

    first = workspace / "first_fused.safetensors"
    shutil.copyfile(fused / "model.safetensors", first)
    shutil.rmtree(fused)  # as if the job had been killed before its fuse
    proc = start_cli(workspace, "run", str(spec))
    wait_for(lambda: any((workspace / "output/t").glob(".fused.tmp-*")), proc=proc, interval=0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not fused.exists()  # nothing half-written where the user looks

    again = run_cli(workspace, "run", str(spec))
    assert again.returncode == 0, again.stdout[-3000:]
    assert "Treino já terminado" in again.stdout and "INICIANDO TREINO" not in again.stdout
    assert not any((workspace / "output/t").glob(".fused.tmp-*"))
    assert_same_adapters(first, fused / "model.safetensors")
