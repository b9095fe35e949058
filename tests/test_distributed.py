"""Two ranks on 127.0.0.1 over mlx's ring back end: same losses as one process, exact resume after kill -9."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import psutil
import pytest

from farensed import EXIT_RESUMABLE
from farensed.queue.jobs import Queue
from farensed.storage.workspace import Workspace
from tests.conftest import make_workspace
from tests.helpers import (
    assert_same_adapters,
    child_env,
    deterministic_metrics,
    metric_lines,
    run_cli,
    spec_with,
    start_cli,
    wait_for,
    write_spec,
)

TWO = {"hosts": ["127.0.0.1", "127.0.0.1"], "backend": "ring"}
DIST_SPEC = spec_with(epochs=1, lora={"rank": 4, "alpha": 16, "dropout": 0.0, "layers": 2}, distributed=TWO)


def rank_pids(rank: str, home: Path) -> list[int]:
    """This workspace's ranks (their command line names its spec): never another test run's on the same machine."""
    pids = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            cmdline = proc.info["cmdline"] or []
            ours = "farensed.engine.rank" in cmdline and str(home) in " ".join(cmdline)
            if ours and proc.environ().get("MLX_RANK") == rank:
                pids.append(proc.pid)
        except psutil.Error:
            continue
    return pids


@pytest.fixture(autouse=True)
def no_process_left(workspace):
    """A failed test leaves no launcher or rank behind (they would train beside the next test's)."""
    yield
    named = [p for p in psutil.process_iter(["cmdline"]) if str(workspace) in " ".join(p.info["cmdline"] or [])]
    for proc in named:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(named, timeout=10)


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory, tiny_model):
    """DIST_SPEC run once on two ranks, uninterrupted."""
    root = make_workspace(tmp_path_factory.mktemp("dist"), tiny_model)
    proc = run_cli(root, "run", str(write_spec(root, DIST_SPEC)))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "mlx.launch: 2 ranks (ring)" in proc.stdout
    return root


def test_two_ranks_match_one_process_with_the_same_global_batch(two_rank_run, workspace):
    single = {k: v for k, v in DIST_SPEC.items() if k != "distributed"}
    proc = run_cli(workspace, "run", str(write_spec(workspace, single)))
    assert proc.returncode == 0
    dist = orjson.loads((two_rank_run / "checkpoints_qlora/t/training_metrics.json").read_bytes())
    one = orjson.loads((workspace / "checkpoints_qlora/t/training_metrics.json").read_bytes())
    assert [r["step"] for r in dist] == [r["step"] for r in one]
    assert dist[0]["loss"] == pytest.approx(one[0]["loss"], rel=1e-4)  # same weights, same global batch
    for a, b in zip(dist, one):
        assert a["loss"] == pytest.approx(b["loss"], rel=0.05)
        if "val_loss" in b:
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=0.05)
    assert sorted(p.name for p in (two_rank_run / "checkpoints_qlora").iterdir() if not p.name.startswith(".")) == [
        "t"
    ]  # rank 0 alone wrote


def test_kill9_of_a_rank_resumes_to_the_uninterrupted_two_rank_result(two_rank_run, workspace):
    spec = write_spec(workspace, DIST_SPEC)
    run = start_cli(workspace, "run", str(spec))
    wait_for(lambda: metric_lines(workspace / "checkpoints_qlora/t") >= 11, proc=run)
    victims = rank_pids("1", workspace)
    assert victims
    os.kill(victims[0], signal.SIGKILL)
    assert run.wait(timeout=120) == EXIT_RESUMABLE
    proc = run_cli(workspace, "run", str(spec))
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert "A retomar de checkpoint_epoch0_step" in proc.stdout
    assert_same_adapters(two_rank_run / "output/t/adapters.safetensors", workspace / "output/t/adapters.safetensors")
    assert deterministic_metrics(two_rank_run / "checkpoints_qlora/t") == deterministic_metrics(
        workspace / "checkpoints_qlora/t"
    )


def test_resuming_with_another_world_size_is_refused(two_rank_run, workspace):
    spec = write_spec(workspace, DIST_SPEC)
    run = start_cli(workspace, "run", str(spec))
    wait_for(lambda: metric_lines(workspace / "checkpoints_qlora/t") >= 5, proc=run)
    run.send_signal(signal.SIGTERM)  # the launcher ignores it; ranks get it from the terminal's group in real life
    for pid in rank_pids("0", workspace) + rank_pids("1", workspace):
        os.kill(pid, signal.SIGTERM)
    assert run.wait(timeout=120) == EXIT_RESUMABLE
    single = {k: v for k, v in DIST_SPEC.items() if k != "distributed"}
    proc = run_cli(workspace, "run", str(write_spec(workspace, single, "one.json")))
    assert proc.returncode == 3
    assert "world_size: 2 → 1" in proc.stdout and "--fresh" in proc.stdout


def test_daemon_runs_the_launcher_like_any_child_and_recovers_when_it_is_killed(workspace, two_rank_run):
    q = Queue(Workspace(workspace))
    job = q.submit(write_spec(workspace, DIST_SPEC))
    assert job.world_size == 2
    daemon = subprocess.Popen(
        [sys.executable, "-m", "farensed.queue.main", "--home", str(workspace), "--poll", "0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env=child_env(),
    )
    try:
        wait_for(lambda: metric_lines(workspace / "checkpoints_qlora/t") >= 11, timeout=120)
        wrapper = psutil.Process(q.get(job.id).pid)
        launcher = next(c for c in wrapper.children() if "--backend" in c.cmdline())
        launcher.kill()
        wait_for(lambda: q.get(job.id).state in ("done", "failed"), timeout=300)
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    final = q.get(job.id)
    assert (final.state, final.recoveries, final.world_size) == ("done", 1, 2)
    assert not rank_pids("1", workspace)
    assert_same_adapters(two_rank_run / "output/t/adapters.safetensors", workspace / "output/t/adapters.safetensors")
    status = orjson.loads(
        subprocess.run(
            [sys.executable, "-m", "farensed.cli.main", "--home", str(workspace), "status", str(job.id), "--json"],
            capture_output=True,
            text=True,
            env=child_env(),
        ).stdout
    )
    assert status["world_size"] == 2


def test_sigterm_through_the_daemon_stops_every_rank_at_one_checkpoint_and_resumes_exactly(workspace, two_rank_run):
    q = Queue(Workspace(workspace))
    job = q.submit(write_spec(workspace, DIST_SPEC))
    run_dir = workspace / "checkpoints_qlora/t"
    cmd = [sys.executable, "-m", "farensed.queue.main", "--home", str(workspace), "--poll", "0.1"]
    daemon = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=child_env())
    wait_for(lambda: metric_lines(run_dir) >= 5, timeout=120)
    before = {p.name for p in run_dir.iterdir() if p.name.startswith("checkpoint_")}
    daemon.send_signal(signal.SIGTERM)  # forwarded to the child's process group: launcher (ignores it) and ranks
    assert daemon.wait(timeout=120) == 0
    stopped = q.get(job.id)
    assert (stopped.state, stopped.exit_code, stopped.recoveries) == ("pending", EXIT_RESUMABLE, 0)
    assert not rank_pids("0", workspace) and not rank_pids("1", workspace)
    state = orjson.loads((run_dir / "training_state.json").read_bytes())
    assert not state["finished"] and state["step"] % DIST_SPEC["grad_accumulation"] == 0  # an update boundary
    new = {p.name for p in run_dir.iterdir() if p.name.startswith("checkpoint_")} - before
    assert new == {state["checkpoint"]}  # exactly one checkpoint, written by rank 0 at the stop
    proc = subprocess.run(cmd + ["--burst"], capture_output=True, text=True, env=child_env(), timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:]
    final = q.get(job.id)
    assert (final.state, final.attempts, final.recoveries) == ("done", 2, 0)
    assert_same_adapters(two_rank_run / "output/t/adapters.safetensors", workspace / "output/t/adapters.safetensors")
