"""The seed's overfitting gap: val_loss − train loss at each validation, its band, and the final analysis."""

from __future__ import annotations

import statistics

from farensed.i18n import N_, _

# The one table of the seed's bands: (upper bound, band, icon, terminal colour); the last has no upper bound.
BANDS = [
    (0.05, "EXCELENTE", "✅", "green"),
    (0.15, "BOM", "✅", "green"),
    (0.30, "MODERADO", "⚠", "yellow"),
    (float("inf"), "CRÍTICO", "❌", "red"),
]
BAND_LIMITS = {name: f"gap < {limit:.2f}" for limit, name, _i, _c in BANDS[:-1]} | {
    "CRÍTICO": f"gap ≥ {BANDS[-2][0]:.2f}"
}


# How a band reads on screen (its JSON value stays the Portuguese name above, in every language).
BAND_LABELS = {"EXCELENTE": N_("EXCELENTE"), "BOM": N_("BOM"), "MODERADO": N_("MODERADO"), "CRÍTICO": N_("CRÍTICO")}


def band_label(name: str | None) -> str:
    """A band as a person reads it, in the chosen language ('-' for none)."""
    if not name:
        return "-"
    return _(BAND_LABELS[name]) if name in BAND_LABELS else str(name)


def band(gap: float) -> str:
    """EXCELENTE (< 0.05), BOM (< 0.15), MODERADO (< 0.30) or CRÍTICO (≥ 0.30)."""
    return next(name for limit, name, _icon, _colour in BANDS if gap < limit or limit == float("inf"))


def icon(name: str) -> str:
    return next(i for _, n, i, _c in BANDS if n == name)


def colour(name: str | None) -> str | None:
    """The band's terminal colour (None for no band)."""
    return next((c for _, n, _i, c in BANDS if n == name), None)


def validations(records: list[dict]) -> list[dict]:
    """The metrics records that carry a validation."""
    return [r for r in records if r.get("val_loss") is not None]


def analyse(records: list[dict]) -> dict:
    """Status, gap mean/max/min and one row per validation.

    The status is the band of the gap at the best validation (lowest val_loss): the adapters the job delivers.
    The mean is not used for it: the first validation's train-loss window holds the untrained model's high losses,
    so an early, strongly negative gap would make every run look better than its final model is.
    """
    rows = [
        {
            "step": r["step"],
            "epoch": r["epoch"],
            "loss": r["train_loss"],
            "val_loss": r["val_loss"],
            "gap": r["gap"],
            "band": r["band"],
        }
        for r in validations(records)
    ]
    if not rows:
        return {
            "status": None,
            "gap_mean": None,
            "gap_max": None,
            "gap_min": None,
            "best_step": None,
            "best_gap": None,
            "validations": [],
        }
    gaps = [r["gap"] for r in rows]
    best = min(rows, key=lambda r: r["val_loss"])
    return {
        "status": band(best["gap"]),
        "gap_mean": statistics.fmean(gaps),
        "gap_max": max(gaps),
        "gap_min": min(gaps),
        "best_step": best["step"],
        "best_gap": best["gap"],
        "validations": rows,
    }


def format_analysis(analysis: dict, per_validation: bool = False) -> str:
    """The seed's `ANÁLISE FINAL DE OVERFITTING` block."""
    line = "=" * 80
    out = [line, _("ANÁLISE FINAL DE OVERFITTING"), line]
    if analysis["status"] is None:
        out += [_("Sem validações ainda."), line]
        return "\n".join(out)
    status = analysis["status"]
    out.append(
        _("Status: {icon} {status} ({limits}, no melhor modelo: step {step}, gap {gap:.4f})").format(
            icon=icon(status),
            status=band_label(status),
            limits=BAND_LIMITS[status],
            step=analysis["best_step"],
            gap=analysis["best_gap"],
        )
    )
    out.append(_("Gap médio: {gap:.4f}").format(gap=analysis["gap_mean"]))
    out.append(_("Gap máximo: {gap:.4f}").format(gap=analysis["gap_max"]))
    out.append(_("Gap mínimo: {gap:.4f}").format(gap=analysis["gap_min"]))
    if per_validation:
        out.append("")
        out.append(f"{'step':>7} {_('época'):>5} {'loss':>8} {'val_loss':>9} {'gap':>8}  " + _("banda"))
        for r in analysis["validations"]:
            out.append(
                f"{r['step']:>7} {r['epoch'] + 1:>5} {r['loss']:>8.4f} {r['val_loss']:>9.4f} {r['gap']:>8.4f}  {band_label(r['band'])}"
            )
    out.append(line)
    return "\n".join(out)
