"""farensectl submit / list / status / tail / gap / logs / cancel / retry / wait / compare."""

from __future__ import annotations

import sys
import time

import click

from farensed.cli.app import cli, colour_band, print_json, queue
from farensed.cli.runs import resolve_run, with_run_help
from farensed.i18n import _


def _fmt(value, spec=".4f") -> str:
    return "-" if value is None else format(value, spec)


def _final(q, job) -> int:
    """Print how a job ended (the final analysis, or why it failed); return its exit code."""
    from farensed.analysis.gap import format_analysis
    from farensed.views.runref import resolve
    from farensed.views.status import error_reason, gap_report, job_exit_code

    job = q.get(job.id)
    click.echo(f"\njob {job.id} ({job.name}): {job.state}")
    if job.state == "failed":
        click.echo(
            _("erro: {error_reason}\nlog completo: farensectl logs {id}").format(
                error_reason=error_reason(job.error), id=job.id
            )
        )
    else:
        click.echo(format_analysis(gap_report(resolve(q.ws, str(job.id)))))
    return job_exit_code(job)


def _follow(q, job, emit, interval: float = 0.5) -> int:
    """Follow a job's metrics until it ends; return its exit code. Ctrl-C detaches (exit 130), job untouched."""
    from farensed.analysis.monitor import follow
    from farensed.queue.job import job_run_dir

    announced_wait = False

    def is_over():
        nonlocal announced_wait
        current = q.get(job.id)
        if current.state == "pending" and not announced_wait:
            click.echo(_("job {id} pendente: à espera que comece…").format(id=job.id), err=True)
            announced_wait = True
        return current.status.terminal

    try:
        follow(job_run_dir(q.ws, job), is_over, emit, interval=interval)
    except KeyboardInterrupt:
        click.echo(_("\ndesligado (o job continua)"), err=True)
        return 130
    return _final(q, job)


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--priority", type=int, help="Higher runs first (overrides the spec's priority).")
@click.option("--not-before", "not_before", help="Start no earlier than this ISO time or HH:MM (next such time).")
@click.option("--after", type=int, multiple=True, help="Start only after job ID is done (repeatable).")
@click.option("--fresh", is_flag=True, help="Start over: the run folder of the same name is moved aside.")
@click.option("--wait", "wait_", is_flag=True, help="Follow the job to its end and exit with its code.")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON.")
def submit(spec, priority, not_before, after, fresh, wait_, as_json):
    """Validate SPEC fully and queue it; prints the job id.

    \b
    Example:
      farensectl submit jobs/examples/v2.json --not-before 23:00
    """
    from farensed.engine.presubmit import prepare
    from farensed.engine.resume import check_resumable
    from farensed.queue.daemon import daemon_pid

    q = queue()
    prepare(spec, q.ws, lambda msg: click.echo(msg, err=True))  # Hub model into the HF cache; optimizer tried
    job = q.submit(
        spec,
        check=None if fresh else check_resumable,  # a run it cannot resume: refused now, with the diff and --fresh
        priority=priority,
        not_before=not_before,
        after=list(after) or None,
        fresh=fresh or None,
    )
    if as_json:
        print_json(
            {
                "id": job.id,
                "name": job.name,
                "state": job.state,
                "priority": job.priority,
                "not_before": job.not_before,
                "after": job.after,
            }
        )
    else:
        click.echo(job.id)
    click.echo(
        _("seguir: farensectl tail {id} | estado: farensectl status {id} | cancelar: farensectl cancel {id}").format(
            id=job.id
        ),
        err=True,
    )
    if daemon_pid(q.ws) is None:
        click.echo(_("farensed não está a correr: farensectl daemon start"), err=True)
    if wait_:
        sys.exit(_follow(q, job, lambda r: click.echo(_line(r, None, None), err=True)))


@cli.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list.")
def list_jobs(as_json):
    """List jobs: id, name, state, step/total, best val_loss, gap band, recoveries.

    \b
    Example:
      farensectl list --json | jq '.[] | select(.state == "running")'
    """
    from farensed.views.status import row

    q = queue()
    rows = [row(q, job) for job in q.jobs()]
    from farensed.cli.overnight import annotate

    overnight = annotate(q, rows)  # adds pause and ETA to each row; the lines under the table
    if as_json:
        print_json(rows)
        return
    click.echo(
        f"{'id':>4}  {'name':<28} {'state':<9} {'step':>11} {_('época'):>5} {_('melhor val'):>10} "
        f"{_('banda'):<9} {'rec':>3}  {_('início'):<19} {_('duração'):>8}"
    )
    for r in rows:
        step = f"{r['step'] or 0}/{r['total_steps'] or '?'}" if r["step"] or r["total_steps"] else "-"
        dur = f"{r['duration_s'] / 60:.1f}m" if r["duration_s"] is not None else "-"
        epoch = str(r["epoch"] + 1) if r["epoch"] is not None else "-"
        band = colour_band(f"{r['band'] or '-':<9}", r["band"])
        click.echo(
            f"{r['id']:>4}  {r['name'][:28]:<28} {r['state']:<9} {step:>11} {epoch:>5} "
            f"{_fmt(r['best_val_loss']):>10} {band} {r['recoveries']:>3}  "
            f"{(r['started_at'] or '-')[:19]:<19} {dur:>8}"
        )
    for line in overnight:
        click.echo(line)


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

    info = run_status(resolve_run(ref))
    if info.get("id") is not None:
        from farensed.cli.overnight import pause_line

        q = queue()
        info["pause"] = pause_line(q, q.get(info["id"]))
    if as_json:
        print_json(info)
        return
    p = info["progress"]
    for key in (
        "id",
        "name",
        "state",
        "finished",
        "priority",
        "attempts",
        "recoveries",
        "world_size",
        "submitted_at",
        "started_at",
        "ended_at",
        "not_before",
        "after",
        "pid",
        "exit_code",
        "held",
        "pause",
        "loss_reason",
        "run_dir",
        "log",
    ):
        if info.get(key) not in (None, [], ""):
            click.echo(f"{key + ':':<14}{info[key]}")
    if info["state"] == "pending" and info.get("retry_at"):
        from farensed.queue.backoff import seconds_left

        if left := seconds_left(info["retry_at"]):
            click.echo(
                f"{_('retoma às:'):<14}"
                + _("{time} (daqui a {left:.0f} s)").format(time=info["retry_at"][11:19], left=left)
            )
    if p["step"] is not None:
        click.echo(
            f"{_('progresso:'):<14}"
            + _(
                "step {step}/{total_steps}, época {epoch}, loss {loss}, val_loss {val_loss}, melhor {best}, banda {band}"
            ).format(
                step=p["step"],
                total_steps=p["total_steps"] or "?",
                epoch=p["epoch"] + 1,
                loss=_fmt(p["loss"]),
                val_loss=_fmt(p["val_loss"]),
                best=_fmt(p["best_val_loss"]),
                band=p["band"] or "-",
            )
        )
    if (adapters := info.get("adapters")) and "error" not in adapters:
        click.echo(
            f"{'adapters:':<14}"
            + _("{tensors} tensores, {parameters:,} parâmetros ({path})").format(
                tensors=adapters["tensors"], parameters=adapters["parameters"], path=adapters["path"]
            )
        )
    if info.get("reason"):
        click.echo(f"{_('erro:'):<14}{info['reason']}")
        click.echo(f"{'':<14}" + _("log completo: farensectl logs {id}").format(id=info["id"]))
    elif info.get("error"):
        click.echo(f"{_('nota:'):<14}{info['error']}")


@cli.command()
@click.argument("ref", metavar="[RUN]", required=False)
@click.option("-n", "lines", type=int, default=10, show_default=True, help="Records to show first.")
@click.option("--follow/--no-follow", default=True, help="Keep following until the run ends.")
@click.option(
    "--refresh", type=click.FloatRange(min=0.05), default=0.5, show_default=True, help="Seconds between polls."
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
    foreign = job is not None and job.state == "failed" and job.exit_code in (2, 3)  # refused: not its run
    records = [] if foreign else run.records()
    bests = running_best(records)
    first = records[max(0, len(records) - 1000)] if records else None  # the base of the ETA
    start = max(0, len(records) - lines) if lines > 0 else len(records)
    if job is not None:
        click.echo(
            _("job {id} ({name}): {state}, recuperações {recoveries}, hosts {world_size}").format(
                id=job.id, name=job.name, state=job.state, recoveries=job.recoveries, world_size=job.world_size
            )
        )
    else:
        click.echo(run.heading())
    for record, best in zip(records[start:], bests[start:]):
        click.echo(_line(record, best, first))
    if not follow:
        if job is not None and job.state == "failed":
            from farensed.views.status import error_reason

            click.echo(
                _("erro: {error_reason}\nlog completo: farensectl logs {id}").format(
                    error_reason=error_reason(job.error), id=job.id
                )
            )
        return
    state = {"best": bests[-1] if bests else None, "first": first}

    def emit(record):
        if record.get("val_loss") is not None and (state["best"] is None or record["val_loss"] < state["best"]):
            state["best"] = record["val_loss"]
        state["first"] = state["first"] or record
        click.echo(_line(record, state["best"], state["first"]))

    if job is not None:
        sys.exit(_follow(run.queue, job, emit, refresh))
    if run.seed_era or run.finished:
        return
    try:
        follow_run(run.run_dir, lambda: run.finished, emit, interval=refresh)
    except KeyboardInterrupt:
        click.echo(_("\ndesligado"), err=True)
        sys.exit(130)
    from farensed.analysis.gap import format_analysis
    from farensed.views.status import gap_report

    click.echo(format_analysis(gap_report(run)))


def _line(record, best, first) -> str:
    from farensed.analysis.monitor import format_record

    return format_record(record, best, first, colour=colour_band)


@cli.command()
@click.argument("ref", metavar="[RUN]", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@with_run_help
def gap(ref, as_json):
    """The seed's ANÁLISE FINAL DE OVERFITTING, with one line per validation.

    Epochs: 0-based in files and JSON (`epoch`, checkpoint_epoch0_step200), 1-based on the console
    (`Época 1/3`, the table's `época` column).

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
        click.echo(run.heading())
        click.echo(format_analysis(report, per_validation=True))


@cli.command()
@click.argument("ref", metavar="RUN")
@click.option("-n", "lines", type=int, default=0, help="Only the last N lines.")
@with_run_help
def logs(ref, lines):
    """Print a job's merged stdout/stderr log (a run made with `farensectl run` has none).

    \b
    Example:
      farensectl logs 3 -n 50
    """
    from farensed.errors import QueueError
    from farensed.storage.jsonl import tail_lines

    run = resolve_run(ref)
    if run.job is None:
        raise QueueError(_("{ref}: corrida sem job na fila, sem log (feita com farensectl run?)").format(ref=ref))
    path = run.queue.log_path(run.job.id)
    if lines:
        click.echo(b"\n".join(tail_lines(path, lines)).decode(errors="replace"))
    else:
        click.echo(path.read_text(errors="replace") if path.exists() else "", nl=False)


@cli.command()
@click.argument("job_id", type=int)
def cancel(job_id):
    """Cancel a job: pending never runs; running stops at a checkpoint (files kept).

    \b
    Example:
      farensectl cancel 3
    """
    job = queue().cancel(job_id)
    click.echo(f"job {job.id}: " + (_("cancelado") if job.state == "cancelled" else _("a parar com checkpoint…")))


@cli.command()
@click.argument("job_id", type=int)
def retry(job_id):
    """Put a failed or cancelled job back in the queue; it resumes from its checkpoint.

    \b
    Example:
      farensectl retry 3
    """
    job = queue().retry(job_id)
    click.echo(f"job {job.id}: {job.state}")


@cli.command()
@click.argument("job_id", type=int)
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds (exit 124).")
def wait(job_id, timeout):
    """Wait for a job to end; the exit code is the job's (0 done, 130 cancelled).

    \b
    Example:
      farensectl wait 3 && farensectl gap 3
    """
    from farensed.views.status import job_exit_code

    q = queue()
    deadline = None if timeout is None else time.monotonic() + timeout
    while not (job := q.get(job_id)).status.terminal:
        if deadline is not None and time.monotonic() > deadline:
            click.echo(_("job {job_id} ainda {state}").format(job_id=job_id, state=job.state), err=True)
            sys.exit(124)
        time.sleep(0.5)
    click.echo(f"job {job.id} ({job.name}): {job.state}")
    sys.exit(job_exit_code(job))


@cli.command()
@click.argument("refs", metavar="RUN RUN [RUN...]", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@with_run_help
def compare(refs, as_json):
    """The V1-vs-V2 table: losses, gap band and stats, epochs, early stop, time, tok/s, F1, success verdicts.

    Training time is the step time over all attempts; tok/s is the steady-state median (no JIT compile).
    The verdicts use each run's `success` criteria, else the seed's.

    \b
    Example:
      farensectl compare checkpoints_qlora_v1_backup 2
    """
    from farensed.analysis.compare import compare as compare_runs
    from farensed.errors import QueueError

    if len(refs) < 2:
        raise QueueError(_("compare precisa de pelo menos duas corridas"))
    table = compare_runs([resolve_run(ref) for ref in refs])
    if as_json:
        print_json(table)
        return
    cols = table["jobs"]
    from farensed.analysis.compare import ROWS

    rows = [(_(label), key, spec) for label, key, spec in ROWS]
    w = max([22] + [len(c["label"]) + 2 for c in cols])
    click.echo(f"{'':<18}" + "".join(f"{c['label']:>{w}}" for c in cols))
    for label, key, spec in rows:
        cells = ["-" if c[key] is None else (format(c[key], spec) if spec else str(c[key])) for c in cols]
        click.echo(f"{label:<18}" + "".join(f"{v[: w - 1]:>{w}}" for v in cells))
    criteria = []
    for c in cols:
        criteria += [v["criterion"] for v in c["success"] if v["criterion"] not in criteria]
    for crit in criteria:
        cells = []
        for c in cols:
            v = next((v for v in c["success"] if v["criterion"] == crit), None)
            cells.append("-" if v is None else f"{'✅' if v['passed'] else '❌'} " + _fmt(v["value"]))
        click.echo(f"{crit:<18}" + "".join(f"{v[: w - 1]:>{w}}" for v in cells))
