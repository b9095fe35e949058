"""farensed on real processes with real signals: order, adoption, recovery, shutdown, exclusivity."""

from __future__ import annotations

import datetime as dt
import logging
import os
import plistlib
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from farensed.queue.jobs import Queue
from farensed.storage.procs import process_alive
from farensed.storage.workspace import Workspace
from tests.helpers import (
    TEST_SPEC,
    assert_same_adapters,
    child_env,
    deterministic_metrics,
    metric_lines,
    run_cli,
    spec_with,
    wait_for,
    write_spec,
)

REPO = Path(__file__).resolve().parents[1]


def start_daemon(root: Path, *args: str, log: Path | None = None) -> subprocess.Popen:
    out = open(log or root / "daemon-test.log", "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "farensed.queue.main", "--home", str(root), "--poll", "0.1", "--rescan", "1", *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        env=child_env(),
    )


def run_burst(root: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "farensed.queue.main", "--home", str(root), "--burst", "--poll", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=child_env(),
        timeout=timeout,
    )


def queue(root: Path) -> Queue:
    return Queue(Workspace(root))


def submit(root: Path, spec: dict, **overrides) -> int:
    path = write_spec(root, spec, f"{spec['name']}.json")
    return queue(root).submit(path, **overrides).id


def test_three_jobs_run_by_priority_each_exactly_once(workspace):
    ids = {
        name: submit(workspace, spec_with(name=name, epochs=1, eval_every=20, save_every=20), priority=prio)
        for name, prio in (("low", 0), ("high", 9), ("mid", 3))
    }
    proc = run_burst(workspace)
    assert proc.returncode == 0, proc.stdout[-2000:]
    jobs = {j.name: j for j in queue(workspace).jobs()}
    assert all(j.state == "done" and j.attempts == 1 and j.recoveries == 0 for j in jobs.values())
    order = sorted(jobs.values(), key=lambda j: j.started_at + f"{j.id:09d}")
    started = [line for line in proc.stdout.splitlines() if " event=started " in line]
    expected = [f"job={ids[n]} event=started attempt=1 " for n in ("high", "mid", "low")]
    assert [want in line for want, line in zip(expected, started)] == [True] * 3
    assert len(started) == 3 and {j.name for j in order} == {"low", "mid", "high"}
    for name, job_id in ids.items():
        log = (workspace / "jobs" / str(job_id) / "log").read_text()
        assert log.count("=== farensed: job") == 1 and "ANÁLISE FINAL DE OVERFITTING" in log
        assert (workspace / "checkpoints_qlora" / name / "training_summary.json").is_file()


def test_kill9_daemon_mid_job_new_daemon_adopts_the_same_child(workspace):
    job_id = submit(workspace, spec_with(epochs=2))
    daemon = start_daemon(workspace)
    run_dir = workspace / "checkpoints_qlora/t"
    wait_for(lambda: metric_lines(run_dir) >= 5, timeout=120)
    child = queue(workspace).get(job_id)
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    assert process_alive(child.pid, child.pid_create_time)  # the child trains on without its daemon
    proc = run_burst(workspace)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert f"job={job_id} event=adopted pid={child.pid} · " in proc.stdout
    assert f"processo {child.pid} vivo, adotado" in proc.stdout
    job = queue(workspace).get(job_id)
    assert (job.state, job.attempts, job.recoveries) == ("done", 1, 0)
    assert (workspace / "jobs" / str(job_id) / "log").read_text().count("=== farensed: job") == 1


def test_kill9_child_is_requeued_resumes_and_ends_tensor_equal(workspace, reference_run):
    job_id = submit(workspace, TEST_SPEC)
    daemon = start_daemon(workspace)
    try:
        run_dir = workspace / "checkpoints_qlora/t"
        wait_for(lambda: metric_lines(run_dir) >= 20, timeout=120)
        child = queue(workspace).get(job_id)
        os.kill(child.pid, signal.SIGKILL)
        wait_for(lambda: queue(workspace).get(job_id).state in ("done", "failed"), timeout=300)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    job = queue(workspace).get(job_id)
    assert (job.state, job.recoveries, job.attempts) == ("done", 1, 2)
    assert "A retomar de checkpoint_epoch" in (workspace / "jobs" / str(job_id) / "log").read_text()
    assert_same_adapters(reference_run / "output/t/adapters.safetensors", workspace / "output/t/adapters.safetensors")
    assert deterministic_metrics(reference_run / "checkpoints_qlora/t") == deterministic_metrics(run_dir)


def test_sigterm_daemon_checkpoints_exits_0_and_next_daemon_resumes(workspace, reference_run):
    job_id = submit(workspace, TEST_SPEC)
    daemon = start_daemon(workspace)
    run_dir = workspace / "checkpoints_qlora/t"
    wait_for(lambda: metric_lines(run_dir) >= 12, timeout=120)
    tic = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == 0
    assert time.monotonic() - tic < 60
    job = queue(workspace).get(job_id)
    assert job.state == "pending" and job.exit_code == 75 and job.recoveries == 0
    state = orjson.loads((run_dir / "training_state.json").read_bytes())
    assert state["finished"] is False
    proc = run_burst(workspace)
    assert proc.returncode == 0, proc.stdout[-2000:]
    job = queue(workspace).get(job_id)
    assert (job.state, job.attempts, job.recoveries) == ("done", 2, 0)
    assert_same_adapters(reference_run / "output/t/adapters.safetensors", workspace / "output/t/adapters.safetensors")


def test_second_daemon_refuses_naming_the_holder(workspace):
    first = start_daemon(workspace)
    try:
        wait_for(lambda: (workspace / "jobs/daemon.pid").exists(), timeout=30)
        second = subprocess.run(
            [sys.executable, "-m", "farensed.queue.main", "--home", str(workspace)],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=60,
        )
        assert second.returncode != 0
        assert f"farensed já está a correr nesta fila (pid {first.pid})" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0


def test_hand_dropped_specs_broken_goes_to_failed_valid_becomes_a_job(workspace):
    inbox = workspace / "jobs/pending"
    inbox.mkdir(parents=True)
    (inbox / "broken.json").write_text('{"name": "x",, }')
    (inbox / "good.json").write_bytes(orjson.dumps(spec_with(name="good", epochs=1, eval_every=40, save_every=40)))
    past = time.time() - 5
    for f in inbox.iterdir():
        os.utime(f, (past, past))
    proc = run_burst(workspace)
    assert proc.returncode == 0, proc.stdout[-2000:]
    failed = workspace / "jobs/failed"
    assert (failed / "broken.json").read_text() == '{"name": "x",, }'
    assert "JSON inválido na linha 1" in (failed / "broken.json.reason.txt").read_text()
    jobs = queue(workspace).jobs()
    assert [(j.name, j.state, j.source) for j in jobs] == [("good", "done", "good.json")]
    assert not list(inbox.iterdir())
    assert oct((workspace / "jobs").stat().st_mode & 0o777) == "0o700"


def test_crashing_child_fails_with_last_log_lines_and_retry_resumes(workspace):
    job_id = submit(workspace, spec_with(epochs=1))
    shutil.move(workspace / "data/demo/valid.jsonl", workspace / "valid.bak")  # input vanishes after submit
    proc = run_burst(workspace)
    assert proc.returncode == 0
    job = queue(workspace).get(job_id)
    assert job.state == "failed" and job.exit_code == 2
    assert "data.valid: ficheiro de dados não encontrado" in job.error
    shutil.move(workspace / "valid.bak", workspace / "data/demo/valid.jsonl")
    assert queue(workspace).retry(job_id).state == "pending"
    assert run_burst(workspace).returncode == 0
    assert queue(workspace).get(job_id).state == "done"


def test_dependencies_and_not_before(workspace):
    first = submit(workspace, spec_with(name="first", epochs=1))
    in_a_year = (dt.datetime.now().astimezone() + dt.timedelta(days=365)).isoformat(timespec="seconds")
    later = submit(workspace, spec_with(name="later", epochs=1), not_before=in_a_year)  # (at most 3 years ahead)
    dependent = submit(workspace, spec_with(name="dep", epochs=1), after=[first])
    queue(workspace).cancel(first)
    assert run_burst(workspace).returncode == 0
    q = queue(workspace)
    assert q.get(first).state == "cancelled"
    assert q.get(later).state == "pending"
    assert q.get(dependent).state == "failed" and f"dependência {first}" in q.get(dependent).error


def test_the_daemon_never_imports_mlx(workspace):
    submit(workspace, spec_with(epochs=1, eval_every=40, save_every=40))
    code = (
        "import sys\nfrom farensed.queue.daemon import Daemon\nfrom farensed.storage.workspace import Workspace\n"
        f"Daemon(Workspace.at({str(workspace)!r}), poll_interval=0.1).work(burst=True)\n"
        "print('MLX', sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MLX []" in proc.stdout
    assert queue(workspace).jobs()[0].state == "done"


def test_service_files_parse_and_render_with_absolute_paths(workspace):
    from farensed.queue.service import render

    raw = plistlib.loads((REPO / "systemd_launchd/farensed.plist").read_bytes())
    assert {"Label", "ProgramArguments", "RunAtLoad", "KeepAlive", "ExitTimeOut"} <= set(raw)
    rendered = plistlib.loads(render("farensed.plist", Workspace(workspace)).encode())
    assert rendered["ProgramArguments"][0] == sys.executable
    assert rendered["ProgramArguments"][-1] == str(workspace) and rendered["ExitTimeOut"] >= 300
    unit = render("farensed.service", Workspace(workspace))
    assert f'ExecStart="{sys.executable}" "-m" "farensed.queue.main" "--home" "{workspace}"' in unit  # quoted
    assert "TimeoutStopSec=330" in unit and "KillMode=process" in unit
    if shutil.which("systemd-analyze"):
        path = workspace / "farensed.service"
        path.write_text(unit)
        proc = subprocess.run(["systemd-analyze", "--user", "verify", str(path)], capture_output=True, text=True)
        assert "farensed.service" not in proc.stderr or proc.returncode == 0, proc.stderr


def test_daemon_start_status_stop_fallback_process(workspace):
    from click.testing import CliRunner

    from farensed.cli.main import cli

    runner = CliRunner()
    result = runner.invoke(cli, ["--home", str(workspace), "daemon", "start"])
    assert result.exit_code == 0, result.output
    status = orjson.loads(runner.invoke(cli, ["--home", str(workspace), "daemon", "status", "--json"]).output)
    assert status["running"] and status["pid"]
    result = runner.invoke(cli, ["--home", str(workspace), "daemon", "stop"])
    assert result.exit_code == 0 and f"farensed parado (pid {status['pid']})" in result.output
    assert not process_alive(status["pid"], None)


def test_memory_guard_checkpoint_stops_and_holds_the_job_until_memory_recovers(workspace):
    from farensed.queue.daemon import Daemon
    from farensed.queue.pressure import MemoryGuard, Reading

    # Recorded kernel readings (macOS levels: 1 normal, 2 warn, 4 critical), fed to the guard as the machine changes.
    machine = {"now": Reading(total_mb=16384, available_mb=6000, level=1)}
    job_id = submit(workspace, spec_with(epochs=2))
    guard = MemoryGuard(reader=lambda: machine["now"])
    daemon = Daemon(Workspace(workspace), memory_guard=guard, log=logging.getLogger("test"))
    daemon.start(queue(workspace).get(job_id))
    wait_for(lambda: metric_lines(workspace / "checkpoints_qlora/t") >= 3, timeout=120)
    assert daemon.guard_memory() is True and queue(workspace).get(job_id).held is None
    machine["now"] = Reading(total_mb=16384, available_mb=5000, level=4, swap_used_mb=3072, swap_out_mb_s=200)
    assert daemon.guard_memory() is False
    job = queue(workspace).get(job_id)
    assert job.held.startswith("memória sob pressão") and "sinal: kern.memorystatus_vm_pressure_level" in job.held
    daemon.current.popen.wait(timeout=120)
    daemon.poll_current()
    job = queue(workspace).get(job_id)
    assert (job.state, job.exit_code, job.recoveries) == ("pending", 75, 0) and job.held
    assert queue(workspace).next_runnable() is None  # held back
    assert "memória sob pressão" in (workspace / "jobs" / str(job_id) / "log").read_text()
    machine["now"] = Reading(total_mb=16384, available_mb=5000, level=2)  # easing, not yet normal
    assert daemon.guard_memory() is False and queue(workspace).get(job_id).held
    machine["now"] = Reading(total_mb=16384, available_mb=6000, level=1)  # pressure is back to normal
    assert daemon.guard_memory() is True
    assert queue(workspace).get(job_id).held is None and queue(workspace).next_runnable().id == job_id


def test_resubmitting_a_changed_spec_fails_and_fresh_starts_over_once(workspace):
    first = submit(workspace, spec_with(epochs=1, eval_every=40, save_every=40))
    assert run_burst(workspace).returncode == 0 and queue(workspace).get(first).state == "done"
    changed = spec_with(epochs=2, lora=dict(TEST_SPEC["lora"], rank=8))
    refused = run_cli(workspace, "submit", str(write_spec(workspace, changed, "changed.json")))
    assert refused.returncode == 3 and re.search("lora.rank: 4 → 8.*--fresh", refused.stdout)  # nothing queued
    assert [j.id for j in queue(workspace).jobs()] == [first]
    fresh = submit(workspace, changed, fresh=True)
    daemon = start_daemon(workspace)
    try:
        run_dir = workspace / "checkpoints_qlora/t"
        moved = lambda: any(p.name.startswith("t.old-") for p in (workspace / "checkpoints_qlora").iterdir())  # noqa
        wait_for(lambda: moved() and metric_lines(run_dir) >= 12, timeout=120)
        os.kill(queue(workspace).get(fresh).pid, signal.SIGKILL)  # the recovery must resume, not start over again
        wait_for(lambda: queue(workspace).get(fresh).state in ("done", "failed"), timeout=300)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    job = queue(workspace).get(fresh)
    assert (job.state, job.attempts, job.recoveries) == ("done", 2, 1)
    log = (workspace / "jobs" / str(fresh) / "log").read_text()
    assert log.count("--fresh: a pasta anterior foi guardada em") == 2  # checkpoints_qlora/t and output/t, once
    assert log.count("checkpoints_qlora/t.old-") == 1 and "A retomar de checkpoint_epoch" in log
    assert len([p for p in (workspace / "checkpoints_qlora").iterdir() if p.name.startswith("t.old-")]) == 1


def test_submit_wait_json_prints_one_json_document_the_job_as_it_ended(workspace):
    """`submit --wait --json` is for scripts: stdout is one JSON document (the job in its final state); the progress
    and the gap analysis go to stderr."""
    daemon = start_daemon(workspace)
    try:
        spec = write_spec(workspace, spec_with(name="scripted", epochs=1), "scripted.json")
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "farensed.cli.main",
                "--home",
                str(workspace),
                "submit",
                str(spec),
                "--wait",
                "--json",
            ],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=300,
        )
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ended = orjson.loads(proc.stdout)  # the whole of stdout parses: nothing else there
    assert ended["name"] == "scripted" and ended["state"] == "done"
    assert "scripted" in proc.stderr and "gap" in proc.stderr.lower()
