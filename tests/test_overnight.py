"""Overnight on the real tiny model and a real daemon: training windows, queue pause, power, the drained report."""

from __future__ import annotations

import datetime as dt
import re
import signal
import subprocess
import sys
from pathlib import Path

import orjson
from click.testing import CliRunner

from farensed.cli.main import cli
from farensed.queue.jobs import Queue
from farensed.workspace import Workspace
from tests.helpers import (
    assert_same_adapters,
    child_env,
    deterministic_metrics,
    spec_with,
    wait_for,
    write_spec,
)


def start_daemon(root: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    out = open(root / "daemon-test.log", "ab")
    return subprocess.Popen(
        [sys.executable, "-m", "farensed.queue.main", "--home", str(root), "--poll", "0.1", "--rescan", "1", *args],
        stdout=out,
        stderr=subprocess.STDOUT,
        env={**child_env(), **(env or {})},
    )


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
        wait_for(lambda: (workspace / "jobs/overnight.json").exists(), timeout=60)
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
