"""Issue 12's figures: peak memory with grad_checkpoint vs without, and tokens/s of each mlx_lm lora option in
farense vs `mlx_lm lora` (mlx-lm's own trainer, bench/mlx_lm_anchor.py) with the same option, interleaved in one run.

`python -m bench.options [--quick]` prints the table; without --quick it also rewrites its section of
bench/RESULTS.md (between the `<!-- options -->` markers, above the main table). Timings are never test assertions.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench.figures import BENCH_SPEC, REPO, Figure, env, run_farense, run_mlx_lm_lora, workspace

SCHEDULE = {"name": "cosine_decay", "arguments": [2e-3, 30, 1e-5], "warmup": 5, "warmup_init": 1e-5}
# option -> (farense spec keys, anchor arguments)
OPTIONS = {
    "lora + adam (V2 baseline)": ({}, []),
    "dora": ({"fine_tune_type": "dora"}, ["--fine_tune_type", "dora"]),
    "full (float model)": ({"fine_tune_type": "full"}, ["--fine_tune_type", "full"]),
    "adamw + cosine_decay with warmup": (
        {"optimizer": "adamw", "lr_schedule": SCHEDULE},
        ["--optimizer", "adamw", "--lr_schedule", orjson.dumps(SCHEDULE).decode()],
    ),
    "adafactor": ({"optimizer": "adafactor"}, ["--optimizer", "adafactor"]),
    "grad_checkpoint": ({"grad_checkpoint": True}, ["--grad_checkpoint", "1"]),
}


def _spec(iters: int, keys: dict) -> dict:
    spec = {k: v for k, v in copy.deepcopy(BENCH_SPEC).items() if k != "epochs"}
    spec.update(iters=iters, save_every=iters, **keys)
    if keys.get("fine_tune_type") == "full":
        spec["model"] = "models/tiny-fp32"
    return spec


def _farense(root: Path, spec: dict) -> tuple[float, float]:
    summary = run_farense(root, spec)
    metrics = orjson.loads((root / "checkpoints_qlora/bench/training_metrics.json").read_bytes())
    return summary["tokens_per_second"], max(r["peak_memory_gb"] for r in metrics)


def _float_model(root: Path) -> None:
    """The tiny model dequantized by `mlx_lm convert -d` (full fine-tuning trains float weights)."""
    target = root / "models/tiny-fp32"
    if not target.exists():
        src = str(root / "models/tiny-mistral-4bit")
        cmd = [sys.executable, "-m", "mlx_lm", "convert", "--hf-path", src, "--mlx-path", str(target), "-d"]
        subprocess.run(cmd, check=True, capture_output=True, env=env())


def option_figures(root: Path, repeats: int, iters: int) -> list[Figure]:
    """Every option in farense and in mlx_lm lora, interleaved; plus grad_checkpoint's peak-memory ratio."""
    _float_model(root)
    tps: dict[str, tuple[list, list]] = {name: ([], []) for name in OPTIONS}
    mem: dict[str, tuple[list, list]] = {name: ([], []) for name in OPTIONS}
    for _ in range(repeats):
        for name, (keys, extra) in OPTIONS.items():
            spec = _spec(iters, keys)
            ours, our_peak = _farense(root, spec)
            theirs, their_peak = run_mlx_lm_lora(root, spec, iters, tuple(extra))
            tps[name][0].append(ours)
            tps[name][1].append(theirs)
            mem[name][0].append(our_peak)
            mem[name][1].append(their_peak)
            print(f"{name}: farense {ours:.0f} tok/s, mlx_lm lora {theirs:.0f} tok/s", flush=True)
    note = f"{iters} steps, batch 4, grad_accumulation 2, max_seq_length 128, rank 6, 2 layers"
    figures = [
        Figure(f"tokens/s: {name}", ours, theirs, "tok/s", "≈ mlx_lm lora", "mlx_lm lora", note, False)
        for name, (ours, theirs) in tps.items()
    ]
    base, ckpt = "lora + adam (V2 baseline)", "grad_checkpoint"
    figures.append(
        Figure(
            "peak memory, grad_checkpoint vs without (farense)",
            mem[ckpt][0],
            mem[base][0],
            "GB",
            "< 1×",
            "without",
            "same spec otherwise",
        )
    )
    figures.append(
        Figure(
            "peak memory, grad_checkpoint vs without (mlx_lm lora)",
            mem[ckpt][1],
            mem[base][1],
            "GB",
            "reference",
            "without",
            "mlx-lm's own trainer",
        )
    )
    return figures


def write_section(text: str, machine: str) -> None:
    """Replace (or add, above the main table) the options section of bench/RESULTS.md."""
    results = REPO / "bench/RESULTS.md"
    current = results.read_text()
    section = (
        "<!-- options -->\n## mlx_lm lora's options (issue 12)\n\n"
        "`python -m bench.options`: each option trained by farense and by mlx-lm's own trainer with the same option "
        "(`bench/mlx_lm_anchor.py`), interleaved; ratio = farense / mlx_lm lora. Peak memory with `grad_checkpoint` "
        f"is compared with the same spec without it.\n\nMachine: {machine}. Date: {dt.date.today()}.\n\n{text}\n"
        "<!-- /options -->\n\n"
    )
    if "<!-- options -->" in current:
        before, rest = current.split("<!-- options -->", 1)
        current = before + section + rest.split("<!-- /options -->\n\n", 1)[-1]
    else:
        before, after = current.split("<!-- table -->", 1)
        current = before + section + "<!-- table -->" + after
    results.write_text(current)


def main() -> None:
    from bench.__main__ import machine, table

    parser = argparse.ArgumentParser(prog="python -m bench.options", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one repeat, fewer steps, print only")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    from farensed.demo.tinymodel import build_tiny_model, recipe_hash

    cache = Path(os.environ.get("FARENSE_TEST_CACHE", REPO / "tests/.cache"))  # the tests' tiny model, if built
    model = build_tiny_model(cache / f"tiny-mistral-4bit-{recipe_hash()}", log=lambda *_: None)
    with tempfile.TemporaryDirectory(prefix="farense-bench-options-") as tmp:
        root = workspace(Path(tmp), model)
        figures = option_figures(root, repeats=1 if args.quick else 2, iters=30 if args.quick else 60)
    text = table(figures)
    print(f"\n{text}\n\n({time.perf_counter() - started:.0f} s)")
    if not args.quick:
        write_section(text, machine())


if __name__ == "__main__":
    main()
