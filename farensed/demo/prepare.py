"""`farensectl demo`: build the tiny model, the demo data and jobs/examples/demo.json in a workspace."""

from __future__ import annotations

from pathlib import Path

from farensed.demo.data import write_demo_data
from farensed.i18n import _
from farensed.storage.atomic import atomic_write_json, read_json
from farensed.storage.workspace import Workspace

MODEL_DIR = "models/tiny-mistral-4bit"
DATA_DIR = "data/demo"
SPEC_PATH = "jobs/examples/demo.json"
EXAMPLES_DIR = "jobs/examples"

# V2 settings scaled to the tiny model: same LoRA shape, dropout and early stopping as the seed's V2.
DEMO_SPEC = {
    "name": "demo",
    "model": MODEL_DIR,
    "data": {"train": f"{DATA_DIR}/train.jsonl", "valid": f"{DATA_DIR}/valid.jsonl"},
    "lora": {"rank": 6, "alpha": 16, "dropout": 0.08, "layers": 16},
    "batch_size": 4,
    "grad_accumulation": 2,
    "learning_rate": 2e-3,
    "epochs": 3,
    "max_seq_length": 256,
    "seed": 0,
    "eval_every": 12,
    "save_every": 24,
    "keep_checkpoints": 3,
    "early_stopping": {"patience": 5, "min_delta": 0.001},
    "evaluate": True,
}


# The seed's two runs (jobs/examples/v1.json and v2.json in a checkout; a fast test keeps them equal), written by
# `demo --prepare` where they are missing, so that a wheel's user has the README's day too.
SEED_V1 = {
    "name": "mistral-7b-farense-qlora-v1",
    "model": "models/mistral-7b-4bit",
    "data": {"train": "data/train_v3_final_complete.jsonl", "valid": "data/valid_v3_final_complete.jsonl"},
    "lora": {"rank": 8, "alpha": 16, "dropout": 0.0, "layers": 16},
    "batch_size": 4,
    "grad_accumulation": 4,
    "learning_rate": 5e-4,
    "epochs": 3,
    "max_seq_length": 2048,
    "seed": 0,
    "eval_every": 50,
    "save_every": 200,
    "keep_checkpoints": 3,
    "early_stopping": None,
    "evaluate": True,
}
SEED_V2 = {
    **SEED_V1,
    "name": "mistral-7b-farense-qlora-v2",
    "lora": {"rank": 6, "alpha": 16, "dropout": 0.08, "layers": 16},
    "batch_size": 2,
    "learning_rate": 2e-4,
    "early_stopping": {"patience": 5, "min_delta": 0.001},
    "success": {"loss_drop": 0.6, "val_improves": True, "gap_max": 0.15, "f1_min": 0.93},
}
EXAMPLES = {"v1.json": SEED_V1, "v2.json": SEED_V2}


def write_examples(ws: Workspace, log=print) -> list[Path]:
    """jobs/examples/v1.json and v2.json where missing; a file already there (perhaps edited) is left alone."""
    written = []
    for name, spec in EXAMPLES.items():
        path = ws.resolve(f"{EXAMPLES_DIR}/{name}")
        if not path.exists():
            atomic_write_json(path, spec)
            written.append(path)
    if written:
        log(
            _("✅ Exemplos do dia a dia: {paths} (apontam para models/mistral-7b-4bit e data/: ver README)").format(
                paths=", ".join(str(p.relative_to(ws.root)) for p in written)
            )
        )
    return written


def prepare(ws: Workspace, log=print) -> Path:
    """Build (idempotently) the tiny model, the demo data and the demo spec; return the spec's path."""
    from farensed.demo.tinymodel import build_tiny_model

    build_tiny_model(ws.resolve(MODEL_DIR), log=log)
    paths = write_demo_data(ws.resolve(DATA_DIR))
    log(
        _("✅ Dados de demonstração: {train}, {valid}").format(
            train=paths["train"].relative_to(ws.root), valid=paths["valid"].relative_to(ws.root)
        )
    )
    spec_path = ws.resolve(SPEC_PATH)
    try:
        current = read_json(spec_path)
    except (OSError, ValueError):  # missing or not JSON: rewrite it
        current = None
    if current != DEMO_SPEC:
        atomic_write_json(spec_path, DEMO_SPEC)
    log(_("✅ Spec de demonstração: {path}").format(path=SPEC_PATH))
    write_examples(ws, log)
    return spec_path
