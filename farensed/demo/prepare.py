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


def prepare(ws: Workspace, log=print) -> Path:
    """Build (idempotently) the tiny model, the demo data and the demo spec; return the spec's path."""
    from farensed.demo.tinymodel import build_tiny_model

    build_tiny_model(ws.resolve(MODEL_DIR), log=log)
    paths = write_demo_data(ws.resolve(DATA_DIR))
    log(
        _("✅ Dados de demonstração: {path}, {path2}").format(
            path=paths["train"].relative_to(ws.root), path2=paths["valid"].relative_to(ws.root)
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
    return spec_path
