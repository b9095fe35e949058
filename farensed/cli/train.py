"""farensectl run / demo / plot / completion."""

from __future__ import annotations

import sys

import click

from farensed.cli.app import cli, queue, workspace


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

    sys.exit(run_spec(spec, workspace().root, fresh=fresh))


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

    configure_environment()
    ws = workspace()
    spec_path = prepare_demo(ws, log=click.echo)
    if not prepare:
        sys.exit(run_spec(spec_path, ws.root, fresh=True))


@cli.command()
@click.argument("job_id", type=int)
def plot(job_id):
    """(Re)draw a job's training_v2_results.png and print its path.

    \b
    Example:
      farensectl plot 3
    """
    from farensed.analysis.metrics import read_all
    from farensed.analysis.plots import PLOT_NAME, plot_training
    from farensed.errors import QueueError

    q = queue()
    job = q.get(job_id)
    run_dir = q.ws.run_dir(job.name)
    records = read_all(run_dir)
    if not records:
        raise QueueError(f"job {job_id} ainda não tem métricas ({run_dir})")
    click.echo(plot_training(records, run_dir / PLOT_NAME, title=f"{job.name} — loss, val_loss e gap"))


@cli.command(name="eval")
@click.argument("job_id", type=int, required=False)
@click.option("--one-by-one", is_flag=True, help="Generate one example at a time instead of batched.")
@click.option("--json", "as_json", is_flag=True, help="Print the aggregates as JSON.")
def eval_job(job_id, one_by_one, as_json):
    """Evaluate a job's best adapters vs the base model: F1, exact match, perplexity.

    Writes evaluation_report.json, evaluation_summary.csv and evaluation_*.png in the
    job's run folder. A killed evaluation resumes where it stopped.

    \b
    Example:
      farensectl eval 3
    """
    from farensed.engine.runner import evaluate_spec
    from farensed.spec import load_spec

    q = queue()
    job = q.resolve(job_id)
    spec = load_spec(q.job_dir(job.id) / "spec.json", q.ws, check_files=False)
    report = evaluate_spec(spec, q.ws, batched=not one_by_one)
    if as_json:
        from farensed.cli.app import print_json

        print_json({k: report[k] for k in ("adapters", "base", "uplift")})


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
