"""Power awareness: on battery below a threshold, training waits for mains power; no battery changes nothing.

The reading comes from psutil.sensors_battery(), or, when `$FARENSE_BATTERY_FILE` names a JSON file
`{"percent": 25, "plugged": false}`, from that file (a missing or unreadable file reads as "no battery").
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import orjson

from farensed.i18n import _
from farensed.storage.regular import read_regular

BATTERY_FILE_ENV = "FARENSE_BATTERY_FILE"
DEFAULT_BATTERY_MIN = 30.0


@dataclass(frozen=True)
class Battery:
    """One battery reading: charge in percent and whether mains power is connected (None: unknown)."""

    percent: float
    plugged: bool | None


def read_battery() -> Battery | None:
    """The battery now, or None on a machine without one."""
    path = os.environ.get(BATTERY_FILE_ENV)
    if path:
        try:
            raw = orjson.loads(read_regular(Path(path), 4096))  # a FIFO, /dev/zero or a huge file: no reading
            return Battery(float(raw["percent"]), None if raw.get("plugged") is None else bool(raw["plugged"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
    try:
        import psutil

        reading = psutil.sensors_battery()
    except (AttributeError, NotImplementedError, OSError, RuntimeError):
        return None
    return None if reading is None else Battery(float(reading.percent), reading.power_plugged)


def must_wait(reading: Battery | None, threshold: float | None, waiting: bool) -> bool:
    """True while training must wait for mains: on battery below `threshold`, and (once waiting) until plugged in."""
    if reading is None or not threshold or reading.plugged is not False:
        return False  # no battery, power awareness off, on mains, or unknown: nothing changes
    return waiting or reading.percent < threshold


def describe(reading: Battery | None, threshold: float | None) -> str:
    """The reason shown while waiting, e.g. `em bateria a 25% (mínimo 30%), à espera de corrente`."""
    if reading is None:
        return _("sem bateria")
    return _("em bateria a {percent:.0f}% (mínimo {threshold:.0f}%), à espera de corrente").format(
        percent=reading.percent, threshold=threshold
    )
