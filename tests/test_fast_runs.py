"""Naming runs, seed-era records, success criteria: fast tests (no training)."""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from farensed.analysis.records import seed_records
from farensed.analysis.success import SEED_CRITERIA, format_verdicts, verdicts
from farensed.cli.main import cli
from farensed.errors import QueueError
from farensed.queue.jobs import Queue
from farensed.storage.workspace import Workspace
from farensed.views.runref import resolve
from tests.helpers import spec_with, write_spec

# The seed's records: step, epoch, loss; validations add val_loss (no gap, no band).
SEED = [
    {"epoch": 0, "step": 10, "loss": 5.0},
    {"epoch": 0, "step": 20, "loss": 3.0, "val_loss": 3.5},
    {"epoch": 0, "step": 30, "loss": 2.0},
    {"epoch": 1, "step": 40, "loss": 1.6, "val_loss": 1.9},
    {"epoch": 1, "step": 50, "loss": 1.4, "val_loss": 2.0},
]


def write_seed_folder(path, records=SEED):
    path.mkdir(parents=True)
    (path / "training_metrics.json").write_bytes(orjson.dumps(records))
    return path


def test_seed_records_get_farense_gap_and_band():
    recs = seed_records(SEED)
    vals = [r for r in recs if r.get("val_loss") is not None]
    assert [round(v["train_loss"], 6) for v in vals] == [4.0, 1.8, 1.4]  # mean loss since the previous validation
    assert [round(v["gap"], 6) for v in vals] == [-0.5, 0.1, 0.6]
    assert [v["band"] for v in vals] == ["EXCELENTE", "BOM", "CRÍTICO"]


def test_verdicts_measure_each_seed_criterion():
    items = {v.criterion: v for v in verdicts(SEED_CRITERIA, seed_records(SEED), {"adapters": {"f1_mean": 0.95}})}
    assert list(items) == ["loss_drop", "val_improves", "gap_max", "f1_min"]
    assert items["loss_drop"].value == pytest.approx(1 - 1.4 / 5.0) and items["loss_drop"].passed
    assert items["val_improves"].value == pytest.approx(3.5 - 1.9) and items["val_improves"].passed
    assert items["gap_max"].value == pytest.approx(0.1) and items["gap_max"].passed  # gap at the best validation
    assert items["f1_min"].passed
    strict = verdicts({"gap_max": 0.05, "f1_min": 0.93}, seed_records(SEED), None)
    assert [v.passed for v in strict] == [False, False]
    text = format_verdicts(strict)
    assert text.splitlines() == [
        "❌ gap_max: gap no melhor modelo 0.1000 (< 0.05)",
        "❌ f1_min: F1: sem avaliação (farensectl eval)",
    ]


def test_check_command_on_a_seed_era_folder(isolated_home, tmp_path):
    folder = write_seed_folder(tmp_path / "checkpoints_qlora_v1_backup")
    runner = CliRunner()
    ok = runner.invoke(cli, ["check", str(folder), "--success", '{"gap_max": 0.15, "loss_drop": 0.6}'])
    assert ok.exit_code == 0, ok.output
    assert "✅ loss_drop: loss de treino caiu 72%" in ok.output and "✅ gap_max" in ok.output
    bad = runner.invoke(cli, ["check", str(folder), "--success", '{"gap_max": 0.05}', "--json"])
    doc = orjson.loads(bad.stdout)
    assert bad.exit_code == 1 and doc["passed"] is False and doc["verdicts"][0]["value"] == pytest.approx(0.1)
    seed = runner.invoke(cli, ["check", str(folder)])  # no spec: the seed's criteria, said so; F1 missing fails
    assert seed.exit_code == 1 and "critérios por omissão" in seed.output and "❌ f1_min" in seed.output
    # the F1 line tells the same story as `eval` on that folder: not evaluable, not "run farensectl eval"
    assert "pasta só com métricas, só leitura" in seed.output and "farensectl eval" not in seed.output
    typo = runner.invoke(cli, ["check", str(folder), "--success", '{"gap_mx": 0.1}'])
    assert typo.exit_code == 2 and "gap_max" in typo.output


def test_readers_take_a_seed_folder_read_only(isolated_home, tmp_path):
    folder = write_seed_folder(tmp_path / "old" / "checkpoints_qlora_v1_backup")
    before = sorted(p.name for p in folder.iterdir())
    runner = CliRunner()
    gap = orjson.loads(runner.invoke(cli, ["gap", str(folder), "--json"]).stdout)
    assert gap["status"] == "BOM" and gap["gap_max"] == pytest.approx(0.6) and gap["id"] is None
    out = runner.invoke(cli, ["plot", "old/checkpoints_qlora_v1_backup"])
    assert out.exit_code == 0 and out.output.strip() == str(
        tmp_path / "checkpoints_qlora_v1_backup-training_v2_results.png"
    )
    assert sorted(p.name for p in folder.iterdir()) == before  # nothing written into the seed's folder
    tail = runner.invoke(cli, ["tail", str(folder), "--no-follow", "-n", "5"])
    assert tail.exit_code == 0 and "pasta só com métricas" in tail.output
    assert [line.rsplit("melhor ", 1)[-1] for line in tail.output.splitlines()[2:]] == [
        "3.5000",
        "3.5000",
        "1.9000",
        "1.9000",
    ]
    ev = runner.invoke(cli, ["eval", str(folder)])
    assert ev.exit_code == 2 and "pasta só com métricas, só leitura" in ev.output  # bad input: exit 2
    logs = runner.invoke(cli, ["logs", str(folder)])
    assert logs.exit_code == 4 and "sem log" in logs.output


def test_a_damaged_seed_folder_is_read_without_a_traceback(isolated_home, tmp_path):
    """Values that are not numbers (a hand edit, another tool's file) are left out; the readers still answer."""
    folder = tmp_path / "old"
    folder.mkdir()
    records = [{"step": 1, "loss": "3.1"}, {"step": 2, "loss": 2.0}, {"step": "x", "loss": 1.5, "val_loss": [1]}]
    (folder / "training_metrics.json").write_bytes(orjson.dumps(records + [{"step": 4, "loss": 1.0, "val_loss": 1.2}]))
    runner = CliRunner()
    for args in (["gap", str(folder)], ["tail", str(folder), "--no-follow"], ["compare", str(folder), str(folder)]):
        result = runner.invoke(cli, args)
        assert result.exit_code == 0 and "Traceback" not in result.output, (args, result.output)
    assert orjson.loads(runner.invoke(cli, ["gap", str(folder), "--json"]).stdout)["gap_max"] == pytest.approx(
        1.2 - 1.5
    )  # window: 2.0, 1.5, 1.0


def test_run_references_resolve_one_documented_way(spec_workspace):
    ws = Workspace(spec_workspace)
    q = Queue(ws)
    first = q.submit(write_spec(spec_workspace, spec_with(name="2"), "a.json"))  # a run *named* "2"
    second = q.submit(write_spec(spec_workspace, spec_with(name="b"), "b.json"))
    (spec_workspace / "checkpoints_qlora" / "2").mkdir(parents=True)
    (spec_workspace / "checkpoints_qlora" / "2" / "spec.json").write_bytes(b"{}")
    assert resolve(ws, "2").job.id == second.id  # digits: always a job id
    by_folder = resolve(ws, "checkpoints_qlora/2")  # the run named "2": by its folder
    assert by_folder.job.id == first.id and by_folder.run_dir == spec_workspace / "checkpoints_qlora" / "2"
    assert resolve(ws, "b").job.id == second.id  # a name with no folder yet: its latest job
    assert resolve(ws, None).job.id == second.id
    assert resolve(ws, f"jobs/{first.id}").job.id == first.id  # a job's folder: that job, not a run folder
    with pytest.raises(QueueError, match="não é um id de job, um nome de corrida"):
        resolve(ws, "nope")
    result = CliRunner().invoke(cli, ["gap", "--help"])
    text = " ".join(result.output.split())  # as read, whatever the terminal's wrapping
    assert "Um RUN só de algarismos é sempre um id de job" in text and "Exemplo:" in result.output
    job = orjson.loads((spec_workspace / "jobs" / str(first.id) / "job.json").read_bytes())
    assert job["run_dir"] == "checkpoints_qlora/2"  # relative: a moved spec_workspace keeps working


def test_disk_check_needs_room_for_keep_checkpoints_plus_margin(tmp_path, monkeypatch):
    from farensed.engine.startup import check_disk, checkpoint_bytes, disk_needed
    from farensed.errors import FarenseError

    monkeypatch.setenv("FARENSE_DISK_MARGIN_MB", "0")
    assert disk_needed(1000, 3) == 4 * checkpoint_bytes(1000) + 2000
    assert check_disk(tmp_path / "not" / "yet", 1000, 3).startswith("Disco: ")  # the nearest existing folder
    monkeypatch.setenv("FARENSE_DISK_MARGIN_MB", str(10**9))  # a petabyte: more than any disk here
    with pytest.raises(FarenseError, match=r"^espaço em disco insuficiente em .*: .* livres, são precisos ~"):
        check_disk(tmp_path, 1000, 3)


def test_an_improvement_is_not_followed_by_no_improvement():
    from farensed.engine.console import validation_block
    from farensed.engine.stopping import EarlyStopping

    stopper = EarlyStopping(5, 0.001)
    improved = stopper.update(2.0, 8, 0)
    text = validation_block(8, 2.0, 0.01, "EXCELENTE", improved, stopper)
    assert "✅ Melhor Val Loss: 2.0000" in text and "Sem melhoria" not in text
    improved = stopper.update(2.1, 16, 0)
    assert "ℹ  Sem melhoria (1/5)" in validation_block(16, 2.1, 0.01, "EXCELENTE", improved, stopper)


def test_the_progress_bar_clock_restarts_after_the_compile_step():
    import io
    import time

    from tqdm import tqdm

    from farensed.engine.console import restart_clock

    bar = tqdm(total=100, file=io.StringIO(), mininterval=0)
    time.sleep(0.25)  # the first step: JIT compile
    bar.update(1)
    restarted = time.time()  # tqdm's clock
    restart_clock(bar)
    for _ in range(3):
        bar.update(1)
    info = bar.format_dict
    since = time.time() - restarted
    assert info["n"] == 4 and info["initial"] == 1 and info["elapsed"] <= since  # the compile is not in the rate
    bar.close()


def test_compare_time_over_attempts_and_steady_tokens_per_second():
    from farensed.analysis.compare import steady_tokens_per_second, training_time_s

    records = [
        {"step": 2, "loss": 3.0, "tokens_per_second": 10.0, "elapsed_s": 30.0},  # the JIT compile
        {"step": 4, "loss": 2.5, "tokens_per_second": 1000.0, "elapsed_s": 30.5},
        {"step": 6, "loss": 2.0, "tokens_per_second": 20.0, "elapsed_s": 40.0},  # a resume's compile
        {"step": 8, "loss": 1.5, "tokens_per_second": 1100.0, "elapsed_s": 40.4},
        {"step": 10, "loss": 1.4, "tokens_per_second": 1050.0, "elapsed_s": 40.8},
    ]
    assert training_time_s(records) == 40.8  # accumulated over every attempt (restored on resume)
    assert steady_tokens_per_second(records) == 1025.0


def test_the_training_png_marks_where_early_stopping_fired(tmp_path):
    from matplotlib.image import imread

    from farensed.analysis.plots import plot_training

    recs = seed_records(SEED)
    plain = imread(plot_training(recs, tmp_path / "plain.png"))
    marked = imread(plot_training(recs, tmp_path / "marked.png", early_stop_step=50))

    def red(img):
        return int(((img[..., 0] > 0.9) & (img[..., 1] < 0.15) & (img[..., 2] < 0.15)).sum())

    assert red(plain) == 0 and red(marked) > 100


def test_start_over_repoints_only_the_jobs_that_trained_the_old_run(spec_workspace):
    from farensed.queue.fresh import start_over

    ws = Workspace(spec_workspace)
    q = Queue(ws)
    ran, fresh, waiting = (q.submit(write_spec(spec_workspace, spec_with(), f"{n}.json")).id for n in "abc")
    q.update(ran, attempts=1, state="done")
    q.update(fresh, attempts=1, state="running")
    for folder in (ws.run_dir("t"), ws.output_dir("t")):
        folder.mkdir(parents=True)
    said = []
    moved = start_over(ws, "t", job_id=fresh, say=said.append)
    assert not ws.run_dir("t").exists() and not ws.output_dir("t").exists() and len(said) == 2
    assert q.get(ran).run_dir == str(moved["run"].relative_to(spec_workspace))  # job 1 keeps showing its own run
    assert q.get(fresh).run_dir == q.get(waiting).run_dir == "checkpoints_qlora/t"  # the new run
    assert moved["output"].name.startswith("t.old-") and moved["output"].is_dir()


def _state(step=40, total=80, finished=True, reason="completed", wait=0, in_epoch=40):
    return {
        "step": step,
        "total_steps": total,
        "finished": finished,
        "step_in_epoch": in_epoch,
        "steps_per_epoch": 40,
        "progress": {"stop_reason": reason},
        "early_stopping": {"wait": wait},
        "fingerprint": {"grad_accumulation": 2},
    }


def test_continuation_plan_names_accepted_changes_and_refuses_rewriting_the_past(tmp_path):
    from farensed.engine.continuation import plan
    from farensed.errors import ResumeError
    from farensed.spec.jobspec import parse_spec

    old = parse_spec(spec_with(epochs=1, keep_checkpoints=3))
    (tmp_path / "spec.json").write_bytes(orjson.dumps(old.to_dict()))
    new = parse_spec(spec_with(epochs=2, early_stopping={"patience": 8, "min_delta": 0.01}))
    cont = plan(new, tmp_path, _state(total=40), 80)
    assert cont.reopen and (cont.patience, cont.min_delta) == (8, 0.01)
    assert [line.split(":")[1].split()[0] for line in cont.lines[:3]] == [
        "early_stopping",
        "epochs",
        "keep_checkpoints",
    ]
    assert cont.lines[-1] == "↻ A corrida terminada continua: step 40 → 80"
    with pytest.raises(ResumeError, match="lr_schedule depende dele"):
        plan(new, tmp_path, _state(total=40), 80, uses_schedule=True)
    with pytest.raises(ResumeError, match="já treinou 40"):
        plan(new, tmp_path, _state(total=80), 20)
    stopped = _state(step=25, reason="early_stopping", wait=5, in_epoch=25)  # stopped between two updates
    with pytest.raises(ResumeError, match="a meio de uma atualização"):
        plan(new, tmp_path, stopped, 80)
    ended_mid_update = _state(step=25, total=25, in_epoch=25)  # an `iters` budget of 25 with grad_accumulation 2
    with pytest.raises(ResumeError, match="a meio de uma atualização"):
        plan(new, tmp_path, ended_mid_update, 80)
    still = parse_spec(spec_with(epochs=2, early_stopping={"patience": 5, "min_delta": 0.001}))
    assert not plan(still, tmp_path, dict(stopped, step=24, step_in_epoch=24), 80).reopen  # patience 5 still stops


def test_a_job_cancelled_before_it_ran_shows_none_of_the_run_a_later_job_trained(isolated_home):
    """Job 1 (cancelled while pending) and job 2 share a run name; job 2 trained the run: job 1 shows nothing."""
    from farensed.queue.job import Job

    q = Queue(Workspace(isolated_home))
    for job in (Job(id=1, name="v2", state="cancelled"), Job(id=2, name="v2", state="done", attempts=1)):
        q.job_dir(job.id).mkdir(parents=True)
        q.save(job)
    run_dir = isolated_home / "checkpoints_qlora" / "v2"
    run_dir.mkdir(parents=True)
    records = [{"step": 8, "epoch": 0, "loss": 2.0, "total_steps": 8, "val_loss": 2.1, "gap": 0.1, "band": "BOM"}]
    (run_dir / "training_metrics.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    (run_dir / "training_summary.json").write_bytes(orjson.dumps({"status": "BOM", "best_val_loss": 2.1}))
    runner = CliRunner()
    rows = {r["id"]: r for r in orjson.loads(runner.invoke(cli, ["list", "--json"]).stdout)["jobs"]}
    assert (rows[1]["step"], rows[1]["best_val_loss"], rows[1]["band"]) == (None, None, None)
    assert (rows[2]["step"], rows[2]["best_val_loss"], rows[2]["band"]) == (8, 2.1, "BOM")
    assert orjson.loads(runner.invoke(cli, ["gap", "1", "--json"]).stdout)["validations"] == []
    status = orjson.loads(runner.invoke(cli, ["status", "1", "--json"]).stdout)
    assert status["progress"]["step"] is None and status["summary"] is None and status["adapters"] is None
    assert resolve(q.ws, "checkpoints_qlora/v2").job.id == 2  # the folder names the job that trained it


def test_a_hand_edited_farense_metrics_log_is_read_by_every_reader(isolated_home, tmp_path):
    """farense's own training_metrics.jsonl with a validation cut short, a number as text and a line of another
    type: each reader answers (the broken validation is a plain step, the rest as written)."""
    folder = tmp_path / "edited"
    folder.mkdir()
    good = [
        {"step": 1, "epoch": 0, "loss": 2.0, "elapsed_s": 1.0},
        {"step": 2, "epoch": 0, "loss": 1.5, "elapsed_s": 2.0, "val_loss": 1.6, "train_loss": 1.75, "gap": -0.15},
    ]
    damaged = [
        {"step": 3, "epoch": 0, "loss": 0.9, "val_loss": 0.8},  # no train_loss, no gap
        {"step": 4, "epoch": 0, "loss": 0.8, "val_loss": "0.8", "train_loss": 0.9, "gap": "x"},
        [1, 2],
        {"step": "5", "loss": 0.7},
    ]
    (folder / "training_metrics.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in good + damaged))
    runner = CliRunner()
    for args in (
        ["gap", str(folder)],
        ["check", str(folder)],
        ["compare", str(folder), str(folder)],
        ["tail", str(folder), "--no-follow"],
        ["plot", str(folder)],
    ):
        result = runner.invoke(cli, args)
        assert result.exception is None or isinstance(result.exception, SystemExit), (args, result.output)
        assert "Traceback" not in result.output and "KeyError" not in result.output, (args, result.output)
    assert orjson.loads(runner.invoke(cli, ["gap", str(folder), "--json"]).stdout)["gap_max"] == pytest.approx(-0.15)


def test_status_and_list_say_the_state_in_the_language_and_labels_never_touch_their_values(isolated_home):
    import re

    from farensed.queue.job import Job

    q = Queue(Workspace(isolated_home))
    started = "2026-12-05T10:00:00+00:00"
    q.job_dir(1).mkdir(parents=True)
    q.save(Job(id=1, name="v2", state="done", attempts=1, first_started_at=started, started_at=started, exit_code=0))
    runner = CliRunner()
    for lang, state in (("pt", "concluído"), ("en", "done")):
        text = runner.invoke(cli, ["status", "1"], env={"FARENSE_LANG": lang}).output
        lines = text.splitlines()
        assert any(re.fullmatch(rf"(estado|state): +{state}", line) for line in lines), text
        labelled = [line for line in lines if re.match(r"^[^ :][^:]*:", line)]
        assert labelled and all(re.match(r"^[^:]+: +\S", line) for line in labelled), text  # `primeiro início: 2026…`
        columns = {len(re.match(r"^[^:]+: +", line).group(0)) for line in labelled}
        assert len(columns) == 1, text  # one value column
        assert f" {state} " in runner.invoke(cli, ["list"], env={"FARENSE_LANG": lang}).output
    assert orjson.loads(runner.invoke(cli, ["status", "1", "--json"]).stdout)["state"] == "done"  # JSON: fixed
