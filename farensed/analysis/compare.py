"""The seed's V1-vs-V2 table, for any runs: queue jobs, run names, run folders, seed-era folders."""

from __future__ import annotations

import statistics

from farensed.analysis.gap import analyse, band_label
from farensed.analysis.success import run_verdicts
from farensed.i18n import N_, _
from farensed.statewords import state_label
from farensed.terminal import safe

# The comparison's rows, for every view of it (farensectl compare, the morning report): label (translated where it
# is shown), column key, number format.
ROWS = [
    (N_("corrida"), "name", None),
    (N_("estado"), "state", None),
    (N_("loss final"), "final_loss", ".4f"),
    (N_("val_loss final"), "final_val_loss", ".4f"),
    (N_("melhor val_loss"), "best_val_loss", ".4f"),
    (N_("status"), "status", None),
    (N_("gap médio"), "gap_mean", ".4f"),
    (N_("gap máximo"), "gap_max", ".4f"),
    (N_("gap mínimo"), "gap_min", ".4f"),
    (N_("épocas"), "epochs_run", None),
    (N_("steps"), "steps_run", None),
    (N_("early stopping"), "early_stopped", None),
    (N_("tempo treino (s)"), "wall_time_s", ".0f"),
    (N_("tok/s (estável)"), "tokens_per_second", ".0f"),
    (N_("F1"), "f1", ".4f"),
    (N_("exact match"), "exact_match", ".4f"),
]


def cell(value, spec: str | None = ".4f", key: str | None = None) -> str:
    """One value of the table for a person: a number in its format, yes/no in the reader's language, '-' for none
    (never a Python literal such as False or None)."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return _("sim") if value else _("não")
    if key == "status":
        return band_label(value)  # a gap band, as it reads in the chosen language
    if key == "state":
        return state_label(value)  # a job's state, as list and status say it
    if spec and isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def training_time_s(records: list[dict]) -> float | None:
    """Training time over all attempts: the run's accumulated step time (restored on every resume)."""
    times = [r["elapsed_s"] for r in records if r.get("elapsed_s") is not None]
    return times[-1] if times else None


def steady_tokens_per_second(records: list[dict]) -> float | None:
    """Median tok/s of the records after the first: the first holds the JIT compile, the median any resume's."""
    rates = [r["tokens_per_second"] for r in records[1:] if r.get("tokens_per_second")]
    return statistics.median(rates) if rates else None


def column(run) -> dict:
    """One column of the comparison."""
    records = run.records()
    analysis = analyse(records)
    summary = run.read("training_summary.json") or {}
    evaluation = run.read("evaluation_report.json") or {}
    train = [r for r in records if r.get("loss") is not None]
    vals = analysis["validations"]
    verdicts, own = run_verdicts(run)
    return {
        "id": run.job.id if run.job else None,
        "label": run.label,
        "name": run.name,
        "run_dir": str(run.run_dir),
        "state": run.job.state if run.job else ("done" if run.finished else None),
        "seed_era": run.seed_era,
        "final_loss": train[-1]["loss"] if train else None,
        "final_val_loss": vals[-1]["val_loss"] if vals else None,
        "best_val_loss": min((v["val_loss"] for v in vals), default=None),
        "status": analysis["status"],
        "gap_mean": analysis["gap_mean"],
        "gap_max": analysis["gap_max"],
        "gap_min": analysis["gap_min"],
        "epochs_run": (train[-1]["epoch"] + 1) if train else None,
        "steps_run": train[-1]["step"] if train else None,
        "early_stopped": summary.get("stop_reason") == "early_stopping" if summary else None,
        "wall_time_s": training_time_s(records),
        "tokens_per_second": steady_tokens_per_second(records),
        "f1": (evaluation.get("adapters") or {}).get("f1_mean"),
        "exact_match": (evaluation.get("adapters") or {}).get("em_mean"),
        "success": [v.to_dict() for v in verdicts],
        "success_from_spec": own,
        "success_passed": all(v.passed for v in verdicts),
    }


def compare(runs: list) -> dict:
    """The table as data: one column per run (key `jobs`, as before)."""
    return {"jobs": [column(run) for run in runs]}


def table_lines(table: dict) -> list[str]:
    """`farensectl compare` as a person reads it: one row per ROWS entry, then one per success criterion (a run
    without the measure shows '-', never a failure). Columns are as wide as the longest run name (up to 40)."""
    cols = table["jobs"]
    names = [len(str(c.get("name") or "")) for c in cols]
    w = min(max([22] + [len(c["label"]) + 2 for c in cols] + [n + 2 for n in names]), 42)
    lines = [f"{'':<18}" + "".join(f"{safe(c['label'], w - 1):>{w}}" for c in cols)]
    for label, key, spec in ROWS:
        cells = [safe(cell(c[key], spec, key), w - 1) for c in cols]
        lines.append(f"{_(label):<18}" + "".join(f"{v:>{w}}" for v in cells))
    criteria = []
    for c in cols:
        criteria += [v["criterion"] for v in c["success"] if v["criterion"] not in criteria]
    for crit in criteria:
        cells = []
        for c in cols:
            v = next((v for v in c["success"] if v["criterion"] == crit), None)
            measured = v is not None and v.get("value") is not None
            cells.append(f"{'✅' if v['passed'] else '❌'} " + cell(v["value"], ".4f") if measured else "-")
        lines.append(f"{crit:<18}" + "".join(f"{v[: w - 1]:>{w}}" for v in cells))
    return lines
