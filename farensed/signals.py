"""A stop (SIGTERM, Ctrl-C) that arrives before training begins: nothing to checkpoint yet, so the process ends at
once with 75 (resumable) instead of waiting for an update boundary that a long load, a GGUF import or a stuck
tokenization (a chat template that loops) may never reach."""

from __future__ import annotations

import signal
import sys

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


# Stops received while loading. An exception raised by a signal handler is lost when it lands inside a __del__
# (Python prints "Exception ignored" and goes on: seen in the regex module while a GGUF imported), so the stop is
# also written down here and raised again where loading ends (`raise_if_requested`).
_requested: list[int] = []


def stop_before_training(signum, frame):
    _requested.append(signum)
    raise StoppedBeforeTraining(signum)


def quiet_lost_stops() -> None:
    """No "Exception ignored … Traceback" on screen for a stop lost in a finalizer: it is written down and raised
    again where loading ends (any other unraisable exception is reported as before)."""
    previous = sys.unraisablehook
    if getattr(previous, "farense", False):
        return

    def hook(info):
        if info.exc_type is not StoppedBeforeTraining:
            previous(info)

    hook.farense = True
    sys.unraisablehook = hook


def raise_if_requested() -> None:
    """Raise the stop that arrived while loading, if its first raise was swallowed."""
    if _requested:
        raise StoppedBeforeTraining(_requested[-1])


def forget_requests() -> None:
    """A new run in this process starts with no stop requested."""
    _requested.clear()
