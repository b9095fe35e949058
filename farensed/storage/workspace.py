"""The workspace root and its folders (models/, data/, jobs/, checkpoints_qlora/, output/; see README)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def private_by_default() -> None:
    """umask 077 on top of the user's (never looser): run folders, outputs, evaluations and reports are the owner's
    alone, like jobs/ (a prompt, reference and prediction of every example sit in evaluation_report.json)."""
    os.umask(os.umask(0o077) | 0o077)


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """`--home DIR`, else `$FARENSE_HOME`, else the current directory."""
    chosen = home or os.environ.get("FARENSE_HOME") or os.getcwd()
    return Path(chosen).expanduser().resolve()


@dataclass(frozen=True)
class Workspace:
    """Paths of one farense workspace (all derived from its root)."""

    root: Path

    @classmethod
    def at(cls, home: str | os.PathLike | None = None) -> Workspace:
        return cls(resolve_home(home))

    def resolve(self, path: str | os.PathLike) -> Path:
        """A spec path: absolute as given, relative to the workspace root otherwise."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.root / p

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    def run_dir(self, name: str) -> Path:
        return self.root / "checkpoints_qlora" / name

    def output_dir(self, name: str) -> Path:
        return self.root / "output" / name
