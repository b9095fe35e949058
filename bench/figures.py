"""Each benchmark figure: a function returning a Figure (farense value, anchor value, goal). No assertions."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Figure:
    name: str
    farense: list[float]
    anchor: list[float] | None
    unit: str
    goal: str
    anchor_name: str = "—"
    note: str = ""
    lower_is_better: bool = True

    @staticmethod
    def fmt(values: list[float] | None, unit: str) -> str:
        if not values:
            return "—"
        med = statistics.median(values)
        if len(values) == 1:
            return f"{med:,.3g} {unit}"
        return f"{med:,.3g} ({min(values):,.3g}–{max(values):,.3g}) {unit}"

    def ratio(self) -> float | None:
        if not self.anchor:
            return None
        return statistics.median(self.farense) / statistics.median(self.anchor)


def env() -> dict:
    e = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
    return e


def workspace(root: Path, model: Path) -> Path:
    from farensed.demo.data import write_demo_data

    (root / "models").mkdir(parents=True, exist_ok=True)
    if not (root / "models/tiny-mistral-4bit").exists():
        (root / "models/tiny-mistral-4bit").symlink_to(model, target_is_directory=True)
    write_demo_data(root / "data/demo")
    return root


BENCH_SPEC = {
    "name": "bench",
    "model": "models/tiny-mistral-4bit",
    "data": {"train": "data/demo/train.jsonl", "valid": "data/demo/valid.jsonl"},
    "lora": {"rank": 6, "alpha": 16, "dropout": 0.08, "layers": 2},
    "batch_size": 4,
    "grad_accumulation": 2,
    "learning_rate": 2e-3,
    "epochs": 3,
    "max_seq_length": 128,
    "eval_every": 1000,
    "save_every": 200,
    "keep_checkpoints": 2,
    "early_stopping": None,
    "evaluate": False,
}


def write(path: Path, obj) -> Path:
    path.write_bytes(orjson.dumps(obj, option=orjson.OPT_INDENT_2))
    return path


def run_farense(root: Path, spec: dict) -> dict:
    """Train a spec in a fresh process; return its summary."""
    if (root / "checkpoints_qlora").exists():
        shutil.rmtree(root / "checkpoints_qlora")
    path = write(root / "bench.json", spec)
    subprocess.run(
        [sys.executable, "-m", "farensed.cli.main", "--home", str(root), "run", str(path)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(),
    )
    return orjson.loads((root / "checkpoints_qlora" / spec["name"] / "training_summary.json").read_bytes())


def run_mlx_lm_lora(root: Path, spec: dict, iters: int, extra: tuple = ()) -> tuple[float, float]:
    """mlx-lm's own LoRA trainer (what `mlx_lm lora` runs) on the same model, data, batch, length, steps."""
    lora = spec["lora"]
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.mlx_lm_anchor",
            "--model",
            str(root / spec["model"]),
            "--data",
            str(root / "data/demo"),
            "--batch_size",
            str(spec["batch_size"]),
            "--iters",
            str(iters),
            "--max_seq_length",
            str(spec["max_seq_length"]),
            "--layers",
            str(lora["layers"]),
            "--rank",
            str(lora["rank"]),
            "--scale",
            str(lora["alpha"] / lora["rank"]),
            "--dropout",
            str(lora["dropout"]),
            "--learning_rate",
            str(spec["learning_rate"]),
            "--grad_accumulation",
            str(spec["grad_accumulation"]),
            "--seed",
            "0",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env(),
        cwd=root,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    result = orjson.loads(proc.stdout.strip().splitlines()[-1])
    return result["tokens_per_second"], result["peak_memory_gb"]


def training_throughput(root: Path, repeats: int) -> list[Figure]:
    """Tokens/s and peak memory of farense vs mlx_lm lora, interleaved in one run."""
    spec = dict(BENCH_SPEC)
    ours, theirs, our_mem, their_mem, steps = [], [], [], [], None
    for _ in range(repeats):
        summary = run_farense(root, spec)
        steps = summary["steps_run"]
        ours.append(summary["tokens_per_second"])
        metrics = orjson.loads((root / "checkpoints_qlora/bench/training_metrics.json").read_bytes())
        our_mem.append(max(r["peak_memory_gb"] for r in metrics))
        tps, peak = run_mlx_lm_lora(root, spec, steps)
        theirs.append(tps)
        their_mem.append(peak)
    note = f"{steps} steps, batch 4, grad_accumulation 2, max_seq_length 128, rank 6, dropout 0.08, same data"
    return [
        Figure(
            "training tokens/s",
            ours,
            theirs,
            "tok/s",
            "≥ 1.05× mlx_lm lora",
            "mlx_lm lora",
            note,
            lower_is_better=False,
        ),
        Figure("peak memory (training)", our_mem, their_mem, "GB", "≈ mlx_lm lora", "mlx_lm lora"),
    ]


def first_new_record_after(root: Path, spec_path: Path, before: int) -> float:
    """Seconds from launching `farensectl run` until its first new metrics record appears."""
    jsonl = root / "checkpoints_qlora/bench/training_metrics.jsonl"
    tic = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "farensed.cli.main", "--home", str(root), "run", str(spec_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env(),
    )
    while True:
        lines = jsonl.read_bytes().count(b"\n") if jsonl.exists() else 0
        if lines > before and proc.poll() is None:
            elapsed = time.perf_counter() - tic
            break
        if proc.poll() is not None:
            raise RuntimeError("run ended before its first record")
        time.sleep(0.005)
    proc.terminate()
    proc.wait()
    return elapsed


def resume_startup(root: Path, repeats: int) -> list[Figure]:
    """Launch → first training record: resumed from a checkpoint vs a fresh start."""
    spec = dict(BENCH_SPEC, epochs=3, save_every=40)
    path = write(root / "bench.json", spec)
    fresh, resumed = [], []
    for _ in range(repeats):
        shutil.rmtree(root / "checkpoints_qlora", ignore_errors=True)
        fresh.append(first_new_record_after(root, path, 0))
        shutil.rmtree(root / "checkpoints_qlora", ignore_errors=True)
        proc = subprocess.Popen(
            [sys.executable, "-m", "farensed.cli.main", "--home", str(root), "run", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env(),
        )
        state = root / "checkpoints_qlora/bench/training_state.json"
        while not state.exists():
            time.sleep(0.01)
        proc.terminate()
        proc.wait()
        records = orjson.loads(state.read_bytes())["metrics_records"]
        resumed.append(first_new_record_after(root, path, records))
    return [
        Figure("resume start-up (launch → first step)", resumed, fresh, "s", "≤ 1.10× fresh start-up", "fresh start-up")
    ]


def checkpoint_share(root: Path) -> list[Figure]:
    """Checkpoint write time as a share of the V2 save interval (200 steps) of step time."""
    summary = run_farense(root, dict(BENCH_SPEC, save_every=20, keep_checkpoints=2))
    share = summary["checkpoint_s_mean"] / (200 * summary["step_s_mean"]) * 100
    return [
        Figure(
            "checkpoint save share at save_every=200",
            [share],
            None,
            "%",
            "< 5 %",
            note=f"one checkpoint {summary['checkpoint_s_mean'] * 1000:.1f} ms, "
            f"one step {summary['step_s_mean'] * 1000:.1f} ms",
        )
    ]
