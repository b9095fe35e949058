"""A new user's first run: MLX's one-time kernel compile is said while it happens and kept out of the ETA."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace

import orjson
import pytest
from click.testing import CliRunner

from farensed.cli.main import cli
from farensed.engine.callbacks import ConsoleProgress
from farensed.engine.jit import CompileWatch, cpu_cache_dir
from farensed.storage.workspace import Workspace
from tests.helpers import wait_for

REPO = Path(__file__).resolve().parents[1]


def test_the_compile_is_said_only_when_kernels_appear(tmp_path, monkeypatch):
    monkeypatch.delenv("MLX_DISABLE_COMPILE", raising=False)
    folder = tmp_path / "mlx" / "cpu"
    folder.mkdir(parents=True)
    (folder / "old_kernel.cpp").write_text("")  # a warm cache: what is there already says nothing
    said = []
    watch = CompileWatch(folder, said.append, interval=0.05).start()
    time.sleep(0.15)  # three looks at the folder
    assert said == [] and not watch.fired
    (folder / "new_kernel.cpp").write_text("")
    (folder / "new_kernel.so").write_text("")
    wait_for(lambda: watch.fired, timeout=10)
    time.sleep(0.15)  # three more looks: said once, not once per look
    watch.stop()
    assert said == [folder]  # once
    quiet = CompileWatch(None, said.append).start()  # a GPU: no CPU kernel cache, nothing to say
    quiet.stop()
    assert not quiet.fired


def test_the_cpu_cache_is_under_the_temp_dir_mlx_uses(tmp_path, monkeypatch):
    import mlx.core as mx

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert cpu_cache_dir() in (None, tmp_path / "mlx" / mx.__version__ / "cpu")  # None on a GPU


def test_the_first_step_draws_no_rate_or_eta_measured_on_the_compile(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # an empty kernel cache that stays empty: nothing compiles here
    progress = ConsoleProgress()
    trainer = SimpleNamespace(
        spec=SimpleNamespace(name="t"), epochs_total=1, batches=SimpleNamespace(steps_per_epoch=40)
    )
    progress.on_train_begin(trainer, None)
    began = time.monotonic()
    progress.on_epoch_begin(0, 0)
    progress.bar.mininterval = 0  # as if the compile had taken longer than the bar's refresh interval
    time.sleep(0.3)  # the "compile"
    first = time.monotonic()
    progress.on_step_end(1, 0.3)
    drawn = [line for line in capsys.readouterr().out.split("\r") if "1/40" in line]
    assert drawn and all("<?, ?batch/s" in line for line in drawn), drawn  # every draw (a log keeps them all)
    time.sleep(0.02)
    progress.on_step_end(2, 0.02)
    second = time.monotonic()
    last = capsys.readouterr().out.split("\r")[-1]
    progress.on_train_end("completed")
    rate = re.search(r"2/40 \[[^,]*, ([\d.]+)batch/s\]", last)
    assert rate, last
    # the second step's pace, not the compile's; measured here, so a loaded machine's slow sleeps change nothing
    step_pace, with_compile = 1 / (second - first), 2 / (second - began)
    assert abs(float(rate.group(1)) - step_pace) < abs(float(rate.group(1)) - with_compile), last


def test_demo_prepare_writes_the_readme_days_examples_for_a_wheel_user(isolated_home):
    """jobs/examples/v1.json and v2.json (only in a checkout) are written where missing, equal to the checkout's;
    a file the user edited is never overwritten."""
    from farensed.demo.prepare import write_examples

    ws = Workspace(isolated_home)
    said = []
    assert [p.name for p in write_examples(ws, said.append)] == ["v1.json", "v2.json"] and len(said) == 1
    for name in ("v1.json", "v2.json"):
        assert orjson.loads((ws.root / "jobs/examples" / name).read_bytes()) == orjson.loads(
            (REPO / "jobs/examples" / name).read_bytes()
        )
    (ws.root / "jobs/examples/v1.json").write_text('{"name": "mine"}')
    assert write_examples(ws, said.append) == [] and len(said) == 1
    assert (ws.root / "jobs/examples/v1.json").read_text() == '{"name": "mine"}'


def test_daemon_install_without_a_service_manager_says_it_will_not_survive_a_reboot(isolated_home):
    """Where launchd/systemd cannot be used (a container, no user session), install starts a background daemon and
    says plainly that it will not come back after a reboot, and how to make it; status and doctor agree."""
    from click.testing import CliRunner

    from farensed.cli.main import cli
    from farensed.doctor.machine import check_service
    from farensed.queue import service

    if service.manager().kind != "process":
        pytest.skip("a service manager is usable here: install would really install it")
    runner = CliRunner()
    try:
        out = runner.invoke(cli, ["daemon", "install"])
        assert out.exit_code == 0, out.output
        assert "NÃO volta depois de reiniciar" in out.output
        cron = next(line for line in out.output.splitlines() if "@reboot" in line)
        assert f"--home {isolated_home}" in cron and "farensed.queue.main" in cron
        status = runner.invoke(cli, ["daemon", "status"])
        assert "instalado: não" in status.output and "não volta depois de reiniciar" in status.output
        assert "@reboot" in status.output
        check = check_service(Workspace(isolated_home))
        assert check.status == "warn" and "@reboot" in check.fix and check.fix != "farensectl daemon install"
        info = orjson.loads(runner.invoke(cli, ["daemon", "status", "--json"]).output)
        assert info["running"] and info["survives_reboot"] is False
    finally:
        runner.invoke(cli, ["daemon", "stop"])
    assert service.status(Workspace(isolated_home))["running"] is False


def test_reports_are_kept_to_a_bounded_number(isolated_home, monkeypatch):
    """One report is written at every drain of the queue: reports/ keeps the newest of those (FARENSE_KEEP_REPORTS);
    a report a person asked for (`farensectl report`, `--output`) is never touched."""
    import datetime as dt

    from farensed.queue.jobs import Queue
    from farensed.views.morning import AUTO_MARK, write_report

    reports = isolated_home / "reports"
    reports.mkdir()
    old = [reports / f"farense-202601{day:02d}-070000.html" for day in range(1, 8)]
    for path in old:
        path.write_text(f"<html><head>{AUTO_MARK}</head></html>")
    asked = reports / "farense-20251231-070000.html"  # written by `farensectl report`: no mark
    asked.write_text("<html><head></head></html>")
    (reports / "mine.html").write_text("mine")
    monkeypatch.setenv("FARENSE_KEEP_REPORTS", "3")
    q = Queue(Workspace(isolated_home))
    newest = write_report(q, dt.datetime.now().astimezone() - dt.timedelta(hours=24), auto=True)
    kept = sorted(p.name for p in reports.iterdir())
    assert kept == sorted([old[-2].name, old[-1].name, newest.name, asked.name, "mine.html"])
    by_hand = write_report(q, dt.datetime.now().astimezone())  # `farensectl report`: prunes nothing
    custom = write_report(q, dt.datetime.now().astimezone(), output=isolated_home / "reports" / "farense-x.html")
    assert by_hand.exists() and custom.exists() and len(list(reports.iterdir())) == 7


def test_wait_shows_one_live_line_on_a_terminal_and_nothing_in_a_script(isolated_home):
    """`wait` on a terminal redraws one line (state, step/total, loss, ETA); piped, it says nothing until the end."""
    import os
    import pty
    import subprocess

    from farensed.queue.job import Job, now_iso
    from farensed.queue.jobs import Queue
    from tests.helpers import child_env, cli_cmd

    q = Queue(Workspace(isolated_home))
    q.job_dir(1).mkdir()
    q.save(Job(id=1, name="t", state="running", attempts=1, started_at=now_iso()))
    run_dir = isolated_home / "checkpoints_qlora" / "t"
    run_dir.mkdir(parents=True)
    records = [{"step": s, "total_steps": 40, "epoch": 0, "loss": 2.0 / s, "elapsed_s": 0.5 * s} for s in (2, 4, 6)]
    (run_dir / "training_metrics.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    cmd = cli_cmd(isolated_home, "wait", "1", "--timeout", "0.5")
    piped = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
    main, child = pty.openpty()  # both waits run side by side
    proc = subprocess.Popen(cmd, stdin=child, stdout=child, stderr=child, env=child_env())
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(timeout=60) == 124
    os.close(main)
    stdout, _stderr = piped.communicate(timeout=60)
    assert piped.returncode == 124 and stdout == ""  # a script sees no progress line
    line = out.decode().split("\r")
    assert any("job 1 (t): a correr · step 6/40 · loss 0.3333 · ETA 0m17s" in part for part in line), out


@pytest.mark.parametrize("timeout", ["nan", "-5", "inf"])
def test_wait_refuses_a_timeout_that_is_no_number_of_seconds(isolated_home, timeout):
    result = CliRunner().invoke(cli, ["--home", str(isolated_home), "wait", "1", "--timeout", timeout])
    assert result.exit_code == 2 and "--timeout" in result.output and "segundos ≥ 0" in result.output


def test_wait_on_a_stopped_queue_says_so_once_and_waits(isolated_home):
    from farensed.queue.job import Job
    from farensed.queue.jobs import Queue

    q = Queue(Workspace(isolated_home))
    q.job_dir(1).mkdir()
    q.save(Job(id=1, name="t", state="pending"))
    result = CliRunner().invoke(cli, ["--home", str(isolated_home), "wait", "1", "--timeout", "0.2"])
    assert result.exit_code == 124
    assert result.stderr.count("farensed não está a correr: o job 1 só avança quando arrancar") == 1


def test_logs_of_a_job_that_never_started_says_there_is_none_yet(isolated_home):
    from farensed.queue.job import Job
    from farensed.queue.jobs import Queue

    q = Queue(Workspace(isolated_home))
    q.job_dir(1).mkdir()
    q.save(Job(id=1, name="t", state="cancelled"))
    result = CliRunner().invoke(cli, ["--home", str(isolated_home), "logs", "1"])
    assert result.exit_code == 0 and "job 1 (cancelado): ainda sem log" in result.stderr, result.output


def test_the_progress_bar_of_an_iters_run_ends_where_the_run_does(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    progress = ConsoleProgress()
    trainer = SimpleNamespace(
        spec=SimpleNamespace(name="t"), epochs_total=2, total_steps=44, batches=SimpleNamespace(steps_per_epoch=40)
    )
    progress.on_train_begin(trainer, None)
    progress.on_epoch_begin(0, 0)
    assert progress.bar.total == 40
    progress.bar.close()
    progress.on_epoch_begin(1, 0)
    assert progress.bar.total == 4  # iters 44: 4 steps of the second epoch, not 4/40
    progress.bar.close()


def test_an_empty_queue_says_what_to_do_not_a_bare_header(isolated_home):
    result = CliRunner().invoke(cli, ["--home", str(isolated_home), "list"])
    assert result.exit_code == 0 and "nenhum job na fila: farensectl submit SPEC" in result.stdout
    assert "melhor val" not in result.stdout  # no header over nothing


def test_tail_of_a_pending_job_says_once_that_farensed_is_not_running(isolated_home):
    import signal
    import subprocess

    from farensed.queue.job import Job
    from farensed.queue.jobs import Queue
    from tests.helpers import child_env, cli_cmd

    q = Queue(Workspace(isolated_home))
    q.job_dir(1).mkdir(parents=True)
    q.save(Job(id=1, name="t", state="pending"))
    err = isolated_home / "tail.err"
    with open(err, "wb") as fh:
        tail = subprocess.Popen(
            cli_cmd(isolated_home, "tail", "1"), stdout=subprocess.DEVNULL, stderr=fh, env=child_env()
        )
    try:
        wait_for(lambda: "farensed não está a correr" in err.read_text(), timeout=60, proc=tail)
        tail.send_signal(signal.SIGINT)
        assert tail.wait(timeout=30) == 130  # Ctrl-C detaches, the job untouched
    finally:
        if tail.poll() is None:
            tail.kill()
    said = err.read_text()
    assert said.count("farensed não está a correr: o job 1 só avança quando arrancar") == 1, said
    assert "job 1 pendente: à espera que comece" in said and q.get(1).state == "pending"


def test_a_home_that_does_not_exist_is_said_once_not_made_silently(tmp_path):
    home = tmp_path / "typo" / "ws"
    runner = CliRunner()
    first = runner.invoke(cli, ["--home", str(home), "list"])
    assert first.exit_code == 0 and first.stderr.count(f"{home} não existia: espaço de trabalho novo") == 1
    again = runner.invoke(cli, ["--home", str(home), "list", "--json"])
    assert "não existia" not in again.stderr and orjson.loads(again.stdout)["jobs"] == []


CONVERT_SAID = (
    "[INFO] Loading\n[INFO] Using dtype: float32\n[INFO] Quantizing\n"
    "[INFO] Quantized model with 6.043 bits per weight.\n"
)  # what mlx-lm 0.32's convert prints while the demo builds its model


@pytest.mark.parametrize("lang", ["pt", "en"])
def test_the_model_build_says_mlx_lms_numbers_in_the_readers_language(monkeypatch, lang):
    from farensed.demo.tinymodel import _passed_on, about_the_model

    monkeypatch.setenv("FARENSE_LANG", lang)
    said = []
    bits_per_weight = _passed_on(CONVERT_SAID + "a warning of its own\n", said.append)
    assert bits_per_weight == 6.043 and said == ["a warning of its own"]  # [INFO] said in words, the rest kept
    text = about_the_model(0.16, 4, 32, bits_per_weight)
    assert "6.04" in text and "INFO" not in text and "bits per weight'" not in text
    assert ("bits por peso" in text) == (lang == "pt") and ("bits per weight" in text) == (lang == "en")
    assert "4 bits" in about_the_model(0.16, 4, 32, _passed_on("", said.append))  # a convert that says nothing
