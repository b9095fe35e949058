"""Stopping a training process: SIGTERM/SIGINT ask for a checkpoint at the next update boundary; a second Ctrl-C in
`farensectl run` stops at once, saying which checkpoint the next run resumes from (like rq's worker)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import orjson

from farensed import EXIT_RESUMABLE
from farensed.engine.checkpoint import STATE_NAME, list_checkpoints
from farensed.i18n import _
from farensed.signals import raise_if_requested, stop_before_training


def resume_point(run_dir: Path) -> str | None:
    """The checkpoint a resume would start from (the run state's, else the newest folder), without hashing."""
    try:
        name = orjson.loads((Path(run_dir) / STATE_NAME).read_bytes()).get("checkpoint")
        if name and (Path(run_dir) / name).is_dir():
            return name
    except (OSError, orjson.JSONDecodeError, AttributeError):
        pass
    found = list_checkpoints(Path(run_dir))
    return found[-1].path.name if found else None


def first_interrupt_line() -> str:
    return "\n" + _("⏸  Ctrl-C: a parar no fim desta atualização, com checkpoint (outro Ctrl-C para parar já)")


def stop_now(run_dir: Path) -> None:
    """Exit immediately (75): what the checkpoint being written holds is lost, the previous one is intact."""
    point = resume_point(run_dir)
    where = _("retoma de {point}").format(point=point) if point else _("começa do início (ainda não há checkpoint)")
    sys.stdout.write("\n" + _("⏹  Segundo Ctrl-C: parado já; a próxima execução {where}.").format(where=where) + "\n")
    sys.stdout.flush()
    os._exit(EXIT_RESUMABLE)


class StopRequest:
    """SIGTERM/SIGINT set a flag; the loop finishes the current optimizer update and checkpoints.

    Until `loading_done()` a single-process run has nothing to checkpoint: a stop ends it at once
    (StoppedBeforeTraining, exit 75), so a cancel reaches a long load or a stuck tokenization. Ranks agree on every
    stop, so they only set the flag. A second SIGINT (Ctrl-C) in a single-process run (`run_dir` given) stops at
    once (`stop_now`).
    """

    def __init__(self, run_dir: Path | None = None, single: bool = True):
        self.signum = None
        self.run_dir = run_dir
        self.loaded = not single
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        if single:
            raise_if_requested()  # a stop before this handler existed, whose raise was swallowed

    def loading_done(self) -> None:
        if not self.loaded:
            raise_if_requested()  # a stop while loading whose raise was swallowed (inside a __del__)
        self.loaded = True

    def _handle(self, signum, frame):
        if not self.loaded:
            stop_before_training(signum, frame)
        if signum == signal.SIGINT and self.run_dir is not None:
            if self.signum is not None:
                stop_now(self.run_dir)
            print(first_interrupt_line(), file=sys.stderr, flush=True)
        self.signum = signum
