"""Training windows: `"23:00-07:00"` (across midnight too), several joined by commas; pure time arithmetic.

A window is a daily interval of local time; `start == end` is refused. Times are `HH:MM` or `HH:MM:SS`
(seconds let tests use windows a few seconds long). Windows that touch or overlap are merged into one interval.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterator
from dataclasses import dataclass

from farensed.i18n import _

TIME_RE = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")


@dataclass(frozen=True)
class Window:
    """One daily interval [start, end); end < start means it crosses midnight."""

    start: dt.time
    end: dt.time


def _parse_time(text: str, where: str) -> dt.time:
    m = TIME_RE.fullmatch(text.strip())
    if not m:
        raise ValueError(_("{where}: '{text}' não é uma hora HH:MM").format(where=where, text=text.strip()))
    hour, minute, second = int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(_("{where}: hora inválida '{text}'").format(where=where, text=text.strip()))
    return dt.time(hour, minute, second)


def parse_windows(text: str) -> list[Window]:
    """`"23:00-07:00"` or `"12:00-13:00, 23:00-07:00"` → windows; a ValueError names the bad part."""
    parts = [p for p in (text or "").split(",") if p.strip()]
    if not parts:
        raise ValueError(_("janela vazia (use HH:MM-HH:MM, p.ex. 23:00-07:00)"))
    windows = []
    for part in parts:
        pieces = part.split("-")
        if len(pieces) != 2:
            raise ValueError(_("'{text}' não é uma janela HH:MM-HH:MM").format(text=part.strip()))
        start, end = (_parse_time(p, part.strip()) for p in pieces)
        if start == end:
            raise ValueError(_("'{text}': início e fim iguais").format(text=part.strip()))
        windows.append(Window(start, end))
    return windows


def intervals(windows: list[Window], now: dt.datetime, days: int = 3) -> Iterator[tuple[dt.datetime, dt.datetime]]:
    """Open intervals in local time that end after `now`, merged and in order, for the next `days` days."""
    tz = now.tzinfo
    raw = []
    for offset in range(-1, days + 1):
        day = now.date() + dt.timedelta(days=offset)
        for w in windows:
            start = dt.datetime.combine(day, w.start, tzinfo=tz)
            end_day = day + dt.timedelta(days=1) if w.end <= w.start else day
            raw.append((start, dt.datetime.combine(end_day, w.end, tzinfo=tz)))
    merged: list[list[dt.datetime]] = []
    for start, end in sorted(raw):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in merged:
        if end > now:
            yield start, end


def open_until(windows: list[Window] | None, now: dt.datetime) -> dt.datetime | None:
    """When the window open at `now` closes; None when no window is open (or when there are no windows)."""
    for start, end in intervals(windows or [], now):
        return end if start <= now else None
    return None


def next_open(windows: list[Window] | None, now: dt.datetime) -> dt.datetime:
    """`now` if a window is open (or there are none), else the start of the next window."""
    if not windows:
        return now
    start, _ = next(intervals(windows, now))
    return max(start, now)


def is_open(windows: list[Window] | None, now: dt.datetime) -> bool:
    """True when training is allowed at `now` (always, without windows)."""
    return next_open(windows, now) == now


def finish_time(windows: list[Window] | None, start: dt.datetime, seconds: float) -> dt.datetime:
    """When `seconds` of work that may run only inside the windows, begun at `start`, is done."""
    if not windows:
        return start + dt.timedelta(seconds=seconds)
    left = dt.timedelta(seconds=seconds)
    now = start
    while True:
        for open_, close in intervals(windows, now, days=30):
            begin = max(open_, now)
            if begin + left <= close:
                return begin + left
            left -= close - begin
            now = close
        # more than 30 days of work: keep walking from where the last interval ended


def format_clock(when: dt.datetime) -> str:
    """`23:00`, or `23:00:05` when the seconds matter (short test windows)."""
    return when.strftime("%H:%M:%S" if when.second else "%H:%M")
