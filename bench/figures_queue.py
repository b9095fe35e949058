"""Benchmark figures of the daemon, the CLI, tail and evaluation."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil

from bench.figures import BENCH_SPEC, Figure, env, write


def _cli_seconds(root: Path, *args: str, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        tic = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "farensed.cli.main", "--home", str(root), *args],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env(),
        )
        out.append(time.perf_counter() - tic)
    return out


def _start_daemon(root: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "farensed.queue.main", "--home", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(),
    )
    while not (root / "jobs/daemon.pid").exists():
        time.sleep(0.01)
    time.sleep(1.0)  # let it settle into its idle loop
    return proc


def daemon_figures(root: Path, repeats: int, idle_seconds: float) -> list[Figure]:
    """Submit → child started on an idle daemon; idle RSS and CPU."""
    from farensed.queue.jobs import Queue
    from farensed.storage.workspace import Workspace

    shutil.rmtree(root / "jobs", ignore_errors=True)
    daemon = _start_daemon(root)
    try:
        proc = psutil.Process(daemon.pid)
        cpu0, tic = proc.cpu_times(), time.perf_counter()
        time.sleep(idle_seconds)
        cpu1, wall = proc.cpu_times(), time.perf_counter() - tic
        rss = proc.memory_info().rss / 2**20
        cpu = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / wall * 100
        q = Queue(Workspace(root))
        latencies = []
        spec = write(root / "quick.json", dict(BENCH_SPEC, name="quick", epochs=1))
        for _ in range(repeats):
            tic = time.perf_counter()
            job = q.submit(spec)
            while q.get(job.id).pid is None:
                time.sleep(0.002)
            latencies.append((time.perf_counter() - tic) * 1000)
            while not q.get(job.id).status.terminal:
                time.sleep(0.05)
            time.sleep(1.0)  # idle again before the next submit
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait()
    return [
        Figure("submit → child started (idle daemon)", latencies, None, "ms", "< 250 ms"),
        Figure("idle daemon RSS", [rss], None, "MB", "< 60 MB"),
        Figure(f"idle daemon CPU over {idle_seconds:.0f} s", [cpu], None, "%", "< 0.5 %"),
    ]


def cli_figures(root: Path, repeats: int, jobs: int = 1000) -> list[Figure]:
    """`farensectl --help` and `list` with 1,000 jobs."""
    from farensed.queue.job import Job
    from farensed.queue.jobs import Queue
    from farensed.storage.workspace import Workspace

    shutil.rmtree(root / "jobs", ignore_errors=True)
    q = Queue(Workspace(root))
    for i in range(1, jobs + 1):
        (q.job_dir(i)).mkdir()
        q.save(Job(id=i, name=f"job-{i}", state="done"))
    return [
        Figure(
            "farensectl --help",
            [s * 1000 for s in _cli_seconds(root, "--help", repeats=repeats)],
            None,
            "ms",
            "< 250 ms",
        ),
        Figure(
            f"farensectl list ({jobs} jobs)",
            [s * 1000 for s in _cli_seconds(root, "list", repeats=repeats)],
            None,
            "ms",
            "< 400 ms",
        ),
    ]


def tail_figures(root: Path, repeats: int, big: int) -> list[Figure]:
    """`tail -n 20` on a huge metrics file vs a small one (cost independent of length)."""
    from farensed.queue.job import Job
    from farensed.queue.jobs import Queue
    from farensed.storage.workspace import Workspace

    shutil.rmtree(root / "jobs", ignore_errors=True)
    q = Queue(Workspace(root))
    for job_id, name, n in ((1, "small", 100), (2, "big", big)):
        q.job_dir(job_id).mkdir()
        q.save(Job(id=job_id, name=name, state="done"))
        run = root / "checkpoints_qlora" / name
        run.mkdir(parents=True, exist_ok=True)
        line = (
            orjson.dumps(
                {
                    "step": 1,
                    "total_steps": n,
                    "epoch": 0,
                    "loss": 1.5,
                    "learning_rate": 2e-4,
                    "tokens_per_second": 2500.0,
                    "peak_memory_gb": 0.1,
                    "elapsed_s": 1.0,
                }
            )
            + b"\n"
        )
        with open(run / "training_metrics.jsonl", "wb") as fh:
            for start in range(0, n, 10000):
                fh.write(line * min(10000, n - start))
    small = _cli_seconds(root, "tail", "1", "-n", "20", "--no-follow", repeats=repeats)
    large = _cli_seconds(root, "tail", "2", "-n", "20", "--no-follow", repeats=repeats)
    return [
        Figure(
            f"tail -n 20 on {big:,} records",
            [s * 1000 for s in large],
            [s * 1000 for s in small],
            "ms",
            "ratio ≈ 1",
            "100 records",
        )
    ]


def eval_figures(root: Path) -> list[Figure]:
    """Evaluation examples/s, batched generation vs one by one (same adapters, same data)."""
    from bench.figures import run_farense
    from farensed.engine.evaluate import PROGRESS, REPORT, Evaluator
    from farensed.spec.jobspec import parse_spec
    from farensed.storage.workspace import Workspace

    spec_dict = dict(BENCH_SPEC, epochs=1)
    run_farense(root, spec_dict)
    spec, ws = parse_spec(spec_dict), Workspace(root)
    rates = {}
    for batched in (True, False):
        run_dir = ws.run_dir(spec.name)
        for name in (PROGRESS, REPORT):
            (run_dir / name).unlink(missing_ok=True)
        evaluator = Evaluator(spec, ws, batched=batched, log=lambda *_: None)
        tic = time.perf_counter()
        evaluator.run()
        rates[batched] = 2 * len(evaluator.examples) / (time.perf_counter() - tic)
    return [
        Figure(
            "evaluation examples/s (base + adapters)",
            [rates[True]],
            [rates[False]],
            "ex/s",
            "batched > one by one",
            "one by one",
            lower_is_better=False,
        )
    ]
