"""farensectl submit / list / status / tail / gap / logs / cancel / retry / wait / compare."""

from __future__ import annotations

import sys
import time

import click

from farensed.cli.app import cli, colour_band, print_json, queue


def _fmt(value, spec=".4f") -> str:
    return "-" if value is None else format(value, spec)


def _final(q, job) -> int:
    """Print the final analysis of a finished job; return its exit code."""
    from farensed.analysis.gap import format_analysis
    from farensed.analysis.report import gap_report, job_exit_code

    job = q.get(job.id)
    click.echo(f"\njob {job.id} ({job.name}): {job.state}" + (f" — {job.error.splitlines()[-1]}" if job.error else ""))
    click.echo(format_analysis(gap_report(q, job)))
    return job_exit_code(job)


def _follow(q, job, emit) -> int:
    """Follow a job's metrics until it ends; return its exit code. Ctrl-C detaches (exit 130), job untouched."""
    from farensed.analysis.monitor import follow

    announced_wait = False

    def is_over():
        nonlocal announced_wait
        current = q.get(job.id)
        if current.state == "pending" and not announced_wait:
            click.echo(f"job {job.id} pendente: à espera que comece…", err=True)
            announced_wait = True
        return current.status.terminal

    try:
        follow(q.ws.run_dir(job.name), is_over, emit)
    except KeyboardInterrupt:
        click.echo("\ndesligado (o job continua)", err=True)
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
    from farensed.queue.daemon import daemon_pid

    q = queue()
    job = q.submit(spec, priority=priority, not_before=not_before, after=list(after) or None, fresh=fresh or None)
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
        f"seguir: farensectl tail {job.id} | estado: farensectl status {job.id} | cancelar: farensectl cancel {job.id}",
        err=True,
    )
    if daemon_pid(q.ws) is None:
        click.echo("farensed não está a correr: farensectl daemon start", err=True)
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
    from farensed.analysis.report import row

    q = queue()
    rows = [row(q, job) for job in q.jobs()]
    if as_json:
        print_json(rows)
        return
    click.echo(
        f"{'id':>4}  {'name':<28} {'state':<9} {'step':>11} {'época':>5} {'melhor val':>10} "
        f"{'banda':<9} {'rec':>3}  {'início':<19} {'duração':>8}"
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


@cli.command()
@click.argument("job_id", type=int, required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def status(job_id, as_json):
    """Everything about one job (default: the running one, else the latest).

    \b
    Example:
      farensectl status 3 --json | jq .progress
    """
    from farensed.analysis.report import full_status

    q = queue()
    info = full_status(q, q.resolve(job_id))
    if as_json:
        print_json(info)
        return
    p = info["progress"]
    for key in (
        "id",
        "name",
        "state",
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
        "loss_reason",
        "run_dir",
        "log",
    ):
        if info.get(key) not in (None, [], ""):
            click.echo(f"{key + ':':<14}{info[key]}")
    if info["state"] == "pending" and info.get("retry_at"):
        from farensed.queue.backoff import seconds_left

        if left := seconds_left(info["retry_at"]):
            click.echo(f"{'retoma às:':<14}{info['retry_at'][11:19]} (daqui a {left:.0f} s)")
    if p["step"] is not None:
        click.echo(
            f"{'progresso:':<14}step {p['step']}/{p['total_steps']}, época {p['epoch'] + 1}, "
            f"loss {_fmt(p['loss'])}, val_loss {_fmt(p['val_loss'])}, melhor {_fmt(p['best_val_loss'])}, "
            f"banda {p['band'] or '-'}"
        )
    if info.get("error"):
        click.echo("erro:\n  " + info["error"].replace("\n", "\n  "))


@cli.command()
@click.argument("job_id", type=int, required=False)
@click.option("-n", "lines", type=int, default=10, show_default=True, help="Records to show first.")
@click.option("--follow/--no-follow", default=True, help="Keep following until the job ends.")
def tail(job_id, lines, follow):
    """Live view: step, loss, val_loss, gap+band, tok/s, memory, ETA, best so far.

    When the job ends it prints the final analysis and exits with the job's code.
    Ctrl-C detaches and never touches the job.

    \b
    Example:
      farensectl tail 3 -n 20
    """
    from farensed.analysis.metrics import read_last
    from farensed.analysis.report import progress

    q = queue()
    job = q.resolve(job_id)
    run_dir = q.ws.run_dir(job.name)
    window = read_last(run_dir, max(lines, 1000))  # one read: the last N lines, and a base for the ETA
    recent = window[-lines:] if lines > 0 else []
    best = progress(q, job)["best_val_loss"]
    first = window[0] if recent else None
    click.echo(f"job {job.id} ({job.name}): {job.state}, recuperações {job.recoveries}, hosts {job.world_size}")
    for record in recent:
        click.echo(_line(record, best, first))
    if not follow:
        return
    state = {"best": best, "first": first}

    def emit(record):
        if record.get("val_loss") is not None and (state["best"] is None or record["val_loss"] < state["best"]):
            state["best"] = record["val_loss"]
        state["first"] = state["first"] or record
        click.echo(_line(record, state["best"], state["first"]))

    sys.exit(_follow(q, job, emit))


def _line(record, best, first) -> str:
    from farensed.analysis.monitor import format_record

    return format_record(record, best, first, colour=colour_band)


@cli.command()
@click.argument("job_id", type=int, required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def gap(job_id, as_json):
    """The seed's ANÁLISE FINAL DE OVERFITTING, with one line per validation.

    \b
    Example:
      farensectl gap 3 --json | jq .status
    """
    from farensed.analysis.gap import format_analysis
    from farensed.analysis.report import gap_report

    q = queue()
    report = gap_report(q, q.resolve(job_id))
    if as_json:
        print_json(report)
    else:
        click.echo(f"job {report['id']} ({report['name']}): {report['state']}")
        click.echo(format_analysis(report, per_validation=True))


@cli.command()
@click.argument("job_id", type=int)
@click.option("-n", "lines", type=int, default=0, help="Only the last N lines.")
def logs(job_id, lines):
    """Print a job's merged stdout/stderr log.

    \b
    Example:
      farensectl logs 3 -n 50
    """
    q = queue()
    q.get(job_id)
    path = q.log_path(job_id)
    text = path.read_text(errors="replace") if path.exists() else ""
    out = text.splitlines()[-lines:] if lines else text.splitlines()
    click.echo("\n".join(out))


@cli.command()
@click.argument("job_id", type=int)
def cancel(job_id):
    """Cancel a job: pending never runs; running stops at a checkpoint (files kept).

    \b
    Example:
      farensectl cancel 3
    """
    job = queue().cancel(job_id)
    click.echo(f"job {job.id}: " + ("cancelado" if job.state == "cancelled" else "a parar com checkpoint…"))


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
    from farensed.analysis.report import job_exit_code

    q = queue()
    deadline = None if timeout is None else time.monotonic() + timeout
    while not (job := q.get(job_id)).status.terminal:
        if deadline is not None and time.monotonic() > deadline:
            click.echo(f"job {job_id} ainda {job.state}", err=True)
            sys.exit(124)
        time.sleep(0.5)
    click.echo(f"job {job.id} ({job.name}): {job.state}")
    sys.exit(job_exit_code(job))


@cli.command()
@click.argument("first", type=int)
@click.argument("second", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def compare(first, second, as_json):
    """The V1-vs-V2 table: losses, gap band and stats, epochs, early stop, time, tok/s, F1.

    \b
    Example:
      farensectl compare 1 2
    """
    from farensed.analysis.report import compare as compare_jobs

    q = queue()
    table = compare_jobs(q, q.get(first), q.get(second))
    if as_json:
        print_json(table)
        return
    a, b = table["jobs"]
    rows = [
        ("job", "name", None),
        ("estado", "state", None),
        ("loss final", "final_loss", ".4f"),
        ("val_loss final", "final_val_loss", ".4f"),
        ("melhor val_loss", "best_val_loss", ".4f"),
        ("status", "status", None),
        ("gap médio", "gap_mean", ".4f"),
        ("gap máximo", "gap_max", ".4f"),
        ("gap mínimo", "gap_min", ".4f"),
        ("épocas", "epochs_run", None),
        ("steps", "steps_run", None),
        ("early stopping", "early_stopped", None),
        ("tempo (s)", "wall_time_s", ".0f"),
        ("tok/s", "tokens_per_second", ".0f"),
        ("F1", "f1", ".4f"),
        ("exact match", "exact_match", ".4f"),
    ]
    click.echo(f"{'':<18}{'#' + str(a['id']):>22}{'#' + str(b['id']):>22}")
    for label, key, spec in rows:
        va, vb = a[key], b[key]
        fa = "-" if va is None else (format(va, spec) if spec else str(va))
        fb = "-" if vb is None else (format(vb, spec) if spec else str(vb))
        click.echo(f"{label:<18}{fa[:21]:>22}{fb[:21]:>22}")
