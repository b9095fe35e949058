"""One line of the doctor's checklist."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from farensed.i18n import N_, _

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


# the checks' names (JSON values, Portuguese); the console shows them translated
NAMES = [
    N_("cache HF"),
    N_("disco"),
    N_("estimativa"),
    N_("memória"),
    N_("memória por step"),
    N_("modelo"),
    N_("pacotes"),
    N_("passos"),
    N_("plano de memória"),
    N_("repouso"),
    N_("serviço"),
    N_("tempo"),
]


def format_check(check: Check) -> str:
    """`✅ name: detail` (+ `→ fix`), one line."""
    name = _(check.name) if check.name in NAMES else check.name
    line = f"{ICONS[check.status]} {name}: {check.detail}"
    return f"{line} → {check.fix}" if check.fix else line


def summary(checks: list[Check], spec: Path | None) -> dict:
    """The --json document."""
    return {
        "ok": not any(c.status == FAIL for c in checks),
        "spec": str(spec) if spec else None,
        "failed": sum(c.status == FAIL for c in checks),
        "warnings": sum(c.status == WARN for c in checks),
        "checks": [asdict(c) for c in checks],
    }


def gb(n_bytes: float) -> str:
    """Bytes for a person: GB, or MB below 0.1 GB."""
    return f"{n_bytes / GB:.1f} GB" if n_bytes >= 0.1 * GB else f"{n_bytes / 2**20:.0f} MB"


def duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{max(minutes, 1)} min"
