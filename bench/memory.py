"""`python -m bench.memory`: the training step's memory and speed, farense against `mlx_lm lora`, and the planner.

  --calibrate [--models tiny,smollm2]  measure a step's peak on recorded configurations (bench/memory_probe.py, one
                                       process each) and write them to bench/memory_calibration.json: the planner's
                                       coefficients are fitted on them and its error checked (tests read them too)
  --fit / --mistral / --shapes         the planner's coefficients (and their leave-one-out error), the seed's V2 on
                                       Mistral-7B (README's table), compiled shapes per gathered-count rule
                                       (bench/memcal.py)
  --compare                            peak memory of a few steps on SmolLM2 (masked chat data) against mlx_lm lora,
                                       training tokens/s on the demo; rewrites its RESULTS.md section
Ratios are measured side by side in one run; the machine is shared, so every pair is repeated and the spread shown.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import orjson

from bench.figures import REPO, env, write
from bench.memcal import (
    BASE,
    CALIBRATION,
    calibrate,
    fit,
    leave_one_out,
    mistral_table,
    shape_counts,
    smollm2_model,
    tiny_model,
)
from bench.memdata import write_chat_data


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--compare", action="store_true")
    parser.add_argument("--packing", action="store_true", help="the demo packed against unpacked: tokens/s")
    parser.add_argument("--fit", action="store_true", help="the planner's coefficients from the recorded steps")
    parser.add_argument("--shapes", action="store_true", help="compiled shapes per gathered-count rule")
    parser.add_argument("--mistral", action="store_true", help="the seed's V2 on Mistral-7B: the README's table")
    parser.add_argument("--repeats", type=int, default=2, help="pairs per figure")
    parser.add_argument("--no-write", action="store_true", help="print, leave RESULTS.md alone")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.calibrate:
        records = calibrate(args.models.split(","))
        old = orjson.loads(CALIBRATION.read_bytes()) if CALIBRATION.exists() else {"records": []}
        kept = [r for r in old["records"] if r["model"] not in args.models.split(",")]
        CALIBRATION.write_bytes(
            orjson.dumps({"date": str(dt.date.today()), "records": kept + records}, option=orjson.OPT_INDENT_2)
        )
        print(f"→ {CALIBRATION}")
    if args.fit:
        print("COEF =", fit())
        for label, error in leave_one_out():
            print(f"  leave-one-out {label:40} {error:+6.1f} %")
    if args.mistral:
        print(mistral_table())
    if args.shapes:
        print(shape_counts())
    if args.packing:
        from bench.__main__ import table

        text = table(packing_figures(args.repeats + 1))
        print(text)
        if not args.no_write:
            write_block("<!-- packing -->", "<!-- /packing -->", text)
    if args.compare:
        figures = compare(args.repeats)
        from bench.__main__ import table

        print(table(figures))
        if not args.no_write:
            write_section(figures)


# ---- side by side against mlx_lm lora -------------------------------------------------------------------------------
def farense_peak(root: Path, model: Path, data: dict, changes: dict, iters: int) -> float:
    """Process peak (GB, as mx.get_peak_memory reports it) of `farensectl run` over `iters` steps."""
    import shutil

    spec = dict(BASE, name="peak", model=str(model), data=data, iters=iters, **changes)
    spec.pop("epochs")  # the budget is iters
    shutil.rmtree(root / "checkpoints_qlora" / "peak", ignore_errors=True)
    path = write(root / "peak.json", spec)
    cmd = [sys.executable, "-m", "farensed.cli.main", "--home", str(root), "run", str(path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env())
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-2000:])
    records = orjson.loads((root / "checkpoints_qlora/peak/training_metrics.json").read_bytes())
    return max(r["peak_memory_gb"] for r in records)


def mlx_lm_peak(root: Path, model: Path, data: dict, iters: int) -> float:
    """mlx-lm's own trainer (bench/mlx_lm_anchor.py) on the same model, data, batch, LoRA shape and steps."""
    lora = BASE["lora"]
    args = {
        "model": model,
        "data": Path(data["train"]).parent,
        "batch_size": BASE["batch_size"],
        "iters": iters,
        "max_seq_length": BASE["max_seq_length"],
        "layers": lora["layers"],
        "rank": lora["rank"],
        "scale": lora["alpha"] / lora["rank"],
        "dropout": lora["dropout"],
        "learning_rate": BASE["learning_rate"],
        "grad_accumulation": 1,
        "seed": 0,
    }
    cmd = [sys.executable, "-m", "bench.mlx_lm_anchor", *(x for k, v in args.items() for x in (f"--{k}", str(v)))]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(), cwd=root)
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-2000:])
    return orjson.loads(proc.stdout.strip().splitlines()[-1])["peak_memory_gb"]


def peak_figures(root: Path, repeats: int, iters: int = 2) -> list:
    """SmolLM2 on masked chat data: farense's default step and mlx-lm's default_loss in farense, against mlx_lm lora."""
    from bench.figures import Figure

    model = smollm2_model(root)
    data = write_chat_data(root / "data" / "peak", 8, 4, 2, exact=True)  # 4 batches of one width: any 2 peak alike
    ours, plain, theirs = [], [], []
    for i in range(repeats):
        order = [0, 1, 2] if i % 2 == 0 else [2, 1, 0]  # alternate: the shared machine's load drifts
        for side in order:
            if side == 0:
                ours.append(farense_peak(root, model, data, {}, iters))
            elif side == 1:
                plain.append(farense_peak(root, model, data, {"counted_loss": False}, iters))
            else:
                theirs.append(mlx_lm_peak(root, model, data, iters))
        print(f"peak GB: farense {ours[-1]:.4f}, farense default_loss {plain[-1]:.4f}, mlx_lm lora {theirs[-1]:.4f}")
    note = (
        f"SmolLM2-135M-Instruct (Q4_1 GGUF, vocabulary 49,152), chat data of the demo's kind (316–341 tokens, ~60 % "
        f"masked prompt), batch 2, LoRA on the "
        f"last {BASE['lora']['layers']} layers, {iters} steps; process peak (weights ~0.1 GB included)"
    )
    return [
        Figure("peak memory, SmolLM2 step", ours, theirs, "GB", "≤ 0.6× mlx_lm lora", "mlx_lm lora", note),
        Figure(
            "· farense with counted_loss: false", plain, theirs, "GB", "≈ 1×", "mlx_lm lora", "mlx-lm's default_loss"
        ),
    ]


def planner_figures() -> list:
    """The planner's error on every recorded measurement (bench/memory_calibration.json)."""
    from bench.figures import Figure
    from farensed.doctor.memplan import ModelShape, StepShape, plan
    from farensed.spec.jobspec import parse_spec

    figures = []
    for model in ("tiny", "smollm2"):
        errors = []
        for r in orjson.loads(CALIBRATION.read_bytes())["records"]:
            if r["model"] != model:
                continue
            spec = parse_spec(dict(r["spec"], model="m", data={"train": "t", "valid": "v"}))
            step = StepShape(r["rows"], r["width"] + (1 if spec.pack else 0), r["counted"], r["gathered"] or 0)
            errors.append(abs(plan(spec, ModelShape(**r["shape"]), step)["total"] / r["peak_bytes"] - 1) * 100)
        if errors:
            figures.append(
                Figure(
                    f"planner error, {model} ({len(errors)} measured steps)",
                    errors,
                    None,
                    "%",
                    "≤ 15 %",
                    note="|predicted − measured| / measured, per step configuration; median (min–max)",
                )
            )
    return figures


def compare(repeats: int) -> list:
    """Peaks and training tokens/s against mlx_lm lora (the whole run has its own section: `python -m bench
    --wholerun`)."""
    from bench.figures import training_throughput, workspace

    figures = planner_figures()
    with tempfile.TemporaryDirectory(prefix="farense-mem-") as tmp:
        root = workspace(Path(tmp) / "ws", tiny_model())
        peaks = peak_figures(root, repeats)
        throughput = training_throughput(root, repeats + 1)
        throughput[0].goal = "≥ 1.3× mlx_lm lora"
        figures += peaks + throughput
    return figures


def write_section(figures: list) -> None:
    from bench.__main__ import machine, table

    text = (
        f"## Memory of a step (`python -m bench.memory --compare`)\n\nMachine: {machine()}, shared with other jobs "
        f"(15-minute load average {os.getloadavg()[2]:.1f} when written). Date: {dt.date.today()}. Median (min–max) "
        f"of pairs measured back to back, the order alternating.\n\n{table(figures)}"
    )
    write_block("<!-- memory -->", "<!-- /memory -->", text)


def packing_figures(repeats: int) -> list:
    """The demo packed against the same spec unpacked (max_seq_length 256: a row holds ~4 demo examples): tokens/s
    and steps. Not the same schedule: packing makes fewer, fuller steps."""
    from bench.figures import BENCH_SPEC, Figure, run_farense, workspace

    spec = dict(BENCH_SPEC, max_seq_length=256)
    packed, plain, steps = [], [], {}
    with tempfile.TemporaryDirectory(prefix="farense-pack-") as tmp:
        root = workspace(Path(tmp) / "ws", tiny_model())
        for i in range(repeats):
            for pack in (True, False) if i % 2 == 0 else (False, True):
                summary = run_farense(root, dict(spec, pack=pack))
                (packed if pack else plain).append(summary["tokens_per_second"])
                steps[pack] = summary["steps_run"]
    note = (
        f"demo, batch 4, max_seq_length 256, 3 epochs: {steps[True]} packed steps against {steps[False]}; "
        "the same tokens trained"
    )
    return [Figure("training tokens/s, pack: true", packed, plain, "tok/s", "—", "pack: false", note, False)]


def write_block(begin: str, end: str, text: str) -> None:
    """Replace the text between two markers of RESULTS.md (or add it before the main table)."""
    results = REPO / "bench" / "RESULTS.md"
    current = results.read_text()
    block = f"{begin}\n{text}\n{end}"
    if begin in current:
        head, rest = current.split(begin, 1)
        current = head + block + rest.split(end, 1)[1]
    else:
        head, tail = current.split("<!-- table -->", 1)
        current = f"{head}{block}\n\n<!-- table -->{tail}"
    results.write_text(current)


if __name__ == "__main__":
    main()
