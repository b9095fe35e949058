"""report_to: wandb, as `mlx_lm lora --report-to wandb` does it, offline: the W&B run holds the metrics files'
numbers, and a resumed run continues the same W&B run. Needs the optional extra `wandb` (skipped without it)."""

from __future__ import annotations

import json
import signal
import struct

import orjson
import pytest

from farensed import EXIT_RESUMABLE
from tests.helpers import kill_at_record, run_cli, spec_with, write_spec

wandb = pytest.importorskip("wandb", reason="report_to needs the extra 'wandb': pip install -e '.[wandb]'")

BLOCK, HEADER = 32768, 7  # the run file: ":W&B" + magic + version, then LevelDB-style log blocks of 32 KiB


def wandb_records(path):
    """The protobuf records of an offline run file (wandb's own reader is no longer in the Python package)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, chunks, out = path.read_bytes(), HEADER, [], []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunks.append(data[pos + 7 : pos + 7 + length])
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST: a whole record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            out.append(record)
            chunks = []
    return out


def history(run_dir):
    """step -> the values the W&B run holds at that step, over every offline run folder; and the run ids."""
    rows, ids = {}, set()
    for run_file in sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb")):
        for record in wandb_records(run_file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                ids.add(record.run.run_id)
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                rows.setdefault(items.get("_step"), {}).update(items)
    return rows, ids


def test_a_killed_and_resumed_run_reports_the_metrics_files_numbers_to_one_wandb_run(workspace, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    spec = write_spec(workspace, spec_with(epochs=1, report_to="wandb", project_name="farense-test"))
    assert kill_at_record(workspace, spec, 8, sig=signal.SIGTERM) == EXIT_RESUMABLE  # checkpoint, then stop
    proc = run_cli(workspace, "run", str(spec))
    assert proc.returncode == 0, proc.stdout[-3000:]
    run_dir = workspace / "checkpoints_qlora/t"
    rows, ids = history(run_dir)
    assert len(ids) == 1 and ids == {orjson.loads((run_dir / "report_to.json").read_bytes())["wandb_id"]}
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 2  # two processes, one W&B run
    records = orjson.loads((run_dir / "training_metrics.json").read_bytes())
    assert sorted(rows) == [r["step"] for r in records]  # every record once, none lost at the resume
    for record in records:
        row = rows[record["step"]]
        for key in ("loss", "learning_rate", "epoch", "trained_tokens", "val_loss", "gap", "band"):
            if key in record:
                assert row[key] == pytest.approx(record[key], rel=1e-6) if key != "band" else row[key] == record[key]
