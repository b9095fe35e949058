"""The hostile-input battery of issue #22, one case per finding, without a model (a synthetic model folder stands in
for mlx-lm's): every refusal is one short line with a non-zero exit, nothing on disk changes, nothing hangs, the
daemon's loop survives every file and says why it refused it."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tracemalloc

import orjson
import pytest
from click.testing import CliRunner

from farensed.cli.main import cli
from farensed.queue.daemon import Daemon
from farensed.queue.job import parse_time
from farensed.queue.jobs import Queue
from farensed.storage.workspace import Workspace
from farensed.terminal import terminal_text
from tests.helpers import child_env
from tests.hostile import (
    ALIAS_BOMB,
    OSC_CLIPBOARD,
    OSC_TITLE,
    POISON,
    cli_subprocess,
    drop,
    fake_model,
    fake_workspace,
    one_short_line,
    snapshot,
    spec,
    write,
)


@pytest.fixture
def ws(isolated_home) -> Workspace:
    fake_workspace(isolated_home)
    Queue(Workspace(isolated_home))  # jobs/ exists before any snapshot
    return Workspace(isolated_home)


class Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(self.format(record))


@contextlib.contextmanager
def captured(name: str):
    """A logger for a daemon in this process, and the list its lines land in."""
    logger, handler = logging.getLogger(name), Lines()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield logger, handler.lines
    finally:
        logger.removeHandler(handler)


def run_daemon(ws: Workspace) -> list[str]:
    """farensed's loop in this process until nothing is left to do; the lines it logged (it must return 0)."""
    with captured(f"hostile-{id(ws)}") as (logger, lines):
        try:
            assert Daemon(ws, log=logger, poll_interval=0.05).work(burst=True) == 0
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    return lines


def invoke(ws: Workspace, *args: str):
    return CliRunner().invoke(cli, ["--home", str(ws.root), *args])


def refused(ws: Workspace, *args: str, code: int = 2) -> str:
    """Run a command that must refuse: its one short line, the exit code, and the workspace unchanged."""
    before = snapshot(ws.root)
    result = invoke(ws, *args)
    assert result.exit_code == code, result.output
    assert snapshot(ws.root) == before
    return one_short_line(result.output)


# ---- 1. a small file in jobs/pending/ killed farensed at every start ---------------------------------------------
@pytest.mark.parametrize("name", sorted(POISON))
def test_a_poison_file_is_one_line_for_submit_and_spec_from(ws, name):
    path = write(ws.root, name, POISON[name])
    for args in (["spec", "--from", str(path)], ["submit", str(path)]):
        line = refused(ws, *args)
        assert str(path) in line


def test_the_daemon_sets_aside_every_poison_file_says_why_and_queues_the_good_ones(ws, tmp_path):
    pending, failed = ws.jobs / "pending", ws.jobs / "failed"
    (pending / "a-folder.json").mkdir()
    os.mkfifo(pending / "a-fifo.json")
    (pending / "dangling.json").symlink_to(tmp_path / "nowhere.json")
    for name, content in POISON.items():
        drop(pending, name, content)
    tomorrow = (dt.datetime.now() + dt.timedelta(days=1)).isoformat(timespec="seconds")  # queued, not started
    drop(pending, "good.json", orjson.dumps(spec(name="good", not_before=tomorrow)))
    drop(pending, "future.json", orjson.dumps(spec(name="future", not_before=tomorrow)))
    for entry in ("a-folder.json", "a-fifo.json", "dangling.json"):
        os.utime(pending / entry, (1e9, 1e9), follow_symlinks=False)  # settled long ago
    future = dt.datetime(2099, 1, 1).timestamp()
    os.utime(pending / "future.json", (future, future))  # dated next century: still taken
    logged = run_daemon(ws)  # returns: the loop survived every file
    jobs = {j.name: j for j in Queue(ws).jobs()}
    assert set(jobs) == {"good", "future"} and all(j.state == "pending" for j in jobs.values())
    assert not list(pending.iterdir())
    rejected = {p.name for p in failed.iterdir() if not p.name.endswith(".reason.txt")}
    assert rejected == set(POISON) | {"a-folder.json", "a-fifo.json", "dangling.json"}
    for name in POISON:
        assert (failed / name).read_bytes() == POISON[name].encode("utf-8", "surrogateescape")  # kept as it was
    for name in rejected:
        reason = (failed / f"{name}.reason.txt").read_text()
        assert reason.count("\n") == 1 and len(reason) <= 301 and "\x1b" not in reason, (name, reason)
        assert any(f"jobs/pending/{name} recusado" in line for line in logged), (name, logged)
    assert "FIFO" in (failed / "a-fifo.json.reason.txt").read_text()
    listed = orjson.loads(invoke(ws, "list", "--json").stdout)
    assert {r["file"] for r in listed["rejected"]} == rejected
    assert all(parse_time(r["rejected_at"]).tzinfo for r in listed["rejected"])  # ISO, as every time in list --json
    text = invoke(ws, "list").output
    assert "jobs/failed/ tem ficheiros recusados (total: 19)" in text and "\x1b" not in text


def test_folders_in_jobs_that_only_look_like_job_ids_are_not_jobs(ws):
    """'²' and '٣' pass str.isdigit ('²' then broke int(), '٣' aliased job 3); '007' would alias job 7."""
    tomorrow = (dt.datetime.now() + dt.timedelta(days=1)).isoformat(timespec="seconds")
    drop(ws.jobs / "pending", "v2.json", orjson.dumps(spec(name="v2", not_before=tomorrow)))
    queue = Queue(ws)
    [job] = queue.ingest_inbox()
    for name in ("²", "٣", "001", "9999999999"):
        shutil.copytree(queue.job_dir(job.id), ws.jobs / name)
    assert queue.ids() == [1]
    drop(ws.jobs / "pending", "v3.json", orjson.dumps(spec(name="v3", not_before=tomorrow)))
    assert [j.id for j in queue.ingest_inbox()] == [2]
    listed = orjson.loads(invoke(ws, "list", "--json").stdout)
    assert [j["id"] for j in listed["jobs"]] == [1, 2]
    assert refused(ws, "status", "²", code=4).startswith("Erro:")


def test_a_file_name_that_is_not_utf8_is_refused_or_queued_and_shown_as_its_bytes(ws):
    """A name with a byte UTF-8 cannot decode killed farensed at every start (the reason could not be written)."""
    pending, failed = ws.jobs / "pending", ws.jobs / "failed"
    tomorrow = (dt.datetime.now() + dt.timedelta(days=1)).isoformat(timespec="seconds")
    bad, good = os.fsdecode(b"x\xff\x9b2J.json"), os.fsdecode(b"v\xfe.json")
    drop(pending, bad, "{")
    drop(pending, good, orjson.dumps(spec(name="v", not_before=tomorrow)))
    logged = run_daemon(ws)  # returns: the loop survived
    assert not list(pending.iterdir()) and (failed / bad).read_bytes() == b"{"
    reason = (failed / (bad + ".reason.txt")).read_text()
    assert "x\\xff\\x9b2J.json" in reason and reason.count("\n") == 1
    assert any("jobs/pending/x\\xff\\x9b2J.json recusado" in line for line in logged), logged
    [job] = Queue(ws).jobs()
    assert job.source == "v\\xfe.json"  # job.json is UTF-8: the byte shown, not lost
    listed = invoke(ws, "list").output
    assert "x\\xff\\x9b2J.json" in listed and "\x9b" not in listed


def test_reading_a_file_in_the_inbox_does_not_wake_the_daemon_a_new_one_does(tmp_path):
    """watchdog reports opens and closes too: the daemon's own read of a file that stayed woke it at once, a loop
    at full speed (a failure that repeats never paused)."""
    from farensed.queue.wake import Waker, watch_folder

    (tmp_path / "a.json").write_text("{}")
    waker = Waker(tmp_path)
    observer = watch_folder(tmp_path, waker)
    try:
        waker.wait(0.2)
        (tmp_path / "a.json").read_text()
        assert not waker.wait(0.5)
        (tmp_path / "b.json").write_text("{}")
        assert waker.wait(5)
    finally:
        observer.stop()
        waker.close()


def test_the_loops_pause_after_failures_stays_bounded_for_ever():
    from farensed.queue.mishaps import MAX_PAUSE_S, Mishaps

    mishaps = Mishaps(logging.getLogger("bounded"))
    mishaps.consecutive = 100_000  # 2.0 ** 99_999 raised OverflowError in the loop's own error path
    assert mishaps.pause() == MAX_PAUSE_S


def test_a_reservation_of_a_file_named_like_a_temp_file_is_settled_never_swept(ws):
    pending = ws.jobs / "pending"
    tomorrow = (dt.datetime.now() + dt.timedelta(days=1)).isoformat(timespec="seconds")
    gone = subprocess.Popen(["true"])
    gone.wait()
    drop(pending, f".reserved-1-f.tmp-{gone.pid}", orjson.dumps(spec(name="f", not_before=tomorrow)))
    run_daemon(ws)
    assert [(j.name, j.source) for j in Queue(ws).jobs()] == [("f", f"f.tmp-{gone.pid}")]


def test_submit_takes_a_file_already_in_the_inbox_itself_settles_reservations_and_leaves_nothing_when_it_refuses(ws):
    pending, failed = ws.jobs / "pending", ws.jobs / "failed"
    tomorrow = (dt.datetime.now() + dt.timedelta(days=1)).isoformat(timespec="seconds")
    drop(pending, "dup.json", orjson.dumps(spec(name="dup", not_before=tomorrow)))
    assert invoke(ws, "submit", str(pending / "dup.json")).exit_code == 0
    drop(pending, ".reserved-7-mine.json", orjson.dumps(spec(name="mine", not_before=tomorrow)))  # left by a kill
    write(ws.root, "sub\udcffx.json", orjson.dumps(spec(name="sub", not_before=tomorrow)))  # a name not UTF-8
    assert invoke(ws, "submit", str(ws.root / "sub\udcffx.json")).exit_code == 0
    run_daemon(ws)
    jobs = {j.name: j for j in Queue(ws).jobs()}
    assert sorted(jobs) == ["dup", "mine", "sub"] and jobs["dup"].source == "dup.json"  # one job of the file
    assert jobs["sub"].source == "sub\\xffx.json"  # the byte shown, not lost
    write(ws.root, "late.json", orjson.dumps(spec(name="late", after=[99])))
    assert "job 99" in refused(ws, "submit", str(ws.root / "late.json"))  # refused: nothing written anywhere
    assert not list(pending.iterdir()) and not list(failed.iterdir())
    (ws.jobs / "999999999").mkdir()  # made by hand: the numbers run out
    result = invoke(ws, "submit", str(ws.root / "sub\udcffx.json"))
    assert result.exit_code == 4 and one_short_line(result.output).endswith("(o maior é 999999999)")
    assert not list(pending.iterdir()) and not list(failed.iterdir()) and Queue(ws).ids() == [1, 2, 3]


def test_a_reservation_for_a_folder_that_is_not_a_job_goes_back_to_the_inbox(ws, tmp_path):
    pending = ws.jobs / "pending"
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws.jobs / "3").mkdir()  # a stray folder: no job.json
    (ws.jobs / "4").symlink_to(outside)
    for job_id in (3, 4):
        drop(pending, f".reserved-{job_id}-c{job_id}.json", "{")
    run_daemon(ws)
    assert not list(outside.iterdir()) and not list((ws.jobs / "3").iterdir())
    assert sorted(p.name for p in (ws.jobs / "failed").iterdir() if not p.name.endswith(".txt")) == [
        "c3.json",
        "c4.json",
    ]


@pytest.mark.parametrize("length", [300, 5000])
def test_a_reference_too_long_for_any_file_is_one_short_line(ws, length):
    """A 300-character name is past NAME_MAX (the file system refused it: a 2,000-character line, exit 1)."""
    line = refused(ws, "status", "a" * length, code=4)
    assert len(line) < 300


def test_output_files_never_replace_a_device_fifo_or_folder_nor_make_folders(ws, tmp_path):
    """`plot -o /dev/zero` turned /dev/zero into a PNG (as root); `-o /nonexistent/x.png` made /nonexistent."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "training_metrics.jsonl").write_bytes(orjson.dumps({"step": 1, "epoch": 0, "loss": 2.0}) + b"\n")
    os.mkfifo(tmp_path / "fifo")
    for target in (tmp_path / "fifo", tmp_path, tmp_path / "missing" / "x.png"):
        for command in (["plot", str(run)], ["report"]):
            line = refused(ws, *command, "-o", str(target))
            assert "--output" in line, line
    assert stat.S_ISFIFO(os.stat(tmp_path / "fifo").st_mode) and not (tmp_path / "missing").exists()
    assert invoke(ws, "plot", str(run), "-o", str(tmp_path / "p.png")).exit_code == 0  # a new file: written


def test_readers_survive_records_a_hand_edit_or_a_diverged_seed_run_left(ws, tmp_path):
    """1e308 overflowed gap/check/compare; a null or string loss crashed tail; the seed's json.dump writes NaN."""
    odd = tmp_path / "odd"
    odd.mkdir()
    records = [
        {"step": 1, "epoch": 0, "loss": 2.0, "tokens_per_second": "x", "elapsed_s": "y", "total_steps": "z"},
        {"step": 2, "epoch": 0, "loss": None},
        {"step": 3, "epoch": 0, "loss": "str"},
        {"step": 4, "epoch": 0, "loss": 1.5, "val_loss": 1e308, "train_loss": 1.5, "gap": 1e308},
        {"step": 5, "epoch": 0, "loss": 1.2, "val_loss": 1.3, "train_loss": 1.2, "gap": 0.1},
        {"step": 6, "epoch": True, "loss": True},
    ]
    (odd / "training_metrics.jsonl").write_bytes(b"\n".join(orjson.dumps(r) for r in records) + b"\n")
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "training_metrics.json").write_text(
        '[{"step": 1, "loss": 3.0}, {"step": 2, "loss": NaN}, {"step": 3, "loss": 2.0, "val_loss": 2.5}]'
    )
    for folder in (odd, seed):
        for command in (["tail", "--no-follow"], ["gap"], ["check"], ["status"], ["compare", str(folder)]):
            result = invoke(ws, command[0], str(folder), *command[1:])
            assert result.exit_code in (0, 1) and "Traceback" not in result.output, (command, result.output)
            assert max(map(len, result.output.splitlines() or [""])) < 300, (command, result.output)
    assert "2.5000" in invoke(ws, "gap", str(seed)).output  # NaN dropped, not the whole history


@pytest.mark.parametrize(
    "success, said",
    [({"gap_mx": 0.1}, "'gap_mx' (quis dizer 'gap_max'?)"), ({"gap_max": "x"}, "success.gap_max"), ([1], "objeto")],
)
def test_a_hand_edited_success_is_one_line_never_a_green_check(ws, tmp_path, success, said):
    """An unknown key printed no criterion and passed (exit 0): a typo turned the check green."""
    run = ws.root / "checkpoints_qlora" / "r"
    run.mkdir(parents=True)
    (run / "spec.json").write_bytes(orjson.dumps(spec(name="r", success=success)))
    (run / "training_metrics.jsonl").write_bytes(orjson.dumps({"step": 1, "epoch": 0, "loss": 2.0}) + b"\n")
    for command in (["check", "r"], ["compare", "r", "r"]):
        assert said in refused(ws, *command, code=2)


@pytest.mark.parametrize(
    "option",
    [
        ["--poll", "-1"],
        ["--poll", "nan"],
        ["--poll", "0"],
        ["--rescan", "nan"],
        ["--stop-timeout", "-1"],
        ["--stop-timeout", "nan"],
    ],
)
def test_farenseds_own_numbers_are_bounded_one_line_each(ws, option):
    """--poll -1 or nan crashed in select(); --poll 0 --rescan 0 spun a core; negative or NaN timeouts passed."""
    from farensed.queue.main import cli as farensed_cli

    result = CliRunner().invoke(farensed_cli, ["--home", str(ws.root), *option], prog_name="farensed")
    assert result.exit_code == 2 and option[0] in one_short_line(result.output)


def test_an_empty_reference_or_a_run_folder_that_loops_is_one_line(ws):
    tomorrow = (dt.datetime.now() + dt.timedelta(days=1)).isoformat(timespec="seconds")
    drop(ws.jobs / "pending", "a.json", orjson.dumps(spec(name="a", not_before=tomorrow)))
    [job] = Queue(ws).ingest_inbox()
    (ws.root / "loop").symlink_to(ws.root / "loop")
    Queue(ws).update(job.id, run_dir="loop/x")  # job.json edited by hand
    assert "ciclo" in refused(ws, "status", str(job.id), code=1)
    assert refused(ws, "status", "", code=4).startswith("Erro: '' não é")  # it named checkpoints_qlora/ itself


@pytest.mark.parametrize(
    "name, value",
    [
        ("FARENSE_PSI_FULL_STOP", "nan"),
        ("FARENSE_PSI_SOME_STOP", "nan"),
        ("FARENSE_MIN_AVAILABLE_MB", "nan"),
        ("FARENSE_MIN_AVAILABLE_MB", "-5"),
        ("FARENSE_BATTERY_MIN", "nan"),
        ("FARENSE_BATTERY_MIN", "1e400"),
        ("FARENSE_RECOVERY_BACKOFF", "1,,2"),
        ("FARENSE_RECOVERY_BACKOFF", "9" * 5000),
    ],
)
def test_farenseds_settings_from_the_environment_are_bounded_one_short_line_each(ws, monkeypatch, name, value):
    """NaN and negative values were taken (the memory guard then never fired, or always did)."""
    from farensed.queue.main import cli as farensed_cli

    monkeypatch.setenv(name, value)
    result = CliRunner().invoke(farensed_cli, ["--home", str(ws.root)], prog_name="farensed")
    assert result.exit_code == 2 and len(one_short_line(result.output)) < 300, result.output


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "1e400", "-1"])
def test_a_hostile_disk_margin_is_one_line(monkeypatch, value):
    from farensed.engine.startup import disk_needed
    from farensed.errors import SpecError

    monkeypatch.setenv("FARENSE_DISK_MARGIN_MB", value)
    with pytest.raises(SpecError, match="^FARENSE_DISK_MARGIN_MB="):
        disk_needed(1000, 3)


def test_logs_prints_any_log_line_by_line_cut_and_harmless(ws):
    """A 150 MB line was read whole and printed whole; a job's name reached check's heading raw."""
    tomorrow = (dt.datetime.now() + dt.timedelta(days=1)).isoformat(timespec="seconds")
    drop(ws.jobs / "pending", "a.json", orjson.dumps(spec(name="a", not_before=tomorrow)))
    [job] = Queue(ws).ingest_inbox()
    log = b"start\n" + b"x" * 3_000_000 + b"\n" + OSC_TITLE.encode() + b"\xff end\n"
    Queue(ws).log_path(job.id).write_bytes(log)
    for args in (["logs", "1"], ["logs", "1", "-n", "5"]):
        result = invoke(ws, *args)
        assert result.exit_code == 0 and "\x1b]" not in result.output
        assert max(map(len, result.output.splitlines())) < 4100 and "(+2996000 bytes)" in result.output, args
    Queue(ws).update(job.id, name=OSC_TITLE)  # job.json edited by hand
    assert "\x1b]" not in invoke(ws, "check", "1").output
    assert invoke(ws, "report", "-o", str(ws.root / "r.html")).exit_code == 0
    assert "\x1b" not in (ws.root / "r.html").read_text()  # a terminal that cats the report acts on none


KILLED_MID_REJECTION = """
import os, signal, sys
from pathlib import Path
from farensed.queue.jobs import Queue
from farensed.storage.workspace import Workspace
queue = Queue(Workspace(Path(sys.argv[1])))
queue.ingest(queue.inbox / sys.argv[2], on_reject=lambda *_: os.kill(os.getpid(), signal.SIGKILL))
"""


def test_a_daemon_killed_while_refusing_a_file_leaves_it_to_the_next_one_refused_logged_and_no_temp(ws):
    """CI once caught a kill -9 between the move into jobs/failed/ and the reason: a file without reason, no line."""
    pending, failed = ws.jobs / "pending", ws.jobs / "failed"
    drop(pending, "empty.json", "")
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_REJECTION, str(ws.root), "empty.json"], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert (pending / "empty.json").exists() and (failed / "empty.json.reason.txt").exists()  # said, not moved
    gone = subprocess.Popen(["true"])  # its pid: a writer killed inside an atomic write
    gone.wait()
    for temp in (f"pending/.submit-v2.json.tmp-{gone.pid}", f"failed/.x.json.reason.txt.tmp-{gone.pid}"):
        (ws.jobs / temp).write_bytes(b"half")
    (pending / f".notes.tmp-{gone.pid}").write_bytes(b"the user's")  # a hidden file of theirs: left alone
    logged = run_daemon(ws)
    assert [p.name for p in pending.iterdir()] == [f".notes.tmp-{gone.pid}"]
    assert sorted(p.name for p in failed.iterdir()) == ["empty.json", "empty.json.reason.txt"]  # the same name
    assert (failed / "empty.json.reason.txt").read_text().count("\n") == 1
    assert sum("jobs/pending/empty.json recusado" in line for line in logged) == 1


def test_a_file_refused_under_a_name_already_in_jobs_failed_is_kept_beside_it(ws):
    pending, failed = ws.jobs / "pending", ws.jobs / "failed"
    for content in ("{", "[", "{"):
        drop(pending, "v2.json", content)
        Queue(ws).ingest_inbox()
    names = sorted(p.name for p in failed.iterdir())
    assert names == sorted(f"{n}{s}" for n in ("v2.json", "v2.1.json", "v2.2.json") for s in ("", ".reason.txt"))
    assert [(failed / n).read_text() for n in ("v2.json", "v2.1.json", "v2.2.json")] == ["{", "[", "{"]


KILLED_MID_INGEST = """
import os, signal, sys
from pathlib import Path
from farensed.queue.jobs import Queue
from farensed.storage.workspace import Workspace
write_job = Queue._write_job

def dying(self, job, data):
    if sys.argv[3] == "after":
        write_job(self, job, data)
    os.kill(os.getpid(), signal.SIGKILL)

Queue._write_job = dying
queue = Queue(Workspace(Path(sys.argv[1])))
queue.ingest(queue.inbox / sys.argv[2])
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_daemon_killed_while_making_a_job_of_a_file_leaves_one_job_never_two_nor_none(ws, when):
    """The file is reserved before its job is written and moved into it after: a kill between leaves it reserved."""
    pending = ws.jobs / "pending"
    tomorrow = (dt.datetime.now() + dt.timedelta(days=1)).isoformat(timespec="seconds")  # queued, never started
    data = orjson.dumps(spec(name="v2", not_before=tomorrow))
    drop(pending, "v2.json", data)
    killed = subprocess.run([sys.executable, "-c", KILLED_MID_INGEST, str(ws.root), "v2.json", when], check=False)
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in pending.iterdir()] == [".reserved-1-v2.json"]
    assert Queue(ws).ids() == ([1] if when == "after" else [])
    drop(pending, "other.json", orjson.dumps(spec(name="other", not_before=tomorrow)))
    queue = Queue(ws)
    assert queue.ingest(pending / "other.json").id == 2  # a reserved id is never given to another file
    queue.ingest_inbox()  # the reservation settled first: into job 1, or back into the inbox and taken now
    jobs = queue.jobs()
    assert sorted(j.name for j in jobs) == ["other", "v2"] and not list(pending.iterdir())
    v2 = next(j for j in jobs if j.name == "v2")
    assert (queue.job_dir(v2.id) / "submitted.json").read_bytes() == data and v2.source == "v2.json"
    assert v2.id == (1 if when == "after" else 3)


def test_a_hand_made_reservation_for_a_job_that_has_its_file_goes_back_to_the_inbox(ws):
    pending = ws.jobs / "pending"
    tomorrow = (dt.datetime.now() + dt.timedelta(days=1)).isoformat(timespec="seconds")
    drop(pending, "v2.json", orjson.dumps(spec(name="v2", not_before=tomorrow)))
    queue = Queue(ws)
    [first] = queue.ingest_inbox()
    before = sorted(p.name for p in queue.job_dir(first.id).iterdir())
    drop(pending, f".reserved-{first.id}-mine.json", orjson.dumps(spec(name="mine", not_before=tomorrow)))
    assert [j.name for j in queue.ingest_inbox()] == ["mine"]  # a file of the user's, not job 1's
    assert sorted(p.name for p in queue.job_dir(first.id).iterdir()) == before and not list(pending.iterdir())


KILLED_AT_POINT = """
import os, signal, sys
from pathlib import Path
from farensed.queue.jobs import Queue
from farensed.storage.workspace import Workspace
queue = Queue(Workspace(Path(sys.argv[1])))
kill_at, calls = int(sys.argv[2]), [0]

def point(call):
    def counted(*args, **kwargs):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return call(*args, **kwargs)
    return counted

for name in ("replace", "rename", "fsync", "mkdir", "unlink", "link"):
    setattr(os, name, point(getattr(os, name)))
said = point(lambda name, reason, exc: print("rejected", name, flush=True))  # the daemon's log line is a point too
queue.ingest_inbox(on_reject=said)
print("points", calls[0])
"""


def restart(ws: Workspace) -> list[str]:
    """What a new farensed does first: recover (sweeping dead writers' temps), then read the inbox; its log lines."""
    with captured(f"restart-{id(ws)}") as (logger, lines):
        daemon = Daemon(ws, log=logger)
        daemon.recover()
        daemon._ingest()
    return lines


def test_a_kill_at_every_point_of_an_ingest_leaves_each_file_one_job_or_refused_once_and_nothing_else(tmp_path):
    """Crash points enumerated: the ingest of a good file and a poison file is killed (SIGKILL) before each rename,
    fsync, mkdir, unlink and log line in turn; a new daemon then must leave exactly what an unkilled one leaves."""
    from tests.hostile import fake_workspace

    tomorrow = (dt.datetime.now() + dt.timedelta(days=1)).isoformat(timespec="seconds")
    good, poison = orjson.dumps(spec(name="good", not_before=tomorrow)), b"{"

    def fresh(k: int) -> tuple[Workspace, subprocess.CompletedProcess]:
        root = tmp_path / f"k{k}"
        fake_workspace(root)
        Queue(Workspace(root))
        drop(root / "jobs" / "pending", "good.json", good)
        drop(root / "jobs" / "pending", "bad.json", poison)
        cmd = [sys.executable, "-c", KILLED_AT_POINT, str(root), str(k)]
        return Workspace(root), subprocess.run(cmd, capture_output=True, text=True, env=child_env(), check=False)

    _, whole = fresh(0)
    points = int(whole.stdout.split("points ")[1])
    assert points >= 15, whole.stdout  # reservation, job folder, submitted.json; reason, log, move; their fsyncs
    for k in range(1, points + 1):
        ws, killed = fresh(k)
        assert killed.returncode == -signal.SIGKILL, (k, killed.stderr[-500:])
        logged = restart(ws)
        [job] = Queue(ws).jobs()
        assert (job.name, job.source) == ("good", "good.json"), k
        assert (Queue(ws).job_dir(job.id) / "submitted.json").read_bytes() == good, k
        failed = ws.jobs / "failed"
        assert sorted(p.name for p in failed.iterdir()) == ["bad.json", "bad.json.reason.txt"], k
        assert (failed / "bad.json").read_bytes() == poison, k
        said = killed.stdout.count("rejected bad.json") + sum("jobs/pending/bad.json recusado" in x for x in logged)
        assert said in (1, 2), k  # said before the move: a kill between says it again, never not at all
        everything = [p.relative_to(ws.jobs).as_posix() for p in ws.jobs.rglob("*")]
        assert not [p for p in everything if ".tmp-" in p or ".reserved-" in p or p.startswith("pending/")], k


# ---- the loop never dies of one tick ---------------------------------------------------------------------------
class Flaky(Daemon):
    """A daemon whose memory check fails three times and whose start of job `bad` raises: what a bug would do."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.mishaps.first_pause = 0.01  # the real schedule doubles from 1 s; the test need not wait for it
        self.failures_left = 3

    def guard_memory(self):
        if self.failures_left:
            self.failures_left -= 1
            raise RuntimeError("boom")
        return super().guard_memory()

    def start(self, job):
        if job.name == "bad":
            self.queue.claim(job.id)  # half-started, then a bug
            raise KeyError("the start of bad")
        return super().start(job)


def test_an_exception_in_a_tick_is_logged_once_its_job_set_aside_and_the_loop_goes_on(ws):
    q = Queue(ws)
    bad = q.submit(write(ws.root, "bad.json", orjson.dumps(spec(name="bad", priority=9))))
    tomorrow = (dt.datetime.now() + dt.timedelta(days=1)).isoformat(timespec="seconds")
    later = q.submit(write(ws.root, "later.json", orjson.dumps(spec(name="later", not_before=tomorrow))))
    logger = logging.getLogger("flaky")
    logger.setLevel(logging.INFO)
    handler = Lines()
    logger.addHandler(handler)
    try:
        assert Flaky(ws, log=logger, poll_interval=0.01).work(burst=True) == 0  # it returned: never died
    finally:
        logger.removeHandler(handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    text = "\n".join(handler.lines)
    assert text.count("RuntimeError: boom") == 2 and text.count("Traceback") == 2  # once for boom, once for bad
    failed = q.get(bad.id)
    assert failed.state == "failed" and "erro interno do farensed: KeyError" in failed.error
    assert f"farensectl retry {bad.id}" in failed.error and q.get(later.id).state == "pending"


def test_a_repeated_error_is_counted_not_logged_again_and_slows_the_loop():
    from farensed.queue.mishaps import MAX_PAUSE_S, Mishaps

    logger = logging.getLogger("mishaps")
    logger.setLevel(logging.INFO)
    handler = Lines()
    logger.addHandler(handler)
    mishaps = Mishaps(logger)
    pauses = []
    for _ in range(1000):
        try:
            raise ValueError("the same")
        except ValueError as exc:
            mishaps.record(exc, "ciclo")
        pauses.append(mishaps.pause())
    logger.removeHandler(handler)
    assert len(handler.lines) == 4  # the first with its traceback, then at the 10th, 100th and 1000th time
    assert "Traceback" in handler.lines[0] and "(1000 vezes)" in handler.lines[-1]
    assert pauses[:4] == [1.0, 2.0, 4.0, 8.0] and max(pauses) == MAX_PAUSE_S
    mishaps.clean_tick()
    assert mishaps.pause() == 0.0


# ---- 2. tiny files blew up memory and disk ---------------------------------------------------------------------
def test_an_alias_bomb_is_refused_before_it_expands(ws):
    from farensed.errors import SpecError
    from farensed.spec.load import read_spec_file

    path = write(ws.root, "bomb.yaml", ALIAS_BOMB)
    tracemalloc.start()
    with pytest.raises(SpecError, match="mais de 20 aliases"):
        read_spec_file(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5 * 2**20  # it was 1.2 GB


@pytest.mark.parametrize("size", [60_000, 2_000_000])
def test_a_huge_value_is_one_short_line(ws, size):
    path = write(ws.root, "big.json", orjson.dumps(spec(epochs="x" * size)))
    line = refused(ws, "submit", str(path))
    assert ("64 KB" in line) if size > 64 * 1024 else ("epochs" in line and "xxx…" in line)


# ---- 3. morning reports piled up --------------------------------------------------------------------------------
def test_one_report_at_a_time_covering_the_jobs_since_the_last(ws):
    from farensed.queue.reporter import REPORT_FILE, start_report
    from farensed.storage.atomic import atomic_write_json
    from farensed.storage.procs import create_time

    busy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        atomic_write_json(
            ws.jobs / REPORT_FILE, {"pid": busy.pid, "create_time": create_time(busy.pid), "started_at": "x"}
        )
        said = []
        assert start_report(ws, said.append) is None and f"pid {busy.pid}" in said[0]
    finally:
        busy.kill()
        busy.wait()
    previous = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    atomic_write_json(ws.jobs / REPORT_FILE, {"pid": busy.pid, "create_time": 1.0, "started_at": previous})
    proc = start_report(ws, print)
    assert proc.wait(timeout=120) == 0
    assert proc.args[-2:] == ["--since", previous] and "--time-limit" in proc.args
    assert orjson.loads((ws.jobs / REPORT_FILE).read_bytes())["pid"] == proc.pid


# ---- 4. a year-9999 not_before broke list for everyone -----------------------------------------------------------
def test_readers_survive_any_job_json(ws):
    q = Queue(ws)
    submitted = q.submit(write(ws.root, "ok.json", orjson.dumps(spec(name="ok"))))
    path = q.job_dir(submitted.id) / "job.json"
    record = orjson.loads(path.read_bytes())
    for damage in (
        {"not_before": "9999-12-31T23:59:59+00:00"},
        {"not_before": "0001-01-01T00:00:00"},
        {"started_at": "2020-01-01T00:00:00", "ended_at": "2020-01-01T01:00:00+05:00"},
        {"state": "running", "pid": 1, "pid_create_time": None},
        {"attempts": 10**30},
        {"pid": -5},
        {"held": ["x"]},
        {"name": OSC_TITLE},
        {"after": [10**12]},
    ):
        path.write_text(json.dumps({**record, **damage}))  # the standard library writes any integer
        for args in (["list"], ["list", "--json"], ["status", str(submitted.id)], ["status", "--json"]):
            result = invoke(ws, *args)
            assert result.exit_code == 0, (damage, args, result.output)
            assert "\x1b" not in result.output and "Traceback" not in result.output
        for kept in q.job_dir(submitted.id).glob("job.json.unreadable-*"):
            kept.unlink()
        path.write_bytes(orjson.dumps(record))


def test_a_far_future_not_before_is_refused_with_its_bound(ws):
    path = write(ws.root, "later.json", orjson.dumps(spec(not_before="2999-01-01T00:00")))
    assert "a mais de 3 anos no futuro" in refused(ws, "submit", str(path))
    good = write(ws.root, "good.json", orjson.dumps(spec()))
    assert "a mais de 3 anos" in refused(ws, "submit", str(good), "--not-before", "9999-12-31T23:59")


# ---- 5. terminal escapes reached the terminal ---------------------------------------------------------------------
def test_escape_sequences_from_files_never_reach_the_terminal(ws):
    for changes, shown in (({"name": OSC_CLIPBOARD}, "\\e]52;c;"), ({"optimizer": OSC_TITLE}, "\\e]0;pwned\\x07")):
        assert shown in refused(ws, "submit", str(write(ws.root, "esc.json", orjson.dumps(spec(**changes)))))
    q = Queue(ws)
    job = q.submit(write(ws.root, "ok.json", orjson.dumps(spec(name="ok"))))
    q.update(job.id, state="failed", error=f"Error: {OSC_TITLE}boom", loss_reason=OSC_CLIPBOARD)
    q.log_path(job.id).write_bytes(f"\x1b[32mverde\x1b[0m {OSC_CLIPBOARD}{OSC_TITLE}\x1b[2J fim\n".encode())
    status = invoke(ws, "status", str(job.id))
    assert status.exit_code == 0 and "\x1b" not in status.output and "\\e]0;pwned" in status.output
    logs = invoke(ws, "logs", str(job.id)).output  # not a terminal: click drops the colours too
    assert logs == "verde  fim\n" and "pwned" not in logs
    log_text = q.log_path(job.id).read_text()
    assert terminal_text(log_text) == "\x1b[32mverde\x1b[0m  fim\n"  # on a terminal: colours kept, the rest dropped


def test_doctor_shows_a_hostile_spec_path_escaped(ws):
    from farensed.doctor import format_check, run_checks

    path = write(ws.root, f"a{OSC_TITLE}.json", orjson.dumps(spec(epochs=0)))
    lines = [format_check(c) for c in run_checks(ws, path, probe={})]
    assert all("\x1b" not in line and "\n" not in line for line in lines)
    assert any("epochs = 0 fora do intervalo" in line for line in lines)


# ---- 7. names match whole; the sweep stays inside the workspace ---------------------------------------------------
def test_a_name_with_a_trailing_newline_is_refused(ws):
    assert "name 'abc\\n'" in refused(ws, "submit", str(write(ws.root, "nl.json", orjson.dumps(spec(name="abc\n")))))


def test_the_run_lock_sweep_never_follows_a_symlinked_run_folder(ws, tmp_path):
    from farensed.storage.runlock import hold_run

    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / ".precious.tmp-999999"  # looks like a dead writer's temp file
    victim.write_text("keep me")
    (outside / ".folder.tmp-999999").mkdir()
    run_dir = ws.run_dir("linked")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    run_dir.symlink_to(outside, target_is_directory=True)
    with hold_run(run_dir, within=ws.root):
        pass
    assert victim.read_text() == "keep me" and (outside / ".folder.tmp-999999").is_dir()


# ---- 8. what passed submit and doctor but failed or hung at run time ----------------------------------------------
def _model_case(ws: Workspace, case: str) -> dict:
    model = ws.root / "models" / "m"
    if case == "fifo-config":
        (model / "config.json").unlink()
        os.mkfifo(model / "config.json")
    elif case == "fifo-tokenizer-config":
        (model / "tokenizer_config.json").unlink()
        os.mkfifo(model / "tokenizer_config.json")
    elif case == "folder-named-with-bracket":
        fake_model(ws.root / "models" / "m[1]")
        return spec(model="models/m[1]")
    elif case == "truncated-safetensors":
        data = (model / "model.safetensors").read_bytes()
        (model / "model.safetensors").write_bytes(data[: len(data) - 10])
    elif case == "huge-header-length":
        (model / "model.safetensors").write_bytes((2**62).to_bytes(8, "little") + b"{}")
    elif case == "unknown-model-type":
        (model / "config.json").write_bytes(orjson.dumps({"model_type": "nosuchmodel"}))
    elif case == "messages-without-chat-template":
        fake_workspace(ws.root, messages=True)
        (model / "chat_template.jinja").unlink()
    elif case == "completion-without-chat-template":  # mlx-lm lays prompt/completion out with the template too
        (model / "chat_template.jinja").unlink()
        line = orjson.dumps({"prompt": "olá", "completion": "Faro"}) + b"\n"
        for name in ("train", "valid"):
            (ws.root / "data" / f"{name}.jsonl").write_bytes(line * 2)
    elif case == "pack-on-an-unsupported-architecture":  # packing keeps examples apart on llama models only
        (model / "config.json").write_bytes(orjson.dumps({"model_type": "qwen2", "num_hidden_layers": 2}))
        return spec(pack=True)
    elif case == "weights-not-named-model":
        (model / "model.safetensors").rename(model / "weights.safetensors")
    elif case == "fifo-data":
        (ws.root / "data" / "train.jsonl").unlink()
        os.mkfifo(ws.root / "data" / "train.jsonl")
    elif case == "folder-as-data":
        (ws.root / "data" / "train.jsonl").unlink()
        (ws.root / "data" / "train.jsonl").mkdir()
    elif case == "device-as-data":
        return spec(data={"train": "/dev/zero", "valid": "data/valid.jsonl"})
    return spec()


MODEL_CASES = {
    "fifo-config": "é um FIFO",
    "fifo-tokenizer-config": "tokenizer_config.json é um FIFO",
    "folder-named-with-bracket": "tem '[': o mlx-lm procura os pesos com glob",
    "truncated-safetensors": "não é um safetensors válido",
    "huge-header-length": "não é um safetensors válido",
    "unknown-model-type": "model_type 'nosuchmodel' não é suportado pelo mlx-lm instalado",
    "messages-without-chat-template": "tem exemplos 'messages', que o mlx-lm formata com o chat template",
    "completion-without-chat-template": "tem exemplos 'prompt/completion', que o mlx-lm formata com o chat template",
    "pack-on-an-unsupported-architecture": "pack: a arquitetura 'qwen2' não é suportada (só llama, mistral)",
    "weights-not-named-model": "não tem pesos (model*.safetensors",
    "fifo-data": "data.train: ",  # then the path and "é um FIFO, não um ficheiro"
    "folder-as-data": "é uma pasta, não um ficheiro",
    "device-as-data": "é um dispositivo de caracteres",
}


@pytest.mark.parametrize("case", sorted(MODEL_CASES))
def test_submit_checks_what_run_reads(ws, case):
    path = write(ws.root, "job.json", orjson.dumps(_model_case(ws, case)))
    if "fifo" not in case:
        for command in ("submit", "run"):
            assert MODEL_CASES[case] in refused(ws, command, str(path))
        return
    before = snapshot(ws.root)
    proc = cli_subprocess(ws.root, "submit", str(path))  # a FIFO read would hang: its own process, a timeout
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_short_line(proc.stdout + proc.stderr)
    assert MODEL_CASES[case] in line and "é um FIFO, não um ficheiro" in line
    assert snapshot(ws.root) == before


def test_the_checks_accept_the_synthetic_model_they_refuse_broken(ws):
    job = Queue(ws).submit(write(ws.root, "ok.json", orjson.dumps(spec())))
    assert job.state == "pending"


def test_doctor_never_blocks_on_a_fifo(ws):
    _model_case(ws, "fifo-tokenizer-config")
    _model_case(ws, "fifo-data")
    path = write(ws.root, "job.json", orjson.dumps(spec()))
    code = (
        "from pathlib import Path\nfrom farensed.doctor import run_checks, format_check\n"
        "from farensed.storage.workspace import Workspace\n"
        f"for c in run_checks(Workspace(Path({str(ws.root)!r})), Path({str(path)!r}), probe={{}}):\n"
        "    print(format_check(c))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "FIFO" in proc.stdout and "❌" in proc.stdout


# ---- 9. tracebacks instead of one line -------------------------------------------------------------------------
def test_duplicate_json_keys_name_the_key(ws):
    path = write(ws.root, "dup.json", '{"name": "a", "model": "models/m", "model": "x", "data": {}}')
    assert "a chave 'model' aparece mais de uma vez" in refused(ws, "submit", str(path))


def test_a_read_only_queue_is_read_and_refuses_writes_in_one_line(ws):
    (ws.jobs).chmod(0o500)
    try:
        assert invoke(ws, "list").exit_code == 0
        assert stat.S_IMODE(ws.jobs.stat().st_mode) == 0o500  # opening the queue no longer chmods it back
        if os.geteuid() != 0:  # root writes anyway
            line = refused(ws, "submit", str(write(ws.root, "ok.json", orjson.dumps(spec()))), code=4)
            assert "não foi possível escrever na fila" in line
    finally:
        ws.jobs.chmod(0o700)


# ---- 10. private by default --------------------------------------------------------------------------------------
def test_what_the_cli_and_the_daemon_write_is_private(ws):
    proc = cli_subprocess(ws.root, "report", env={"FARENSE_HOME": str(ws.root)})
    assert proc.returncode == 0, proc.stderr
    report = ws.root / proc.stdout.strip()
    assert stat.S_IMODE(report.stat().st_mode) == 0o600 and stat.S_IMODE(report.parent.stat().st_mode) == 0o700
    burst = subprocess.run(
        [sys.executable, "-m", "farensed.queue.main", "--home", str(ws.root), "--burst", "--poll", "0.05"],
        capture_output=True,
        timeout=120,
    )
    assert burst.returncode == 0
    assert stat.S_IMODE((ws.jobs / "overnight.json").stat().st_mode) == 0o600


# ---- 11. status and list tell the truth --------------------------------------------------------------------------
def test_a_running_job_whose_daemon_and_child_are_gone_reads_as_such(ws):
    q = Queue(ws)
    job = q.submit(write(ws.root, "ok.json", orjson.dumps(spec())))
    q.update(job.id, state="running", pid=999_999_999, pid_create_time=1.0)
    status = invoke(ws, "status", str(job.id))
    assert "999999999 (terminou)" in status.output
    assert "farensed não está a correr: o job retoma quando ele arrancar" in status.output
    info = orjson.loads(invoke(ws, "status", str(job.id), "--json").stdout)
    assert info["pid_alive"] is False and info["daemon_running"] is False
    listed = invoke(ws, "list")
    assert "o job retoma quando ele arrancar" in listed.output and "a fila não avança" in listed.output
    assert invoke(ws, "daemon", "status").exit_code == 3  # LSB: not running
    assert invoke(ws, "daemon", "status", "--json").exit_code == 3


def test_daemon_start_reports_a_daemon_that_dies_at_start_up(ws):
    proc = cli_subprocess(ws.root, "daemon", "start", env={"FARENSE_WINDOW": "25:99-xx"}, timeout=120)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    line = one_short_line(proc.stderr)
    assert "terminou ao arrancar" in line and "--window" in line
