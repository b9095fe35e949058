"""The seed's success criteria as data: spec key `success`, checked at the end of a run, by `check` and `compare`.

loss_drop     train loss fell by at least this fraction (seed: ~5.0 → ~1.5 is 0.7)
val_improves  the best val_loss is below the first one
gap_max       gap at the best validation (the delivered adapters) below this (seed: 0.15)
f1_min        token F1 of the adapters at least this (seed: ≥ 0.93; needs an evaluation)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from farensed.analysis.gap import analyse
from farensed.filevalues import finite
from farensed.i18n import _
from farensed.spec.jobspec import parse_success

SEED_CRITERIA = {"loss_drop": 0.6, "val_improves": True, "gap_max": 0.15, "f1_min": 0.93}
ORDER = ("loss_drop", "val_improves", "gap_max", "f1_min")


@dataclass
class Verdict:
    """One criterion: what was asked, what was measured, and whether it passed."""

    criterion: str
    target: float | bool
    value: float | None
    passed: bool
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


def criteria_of(spec: dict | None) -> tuple[dict, bool]:
    """The run's `success` criteria, else the seed's; the flag says whether they came from the spec.

    SpecError (one line) for criteria a hand edit broke: an unknown key (a typo would turn the check green) or a
    value out of its range."""
    given = (spec or {}).get("success")
    own = {} if given is None else parse_success(given, _("spec.json da corrida"))
    return (own, True) if own else (dict(SEED_CRITERIA), False)


def _first_last_loss(records: list[dict]) -> tuple[float | None, float | None]:
    """The first train loss, and the last one (the mean train loss before the last validation, when there is one)."""
    train = [r["loss"] for r in records if r.get("loss") is not None]
    vals = [r for r in records if r.get("val_loss") is not None and r.get("train_loss") is not None]
    last = vals[-1]["train_loss"] if vals else (train[-1] if train else None)
    return (train[0] if train else None), last


def verdicts(criteria: dict, records: list[dict], evaluation: dict | None, evaluable: bool = True) -> list[Verdict]:
    """Measure each criterion on a run's metrics (and its evaluation report); `evaluable` False: a run that
    `farensectl eval` cannot evaluate (a seed-era folder: no spec, read-only), said as such."""
    analysis = analyse(records)
    vals = analysis["validations"]
    out = []
    for key in sorted(criteria, key=lambda k: ORDER.index(k) if k in ORDER else len(ORDER)):
        target = criteria[key]
        if key == "loss_drop":
            first, last = _first_last_loss(records)
            value = (first - last) / first if first and last is not None else None
            ok = value is not None and value >= target
            text = (
                _("loss de treino caiu {drop:.0%} (≥ {target:.0%}; {first:.4f} → {last:.4f})").format(
                    drop=value, target=target, first=first, last=last
                )
                if value is not None
                else _("loss de treino: sem registos")
            )
        elif key == "val_improves":
            best = min((v["val_loss"] for v in vals), default=None)
            value = vals[0]["val_loss"] - best if vals else None
            ok = value is not None and (value > 0) == bool(target)
            text = (
                _("val_loss melhorou {improvement:.4f} ({val_loss:.4f} → {best:.4f})").format(
                    improvement=value, val_loss=vals[0]["val_loss"], best=best
                )
                if value is not None
                else _("val_loss: sem validações")
            )
        elif key == "gap_max":
            value = analysis["best_gap"]
            ok = value is not None and value < target
            text = (
                _("gap no melhor modelo {gap:.4f} (< {target:g})").format(gap=value, target=target)
                if value is not None
                else _("gap: sem validações")
            )
        elif key == "f1_min":
            adapters = (evaluation if isinstance(evaluation, dict) else {}).get("adapters")
            value = adapters.get("f1_mean") if isinstance(adapters, dict) else None
            value = finite(value)  # a report edited by hand: no evaluation
            ok = value is not None and value >= target
            text = (
                _("F1 {f1:.4f} (≥ {target:g})").format(f1=value, target=target)
                if value is not None
                else _("F1: sem avaliação (farensectl eval)")
                if evaluable
                else _("F1: sem avaliação (pasta só com métricas, só leitura: sem spec, não se avalia)")
            )
        else:
            continue
        out.append(Verdict(key, target, value, ok, text))
    return out


def format_verdicts(items: list[Verdict]) -> str:
    """One line per criterion: ✅/❌, the criterion and the measured value."""
    return "\n".join(f"{'✅' if v.passed else '❌'} {v.criterion}: {v.text}" for v in items)


def run_verdicts(run) -> tuple[list[Verdict], bool]:
    """Verdicts of a `runref.Run` with its own criteria (else the seed's)."""
    criteria, own = criteria_of(run.spec_dict())
    evaluable = not run.seed_era and run.spec_dict() is not None
    return verdicts(criteria, run.records(), run.read("evaluation_report.json"), evaluable), own
