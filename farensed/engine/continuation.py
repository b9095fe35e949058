"""Spec changes a resume accepts because they keep the past trajectory, each named in one console line.

Accepted: early_stopping (patience/min_delta apply from now on; the stopper's history is kept), epochs/iters
(a finished or early-stopped run continues from its last checkpoint, exactly as a longer run would have —
refused where a learning-rate schedule depends on the total), keep_checkpoints, evaluate, success.
Everything in the resume fingerprint (model, LoRA, batch, learning rate, …) is still refused by resume.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import orjson

from farensed.errors import ResumeError
from farensed.i18n import N_, _
from farensed.storage.atomic import move_aside, read_json

WHY = {
    "early_stopping": N_("aplica-se a partir de agora; o histórico do early stopping mantém-se"),
    "epochs": N_("continua do último checkpoint como um treino mais longo"),
    "iters": N_("continua do último checkpoint como um treino mais longo"),
    "keep_checkpoints": N_("aplica-se aos próximos checkpoints"),
    "evaluate": N_("aplica-se no fim do treino"),
    "success": N_("verificados no fim do treino"),
}


def _show(value) -> str:
    return orjson.dumps(value).decode() if isinstance(value, dict | list) or value is None else str(value)


@dataclass
class Continuation:
    """What the accepted changes mean for this resume."""

    lines: list[str] = field(default_factory=list)
    reopen: bool = False  # a finished run goes on
    patience: int | None = None
    min_delta: float = 0.0

    def apply(self, progress, stopper) -> None:
        """The spec's early stopping from now on (best, wait and history kept); a reopened run trains on."""
        stopper.patience, stopper.min_delta = self.patience, self.min_delta
        stopper.stopped = stopper.stopped and self.patience is not None and stopper.wait >= self.patience
        if self.reopen:
            progress.stop_reason = None


def plan(spec, run_dir: Path, state: dict | None, total_steps: int, uses_schedule: bool = False) -> Continuation:
    """Compare the spec with the run's last one; raise ResumeError for a change that would rewrite the past."""
    es = spec.early_stopping
    cont = Continuation(patience=es.patience if es else None, min_delta=es.min_delta if es else 0.0)
    if state is None:
        return cont
    try:
        old = read_json(run_dir / "spec.json")
    except (OSError, orjson.JSONDecodeError):
        old = {}
    new = spec.to_dict()
    for key, why in WHY.items():
        if key in old and old.get(key) != new.get(key):
            cont.lines.append(
                _("ℹ  Alteração aceite ao retomar: {key} {old} → {new} ({why})").format(
                    key=key, old=_show(old.get(key)), new=_show(new.get(key)), why=_(why)
                )
            )
    done, old_total = state["step"], state["total_steps"]
    if total_steps != old_total:
        if uses_schedule:
            raise ResumeError(
                _(
                    "{run_dir}: não é possível retomar: o total de steps muda ({old_total} → {total_steps}) e o lr_schedule depende dele; use --fresh para recomeçar (a pasta antiga é guardada)"
                ).format(run_dir=run_dir, old_total=old_total, total_steps=total_steps)
            )
        if total_steps < done:
            raise ResumeError(
                _(
                    "{run_dir}: não é possível retomar com {total_steps} steps: a corrida já treinou {done}; use --fresh para recomeçar (a pasta antiga é guardada)"
                ).format(run_dir=run_dir, total_steps=total_steps, done=done)
            )
    if state.get("finished"):
        cont.reopen = _reopens(state, cont, total_steps, run_dir)
    return cont


def _reopens(state: dict, cont: Continuation, total_steps: int, run_dir: Path) -> bool:
    """A finished run trains on when steps remain and early stopping (with the new patience) lets it."""
    if state["step"] >= total_steps:
        return False
    if state["progress"].get("stop_reason") == "early_stopping":
        wait = state["early_stopping"]["wait"]
        if cont.patience is not None and wait >= cont.patience:
            return False
    in_epoch, per_epoch, accumulation = (
        state["step_in_epoch"],
        state["steps_per_epoch"],
        state["fingerprint"].get("grad_accumulation"),
    )
    if accumulation and in_epoch % accumulation and in_epoch != per_epoch:
        # the last update took fewer micro-steps than grad_accumulation (an early stop, or an `iters` budget that
        # ended mid-accumulation): a longer run would have accumulated on, so continuing cannot be exact
        raise ResumeError(
            _(
                "{run_dir}: o treino parou a meio de uma atualização (step {step}, grad_accumulation "
                "{accumulation}); não é possível continuar exatamente; use --fresh"
            ).format(run_dir=run_dir, step=state["step"], accumulation=accumulation)
        )
    for name in ("evaluation_report.json", "test_results.json"):
        if (run_dir / name).exists():
            move_aside(run_dir / name)  # those numbers were for the adapters of the shorter run
    cont.lines.append(
        _("↻ A corrida terminada continua: step {step} → {total_steps}").format(
            step=state["step"], total_steps=total_steps
        )
    )
    return True
