"""The memory guard decides on pressure, not bytes: recorded readings of macOS and Linux, decided in-process (fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from farensed.queue.pressure import (
    MACOS_SYSCTL,
    Action,
    MemoryGuard,
    PressureReader,
    Reading,
    Thresholds,
    decide,
    default_floor_mb,
    parse_level,
    parse_psi,
)

GB = 1024.0
DEFAULTS = Thresholds()

# /proc/pressure/memory as recorded on a Linux box while a 7B model thrashed, and idle.
PSI_THRASHING = """some avg10=71.35 avg60=40.02 avg300=12.10 total=98231311
full avg10=34.80 avg60=18.55 avg300=5.02 total=50322119
"""
PSI_IDLE = """some avg10=0.00 avg60=0.00 avg300=0.00 total=0
full avg10=0.00 avg60=0.00 avg300=0.00 total=0
"""
PSI_CPU_ONLY_KERNEL = "some avg10=3.10 avg60=1.00 avg300=0.20 total=1234\n"  # older kernels: no "full" line

# A 16 GB Mac: memory compressed, little "available", yet the kernel says pressure is normal (green).
MAC_GREEN_BUT_FEW_BYTES = Reading(total_mb=16 * GB, available_mb=300, level=1, swap_used_mb=0, swap_out_mb_s=0)
MAC_WARN = Reading(total_mb=16 * GB, available_mb=900, level=2, swap_used_mb=2 * GB, swap_out_mb_s=12)
MAC_CRITICAL = Reading(total_mb=16 * GB, available_mb=4 * GB, level=4, swap_used_mb=6 * GB, swap_out_mb_s=340)


def linux(available_mb: float, psi: str | None, total_mb: float = 32 * GB) -> Reading:
    some, full = parse_psi(psi) if psi is not None else (None, None)
    return Reading(total_mb=total_mb, available_mb=available_mb, psi_some=some, psi_full=full, swap_used_mb=0)


def test_psi_and_sysctl_outputs_parse():
    assert parse_psi(PSI_THRASHING) == (71.35, 34.80)
    assert parse_psi(PSI_IDLE) == (0.0, 0.0)
    assert parse_psi(PSI_CPU_ONLY_KERNEL) == (3.10, None)
    assert parse_level("4\n") == 4 and parse_level("") is None


def test_macos_decides_on_the_kernel_level_never_on_available_bytes():
    verdict = decide(MAC_GREEN_BUT_FEW_BYTES, DEFAULTS, holding=False)
    assert verdict.action is Action.OK and verdict.may_start  # 300 MB "available" but green: keep training


def test_macos_critical_stops_and_names_the_signal_with_swap_context():
    verdict = decide(MAC_CRITICAL, DEFAULTS, holding=False)
    assert verdict.action is Action.STOP and not verdict.may_start
    assert verdict.signal == MACOS_SYSCTL
    assert (
        f"{MACOS_SYSCTL}=4 (crítica)" in verdict.detail and "swap 6.0 GB em uso, a escrever 340 MB/s" in verdict.detail
    )


def test_macos_warn_runs_by_default_holds_a_held_job_and_stops_when_configured():
    assert decide(MAC_WARN, DEFAULTS, holding=False).action is Action.OK
    held = decide(MAC_WARN, DEFAULTS, holding=True)
    assert held.action is Action.HOLD and not held.may_start and held.signal == MACOS_SYSCTL
    assert decide(MAC_WARN, Thresholds(macos_stop_level=2), holding=False).action is Action.STOP
    released = decide(MAC_GREEN_BUT_FEW_BYTES, DEFAULTS, holding=True)
    assert released.action is Action.RELEASE and released.may_start


def test_linux_psi_full_or_some_stops_and_a_held_job_waits_for_a_quarter_of_the_threshold():
    verdict = decide(linux(20 * GB, PSI_THRASHING), DEFAULTS, holding=False)
    assert verdict.action is Action.STOP and verdict.signal == "PSI full avg10" and "34.8%" in verdict.detail
    some_only = "some avg10=65.00 avg60=0 avg300=0 total=1\nfull avg10=2.00 avg60=0 avg300=0 total=1\n"
    assert decide(linux(20 * GB, some_only), DEFAULTS, holding=False).signal == "PSI some avg10"
    easing = "some avg10=20.00 avg60=0 avg300=0 total=1\nfull avg10=8.00 avg60=0 avg300=0 total=1\n"
    assert decide(linux(20 * GB, easing), DEFAULTS, holding=False).action is Action.OK
    hold = decide(linux(20 * GB, easing), DEFAULTS, holding=True)
    assert hold.action is Action.HOLD and hold.signal == "PSI full avg10"  # 8% is not below 20% / 4
    assert decide(linux(20 * GB, PSI_IDLE), DEFAULTS, holding=True).action is Action.RELEASE


def test_linux_available_bytes_are_the_fallback_without_psi_and_a_backstop_with_it():
    floor = default_floor_mb(32 * GB)  # 5 % of 32 GB
    assert floor == pytest.approx(1638.4)
    verdict = decide(linux(floor - 1, None), DEFAULTS, holding=False)
    assert (
        verdict.action is Action.STOP and verdict.signal == "memória disponível" and "mínimo 1638 MB" in verdict.detail
    )
    assert decide(linux(floor - 1, PSI_IDLE), DEFAULTS, holding=False).signal == "memória disponível"
    assert decide(linux(floor * 1.1, None), DEFAULTS, holding=True).action is Action.HOLD  # within the headroom
    assert decide(linux(floor * 1.3, None), DEFAULTS, holding=True).action is Action.RELEASE
    assert decide(linux(900, None), Thresholds(min_available_mb=800), holding=False).action is Action.OK


def test_the_floor_is_derived_from_ram_within_bounds():
    assert default_floor_mb(8 * GB) == 512.0  # 5 % would be 410 MB
    assert default_floor_mb(64 * GB) == pytest.approx(3276.8)
    assert default_floor_mb(512 * GB) == 4096.0


def test_a_disabled_guard_never_stops():
    verdict = decide(MAC_CRITICAL, Thresholds(enabled=False), holding=True)
    assert verdict.action is Action.OK and verdict.may_start


def test_the_reader_samples_this_machine(tmp_path):
    reading = PressureReader().read()
    assert 0 < reading.available_mb <= reading.total_mb
    if Path("/proc/pressure/memory").exists():
        assert reading.psi_full is not None and 0 <= reading.psi_full <= 100
    psi = tmp_path / "memory"
    psi.write_text(PSI_THRASHING)
    recorded = PressureReader(platform="linux", psi_path=psi).read()
    assert (recorded.level, recorded.psi_some, recorded.psi_full) == (None, 71.35, 34.80)
    assert PressureReader(platform="linux", psi_path=tmp_path / "absent").read().psi_full is None


def test_the_guard_describes_what_it_reads():
    readings = iter([MAC_WARN, MAC_CRITICAL])
    guard = MemoryGuard(reader=lambda: next(readings))
    assert guard.describe() == f"guarda de memória: {MACOS_SYSCTL} ≥ 4 (crítica) para o job"
    assert guard.check(holding=False).action is Action.STOP
    assert "desligada" in MemoryGuard(Thresholds(enabled=False), reader=lambda: MAC_CRITICAL).describe()
    assert "PSI full avg10 ≥ 20%" in MemoryGuard(reader=lambda: linux(20 * GB, PSI_IDLE)).describe()
    assert "sem PSI" in MemoryGuard(reader=lambda: linux(20 * GB, None)).describe()


def test_farensed_turns_the_guard_on_by_default_and_takes_options_and_env(tmp_path):
    import subprocess
    import sys

    import psutil

    from tests.helpers import child_env

    runs = [  # (options, environment): five daemons side by side, each in its own workspace
        ((), {}),
        (("--min-available-mb", "300"), {}),
        ((), {"FARENSE_MIN_AVAILABLE_MB": "400"}),
        (("--no-memory-guard",), {}),
        ((), {"FARENSE_MEMORY_GUARD": "0"}),
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "farensed.queue.main", "--home", str(tmp_path / str(n)), "--burst", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**child_env(), **env},
        )
        for n, (args, env) in enumerate(runs)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 5, [err for _out, err in outputs]
    default, floor_300, floor_400, off, off_env = (out.splitlines()[0] for out, _err in outputs)
    assert "guarda de memória:" in default and "desligada" not in default
    if sys.platform != "darwin":
        floor = default_floor_mb(psutil.virtual_memory().total / 2**20)
        assert f"memória disponível < {floor:.0f} MB" in default
        assert "memória disponível < 300 MB" in floor_300
        assert "memória disponível < 400 MB" in floor_400
    assert "desligada" in off and "desligada" in off_env
