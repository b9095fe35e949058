"""Runs are first-class: every reader takes a job id, a run name or a run folder; a job keeps its own run."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from farensed.cli.main import cli
from tests.helpers import spec_with
from tests.test_daemon import queue, run_burst, submit


def invoke(root, *args):
    return CliRunner().invoke(cli, ["--home", str(root), *args])


def as_json(root, *args):
    result = invoke(root, *args, "--json")
    return orjson.loads(result.stdout)


def test_fresh_keeps_the_old_job_on_its_own_run_and_a_seed_folder_compares(workspace):
    first = submit(workspace, spec_with(epochs=1, eval_every=20, save_every=20))
    assert run_burst(workspace).returncode == 0
    second = submit(workspace, spec_with(epochs=1, eval_every=10, save_every=20), fresh=True)
    assert run_burst(workspace).returncode == 0
    assert queue(workspace).get(second).state == "done"
    old, new = queue(workspace).get(first), queue(workspace).get(second)
    assert old.run_dir.startswith("checkpoints_qlora/t.old-") and new.run_dir == "checkpoints_qlora/t"
    assert [p.name.startswith("t.old-") for p in (workspace / "output").iterdir()].count(True) == 1  # output too
    assert [v["step"] for v in as_json(workspace, "gap", str(first))["validations"]] == [20, 40]
    assert [v["step"] for v in as_json(workspace, "gap", str(second))["validations"]] == [10, 20, 30, 40]
    assert as_json(workspace, "status", str(first))["run_dir"] == str(workspace / old.run_dir)
    by_name = as_json(workspace, "gap", "t")  # the name: today's run, tied to the job that trained it
    assert by_name["id"] == second and len(by_name["validations"]) == 4

    # The seed's V1 backup: only training_metrics.json, in the seed's record shape, made from job 2's records.
    records = orjson.loads((workspace / "checkpoints_qlora/t/training_metrics.json").read_bytes())
    seed = [{k: r[k] for k in ("epoch", "step", "loss", "val_loss", "learning_rate") if k in r} for r in records]
    backup = workspace / "checkpoints_qlora_v1_backup"
    backup.mkdir()
    (backup / "training_metrics.json").write_bytes(orjson.dumps(seed))
    table = as_json(workspace, "compare", "checkpoints_qlora_v1_backup", str(second))
    a, b = table["jobs"]
    assert (a["id"], a["seed_era"], b["id"]) == (None, True, second)
    for key in ("final_loss", "best_val_loss", "gap_mean", "gap_max", "gap_min", "steps_run", "epochs_run"):
        assert a[key] == pytest.approx(b[key], abs=1e-9), key  # the seed's gap recomputed the farense way
    assert a["status"] == b["status"] and [v["criterion"] for v in a["success"]] == [
        "loss_drop",
        "val_improves",
        "gap_max",
        "f1_min",
    ]
    assert [v["passed"] for v in a["success"]][:3] == [v["passed"] for v in b["success"]][:3]
    text = invoke(workspace, "compare", "checkpoints_qlora_v1_backup", str(second)).output
    assert "checkpoints_qlora_v1_backup" in text and f"#{second}" in text and "gap_max" in text
    assert sorted(p.name for p in backup.iterdir()) == ["training_metrics.json"]  # read-only


def test_a_run_made_without_the_queue_by_name_and_by_path(reference_run, fresh_copy):
    ws = fresh_copy(reference_run, "plain")
    status = as_json(ws, "status", "t")
    assert status["id"] is None and status["finished"] is True and status["progress"]["step"] == 80
    gap = as_json(ws, "gap", "checkpoints_qlora/t")
    assert gap["name"] == "t" and len(gap["validations"]) == 10
    tail = invoke(ws, "tail", "t", "--no-follow", "-n", "2")
    assert tail.exit_code == 0 and tail.output.splitlines()[-1].startswith("step 80/80 | época 2")
    png = ws / "checkpoints_qlora/t/training_v2_results.png"
    png.unlink()
    assert invoke(ws, "plot", "t").output.strip() == str(png) and png.read_bytes()[:4] == b"\x89PNG"
    assert invoke(ws, "logs", "t").exit_code == 4
