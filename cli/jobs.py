"""farensectl submit / list / cancel / retry / wait: putting jobs in the queue and following them to their end."""

from __future__ import annotations

import math
import shutil
import sys
import time

import click

from farensed.cli.app import JOB_ID, cli, colour_band, failure_lines, fmt_number, print_json, queue, record_line
from farensed.i18n import _
from farensed.queue.job import JobStatus, state_label
from farensed.terminal import safe


def _final(q, job, err: bool = False) -> int:
    """Print how a job ended (the final analysis, or why it failed); return its exit code. `err`: on stderr (stdout
    is kept for the one JSON document of --json)."""
    from farensed.analysis.gap import format_analysis
    from farensed.views.runref import resolve
    from farensed.views.status import gap_report, job_exit_code

    job = q.get(job.id)
    click.echo(f"\njob {job.id} ({safe(job.name, 80)}): {state_label(job.state)}", err=err)
    if job.status is JobStatus.FAILED:
        click.echo(failure_lines(job), err=err)
    else:
        click.echo(format_analysis(gap_report(resolve(q.ws, str(job.id)))), err=err)
    return job_exit_code(job)


def _follow(q, job, emit, interval: float = 0.5, err: bool = False) -> int:
    """Follow a job's metrics until it ends; return its exit code. Ctrl-C detaches (exit 130), job untouched."""
    from farensed.analysis.monitor import follow
    from farensed.queue.job import job_run_dir

    announced_wait, down = False, DaemonDown(q.ws)

    def is_over():
        nonlocal announced_wait
        current = q.get(job.id)
        if current.status is JobStatus.PENDING and not announced_wait:
            click.echo(_("job {id} pendente: à espera que comece…").format(id=job.id), err=True)
            announced_wait = True
        if current.status is JobStatus.PENDING and down.newly():  # nothing silent: nobody runs it
            click.echo(_down_line(job.id), err=True)
        return current.status.terminal

    try:
        follow(job_run_dir(q.ws, job), is_over, emit, interval=interval)
    except KeyboardInterrupt:
        click.echo("\n" + _("desligado (o job continua)"), err=True)
        return 130
    return _final(q, job, err)


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--priority", type=int, metavar="N", help="Higher runs first (overrides the spec's priority).")
@click.option(
    "--not-before", "not_before", metavar="TIME", help="Start no earlier than this ISO time or HH:MM (next such time)."
)
@click.option("--after", type=JOB_ID, multiple=True, metavar="ID", help="Start only after job ID is done (repeatable).")
@click.option("--fresh", is_flag=True, help="Start over: the run folder of the same name is moved aside.")
@click.option("--wait", "wait_", is_flag=True, help="Follow the job to its end and exit with its code.")
@click.option("--json", "as_json", is_flag=True, help="Print the job as JSON (with --wait: as it ended).")
def submit(spec, priority, not_before, after, fresh, wait_, as_json):
    """Validate SPEC fully and queue it; prints the job id.

    \b
    Example:
      farensectl submit jobs/examples/v2.json --not-before 23:00
    """
    from farensed.engine.presubmit import prepare
    from farensed.engine.resume import check_resumable
    from farensed.queue.pidfile import daemon_pid

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
    if as_json and not wait_:
        print_json(_submitted(job))
    elif not as_json:
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
        code = _follow(q, job, lambda r: click.echo(record_line(r, None, None), err=True), err=as_json)
        if as_json:  # one JSON document on stdout: the job as it ended
            print_json(_submitted(q.get(job.id)))
        sys.exit(code)


def _table_header() -> None:
    click.echo(
        f"{'id':>4}  {_('nome'):<28} {_('estado'):<9} {'step':>11} {_('época'):>5} {_('melhor val'):>10} "
        f"{_('banda'):<9} {_('rec'):>3}  {_('primeiro início'):<19} {_('tempo total'):>11}"
    )


def _submitted(job) -> dict:
    return {
        "id": job.id,
        "name": job.name,
        "state": job.state,
        "priority": job.priority,
        "not_before": job.not_before,
        "after": job.after,
    }


@cli.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document: jobs, refused inbox files, the daemon.")
def list_jobs(as_json):
    """List jobs: id, name, state, step/total, best val_loss, gap band, recoveries.

    Below the table: files refused from jobs/pending/ (still in jobs/failed/), and whether farensed runs.
    --json prints {"jobs": [...], "rejected": [...], "farensed": {"running", "pid"}}.

    \b
    Example:
      farensectl list --json | jq '.jobs[] | select(.state == "running")'
    """
    from farensed.analysis.gap import band_label
    from farensed.queue.pidfile import daemon_pid
    from farensed.views.status import format_duration, row, stale_note

    q = queue()
    jobs = q.jobs()
    rows = [row(q, job) for job in jobs]
    from farensed.cli.overnight import annotate

    overnight = annotate(q, rows)  # adds pause and ETA to each row; the lines under the table
    pid = daemon_pid(q.ws)
    rejected = q.rejected()
    if as_json:
        print_json(
            {
                "jobs": rows,
                "rejected": [r.to_dict() for r in rejected],
                "farensed": {"running": pid is not None, "pid": pid},
            }
        )
        return
    if not rows:  # nothing silent: an empty queue says what to do, not a bare header
        click.echo(_("nenhum job na fila: farensectl submit SPEC (ou farensectl demo para experimentar)"))
    else:
        _table_header()
    for r in rows:
        step = f"{r['step'] or 0}/{r['total_steps'] or '?'}" if r["step"] or r["total_steps"] else "-"
        total = r["total_duration_s"]
        dur = format_duration(total)
        epoch = str(r["epoch"] + 1) if r["epoch"] is not None else "-"
        band = colour_band(f"{safe(band_label(r['band']), 9):<9}", r["band"])
        click.echo(
            f"{r['id']:>4}  {safe(r['name'], 28):<28} {state_label(r['state']):<9} {step:>11} {epoch:>5} "
            f"{fmt_number(r['best_val_loss']):>10} {band} {r['recoveries']:>3}  "
            f"{safe((r['first_started_at'] or '-')[:19], 19):<19} {dur:>11}"
        )
    for job in jobs:
        if note := stale_note(job, pid is not None):
            click.echo(f"{job.id:>4}  {note}")
    for line in overnight:
        click.echo(line)
    _list_rejected(q, rejected)
    if pid is None:
        click.echo(_("farensed não está a correr: a fila não avança (farensectl daemon start)"), err=True)


def _list_rejected(q, rejected, shown: int = 10) -> None:
    """The files refused from jobs/pending/ that still wait in jobs/failed/, and what to do with them."""
    if not rejected:
        return
    from farensed.queue.inbox import count_rejected

    total = count_rejected(q.failed_inbox)
    click.echo(
        _(
            "jobs/failed/ tem ficheiros recusados (total: {count}); corrija cada um e mova-o de volta para "
            "jobs/pending/, ou apague-o com o seu .reason.txt:"
        ).format(count=total)
    )
    for item in rejected[:shown]:
        click.echo(f"  {item.name}: {item.reason}")
    if total > shown:
        click.echo("  " + _("… e mais {count}").format(count=total - shown))


@cli.command()
@click.argument("job_id", type=JOB_ID, metavar="ID")
def cancel(job_id):
    """Cancel a job: pending never runs; running stops at a checkpoint (files kept).

    \b
    Example:
      farensectl cancel 3
    """
    job = queue().cancel(job_id)
    click.echo(
        f"job {job.id}: " + (_("cancelado") if job.status is JobStatus.CANCELLED else _("a parar com checkpoint…"))
    )


@cli.command()
@click.argument("job_id", type=JOB_ID, metavar="ID")
def retry(job_id):
    """Put a failed or cancelled job back in the queue; it resumes from its checkpoint.

    \b
    Example:
      farensectl retry 3
    """
    job = queue().retry(job_id)
    click.echo(f"job {job.id}: {state_label(job.state)}")


def _seconds(_ctx, _param, value):
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise click.BadParameter(_("deve ser um número de segundos ≥ 0"))
    return value


@cli.command()
@click.argument("job_id", type=JOB_ID, metavar="ID")
@click.option(
    "--timeout",
    type=float,
    default=None,
    callback=_seconds,
    metavar="SECONDS",
    help="Give up after this many seconds (exit 124).",
)
def wait(job_id, timeout):
    """Wait for a job to end; the exit code is the job's (0 done, 130 cancelled).

    \b
    Example:
      farensectl wait 3 && farensectl gap 3
    """
    from farensed.views.status import job_exit_code

    q = queue()
    live = LiveLine(q) if sys.stdout.isatty() else None  # one line redrawn on a terminal; nothing in a script
    deadline = None if timeout is None else time.monotonic() + timeout
    down = DaemonDown(q.ws)
    while not (job := q.get(job_id)).status.terminal:
        if deadline is not None and time.monotonic() > deadline:
            if live:
                live.end()
            click.echo(_("job {job_id} ainda {state}").format(job_id=job_id, state=state_label(job.state)), err=True)
            sys.exit(124)
        if down.newly():  # a wait on a stopped queue says so once, then goes on waiting
            if live:
                live.end()
            click.echo(_down_line(job_id), err=True)
        if live:
            live.show(job)
        time.sleep(0.5 if deadline is None else min(0.5, max(deadline - time.monotonic(), 0.01)))  # exit on time
    if live:
        live.end()
    click.echo(f"job {job.id} ({safe(job.name, 80)}): {state_label(job.state)}")
    sys.exit(job_exit_code(job))


class DaemonDown:
    """Whether farensed has just been found not running (looked at every 5 s): said once, again only after it ran."""

    def __init__(self, ws):
        self.ws, self.looked, self.down = ws, 0.0, False

    def newly(self) -> bool:
        from farensed.queue.pidfile import daemon_pid

        if time.monotonic() - self.looked <= 5:
            return False
        was, self.looked = self.down, time.monotonic()
        self.down = daemon_pid(self.ws) is None
        return self.down and not was


def _down_line(job_id: int) -> str:
    return _("farensed não está a correr: o job {id} só avança quando arrancar (farensectl daemon start)").format(
        id=job_id
    )


class LiveLine:
    """`wait` on a terminal: the job's state, step/total, loss and ETA on one line, redrawn in place."""

    def __init__(self, q):
        self.q, self.first, self.shown = q, None, False

    def show(self, job) -> None:
        from farensed.analysis.metrics import read_last
        from farensed.analysis.monitor import live_line
        from farensed.queue.job import job_run_dir
        from farensed.queue.overnight import pause_of

        last = read_last(job_run_dir(self.q.ws, job), 50) if job.status is JobStatus.RUNNING else []
        if last and (self.first is None or self.first.get("step", 0) > last[0].get("step", 0)):
            self.first = last[0]  # the ETA's base: the oldest record of this look (a resume rewrites the file)
        note = safe(pause_of(self.q, job) or job.held or "", 200) or None  # values from files: never raw
        line = live_line(
            f"job {job.id} ({safe(job.name, 80)})", state_label(job.state), last[-1] if last else None, self.first, note
        )
        width = shutil.get_terminal_size().columns - 1
        click.echo("\r" + line[:width] + "\x1b[K", nl=False)
        self.shown = True

    def end(self) -> None:
        if self.shown:
            click.echo("\r\x1b[K", nl=False)  # the final line replaces the live one
