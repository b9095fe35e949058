"""farensectl run / demo / plot / completion."""

from __future__ import annotations

import sys

import click

from farensed.cli.app import cli, output_file, workspace
from farensed.cli.runs import resolve_run, with_run_help
from farensed.i18n import _


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--fresh", is_flag=True, help="Start over; the old run folder is moved aside, never deleted.")
def run(spec, fresh):
    """Train SPEC in the foreground, no daemon (same engine, same files).

    Re-running a spec whose training_state.json exists resumes it exactly.
    Exit code 75 means: interrupted by a signal, resumable.

    \b
    Example:
      farensectl run jobs/examples/v2.json
    """
    from farensed.engine.runner import run_spec
    from farensed.queue.fresh import start_over

    sys.exit(run_spec(spec, workspace().root, fresh=fresh, start_over=start_over))


@cli.command()
@click.option("--prepare", is_flag=True, help="Only build the tiny model, the demo data and demo.json.")
def demo(prepare):
    """Build a tiny model and data, train jobs/examples/demo.json, show the gap analysis.

    \b
    Example:
      farensectl demo --prepare && farensectl submit jobs/examples/demo.json
    """
    from farensed.demo.prepare import prepare as prepare_demo
    from farensed.engine.runner import configure_environment, run_spec
    from farensed.queue.fresh import start_over

    configure_environment()
    ws = workspace()
    spec_path = prepare_demo(ws, log=click.echo)
    if not prepare:
        sys.exit(run_spec(spec_path, ws.root, fresh=True, start_over=start_over))


@cli.command()
@click.argument("ref", metavar="[RUN]", required=False)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Where to write the PNG.")
@with_run_help
def plot(ref, output):
    """(Re)draw a run's training_v2_results.png and print its path; early stopping is marked where it fired.

    The PNG goes into the run folder; for a metrics-only folder (read-only) into the current directory as
    <name>-training_v2_results.png, unless --output says where.

    \b
    Example:
      farensectl plot 3
    """
    from pathlib import Path

    from farensed.analysis.plots import PLOT_NAME, plot_training
    from farensed.errors import QueueError

    run = resolve_run(ref)
    records = run.records()
    if not records:
        raise QueueError(_("{label} ainda não tem métricas ({run_dir})").format(label=run.label, run_dir=run.run_dir))
    path = (
        output_file(Path(output))
        if output is not None
        else (Path.cwd() / f"{run.name}-{PLOT_NAME}" if run.seed_era else run.run_dir / PLOT_NAME)
    )
    summary = run.read("training_summary.json") or {}
    stop = summary.get("steps_run") if summary.get("stop_reason") == "early_stopping" else None
    click.echo(
        plot_training(
            records, path, title=_("{name} — loss, val_loss e gap").format(name=run.name), early_stop_step=stop
        )
    )


@cli.command(name="eval")
@click.argument("ref", metavar="[RUN]", required=False)
@click.option("--one-by-one", is_flag=True, help="Generate one example at a time instead of batched.")
@click.option("--force", is_flag=True, help="Evaluate again even if these adapters were already evaluated.")
@click.option("--json", "as_json", is_flag=True, help="Print only the aggregates as one JSON document.")
@with_run_help
def eval_job(ref, one_by_one, force, as_json):
    """Evaluate a run's best adapters vs the base model: F1, exact match, perplexity.

    Uses data.test when the spec has it; otherwise the validation set, which also chose the adapters
    (the report and the console say so). Writes evaluation_report.json, evaluation_summary.csv and
    evaluation_*.png in the run folder. A killed evaluation resumes where it stopped; a finished one is
    reused (and said so) unless --force. With --json the progress goes to stderr.

    \b
    Example:
      farensectl eval 3 --json | jq .adapters.f1_mean
    """
    import contextlib

    from farensed.engine.runner import evaluate_spec
    from farensed.errors import SpecError
    from farensed.spec.jobspec import parse_spec

    run = resolve_run(ref)
    raw = run.spec_dict()
    if run.seed_era or raw is None:
        raise SpecError(
            _("{run_dir}: pasta só com métricas, só leitura: sem spec (modelo, dados), não se avalia").format(
                run_dir=run.run_dir
            )
        )
    spec = parse_spec(raw, str(run.run_dir))
    with contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        report = evaluate_spec(spec, workspace(), batched=not one_by_one, run_dir=run.run_dir, force=force)
    if as_json:
        from farensed.cli.app import print_json

        print_json({k: report[k] for k in ("adapters", "base", "uplift", "config")})


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell):
    """Print a shell completion script (Click's own mechanism).

    \b
    Example:
      eval "$(farensectl completion bash)"
    """
    from click.shell_completion import get_completion_class

    comp = get_completion_class(shell)(cli, {}, "farensectl", "_FARENSECTL_COMPLETE")
    click.echo(comp.source())
