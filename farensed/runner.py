"""The engine's entry point, shared by `farensectl run` and the daemon's child process."""

from __future__ import annotations

import os
from pathlib import Path

from .spec import load_spec
from .workspace import Workspace


def configure_environment() -> None:
    """Nothing may be downloaded at run time; models are local folders."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MPLBACKEND", "Agg")


def run_spec(spec_path: Path, home=None, fresh: bool = False) -> int:
    """Validate a spec and train it in this process; returns 0, or EXIT_RESUMABLE after a signal."""
    configure_environment()
    ws = Workspace.at(home)
    spec = load_spec(Path(spec_path), ws)
    from .trainer import Trainer  # imports mlx: only here, never in the daemon

    code = Trainer(spec, ws, fresh=fresh).run()
    if code == 0:
        if spec.evaluate and not (ws.run_dir(spec.name) / "evaluation_report.json").exists():
            evaluate_spec(spec, ws)
        print_final_analysis(ws.run_dir(spec.name))
    return code


def print_final_analysis(run_dir: Path) -> None:
    """The seed's ANÁLISE FINAL DE OVERFITTING, last thing on the console."""
    from . import console
    from .gap import analyse, format_analysis
    from .metrics import read_all

    console.say(format_analysis(analyse(read_all(run_dir))))


def evaluate_spec(spec, ws: Workspace, batched: bool = True) -> dict:
    """Evaluate a job's best adapters against its base model (resumable)."""
    configure_environment()
    from . import console
    from .evaluate import Evaluator

    evaluator = Evaluator(spec, ws, batched=batched, log=console.say)
    console.say(console.heading(f"AVALIAÇÃO - {spec.name}"))
    return evaluator.run()
