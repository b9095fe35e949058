"""The stall watch's decisions on real files and a fake clock; a stop before training ends the process at once."""

from __future__ import annotations

import os
import signal

import pytest

from farensed import EXIT_RESUMABLE
from farensed.queue.backoff import DEFAULT_SCHEDULE
from farensed.queue.job import Job
from farensed.queue.outcome import ending
from farensed.queue.stall import Stall, StallWatch
from farensed.signals import StoppedBeforeTraining, forget_requests


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_silence_stops_once_then_kills_once_and_any_write_keeps_it_alive(tmp_path):
    log, run_dir = tmp_path / "log", tmp_path / "run"
    log.write_text("banner\n")
    clock = Clock()
    watch = StallWatch(limit_s=600, kill_after_s=60, clock=clock)
    paths = lambda: [log, run_dir]  # noqa: E731
    assert watch.check(1, paths) is Stall.NONE  # its silence starts now
    for _ in range(5):  # writing every 5 minutes: never stalled
        clock.now += 300
        log.write_text(log.read_text() + "step\n")
        assert watch.check(1, paths) is Stall.NONE
    clock.now += 300
    run_dir.mkdir()  # a new run folder counts as a sign of life
    assert watch.check(1, paths) is Stall.NONE
    clock.now += 599
    assert watch.check(1, paths) is Stall.NONE
    clock.now += 2
    assert watch.check(1, paths) is Stall.NONE  # looked 2 s ago: it looks every 5 s, not at every tick
    clock.now += 3
    assert watch.check(1, paths) is Stall.STOP
    assert watch.check(1, paths) is Stall.NONE  # said once
    clock.now += 60
    assert watch.check(1, paths) is Stall.KILL
    clock.now += 600
    assert watch.check(1, paths) is Stall.NONE  # killed once
    assert watch.check(2, paths) is Stall.NONE  # the next child starts with a clean slate
    assert "10 minutos" in watch.reason() and "parado pelo farensed" in watch.reason()


def test_off_means_never_and_a_short_limit_is_said_in_seconds(tmp_path):
    clock = Clock()
    off = StallWatch(limit_s=None, clock=clock)
    off.check(1, lambda: [])
    clock.now += 10**6
    assert off.check(1, lambda: []) is Stall.NONE
    assert "30 s" in StallWatch(limit_s=30).reason()


@pytest.mark.parametrize(
    ("code", "cancel", "state"),
    [
        (EXIT_RESUMABLE, False, "failed"),
        (None, False, "failed"),
        (0, False, "done"),
        (EXIT_RESUMABLE, True, "cancelled"),
    ],
)
def test_a_stalled_child_fails_its_job_unless_it_finished_or_was_cancelled(code, cancel, state):
    job = Job(id=3, name="t", state="running", attempts=1, cancel_requested=cancel)
    changes = ending(job, code, None, None, DEFAULT_SCHEDULE, stalled="sem sinal de vida há 60 minutos")
    assert changes["state"] == state
    if state == "failed":
        assert changes["error"] == "sem sinal de vida há 60 minutos" and "recoveries" not in changes


def test_a_stop_before_training_raises_at_once_and_in_training_only_asks():
    from farensed.engine.interrupt import StopRequest

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = StopRequest(None)
        with pytest.raises(StoppedBeforeTraining) as raised:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes: a loop that never checks a flag
                pass
        assert "SIGTERM" in raised.value.line()
        with pytest.raises(StoppedBeforeTraining):
            stop.loading_done()  # asked once, stays asked: loading never ends into training after a stop
        forget_requests()
        stop.loading_done()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM  # now a request, honoured at the next update boundary
        ranks = StopRequest(None, single=False)  # ranks agree on every stop: never at once
        os.kill(os.getpid(), signal.SIGTERM)
        assert ranks.signum == signal.SIGTERM
    finally:
        forget_requests()  # what this test asked must not stop a later trainer in this process
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def test_a_stop_whose_raise_was_swallowed_in_a_del_still_stops_when_loading_ends(monkeypatch):
    """Python loses an exception raised inside __del__ (it prints "Exception ignored"): a stop that lands there
    while loading is raised again once loading ends, before any training."""
    import sys

    from farensed.engine.interrupt import StopRequest

    swallowed = []
    monkeypatch.setattr(sys, "unraisablehook", lambda info: swallowed.append(info.exc_type))
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stop = StopRequest(None)

        class Finalized:
            def __del__(self):
                stop._handle(signal.SIGTERM, None)  # what the signal does when it lands in a finalizer

        Finalized()
        assert swallowed == [StoppedBeforeTraining]  # lost, as in the regex module during a GGUF import
        with pytest.raises(StoppedBeforeTraining):
            stop.loading_done()
        with pytest.raises(StoppedBeforeTraining):
            StopRequest(None)  # the next handler of this run knows too
    finally:
        forget_requests()
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    assert StopRequest(None).loading_done() is None  # a new run starts with no stop requested
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_retry_of_the_same_job_is_a_new_child_watched_from_zero(tmp_path):
    """A stalled job retried in the morning: its new child is neither killed at once nor left unwatched."""
    clock = Clock()
    watch = StallWatch(limit_s=60, kill_after_s=60, clock=clock)
    paths = lambda: [tmp_path]  # noqa: E731
    watch.check((7, 100), paths)
    clock.now += 61
    assert watch.check((7, 100), paths) is Stall.STOP
    clock.now += 60
    assert watch.check((7, 100), paths) is Stall.KILL
    assert watch.check((7, 200), paths) is Stall.NONE  # the retry's child: a clean slate
    clock.now += 30
    assert watch.check((7, 200), paths) is Stall.NONE
    clock.now += 31
    assert watch.check((7, 200), paths) is Stall.STOP  # and watched like any other


def test_the_stall_limit_refuses_what_would_turn_it_off_silently_or_stop_every_job(isolated_home):
    from click.testing import CliRunner

    from farensed.queue.main import cli as farensed_cli

    runner = CliRunner()
    for value in ("nan", "0.01", "-1", "abc", "1e12"):
        result = runner.invoke(farensed_cli, ["--home", str(isolated_home), "--stall-minutes", value, "--burst"])
        assert result.exit_code == 2, (value, result.output)
        assert "--stall-minutes" in result.output
    result = runner.invoke(
        farensed_cli, ["--home", str(isolated_home), "--burst"], env={"FARENSE_STALL_MINUTES": "nan"}
    )
    assert result.exit_code == 2 and "'--stall-minutes': não é um número" in result.output
    result = runner.invoke(farensed_cli, ["--home", str(isolated_home), "--stall-minutes", "0.01", "--burst"])
    assert "0 (desligado) ou pelo menos 0.1 minutos" in result.output
