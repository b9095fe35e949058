"""The queue's state machine in-process, in seconds, without a model: settle, next_runnable, dependencies,
cancel/retry, recoveries and their back-off, tolerant job.json, the run lock, the start-up handshake."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil
import pytest
from click.testing import CliRunner

from farensed import EXIT_RESUMABLE
from farensed.errors import SpecError
from farensed.queue import backoff
from farensed.queue.daemon import Daemon
from farensed.queue.job import SCHEMA_VERSION, Job
from farensed.queue.jobs import Queue
from farensed.storage.procs import create_time, describe_loss, kill_orphans, process_alive
from farensed.storage.runlock import RunLockedError, hold_run, holder, lock_paths, sweep_temps
from farensed.storage.workspace import Workspace
from tests.helpers import child_env, wait_for


@pytest.fixture
def ws(isolated_home) -> Workspace:
    return Workspace(isolated_home)


@pytest.fixture
def q(ws) -> Queue:
    return Queue(ws)


@pytest.fixture
def daemon(ws) -> Daemon:
    return Daemon(ws, log=logging.getLogger("test"), recovery_backoff=(10.0, 30.0, 120.0))


def add(q: Queue, name: str = "a", **fields) -> Job:
    """A job written straight into jobs/<id>/ (what ingest produces), no spec validation."""
    job_id = q._next_id()
    q.job_dir(job_id).mkdir()
    (q.job_dir(job_id) / "spec.json").write_bytes(orjson.dumps({"name": name}))
    job = Job(id=job_id, name=name, **fields)
    q.save(job)
    return job


def sleeper(*cmd: str) -> subprocess.Popen:
    """A live process in its own session, standing in for a training child, once its command line can be read.

    Popen returns when exec closed its error pipe, which the kernel does before the new program's arguments are in
    place: for a moment /proc/PID/cmdline reads empty (a CI run saw kill_orphans find no workspace there).
    """
    popen = subprocess.Popen(
        list(cmd) or [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True, env=child_env()
    )
    wait_for(lambda: psutil.Process(popen.pid).cmdline(), timeout=10)
    return popen


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


# ---- scheduling -------------------------------------------------------------------------------------------
def test_next_runnable_priority_then_age_not_before_and_backoff(q):
    low = add(q, "low")
    high = add(q, "high", priority=5)
    later = add(q, "later", priority=9, not_before="2999-01-01T00:00:00+00:00")
    waiting = add(q, "waiting", priority=7, retry_at=backoff.retry_time(1))
    assert q.next_runnable().id == high.id
    assert q.next_runnable(exclude={high.id}).id == low.id
    past = dt.datetime.now().astimezone() + dt.timedelta(seconds=11)
    assert q.next_runnable(now=past).id == waiting.id  # back-off over
    assert q.get(later.id).state == "pending"


def test_dependency_done_releases_failed_or_cancelled_fails_the_dependent(q):
    first = add(q, "first")
    second = add(q, "second", after=[first.id], priority=9)
    assert q.next_runnable().id == first.id
    q.update(first.id, state="done")
    assert q.next_runnable().id == second.id
    third = add(q, "third", after=[second.id], priority=9)
    q.update(second.id, state="cancelled")
    assert q.next_runnable() is None
    assert q.get(third.id).state == "failed" and f"dependência {second.id}" in q.get(third.id).error


# ---- settle -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "code, changes, expected",
    [
        (0, {}, ("done", 0)),
        (EXIT_RESUMABLE, {}, ("pending", 0)),
        (EXIT_RESUMABLE, {"cancel_requested": True}, ("cancelled", 0)),
        (None, {"cancel_requested": True}, ("cancelled", 0)),
        (None, {}, ("pending", 1)),
        (None, {"recoveries": 2, "max_recoveries": 2}, ("failed", 3)),
        (2, {}, ("failed", 0)),
    ],
)
def test_settle_every_outcome(q, daemon, code, changes, expected):
    job = add(q, state="running", pid=123, **changes)
    q.log_path(job.id).write_text("linha 1\nErro: data.valid: ficheiro não encontrado\n")
    settled = daemon.settle(job.id, code)
    assert (settled.state, settled.recoveries) == expected
    assert settled.pid is None and settled.exit_code == code
    assert settled.status.terminal == (expected[0] != "pending")
    if code == 2:
        assert "ficheiro não encontrado" in settled.error


def test_lost_child_backs_off_10_30_120_capped_and_records_why(q, daemon):
    job = add(q, state="running", max_recoveries=9)
    waits = []
    for n in range(1, 5):
        q.update(job.id, state="running")
        tic = dt.datetime.now().astimezone()
        settled = daemon.settle(job.id, None, reason=describe_loss(-signal.SIGKILL, None))
        toc = dt.datetime.now().astimezone()
        retry = dt.datetime.fromisoformat(settled.retry_at)
        wait = next(
            d for d in (10, 30, 120) if tic + dt.timedelta(seconds=d - 1) <= retry <= toc + dt.timedelta(seconds=d)
        )
        waits.append(wait)  # between the two clocks read around settle, whatever a loaded machine took
        assert settled.recoveries == n and settled.loss_reason == "morto pelo sinal SIGKILL"
        assert "SIGKILL" in settled.error
    assert waits == [10, 30, 120, 120]
    assert q.next_runnable() is None  # still waiting
    assert daemon.queue.work_ahead()  # burst mode keeps the daemon for it
    assert backoff.parse_schedule("1, 2,5") == (1.0, 2.0, 5.0) and backoff.delay(7, (1.0, 2.0)) == 2.0
    with pytest.raises(ValueError):
        backoff.parse_schedule("10,x")


def test_status_shows_when_a_lost_job_will_retry(q, daemon, ws):
    from farensed.cli.main import cli

    job = add(q, "lost", state="running")
    daemon.settle(job.id, None, reason="morto pelo sinal SIGKILL")
    out = CliRunner().invoke(cli, ["--home", str(ws.root), "status", str(job.id)])
    assert out.exit_code == 0, out.output
    line = next(line for line in out.output.splitlines() if line.startswith("retoma às:"))
    assert "daqui a" in line and "SIGKILL" in out.output
    info = orjson.loads(CliRunner().invoke(cli, ["--home", str(ws.root), "status", str(job.id), "--json"]).output)
    assert info["retry_at"] and info["loss_reason"] == "morto pelo sinal SIGKILL"


def test_memory_guard_stop_records_its_reason(q, daemon):
    job = add(q, state="running", held="memória baixa (100 MB livres < 2000 MB)")
    settled = daemon.settle(job.id, EXIT_RESUMABLE)
    assert settled.state == "pending" and settled.recoveries == 0
    assert settled.loss_reason.startswith("parado pela guarda de memória: memória baixa")


def test_describe_loss_names_signal_and_oom():
    assert describe_loss(-signal.SIGTERM, None) == "morto pelo sinal SIGTERM"
    assert "OOM" in describe_loss(-signal.SIGKILL, -1)  # the kernel's OOM count went up meanwhile
    assert "desconhecido" in describe_loss(None, None)


# ---- cancel / retry ----------------------------------------------------------------------------------------
def test_cancel_pending_never_runs_even_if_chosen_just_before(q, daemon):
    job = add(q)
    chosen = q.next_runnable()
    assert q.cancel(job.id).state == "cancelled"
    daemon.start(chosen)  # the daemon had picked it a moment before the cancel
    assert daemon.current is None and q.get(job.id).state == "cancelled" and q.get(job.id).attempts == 0


def test_cancel_of_a_running_job_whose_child_vanished_ends_cancelled_after_a_crash(q, daemon):
    job = add(q, state="running", pid=999_999_999, pid_create_time=1.0)
    assert q.cancel(job.id).cancel_requested  # no daemon, no child: the request is on disk
    daemon.recover()  # the next daemon after the crash
    final = q.get(job.id)
    assert final.state == "cancelled" and final.recoveries == 0 and final.ended_at
    with pytest.raises(Exception, match="já terminou"):
        q.cancel(job.id)


def test_cancel_reaches_a_child_started_before_the_request(q, daemon, procs):
    child = sleeper()
    procs.append(child)
    job = add(q, state="running", pid=child.pid, pid_create_time=create_time(child.pid))
    daemon.recover()
    assert daemon.current.pid == child.pid
    q.update(job.id, cancel_requested=True)  # written while the signal could not be sent
    daemon.forward_cancel()
    assert child.wait(timeout=10) == -signal.SIGTERM
    wait_for(lambda: daemon.current.exit_status()[0], timeout=10)
    daemon.poll_current()
    assert q.get(job.id).state == "cancelled"


def test_retry_after_cancel_or_failure_resets_flags_and_recoveries(q):
    job = add(q, state="cancelled", cancel_requested=True, recoveries=11, retry_at="2999-01-01T00:00:00+00:00")
    again = q.retry(job.id)
    assert (again.state, again.cancel_requested, again.recoveries, again.retry_at) == ("pending", False, 0, None)
    assert q.next_runnable().id == job.id
    with pytest.raises(Exception, match="só um job falhado ou cancelado pode voltar à fila"):
        q.retry(job.id)


# ---- recovery: never a second trainer ----------------------------------------------------------------------
def test_running_job_without_pid_adopts_the_child_that_recorded_itself(q, daemon, procs):
    child = sleeper()
    procs.append(child)
    job = add(q, state="running", attempts=1)  # the daemon died before it wrote the pid
    (q.job_dir(job.id) / "child.json").write_bytes(
        orjson.dumps({"pid": child.pid, "create_time": create_time(child.pid), "attempt": 1})
    )
    daemon.recover()
    assert daemon.current is not None and daemon.current.pid == child.pid
    job = q.get(job.id)
    assert (job.state, job.pid, job.recoveries) == ("running", child.pid, 0)
    assert daemon._pick() is None  # nothing else starts while it trains


def test_running_job_without_any_record_adopts_the_run_lock_holder(q, daemon, ws, procs):
    job = add(q, "locked", state="running")
    code = (
        "import sys, time\nfrom pathlib import Path\nfrom farensed.storage.runlock import hold_run\n"
        f"with hold_run(Path({str(ws.run_dir('locked'))!r}), job_id={job.id}):\n"
        "    print('held', flush=True)\n    time.sleep(60)\n"
    )
    holder_proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=child_env())
    procs.append(holder_proc)
    assert holder_proc.stdout.readline().strip() == b"held"
    daemon.recover()
    assert daemon.current is not None and daemon.current.pid == holder_proc.pid


def test_running_job_with_no_live_process_is_lost_once_and_waits(q, daemon):
    job = add(q, state="running", pid=999_999_999, pid_create_time=1.0)
    daemon.recover()
    job = q.get(job.id)
    assert (job.state, job.recoveries) == ("pending", 1) and backoff.seconds_left(job.retry_at) > 5
    assert "não corria" in job.loss_reason and daemon.current is None


def test_a_busy_run_folder_is_skipped_until_it_is_free(q, daemon, ws):
    busy = add(q, "busy", priority=9)
    free = add(q, "free")
    with hold_run(ws.run_dir("busy")):  # e.g. `farensectl run` of the same name
        assert daemon._pick().id == free.id
        q.update(free.id, state="done")
        assert daemon._pick() is None
    assert daemon._pick().id == busy.id


def test_run_lock_refuses_a_second_holder_naming_pid_and_job(ws, procs, tmp_path):
    run_dir = ws.run_dir("t")
    code = (
        "import time\nfrom pathlib import Path\nfrom farensed.storage.runlock import hold_run\n"
        f"with hold_run(Path({str(run_dir)!r}), job_id=7):\n    print('held', flush=True)\n    time.sleep(60)\n"
    )
    first = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=child_env())
    procs.append(first)
    assert first.stdout.readline().strip() == b"held"
    assert holder(run_dir)["pid"] == first.pid
    with pytest.raises(RunLockedError, match=rf"em uso pelo pid {first.pid} \(job 7\)") as err:
        with hold_run(run_dir):
            pass
    assert err.value.exit_code == 4
    first.kill()  # kill -9 releases the lock with the process
    first.wait()
    assert holder(run_dir) is None
    with hold_run(run_dir), hold_run(run_dir, what="avaliação"):  # re-entrant in one process
        assert holder(run_dir)["pid"] == os.getpid()
    assert not lock_paths(run_dir)[1].exists()


def test_stale_temp_files_of_dead_writers_are_swept(tmp_path):
    tmp_path = tmp_path / "run"
    tmp_path.mkdir()
    (tmp_path / ".checkpoint_epoch0_step8.tmp-999999").mkdir()
    (tmp_path / ".training_state.json.tmp-999999").write_text("{")
    (tmp_path / f".mine.tmp-{os.getpid()}").write_text("x")
    (tmp_path / "checkpoint_epoch0_step8").mkdir()
    assert len(sweep_temps(tmp_path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [f".mine.tmp-{os.getpid()}", "checkpoint_epoch0_step8"]


# ---- the child's start-up handshake ------------------------------------------------------------------------
def test_child_whose_daemon_died_before_recording_it_touches_nothing(q):
    job = add(q)
    child = subprocess.Popen(
        [sys.executable, "-m", "farensed.queue.child", "--home", str(q.ws.root), "--job-dir", str(q.job_dir(job.id))]
        + ["--wait-go"],
        stdin=subprocess.PIPE,
        env=child_env(),
    )
    child.stdin.close()  # the daemon is gone: EOF instead of the go byte
    assert child.wait(timeout=30) == 0
    assert sorted(p.name for p in q.job_dir(job.id).iterdir()) == ["job.json", "spec.json"]


def test_daemon_starts_a_child_that_records_itself_and_settles_it(q, daemon):
    job = add(q, "nomodel")  # its spec names no model: the child fails fast, before any training
    daemon.start(q.get(job.id))
    started = q.get(job.id)
    assert started.state == "running" and started.pid == daemon.current.pid and started.attempts == 1
    daemon.current.popen.wait(timeout=60)
    daemon.poll_current()
    record = orjson.loads((q.job_dir(job.id) / "child.json").read_bytes())
    assert record["pid"] == started.pid and record["attempt"] == 1
    final = q.get(job.id)
    assert final.state == "failed" and final.exit_code == 2 and "model" in final.error


def test_kill_orphans_kills_only_this_workspaces_processes(procs, tmp_path):
    other = sleeper("sleep", "60")  # its own group, not this workspace's
    ours = sleeper(sys.executable, "-c", "import time; time.sleep(60)", str(tmp_path / "ws"))
    procs += [other, ours]
    assert kill_orphans(other.pid, str(tmp_path / "ws")) == 0
    assert kill_orphans(ours.pid, str(tmp_path / "ws")) == 1
    assert ours.wait(timeout=10) == -signal.SIGKILL
    time.sleep(0.1)
    assert process_alive(other.pid, None)


# ---- job.json: versioned and tolerant ----------------------------------------------------------------------
def test_job_json_keeps_unknown_keys_defaults_missing_ones_and_is_versioned(q):
    job = add(q, "x")
    path = q.job_dir(job.id) / "job.json"
    data = orjson.loads(path.read_bytes())
    assert data["schema_version"] == SCHEMA_VERSION
    del data["max_recoveries"], data["attempts"]
    data.update(future_key={"a": 1}, schema_version=SCHEMA_VERSION + 1)
    path.write_bytes(orjson.dumps(data))
    read = q.get(job.id)
    assert (read.max_recoveries, read.attempts) == (10, 0)
    q.update(job.id, priority=3)
    again = orjson.loads(path.read_bytes())
    assert again["future_key"] == {"a": 1} and again["priority"] == 3
    assert again["schema_version"] == SCHEMA_VERSION + 1  # never downgraded


@pytest.mark.parametrize(
    "damage",
    [b"", b'{"id": 1, "name": "x", "sta', b"[]", b'{"id": 1, "state": "weird"}', b'{"id": 1, "priority": "high"}']
    + [b'{"id": 1, "retry_at": "soon"}'],
)
def test_unreadable_job_json_fails_that_job_only_and_list_carries_on(q, ws, damage):
    from farensed.cli.main import cli

    bad = add(q, "bad")
    good = add(q, "good")
    (q.job_dir(bad.id) / "job.json").write_bytes(damage)
    jobs = q.jobs()
    assert [j.state for j in jobs] == ["failed", "pending"]
    assert "job.json ilegível" in jobs[0].error and f"farensectl retry {bad.id}" in jobs[0].error
    kept = [p for p in q.job_dir(bad.id).iterdir() if p.name.startswith("job.json.unreadable-")]
    assert len(kept) == 1 and kept[0].read_bytes() == damage
    assert jobs[0].name == "bad"  # from its spec.json
    listed = CliRunner().invoke(cli, ["--home", str(ws.root), "list", "--json"])
    assert listed.exit_code == 0 and [r["state"] for r in orjson.loads(listed.output)["jobs"]] == ["failed", "pending"]
    assert q.next_runnable().id == good.id
    assert q.retry(bad.id).state == "pending"


# ---- distributed checks without a network ------------------------------------------------------------------
def test_hostfile_specs_get_the_batch_size_check(ws):
    from farensed.spec.hosts import check_batch_size, world_size
    from farensed.spec.jobspec import parse_spec

    (ws.root / "hosts.txt").write_text("10.0.0.1\n10.0.0.2\n10.0.0.3\n")
    spec = parse_spec(
        {"name": "d", "model": "m", "data": {"train": "t", "valid": "v"}, "batch_size": 4}
        | {"distributed": {"hostfile": "hosts.txt"}}
    )
    assert world_size(spec, ws) == 3
    with pytest.raises(SpecError, match=r"batch_size \(4\) deve ser múltiplo do número de hosts \(3\)"):
        check_batch_size(spec, world_size(spec, ws), "spec.json")


def test_remote_checks_are_quoted_for_a_posix_shell(ws, tmp_path, monkeypatch):
    from farensed.engine.distributed import check_hosts
    from farensed.spec.jobspec import parse_spec

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ssh").write_text('#!/bin/sh\nshift 5\nprintf %s "$1" > "$SSH_LOG"\nexec sh -c "$1"\n')
    (fake / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SSH_LOG", str(tmp_path / "ssh.log"))
    odd = tmp_path / "a b" / "it's $HOME"
    odd.parent.mkdir()
    odd.write_text("x")
    spec = parse_spec(
        {"name": "d", "model": "m", "data": {"train": "t", "valid": "v"}, "batch_size": 2}
        | {"distributed": {"hosts": ["127.0.0.2", "127.0.0.1"]}}
    )
    check_hosts(spec, ws, [odd])  # the remote `test -e` finds the file: the quoting survived sh
    assert "'\"'\"'" in (tmp_path / "ssh.log").read_text()
    with pytest.raises(SpecError, match="não tem o modelo"):
        check_hosts(spec, ws, [Path(str(odd) + " missing")])
