"""farensectl pause / resume / report, and the overnight view (`em pausa até 23:00`, ETA) that list and status add."""

from __future__ import annotations

import click

from farensed.cli.app import cli, output_file, print_json, queue, workspace
from farensed.i18n import _
from farensed.queue.job import JobStatus


@cli.command()
def pause():
    """Pause the queue: the running job checkpoint-stops, nothing new starts (survives daemon restarts).

    \b
    Example:
      farensectl pause && farensectl resume
    """
    from farensed.queue.overnight import pause_queue, queue_paused
    from farensed.queue.wake import nudge

    ws = workspace()
    already = queue_paused(ws)
    record = pause_queue(ws)
    nudge(ws.jobs)
    since = record["paused_at"][:19].replace("T", " ")
    if already:
        click.echo(_("a fila já estava em pausa desde {since}; retomar: farensectl resume").format(since=since))
    elif any(job.status is JobStatus.RUNNING for job in queue().jobs()):
        click.echo(_("fila em pausa desde {since}: o job em curso para com checkpoint").format(since=since))
    else:
        click.echo(_("fila em pausa desde {since}: nenhum job começa até farensectl resume").format(since=since))


@cli.command()
def resume():
    """Resume a paused queue: the stopped job resumes exactly where it stopped.

    \b
    Example:
      farensectl resume
    """
    from farensed.queue.overnight import resume_queue
    from farensed.queue.wake import nudge

    ws = workspace()
    was_paused = resume_queue(ws)
    nudge(ws.jobs)
    click.echo(_("fila retomada") if was_paused else _("a fila não estava em pausa"))


def annotate(q, rows: list[dict]) -> list[str]:
    """Add `pause`, `eta_start`, `eta_end` to `list` rows; return the lines printed under the table."""
    from farensed.queue.overnight import local_now, pause_of, queue_paused, settings
    from farensed.views.eta import format_eta, queue_eta

    now, conf = local_now(), settings(q.ws)
    jobs = {job.id: job for job in q.jobs()}
    blocked = bool(queue_paused(q.ws) or conf.get("power_wait"))
    etas = queue_eta(q, list(jobs.values()), now, conf.get("window"), blocked)
    lines = []
    for r in rows:
        job = jobs.get(r["id"])
        r["pause"] = pause_of(q, job, now, conf) if job else None
        eta = etas["jobs"].get(r["id"])
        r["eta_start"], r["eta_end"] = (_iso(eta["start"]), _iso(eta["end"])) if eta else (None, None)
        if eta or r["pause"]:
            parts = [r["pause"]] if r["pause"] else []
            if eta and r["state"] == JobStatus.RUNNING.value:
                parts.append(_("fim previsto {end}").format(end=format_eta(eta["end"], now)))
            elif eta:
                parts.append(
                    _("início previsto {start} · fim {end}").format(
                        start=format_eta(eta["start"], now), end=format_eta(eta["end"], now)
                    )
                )
            lines.append(f"{r['id']:>4}  {' · '.join(parts)}")
    if etas["jobs"]:
        lines.append(_("fila termina às {end}").format(end=format_eta(etas["end"], now)))
    return lines


def _iso(when) -> str | None:
    return None if when is None else when.isoformat(timespec="seconds")


@cli.command()
@click.option("--since", metavar="TIME", help="Jobs active since this ISO time or HH:MM (default: the last 24 hours).")
@click.option("--output", "-o", type=click.Path(dir_okay=False), help="Write here (default: reports/<time>.html).")
@click.option("--open", "open_", is_flag=True, help="Open it in the browser.")
@click.option("--notify", is_flag=True, help="Send a desktop notification when written (what farensed does).")
@click.option("--json", "as_json", is_flag=True, help="Print the report's data as one JSON document.")
@click.option(
    "--time-limit",
    type=click.IntRange(min=1),
    hidden=True,
    help="Give up after this many seconds (what farensed uses).",
)
def report(since, output, open_, notify, as_json, time_limit):
    """The morning report: one self-contained HTML file (images inline) for every job of the period.

    \b
    Example:
      farensectl report --since 20:00 --open
    """
    from farensed.views.morning import collect, parse_since, write_report

    if time_limit:
        import signal

        signal.alarm(time_limit)  # SIGALRM's default action ends this process: a report never runs for hours
    q = queue()
    start = parse_since(since)
    if as_json:
        print_json(collect(q, start))
        return
    path = write_report(q, start, None if output is None else output_file(q.ws.resolve(output)), auto=notify)
    click.echo(str(path))
    if notify:
        from farensed.queue.keepawake import notify as send

        send("farense", _("fila terminada: relatório em {path}").format(path=path))
    if open_:
        click.launch(str(path))
