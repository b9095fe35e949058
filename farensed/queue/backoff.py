"""Recovery back-off: a lost child is restarted after 10 s, 30 s, 2 min, 5 min, then every 10 min (capped).

A job that is OOM-killed while loading would otherwise burn its `max_recoveries` in seconds. The wait is stored in
job.json as `retry_at` (ISO time), so a restarted daemon keeps it and `farensectl status` shows it.
"""

from __future__ import annotations

import datetime as dt

from farensed.i18n import _
from farensed.terminal import safe

DEFAULT_SCHEDULE: tuple[float, ...] = (10.0, 30.0, 120.0, 300.0, 600.0)


def parse_schedule(text: str | None) -> tuple[float, ...]:
    """'10,30,120' → (10.0, 30.0, 120.0); empty or None → the default; the last value is the cap."""
    if text is None or not str(text).strip():
        return DEFAULT_SCHEDULE
    shown = safe(text, 40)
    try:
        parts = str(text).split(",")
        if any(not v.strip() for v in parts):  # '1,,2': a value left out is a typo, not a shorter schedule
            raise ValueError
        values = tuple(float(v) for v in parts)
    except ValueError:
        raise ValueError(
            _("'{text}' não é uma lista de segundos separados por vírgulas (ex.: 10,30,120)").format(text=shown)
        ) from None
    if not values or any(not 0 <= v <= 86_400 for v in values):  # NaN and inf fail this too
        raise ValueError(_("'{text}': os segundos devem estar entre 0 e 86400").format(text=shown))
    return values


def delay(recoveries: int, schedule: tuple[float, ...] = DEFAULT_SCHEDULE) -> float:
    """Seconds to wait before the n-th recovery (1-based); the last entry of the schedule is the cap."""
    if recoveries < 1:
        return 0.0
    return schedule[min(recoveries, len(schedule)) - 1]


def retry_time(recoveries: int, schedule: tuple[float, ...] = DEFAULT_SCHEDULE, now: dt.datetime | None = None) -> str:
    """The ISO time at which the n-th recovery may start."""
    now = now or dt.datetime.now().astimezone()
    return (now + dt.timedelta(seconds=delay(recoveries, schedule))).isoformat(timespec="milliseconds")


def seconds_left(retry_at: str | None, now: dt.datetime | None = None) -> float:
    """Seconds until `retry_at` (0 when it is absent or past)."""
    if not retry_at:
        return 0.0
    now = now or dt.datetime.now().astimezone()
    try:
        when = dt.datetime.fromisoformat(retry_at)
        return max(0.0, ((when if when.tzinfo else when.astimezone()) - now).total_seconds())
    except (ValueError, TypeError, OverflowError, OSError):
        return 0.0
