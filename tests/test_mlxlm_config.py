"""mlx_lm lora YAML configs wherever a spec goes: run, submit, and `spec --from` (mlx-lm's own example config)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from farensed.cli.main import cli
from farensed.spec.jobspec import parse_spec
from farensed.spec.mlxlm import MLX_DEFAULTS, read_config
from tests.helpers import child_env, run_cli
from tests.test_spec import snapshot

EXAMPLE = Path(__file__).parent / "fixtures" / "lora_config.yaml"  # mlx-lm's example, paths adapted


def test_mlx_defaults_table_matches_mlx_lm_own():
    from mlx_lm.lora import CONFIG_DEFAULTS

    for key, value in MLX_DEFAULTS.items():
        assert CONFIG_DEFAULTS[key] == value, key


def test_example_config_maps_onto_an_equivalent_spec():
    spec = parse_spec(read_config(EXAMPLE))
    assert (spec.name, spec.model, spec.optimizer, spec.fine_tune_type) == (
        "lora_config",
        "models/tiny-mistral-4bit",
        "adamw",
        "lora",
    )
    assert (spec.iters, spec.batch_size, spec.learning_rate, spec.val_batches, spec.eval_every) == (
        1000,
        4,
        1e-5,
        25,
        200,
    )
    assert (spec.lora.rank, spec.lora.scale, spec.lora.alpha, spec.lora.dropout, spec.lora.layers) == (
        8,
        20.0,
        None,
        0.0,
        16,
    )
    assert spec.lora.keys == ["self_attn.q_proj", "self_attn.v_proj"]
    assert (spec.mask_prompt, spec.early_stopping, spec.evaluate, spec.data.test) == (False, None, False, None)
    assert spec.data.train == "data/demo/train.jsonl" and spec.grad_accumulation == 1


def _yaml(workspace: Path, text: str) -> Path:
    path = workspace / "cfg.yaml"
    path.write_text(EXAMPLE.read_text() + "\n" + text)
    return path


BAD_YAML = [
    ("report-to-swanlab", "report_to: swanlab\n", "report_to: 'swanlab' desconhecido"),  # wandb only
    ("unknown-key", "learning_rat: 1e-4\n", "chave desconhecida 'learning_rat' (quis dizer 'learning_rate'?)"),
    ("unknown-lora-key", None, "lora_parameters: chave desconhecida 'rnak'"),
    ("unreadable", "model: [unclosed\n", "YAML inválido na linha"),
    ("dpo", None, "training_mode: 'dpo' não é suportado"),
    ("hf-dataset", "hf_dataset:\n  name: billsum\n", "hf_dataset não é suportado"),
    ("bad-optimizer", None, "optimizer: 'adamy' desconhecido"),
]
REPLACE = {
    "unknown-lora-key": ("  rank: 8", "  rnak: 8"),
    "dpo": ("training_mode: normal", "training_mode: dpo"),
    "bad-optimizer": ("optimizer: adamw", "optimizer: adamy"),
}


@pytest.mark.parametrize("case,extra,expected", BAD_YAML, ids=[c[0] for c in BAD_YAML])
def test_bad_yaml_is_one_line_exit_2_nothing_written(spec_workspace, case, extra, expected):
    path = spec_workspace / "cfg.yaml"
    text = EXAMPLE.read_text()
    if case in REPLACE:
        text = text.replace(*REPLACE[case])
    path.write_text(text + (extra or ""))
    before = snapshot(spec_workspace)
    for args in (["run", str(path)], ["submit", str(path)], ["spec", "--from", str(path)]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, (args, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and str(path) in lines[0], result.output
        assert snapshot(spec_workspace) == before


def test_example_config_trains_through_run_and_the_same_job_through_submit(workspace):
    config = workspace / "lora_config.yaml"
    shutil.copyfile(EXAMPLE, config)
    printed = CliRunner().invoke(cli, ["spec", "--from", str(config)])
    assert printed.exit_code == 0, printed.output
    proc = run_cli(workspace, "run", str(config), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:]
    run_dir = workspace / "checkpoints_qlora/lora_config"
    records = orjson.loads((run_dir / "training_metrics.json").read_bytes())
    assert records[-1]["step"] == 1000 and records[-1]["learning_rate"] == pytest.approx(1e-5)
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    assert len(vals) == 5 and vals[-1] < vals[0]
    adapter_config = orjson.loads((workspace / "output/lora_config/adapter_config.json").read_bytes())
    assert adapter_config["lora_parameters"]["keys"] == ["self_attn.q_proj", "self_attn.v_proj"]
    import mlx.core as mx

    adapters = mx.load(str(workspace / "output/lora_config/adapters.safetensors"))
    assert adapters and {k.split(".")[-2] for k in adapters} == {"q_proj", "v_proj"}  # lora_parameters.keys only

    # submit: the queued spec.json is exactly `spec --from`'s JSON, and the daemon runs it as the same job
    result = CliRunner().invoke(cli, ["submit", str(config)])
    assert result.exit_code == 0, result.output
    job_id = int(result.output.split()[0])
    stored = orjson.loads((workspace / "jobs" / str(job_id) / "spec.json").read_bytes())
    assert stored == orjson.loads(printed.output)
    daemon = subprocess.run(
        [sys.executable, "-m", "farensed.queue.main", "--home", str(workspace), "--burst", "--poll", "0.1"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=600,
    )
    assert daemon.returncode == 0, daemon.stdout[-2000:] + daemon.stderr[-2000:]
    job = orjson.loads((workspace / "jobs" / str(job_id) / "job.json").read_bytes())
    assert job["state"] == "done", job
    log = (workspace / "jobs" / str(job_id) / "log").read_text()
    assert "Treino já terminado" in log  # same name, same fingerprint: the run above is this job's run


def test_example_schedule_and_optimizer_config_blocks_uncommented_read_as_mlx_lm_reads_them(tmp_path):
    text = EXAMPLE.read_text()
    for line in ("optimizer_config:", "  adamw:", "    betas", "    eps", "    weight_decay", "    bias_correction"):
        text = text.replace("# " + line, line, 1)
    for line in ("lr_schedule:", "  name:", "  warmup:", "  warmup_init:", "  arguments:"):
        text = text.replace("#" + line, line, 1)
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    spec = parse_spec(read_config(path))
    assert spec.lr_schedule == {
        "name": "cosine_decay",
        "warmup": 100,
        "warmup_init": 1e-7,
        "arguments": [1e-5, 1000, 1e-7],
    }
    assert spec.optimizer_config == {
        "adamw": {"betas": [0.9, 0.98], "eps": 1e-6, "weight_decay": 0.05, "bias_correction": True}
    }
    assert spec.resume_fingerprint()["lr_schedule"]["warmup_init"] == 1e-7
    from farensed.engine.optim import build_optimizer

    optimizer = build_optimizer(spec)  # mlx's AdamW takes every argument of mlx-lm's example
    assert optimizer.weight_decay == 0.05 and optimizer.learning_rate.item() == pytest.approx(1e-7)
