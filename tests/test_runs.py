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
    # One epoch convention: 0-based in files and JSON, 1-based on the console (`Época 2/2`, the gap table).
    last = gap["validations"][-1]
    assert last["epoch"] == 1 and (ws / "checkpoints_qlora/t/checkpoint_epoch1_step80").is_dir()
    table = invoke(ws, "gap", "t").output.splitlines()
    row = next(line.split() for line in table if line.strip().startswith("80 "))
    assert row[:2] == ["80", "2"]


def test_success_criteria_are_checked_at_the_end_of_a_run(reference_run, fresh_copy):
    from tests.helpers import run_cli, write_spec

    ws = fresh_copy(reference_run, "ok")
    spec = write_spec(ws, spec_with(success={"gap_max": 10.0, "loss_drop": 0.99}))
    proc = run_cli(ws, "run", str(spec))
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "Alteração aceite ao retomar: success" in proc.stdout and "CRITÉRIOS DE SUCESSO" in proc.stdout
    assert "✅ gap_max: gap no melhor modelo" in proc.stdout and "❌ loss_drop: loss de treino caiu" in proc.stdout
    check = invoke(ws, "check", "t")
    assert check.exit_code == 1 and "✅ gap_max" in check.output and "❌ loss_drop" in check.output


def test_tail_follows_a_run_made_without_the_queue(workspace):
    import subprocess

    from tests.helpers import child_env, cli_cmd, metric_lines, start_cli, wait_for, write_spec

    spec = write_spec(workspace, spec_with(epochs=1))
    run = start_cli(workspace, "run", str(spec))
    wait_for(lambda: metric_lines(workspace / "checkpoints_qlora/t") >= 1, proc=run)
    cmd = cli_cmd(workspace, "tail", "t", "-n", "0", "--refresh", "0.2")
    tail = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=300)
    assert run.wait(timeout=300) == 0
    assert tail.returncode == 0 and "step 40/40 | época 1" in tail.stdout and "ANÁLISE FINAL" in tail.stdout


def test_a_failed_job_shows_its_reason_and_tail_does_not_show_the_previous_run(workspace):
    first = submit(workspace, spec_with(epochs=1, eval_every=20, save_every=20))
    assert run_burst(workspace).returncode == 0
    second = submit(workspace, spec_with(epochs=1, eval_every=20, save_every=20))
    with open(workspace / "data/demo/train.jsonl", "ab") as fh:  # the data change after submit
        fh.write(b'{"messages": [{"role": "user", "content": "Ola"}, {"role": "assistant", "content": "Ola!"}]}\n')
    assert run_burst(workspace).returncode == 0
    job = queue(workspace).get(second)
    assert (job.state, job.exit_code) == ("failed", 3)
    status = invoke(workspace, "status", str(second)).output
    reason = [line for line in status.splitlines() if line.startswith("erro:")]
    assert len(reason) == 1 and "data.train:" in reason[0] and "--fresh" in reason[0]
    assert f"log completo: farensectl logs {second}" in status and "Traceback" not in status
    assert as_json(workspace, "status", str(second))["reason"] == reason[0].removeprefix("erro:").strip()
    tail = invoke(workspace, "tail", str(second))
    assert tail.exit_code == 3 and "Status:" not in tail.output and "step " not in tail.output
    assert "erro: " in tail.output and f"farensectl logs {second}" in tail.output
    assert "Status: " in invoke(workspace, "tail", str(first)).output  # the job that trained it still shows it


def test_start_up_says_the_device_and_refuses_a_full_disk_before_training(workspace):
    import subprocess

    from tests.helpers import child_env, cli_cmd, write_spec

    spec = write_spec(workspace, spec_with(epochs=1))
    env = dict(child_env(), FARENSE_DISK_MARGIN_MB=str(10**9))
    proc = subprocess.run(cli_cmd(workspace, "run", str(spec)), capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1 and "Dispositivo: cpu (" in proc.stdout and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "espaço em disco insuficiente" in proc.stderr
    # nothing of the run written (the run lock beside it is runtime state, dropped with its holder)
    assert not (workspace / "checkpoints_qlora/t").exists() and not (workspace / "output").exists()


def test_eval_json_is_one_document_says_what_it_evaluates_reuses_and_force(reference_run, fresh_copy):
    import subprocess

    from tests.helpers import child_env, cli_cmd

    ws = fresh_copy(reference_run, "ev")
    lines = (ws / "data/demo/valid.jsonl").read_bytes().splitlines(keepends=True)[:3]
    (ws / "small.jsonl").write_bytes(b"".join(lines))
    spec_file = ws / "checkpoints_qlora/t/spec.json"
    spec = orjson.loads(spec_file.read_bytes())
    spec["data"]["valid"] = "small.jsonl"  # a short evaluation; the run folder's spec is what eval reads
    spec_file.write_bytes(orjson.dumps(spec))

    def ev(*args):
        cmd = cli_cmd(ws, "eval", "checkpoints_qlora/t", *args)
        return subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=300)

    proc = ev("--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = orjson.loads(proc.stdout)  # stdout is one JSON document; the banner and progress went to stderr
    assert doc["config"]["split"] == "valid" and doc["config"]["selection_bias"] is True
    assert doc["adapters"]["examples"] == 3 and "AVALIAÇÃO" in proc.stderr
    assert "Sem data.test: avalia-se no conjunto de validação" in proc.stderr and "otimistas" in proc.stderr
    report = orjson.loads((ws / "checkpoints_qlora/t/evaluation_report.json").read_bytes())
    assert "também escolheu os adapters" in report["config"]["note"]
    again = ev()
    assert again.returncode == 0 and "já foram avaliados com estes dados: resultados reutilizados" in again.stdout
    said = again.stdout + again.stderr  # reused at once: no model loaded, no empty progress bars, the same numbers
    assert "Avaliação (base)" not in said and f"F1 {report['adapters']['f1_mean']:.4f}" in said
    spec["data"]["test"] = "small.jsonl"
    spec_file.write_bytes(orjson.dumps(spec))
    forced = ev("--force", "--json")
    assert forced.returncode == 0 and "--force: avaliação anterior guardada" in forced.stderr
    assert orjson.loads(forced.stdout)["config"]["split"] == "test" and "Avaliação em data.test" in forced.stderr
    assert "reutilizados" not in forced.stderr


def test_a_cancelled_job_log_points_at_retry(workspace):
    import signal

    from tests.helpers import metric_lines, wait_for
    from tests.test_daemon import start_daemon

    job_id = submit(workspace, spec_with(epochs=2))
    daemon = start_daemon(workspace)
    try:
        wait_for(lambda: metric_lines(workspace / "checkpoints_qlora/t") >= 4, timeout=120)
        queue(workspace).cancel(job_id)
        wait_for(lambda: queue(workspace).get(job_id).state == "cancelled", timeout=120)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    log = (workspace / "jobs" / str(job_id) / "log").read_text()
    assert f"farensectl retry {job_id}" in log and "retoma com o mesmo comando" not in log
