"""training_v2_results.png: loss, val_loss and gap curves with the best point marked."""

from __future__ import annotations

import os
from pathlib import Path

from farensed.analysis.gap import BANDS, band_label
from farensed.i18n import _
from farensed.storage.atomic import atomic_write_with

PLOT_NAME = "training_v2_results.png"


def _import_pyplot():
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def prefetch() -> None:
    """Import matplotlib in a background thread: the end of a run draws the plot, and the import alone costs
    0.3–0.8 s of the user's wait (done while training, it is hidden behind the steps)."""
    import threading

    threading.Thread(target=_import_pyplot, name="farense-prefetch-matplotlib", daemon=True).start()


def plot_training(records: list[dict], path: Path, title: str = "", early_stop_step: int | None = None) -> Path:
    """Draw the training curves of a metrics history to `path` (atomically); mark where early stopping fired."""
    plt = _import_pyplot()

    train = [r for r in records if r.get("loss") is not None]
    vals = [r for r in records if r.get("val_loss") is not None]
    fig, (ax_loss, ax_gap) = plt.subplots(2, 1, figsize=(10, 8), sharex=True)
    ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label=_("loss (treino)"), alpha=0.6)
    if vals:
        ax_loss.plot([r["step"] for r in vals], [r["val_loss"] for r in vals], "o-", label="val_loss")
        best = min(vals, key=lambda r: r["val_loss"])
        ax_loss.plot(
            [best["step"]],
            [best["val_loss"]],
            "*",
            markersize=18,
            color="gold",
            markeredgecolor="black",
            label=_("melhor (step {step}: {val_loss:.4f})").format(step=best["step"], val_loss=best["val_loss"]),
        )
        ax_gap.plot([r["step"] for r in vals], [r["gap"] for r in vals], "o-", color="purple", label="gap")
        for limit, name, *_rest in BANDS[:-1]:  # not `*_`: that would hide the gettext function here
            ax_gap.axhline(limit, linestyle="--", linewidth=0.8, color="gray")
            ax_gap.text(vals[0]["step"], limit, f" {band_label(name)} < {limit}", fontsize=8, va="bottom", color="gray")
        ax_gap.axvline(best["step"], color="gold", linewidth=1)
        ax_loss.axvline(best["step"], color="gold", linewidth=1)
    if early_stop_step is not None:
        for ax in (ax_loss, ax_gap):
            ax.axvline(early_stop_step, color="red", linestyle=":", linewidth=1.5, label=None)
        ax_loss.plot([], [], color="red", linestyle=":", label=f"early stopping (step {early_stop_step})")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title(title or _("Treino"))
    ax_gap.set_ylabel("gap = val_loss − loss")
    ax_gap.set_xlabel("step")
    for ax in (ax_loss, ax_gap):
        if ax.get_legend_handles_labels()[0]:  # no validation yet: no gap curve, no legend (matplotlib warns)
            ax.legend()
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=90))
    plt.close(fig)
    return path


def plot_evaluation(report: dict, folder: Path) -> list[Path]:
    """evaluation_f1.png (F1 distribution) and evaluation_loss.png (per-example loss), adapters vs base."""
    plt = _import_pyplot()

    paths = []
    for key, name, label in (
        ("f1", "evaluation_f1.png", _("F1 por exemplo")),
        ("loss", "evaluation_loss.png", _("loss da resposta por exemplo")),
    ):
        fig, ax = plt.subplots(figsize=(8, 5))
        for tag, colour in (("base", "gray"), ("adapters", "tab:blue")):
            values = [ex[tag][key] for ex in report["examples"]]
            mean = sum(values) / len(values)
            ax.hist(
                values, bins=20, alpha=0.6, color=colour, label=_("{tag} (média {mean:.3f})").format(tag=tag, mean=mean)
            )
        ax.set_xlabel(label)
        ax.set_ylabel(_("exemplos"))
        ax.set_title(f"{report['config']['name']} — {label}")
        ax.legend()
        fig.tight_layout()
        atomic_write_with(folder / name, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=90))
        plt.close(fig)
        paths.append(folder / name)
    return paths
