"""A job whose child writes nothing for the stall limit (here: a chat template that loops forever, stuck in
tokenization) is stopped and failed with the reason; the queue goes on with the next job."""

from __future__ import annotations

import shutil
import subprocess
import sys

from farensed.queue.jobs import Queue
from farensed.storage.workspace import Workspace
from tests.helpers import child_env, spec_with, write_spec

LOOPS_FOREVER = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


def test_a_stuck_job_fails_with_the_reason_and_the_next_job_runs(workspace, tiny_model):
    stuck_model = workspace / "models" / "stuck"
    shutil.copytree(tiny_model, stuck_model)
    (stuck_model / "chat_template.jinja").write_text(LOOPS_FOREVER)
    q = Queue(Workspace(workspace))
    stuck = q.submit(write_spec(workspace, spec_with(name="stuck", model="models/stuck", priority=5), "stuck.json"))
    fine = q.submit(write_spec(workspace, spec_with(name="fine", epochs=1), "fine.json"))
    burst = subprocess.run(
        [sys.executable, "-m", "farensed.queue.main", "--home", str(workspace), "--burst", "--poll", "0.1"]
        + ["--stall-minutes", "0.5"],  # 30 s: far above any silence of the tiny model's start-up, even loaded
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=600,
    )
    assert burst.returncode == 0, burst.stdout[-3000:]
    failed = q.get(stuck.id)
    assert failed.state == "failed" and failed.recoveries == 0 and failed.attempts == 1
    assert "sem sinal de vida há 30 s" in failed.error and "parado pelo farensed" in failed.error
    assert failed.exit_code == 75  # SIGTERM ended it at once: before training a stop needs no checkpoint
    log = q.log_path(stuck.id).read_text()
    assert "Parado antes de começar a treinar (sinal SIGTERM)" in log
    assert log.rstrip().endswith(f"Para tentar de novo: farensectl retry {stuck.id}")
    assert f"job {stuck.id}: sem sinal de vida" in burst.stdout and "SIGKILL" not in burst.stdout
    assert q.get(fine.id).state == "done"  # the queue went on


def test_run_stopped_while_it_imports_a_gguf_ends_at_once_and_leaves_nothing_half_written(workspace, tiny_model):
    """`farensectl run` gets SIGTERM in the middle of a GGUF import (before any trainer exists): exit 75 with the
    line that says so, no half-imported folder, and the next run imports and trains as if nothing happened."""
    import signal

    from tests.ggufwrite import tiny_gguf
    from tests.helpers import start_cli, wait_for

    (workspace / "gg").mkdir()
    tiny_gguf(tiny_model, workspace / "gg" / "tiny.gguf", width=2048)  # ~50 MB: an import that takes a moment
    spec = write_spec(workspace, spec_with(name="g", model="gg/tiny.gguf", epochs=1))
    out = workspace / "run.out"
    run = start_cli(workspace, "run", str(spec), log=out)
    wait_for(lambda: "A importar tiny.gguf" in out.read_text(), timeout=120, interval=0.005, proc=run)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) == 75
    text = out.read_text()
    assert "Parado antes de começar a treinar (sinal SIGTERM)" in text and "Traceback" not in text
    assert not [p.name for p in (workspace / "gg").iterdir() if ".tmp-" in p.name]  # nothing half-imported
    imported = workspace / "gg" / "tiny.gguf.mlx"  # whole, if the stop came as it ended (written atomically)
    assert not imported.exists() or (imported / "config.json").is_file()
    assert not (workspace / "checkpoints_qlora" / "g" / "training_state.json").exists()  # no training began
