"""A stop (SIGTERM, Ctrl-C) that arrives before training begins: nothing to checkpoint yet, so the process ends at
once with 75 (resumable) instead of waiting for an update boundary that a long load, a GGUF import or a stuck
tokenization (a chat template that loops) may never reach."""

from __future__ import annotations

import signal

from farensed.i18n import _


class StoppedBeforeTraining(BaseException):
    """Raised by the signal handler until training begins.

    A BaseException, like KeyboardInterrupt: the libraries imported meanwhile (transformers, mlx-lm) wrap optional
    imports in `except Exception`, which would swallow the stop and let the process train on.
    """

    def line(self) -> str:
        return _("⏸  Parado antes de começar a treinar (sinal {signum}); nada mudou na corrida").format(
            signum=signal_name(self.args[0])
        )


def signal_name(signum: int) -> str:
    """`SIGTERM` for 15: what a person can look up."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)


def stop_before_training(signum, frame):
    raise StoppedBeforeTraining(signum)
