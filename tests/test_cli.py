"""farensectl's surface (CliRunner) and one real end-to-end session with a real daemon."""

from __future__ import annotations

import signal
import subprocess
import sys

import orjson
import pytest
from click.testing import CliRunner

from farensed.analysis.gap import band
from farensed.cli.main import cli
from farensed.queue.jobs import Queue
from farensed.storage.workspace import Workspace
from tests.conftest import make_workspace
from tests.helpers import child_env, cli_cmd, spec_with, write_spec

COMMANDS = [
    "submit",
    "list",
    "status",
    "tail",
    "gap",
    "logs",
    "cancel",
    "retry",
    "wait",
    "compare",
    "plot",
    "run",
    "demo",
    "daemon",
    "completion",
    "check",
    "eval",
]


@pytest.fixture(scope="session")
def finished_queue(tmp_path_factory, tiny_model):
    """A queue where a V1-like job (1) and a V2-like job (2) ran to the end through the daemon."""
    root = make_workspace(tmp_path_factory.mktemp("queue"), tiny_model)
    q = Queue(Workspace(root))
    v1 = spec_with(
        name="v1",
        lora={"rank": 8, "alpha": 16, "dropout": 0.0, "layers": 2},
        learning_rate=5e-3,
        early_stopping=None,
        epochs=1,
    )
    v2 = spec_with(name="v2", epochs=1)
    for spec in (v1, v2):
        q.submit(write_spec(root, spec, f"{spec['name']}.json"))
    proc = subprocess.run(
        [sys.executable, "-m", "farensed.queue.main", "--home", str(root), "--burst", "--poll", "0.1"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    return root


@pytest.fixture
def done_ws(finished_queue, fresh_copy):
    return fresh_copy(finished_queue, "q")


def invoke(root, *args):
    return CliRunner().invoke(cli, ["--home", str(root), *args])


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = CliRunner().invoke(cli, [command, "--help"])  # Portuguese, as the tests speak (conftest)
    assert result.exit_code == 0 and "Exemplo:" in result.output


def test_submit_prints_the_bare_id_and_hints_on_stderr(spec_workspace):
    spec = write_spec(spec_workspace, spec_with(epochs=1))
    result = invoke(spec_workspace, "submit", str(spec), "--priority", "4")
    assert result.exit_code == 0
    assert result.stdout == "1\n"
    assert "farensectl tail 1" in result.stderr and "farensed não está a correr" in result.stderr
    job = Queue(Workspace(spec_workspace)).get(1)
    assert (job.state, job.priority) == ("pending", 4)
    result = invoke(spec_workspace, "submit", str(spec), "--json", "--after", "1", "--not-before", "23:59")
    doc = orjson.loads(result.stdout)
    assert doc["id"] == 2 and doc["state"] == "pending" and doc["after"] == [1] and "T23:59:00" in doc["not_before"]


@pytest.mark.parametrize(
    "args,message",
    [
        (["--after", "99"], "after: job 99 não existe"),
        (["--not-before", "ontem"], "not_before 'ontem' não é hora ISO nem HH:MM"),
    ],
)
def test_submit_errors_queue_nothing(spec_workspace, args, message):
    spec = write_spec(spec_workspace, spec_with(epochs=1))
    result = invoke(spec_workspace, "submit", str(spec), *args)
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert Queue(Workspace(spec_workspace)).jobs() == []
    assert list((spec_workspace / "jobs/pending").iterdir()) == []


def test_submit_invalid_spec_is_one_line_and_queues_nothing(spec_workspace):
    spec = write_spec(spec_workspace, spec_with(lerning_rate=1e-3))
    result = invoke(spec_workspace, "submit", str(spec))
    assert result.exit_code == 2 and "quis dizer 'learning_rate'" in result.output
    assert "Traceback" not in result.output and Queue(Workspace(spec_workspace)).jobs() == []


@pytest.mark.parametrize(
    "args",
    [
        ["status", "7"],
        ["tail", "7"],
        ["gap", "7"],
        ["logs", "7"],
        ["cancel", "7"],
        ["retry", "7"],
        ["wait", "7"],
        ["plot", "7"],
        ["compare", "7", "8"],
    ],
)
def test_unknown_job_is_one_line_exit_4(spec_workspace, args):
    result = invoke(spec_workspace, *args)
    assert result.exit_code == 4 and result.output.strip() == "Erro: job 7 não existe"


def test_empty_queue_defaults(spec_workspace):
    result = invoke(spec_workspace, "status")
    assert result.exit_code == 4 and "não há jobs na fila" in result.output
    assert invoke(spec_workspace, "list").exit_code == 0
    listed = orjson.loads(invoke(spec_workspace, "list", "--json").stdout)
    assert listed["jobs"] == [] and listed["rejected"] == [] and listed["farensed"]["running"] is False


def test_list_status_and_gap_of_finished_jobs(done_ws):
    rows = orjson.loads(invoke(done_ws, "list", "--json").stdout)["jobs"]
    assert [(r["id"], r["name"], r["state"]) for r in rows] == [(1, "v1", "done"), (2, "v2", "done")]
    assert all(r["step"] == r["total_steps"] == 40 and r["best_val_loss"] > 0 for r in rows)
    text = invoke(done_ws, "list").output
    assert "v1" in text and "40/40" in text
    status = orjson.loads(invoke(done_ws, "status", "2", "--json").stdout)
    assert status["state"] == "done" and status["summary"]["best_val_loss"] == rows[1]["best_val_loss"]
    gap = orjson.loads(invoke(done_ws, "gap", "2", "--json").stdout)
    best = min(gap["validations"], key=lambda v: v["val_loss"])
    assert gap["status"] == band(best["gap"]) == best["band"] and gap["best_step"] == best["step"]
    assert gap["gap_max"] >= gap["gap_mean"] >= gap["gap_min"]
    assert len(gap["validations"]) == 5
    text = invoke(done_ws, "gap").output  # default: the latest job
    assert "job 2 (v2)" in text and "ANÁLISE FINAL DE OVERFITTING" in text and "Gap médio" in text


def test_tail_of_a_finished_job(done_ws):
    result = invoke(done_ws, "tail", "1", "-n", "3", "--no-follow")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 0 and len(lines) == 4 and lines[-1].startswith("step 40/40 | época 1")
    assert "gap" in lines[-1] and "melhor" in lines[-1]
    result = invoke(done_ws, "tail", "1", "-n", "1")
    assert result.exit_code == 0 and "ANÁLISE FINAL DE OVERFITTING" in result.output


def test_logs_plot_compare_completion(done_ws):
    assert "INICIANDO TREINO - v1" in invoke(done_ws, "logs", "1").output
    assert len(invoke(done_ws, "logs", "1", "-n", "2").output.strip().splitlines()) == 2
    png = done_ws / "checkpoints_qlora/v2/training_v2_results.png"
    png.unlink()
    result = invoke(done_ws, "plot", "2")
    assert result.output.strip() == str(png) and png.read_bytes()[:4] == b"\x89PNG"
    table = orjson.loads(invoke(done_ws, "compare", "1", "2", "--json").stdout)
    a, b = table["jobs"]
    assert (a["name"], b["name"]) == ("v1", "v2") and a["final_loss"] != b["final_loss"]
    assert {
        "final_loss",
        "final_val_loss",
        "best_val_loss",
        "status",
        "gap_mean",
        "gap_max",
        "gap_min",
        "epochs_run",
        "steps_run",
        "early_stopped",
        "wall_time_s",
        "tokens_per_second",
        "f1",
    } <= set(a)
    assert "melhor val_loss" in invoke(done_ws, "compare", "1", "2").output
    assert "_FARENSECTL_COMPLETE" in invoke(done_ws, "completion", "bash").output


def test_cancel_retry_wait(done_ws):
    spec = write_spec(done_ws, spec_with(name="later", epochs=1))
    job_id = int(invoke(done_ws, "submit", str(spec)).stdout)
    assert invoke(done_ws, "cancel", str(job_id)).output.strip() == f"job {job_id}: cancelado"
    assert invoke(done_ws, "wait", str(job_id)).exit_code == 130
    assert "já terminou" in invoke(done_ws, "cancel", str(job_id)).output
    assert invoke(done_ws, "retry", "1").exit_code == 4  # done jobs are not retried
    assert invoke(done_ws, "retry", str(job_id)).output.strip() == f"job {job_id}: pendente"
    assert invoke(done_ws, "wait", "1").exit_code == 0
    assert invoke(done_ws, "wait", str(job_id), "--timeout", "0.2").exit_code == 124


def test_submit_to_a_real_daemon_tail_follow_and_gap(workspace):
    daemon = subprocess.Popen(
        [sys.executable, "-m", "farensed.queue.main", "--home", str(workspace), "--poll", "0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env=child_env(),
    )
    try:
        spec = write_spec(workspace, spec_with(epochs=1))
        proc = subprocess.run(
            cli_cmd(workspace, "submit", str(spec), "--json"),
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=60,
        )
        job_id = orjson.loads(proc.stdout)["id"]
        early = subprocess.run(
            cli_cmd(workspace, "tail", str(job_id), "--no-follow"),
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=60,
        )
        assert early.returncode == 0 and f"job {job_id} (t)" in early.stdout
        follow = subprocess.run(
            cli_cmd(workspace, "tail", str(job_id), "-n", "0", "--follow"),
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=300,
        )
        assert follow.returncode == 0, follow.stdout[-2000:] + follow.stderr[-2000:]
        assert "step 40/40" in follow.stdout and "ANÁLISE FINAL DE OVERFITTING" in follow.stdout
        gap = orjson.loads(
            subprocess.run(
                cli_cmd(workspace, "gap", str(job_id), "--json"),
                capture_output=True,
                text=True,
                env=child_env(),
                timeout=60,
            ).stdout
        )
        best = min(gap["validations"], key=lambda v: v["val_loss"])
        assert gap["state"] == "done" and gap["status"] == band(best["gap"])
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0


def test_the_cli_does_not_import_mlx_outside_training_and_evaluation(done_ws):
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom farensed.cli.main import cli\n"
        f"for args in (['list'], ['status', '1'], ['gap', '1'], ['tail', '1', '--no-follow'], ['compare', '1', '2']):\n"
        f"    assert CliRunner().invoke(cli, ['--home', {str(done_ws)!r}, *args]).exit_code == 0, args\n"
        "print('MLX', sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm', 'transformers')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MLX []" in proc.stdout
