"""Resume accepts changes that keep the past trajectory: more patience, more epochs, keep_checkpoints, evaluate."""

from __future__ import annotations

import orjson

from tests.helpers import assert_same_adapters, run_cli, spec_with, write_spec
from tests.test_daemon import queue, run_burst, submit

RUN = "checkpoints_qlora/t"
OVERFIT = dict(
    lora={"rank": 8, "alpha": 16, "dropout": 0.0, "layers": 2},
    learning_rate=1e-2,
    epochs=4,
    eval_every=8,
    save_every=8,
)


def _metrics(root):
    from farensed.analysis.metrics import deterministic

    return [deterministic(r) for r in orjson.loads((root / RUN / "training_metrics.json").read_bytes())]


def test_early_stop_then_more_patience_continues_from_the_last_checkpoint(workspace, fresh_copy):
    patient = fresh_copy(workspace, "patient")  # the same inputs: a run with the larger patience from the start
    stopped = submit(workspace, spec_with(early_stopping={"patience": 2, "min_delta": 0.001}, **OVERFIT))
    assert run_burst(workspace).returncode == 0
    first = orjson.loads((workspace / RUN / "training_summary.json").read_bytes())
    assert queue(workspace).get(stopped).state == "done" and first["stop_reason"] == "early_stopping"
    before = _metrics(workspace)

    again = submit(workspace, spec_with(early_stopping={"patience": 4, "min_delta": 0.001}, **OVERFIT))
    assert run_burst(workspace).returncode == 0
    log = (workspace / "jobs" / str(again) / "log").read_text()
    assert "Alteração aceite ao retomar: early_stopping" in log and '"patience":2' in log and '"patience":4' in log
    assert f"_step{first['steps_run']} (step {first['steps_run']}/" in log and "Treino já terminado" not in log
    after = _metrics(workspace)
    assert len(after) > len(before) and after[: len(before)] == before  # the old metrics, continued
    second = orjson.loads((workspace / RUN / "training_summary.json").read_bytes())
    assert second["steps_run"] > first["steps_run"]

    spec = write_spec(patient, spec_with(early_stopping={"patience": 4, "min_delta": 0.001}, **OVERFIT))
    assert run_cli(patient, "run", str(spec)).returncode == 0
    assert _metrics(patient) == after  # exactly as a run that had the larger patience from the start
    assert_same_adapters(
        patient / RUN / "adapters/adapters.safetensors", workspace / RUN / "adapters/adapters.safetensors"
    )


def test_more_epochs_continue_a_finished_run_exactly_and_other_changes_are_named(workspace, reference_run):
    one = write_spec(workspace, spec_with(epochs=1, keep_checkpoints=3))
    assert run_cli(workspace, "run", str(one)).returncode == 0
    two = write_spec(workspace, spec_with(epochs=2, evaluate=False), "two.json")  # TEST_SPEC = the reference
    proc = run_cli(workspace, "run", str(two))
    assert proc.returncode == 0, proc.stdout[-2000:]
    out = proc.stdout
    assert "Dispositivo: cpu (" in out and "| memória: " in out and "Disco: " in out  # start-up facts
    assert "Alteração aceite ao retomar: epochs 1 → 2" in out and "keep_checkpoints 3 → 2" in out
    assert "A corrida terminada continua: step 40 → 80" in out and "A retomar de checkpoint_epoch0_step40" in out
    assert_same_adapters(
        reference_run / RUN / "adapters/adapters.safetensors", workspace / RUN / "adapters/adapters.safetensors"
    )
    assert_same_adapters(reference_run / "output/t/adapters.safetensors", workspace / "output/t/adapters.safetensors")
    ref = [{k: v for k, v in r.items() if k != "total_steps"} for r in _metrics(reference_run)]
    assert [{k: v for k, v in r.items() if k != "total_steps"} for r in _metrics(workspace)] == ref
    fewer = write_spec(workspace, spec_with(epochs=1), "fewer.json")
    proc = run_cli(workspace, "run", str(fewer))
    assert proc.returncode == 3 and "já treinou 80" in proc.stdout and "--fresh" in proc.stdout
