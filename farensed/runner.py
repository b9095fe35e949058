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

    return Trainer(spec, ws, fresh=fresh).run()
