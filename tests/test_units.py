"""Small pure pieces: gap bands, early stopping, metrics read from the end, durable writes."""

from __future__ import annotations

import orjson
import pytest

from farensed.analysis.gap import analyse, band, format_analysis
from farensed.analysis.metrics import MetricsLog, read_all, read_last
from farensed.engine.stopping import EarlyStopping
from farensed.storage.atomic import atomic_write_json, move_aside, read_json


@pytest.mark.parametrize(
    "gap,expected",
    [
        (-0.2, "EXCELENTE"),
        (0.0499, "EXCELENTE"),
        (0.05, "BOM"),
        (0.1499, "BOM"),
        (0.15, "MODERADO"),
        (0.2999, "MODERADO"),
        (0.30, "CRÍTICO"),
        (2.27, "CRÍTICO"),
    ],
)
def test_bands_follow_the_seed(gap, expected):
    assert band(gap) == expected


def test_analysis_mean_max_min_and_seed_block():
    records = [
        {"step": 1, "epoch": 0, "loss": 2.0},
        {"step": 2, "epoch": 0, "loss": 1.9, "train_loss": 1.95, "val_loss": 2.0, "gap": 0.05, "band": "BOM"},
        {"step": 4, "epoch": 1, "loss": 1.5, "train_loss": 1.6, "val_loss": 1.727, "gap": 0.127, "band": "BOM"},
    ]
    analysis = analyse(records)
    assert analysis["status"] == "BOM"
    assert analysis["gap_mean"] == pytest.approx(0.0885)
    assert (analysis["gap_max"], analysis["gap_min"]) == (0.127, 0.05)
    text = format_analysis(analysis)
    assert analysis["best_step"] == 4 and analysis["best_gap"] == 0.127
    assert "ANÁLISE FINAL DE OVERFITTING" in text and "Status: ✅ BOM (gap < 0.15, no melhor modelo: step 4" in text
    assert "Gap médio: 0.0885" in text and "Gap máximo: 0.1270" in text and "Gap mínimo: 0.0500" in text


def test_early_stopping_counts_patience_and_keeps_the_best():
    es = EarlyStopping(patience=2, min_delta=0.01)
    assert es.update(2.0, 10, 0) is True
    assert es.update(1.995, 20, 0) is False and es.wait == 1  # inside min_delta: no improvement
    assert es.update(1.5, 30, 1) is True and es.wait == 0
    es.update(1.6, 40, 1)
    es.update(1.7, 50, 1)
    assert es.stopped and (es.best_step, es.best_epoch, es.best_val_loss) == (30, 1, 1.5)
    assert EarlyStopping.from_dict(orjson.loads(orjson.dumps(es.to_dict()))) == es


def test_metrics_files_agree_and_read_last_reads_from_the_end(tmp_path):
    log = MetricsLog(tmp_path, flush_every_s=3600)
    for step in range(1, 2001):
        log.append({"step": step, "epoch": 0, "loss": 1.0 / step}, force_flush=step % 500 == 0)
    assert read_json(tmp_path / "training_metrics.json")[-1]["step"] == 2000
    assert [r["step"] for r in read_last(tmp_path, 3)] == [1998, 1999, 2000]
    assert len(read_all(tmp_path)) == 2000
    assert (tmp_path / "training_metrics.csv").read_text().splitlines()[0].startswith("step,epoch,loss")
    with open(tmp_path / "training_metrics.jsonl", "ab") as fh:
        fh.write(b'{"step": 20')  # a torn last line is skipped
    assert [r["step"] for r in read_last(tmp_path, 2)] == [1999, 2000]


def test_atomic_write_leaves_no_temp_and_move_aside_keeps_everything(tmp_path):
    tmp_path = tmp_path / "d"
    tmp_path.mkdir()
    atomic_write_json(tmp_path / "a.json", {"x": 1})
    atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert read_json(tmp_path / "a.json") == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "f").write_text("keep")
    moved = move_aside(tmp_path / "run")
    assert (moved / "f").read_text() == "keep" and not (tmp_path / "run").exists()
