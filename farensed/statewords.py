"""How a job's state reads on screen, in the chosen language (job.json and JSON output keep the English value).

A core module: the queue, the views and the analysis tables (compare's `state` row) all show states.
"""

from __future__ import annotations

from farensed.i18n import N_, _
from farensed.terminal import safe

STATE_LABELS = {
    "pending": N_("pendente"),
    "running": N_("a correr"),
    "done": N_("concluído"),
    "failed": N_("falhado"),
    "cancelled": N_("cancelado"),
}


def state_label(state: str | None) -> str:
    """A job state as a person reads it, in the chosen language (`pending` → `pendente`)."""
    return _(STATE_LABELS[state]) if state in STATE_LABELS else safe(state or "-", 20)
