"""What `submit` and `run` do with a spec before it is queued or trained, in the user's own process.

A Hub model is brought into the HF cache (with a progress bar), and an `optimizer_config` or `lr_schedule` is built
once with mlx.optimizers (mlx-lm's calls, without importing mlx-lm and transformers), so that a wrong argument is one
line now rather than a failed job later (mlx is imported only for such specs; the daemon never calls this).
"""

from __future__ import annotations

from pathlib import Path

from farensed.errors import SpecError
from farensed.models.hub import fetch_model
from farensed.spec.jobspec import parse_spec
from farensed.spec.load import read_spec_file


def prepare(spec_path: Path, ws, say) -> None:
    """Fetch the spec's Hub model; try its optimizer and schedule. Other problems are load_spec's to report."""
    raw = read_spec_file(Path(spec_path))
    if isinstance(raw, dict) and isinstance(raw.get("model"), str):
        fetch_model(raw["model"], ws, f"{spec_path}: model", say)
    try:
        spec = parse_spec(raw, str(spec_path))
    except SpecError:
        return  # reported, with the same words, by the full validation that follows
    if spec.optimizer_config or spec.lr_schedule:
        from farensed.engine.optim import build_optimizer

        try:
            build_optimizer(spec, check_only=True)  # mlx.optimizers only: no mlx-lm, no transformers
        except SpecError as exc:
            raise SpecError(f"{spec_path}: {exc}") from None
