"""A run folder's records however they were written: farense's metrics log, or the seed's training_metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import orjson

from farensed.analysis.gap import band
from farensed.analysis.metrics import JSON_NAME, JSONL_NAME, clean_numbers, read_all
from farensed.storage.regular import read_regular

MAX_SEED_BYTES = 256 * 1024 * 1024  # the seed's whole history in one JSON file; more is not one


def load_records(run_dir: Path) -> list[dict]:
    """farense's training_metrics.jsonl, else the seed's training_metrics.json normalised (gap, band added)."""
    run_dir = Path(run_dir)
    if (run_dir / JSONL_NAME).exists():
        return read_all(run_dir)
    try:
        data = read_regular(run_dir / JSON_NAME, MAX_SEED_BYTES)
    except OSError:
        return []
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError:
        try:  # Python's json.dump writes a diverged loss as NaN, which JSON (and orjson) refuse: that value is dropped
            raw = json.loads(data)
        except (ValueError, RecursionError):
            return []
    return seed_records(raw if isinstance(raw, list) else [])


def seed_records(raw: list[dict]) -> list[dict]:
    """The seed's records (step, epoch, loss, sometimes val_loss) in farense's shape.

    The gap of a validation is val_loss − the mean train loss since the previous validation (farense's
    definition), unless the record carries its own `train_loss`/`gap`.
    """
    out, window = [], []
    cleaned = (clean_numbers(x) for x in raw if isinstance(x, dict))
    for i, r in enumerate(r for r in cleaned if "loss" in r or "train_loss" in r or "val_loss" in r):
        rec = dict(r)
        rec["step"] = r.get("step", r.get("iteration", r.get("iter", i + 1)))
        rec["epoch"] = r.get("epoch", 0)
        if rec.get("loss") is None and r.get("train_loss") is not None and r.get("val_loss") is None:
            rec["loss"] = r["train_loss"]
        if rec.get("loss") is not None:
            window.append(rec["loss"])
        if rec.get("val_loss") is not None:
            train = r.get("train_loss")
            if train is None:
                train = sum(window) / len(window) if window else rec.get("loss")
            if train is None:
                continue  # a validation with no train loss before it has no gap
            rec["train_loss"] = train
            rec["gap"] = r.get("gap", rec["val_loss"] - train)
            rec["band"] = band(rec["gap"])
            window = []
        out.append(rec)
    return out
