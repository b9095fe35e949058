"""Overnight logic without a model: training windows, the power decision, queue pause files, spec key `window`."""

from __future__ import annotations

import datetime as dt

import pytest

from farensed.errors import SpecError
from farensed.queue import power
from farensed.queue.power import Battery
from farensed.spec.jobspec import parse_spec
from farensed.spec.window import finish_time, format_clock, is_open, next_open, open_until, parse_windows

TZ = dt.timezone(dt.timedelta(hours=1))


def at(hour: int, minute: int = 0, second: int = 0, day: int = 10) -> dt.datetime:
    return dt.datetime(2026, 3, day, hour, minute, second, tzinfo=TZ)


NIGHT = parse_windows("23:00-07:00")


@pytest.mark.parametrize(
    ("now", "open_"),
    [(at(22, 59, 59), False), (at(23), True), (at(2), True), (at(6, 59, 59), True), (at(7), False), (at(12), False)],
)
def test_window_across_midnight_is_open_exactly_inside(now, open_):
    assert is_open(NIGHT, now) is open_


def test_window_across_midnight_closes_and_reopens_at_the_right_instants():
    assert open_until(NIGHT, at(2)) == at(7)
    assert open_until(NIGHT, at(23, 30)) == at(7, day=11)
    assert open_until(NIGHT, at(12)) is None
    assert next_open(NIGHT, at(12)) == at(23)
    assert next_open(NIGHT, at(7)) == at(23)
    assert next_open(NIGHT, at(3)) == at(3)
    assert format_clock(next_open(NIGHT, at(12))) == "23:00"


def test_several_windows_with_seconds_and_merging():
    windows = parse_windows("12:00:00-12:00:05, 12:00:10-12:01")
    assert is_open(windows, at(12, 0, 4)) and not is_open(windows, at(12, 0, 5))
    assert next_open(windows, at(12, 0, 5)) == at(12, 0, 10)
    assert format_clock(at(12, 0, 10)) == "12:00:10"
    touching = parse_windows("22:00-23:00,23:00-01:00")
    assert open_until(touching, at(22, 30)) == at(1, day=11)


def test_no_window_means_always_open():
    assert is_open(None, at(12)) and next_open(None, at(12)) == at(12) and open_until(None, at(12)) is None


def test_finish_time_walks_across_closed_hours():
    # 3 h of work from 06:00 inside 23:00-07:00: 1 h tonight, 2 h from 23:00 → 01:00 next day
    assert finish_time(NIGHT, at(6), 3 * 3600) == at(1, day=11)
    assert finish_time(NIGHT, at(12), 1800) == at(23, 30)
    assert finish_time(None, at(12), 60) == at(12, 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("23:00", "não é uma janela"),
        ("25:00-07:00", "hora inválida"),
        ("23:00-23:00", "iguais"),
        ("noite", "não é uma janela"),
        ("", "vazia"),
        ("23h-07h", "não é uma hora"),
    ],
)
def test_bad_windows_are_one_clear_line(text, message):
    with pytest.raises(ValueError, match=message):
        parse_windows(text)


def test_spec_key_window_is_validated():
    base = {"name": "x", "model": "m", "data": {"train": "a", "valid": "b"}}
    assert parse_spec({**base, "window": "23:00-07:00"}).window == "23:00-07:00"
    with pytest.raises(SpecError, match="spec: window: 23:00-24:00: hora inválida '24:00'"):
        parse_spec({**base, "window": "23:00-24:00"})
    with pytest.raises(SpecError, match="quis dizer 'window'"):
        parse_spec({**base, "windw": "23:00-07:00"})


@pytest.mark.parametrize(
    ("reading", "waiting", "expected"),
    [
        (None, False, False),  # no battery: nothing changes
        (None, True, False),
        (Battery(80, False), False, False),  # on battery, enough charge
        (Battery(29, False), False, True),  # on battery below 30 %: stop
        (Battery(29, True), True, False),  # plugged in again: resume
        (Battery(5, True), False, False),  # plugged in, even if nearly empty
        (Battery(35, False), True, True),  # once waiting, only mains power ends the wait
        (Battery(20, None), False, False),  # unknown plug state: nothing changes
    ],
)
def test_power_decision(reading, waiting, expected):
    assert power.must_wait(reading, 30.0, waiting) is expected


def test_a_hostile_battery_file_is_no_battery_never_a_hang_or_a_huge_read(tmp_path, monkeypatch):
    """FARENSE_BATTERY_FILE=/dev/zero grew farensed to 24 GB; a FIFO blocked it in open() for good."""
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "big").write_bytes(b" " * 10_000_000)
    for path in ("/dev/zero", str(fifo), str(tmp_path / "big"), str(tmp_path)):
        monkeypatch.setenv(power.BATTERY_FILE_ENV, path)
        assert power.read_battery() is None, path


def test_power_awareness_off_with_zero_threshold():
    assert power.must_wait(Battery(1, False), 0, False) is False


def test_battery_file_overrides_psutil(tmp_path, monkeypatch):
    path = tmp_path / "battery.json"
    monkeypatch.setenv(power.BATTERY_FILE_ENV, str(path))
    assert power.read_battery() is None  # missing file: no battery
    path.write_text('{"percent": 25, "plugged": false}')
    assert power.read_battery() == Battery(25.0, False)
    path.write_text("not json")
    assert power.read_battery() is None


# ---- queue ETA (pure) -------------------------------------------------------------------------------------
def test_eta_runs_jobs_one_after_another_by_priority():
    from farensed.views.eta import Item, schedule

    now = at(20)
    out = schedule([Item(1, 3600), Item(2, 1800, priority=5)], now, running=Item(9, 600))
    assert out[9] == {"start": None, "end": at(20, 10)}
    assert out[2] == {"start": at(20, 10), "end": at(20, 40)}  # higher priority first
    assert out[1] == {"start": at(20, 40), "end": at(21, 40)}


def test_eta_respects_windows_not_before_and_dependencies():
    from farensed.views.eta import Item, schedule

    now = at(20)
    items = [
        Item(1, 2 * 3600, windows=NIGHT),  # waits for 23:00
        Item(2, 600, not_before=at(21)),  # may start at 21:00 and does, before job 1
        Item(3, 600, after=[1]),  # only after job 1
    ]
    out = schedule(items, now)
    assert out[2] == {"start": at(21), "end": at(21, 10)}
    assert out[1] == {"start": at(23), "end": at(1, day=11)}
    assert out[3] == {"start": at(1, day=11), "end": at(1, 10, day=11)}


def test_eta_unknown_duration_makes_later_times_unknown():
    from farensed.views.eta import Item, format_eta, schedule

    now = at(20)
    out = schedule([Item(1, None), Item(2, 60)], now)
    assert out[1] == {"start": now, "end": None} and out[2] == {"start": None, "end": None}
    assert format_eta(None, now) == "?" and format_eta(at(23), now) == "23:00"
    assert format_eta(at(1, day=11), now) == "11/03 01:00"
    blocked = schedule([Item(1, 60)], now, blocked=True)
    assert blocked[1] == {"start": None, "end": None}


def test_report_since_and_success_criteria_read_defensively():
    from farensed.views.morning import parse_since, success_verdicts

    now = at(8)
    assert parse_since("23:00", now) == at(23, day=9)  # the latest past 23:00
    assert parse_since("07:30", now) == at(7, 30)
    assert parse_since(None, now) == at(8, day=9)
    with pytest.raises(SpecError, match="--since: 'ontem'"):
        parse_since("ontem", now)
    assert success_verdicts({}, [], None) is None and success_verdicts({"success": "sim"}, [], None) is None
    verdicts = success_verdicts({"success": {"gap_max": 0.15}}, [], None)
    assert [v["criterion"] for v in verdicts] == ["gap_max"] and verdicts[0]["passed"] is not True


def test_a_child_is_ready_for_a_stop_once_it_recorded_itself(tmp_path):
    """The overnight stop waits for child.json (written after the child's SIGTERM handler), never for log text."""
    from farensed.queue.child import CHILD_FILE
    from farensed.queue.overnight import child_ready
    from farensed.storage.atomic import atomic_write_json

    assert not child_ready(tmp_path, 4242)
    atomic_write_json(tmp_path / CHILD_FILE, {"pid": 4141, "attempt": 1})  # the previous attempt's child
    assert not child_ready(tmp_path, 4242)
    atomic_write_json(tmp_path / CHILD_FILE, {"pid": 4242, "attempt": 2})
    assert child_ready(tmp_path, 4242)


def test_eta_pace_leaves_out_the_first_records_compile():
    """A first step of 53 s (MLX's one-time compile) then 0.5 s a step: the queue's ETA paces at 0.5 s, not 1.5."""
    from farensed.views.eta import _step_seconds

    records = [{"step": 2, "elapsed_s": 53.5}] + [{"step": s, "elapsed_s": 53.5 + 0.5 * (s - 2)} for s in (4, 40)]
    assert _step_seconds(records) == 0.5
    assert _step_seconds(records[:1]) == 53.5 / 2  # one record: all that is known
    assert _step_seconds([{"step": "x", "elapsed_s": None}]) is None


def _daemon_with_running_child(tmp_path):
    """A daemon (never started: its loop is ticked by hand) watching a real child process of job 1."""
    import logging
    import subprocess

    import psutil

    from farensed.queue.adopt import Running
    from farensed.queue.daemon import Daemon
    from farensed.queue.job import Job
    from farensed.storage.atomic import atomic_write_json
    from farensed.storage.workspace import Workspace

    ws = Workspace.at(tmp_path / "ws")
    daemon = Daemon(ws, log=logging.getLogger("test"))
    child = subprocess.Popen(["sleep", "60"], start_new_session=True)
    started = psutil.Process(child.pid).create_time()
    daemon.queue.job_dir(1).mkdir(parents=True)
    daemon.queue.save(Job(id=1, name="a", state="running", attempts=1, pid=child.pid, pid_create_time=started))
    atomic_write_json(daemon.queue.job_dir(1) / "child.json", {"pid": child.pid, "create_time": started})
    daemon.current = Running(1, child.pid, child, create_time=started)
    return daemon, child


def _ticks(daemon, n: int) -> None:
    for _ in range(n):
        try:
            daemon._tick()
            daemon.mishaps.clean_tick()
        except Exception as exc:  # what the loop does with a tick's failure
            daemon._mishap(exc)


def test_a_hand_edited_pause_record_never_keeps_a_job_from_its_overnight_stop(tmp_path):
    from farensed.queue.overnight import pause_queue
    from farensed.storage.atomic import atomic_write_json

    daemon, child = _daemon_with_running_child(tmp_path)
    try:
        atomic_write_json(daemon.queue.job_dir(1) / "pause.json", {"note": "no history here"})
        pause_queue(daemon.ws)
        _ticks(daemon, 2)
        assert child.wait(timeout=10) == -15  # the queue pause reached the child (SIGTERM)
    finally:
        child.kill()


def test_a_report_that_cannot_be_recorded_is_not_started_again_at_every_tick(tmp_path):
    import logging

    import psutil

    from farensed.queue.daemon import Daemon
    from farensed.queue.job import Job
    from farensed.storage.workspace import Workspace

    ws = Workspace.at(tmp_path / "ws")
    daemon = Daemon(ws, log=logging.getLogger("test"))
    daemon.queue.job_dir(1).mkdir(parents=True)
    daemon.queue.save(Job(id=1, name="a", state="done"))
    (ws.jobs / "report.json").mkdir()  # jobs/report.json cannot be written (as on a full disk)
    daemon.overnight.busy = True  # the previous tick saw the queue busy: now it has drained
    _ticks(daemon, 4)
    mine = [p for p in psutil.process_iter(["cmdline"]) if str(ws.root) in " ".join(p.info["cmdline"] or [])]
    assert len(mine) <= 1  # the one whose record failed (terminated), never one per tick
    _gone, alive = psutil.wait_procs(mine, timeout=10)
    assert not alive


def test_pause_twice_says_it_already_was_and_resume_twice_says_it_was_not(isolated_home):
    from click.testing import CliRunner

    from farensed.cli.main import cli

    def said(command: str) -> str:
        result = CliRunner().invoke(cli, ["--home", str(isolated_home), command])
        assert result.exit_code == 0, result.output
        return result.output.strip()

    first = said("pause")
    assert "nenhum job começa até farensectl resume" in first
    since = first.split("desde ")[1][:19]
    assert said("pause") == f"a fila já estava em pausa desde {since}; retomar: farensectl resume"  # the first time
    assert (said("resume"), said("resume")) == ("fila retomada", "a fila não estava em pausa")
