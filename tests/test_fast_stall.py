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
from farensed.signals import StoppedBeforeTraining


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
        stop.loading_done()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM  # now a request, honoured at the next update boundary
        ranks = StopRequest(None, single=False)  # ranks agree on every stop: never at once
        os.kill(os.getpid(), signal.SIGTERM)
        assert ranks.signum == signal.SIGTERM
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
