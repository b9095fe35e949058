"""Numbers read from files a person can edit (a run's metrics and state, a model's config.json): a value is the
number a reader expects, or unknown (None) — never a bool, a text, NaN or an absurd size passed on to arithmetic."""

from __future__ import annotations

import math

LARGEST = 1e15  # past it a number in such a file is a hand edit (1e308 overflows a mean), never a loss, step or rate


def finite(value) -> int | float | None:
    """The value when it is a finite number (as it is: an int stays an int), else None."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return value if ok else None


def positive(value) -> float | None:
    """A positive number below 10^15 (seconds, gigabytes, steps per second), as a float; else None."""
    return float(value) if finite(value) is not None and 0 < value < LARGEST else None


def whole(value, top: int = 2**40) -> int | None:
    """A whole number from 1 to `top` (a step, a layer count, a batch size), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= top else None
