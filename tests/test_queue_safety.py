"""A job ends exactly once and no decision is lost, on real processes: cancel of a running job, one trainer per
run, second signals, disk full, torn files."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import time

import orjson
import psutil
import pytest

from farensed import EXIT_RESUMABLE
from farensed.engine.checkpoint import list_checkpoints, newest_valid
from farensed.storage.procs import process_alive
from tests.conftest import make_workspace
from tests.helpers import (
    TEST_SPEC,
    assert_same_adapters,
    child_env,
    cli_cmd,
    deterministic_metrics,
    kill_at_record,
    metric_lines,
    run_cli,
    spec_with,
    start_cli,
    wait_for,
    write_spec,
)
from tests.test_daemon import queue, run_burst, start_daemon, submit

# One optimizer update per 40 steps: a stop request waits long enough for a second signal to matter.
SLOW_UPDATES = spec_with(grad_accumulation=40, save_every=40, eval_every=40, epochs=3, early_stopping=None)


def temp_files(root) -> list:
    return [p for p in root.rglob("*") if ".tmp-" in p.name]


def test_cancel_of_a_running_job_checkpoints_and_retry_resumes_exactly(workspace, reference_run):
    job_id = submit(workspace, TEST_SPEC)
    run_dir = workspace / "checkpoints_qlora/t"
    daemon = start_daemon(workspace)
    try:
        wait_for(lambda: metric_lines(run_dir) >= 12, timeout=120)
        out = run_cli(workspace, "cancel", str(job_id))
        assert out.returncode == 0 and f"job {job_id}: a parar com checkpoint" in out.stdout
        wait_for(lambda: queue(workspace).get(job_id).status.terminal, timeout=120)
        job = queue(workspace).get(job_id)
        assert (job.state, job.exit_code, job.attempts, job.recoveries) == ("cancelled", 75, 1, 0)
        state = orjson.loads((run_dir / "training_state.json").read_bytes())
        assert not state["finished"] and state["step"] % TEST_SPEC["grad_accumulation"] == 0
        assert queue(workspace).retry(job_id).state == "pending"
        wait_for(lambda: queue(workspace).get(job_id).status.terminal, timeout=300)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    job = queue(workspace).get(job_id)
    assert (job.state, job.attempts, job.recoveries) == ("done", 2, 0)
    assert f"A retomar de {state['checkpoint']}" in (workspace / "jobs" / str(job_id) / "log").read_text()
    assert_same_adapters(reference_run / "output/t/adapters.safetensors", workspace / "output/t/adapters.safetensors")
    assert deterministic_metrics(reference_run / "checkpoints_qlora/t") == deterministic_metrics(run_dir)


def test_run_and_eval_refuse_a_run_folder_that_a_daemon_job_is_training(workspace):
    spec = write_spec(workspace, spec_with(epochs=3), "t.json")
    job_id = queue(workspace).submit(spec).id
    daemon = start_daemon(workspace)
    try:
        wait_for(lambda: metric_lines(workspace / "checkpoints_qlora/t") >= 3, timeout=120)
        child = queue(workspace).get(job_id).pid
        for args in (("run", str(spec)), ("eval", str(job_id))):
            proc = run_cli(workspace, *args)
            assert proc.returncode == 4, proc.stdout
            lines = proc.stdout.strip().splitlines()
            assert len(lines) == 1 and f"em uso pelo pid {child} (job {job_id})" in lines[0], proc.stdout
        assert queue(workspace).get(job_id).pid == child  # the job trains on, untouched
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0


def test_second_sigterm_exits_farensed_at_once_and_the_next_daemon_adopts_the_child(workspace):
    job_id = submit(workspace, SLOW_UPDATES)
    log = workspace / "daemon-test.log"
    daemon = start_daemon(workspace, log=log)
    job_log = workspace / "jobs" / str(job_id) / "log"
    wait_for(lambda: job_log.exists() and "INICIANDO TREINO" in job_log.read_text(), timeout=120)
    child = queue(workspace).get(job_id)
    tic = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    wait_for(lambda: "à espera do checkpoint" in log.read_text(), timeout=10)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=10) == 0
    assert time.monotonic() - tic < 10
    assert "segundo sinal: farensed sai já" in log.read_text()
    assert process_alive(child.pid, child.pid_create_time)  # left running, stopping at its checkpoint
    proc = run_burst(workspace)
    assert proc.returncode == 0, proc.stdout[-2000:]
    job = queue(workspace).get(job_id)
    assert (job.state, job.recoveries) == ("done", 0), job
    assert job_log.read_text().count("Interrompido (sinal SIGTERM)") == 1


def test_second_ctrl_c_in_run_stops_at_once_naming_the_checkpoint_it_resumes_from(workspace):
    spec = write_spec(workspace, SLOW_UPDATES)
    run_dir = workspace / "checkpoints_qlora/t"
    log = workspace / "run.log"
    proc = start_cli(workspace, "run", str(spec), log=log)
    wait_for(lambda: (run_dir / "checkpoint_epoch0_step40").is_dir(), timeout=120, proc=proc)
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: "outro Ctrl-C para parar já" in log.read_text(), timeout=10, proc=proc)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == EXIT_RESUMABLE
    text = log.read_text()
    found = re.search(r"Segundo Ctrl-C: parado já; a próxima execução retoma de (checkpoint_epoch\d+_step\d+)", text)
    assert found, text[-1500:]
    assert found.group(1) == newest_valid(run_dir, print)[0].path.name
    again = run_cli(workspace, "run", str(spec))
    assert again.returncode == 0 and f"A retomar de {found.group(1)}" in again.stdout
    assert not temp_files(workspace / "checkpoints_qlora")


def test_disk_full_stops_with_one_line_and_keeps_the_previous_checkpoint(workspace, reference_run):
    spec = write_spec(workspace, TEST_SPEC)
    run_dir = workspace / "checkpoints_qlora/t"
    proc = subprocess.Popen(
        cli_cmd(workspace, "run", str(spec)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env()
    )
    wait_for(lambda: (run_dir / "checkpoint_epoch0_step16").is_dir(), timeout=120, proc=proc)
    psutil.Process(proc.pid).rlimit(psutil.RLIMIT_FSIZE, (1024, 1024))  # from now on no file may pass 1 KiB
    out = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == 1, out[-2000:]
    said = [line for line in out.splitlines() if "sem espaço em disco" in line]
    assert len(said) == 1 and "Traceback" not in out, out[-2000:]
    last = said[0][said[0].index("Erro: sem espaço em disco") :]  # the progress bar may share its line
    kept = re.search(r"continua a ser (checkpoint_epoch\d+_step(\d+))", last)
    assert kept and int(kept.group(2)) >= 16, last
    assert newest_valid(run_dir, print)[0].path.name == kept.group(1)  # no half folder taken for valid
    assert [c.path.name for c in list_checkpoints(run_dir)][-1] == kept.group(1)
    assert not temp_files(run_dir)
    again = run_cli(workspace, "run", str(spec))
    assert again.returncode == 0 and f"A retomar de {kept.group(1)}" in again.stdout, again.stdout[-2000:]
    assert_same_adapters(reference_run / "output/t/adapters.safetensors", workspace / "output/t/adapters.safetensors")


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, tiny_model):
    """TEST_SPEC stopped with SIGTERM after 20 records: a checkpoint to damage."""
    root = make_workspace(tmp_path_factory.mktemp("stopped"), tiny_model)
    spec = write_spec(root, TEST_SPEC)
    assert kill_at_record(root, spec, 20, sig=signal.SIGTERM) == EXIT_RESUMABLE
    return root


TORN = [
    ("training_state.json", "training_state.json da pasta do treino ilegível"),
    ("training_metrics.json", "training_metrics.json da pasta do treino ilegível"),
    ("newest/adapters.safetensors", "danificado: adapters.safetensors danificado"),
    ("newest/training_state.json", "danificado: training_state.json ilegível"),
]


@pytest.mark.parametrize(
    "target, said, how",
    [(t, s, "zero") for t, s in TORN] + [(t, s, "truncate") for t, s in TORN if not t.endswith(".safetensors")],
)
def test_a_torn_file_leads_to_a_consistent_recovery_that_says_what_it_did(
    stopped_run, tmp_path, reference_run, target, said, how
):
    root = tmp_path / "copy"
    shutil.copytree(stopped_run, root, symlinks=True)
    run_dir = root / "checkpoints_qlora/t"
    newest = list_checkpoints(run_dir)[-1].path
    path = newest / target.split("/", 1)[1] if target.startswith("newest/") else run_dir / target
    data = path.read_bytes()
    path.write_bytes(b"" if how == "zero" else data[: len(data) // 2])
    proc = run_cli(root, "run", str(root / "job.json"))
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert said in proc.stdout, proc.stdout[:3000]
    assert_same_adapters(reference_run / "output/t/adapters.safetensors", root / "output/t/adapters.safetensors")
    assert deterministic_metrics(reference_run / "checkpoints_qlora/t") == deterministic_metrics(run_dir)
    assert orjson.loads((run_dir / "training_state.json").read_bytes())["finished"] is True


def test_disk_full_under_the_daemon_fails_the_job_with_one_line_and_retry_resumes(workspace):
    job_id = submit(workspace, spec_with(epochs=1))
    run_dir = workspace / "checkpoints_qlora/t"
    daemon = start_daemon(workspace)
    try:
        wait_for(lambda: (run_dir / "checkpoint_epoch0_step8").is_dir(), timeout=120)
        psutil.Process(queue(workspace).get(job_id).pid).rlimit(psutil.RLIMIT_FSIZE, (1024, 1024))
        wait_for(lambda: queue(workspace).get(job_id).status.terminal, timeout=120)
        job = queue(workspace).get(job_id)
        assert (job.state, job.exit_code, job.recoveries) == ("failed", 1, 0)
        assert job.error.startswith("sem espaço em disco") and "\n" not in job.error, job.error
        assert newest_valid(run_dir, print)[0].path.name in job.error and not temp_files(run_dir)
        queue(workspace).retry(job_id)  # space is back (a new child has no limit)
        wait_for(lambda: queue(workspace).get(job_id).status.terminal, timeout=300)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    assert queue(workspace).get(job_id).state == "done"


def test_sigterm_while_the_child_is_still_starting_is_a_clean_resumable_stop(workspace):
    """A cancel, memory-guard or window stop that lands before the trainer's handler: exit 75, not a lost child."""
    import sys

    job_id = submit(workspace, spec_with(epochs=1))
    job_dir = workspace / "jobs" / str(job_id)
    cmd = [sys.executable, "-m", "farensed.queue.child", "--home", str(workspace), "--job-dir", str(job_dir)]
    child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env())
    # child.json is written once the child's SIGTERM handler is installed: from then on a stop is clean
    wait_for(lambda: (job_dir / "child.json").exists(), timeout=60, interval=0.002, proc=child)
    child.send_signal(signal.SIGTERM)
    out, _ = child.communicate(timeout=120)
    assert child.returncode == EXIT_RESUMABLE, out[-2000:]
    assert orjson.loads((job_dir / "exit.json").read_bytes())["code"] == EXIT_RESUMABLE
    assert "Traceback" not in out
    if "Parado antes de começar a treinar" in out:  # the early window (what a machine this size hits at 50 ms)
        assert not list_checkpoints(workspace / "checkpoints_qlora/t")  # nothing of the run touched
    else:  # a very fast machine may already be training: then the trainer's own checkpoint-stop
        assert "Interrompido" in out
