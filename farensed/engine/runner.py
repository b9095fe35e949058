"""The engine's entry point, shared by `farensectl run` and the daemon's child process."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from farensed import EXIT_RESUMABLE
from farensed.i18n import _
from farensed.signals import StoppedBeforeTraining, forget_requests, quiet_lost_stops, stop_before_training
from farensed.spec.load import load_spec
from farensed.storage.workspace import Workspace


def configure_environment() -> None:
    """Quiet tokenizers and transformers' advice, headless plots. Offline mode stays the user's choice (HF_HUB_OFFLINE)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # "PyTorch was not found": farense never uses it


def run_spec(spec_path: Path, home=None, fresh: bool = False, job_id: int | None = None, start_over=None) -> int:
    """Validate a spec and train it in this process; returns 0, or EXIT_RESUMABLE after a signal.

    The run folder's lock is held throughout (by the process that started mlx.launch for a distributed job).
    With `fresh`, `start_over(ws, name, job_id=, say=)` moves the old run aside first, under that lock (the queue's
    `farensed.queue.fresh.start_over`, which also repoints the jobs that trained it; the engine knows no queue).
    """
    configure_environment()
    from farensed.engine import console
    from farensed.engine.distributed import in_rank

    if in_rank():  # ranks agree on every stop (their handler only asks): no stop at once here
        ws = Workspace.at(home)
        return _train(load_spec(Path(spec_path), ws), ws, fresh)
    # until the trainer's own handler: a stop ends the process at once; the caller's handlers come back at the end
    if job_id is None:  # a queued job's child has been taking stops since it started (queue/child.py)
        forget_requests()
    quiet_lost_stops()
    before = {sig: signal.signal(sig, stop_before_training) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _run_here(spec_path, Workspace.at(home), fresh, job_id, start_over)
    except StoppedBeforeTraining as exc:  # a Hub download, a GGUF import, a lock: nothing of the run changed
        console.say("\n" + exc.line())
        return EXIT_RESUMABLE
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _run_here(spec_path: Path, ws: Workspace, fresh: bool, job_id: int | None, start_over) -> int:
    from farensed.engine import console
    from farensed.engine.presubmit import prepare

    if job_id is None:  # a queued job did this at submit; its child only reads the HF cache (never the network)
        prepare(Path(spec_path), ws, console.say)  # a Hub model into the HF cache; optimizer/schedule arguments tried
    spec = load_spec(Path(spec_path), ws)
    from farensed.storage.runlock import hold_run

    with hold_run(ws.run_dir(spec.name), job_id=job_id, sweep=(ws.output_dir(spec.name),), within=ws.root):
        if fresh:  # only under the lock: a run someone else trains is never moved from under them
            start_over(ws, spec.name, job_id=job_id, say=console.say)
        if spec.distributed:
            return run_distributed(spec, ws, Path(spec_path), fresh)
        return _train(spec, ws, fresh)


def _train(spec, ws: Workspace, fresh: bool) -> int:
    """Train (and evaluate when the spec asks) in this process; a full disk is one line, not a traceback. A stop
    while loading raises StoppedBeforeTraining (run_spec says it and returns 75)."""
    from farensed.engine.diskfull import disk_full_error, is_disk_full
    from farensed.engine.reporting import reporting_callbacks
    from farensed.engine.trainer import Trainer  # imports mlx: only here, never in the daemon

    report = reporting_callbacks(spec, ws.run_dir(spec.name), os.environ.get("MLX_RANK", "0") == "0")
    loss, batches = step_collaborators(spec)
    try:
        trainer = Trainer(spec, ws, fresh=fresh, loss=loss, iterate_batches=batches, callbacks=report)
        code = trainer.run()
    except (OSError, RuntimeError) as exc:
        if not is_disk_full(exc):
            raise
        raise disk_full_error(exc, ws.run_dir(spec.name)) from None
    if code == 0 and os.environ.get("MLX_RANK", "0") == "0":
        if not _post_steps(spec, ws, should_stop=lambda: trainer.stop.signum is not None):
            from farensed.engine import console

            console.say(console.interrupted(trainer.stop.signum))
            return EXIT_RESUMABLE  # a cancel, a memory-guard or window stop is honoured after training too
        print_final_analysis(ws.run_dir(spec.name))
        if spec.success is not None:
            print_success(spec, ws.run_dir(spec.name))
    return code


def step_collaborators(spec) -> tuple:
    """The training step's loss and batches, from the spec's memory keys: packed rows, the counted-positions loss
    (the default), or mlx-lm's `default_loss` on length-sorted batches (`counted_loss: false`)."""
    if spec.pack:
        from farensed.engine.packing import PackedBatches, PackedLoss

        return PackedLoss(spec.ce_chunk), PackedBatches
    if not spec.counted_loss:
        return None, None
    from farensed.engine.trainloss import CountedBatches, CountedLoss

    return CountedLoss(spec.ce_chunk), CountedBatches


def _post_steps(spec, ws: Workspace, should_stop) -> bool:
    """Evaluation and fuse after training, each resumable; False when a stop was requested before they ended."""
    from farensed.engine.evaluate import EvaluationInterrupted

    try:
        if spec.evaluate and not (ws.run_dir(spec.name) / "evaluation_report.json").exists():
            evaluate_spec(spec, ws, should_stop=should_stop)
        if should_stop():
            return False
        if spec.fuse:
            from farensed.engine import console
            from farensed.engine.fuse import fuse_job

            fuse_job(spec, ws, console.say)
    except EvaluationInterrupted:
        return False
    return True


def run_distributed(spec, ws: Workspace, spec_path: Path, fresh: bool, exit_file: Path | None = None) -> int:
    """Run every rank through mlx.launch; the result is rank 0's exit code (75 when a peer was lost)."""
    from farensed import EXIT_RESUMABLE
    from farensed.engine import console
    from farensed.engine.distributed import check_hosts, launch_command, run_launcher
    from farensed.spec.hosts import check_batch_size, hosts_of
    from farensed.storage.atomic import move_aside
    from farensed.storage.exitfile import read_exit_code

    check_batch_size(spec, len(hosts_of(spec, ws)), spec_path)
    check_hosts(spec, ws, [ws.resolve(spec.model), ws.resolve(spec.data.train), ws.resolve(spec.data.valid)])
    run_dir = ws.run_dir(spec.name)
    if fresh and run_dir.exists():
        console.say(_("--fresh: a pasta anterior foi guardada em {path}").format(path=move_aside(run_dir)))
    own = exit_file is None
    exit_file = exit_file or ws.root / "checkpoints_qlora" / f".{spec.name}.exit-{os.getpid()}.json"
    exit_file.parent.mkdir(parents=True, exist_ok=True)
    exit_file.unlink(missing_ok=True)
    console.say(f"mlx.launch: {len(hosts_of(spec, ws))} ranks ({spec.distributed.backend})")
    run_launcher(launch_command(spec, ws, spec_path.resolve(), exit_file))
    code = read_exit_code(exit_file)
    if own:
        exit_file.unlink(missing_ok=True)
    if code is None:
        console.say(_("⚠  Um rank perdeu-se antes do fim; retoma do último checkpoint com o mesmo comando."))
        return EXIT_RESUMABLE
    return code


def print_final_analysis(run_dir: Path) -> None:
    """The seed's ANÁLISE FINAL DE OVERFITTING, last thing on the console."""
    from farensed.analysis.gap import analyse, format_analysis
    from farensed.analysis.metrics import read_all
    from farensed.engine import console

    console.say(format_analysis(analyse(read_all(run_dir))))


def print_success(spec, run_dir: Path) -> bool:
    """The spec's success criteria, one line each (✅/❌ and the measured value); True when all pass."""
    import dataclasses

    from farensed.analysis.records import load_records
    from farensed.analysis.success import format_verdicts, verdicts
    from farensed.engine import console
    from farensed.storage.atomic import read_json

    report = run_dir / "evaluation_report.json"
    criteria = {k: v for k, v in dataclasses.asdict(spec.success).items() if v is not None}
    items = verdicts(criteria, load_records(run_dir), read_json(report) if report.exists() else None)
    console.say(console.heading(_("CRITÉRIOS DE SUCESSO")) + "\n" + format_verdicts(items))
    return all(v.passed for v in items)


def evaluate_spec(
    spec, ws: Workspace, batched: bool = True, run_dir: Path | None = None, force: bool = False, should_stop=None
) -> dict:
    """Evaluate a run's best adapters against its base model (resumable; `force` starts it over)."""
    configure_environment()
    from farensed.engine import console
    from farensed.engine.distributed import in_rank
    from farensed.engine.evaluate import Evaluator
    from farensed.storage.runlock import hold_run

    # A rank's evaluation runs under the lock of the process that started mlx.launch.
    run = run_dir or ws.run_dir(spec.name)
    lock = contextlib.nullcontext() if in_rank() else hold_run(run, what="avaliação", within=ws.root)
    with lock:
        evaluator = Evaluator(spec, ws, batched=batched, log=console.say, run_dir=run_dir, should_stop=should_stop)
        console.say(console.heading(_("AVALIAÇÃO - {name}").format(name=spec.name)))
        return evaluator.run(force=force)
