"""The daemon's lifecycle lines (fixed fields, human text in the chosen language), the attempt counter and the
durations that say whether they are one start's or the total."""

from __future__ import annotations

import datetime as dt
import logging

import orjson
import pytest

from farensed import EXIT_RESUMABLE
from farensed.queue import events
from farensed.queue.daemon import Daemon
from farensed.queue.job import Job, now_iso
from farensed.queue.jobs import Queue
from farensed.storage.workspace import Workspace
from farensed.views.morning import job_events
from farensed.views.status import duration_s, total_duration_s


@pytest.fixture
def q(isolated_home) -> Queue:
    return Queue(Workspace(isolated_home))


def add(q: Queue, name: str = "a", **fields) -> Job:
    job_id = q._next_id()
    q.job_dir(job_id).mkdir()
    (q.job_dir(job_id) / "spec.json").write_bytes(orjson.dumps({"name": name}))  # no model: its child fails fast
    job = Job(id=job_id, name=name, **fields)
    q.save(job)
    return job


@pytest.mark.parametrize("lang", ["pt", "en"])
def test_lifecycle_lines_keep_their_fields_in_every_language(monkeypatch, lang):
    monkeypatch.setenv("FARENSE_LANG", lang)
    job = Job(id=3, name="v2", attempts=2, recoveries=1, state="pending", source="v2.json")
    lines = [events.received(job), events.started(job, False, 4242), events.ended(job, None, "morto pelo sinal 9")]
    parsed = [events.parse(line) for line in lines]
    assert [fields for fields, _human in parsed] == [
        {"job": "3", "event": "received", "source": "v2.json"},
        {"job": "3", "event": "started", "attempt": "2", "pid": "4242"},
        {"job": "3", "event": "ended", "state": "pending", "exit_code": "-", "recoveries": "1"},  # lost: no code
    ]
    humans = " ".join(human for _fields, human in parsed)
    assert "None" not in " ".join(lines)
    if lang == "en":
        assert "received from jobs/pending/v2.json" in humans and "1 recovery" in humans
        assert not {"recebido", "iniciado", "tentativa", "código", "recuperaç"} & set(humans.split())
    else:
        assert "recebido de jobs/pending/v2.json" in humans and "1 recuperação" in humans
    done = events.ended(Job(id=3, name="v2", state="done", recoveries=2), 0, None)
    assert done.startswith("job=3 event=ended state=done exit_code=0 recoveries=2 · ")


def test_job_log_frames_are_read_in_the_readers_language_old_ones_too(monkeypatch):
    job = Job(id=5, name="x", attempts=1)
    monkeypatch.setenv("FARENSE_LANG", "pt")  # written by a Portuguese daemon
    log = (
        "\n=== farensed: job 5, tentativa 1, 2026-05-01T22:00:00+01:00 ===\n"  # before the fields
        + "Época 1/1\n"
        + events.stop_frame(5, 1, "2026-05-01T23:00:00+01:00", "janela fechada; em pausa até 07:00")
        + events.attempt_frame(job, True, "2026-05-02T07:00:01+01:00")
        + "\n=== farensed: fila em pausa; a parar com checkpoint ===\n"  # an old stop frame
    )
    found = events.job_events(log)
    assert [f["event"] for f, _h in found] == ["started", "stopping", "resumed", "stopping"]
    assert [f.get("attempt") for f, _h in found] == ["1", "1", "1", None]
    monkeypatch.setenv("FARENSE_LANG", "en")  # read by an English morning report
    said = [events.describe(f, h) for f, h in found]
    assert said[0] == "attempt 1 started at 22:00:00"
    assert said[2] == "attempt 1 resumed after the pause at 07:00:01"
    assert said[1].startswith("stop at 23:00:00: ")


def test_a_pause_resume_is_not_an_attempt_a_retry_is(q, monkeypatch):
    """Paused, resumed, cancelled, retried: attempts 1, 1, 2 and each frame says which (never `tentativa 2` twice)."""
    monkeypatch.setenv("FARENSE_LANG", "en")
    daemon = Daemon(q.ws, log=logging.getLogger("test"))
    job = add(q, "nomodel", attempts=1, exit_code=EXIT_RESUMABLE, started_at=now_iso())  # stopped by its window
    (q.job_dir(job.id) / "pause.json").write_bytes(
        orjson.dumps(
            {"stopping": {"reason": "janela", "at": now_iso(), "recoveries": 0}, "history": [{"at": now_iso()}]}
        )
    )
    assert daemon.start(q.get(job.id))
    daemon.overnight.started(q.get(job.id))
    assert q.get(job.id).attempts == 1  # the window's resume continues attempt 1
    daemon.current.popen.wait(timeout=60)
    daemon.poll_current()  # the spec names no model: the child fails (exit 2)
    assert q.get(job.id).state == "failed"
    q.retry(job.id)
    assert daemon.start(q.get(job.id))
    daemon.current.popen.wait(timeout=60)
    daemon.poll_current()
    assert q.get(job.id).attempts == 2
    frames = [f for f, _h in events.job_events(q.log_path(job.id).read_text())]
    assert [(f["event"], f["attempt"]) for f in frames] == [("resumed", "1"), ("started", "2")]
    assert job_events(q, q.get(job.id)) == [
        f"attempt 1 resumed after the pause at {frames[0]['time'][11:19]}",
        f"attempt 2 started at {frames[1]['time'][11:19]}",
    ]


def test_durations_say_the_latest_start_and_the_total_over_attempts(q):
    def ago(seconds: float) -> str:
        return (dt.datetime.now().astimezone() - dt.timedelta(seconds=seconds)).isoformat(timespec="milliseconds")

    daemon = Daemon(q.ws, log=logging.getLogger("test"))
    job = add(q, state="running", attempts=1, started_at=ago(120), first_started_at=ago(120))
    first = daemon.settle(job.id, EXIT_RESUMABLE)  # 2 minutes, then a wait of 10 minutes
    assert first.ran_s == pytest.approx(120, abs=2) and first.last_ran_s == pytest.approx(120, abs=2)
    q.update(job.id, state="running", attempts=2, started_at=ago(60))
    running = q.get(job.id)
    assert duration_s(running) == pytest.approx(60, abs=2)  # this start
    assert total_duration_s(running) == pytest.approx(180, abs=3)  # both, not the 10-minute wait between them
    done = daemon.settle(job.id, 0)
    assert total_duration_s(done) == pytest.approx(180, abs=3) and duration_s(done) == pytest.approx(60, abs=2)
    assert done.first_started_at == first.first_started_at
