"""Memory pressure as the kernel reports it, and the memory guard's decision (stop / hold / release).

Bytes are a poor signal on macOS: memory is compressed before it is swapped, so "available" runs low while Activity
Monitor shows green pressure, and stays high while the machine starves. The kernel's own signal is
`kern.memorystatus_vm_pressure_level` (1 normal, 2 warn, 4 critical). On Linux it is PSI, /proc/pressure/memory:
the share of the last 10 s in which some (or all) tasks stalled waiting for memory. Available bytes are the signal
only where the kernel gives none (and a backstop on Linux, where MemAvailable is meaningful). Swap activity is
context for the log line, never a trigger on its own.

`decide` is a pure function of one reading; the daemon calls `MemoryGuard.check` on every poll.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from farensed.i18n import N_, _

MACOS_SYSCTL = "kern.memorystatus_vm_pressure_level"
LEVEL_NAMES_PT = {1: N_("normal"), 2: N_("aviso"), 4: N_("crítica")}
PSI_PATH = Path("/proc/pressure/memory")
RELEASE_FRACTION = 0.25  # PSI: a held job runs again once every PSI figure is below a quarter of its stop threshold
FLOOR_HEADROOM = 1.25  # bytes: a held job runs again once available memory is 25 % above the floor


def default_floor_mb(total_mb: float) -> float:
    """The available-memory floor derived from RAM: 5 % of it, at least 512 MB, at most 4 GB."""
    return min(max(0.05 * total_mb, 512.0), 4096.0)


@dataclass(frozen=True)
class Reading:
    """One sample of the machine's memory state."""

    total_mb: float
    available_mb: float
    level: int | None = None  # macOS kern.memorystatus_vm_pressure_level; None elsewhere or unreadable
    psi_some: float | None = None  # Linux PSI "some avg10" (%); None where /proc/pressure/memory is absent
    psi_full: float | None = None  # Linux PSI "full avg10" (%)
    swap_used_mb: float | None = None
    swap_out_mb_s: float | None = None  # swapped out per second since the previous reading

    def context(self) -> str:
        """Swap use and activity, for the log line."""
        if not self.swap_used_mb and not self.swap_out_mb_s:
            return _("sem swap em uso")
        text = _("swap {swap_gb:.1f} GB em uso").format(swap_gb=self.swap_used_mb / 1024)
        if self.swap_out_mb_s:
            text += f", a escrever {self.swap_out_mb_s:.0f} MB/s"
        return text


@dataclass(frozen=True)
class Thresholds:
    """When the guard checkpoint-stops the running job; on by default."""

    enabled: bool = True
    macos_stop_level: int = 4  # 4 critical (default) or 2 warn; held jobs run again at 1 (normal)
    psi_full_stop: float = 20.0  # % of the last 10 s with every non-idle task stalled on memory
    psi_some_stop: float = 60.0  # % of the last 10 s with at least one task stalled on memory
    min_available_mb: float | None = None  # None: derived from RAM (default_floor_mb)

    def floor_mb(self, total_mb: float) -> float:
        return self.min_available_mb if self.min_available_mb is not None else default_floor_mb(total_mb)


class Action(str, enum.Enum):
    OK = "ok"  # nothing held, nothing to do
    STOP = "stop"  # checkpoint-stop the running job, hold it, start nothing
    HOLD = "hold"  # pressure has not fallen enough: keep held jobs held, start nothing
    RELEASE = "release"  # pressure is back to normal: held jobs return to the queue


@dataclass(frozen=True)
class Verdict:
    """What the guard decided, which signal decided it, and the words for the log."""

    action: Action
    signal: str | None
    detail: str

    @property
    def may_start(self) -> bool:
        return self.action in (Action.OK, Action.RELEASE)


def _signals(r: Reading, t: Thresholds) -> list[tuple[str, bool, bool, str]]:
    """(signal, over its stop threshold, back below its release threshold, description) for each signal read."""
    out = []
    if r.level is not None:
        name = _(LEVEL_NAMES_PT[r.level]) if r.level in LEVEL_NAMES_PT else str(r.level)
        out.append((MACOS_SYSCTL, r.level >= t.macos_stop_level, r.level <= 1, f"{MACOS_SYSCTL}={r.level} ({name})"))
    if r.psi_full is not None:
        full, some = r.psi_full, r.psi_some or 0.0
        out.append(
            (
                "PSI full avg10",
                full >= t.psi_full_stop,
                full < t.psi_full_stop * RELEASE_FRACTION,
                f"PSI full avg10={full:.1f}%",
            )
        )
        out.append(
            (
                "PSI some avg10",
                some >= t.psi_some_stop,
                some < t.psi_some_stop * RELEASE_FRACTION,
                f"PSI some avg10={some:.1f}%",
            )
        )
    if r.level is None:  # no macOS level: bytes are the fallback (the only signal without PSI, a backstop with it)
        floor = t.floor_mb(r.total_mb)
        out.append(
            (
                "memória disponível",
                r.available_mb < floor,
                r.available_mb >= floor * FLOOR_HEADROOM,
                _("memória disponível {available:.0f} MB (mínimo {floor:.0f} MB)").format(
                    available=r.available_mb, floor=floor
                ),
            )
        )
    return out


def decide(r: Reading, t: Thresholds, holding: bool) -> Verdict:
    """Stop when any signal is over its threshold; while a job is held, hold until every signal is back down."""
    if not t.enabled:
        return Verdict(Action.OK, None, _("guarda de memória desligada"))
    signals = _signals(r, t)
    for signal, over, _recovered, text in signals:
        if over:
            return Verdict(Action.STOP, signal, f"{text}; {r.context()}")
    if not holding:
        return Verdict(Action.OK, None, "; ".join(s[3] for s in signals))
    for signal, _over, recovered, text in signals:
        if not recovered:
            return Verdict(Action.HOLD, signal, f"{text}; {r.context()}")
    return Verdict(Action.RELEASE, None, "; ".join(s[3] for s in signals))


# ---- reading the kernel ----------------------------------------------------------------------------------------
def parse_psi(text: str) -> tuple[float | None, float | None]:
    """(some avg10, full avg10) from the text of /proc/pressure/memory."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        kind, *fields = line.split()
        for field in fields:
            key, _, value = field.partition("=")
            if key == "avg10":
                values[kind] = float(value)
    return values.get("some"), values.get("full")


def parse_level(text: str) -> int | None:
    """The pressure level from `sysctl -n kern.memorystatus_vm_pressure_level` output."""
    try:
        return int(text.strip())
    except ValueError:
        return None


def _sysctl_int(name: str) -> int | None:
    """An integer sysctl through libc (no process per poll), else through the sysctl command."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        value, size = ctypes.c_int(0), ctypes.c_size_t(ctypes.sizeof(ctypes.c_int))
        if libc.sysctlbyname(name.encode(), ctypes.byref(value), ctypes.byref(size), None, ctypes.c_size_t(0)) == 0:
            return value.value
    except (OSError, AttributeError, TypeError):
        pass
    try:
        proc = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_level(proc.stdout) if proc.returncode == 0 else None


class PressureReader:
    """Samples the machine; keeps the last swap counter to turn it into a rate."""

    def __init__(self, platform: str = sys.platform, psi_path: Path = PSI_PATH):
        self.platform, self.psi_path = platform, psi_path
        self._last_swap: tuple[float, int] | None = None

    def _swap(self) -> tuple[float | None, float | None]:
        try:
            swap = psutil.swap_memory()
        except (OSError, RuntimeError):
            return None, None
        now, rate = time.monotonic(), None
        if self._last_swap is not None and now > self._last_swap[0]:
            rate = max(swap.sout - self._last_swap[1], 0) / 2**20 / (now - self._last_swap[0])
        self._last_swap = (now, swap.sout)
        return swap.used / 2**20, rate

    def read(self) -> Reading:
        vm = psutil.virtual_memory()
        level = _sysctl_int(MACOS_SYSCTL) if self.platform == "darwin" else None
        some = full = None
        if level is None:
            try:
                some, full = parse_psi(self.psi_path.read_text())
            except (OSError, ValueError):
                pass
        swap_used, swap_rate = self._swap()
        return Reading(vm.total / 2**20, vm.available / 2**20, level, some, full, swap_used, swap_rate)


class MemoryGuard:
    """Thresholds plus a reader: what the daemon asks on every poll."""

    def __init__(self, thresholds: Thresholds | None = None, reader=None):
        self.thresholds = thresholds or Thresholds()
        self.read = reader or PressureReader().read

    def check(self, holding: bool) -> Verdict:
        return decide(self.read(), self.thresholds, holding)

    def describe(self) -> str:
        """One line for the daemon's start: which signals the guard reads here and their thresholds."""
        t = self.thresholds
        if not t.enabled:
            return _("guarda de memória desligada (--no-memory-guard)")
        r = self.read()
        if r.level is not None:
            return _("guarda de memória: {sysctl} ≥ {macos_stop_level} ({level_name}) para o job").format(
                sysctl=MACOS_SYSCTL,
                macos_stop_level=t.macos_stop_level,
                level_name=_(LEVEL_NAMES_PT[t.macos_stop_level]),
            )
        floor = _("memória disponível < {floor:.0f} MB de {total:.0f} GB").format(
            floor=t.floor_mb(r.total_mb), total=r.total_mb / 1024
        )
        if r.psi_full is not None:
            return _(
                "guarda de memória: PSI full avg10 ≥ {psi_full_stop:g}% ou some avg10 ≥ {psi_some_stop:g}%, ou {floor}"
            ).format(psi_full_stop=t.psi_full_stop, psi_some_stop=t.psi_some_stop, floor=floor)
        return _("guarda de memória: {floor} (sem PSI neste sistema)").format(floor=floor)
