"""Overnight on the real tiny model and a real daemon: training windows, queue pause, power, the drained report."""

from __future__ import annotations

import base64
import datetime as dt
import re
import shutil
import signal
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import orjson
from click.testing import CliRunner

from farensed.cli.main import cli
from farensed.queue.jobs import Queue
from farensed.spec.window import format_clock
from farensed.storage.atomic import atomic_write_json
from farensed.storage.workspace import Workspace
from tests.helpers import (
    TEST_SPEC,
    assert_same_adapters,
    child_env,
    deterministic_metrics,
    metric_lines,
    spec_with,
    wait_for,
    write_spec,
)


def start_daemon(root: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """A farensed in the background, returned once it watches the queue (its signal handlers are set)."""
    log = root / "daemon-test.log"
    before = log.read_text().count("a vigiar") if log.exists() else 0
    proc = subprocess.Popen(
        [sys.executable, "-m", "farensed.queue.main", "--home", str(root), "--poll", "0.1", "--rescan", "1", *args],
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        env={**child_env(), **(env or {})},
    )
    wait_for(lambda: log.read_text().count("a vigiar") > before, timeout=60, proc=proc)
    return proc


def stop_daemon(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0


def queue(root: Path) -> Queue:
    return Queue(Workspace(root))


def submit(root: Path, spec: dict) -> int:
    return queue(root).submit(write_spec(root, spec, f"{spec['name']}.json")).id


def farensectl(root: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--home", str(root), *args])
    assert result.exit_code == 0, result.output
    return result.output


def checkpoint_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.name.rsplit("step", 1)[1]) for p in run_dir.glob("checkpoint_epoch*_step*"))


def assert_equals_reference(root: Path, reference: Path) -> None:
    assert_same_adapters(reference / "output/t/adapters.safetensors", root / "output/t/adapters.safetensors")
    assert deterministic_metrics(reference / "checkpoints_qlora/t") == deterministic_metrics(
        root / "checkpoints_qlora/t"
    )


def clock(when: dt.datetime) -> str:
    return when.strftime("%H:%M:%S")


def test_window_end_checkpoint_stops_shows_pause_and_resumes_exactly_at_next_window(workspace, reference_run):
    daemon = start_daemon(workspace)
    try:
        now = dt.datetime.now().astimezone().replace(microsecond=0)
        job_id = submit(workspace, spec_with(window=f"{clock(now)}-{clock(now + dt.timedelta(hours=1))}"))
        run_dir = workspace / "checkpoints_qlora/t"
        wait_for(lambda: metric_lines(run_dir) >= 2, timeout=120)  # training, however long a loaded machine took
        # the window closes now, in the job's own spec (the daemon reads it at every tick: a hand edit counts)
        now = dt.datetime.now().astimezone().replace(microsecond=0)
        closes, reopens = now + dt.timedelta(seconds=2), now + dt.timedelta(seconds=17)
        later = reopens + dt.timedelta(hours=1)
        window = f"{clock(now - dt.timedelta(seconds=2))}-{clock(closes)},{clock(reopens)}-{clock(later)}"
        spec_file = queue(workspace).job_dir(job_id) / "spec.json"
        atomic_write_json(spec_file, {**orjson.loads(spec_file.read_bytes()), "window": window})
        wait_for(lambda: queue(workspace).get(job_id).state == "pending", timeout=60)
        assert dt.datetime.now().astimezone() < reopens, "the stop took longer than the pause"
        job = queue(workspace).get(job_id)
        assert (job.attempts, job.recoveries, job.exit_code) == (1, 0, 75)
        state = orjson.loads((run_dir / "training_state.json").read_bytes())
        assert 0 < state["step"] < 80 and checkpoint_steps(run_dir)[-1] == state["step"]
        pause = f"em pausa até {format_clock(reopens)}"  # HH:MM, with seconds only when not :00
        assert pause in farensectl(workspace, "list")
        assert pause in farensectl(workspace, "status", str(job_id))
        wait_for(lambda: queue(workspace).get(job_id).state == "done", timeout=300)
    finally:
        stop_daemon(daemon)
    job = queue(workspace).get(job_id)
    assert (job.attempts, job.recoveries) == (1, 0)  # a window pause is neither an attempt nor a recovery
    restarted = dt.datetime.fromisoformat(job.started_at)
    assert reopens <= restarted < later  # not before its window opened again, and inside it
    log = (workspace / "jobs" / str(job_id) / "log").read_text()
    assert "janela fechada" in log and re.search(rf"A retomar de checkpoint_epoch\d+_step{state['step']} ", log)
    assert_equals_reference(workspace, reference_run)


def test_queue_pause_survives_a_daemon_restart_resume_continues_exactly_and_drained_queue_reports(
    workspace, reference_run
):
    job_id = submit(workspace, TEST_SPEC)
    run_dir = workspace / "checkpoints_qlora/t"
    daemon = start_daemon(workspace)
    try:
        wait_for(lambda: metric_lines(run_dir) >= 8, timeout=120)
        assert "fila em pausa" in farensectl(workspace, "pause")
        wait_for(lambda: queue(workspace).get(job_id).state == "pending", timeout=60)
        stop_daemon(daemon)
        settings = workspace / "jobs" / "overnight.json"
        before = settings.stat().st_mtime_ns
        daemon = start_daemon(workspace)  # the pause is a file in jobs/: a new daemon keeps it
        # its first tick writes its settings and, in the same tick, decides nothing may start while paused
        wait_for(lambda: settings.stat().st_mtime_ns != before, timeout=60)
        job = queue(workspace).get(job_id)
        assert (job.state, job.attempts, job.recoveries) == ("pending", 1, 0)
        assert "em pausa (fila em pausa" in farensectl(workspace, "list")
        assert "fila retomada" in farensectl(workspace, "resume")
        wait_for(lambda: queue(workspace).get(job_id).state == "done", timeout=300)
        wait_for(lambda: list((workspace / "reports").glob("farense-*.html")), timeout=120)
    finally:
        stop_daemon(daemon)
    job = queue(workspace).get(job_id)
    assert (job.attempts, job.recoveries) == (1, 0)
    assert "fila em pausa; a parar com checkpoint" in (workspace / "jobs" / str(job_id) / "log").read_text()
    assert_equals_reference(workspace, reference_run)
    report = next((workspace / "reports").glob("farense-*.html")).read_text()
    assert f'data-job="{job_id}"' in report and 'data-figure="curves-1"' in report


def test_low_battery_stops_at_a_checkpoint_and_mains_power_resumes_exactly(workspace, reference_run):
    battery = workspace / "battery.json"

    def reading(percent: int, plugged: bool) -> None:
        tmp = battery.with_suffix(".tmp")
        tmp.write_text(orjson.dumps({"percent": percent, "plugged": plugged}).decode())
        tmp.replace(battery)

    reading(80, False)  # on battery, enough charge: trains
    job_id = submit(workspace, TEST_SPEC)
    run_dir = workspace / "checkpoints_qlora/t"
    daemon = start_daemon(workspace, env={"FARENSE_BATTERY_FILE": str(battery)})
    try:
        wait_for(lambda: metric_lines(run_dir) >= 8, timeout=120)
        reading(25, False)
        wait_for(lambda: queue(workspace).get(job_id).state == "pending", timeout=60)
        assert "à espera de corrente" in farensectl(workspace, "status", str(job_id))
        # more charge alone does not end the wait (test_fast_overnight.py: test_power_decision); mains power does
        reading(40, True)
        wait_for(lambda: queue(workspace).get(job_id).state == "done", timeout=300)
    finally:
        stop_daemon(daemon)
    job = queue(workspace).get(job_id)
    assert (job.attempts, job.recoveries) == (1, 0)
    log = (workspace / "jobs" / str(job_id) / "log").read_text()
    assert "em bateria a 25% (mínimo 30%), à espera de corrente; a parar com checkpoint" in log
    assert_equals_reference(workspace, reference_run)


def test_queue_eta_from_measured_step_times_windows_and_unknowns(workspace, reference_run, fresh_copy):
    root = fresh_copy(reference_run, "eta")  # run "t" finished: its metrics give the step time
    now = dt.datetime.now().astimezone().replace(second=0, microsecond=0)
    opens = now + dt.timedelta(hours=2)
    night = f"{opens:%H:%M}-{opens + dt.timedelta(hours=1):%H:%M}"
    submit(root, spec_with(name="u", window=night))  # never ran: same model and length as "t"
    other = submit(root, spec_with(name="v", max_seq_length=64))  # no run of this length: unknown
    rows = {r["name"]: r for r in orjson.loads(farensectl(root, "list", "--json"))["jobs"]}
    assert rows["u"]["pause"] == f"em pausa até {format_clock(opens)}"
    assert rows["v"]["eta_start"] is not None and rows["v"]["eta_end"] is None  # starts now, runs for '?'
    assert rows["u"]["eta_start"] is None  # after a job of unknown length
    assert "fila termina às ?" in farensectl(root, "list")
    queue(root).cancel(other)
    rows = {r["name"]: r for r in orjson.loads(farensectl(root, "list", "--json"))["jobs"]}
    start, end = (dt.datetime.fromisoformat(rows["u"][k]) for k in ("eta_start", "eta_end"))
    per_step = orjson.loads((reference_run / "checkpoints_qlora/t/training_summary.json").read_bytes())["step_s_mean"]
    assert start == opens and abs((end - start).total_seconds() - 80 * per_step) < 1
    text = farensectl(root, "list")
    assert f"fila termina às {end:%H:%M}" in text and f"início previsto {opens:%H:%M}" in text


class HtmlCheck(HTMLParser):
    """Parses a document, checks that every element is closed in order, and collects tags and attributes."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "source"}

    def __init__(self):
        super().__init__()
        self.stack, self.tags, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"</{tag}> out of place")


def test_morning_report_every_job_every_figure_evaluation_comparison_valid_html(workspace, reference_run, fresh_copy):
    root = fresh_copy(reference_run, "morning")  # run "t" finished: its jobs end at once with its results
    began = (dt.datetime.now().astimezone() - dt.timedelta(minutes=1)).isoformat(timespec="seconds")
    first, second = submit(root, TEST_SPEC), submit(root, TEST_SPEC)
    cancelled = submit(root, spec_with(name="w"))
    queue(root).cancel(cancelled)
    burst = subprocess.run(
        [sys.executable, "-m", "farensed.queue.main", "--home", str(root), "--burst", "--poll", "0.1"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert burst.returncode == 0 and "fila terminada: a escrever o relatório" in burst.stdout, burst.stdout[-2000:]
    assert (
        "F1"
        in subprocess.run(
            [sys.executable, "-m", "farensed.cli.main", "--home", str(root), "eval", str(first)],
            capture_output=True,
            text=True,
            env=child_env(),
            timeout=300,
        ).stdout
    )
    spec_path = root / "jobs" / str(second) / "spec.json"  # a spec with success criteria (the `success` key)
    spec_path.write_bytes(orjson.dumps({**orjson.loads(spec_path.read_bytes()), "success": {"gap_max": 0.15}}))
    path = Path(farensectl(root, "report", "--since", began, "-o", "morning.html").strip())
    assert path == root / "morning.html"
    text = path.read_text()
    check = HtmlCheck()
    check.feed(text)
    check.close()
    assert not check.errors and not check.stack
    attrs = [a for _, a in check.tags]
    assert {"name": "viewport", "content": "width=device-width, initial-scale=1"} in attrs
    assert {a["data-job"] for a in attrs if "data-job" in a} == {str(first), str(second), str(cancelled)}
    images = [a["src"] for tag, a in check.tags if tag == "img"]
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert all(base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n" for src in images)
    figures = {a["data-figure"] for a in attrs if "data-figure" in a}
    assert figures == {f"curves-{first}", f"curves-{second}"}  # the cancelled job never trained
    assert not re.search(r"(src|href)=\"(https?:)?//", text)  # nothing fetched from the network
    evaluation = orjson.loads((root / "checkpoints_qlora/t/evaluation_report.json").read_bytes())
    assert f"{evaluation['adapters']['f1_mean']:.4f}" in text and f"{evaluation['base']['f1_mean']:.4f}" in text
    assert f'data-success="{second}"' in text and "gap_max" in text
    assert 'data-compare="models/tiny-mistral-4bit"' in text and "ANÁLISE FINAL DE OVERFITTING" in text
    assert "cancelado" in text and list((root / "reports").glob("farense-*.html"))  # the daemon's own report
    if shutil.which("chromium"):
        shot = root / "morning.png"
        subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--screenshot={shot}",
                "--window-size=412,1600",
                path.as_uri(),
            ],
            capture_output=True,
            timeout=120,
        )
        import matplotlib.image

        pixels = matplotlib.image.imread(shot)[..., :3]
        assert pixels.shape[1] == 412 and (pixels.min(axis=2) < 0.9).mean() > 0.02  # a phone-width page, not blank
