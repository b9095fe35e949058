"""The end of a run: training_summary.json, the plot, and output/<name>/ = the best adapters."""

from __future__ import annotations

import shutil
from pathlib import Path

from farensed.analysis.gap import analyse
from farensed.analysis.plots import PLOT_NAME, plot_training
from farensed.engine import console
from farensed.i18n import _
from farensed.storage.atomic import atomic_write_json, atomic_write_with, read_json

SUMMARY_NAME = "training_summary.json"


def build_summary(
    name: str, records: list[dict], stop_reason: str, total_steps: int, checkpoint_seconds: list[float]
) -> dict:
    """The final numbers of a run, all derived from its metrics history."""
    analysis = analyse(records)
    vals = analysis["validations"]
    best = min(vals, key=lambda r: r["val_loss"]) if vals else None
    train = [r for r in records if r.get("loss") is not None]
    last = records[-1] if records else {}
    summary = {
        "name": name,
        "status": analysis["status"],
        "gap_mean": analysis["gap_mean"],
        "gap_max": analysis["gap_max"],
        "gap_min": analysis["gap_min"],
        "best_step": best["step"] if best else None,
        "best_epoch": best["epoch"] if best else None,
        "best_val_loss": best["val_loss"] if best else None,
        "first_val_loss": vals[0]["val_loss"] if vals else None,
        "final_val_loss": vals[-1]["val_loss"] if vals else None,
        "final_loss": train[-1]["loss"] if train else None,
        "stop_reason": stop_reason,
        "steps_run": last.get("step", 0),
        "total_steps": total_steps,
        "epochs_run": last["epoch"] + 1 if last else 0,
        "validations": len(vals),
        "trained_tokens": last.get("trained_tokens", 0),
        "elapsed_s": last.get("elapsed_s", 0.0),
    }
    elapsed, steps = summary["elapsed_s"], summary["steps_run"]
    summary["tokens_per_second"] = summary["trained_tokens"] / elapsed if elapsed else None
    summary["step_s_mean"] = elapsed / steps if steps else None
    summary["checkpoint_s_mean"] = sum(checkpoint_seconds) / len(checkpoint_seconds) if checkpoint_seconds else None
    return summary


def finish_run(
    ws,
    name: str,
    run_dir: Path,
    stop_reason: str,
    total_steps: int,
    checkpoint_seconds: list[float],
    announce_best: bool,
) -> dict:
    """Write the summary and the plot, copy the best adapters to output/<name>/, say where they are."""
    records = read_json(run_dir / "training_metrics.json")
    summary = build_summary(name, records, stop_reason, total_steps, checkpoint_seconds)
    atomic_write_json(run_dir / SUMMARY_NAME, summary)
    stop = summary["steps_run"] if stop_reason == "early_stopping" else None
    plot_training(
        records, run_dir / PLOT_NAME, title=_("{name} — loss, val_loss e gap").format(name=name), early_stop_step=stop
    )
    out = ws.output_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    for fname in ("adapters.safetensors", "adapter_config.json"):
        src = run_dir / "adapters" / fname
        atomic_write_with(out / fname, lambda tmp, src=src: shutil.copyfile(src, tmp))
    if announce_best and summary["best_step"] is not None:
        console.say(
            "\n"
            + _("Melhor modelo: Época {epoch}, Step {best_step} (val_loss {best_val_loss:.4f})").format(
                epoch=summary["best_epoch"] + 1, best_step=summary["best_step"], best_val_loss=summary["best_val_loss"]
            )
        )
    console.say(_("Adapters finais: {path}").format(path=out.relative_to(ws.root)))
    return summary
