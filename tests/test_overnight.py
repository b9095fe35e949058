"""Overnight on the real tiny model and a real daemon: training windows, queue pause, power, the drained report."""

from __future__ import annotations

import datetime as dt
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
from click.testing import CliRunner

from farensed.cli.main import cli
from farensed.queue.jobs import Queue
from farensed.workspace import Workspace
from tests.helpers import (
    TEST_SPEC,
    assert_same_adapters,
    child_env,
    deterministic_metrics,
    metric_lines,
    spec_with,
    wait_for,
    write_spec,
)


def start_daemon(root: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """A farensed in the background, returned once it watches the queue (its signal handlers are set)."""
    log = root / "daemon-test.log"
    before = log.read_text().count("a vigiar") if log.exists() else 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "farensed.queue.main", "--home", str(root), "--poll", "0.1", "--rescan", "1", *args],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        env={**child_env(), **(env or {})},
    )
    wait_for(lambda: log.read_text().count("a vigiar") > before, timeout=60, proc=proc)
    return proc


def stop_daemon(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0


def queue(root: Path) -> Queue:
    return Queue(Workspace(root))


def submit(root: Path, spec: dict) -> int:
    return queue(root).submit(write_spec(root, spec, f"{spec['name']}.json")).id


def farensectl(root: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--home", str(root), *args])
    assert result.exit_code == 0, result.output
    return result.output


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.rsplit("step", 1)[1]) for p in run_dir.glob("checkpoint_epoch*_step*"))


def assert_equals_reference(root: Path, reference: Path) -> None:
    assert_same_adapters(reference / "output/t/adapters.safetensors", root / "output/t/adapters.safetensors")
    assert deterministic_metrics(reference / "checkpoints_qlora/t") == deterministic_metrics(
        root / "checkpoints_qlora/t"
    )


def clock(when: dt.datetime) -> str:
    return when.strftime("%H:%M:%S")


def test_window_end_checkpoint_stops_shows_pause_and_resumes_exactly_at_next_window(workspace, reference_run):
    daemon = start_daemon(workspace)
    try:
        now = dt.datetime.now().astimezone().replace(microsecond=0)
        closes, reopens = now + dt.timedelta(seconds=5), now + dt.timedelta(seconds=14)
        later = reopens + dt.timedelta(hours=1)
        window = f"{clock(now - dt.timedelta(seconds=2))}-{clock(closes)},{clock(reopens)}-{clock(later)}"
        job_id = submit(workspace, spec_with(window=window))
        run_dir = workspace / "checkpoints_qlora/t"
        wait_for(lambda: queue(workspace).get(job_id).state == "running", timeout=30)
        wait_for(lambda: queue(workspace).get(job_id).state == "pending", timeout=60)
        assert dt.datetime.now().astimezone() < reopens, "the stop took longer than the pause"
        job = queue(workspace).get(job_id)
        assert (job.attempts, job.recoveries, job.exit_code) == (1, 0, 75)
        state = orjson.loads((run_dir / "training_state.json").read_bytes())
        assert 0 < state["step"] < 80 and checkpoint_steps(run_dir)[-1] == state["step"]
        pause = f"em pausa até {clock(reopens)}"
        assert pause in farensectl(workspace, "list")
        assert pause in farensectl(workspace, "status", str(job_id))
        wait_for(lambda: queue(workspace).get(job_id).state == "done", timeout=300)
    finally:
        stop_daemon(daemon)
    job = queue(workspace).get(job_id)
    assert (job.attempts, job.recoveries) == (1, 0)  # a window pause is neither an attempt nor a recovery
    restarted = dt.datetime.fromisoformat(job.started_at)
    assert reopens <= restarted <= reopens + dt.timedelta(seconds=2)
    log = (workspace / "jobs" / str(job_id) / "log").read_text()
    assert "janela fechada" in log and re.search(rf"A retomar de checkpoint_epoch\d+_step{state['step']} ", log)
    assert_equals_reference(workspace, reference_run)


def test_queue_pause_survives_a_daemon_restart_resume_continues_exactly_and_drained_queue_reports(
    workspace, reference_run
):
    job_id = submit(workspace, TEST_SPEC)
    run_dir = workspace / "checkpoints_qlora/t"
    daemon = start_daemon(workspace)
    try:
        wait_for(lambda: metric_lines(run_dir) >= 8, timeout=120)
        assert "fila em pausa" in farensectl(workspace, "pause")
        wait_for(lambda: queue(workspace).get(job_id).state == "pending", timeout=60)
        stop_daemon(daemon)
        daemon = start_daemon(workspace)  # the pause is a file in jobs/: a new daemon keeps it
        time.sleep(3)
        job = queue(workspace).get(job_id)
        assert (job.state, job.attempts, job.recoveries) == ("pending", 1, 0)
        assert "em pausa (fila em pausa" in farensectl(workspace, "list")
        assert "fila retomada" in farensectl(workspace, "resume")
        wait_for(lambda: queue(workspace).get(job_id).state == "done", timeout=300)
        wait_for(lambda: list((workspace / "reports").glob("farense-*.html")), timeout=120)
    finally:
        stop_daemon(daemon)
    job = queue(workspace).get(job_id)
    assert (job.attempts, job.recoveries) == (1, 0)
    assert "fila em pausa; a parar com checkpoint" in (workspace / "jobs" / str(job_id) / "log").read_text()
    assert_equals_reference(workspace, reference_run)
    report = next((workspace / "reports").glob("farense-*.html")).read_text()
    assert f'data-job="{job_id}"' in report and 'data-figure="curves-1"' in report


def test_low_battery_stops_at_a_checkpoint_and_mains_power_resumes_exactly(workspace, reference_run):
    battery = workspace / "battery.json"

    def reading(percent: int, plugged: bool) -> None:
        tmp = battery.with_suffix(".tmp")
        tmp.write_text(orjson.dumps({"percent": percent, "plugged": plugged}).decode())
        tmp.replace(battery)

    reading(80, False)  # on battery, enough charge: trains
    job_id = submit(workspace, TEST_SPEC)
    run_dir = workspace / "checkpoints_qlora/t"
    daemon = start_daemon(workspace, env={"FARENSE_BATTERY_FILE": str(battery)})
    try:
        wait_for(lambda: metric_lines(run_dir) >= 8, timeout=120)
        reading(25, False)
        wait_for(lambda: queue(workspace).get(job_id).state == "pending", timeout=60)
        assert "à espera de corrente" in farensectl(workspace, "status", str(job_id))
        reading(40, False)  # more charge but still on battery: keeps waiting for mains
        time.sleep(2)
        assert queue(workspace).get(job_id).state == "pending"
        reading(40, True)
        wait_for(lambda: queue(workspace).get(job_id).state == "done", timeout=300)
    finally:
        stop_daemon(daemon)
    job = queue(workspace).get(job_id)
    assert (job.attempts, job.recoveries) == (1, 0)
    log = (workspace / "jobs" / str(job_id) / "log").read_text()
    assert "em bateria a 25% (mínimo 30%), à espera de corrente; a parar com checkpoint" in log
    assert_equals_reference(workspace, reference_run)


def test_queue_eta_from_measured_step_times_windows_and_unknowns(workspace, reference_run, fresh_copy):
    from farensed.windows import format_clock

    root = fresh_copy(reference_run, "eta")  # run "t" finished: its metrics give the step time
    now = dt.datetime.now().astimezone().replace(second=0, microsecond=0)
    opens = now + dt.timedelta(hours=2)
    night = f"{opens:%H:%M}-{opens + dt.timedelta(hours=1):%H:%M}"
    submit(root, spec_with(name="u", window=night))  # never ran: same model and length as "t"
    other = submit(root, spec_with(name="v", max_seq_length=64))  # no run of this length: unknown
    rows = {r["name"]: r for r in orjson.loads(farensectl(root, "list", "--json"))}
    assert rows["u"]["pause"] == f"em pausa até {format_clock(opens)}"
    assert rows["v"]["eta_start"] is not None and rows["v"]["eta_end"] is None  # starts now, runs for '?'
    assert rows["u"]["eta_start"] is None  # after a job of unknown length
    assert "fila termina às ?" in farensectl(root, "list")
    queue(root).cancel(other)
    rows = {r["name"]: r for r in orjson.loads(farensectl(root, "list", "--json"))}
    start, end = (dt.datetime.fromisoformat(rows["u"][k]) for k in ("eta_start", "eta_end"))
    per_step = orjson.loads((reference_run / "checkpoints_qlora/t/training_summary.json").read_bytes())["step_s_mean"]
    assert start == opens and abs((end - start).total_seconds() - 80 * per_step) < 1
    text = farensectl(root, "list")
    assert f"fila termina às {end:%H:%M}" in text and f"início previsto {opens:%H:%M}" in text
