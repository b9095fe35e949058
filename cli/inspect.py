"""farensectl status / tail / gap / logs / compare: what a run says, live or after the fact."""

from __future__ import annotations

import sys

import click

from farensed.cli.app import cli, failure_lines, print_json, queue, record_line
from farensed.cli.jobs import _follow
from farensed.cli.runs import resolve_run, with_run_help
from farensed.i18n import _
from farensed.queue.job import JobStatus, state_label
from farensed.terminal import safe


@cli.command()
@click.argument("ref", metavar="[RUN]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@with_run_help
def status(ref, as_json):
    """Everything about one run: its job in full, or what its run folder says.

    A failed job shows the reason in one line and where its full log is.

    \b
    Example:
      farensectl status 3 --json | jq .progress
    """
    from farensed.views.status import run_status
    from farensed.views.statustext import status_lines

    info = run_status(resolve_run(ref))
    if info.get("id") is not None:
        from farensed.queue.overnight import pause_of

        q = queue()
        info["pause"] = pause_of(q, q.get(info["id"]))
    if as_json:
        print_json(info)
        return
    for line in status_lines(info):
        click.echo(line)


@cli.command()
@click.argument("ref", metavar="[RUN]", required=False)
@click.option(
    "-n", "lines", type=click.IntRange(0), default=10, show_default=True, metavar="N", help="Records to show first."
)
@click.option("--follow/--no-follow", default=True, help="Keep following until the run ends.")
@click.option(
    "--refresh",
    type=click.FloatRange(min=0.05),
    default=0.5,
    show_default=True,
    metavar="SECONDS",
    help="Seconds between polls.",
)
@with_run_help
def tail(ref, lines, follow, refresh):
    """Live view: step, loss, val_loss, gap+band, tok/s, memory, ETA, best so far.

    Each history line shows the best val_loss at that step. When the job ends it prints the final
    analysis (or, for a failed job, why it failed) and exits with the job's code. Ctrl-C detaches
    and never touches the job.

    \b
    Example:
      farensectl tail 3 -n 20 --refresh 5
    """
    from farensed.analysis.monitor import follow as follow_run
    from farensed.analysis.monitor import running_best

    run = resolve_run(ref)
    job = run.job
    foreign = job is not None and job.status is JobStatus.FAILED and job.exit_code in (2, 3)  # refused: not its run
    records = [] if foreign else run.records()
    bests = running_best(records)
    first = records[max(0, len(records) - 1000)] if records else None  # the base of the ETA
    start = max(0, len(records) - lines) if lines > 0 else len(records)
    if job is not None:
        click.echo(
            _("job {id} ({name}): {state}, recuperações {recoveries}, hosts {world_size}").format(
                id=job.id,
                name=safe(job.name, 80),
                state=state_label(job.state),
                recoveries=job.recoveries,
                world_size=job.world_size,
            )
        )
    else:
        click.echo(safe(run.heading(), 400))
    for record, best in zip(records[start:], bests[start:]):
        click.echo(record_line(record, best, first))
    if not follow:
        if job is not None and job.status is JobStatus.FAILED:
            click.echo(failure_lines(job))
        return
    state = {"best": bests[-1] if bests else None, "first": first}

    def emit(record):
        if record.get("val_loss") is not None and (state["best"] is None or record["val_loss"] < state["best"]):
            state["best"] = record["val_loss"]
        state["first"] = state["first"] or record
        click.echo(record_line(record, state["best"], state["first"]))

    if job is not None:
        sys.exit(_follow(run.queue, job, emit, refresh))
    if run.seed_era or run.finished:
        return
    try:
        follow_run(run.run_dir, lambda: run.finished, emit, interval=refresh)
    except KeyboardInterrupt:
        click.echo("\n" + _("desligado"), err=True)
        sys.exit(130)
    from farensed.analysis.gap import format_analysis
    from farensed.views.status import gap_report

    click.echo(format_analysis(gap_report(run)))


@cli.command()
@click.argument("ref", metavar="[RUN]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@with_run_help
def gap(ref, as_json):
    """The final overfitting analysis (status band, mean/max/min gap), with one line per validation.

    Epochs: 0-based in files and JSON (`epoch`, checkpoint_epoch0_step200), 1-based on the console
    (`Epoch 1/3`, the table's epoch column).

    \b
    Example:
      farensectl gap 3 --json | jq .status
    """
    from farensed.analysis.gap import format_analysis
    from farensed.views.status import gap_report

    run = resolve_run(ref)
    report = gap_report(run)
    if as_json:
        print_json(report)
    else:
        click.echo(safe(run.heading(), 400))
        click.echo(format_analysis(report, per_validation=True))


@cli.command()
@click.argument("ref", metavar="RUN")
@click.option("-n", "lines", type=click.IntRange(0), default=0, metavar="N", help="Only the last N lines.")
@with_run_help(default=False)
def logs(ref, lines):
    """Print a job's merged stdout/stderr log (a run made with `farensectl run` has none).

    \b
    Example:
      farensectl logs 3 -n 50
    """
    from farensed.errors import QueueError
    from farensed.storage.jsonl import tail_lines
    from farensed.storage.logfile import log_lines, shown_line
    from farensed.terminal import terminal_text

    run = resolve_run(ref)
    if run.job is None:
        raise QueueError(_("{ref}: corrida sem job na fila, sem log (feita com farensectl run?)").format(ref=ref))
    path = run.queue.log_path(run.job.id)
    if not path.exists():  # nothing silent: a job that never started has no log yet
        click.echo(
            _("job {id} ({state}): ainda sem log (o log começa quando o job arranca)").format(
                id=run.job.id, state=state_label(run.job.state)
            ),
            err=True,
        )
        return
    # colours pass; any other escape sequence (window title, clipboard write, cursor moves) never reaches the terminal
    if lines:
        for line in tail_lines(path, lines):
            click.echo(terminal_text(shown_line(line)))
    else:
        for line in log_lines(path):
            click.echo(terminal_text(shown_line(line)))


@cli.command()
@click.argument("refs", metavar="RUN RUN [RUN...]", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@with_run_help(default=False)
def compare(refs, as_json):
    """The V1-vs-V2 table: losses, gap band and stats, epochs, early stop, time, tok/s, F1, success verdicts.

    Training time is the step time over all attempts; tok/s is the steady-state median (no JIT compile).
    The verdicts use each run's `success` criteria, else the defaults (see `farensectl check --help`).

    \b
    Example:
      farensectl compare checkpoints_qlora_v1_backup 2
    """
    from farensed.analysis.compare import compare as compare_runs
    from farensed.errors import SpecError

    if len(refs) < 2:
        raise SpecError(_("compare precisa de pelo menos duas corridas"))
    table = compare_runs([resolve_run(ref) for ref in refs])
    if as_json:
        print_json(table)
        return
    from farensed.analysis.compare import table_lines

    for line in table_lines(table):
        click.echo(line)
