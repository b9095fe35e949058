"""One line of the doctor's checklist."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from farensed.i18n import N_, _
from farensed.terminal import safe

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"
ICONS = {OK: "✅", WARN: "⚠ ", FAIL: "❌", INFO: "ℹ "}
GB = 2**30


@dataclass
class Check:
    """One line of the checklist: what was checked, how it went, and how to fix it."""

    name: str
    status: str
    detail: str
    fix: str | None = None
    data: dict = field(default_factory=dict)


# The checks' names: identifiers, the same in every language (`doctor --json`'s `name`); the console shows the label.
LABELS = {
    "python": N_("python"),
    "packages": N_("pacotes"),
    "mlx": N_("mlx"),
    "disk": N_("disco"),
    "service": N_("serviço"),
    "sleep": N_("repouso"),
    "memory": N_("memória"),
    "hf_cache": N_("cache HF"),
    "spec": N_("spec"),
    "model": N_("modelo"),
    "tokenizer": N_("tokenizer"),
    "steps": N_("passos"),
    "run": N_("corrida"),
    "estimate": N_("estimativa"),
    "time": N_("tempo"),
    "memory_per_step": N_("memória por step"),
    "memory_plan": N_("plano de memória"),
    "distributed": N_("distribuído"),
}


def format_check(check: Check) -> str:
    """`✅ label: detail` (+ `→ fix`), one line, in the chosen language."""
    name = _(LABELS[check.name]) if check.name in LABELS else check.name  # data.train, data.valid: as in the spec
    line = f"{ICONS[check.status]} {name}: {check.detail}"
    return safe(f"{line} → {check.fix}" if check.fix else line, 2000)  # spec values and paths shown, never obeyed


def summary(checks: list[Check], spec: Path | None) -> dict:
    """The --json document."""
    return {
        "ok": not any(c.status == FAIL for c in checks),
        "spec": str(spec) if spec else None,
        "failed": sum(c.status == FAIL for c in checks),
        "warnings": sum(c.status == WARN for c in checks),
        "checks": [asdict(c) for c in checks],
    }


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"
