"""The training engine on the real tiny model, in real processes, with real signals."""

from __future__ import annotations

import random
import signal
import subprocess
import sys

import orjson

from farensed import EXIT_RESUMABLE
from tests.helpers import (
    TEST_SPEC,
    assert_same_adapters,
    child_env,
    deterministic_metrics,
    deterministic_summary,
    kill_at_record,
    run_cli,
    spec_with,
    write_spec,
)

RUN = "checkpoints_qlora/t"


def assert_same_run(a, b):
    assert_same_adapters(a / "output/t/adapters.safetensors", b / "output/t/adapters.safetensors")
    assert_same_adapters(a / RUN / "adapters/adapters.safetensors", b / RUN / "adapters/adapters.safetensors")
    assert deterministic_metrics(a / RUN) == deterministic_metrics(b / RUN)
    assert deterministic_summary(a / RUN) == deterministic_summary(b / RUN)


def test_uninterrupted_run_learns_and_writes_every_file(reference_run):
    run = reference_run / RUN
    for name in (
        "adapters/adapters.safetensors",
        "adapters/adapter_config.json",
        "training_state.json",
        "training_metrics.json",
        "training_metrics.jsonl",
        "training_metrics.csv",
        "training_summary.json",
        "training_v2_results.png",
    ):
        assert (run / name).is_file(), name
    assert (reference_run / "output/t/adapters.safetensors").is_file()
    assert len(sorted(run.glob("checkpoint_epoch*_step*"))) == TEST_SPEC["keep_checkpoints"]
    summary = orjson.loads((run / "training_summary.json").read_bytes())
    assert summary["final_val_loss"] < summary["first_val_loss"]
    assert summary["status"] in ("EXCELENTE", "BOM", "MODERADO", "CRÍTICO")
    records = orjson.loads((run / "training_metrics.json").read_bytes())
    assert records[-1]["step"] == summary["total_steps"] == 80
    vals = [r for r in records if "val_loss" in r]
    assert all(abs(r["gap"] - (r["val_loss"] - r["train_loss"])) < 1e-12 for r in vals)
    assert {"step", "epoch", "loss", "learning_rate", "tokens_per_second", "peak_memory_gb"} <= set(records[0])


def test_sigkill_at_three_random_moments_resumes_exactly(workspace, reference_run):
    spec = write_spec(workspace, TEST_SPEC)
    rng = random.Random(1234)
    marks = sorted(rng.sample(range(3, 38), 3))  # of the 40 metrics records (one per optimizer update)
    for mark in marks:
        code = kill_at_record(workspace, spec, mark)
        assert code == -signal.SIGKILL
    proc = run_cli(workspace, "run", str(spec))
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "A retomar de checkpoint_epoch" in proc.stdout
    assert_same_run(reference_run, workspace)


def test_sigterm_checkpoints_exits_75_then_resumes_exactly(workspace, reference_run, tmp_path):
    spec = write_spec(workspace, TEST_SPEC)
    log = tmp_path / "first.log"
    code = kill_at_record(workspace, spec, 13, sig=signal.SIGTERM, log=log)
    assert code == EXIT_RESUMABLE, log.read_text()[-2000:]
    state = orjson.loads((workspace / RUN / "training_state.json").read_bytes())
    assert state["finished"] is False and state["step"] % TEST_SPEC["grad_accumulation"] == 0
    proc = run_cli(workspace, "run", str(spec))
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert_same_run(reference_run, workspace)
    assert "Tokens em cache" in proc.stdout  # the resume skipped tokenization
    first, second = orjson.loads((workspace / RUN / "timings.json").read_bytes())
    assert (first["resumed"], first["tokens_cached"], second["resumed"], second["tokens_cached"]) == (
        False,
        False,
        True,
        True,
    )
    assert second["from_step"] == state["step"] and 0 < second["startup_s"] < second["marks_s"]["loop_end"]
    assert first["validations"] + second["validations"] == 10  # every 8 of 80 steps


def test_damaged_newest_checkpoint_falls_back_and_says_so(workspace, reference_run):
    spec = write_spec(workspace, TEST_SPEC)
    assert kill_at_record(workspace, spec, 30, sig=signal.SIGTERM) == EXIT_RESUMABLE
    ckpts = sorted((workspace / RUN).glob("checkpoint_*"), key=lambda p: int(p.name.rsplit("step", 1)[1]))
    newest = ckpts[-1]
    data = (newest / "adapters.safetensors").read_bytes()
    (newest / "adapters.safetensors").write_bytes(data[: len(data) // 2])  # a torn write
    proc = run_cli(workspace, "run", str(spec))
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert f"Checkpoint {newest.name} danificado" in proc.stdout
    assert f"A retomar de {ckpts[-2].name}" in proc.stdout
    assert_same_run(reference_run, workspace)


def test_changed_spec_is_refused_and_fresh_moves_the_old_run_aside(workspace):
    spec = write_spec(workspace, TEST_SPEC)
    assert kill_at_record(workspace, spec, 6, sig=signal.SIGTERM) == EXIT_RESUMABLE
    changed = write_spec(workspace, spec_with(lora=dict(TEST_SPEC["lora"], rank=8)), "changed.json")
    proc = run_cli(workspace, "run", str(changed))
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("Erro: ")
    assert "lora.rank: 4 → 8" in proc.stdout and "--fresh" in proc.stdout
    before = sorted(p.name for p in (workspace / RUN).iterdir())
    proc = run_cli(workspace, "run", str(changed), "--fresh")
    assert proc.returncode == 0, proc.stdout[-2000:]
    aside = [p for p in (workspace / "checkpoints_qlora").iterdir() if p.name.startswith("t.old-")]
    assert len(aside) == 1 and sorted(p.name for p in aside[0].iterdir()) == before


def test_finished_run_is_not_trained_again(fresh_copy, reference_run):
    ws = fresh_copy(reference_run, "again")
    before = (ws / RUN / "training_state.json").read_bytes()
    summary = orjson.loads((ws / RUN / "training_summary.json").read_bytes())
    proc = run_cli(ws, "run", str(ws / "job.json"))
    assert proc.returncode == 0
    assert "Treino já terminado" in proc.stdout and "ANÁLISE FINAL DE OVERFITTING" in proc.stdout
    assert (ws / RUN / "training_state.json").read_bytes() == before
    again = orjson.loads((ws / RUN / "training_summary.json").read_bytes())
    assert again["stop_reason"] == summary["stop_reason"] in ("completed", "early_stopping")


def test_overfitting_config_triggers_early_stopping_with_best_before_the_stop(workspace):
    # V1-style: no dropout, higher learning rate, many epochs, patience 2.
    spec = write_spec(
        workspace,
        spec_with(
            lora={"rank": 8, "alpha": 16, "dropout": 0.0, "layers": 2},
            learning_rate=1e-2,
            epochs=12,
            early_stopping={"patience": 2, "min_delta": 0.001},
            eval_every=8,
        ),
    )
    proc = run_cli(workspace, "run", str(spec))
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "EARLY STOPPING ATIVADO!" in proc.stdout
    summary = orjson.loads((workspace / RUN / "training_summary.json").read_bytes())
    assert summary["stop_reason"] == "early_stopping"
    assert summary["steps_run"] < summary["total_steps"]
    assert summary["best_step"] < summary["steps_run"]
    assert f"Melhor modelo: Época {summary['best_epoch'] + 1}, Step {summary['best_step']}" in proc.stdout
    best_ckpt_adapters = workspace / "output/t/adapters.safetensors"
    assert_same_adapters(best_ckpt_adapters, workspace / RUN / "adapters/adapters.safetensors")


def test_mlx_lm_generate_loads_the_final_adapters(reference_run):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlx_lm",
            "generate",
            "--model",
            str(reference_run / "models/tiny-mistral-4bit"),
            "--adapter-path",
            str(reference_run / "output/t"),
            "--prompt",
            "Onde fica a Sé de Faro?",
            "--max-tokens",
            "12",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "Generation:" in proc.stdout or "tokens-per-sec" in proc.stdout


def test_demo_command_trains_v2_demo_and_prints_the_gap_analysis(workspace):
    proc = run_cli(workspace, "demo")
    assert proc.returncode == 0, proc.stdout[-2000:]
    for text in (
        "CONFIGURATION - demo",
        "Época 1/3",
        "✅ Val Loss (step 12):",
        "✅ Melhor Val Loss:",
        "ANÁLISE FINAL DE OVERFITTING",
        "Status:",
        "Gap médio:",
        "Gap máximo:",
        "Gap mínimo:",
    ):
        assert text in proc.stdout, text
    assert "Sem melhoria (0/5)" not in proc.stdout  # an improvement is not followed by "no improvement"
    summary = orjson.loads((workspace / "checkpoints_qlora/demo/training_summary.json").read_bytes())
    assert summary["final_val_loss"] <= 0.7 * summary["first_val_loss"]
    assert (workspace / "jobs/examples/demo.json").is_file()


def test_demo_prepare_builds_inputs_and_trains_nothing(isolated_home, tiny_model):
    from click.testing import CliRunner

    from farensed.cli.main import cli
    from tests.conftest import make_workspace

    make_workspace(isolated_home, tiny_model)  # the model is reused (idempotent), data and spec are written
    (isolated_home / "data/demo/train.jsonl").unlink()
    result = CliRunner().invoke(cli, ["demo", "--prepare"])
    assert result.exit_code == 0, result.output
    assert (isolated_home / "data/demo/train.jsonl").is_file()
    spec = orjson.loads((isolated_home / "jobs/examples/demo.json").read_bytes())
    assert spec["model"] == "models/tiny-mistral-4bit" and spec["early_stopping"]["patience"] == 5
    assert not (isolated_home / "checkpoints_qlora").exists()
    assert (isolated_home / "jobs/examples/v1.json").is_file() and (isolated_home / "jobs/examples/v2.json").is_file()


def test_sequences_longer_than_max_seq_length_are_truncated_and_counted(workspace):
    """At 32 tokens every demo example is cut, and the prompts of 17 + 4 of them fill it: said, and trained on the
    rest (at 24 every prompt fills it: refused, the test below)."""
    spec = write_spec(workspace, spec_with(max_seq_length=32, epochs=1, eval_every=40, save_every=40))
    proc = run_cli(workspace, "run", str(spec))
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "212 exemplos mais longos que max_seq_length=32 foram truncados" in proc.stdout
    assert "data.train: 17 exemplos sem nenhum token da resposta dentro de max_seq_length=32" in proc.stdout
    assert "data.valid: 4 exemplos sem nenhum token da resposta" in proc.stdout


def test_a_run_whose_prompts_fill_max_seq_length_is_refused_not_a_nan_success(workspace):
    """max_seq_length 16 cuts every demo prompt before its answer: the loss would count nothing (NaN validation,
    adapters written, exit 0). The run stops at the start with one line naming the data and the key to change."""
    proc = run_cli(workspace, "run", str(write_spec(workspace, spec_with(name="cut", max_seq_length=16))))
    assert proc.returncode == 2, proc.stdout[-2000:]
    (line,) = [x for x in proc.stdout.splitlines() if "data.train: nenhum dos 160 exemplos" in x]
    assert "max_seq_length=16" in line and "Traceback" not in proc.stdout
    assert not (workspace / "output" / "cut").exists()  # nothing that looks like a result
